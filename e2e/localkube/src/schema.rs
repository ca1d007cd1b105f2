//! Structural schema validation of custom resources (a CRD version's
//! openAPIV3Schema): types, required fields, enums, numeric bounds, string
//! lengths and patterns, array items, map values. Errors name the field the
//! way the API server does (`spec.replicas: Invalid value: ...`). Fields the
//! schema does not declare are pruned (and named, for field validation).
//! CEL rules (`x-kubernetes-validations`) are enforced, transition rules
//! (`oldSelf`) on updates, through the `cel-interpreter` crate.

use regex::Regex;
use serde_json::Value;

fn type_ok(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validates `v` at `path` against `schema`; every violation, in order.
pub fn validate(v: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() && schema["nullable"].as_bool() == Some(true) {
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            errors.push(format!(
                "{path}: Invalid value: {v}: {path} in body must be of type int-or-string"
            ));
        }
        return;
    }
    if let Some(t) = schema["type"].as_str() {
        if !type_ok(v, t) {
            let shown = match v {
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "boolean",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            errors.push(format!(
                "{path}: Invalid value: \"{shown}\": {path} in body must be of type {t}: \"{shown}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            errors.push(format!(
                "{path}: Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64() {
            if n < min {
                errors.push(format!("{path}: Invalid value: {v}: {path} in body should be greater than or equal to {min}"));
            }
        }
        if let Some(max) = schema["maximum"].as_f64() {
            if n > max {
                errors.push(format!("{path}: Invalid value: {v}: {path} in body should be less than or equal to {max}"));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64() {
            if len < min {
                errors.push(format!("{path}: Invalid value: \"{s}\": {path} in body should be at least {min} chars long"));
            }
        }
        if let Some(max) = schema["maxLength"].as_u64() {
            if len > max {
                errors.push(format!(
                    "{path}: Too long: may not be more than {max} bytes"
                ));
            }
        }
        if let Some(p) = schema["pattern"].as_str() {
            match Regex::new(p) {
                Ok(re) if !re.is_match(s) => errors.push(format!(
                    "{path}: Invalid value: \"{s}\": {path} in body should match '{p}'"
                )),
                _ => {}
            }
        }
    }
    if let Some(a) = v.as_array() {
        if let Some(min) = schema["minItems"].as_u64() {
            if (a.len() as u64) < min {
                errors.push(format!(
                    "{path}: Invalid value: {}: {path} in body should have at least {min} items",
                    a.len()
                ));
            }
        }
        if let Some(max) = schema["maxItems"].as_u64() {
            if a.len() as u64 > max {
                errors.push(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    a.len()
                ));
            }
        }
        if schema["items"].is_object() {
            for (i, item) in a.iter().enumerate() {
                validate(item, &schema["items"], &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(o) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if let Some(k) = r.as_str() {
                if !o.contains_key(k) {
                    errors.push(format!("{}: Required value", join(path, k)));
                }
            }
        }
        let props = schema["properties"].as_object();
        for (k, item) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(item, s, &join(path, k), errors),
                None if schema["additionalProperties"].is_object() => validate(
                    item,
                    &schema["additionalProperties"],
                    &join(path, k),
                    errors,
                ),
                // Unknown fields are pruned by a real API server; here they
                // are kept and not checked.
                None => {}
            }
        }
    }
}

/// Removes what the schema does not declare, as the API server prunes, and
/// names each removed field in `unknown`.
pub fn prune(v: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
        || schema["x-kubernetes-int-or-string"].as_bool() == Some(true)
    {
        return;
    }
    match v {
        Value::Object(o) => {
            let props = schema["properties"].as_object();
            let extra = &schema["additionalProperties"];
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                let here = join(path, &k);
                match props.and_then(|p| p.get(&k)) {
                    Some(s) => prune(o.get_mut(&k).expect("listed"), s, &here, unknown),
                    None if extra.is_object() => {
                        prune(o.get_mut(&k).expect("listed"), extra, &here, unknown)
                    }
                    None if props.is_some() || schema["type"] == "object" => {
                        o.remove(&k);
                        unknown.push(here);
                    }
                    None => {}
                }
            }
        }
        Value::Array(a) if schema["items"].is_object() => {
            for (i, item) in a.iter_mut().enumerate() {
                prune(item, &schema["items"], &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Evaluates the `x-kubernetes-validations` rules of `schema` and of the
/// schemas under it against `v`; `old` is the value before an update, for
/// transition rules (those naming `oldSelf`), which are skipped on create
/// and where the old value is missing, as the API server does. Lists are
/// not correlated: rules inside list items see no `oldSelf`.
pub fn check_rules(
    v: &Value,
    old: Option<&Value>,
    schema: &Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(expr) = rule["rule"].as_str() else {
            continue;
        };
        let transition = expr.contains("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let shown = if path.is_empty() { "<root>" } else { path };
        match eval_rule(expr, v, old) {
            Ok(true) => {}
            Ok(false) => {
                let message = rule["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("failed rule: {expr}"));
                errors.push(format!("{shown}: Invalid value: \"object\": {message}"));
            }
            Err(e) => errors.push(format!(
                "{shown}: Invalid value: \"object\": rule {expr}: {e}"
            )),
        }
    }
    match v {
        Value::Object(o) => {
            let props = schema["properties"].as_object();
            for (k, item) in o {
                let s = match props.and_then(|p| p.get(k)) {
                    Some(s) => s,
                    None if schema["additionalProperties"].is_object() => {
                        &schema["additionalProperties"]
                    }
                    None => continue,
                };
                let before = old.and_then(|o| o.get(k));
                check_rules(item, before, s, &join(path, k), errors);
            }
        }
        Value::Array(a) if schema["items"].is_object() => {
            for (i, item) in a.iter().enumerate() {
                check_rules(
                    item,
                    None,
                    &schema["items"],
                    &format!("{path}[{i}]"),
                    errors,
                );
            }
        }
        _ => {}
    }
}

fn eval_rule(expr: &str, v: &Value, old: Option<&Value>) -> Result<bool, String> {
    let program = cel_interpreter::Program::compile(expr).map_err(|e| e.to_string())?;
    let mut ctx = cel_interpreter::Context::default();
    ctx.add_variable("self", v).map_err(|e| e.to_string())?;
    if let Some(old) = old {
        ctx.add_variable("oldSelf", old)
            .map_err(|e| e.to_string())?;
    }
    match program.execute(&ctx).map_err(|e| e.to_string())? {
        cel_interpreter::Value::Bool(b) => Ok(b),
        other => Err(format!("evaluates to {other:?}, not a bool")),
    }
}

/// Validates a whole custom resource; `metadata`, `apiVersion` and `kind`
/// are the server's business.
pub fn validate_object(obj: &Value, schema: &Value) -> Result<(), String> {
    let mut body = obj.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("metadata");
        o.remove("apiVersion");
        o.remove("kind");
    }
    let mut root = schema.clone();
    if let Some(r) = root.get_mut("required").and_then(Value::as_array_mut) {
        r.retain(|k| !matches!(k.as_str(), Some("metadata" | "apiVersion" | "kind")));
    }
    let mut errors = vec![];
    validate(&body, &root, "", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join(", "))
    }
}

/// Why a custom resource was refused.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Undeclared fields under `fieldValidation=Strict`.
    Unknown(Vec<String>),
    /// Schema or rule violations, joined as the API server words them.
    Invalid(String),
}

/// What a write of a custom resource goes through: undeclared fields pruned
/// (refused when `strict`), the schema checked, then its CEL rules, with
/// `old` (the stored object) for transition rules. Returns the pruned
/// fields, for warnings.
pub fn admit(
    obj: &mut Value,
    schema: &Value,
    old: Option<&Value>,
    strict: bool,
) -> Result<Vec<String>, Refusal> {
    let mut unknown = vec![];
    if let Some(o) = obj.as_object_mut() {
        let props = schema["properties"].as_object();
        let keys: Vec<String> = o.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "metadata" | "apiVersion" | "kind") {
                continue;
            }
            match props.and_then(|p| p.get(&k)) {
                Some(s) => prune(o.get_mut(&k).expect("listed"), s, &k, &mut unknown),
                None => {
                    o.remove(&k);
                    unknown.push(k);
                }
            }
        }
    }
    if strict && !unknown.is_empty() {
        return Err(Refusal::Unknown(unknown));
    }
    validate_object(obj, schema).map_err(Refusal::Invalid)?;
    let mut errors = vec![];
    if let (Some(o), Some(props)) = (obj.as_object(), schema["properties"].as_object()) {
        for (k, v) in o {
            if let Some(s) = props.get(k) {
                check_rules(v, old.and_then(|old| old.get(k)), s, k, &mut errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(unknown)
    } else {
        Err(Refusal::Invalid(errors.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_name_their_field() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "required": ["partitions"],
            "properties": {
                "partitions": {"type": "integer", "minimum": 1, "maximum": 1000},
                "policy": {"type": "string", "enum": ["delete", "compact"]},
                "name": {"type": "string", "pattern": "^[a-z]+$"}}}}});
        assert!(validate_object(&json!({"spec": {"partitions": 3}}), &schema).is_ok());
        let e = validate_object(&json!({"spec": {"partitions": 0}}), &schema).unwrap_err();
        assert!(
            e.contains("spec.partitions") && e.contains("greater than or equal to 1"),
            "{e}"
        );
        let e = validate_object(&json!({"spec": {}}), &schema).unwrap_err();
        assert_eq!(e, "spec.partitions: Required value");
        let e = validate_object(&json!({"spec": {"partitions": "3"}}), &schema).unwrap_err();
        assert!(e.contains("must be of type integer"), "{e}");
        let e = validate_object(&json!({"spec": {"partitions": 1, "policy": "x"}}), &schema)
            .unwrap_err();
        assert!(e.starts_with("spec.policy: Unsupported value"), "{e}");
        let e =
            validate_object(&json!({"spec": {"partitions": 1, "name": "A"}}), &schema).unwrap_err();
        assert!(e.contains("should match"), "{e}");
    }

    #[test]
    fn undeclared_fields_are_pruned_or_refused_and_rules_enforced() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.partitions >= oldSelf.partitions", "message": "partitions may not decrease"},
                {"rule": "self.partitions <= 100"}],
            "properties": {
                "partitions": {"type": "integer"},
                "config": {"type": "object", "properties": {"retention.ms": {"type": "string"}}}}}}});
        let mut obj = json!({"kind": "T", "metadata": {"name": "x"}, "extra": 1,
            "spec": {"partitions": 3, "config": {"retention.ms": "1", "nope": "2"}}});
        assert_eq!(
            admit(&mut obj.clone(), &schema, None, true),
            Err(Refusal::Unknown(vec![
                "extra".into(),
                "spec.config.nope".into()
            ]))
        );
        assert_eq!(
            admit(&mut obj, &schema, None, false),
            Ok(vec!["extra".into(), "spec.config.nope".into()])
        );
        assert_eq!(obj["spec"]["config"], json!({"retention.ms": "1"}));
        assert!(obj.get("extra").is_none() && obj["metadata"]["name"] == "x");
        // A transition rule holds on create and is checked on update.
        let old = json!({"spec": {"partitions": 3}});
        let mut fewer = json!({"spec": {"partitions": 2}});
        assert_eq!(admit(&mut fewer.clone(), &schema, None, true), Ok(vec![]));
        let e = admit(&mut fewer, &schema, Some(&old), true).unwrap_err();
        assert_eq!(
            e,
            Refusal::Invalid("spec: Invalid value: \"object\": partitions may not decrease".into())
        );
        let e = admit(
            &mut json!({"spec": {"partitions": 101}}),
            &schema,
            Some(&old),
            true,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Refusal::Invalid(m) if m.contains("failed rule: self.partitions <= 100")),
            "{e:?}"
        );
    }
}

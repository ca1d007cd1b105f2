//! Structural schema validation of custom resources (a CRD version's
//! openAPIV3Schema): types, required fields, enums, numeric bounds, string
//! lengths and patterns, array items, map values. Errors name the field the
//! way the API server does (`spec.replicas: Invalid value: ...`). CEL rules
//! (`x-kubernetes-validations`) are not enforced.

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
}

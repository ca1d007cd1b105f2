//! Patches as the API server applies them: JSON merge patch (RFC 7386, also
//! used for server-side apply, which is close enough for the suite), a
//! strategic merge patch that merges lists of named objects (containers,
//! env, volumes, ports...) by their merge key, and JSON patch (RFC 6902).

use serde_json::Value;

/// RFC 7386: objects merge recursively, `null` deletes, anything else
/// replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge key of a list element, for strategic merge: `name` (containers,
/// env, volumes, volumeMounts), `containerPort` (ports), `type` (conditions).
fn merge_key(v: &Value) -> Option<(&'static str, Value)> {
    for k in ["name", "containerPort", "mountPath", "type"] {
        if let Some(x) = v.get(k) {
            return Some((k, x.clone()));
        }
    }
    None
}

/// A strategic merge patch, as far as kubectl's patches need: objects merge
/// as in a merge patch; lists of objects that all carry a merge key merge
/// element by element (`$patch: delete` removes one); directives kubectl
/// adds (`$setElementOrder/...`, `$retainKeys`) are dropped.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(cur)), Value::Array(items))
                if items.iter().all(|i| merge_key(i).is_some())
                    && cur.iter().all(|i| merge_key(i).is_some()) =>
            {
                for item in items {
                    let (key, id) = merge_key(item).expect("checked");
                    let pos = cur.iter().position(|c| c.get(key) == Some(&id));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            cur.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic_merge(&mut cur[i], item),
                        (None, false) => {
                            let mut fresh = Value::Null;
                            strategic_merge(&mut fresh, item);
                            cur.push(fresh);
                        }
                    }
                }
            }
            (Some(cur), _) => strategic_merge(cur, v),
            (None, _) => {
                let mut fresh = Value::Null;
                if v.is_object() {
                    strategic_merge(&mut fresh, v);
                } else {
                    fresh = v.clone();
                }
                t.insert(k.clone(), fresh);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The parent of `path` and the last token.
fn split(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((parent.to_string(), unescape(last)))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad array index {last:?}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("path {parent:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Some(Value::Array(a)) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("bad array index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("path {parent:?} does not exist")),
    }
}

/// RFC 6902, all or nothing.
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    let mut out = doc.clone();
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("an operation needs a path")?;
        let value = || op.get("value").cloned().ok_or("an operation needs a value");
        match kind {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                remove(&mut out, path)?;
                add(&mut out, path, value()?)?;
            }
            "test" => {
                if out.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("move and copy need from")?;
                let v = if kind == "move" {
                    remove(&mut out, from)?
                } else {
                    out.pointer(from)
                        .cloned()
                        .ok_or_else(|| format!("path {from:?} does not exist"))?
                };
                add(&mut out, path, v)?;
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn strategic_merge_merges_named_lists() {
        let mut doc = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "G", "value": "hello"}, {"name": "H", "value": "1"}]}]}});
        strategic_merge(
            &mut doc,
            &json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "env": [{"name": "G", "value": "bonjour"}, {"name": "H", "$patch": "delete"}]}]}}),
        );
        assert_eq!(
            doc,
            json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "G", "value": "bonjour"}]}]}})
        );
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let doc = json!({"spec": {"replicas": 1, "list": [1, 2]}});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/spec/list/-", "value": 3},
                {"op": "remove", "path": "/spec/list/0"},
                {"op": "test", "path": "/spec/replicas", "value": 3}
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"replicas": 3, "list": [2, 3]}}));
        assert!(json_patch(
            &doc,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
        )
        .is_err());
    }
}

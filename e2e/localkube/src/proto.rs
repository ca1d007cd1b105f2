//! Protobuf request bodies, for the clients that send them: client-go's
//! typed clients write core objects as `application/vnd.kubernetes.protobuf`
//! (helm stores its releases in Secrets that way). Decoded here into the
//! JSON the rest of localkube stores: Secrets and ConfigMaps, the kinds
//! those clients write. Responses are always JSON, which those clients
//! accept too.

use std::collections::BTreeMap;

use base64::Engine;
use prost::Message;
use serde_json::{json, Map, Value};

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `runtime.Unknown`: the envelope after the `k8s\0` magic.
#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct OwnerReference {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    uid: Option<String>,
    #[prost(string, optional, tag = "5")]
    api_version: Option<String>,
    #[prost(bool, optional, tag = "6")]
    controller: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    r#type: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

fn meta_json(m: Option<ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            o.insert(k.into(), json!(v));
        }
    };
    put("name", m.name);
    put("generateName", m.generate_name);
    put("namespace", m.namespace);
    put("uid", m.uid);
    put("resourceVersion", m.resource_version);
    if !m.labels.is_empty() {
        o.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        o.insert("annotations".into(), json!(m.annotations));
    }
    if !m.finalizers.is_empty() {
        o.insert("finalizers".into(), json!(m.finalizers));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .into_iter()
            .map(|r| {
                json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name,
                    "uid": r.uid, "controller": r.controller})
            })
            .collect();
        o.insert("ownerReferences".into(), json!(refs));
    }
    Value::Object(o)
}

fn b64(m: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect()
}

/// Decodes a protobuf-encoded Secret or ConfigMap into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("not a Kubernetes protobuf envelope")?;
    let u = Unknown::decode(rest).map_err(|e| format!("bad envelope: {e}"))?;
    let tm = u.type_meta.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = u.raw.unwrap_or_default();
    let mut obj = match kind.as_str() {
        "Secret" => {
            let s = Secret::decode(&raw[..]).map_err(|e| format!("bad Secret: {e}"))?;
            let mut o = json!({"metadata": meta_json(s.metadata), "data": b64(s.data)});
            if let Some(t) = s.r#type {
                o["type"] = json!(t);
            }
            if !s.string_data.is_empty() {
                o["stringData"] = json!(s.string_data);
            }
            if let Some(i) = s.immutable {
                o["immutable"] = json!(i);
            }
            o
        }
        "ConfigMap" => {
            let c = ConfigMap::decode(&raw[..]).map_err(|e| format!("bad ConfigMap: {e}"))?;
            let mut o = json!({"metadata": meta_json(c.metadata), "data": c.data});
            if !c.binary_data.is_empty() {
                o["binaryData"] = json!(b64(c.binary_data));
            }
            if let Some(i) = c.immutable {
                o["immutable"] = json!(i);
            }
            o
        }
        other => {
            return Err(format!(
                "protobuf bodies of kind {other:?} are not supported; send JSON"
            ))
        }
    };
    obj["apiVersion"] = json!(tm.api_version.unwrap_or_else(|| "v1".into()));
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_decode() {
        let s = Secret {
            metadata: Some(ObjectMeta {
                name: Some("sh.helm.release.v1.demo.v1".into()),
                labels: BTreeMap::from([("owner".into(), "helm".into())]),
                ..Default::default()
            }),
            data: BTreeMap::from([("release".into(), b"abc".to_vec())]),
            r#type: Some("helm.sh/release.v1".into()),
            ..Default::default()
        };
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
            }),
            raw: Some(s.encode_to_vec()),
        };
        let mut body = b"k8s\0".to_vec();
        body.extend(u.encode_to_vec());
        let v = decode(&body).unwrap();
        assert_eq!(v["metadata"]["name"], "sh.helm.release.v1.demo.v1");
        assert_eq!(v["metadata"]["labels"]["owner"], "helm");
        assert_eq!(v["data"]["release"], "YWJj");
        assert_eq!(v["type"], "helm.sh/release.v1");
    }
}

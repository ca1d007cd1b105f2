//! Server-side printing: a `GET` that asks for `as=Table` (what `kubectl
//! get` sends) is answered with a `meta.k8s.io/v1` Table. Custom resources
//! get the columns their CRD declares (`additionalPrinterColumns`, JSONPath
//! in the subset CRDs use: fields, `[n]` and `[?(@.field=="value")]`);
//! everything else gets Name and Age, as the API server's default
//! converter gives.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::discovery::Resource;

/// Whether the request's `Accept` asks for a Table.
pub fn wanted(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

/// The Table of `items` (one object for a GET of one).
pub fn of(r: &Resource, items: &[Value], resource_version: &str) -> Value {
    let mut columns = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    let declared: Vec<&Value> = r.columns.iter().collect();
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
        "description": "The time since the object was created.", "priority": 0});
    let shown: Vec<&Value> = if declared.is_empty() {
        vec![&age]
    } else {
        declared
    };
    for c in &shown {
        columns.push(json!({
            "name": c["name"], "type": c["type"].as_str().unwrap_or("string"),
            "format": c["format"].as_str().unwrap_or(""),
            "description": c["description"].as_str().unwrap_or(""),
            "priority": c["priority"].as_i64().unwrap_or(0),
        }));
    }
    let now = SystemTime::now();
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![item["metadata"]["name"].clone()];
            for c in &shown {
                let v = c["jsonPath"]
                    .as_str()
                    .and_then(|p| select(item, p))
                    .cloned()
                    .unwrap_or(Value::Null);
                cells.push(match (c["type"].as_str(), &v) {
                    (Some("date"), Value::String(s)) => json!(age_of(s, now)),
                    _ => v,
                });
            }
            json!({"cells": cells, "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": item["metadata"],
            }})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns, "rows": rows})
}

/// Evaluates a printer column's JSONPath; `None` where nothing matches.
pub fn select<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("[?(@.") {
            let close = r.find(")]")?;
            let (field, want) = r[..close].split_once("==")?;
            let want = want.trim().trim_matches(['"', '\'']);
            cur = cur.as_array()?.iter().find(|x| match &x[field.trim()] {
                Value::String(s) => s == want,
                other => serde_json::from_str::<Value>(want).is_ok_and(|w| *other == w),
            })?;
            rest = &r[close + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            let i: usize = r[..close].parse().ok()?;
            cur = cur.as_array()?.get(i)?;
            rest = &r[close + 1..];
        } else {
            return None;
        }
    }
    Some(cur)
}

/// `2026-12-02T07:00:00Z` as an age the way kubectl prints one (`5m10s`,
/// `3h`, `2d`).
fn age_of(stamp: &str, now: SystemTime) -> String {
    let Some(then) = parse_rfc3339(stamp) else {
        return "<unknown>".into();
    };
    human(now.duration_since(then).unwrap_or(Duration::ZERO))
}

fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    // YYYY-MM-DDTHH:MM:SSZ (what the API server writes).
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |a: usize, l: usize| s.get(a..a + l)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0, 4)?, n(5, 2)?, n(8, 2)?);
    let (h, mi, se) = (n(11, 2)?, n(14, 2)?, n(17, 2)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// apimachinery's `duration.HumanDuration`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else {
        format!("{}y", h / 24 / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths_select_fields_items_and_filters() {
        let t = json!({"spec": {"partitions": 12},
            "status": {"conditions": [{"type": "Degraded", "status": "False"},
                                      {"type": "Ready", "status": "True"}]}});
        assert_eq!(select(&t, ".spec.partitions"), Some(&json!(12)));
        assert_eq!(
            select(&t, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(&json!("True"))
        );
        assert_eq!(
            select(&t, ".status.conditions[0].type"),
            Some(&json!("Degraded"))
        );
        assert_eq!(select(&t, ".status.missing"), None);
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let then = parse_rfc3339("2026-12-02T07:00:00Z").unwrap();
        let at = |secs| age_of("2026-12-02T07:00:00Z", then + Duration::from_secs(secs));
        assert_eq!(at(5), "5s");
        assert_eq!(at(310), "5m10s");
        assert_eq!(at(3 * 3600), "3h");
        assert_eq!(at(50 * 3600), "2d2h");
        assert_eq!(
            parse_rfc3339("1970-01-02T00:00:01Z").unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(86_401)
        );
    }

    #[test]
    fn a_custom_resource_table_has_its_declared_columns() {
        let crd = json!({"spec": {"group": "sluice.dev", "names": {"plural": "topics", "kind": "Topic"},
            "versions": [{"name": "v1alpha1", "served": true, "additionalPrinterColumns": [
                {"name": "Partitions", "type": "integer", "jsonPath": ".spec.partitions"},
                {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}]}]}});
        let r = &crate::discovery::from_crd(&crd)[0];
        let item = json!({"metadata": {"name": "orders"}, "spec": {"partitions": 3}});
        let table = of(r, &[item], "7");
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Partitions", "Ready"]);
        assert_eq!(table["rows"][0]["cells"], json!(["orders", 3, null]));
        assert_eq!(table["rows"][0]["object"]["metadata"]["name"], "orders");
    }
}

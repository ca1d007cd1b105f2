//! Faults a test injects into the API server, to see how its clients live
//! through what a real control plane does to them: a client cut off (a
//! network partition between a node and the API server), and writes that
//! fail, either before they are made or after (the client cannot tell
//! whether its write landed, as after a timeout or a 5xx from a real API
//! server behind a load balancer).
//!
//! Clients are told apart by the bearer token of their kubeconfig (any
//! token is accepted: localkube has no authentication). `GET` and `PUT`
//! `/localkube/faults` read and replace the rules as JSON:
//!
//! ```json
//! {"isolated": ["node-1"],
//!  "failing_writes": {"percent": 20, "clients": ["node-0"], "applied": true}}
//! ```

use std::sync::Mutex;

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Clients every request of which fails (503), and whose watches end.
    #[serde(default)]
    pub isolated: Vec<String>,
    /// Writes that fail.
    #[serde(default)]
    pub failing_writes: Option<FailingWrites>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailingWrites {
    /// Share of writes that fail, 0 to 100.
    pub percent: u32,
    /// Whose writes (all clients when empty).
    #[serde(default)]
    pub clients: Vec<String>,
    /// Made, then answered with a failure (an unknown outcome for the
    /// client); else refused before anything changes.
    #[serde(default)]
    pub applied: bool,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// Answer 503 now.
    Isolated,
    /// Answer 500 without making the write.
    FailBefore,
    /// Make the write, then answer 500.
    FailAfter,
}

pub struct Faults {
    rules: watch::Sender<Rules>,
    rng: Mutex<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rules: watch::channel(Rules::default()).0,
            rng: Mutex::new(0x2545_f491_4f6c_dd1d),
        }
    }
}

/// The client's name: its kubeconfig's bearer token ("" without one).
pub fn client_of(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

impl Faults {
    pub fn rules(&self) -> Rules {
        self.rules.borrow().clone()
    }

    pub fn set(&self, rules: Rules) {
        self.rules.send_replace(rules);
    }

    fn roll(&self, percent: u32) -> bool {
        let mut x = self.rng.lock().expect("rng lock");
        // xorshift64*
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r % 100) < u64::from(percent)
    }

    pub fn verdict(&self, client: &str, method: &Method) -> Verdict {
        let rules = self.rules.borrow().clone();
        if rules.isolated.iter().any(|c| c == client) {
            return Verdict::Isolated;
        }
        let write = matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        match rules.failing_writes {
            Some(f)
                if write
                    && (f.clients.is_empty() || f.clients.iter().any(|c| c == client))
                    && self.roll(f.percent) =>
            {
                if f.applied {
                    Verdict::FailAfter
                } else {
                    Verdict::FailBefore
                }
            }
            _ => Verdict::Serve,
        }
    }

    /// A watch answer that ends as soon as its client is isolated.
    pub fn cut_when_isolated(&self, client: String, resp: Response) -> Response {
        let mut rules = self.rules.subscribe();
        let (parts, body) = resp.into_parts();
        let cut = async move {
            loop {
                if rules.borrow_and_update().isolated.contains(&client) {
                    return;
                }
                if rules.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let stream = body.into_data_stream().take_until(Box::pin(cut));
        Response::from_parts(parts, Body::from_stream(stream))
    }
}

/// The API server's error answer for an injected fault.
pub fn failure(code: u16, why: &str) -> Response {
    let reason = if code == 503 {
        "ServiceUnavailable"
    } else {
        "InternalError"
    };
    (
        axum::http::StatusCode::from_u16(code).expect("valid status"),
        axum::Json(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "code": code,
            "message": format!("localkube fault injection: {why}"),
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pick_clients_and_writes() {
        let f = Faults::default();
        assert_eq!(f.verdict("a", &Method::PUT), Verdict::Serve);
        f.set(Rules {
            isolated: vec!["a".into()],
            failing_writes: Some(FailingWrites {
                percent: 100,
                clients: vec!["b".into()],
                applied: true,
            }),
        });
        assert_eq!(f.verdict("a", &Method::GET), Verdict::Isolated);
        assert_eq!(f.verdict("b", &Method::GET), Verdict::Serve);
        assert_eq!(f.verdict("b", &Method::PUT), Verdict::FailAfter);
        assert_eq!(f.verdict("c", &Method::PUT), Verdict::Serve);
        f.set(Rules {
            isolated: vec![],
            failing_writes: Some(FailingWrites {
                percent: 50,
                clients: vec![],
                applied: false,
            }),
        });
        let fails = (0..1000)
            .filter(|_| f.verdict("x", &Method::POST) == Verdict::FailBefore)
            .count();
        assert!((350..650).contains(&fails), "{fails}");
    }
}

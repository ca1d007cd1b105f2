//! A scripted API server for reconcile tests, after kube-rs's
//! `controller-rs`: a real `kube::Client` whose requests arrive here one at
//! a time (through `tower-test`), to be checked against what the test
//! expects and answered as the API server would. What is tested is the
//! operator's own code over the wire format; nothing of kube-rs is mocked.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The namespace every scripted client defaults to.
pub const NAMESPACE: &str = "data";

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

pub struct ApiServer(Handle);

/// A client talking to a scripted server.
pub fn client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, NAMESPACE), ApiServer(handle))
}

/// A `Status` object as the API server fails a request with.
pub fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

async fn read(req: Request<Body>) -> Seen {
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.expect("request body");
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        },
    }
}

impl ApiServer {
    /// The next request, which must be `method path`; answered with `code`
    /// and what `reply` makes of it.
    pub async fn expect(
        &mut self,
        method: &str,
        path: &str,
        code: u16,
        reply: impl FnOnce(&Seen) -> Value,
    ) -> Seen {
        let next = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"));
        let (req, send) =
            next.unwrap_or_else(|| panic!("the client is gone; expected {method} {path}"));
        let seen = read(req).await;
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            (method, path),
            "unexpected request (query {:?})",
            seen.query
        );
        send.send_response(respond(code, &reply(&seen)));
        seen
    }

    /// Answers every request with what `answer` says until the client is
    /// dropped; returns them in order.
    pub async fn serve(mut self, mut answer: impl FnMut(&Seen) -> (u16, Value)) -> Vec<Seen> {
        let mut all = vec![];
        while let Some((req, send)) = self.0.next_request().await {
            let seen = read(req).await;
            let (code, body) = answer(&seen);
            send.send_response(respond(code, &body));
            all.push(seen);
        }
        all
    }

    /// Asserts that the client makes no further request (it has been
    /// dropped without one).
    pub async fn done(mut self) {
        if let Some((req, _)) = self.0.next_request().await {
            let seen = read(req).await;
            panic!("unexpected request {} {}", seen.method, seen.path);
        }
    }
}

/// The body of a request, echoed as the stored object.
pub fn echo(seen: &Seen) -> Value {
    seen.body.clone()
}

/// A partition record with these replicas and ISR, led by the ISR's first.
pub fn record(replicas: &[i32], isr: &[i32]) -> sluice_api::election::PartitionRecord {
    sluice_api::election::PartitionRecord {
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
        leader: isr.first().copied(),
        leader_epoch: 0,
        adding: vec![],
        removing: vec![],
    }
}

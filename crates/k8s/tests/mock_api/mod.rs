//! A scripted API server for the actuator and lease tests: a `tower-test` mock service behind
//! a real `kube::Client`. Each expected exchange names the exact method, path with query and
//! JSON body of one request, and the canned answer. A request that differs, arrives out of
//! order, or was not expected fails the test; so does an expected request that never comes.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use devheal_core::Time;
use devheal_k8s::Clock;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// One request the code under test must send, and the answer it gets.
pub struct Exchange {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
    pub answer: Answer,
}

/// What the mock API server answers.
pub enum Answer {
    /// An HTTP status and a JSON body.
    Json(u16, Value),
    /// No answer: the connection fails.
    Transport,
    /// No answer at all: the request hangs until the script ends.
    Hang,
}

pub fn expect(
    method: &'static str,
    path: impl Into<String>,
    body: Option<Value>,
    answer: Answer,
) -> Exchange {
    Exchange { method, path: path.into(), body, answer }
}

pub fn ok(body: Value) -> Answer {
    Answer::Json(200, body)
}

pub fn created(body: Value) -> Answer {
    Answer::Json(201, body)
}

/// A `metav1.Status` failure, as the API server writes it.
pub fn status(code: u16, reason: &str, message: &str) -> Answer {
    Answer::Json(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// A 422 whose cause is one field.
pub fn invalid_field(message: &str, field: &str) -> Answer {
    Answer::Json(
        422,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": "Invalid", "code": 422,
               "details": {"causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]}}),
    )
}

pub fn success() -> Answer {
    Answer::Json(
        201,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// The test's wall clock: starts at `start` and moves only when told.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn at(start: Time) -> Self {
        TestClock(Arc::new(AtomicI64::new(start.as_nanos())))
    }
    pub fn advance_secs(&self, s: i64) {
        self.0.fetch_add(s * 1_000_000_000, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let t = self.0.clone();
        Arc::new(move || Time::from_nanos(t.load(Ordering::SeqCst)))
    }
}

/// 2026-09-21T14:13:20Z.
pub const T0: Time = Time::from_secs(1_790_000_000);
pub const T0_SECONDS: &str = "2026-09-21T14:13:20Z";
pub const T0_MICROS: &str = "2026-09-21T14:13:20.000000Z";

/// Runs `test` with a client whose requests must be exactly `script`, in order.
pub async fn run<F, Fut, T>(script: Vec<Exchange>, test: F) -> T
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: Future<Output = T>,
{
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let total = script.len();
        // Requests that hang are answered by nobody until the script is over.
        let mut hanging = Vec::new();
        for (i, ex) in script.into_iter().enumerate() {
            let Some((request, respond)) = handle.next_request().await else {
                panic!("request {} of {total} ({} {}) was never sent", i + 1, ex.method, ex.path);
            };
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.expect("request body");
            let body: Option<Value> = if bytes.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(&bytes).expect("request body is JSON"))
            };
            assert_eq!(
                (method.as_str(), uri.as_str()),
                (ex.method, ex.path.as_str()),
                "request {} of {total}: method and path",
                i + 1
            );
            assert_eq!(body, ex.body, "request {} of {total} ({method} {uri}): body", i + 1);
            match ex.answer {
                Answer::Json(code, value) => {
                    let response = Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&value).expect("answer")))
                        .expect("response");
                    respond.send_response(response);
                }
                Answer::Transport => respond.send_error(std::io::Error::other("connection reset by mock")),
                Answer::Hang => hanging.push(respond),
            }
        }
        // Nothing more may come until every client is dropped.
        if let Some((request, _)) = handle.next_request().await {
            panic!("unexpected request after the script: {} {}", request.method(), request.uri());
        }
    });
    let out =
        tokio::time::timeout(Duration::from_secs(10), test(client)).await.expect("the code under test hung");
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(())) => out,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("mock server: {e}"),
        Err(_) => panic!("the mock server did not finish: a client was not dropped"),
    }
}

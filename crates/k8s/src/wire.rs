//! The thin layer under the actuator and the lease elector: one raw JSON request to the API
//! server, its failure sorted into what the caller decides on (the HTTP status and the API's
//! own message, or a transport failure), and the wall clock in the two formats Kubernetes
//! writes times in.
//!
//! Requests are written by hand (method, path with query, body) rather than through `kube::Api`
//! so that every byte sent is chosen here and checked by the mock tests; kube's `Api::evict`,
//! for one, serialises the Eviction's delete options as `delete_options`, a field the API server
//! does not know, which would silently drop the UID precondition.

use std::sync::Arc;

use devheal_core::Time;
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time as K8sTime};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// The wall clock the actuator and the elector read: condition and event times, lease renewals.
/// Tests pass a fixed or stepped clock so that the bodies they check are exact.
pub type Clock = Arc<dyn Fn() -> Time + Send + Sync>;

/// The system clock, as nanoseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Time::from_nanos(nanos)
    })
}

fn timestamp(t: Time) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(t.as_nanos())).unwrap_or_default()
}

/// `metav1.Time`: RFC 3339 with whole seconds (`lastTransitionTime`).
pub(crate) fn rfc3339_seconds(t: Time) -> Value {
    serde_json::to_value(K8sTime(timestamp(t))).unwrap_or(Value::Null)
}

/// `metav1.MicroTime`: RFC 3339 with microseconds (`eventTime`, lease `renewTime`).
pub(crate) fn rfc3339_micros(t: Time) -> Value {
    serde_json::to_value(MicroTime(timestamp(t))).unwrap_or(Value::Null)
}

/// Why a request did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The API server answered with an error status (`metav1.Status`).
    Status {
        code: u16,
        reason: String,
        message: String,
        /// `details.causes[].field`, for telling a UID mismatch from other invalid patches.
        cause_fields: Vec<String>,
    },
    /// No answer: connection, TLS, timeout, a closed client.
    Transport(String),
    /// An answer that is not the JSON it should be.
    Decode(String),
    /// Not sent: the write fence (the controller's leadership) says this replica may no longer
    /// write.
    Fenced,
}

impl CallError {
    pub(crate) fn code(&self) -> Option<u16> {
        match self {
            CallError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A sentence for outcomes and logs that quotes the API's own message.
    pub(crate) fn describe(&self) -> String {
        match self {
            CallError::Status { code, reason, message, .. } if reason.is_empty() => {
                format!("HTTP {code}: {message}")
            }
            CallError::Status { code, reason, message, .. } => format!("HTTP {code} {reason}: {message}"),
            CallError::Transport(e) => format!("no answer from the API server: {e}"),
            CallError::Decode(e) => format!("unreadable answer from the API server: {e}"),
            CallError::Fenced => "not sent: this replica no longer holds the lease".to_string(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The content types of the bodies the actuator sends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Body {
    Json,
    JsonPatch,
    MergePatch,
    StrategicMergePatch,
}

impl Body {
    fn content_type(self) -> &'static str {
        match self {
            Body::Json => "application/json",
            Body::JsonPatch => "application/json-patch+json",
            Body::MergePatch => "application/merge-patch+json",
            Body::StrategicMergePatch => "application/strategic-merge-patch+json",
        }
    }
}

/// How long one request may take, from sending it to the end of its answer, unless the caller
/// says otherwise ([`call_within`]). The kube client's own connect and write timeouts bound the
/// connection; nothing in it bounds the wait for an answer (watches must stay open), so every
/// one-shot request devheal sends is bounded here.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends one request and returns the JSON answer (`Value::Null` for an empty one), giving up
/// after [`CALL_TIMEOUT`].
pub(crate) async fn call(
    client: &kube::Client,
    method: Method,
    path: &str,
    body: Option<(Body, &Value)>,
) -> Result<Value, CallError> {
    call_within(client, method, path, body, CALL_TIMEOUT).await
}

/// [`call`] with its own time limit: no answer within `limit` is a [`CallError::Transport`]
/// (retried like a connection that failed).
pub(crate) async fn call_within(
    client: &kube::Client,
    method: Method,
    path: &str,
    body: Option<(Body, &Value)>,
    limit: std::time::Duration,
) -> Result<Value, CallError> {
    match tokio::time::timeout(limit, call_once(client, method, path, body)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Transport(format!("no answer within {} ms", limit.as_millis()))),
    }
}

async fn call_once(
    client: &kube::Client,
    method: Method,
    path: &str,
    body: Option<(Body, &Value)>,
) -> Result<Value, CallError> {
    let mut builder = http::Request::builder().method(method).uri(path);
    let bytes = match body {
        Some((kind, value)) => {
            builder = builder.header(http::header::CONTENT_TYPE, kind.content_type());
            serde_json::to_vec(value).map_err(|e| CallError::Decode(e.to_string()))?
        }
        None => Vec::new(),
    };
    let request = builder.body(bytes).map_err(|e| CallError::Transport(e.to_string()))?;
    match client.request_text(request).await {
        Ok(text) if text.trim().is_empty() => Ok(Value::Null),
        Ok(text) => serde_json::from_str(&text).map_err(|e| CallError::Decode(e.to_string())),
        Err(kube::Error::Api(status)) => Err(CallError::Status {
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            cause_fields: status
                .details
                .as_ref()
                .map(|d| d.causes.iter().map(|c| c.field.clone()).collect())
                .unwrap_or_default(),
        }),
        Err(e) => Err(CallError::Transport(e.to_string())),
    }
}

/// Percent-encodes a query parameter value (label selectors carry `=`, `,` and `/`).
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes one path segment (object names are DNS names, but a bad name must not
/// change which path is requested).
pub(crate) fn path_segment(s: &str) -> String {
    query_escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_the_kubernetes_formats() {
        let t = Time::from_nanos(1_790_000_000_123_456_789);
        assert_eq!(rfc3339_seconds(t), Value::String("2026-09-21T14:13:20Z".into()));
        assert_eq!(rfc3339_micros(t), Value::String("2026-09-21T14:13:20.123456Z".into()));
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("a.b/c=d,e"), "a.b%2Fc%3Dd%2Ce");
    }
}

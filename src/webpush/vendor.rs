//! Push-vendor knowledge. INTERFACE STUB.
use super::subscription::Endpoint;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor { Fcm, Apple, Mozilla, Wns, Other }
impl Vendor {
    pub fn of(endpoint: &Endpoint) -> Self { let _ = endpoint; todo!() }
    pub fn as_str(self) -> &'static str { match self { Self::Fcm => "fcm", Self::Apple => "apple", Self::Mozilla => "mozilla", Self::Wns => "wns", Self::Other => "other" } }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Gone,
    KeyMismatch,
    RateLimited { retry_after: Option<Duration> },
    Retry,
    RetryWithoutTopic,
    ConfigError,
    Failed,
}

/// One answer, classified, with what the admin needs to see.
#[derive(Debug, Clone)]
pub struct Classified {
    pub outcome: Outcome,
    pub status: Option<u16>,
    /// Short human reason: `"410 Gone: <body excerpt>"`, `"timeout"`, ...
    pub reason: String,
}

/// Classify a push service's HTTP answer. `now` is used for HTTP-date Retry-After.
pub fn classify(vendor: Vendor, status: u16, headers: &reqwest::header::HeaderMap, body: &str, now: std::time::SystemTime) -> Classified {
    let _ = (vendor, status, headers, body, now); todo!()
}

/// Classify a transport failure (timeout, connection refused, TLS error): always a retry.
pub fn classify_transport_error(err: &reqwest::Error) -> Classified { let _ = err; todo!() }

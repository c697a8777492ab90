//! Herald's own vocabulary, shared by storage, the delivery queue and the
//! HTTP layer: who a notification goes to, what the browser receives, and the
//! states a delivery moves through.
//!
//! ```text
//!            claim                 2xx
//!  pending ─────────▶ in_flight ─────────▶ delivered
//!     ▲                  │  │  404/410, key mismatch
//!     │ retry/backoff,   │  └─────────────▶ gone
//!     │ rate limit,      │  4xx, config error, attempts used up
//!     │ lease expiry     └────────────────▶ failed
//!     └──────────────────┘  TTL ran out (at claim or before a retry)
//!                                          ─▶ expired
//! ```
//! The database enforces the state names with a CHECK constraint.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: how every time is stored.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 for API answers.
pub fn rfc3339(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    InFlight,
    Delivered,
    Failed,
    Gone,
    Expired,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 6] = [
        Self::Pending,
        Self::InFlight,
        Self::Delivered,
        Self::Failed,
        Self::Gone,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Gone => "gone",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Who a notification goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    User(String),
    Users(Vec<String>),
    Subscription(String),
    Topic(String),
    All,
}

/// What the browser decrypts: Herald's JSON payload. Absent fields are left out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Payload {
    pub id: String,
    pub title: String,
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub badge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// A notification ready to be stored with its fan-out.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: String,
    pub app_id: String,
    pub recipients: Recipients,
    pub title: String,
    /// The encoded JSON payload, exactly the bytes that will be encrypted.
    pub payload: Vec<u8>,
    pub ttl_secs: u32,
    pub urgency: String,
    pub topic_key: Option<String>,
    pub created_at: Millis,
}

impl NewNotification {
    pub fn expires_at(&self) -> Millis {
        self.created_at + self.ttl_secs as i64 * 1000
    }
}

/// Ids are random and URL-safe; time-ordered (UUIDv7) so listings sort by age.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

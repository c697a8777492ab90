//! Browser subscriptions. INTERFACE STUB — bodies to be implemented.
use serde::Deserialize;

/// Every reason a subscription is refused. `field()` names the JSON field at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SubscriptionError {
    #[error("endpoint must be an absolute https URL")]
    EndpointNotHttps,
    #[error("endpoint is not a valid URL")]
    EndpointInvalid,
    #[error("endpoint must be at most 1024 characters")]
    EndpointTooLong,
    #[error("endpoint host {0} is not an allowed push service")]
    HostNotAllowed(String),
    #[error("keys.p256dh must be base64url of an uncompressed P-256 point on the curve (65 bytes starting 0x04)")]
    P256dhInvalid,
    #[error("keys.auth must be base64url of exactly 16 bytes")]
    AuthInvalid,
}

impl SubscriptionError {
    /// The JSON path of the field at fault, relative to the subscription object.
    pub fn field(&self) -> &'static str { todo!() }
}

/// Allow-list of push-service hosts. Exact names or `*.suffix` patterns.
#[derive(Debug, Clone)]
pub struct AllowedHosts { _p: () }

impl AllowedHosts {
    /// The real vendors' hosts only.
    pub fn vendors() -> Self { todo!() }
    /// Vendors plus extra patterns (e.g. `localhost`, `push.example.com`, `*.example.net`).
    pub fn with_extra<I: IntoIterator<Item = S>, S: AsRef<str>>(extra: I) -> Self { let _ = extra; todo!() }
    pub fn allows(&self, host: &str) -> bool { let _ = host; todo!() }
}

/// A validated push endpoint (https, allowed host, ≤ 1024 chars).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint { _p: () }

impl Endpoint {
    pub fn parse(s: &str, allowed: &AllowedHosts) -> Result<Self, SubscriptionError> { let _ = (s, allowed); todo!() }
    pub fn as_str(&self) -> &str { todo!() }
    pub fn host(&self) -> &str { todo!() }
    /// scheme://host[:port] — the VAPID audience.
    pub fn origin(&self) -> &str { todo!() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P256dh(pub [u8; 65]);
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSecret(pub [u8; 16]);

impl P256dh { pub fn parse(b64: &str) -> Result<Self, SubscriptionError> { let _ = b64; todo!() } }
impl AuthSecret { pub fn parse(b64: &str) -> Result<Self, SubscriptionError> { let _ = b64; todo!() } }

/// The browser's `PushSubscription.toJSON()` shape, before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionJson {
    pub endpoint: String,
    #[serde(default)]
    pub expiration_time: Option<f64>,
    pub keys: SubscriptionKeysJson,
}
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct SubscriptionKeysJson {
    pub p256dh: String,
    pub auth: String,
}

/// A validated subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: Endpoint,
    pub p256dh: P256dh,
    pub auth: AuthSecret,
    pub expiration_time: Option<i64>,
}

impl Subscription {
    pub fn parse(json: &SubscriptionJson, allowed: &AllowedHosts) -> Result<Self, SubscriptionError> { let _ = (json, allowed); todo!() }
}

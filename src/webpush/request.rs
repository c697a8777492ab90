//! RFC 8030 request building. INTERFACE STUB.
use super::{ece::Encrypted, subscription::Endpoint};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u32);
impl Ttl {
    pub const MAX: u32 = 28 * 24 * 3600;
    /// Clamps to 28 days. 0 is refused by WNS, so callers must not default to it.
    pub fn new(secs: u64) -> Self { let _ = secs; todo!() }
    pub fn seconds(self) -> u32 { self.0 }
    pub fn as_duration(self) -> Duration { Duration::from_secs(self.0 as u64) }
}
impl Default for Ttl { fn default() -> Self { Ttl(24 * 3600) } }

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency { VeryLow, Low, #[default] Normal, High }
impl Urgency {
    pub fn as_str(self) -> &'static str { match self { Self::VeryLow => "very-low", Self::Low => "low", Self::Normal => "normal", Self::High => "high" } }
    pub fn parse(s: &str) -> Option<Self> { match s { "very-low" => Some(Self::VeryLow), "low" => Some(Self::Low), "normal" => Some(Self::Normal), "high" => Some(Self::High), _ => None } }
}

/// A caller's replace key. Sent as a fixed-length 32-char URL-safe digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKey(String);
impl TopicKey {
    pub fn new(key: &str) -> Self { let _ = key; todo!() }
    /// The 32-char header value.
    pub fn header_value(&self) -> &str { &self.0 }
}

#[derive(Debug, Clone, Default)]
pub struct PushOptions { pub ttl: Ttl, pub urgency: Urgency, pub topic: Option<TopicKey> }

/// Build the POST to the push service. `authorization` is from `VapidSigner::authorization`;
/// for aesgcm the VAPID key is also appended to Crypto-Key as `p256ecdsa=` by this function.
pub fn build(client: &reqwest::Client, endpoint: &Endpoint, encrypted: Encrypted, opts: &PushOptions, authorization: &str, vapid_public_key_b64: &str) -> reqwest::RequestBuilder {
    let _ = (client, endpoint, encrypted, opts, authorization, vapid_public_key_b64); todo!()
}

//! RFC 8292 VAPID. INTERFACE STUB.
use super::{keys::VapidKey, subscription::Endpoint};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ContactError {
    #[error("{0}")]
    Invalid(String),
}

/// A validated `sub` claim: `mailto:` with a real address, or an `https:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact(String);
impl Contact {
    pub fn parse(s: &str) -> Result<Self, ContactError> { let _ = s; todo!() }
    pub fn as_str(&self) -> &str { &self.0 }
}

#[derive(Debug, thiserror::Error)]
pub enum VapidError { #[error("signing failed: {0}")] Sign(String) }

/// Signs VAPID tokens and caches them per audience until shortly before expiry.
pub struct VapidSigner { _p: () }
impl VapidSigner {
    pub fn new(key: VapidKey, contact: Option<Contact>) -> Self { let _ = (key, contact); todo!() }
    /// `vapid t=<jwt>, k=<public key>` for this endpoint's origin; cached.
    pub fn authorization(&self, endpoint: &Endpoint) -> Result<std::sync::Arc<str>, VapidError> { let _ = endpoint; todo!() }
    pub fn public_key_base64(&self) -> String { todo!() }
}

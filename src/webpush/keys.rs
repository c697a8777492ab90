//! VAPID key pairs (P-256). INTERFACE STUB — bodies to be implemented.

/// Errors from importing or generating keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
}

/// An application's VAPID signing key.
pub struct VapidKey {
    _private: (),
}

impl VapidKey {
    pub fn generate() -> Result<Self, KeyError> { todo!() }
    /// Import from PKCS#8 DER (the form Herald seals at rest).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> { let _ = der; todo!() }
    /// Export as PKCS#8 DER.
    pub fn to_pkcs8(&self) -> Vec<u8> { todo!() }
    /// The uncompressed 65-byte public point.
    pub fn public_key(&self) -> &[u8; 65] { todo!() }
    /// base64url (no padding) of the uncompressed point: the browser's `applicationServerKey`.
    pub fn public_key_base64(&self) -> String { todo!() }
}

/// Parse a base64url public key (with or without padding) into the 65-byte point, checking it is on the curve.
pub fn parse_public_key(b64: &str) -> Result<[u8; 65], KeyError> { let _ = b64; todo!() }

//! RFC 8291 / RFC 8188 payload encryption. INTERFACE STUB.
use super::subscription::{AuthSecret, P256dh};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding { Aes128gcm, Aesgcm }

impl ContentEncoding {
    pub fn as_str(self) -> &'static str { match self { Self::Aes128gcm => "aes128gcm", Self::Aesgcm => "aesgcm" } }
    pub fn parse(s: &str) -> Option<Self> { match s { "aes128gcm" => Some(Self::Aes128gcm), "aesgcm" => Some(Self::Aesgcm), _ => None } }
}

/// Largest encrypted body Herald sends.
pub const MAX_BODY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EceError {
    #[error("payload is {size} bytes; the largest payload for {encoding} is {max} bytes")]
    TooLarge { size: usize, max: usize, encoding: &'static str },
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// Largest plaintext that fits for this encoding.
pub fn max_plaintext(enc: ContentEncoding) -> usize { let _ = enc; todo!() }

/// An encrypted body plus the headers its encoding needs.
#[derive(Debug, Clone)]
pub struct Encrypted {
    pub encoding: ContentEncoding,
    pub body: Vec<u8>,
    /// aesgcm only: value for the `Encryption` header (`salt=...`).
    pub encryption_header: Option<String>,
    /// aesgcm only: `dh=...` part of the `Crypto-Key` header (VAPID `p256ecdsa=` is not included).
    pub crypto_key_header: Option<String>,
}

/// Encrypt with a fresh ephemeral key and salt.
pub fn encrypt(p256dh: &P256dh, auth: &AuthSecret, plaintext: &[u8], enc: ContentEncoding) -> Result<Encrypted, EceError> { let _ = (p256dh, auth, plaintext, enc); todo!() }

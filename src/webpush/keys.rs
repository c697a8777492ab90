//! VAPID key pairs (P-256 / ES256) and the base64 and point checks shared by
//! the rest of the protocol core.
//!
//! Invariants:
//! - A [`VapidKey`] always holds a usable signing key, its uncompressed public
//!   point and its PKCS#8 v1 DER encoding; export never fails.
//! - Every public key accepted here (VAPID or a subscriber's `p256dh`) is the
//!   65-byte uncompressed form (`0x04 || X || Y`) of a point *on* P-256. An
//!   off-curve point would make ECDH fail on the hot path (or, with a careless
//!   implementation, leak key bits), so it is refused at the door.
//! - Nothing here panics on untrusted input.

use aws_lc_rs::{
    agreement,
    signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use base64::{
    alphabet,
    engine::{
        general_purpose::URL_SAFE_NO_PAD, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig,
    },
    Engine,
};
use std::sync::Arc;

/// Errors from importing or generating keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
}

/// An application's VAPID signing key.
///
/// Cloning is cheap (the key material is shared, never copied).
#[derive(Clone)]
pub struct VapidKey {
    pair: Arc<EcdsaKeyPair>,
    public: [u8; 65],
    pkcs8: Arc<[u8]>,
}

impl std::fmt::Debug for VapidKey {
    // Never print the private half, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    pub fn generate() -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| KeyError::Invalid("could not generate a P-256 key pair".into()))?;
        Self::from_pair(pair)
    }

    /// Import from PKCS#8 DER (the form Herald seals at rest).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        if der.is_empty() {
            return Err(KeyError::Invalid(
                "VAPID private key is empty; expected PKCS#8 DER".into(),
            ));
        }
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|e| {
                KeyError::Invalid(format!(
                    "VAPID private key is not a PKCS#8 DER P-256 key ({e})"
                ))
            })?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: EcdsaKeyPair) -> Result<Self, KeyError> {
        let public: [u8; 65] = pair.public_key().as_ref().try_into().map_err(|_| {
            KeyError::Invalid("VAPID public key is not an uncompressed P-256 point".into())
        })?;
        // Serialise once, so `to_pkcs8` is infallible and always the canonical
        // v1 form whatever variant was imported.
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| KeyError::Invalid("could not encode the VAPID key as PKCS#8".into()))?;
        Ok(Self {
            pkcs8: Arc::from(pkcs8.as_ref()),
            pair: Arc::new(pair),
            public,
        })
    }

    /// Export as PKCS#8 DER.
    pub fn to_pkcs8(&self) -> Vec<u8> {
        self.pkcs8.to_vec()
    }

    /// The uncompressed 65-byte public point.
    pub fn public_key(&self) -> &[u8; 65] {
        &self.public
    }

    /// base64url (no padding) of the uncompressed point: the browser's `applicationServerKey`.
    pub fn public_key_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public)
    }

    /// The signing key, for the VAPID signer.
    pub(crate) fn pair(&self) -> &EcdsaKeyPair {
        &self.pair
    }
}

/// Parse a base64url public key (with or without padding) into the 65-byte point, checking it is on the curve.
pub fn parse_public_key(b64: &str) -> Result<[u8; 65], KeyError> {
    let bytes = decode_b64(b64, 65)
        .ok_or_else(|| KeyError::Invalid("public key is not valid base64url".into()))?;
    let point: [u8; 65] = bytes.as_slice().try_into().map_err(|_| {
        KeyError::Invalid(format!(
            "public key is {} bytes; expected the 65-byte uncompressed P-256 point",
            bytes.len()
        ))
    })?;
    if point[0] != 0x04 {
        return Err(KeyError::Invalid(
            "public key must be an uncompressed P-256 point (first byte 0x04)".into(),
        ));
    }
    if !is_on_curve(&point) {
        return Err(KeyError::Invalid(
            "public key is not a point on the P-256 curve".into(),
        ));
    }
    Ok(point)
}

/// True when `point` is an uncompressed P-256 point on the curve (and not the
/// point at infinity, which has no uncompressed encoding).
pub(crate) fn is_on_curve(point: &[u8; 65]) -> bool {
    point[0] == 0x04
        && agreement::ParsedPublicKey::try_from(agreement::UnparsedPublicKey::new(
            &agreement::ECDH_P256,
            point,
        ))
        .is_ok()
}

/// URL-safe decoder that accepts canonical padding or none.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decode base64url, with or without padding, also tolerating the standard
/// alphabet (`+` `/`) that some client libraries emit. `max_bytes` bounds the
/// work done on hostile input: anything that would decode to more is refused
/// before decoding.
pub(crate) fn decode_b64(s: &str, max_bytes: usize) -> Option<Vec<u8>> {
    let s = s.trim();
    // 4 characters carry 3 bytes; allow for up to two padding characters.
    if s.len() > max_bytes.div_ceil(3) * 4 + 2 {
        return None;
    }
    if s.bytes().any(|b| b == b'+' || b == b'/') {
        // Mixed alphabets are refused rather than guessed at.
        if s.bytes().any(|b| b == b'-' || b == b'_') {
            return None;
        }
        let mapped: String = s
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        return URL_SAFE_LENIENT.decode(mapped).ok();
    }
    URL_SAFE_LENIENT.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_export_import_roundtrip() {
        let k = VapidKey::generate().unwrap();
        let der = k.to_pkcs8();
        let k2 = VapidKey::from_pkcs8(&der).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        assert_eq!(k.public_key()[0], 0x04);
        let b64 = k.public_key_base64();
        assert_eq!(b64.len(), 87);
        assert_eq!(&parse_public_key(&b64).unwrap(), k.public_key());
        assert!(!format!("{k:?}").contains(&format!("{:?}", &der[..])));
    }

    #[test]
    fn malformed_private_keys_are_refused_with_a_message() {
        assert!(VapidKey::from_pkcs8(&[])
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let e = VapidKey::from_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00])
            .unwrap_err()
            .to_string();
        assert!(e.contains("PKCS#8"), "{e}");
        let mut der = VapidKey::generate().unwrap().to_pkcs8();
        der.truncate(der.len() - 3);
        assert!(VapidKey::from_pkcs8(&der).is_err());
    }

    #[test]
    fn public_key_parsing() {
        let k = VapidKey::generate().unwrap();
        let b64 = k.public_key_base64();
        // Padded and standard-alphabet forms are accepted.
        let padded = format!("{b64}=");
        assert_eq!(&parse_public_key(&padded).unwrap(), k.public_key());
        let std_alpha = base64::engine::general_purpose::STANDARD.encode(k.public_key());
        assert_eq!(&parse_public_key(&std_alpha).unwrap(), k.public_key());

        assert!(parse_public_key("").unwrap_err().to_string().contains("65"));
        assert!(parse_public_key("!!!")
            .unwrap_err()
            .to_string()
            .contains("base64"));
        // Compressed form.
        let mut compressed = vec![0x02];
        compressed.extend_from_slice(&k.public_key()[1..33]);
        let e = parse_public_key(&URL_SAFE_NO_PAD.encode(&compressed))
            .unwrap_err()
            .to_string();
        assert!(e.contains("65"), "{e}");
        // Wrong prefix byte.
        let mut wrong = *k.public_key();
        wrong[0] = 0x05;
        assert!(parse_public_key(&URL_SAFE_NO_PAD.encode(wrong))
            .unwrap_err()
            .to_string()
            .contains("0x04"));
        // Off the curve: flip a bit of Y.
        let mut off = *k.public_key();
        off[64] ^= 1;
        assert!(parse_public_key(&URL_SAFE_NO_PAD.encode(off))
            .unwrap_err()
            .to_string()
            .contains("curve"));
        // Huge input is refused cheaply.
        assert!(parse_public_key(&"A".repeat(100_000)).is_err());
    }
}

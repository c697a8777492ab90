//! Payload encryption for Web Push: RFC 8291 message encryption over the
//! RFC 8188 `aes128gcm` content coding, and the legacy `aesgcm` coding of
//! draft-ietf-webpush-encryption-04 that some older browsers still need.
//!
//! Invariants:
//! - Every message gets a fresh ephemeral P-256 key and a fresh random 16-byte
//!   salt ([`encrypt`]). Reusing either with the same subscriber would reuse
//!   the AES-GCM key and nonce, which breaks confidentiality; the only way to
//!   fix them is [`encrypt_with`], which exists for published test vectors.
//! - Herald always sends exactly one record, so the nonce is the derived base
//!   nonce itself, and the encrypted body never exceeds [`MAX_BODY`] (4096)
//!   bytes, the size every push service must accept (RFC 8030 §7.2). Larger
//!   plaintexts are refused with [`EceError::TooLarge`] before any crypto.
//! - `aes128gcm`: body = salt(16) ‖ rs(4, = 4096) ‖ idlen(1, = 65) ‖
//!   ephemeral public key(65) ‖ AES-128-GCM(plaintext ‖ 0x02) ‖ tag(16).
//!   0x02 is the padding delimiter of the last record; no extra padding.
//! - `aesgcm`: body = AES-128-GCM(0x0000 ‖ plaintext) ‖ tag(16): a 2-byte
//!   padding-length prefix of zero; salt and ephemeral key travel in the
//!   `Encryption` and `Crypto-Key` headers.
//!
//! This is the per-message hot path: the body is built in one allocation of
//! the exact final size and encrypted in place; key derivation is HMAC over
//! borrowed slices with no intermediate buffers.
//!
//! [`decrypt`] and [`decrypt_request`] are the receiving side (what a browser
//! does). Herald never needs them in production; they exist so tests and the
//! push-service emulator can check what Herald sends. They accept any input
//! without panicking.
use super::subscription::{AuthSecret, P256dh};
use aws_lc_rs::{aead, agreement, hmac, rand::SecureRandom};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    Aes128gcm,
    Aesgcm,
}

impl ContentEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes128gcm => "aes128gcm",
            Self::Aesgcm => "aesgcm",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "aes128gcm" => Some(Self::Aes128gcm),
            "aesgcm" => Some(Self::Aesgcm),
            _ => None,
        }
    }
}

/// Largest encrypted body Herald sends.
pub const MAX_BODY: usize = 4096;

/// Record size written in the `aes128gcm` header. Herald's single record is
/// always shorter, which marks it as the last one.
pub const RECORD_SIZE: u32 = 4096;

const SALT_LEN: usize = 16;
const KEY_LEN: usize = 65;
const TAG_LEN: usize = 16;
/// salt ‖ rs ‖ idlen ‖ keyid.
pub const AES128GCM_HEADER_LEN: usize = SALT_LEN + 4 + 1 + KEY_LEN;
/// The aesgcm padding-length prefix.
const AESGCM_PAD_LEN: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum EceError {
    #[error("payload is {size} bytes; the largest payload for {encoding} is {max} bytes")]
    TooLarge {
        size: usize,
        max: usize,
        encoding: &'static str,
    },
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// Largest plaintext that fits for this encoding.
///
/// `aes128gcm`: 4096 − 86 (header) − 16 (tag) − 1 (delimiter) = 3993.
/// `aesgcm`: 4096 − 16 (tag) − 2 (padding length) = 4078.
pub const fn max_plaintext(enc: ContentEncoding) -> usize {
    match enc {
        ContentEncoding::Aes128gcm => MAX_BODY - AES128GCM_HEADER_LEN - TAG_LEN - 1,
        ContentEncoding::Aesgcm => MAX_BODY - TAG_LEN - AESGCM_PAD_LEN,
    }
}

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
pub fn encrypt(
    p256dh: &P256dh,
    auth: &AuthSecret,
    plaintext: &[u8],
    enc: ContentEncoding,
) -> Result<Encrypted, EceError> {
    check_size(plaintext, enc)?;
    let ephemeral = agreement::PrivateKey::generate(&agreement::ECDH_P256)
        .map_err(|_| EceError::Crypto("could not generate an ephemeral key".into()))?;
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| EceError::Crypto("no randomness for the salt".into()))?;
    encrypt_inner(p256dh, auth, plaintext, enc, &ephemeral, &salt)
}

/// Encrypt with a *fixed* ephemeral private key (32-byte big-endian scalar)
/// and salt. Only for reproducing published test vectors: using it for real
/// messages would reuse keys and nonces.
#[doc(hidden)]
pub fn encrypt_with(
    p256dh: &P256dh,
    auth: &AuthSecret,
    plaintext: &[u8],
    enc: ContentEncoding,
    ephemeral_private: &[u8; 32],
    salt: &[u8; 16],
) -> Result<Encrypted, EceError> {
    check_size(plaintext, enc)?;
    let ephemeral =
        agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, ephemeral_private)
            .map_err(|_| EceError::Crypto("invalid ephemeral private key".into()))?;
    encrypt_inner(p256dh, auth, plaintext, enc, &ephemeral, salt)
}

fn check_size(plaintext: &[u8], enc: ContentEncoding) -> Result<(), EceError> {
    let max = max_plaintext(enc);
    if plaintext.len() > max {
        return Err(EceError::TooLarge {
            size: plaintext.len(),
            max,
            encoding: enc.as_str(),
        });
    }
    Ok(())
}

fn encrypt_inner(
    p256dh: &P256dh,
    auth: &AuthSecret,
    plaintext: &[u8],
    enc: ContentEncoding,
    ephemeral: &agreement::PrivateKey,
    salt: &[u8; 16],
) -> Result<Encrypted, EceError> {
    let as_public = public_point(ephemeral)
        .map_err(|_| EceError::Crypto("could not compute the ephemeral public key".into()))?;
    // `agree` validates the subscriber's point again; P256dh was checked at
    // parse time, but its field is public and could be built by hand.
    let secret = ecdh(ephemeral, &p256dh.0)
        .ok_or_else(|| EceError::Crypto("keys.p256dh is not a valid P-256 public key".into()))?;
    let kn = derive(enc, &secret, &auth.0, salt, &p256dh.0, &as_public);
    let key = aes_key(&kn.key)?;
    let nonce = aead::Nonce::assume_unique_for_key(kn.nonce);

    match enc {
        ContentEncoding::Aes128gcm => {
            let mut body = Vec::with_capacity(AES128GCM_HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
            body.extend_from_slice(salt);
            body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
            body.push(KEY_LEN as u8);
            body.extend_from_slice(&as_public);
            body.extend_from_slice(plaintext);
            body.push(0x02); // last-record delimiter, no padding
            let tag = key
                .seal_in_place_separate_tag(
                    nonce,
                    aead::Aad::empty(),
                    &mut body[AES128GCM_HEADER_LEN..],
                )
                .map_err(|_| EceError::Crypto("AES-GCM sealing failed".into()))?;
            body.extend_from_slice(tag.as_ref());
            Ok(Encrypted {
                encoding: enc,
                body,
                encryption_header: None,
                crypto_key_header: None,
            })
        }
        ContentEncoding::Aesgcm => {
            let mut body = Vec::with_capacity(AESGCM_PAD_LEN + plaintext.len() + TAG_LEN);
            body.extend_from_slice(&[0, 0]); // no padding
            body.extend_from_slice(plaintext);
            let tag = key
                .seal_in_place_separate_tag(nonce, aead::Aad::empty(), &mut body)
                .map_err(|_| EceError::Crypto("AES-GCM sealing failed".into()))?;
            body.extend_from_slice(tag.as_ref());
            Ok(Encrypted {
                encoding: enc,
                body,
                encryption_header: Some(format!("salt={}", URL_SAFE_NO_PAD.encode(salt))),
                crypto_key_header: Some(format!("dh={}", URL_SAFE_NO_PAD.encode(as_public))),
            })
        }
    }
}

fn public_point(key: &agreement::PrivateKey) -> Result<[u8; 65], ()> {
    key.compute_public_key()
        .map_err(drop)?
        .as_ref()
        .try_into()
        .map_err(drop)
}

fn ecdh(private: &agreement::PrivateKey, peer: &[u8]) -> Option<[u8; 32]> {
    // Only uncompressed points: aws-lc would also accept compressed ones,
    // which Web Push does not allow and whose length breaks the key info.
    if peer.len() != KEY_LEN || peer[0] != 0x04 {
        return None;
    }
    agreement::agree(
        private,
        agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer),
        (),
        |s| s.try_into().map_err(drop),
    )
    .ok()
}

fn aes_key(key: &[u8; 16]) -> Result<aead::LessSafeKey, EceError> {
    aead::UnboundKey::new(&aead::AES_128_GCM, key)
        .map(aead::LessSafeKey::new)
        .map_err(|_| EceError::Crypto("AES key setup failed".into()))
}

/// HMAC-SHA-256 over the concatenation of `parts`, without concatenating.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

struct KeyNonce {
    key: [u8; 16],
    nonce: [u8; 12],
}

/// Content-encryption key and base nonce. Every HKDF here produces at most 32
/// bytes, so HKDF-Expand is a single HMAC over `info ‖ 0x01`, exactly as the
/// RFC 8291 §3.4 pseudocode writes it.
fn derive(
    enc: ContentEncoding,
    ecdh_secret: &[u8; 32],
    auth: &[u8; 16],
    salt: &[u8; 16],
    ua_public: &[u8; 65],
    as_public: &[u8; 65],
) -> KeyNonce {
    let (cek, nonce) = match enc {
        ContentEncoding::Aes128gcm => {
            // RFC 8291 §3.3: mix the auth secret and both public keys into the IKM.
            let prk_key = hmac_sha256(auth, &[ecdh_secret]);
            let ikm = hmac_sha256(&prk_key, &[b"WebPush: info\0", ua_public, as_public, &[1]]);
            // RFC 8188 §2.2: key and nonce from the salted PRK.
            let prk = hmac_sha256(salt, &[&ikm]);
            (
                hmac_sha256(&prk, &[b"Content-Encoding: aes128gcm\0", &[1]]),
                hmac_sha256(&prk, &[b"Content-Encoding: nonce\0", &[1]]),
            )
        }
        ContentEncoding::Aesgcm => {
            // draft-ietf-webpush-encryption-04 §3.3: the auth secret mix uses a
            // fixed info; the keys go into a "P-256" context instead.
            let prk_combine = hmac_sha256(auth, &[ecdh_secret]);
            let ikm = hmac_sha256(&prk_combine, &[b"Content-Encoding: auth\0", &[1]]);
            let prk = hmac_sha256(salt, &[&ikm]);
            let len = &[0u8, KEY_LEN as u8][..];
            (
                hmac_sha256(
                    &prk,
                    &[
                        b"Content-Encoding: aesgcm\0P-256\0",
                        len,
                        ua_public,
                        len,
                        as_public,
                        &[1],
                    ],
                ),
                hmac_sha256(
                    &prk,
                    &[
                        b"Content-Encoding: nonce\0P-256\0",
                        len,
                        ua_public,
                        len,
                        as_public,
                        &[1],
                    ],
                ),
            )
        }
    };
    let mut kn = KeyNonce {
        key: [0; 16],
        nonce: [0; 12],
    };
    kn.key.copy_from_slice(&cek[..16]);
    kn.nonce.copy_from_slice(&nonce[..12]);
    kn
}

/// The nonce of record `seq`: the base nonce XOR the big-endian sequence number.
fn record_nonce(base: &[u8; 12], seq: u64) -> aead::Nonce {
    let mut n = *base;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    aead::Nonce::assume_unique_for_key(n)
}

// ---------------------------------------------------------------------------
// Receiving side.

/// Why a body could not be decrypted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecryptError {
    #[error("invalid receiver key: {0}")]
    InvalidKey(String),
    #[error("auth secret must be 16 bytes")]
    InvalidAuth,
    #[error("missing or malformed {0} header")]
    Header(&'static str),
    #[error("unsupported Content-Encoding {0:?}")]
    Encoding(String),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("authentication failed: wrong key, auth secret or corrupted body")]
    Auth,
    #[error("invalid padding")]
    Padding,
}

/// Largest body [`decrypt`] accepts, to bound work on hostile input. Far
/// above what any push service forwards.
pub const MAX_DECRYPT_BODY: usize = 1 << 20;

/// Decrypt a Web Push body as a user agent would.
///
/// - `ua_private_key`: the subscriber's private key, either the raw 32-byte
///   big-endian scalar or DER (PKCS#8 or RFC 5915 `ECPrivateKey`). Its public
///   half is recomputed, as both codings bind it into the key derivation.
/// - `auth`: the subscription's 16-byte auth secret.
/// - `encryption_header`, `crypto_key_header`: the request's `Encryption` and
///   `Crypto-Key` header values; required for `aesgcm`, ignored for `aes128gcm`.
///
/// Multiple records are supported for both codings. Never panics.
pub fn decrypt(
    ua_private_key: &[u8],
    auth: &[u8],
    body: &[u8],
    encoding: ContentEncoding,
    encryption_header: Option<&str>,
    crypto_key_header: Option<&str>,
) -> Result<Vec<u8>, DecryptError> {
    let auth: &[u8; 16] = auth.try_into().map_err(|_| DecryptError::InvalidAuth)?;
    let private = import_ua_private(ua_private_key)?;
    let ua_public = public_point(&private)
        .map_err(|_| DecryptError::InvalidKey("cannot compute public key".into()))?;
    if body.len() > MAX_DECRYPT_BODY {
        return Err(DecryptError::Malformed(format!(
            "body over {MAX_DECRYPT_BODY} bytes"
        )));
    }
    match encoding {
        ContentEncoding::Aes128gcm => decrypt_aes128gcm(&private, &ua_public, auth, body),
        ContentEncoding::Aesgcm => {
            let enc = encryption_header.ok_or(DecryptError::Header("Encryption"))?;
            let ck = crypto_key_header.ok_or(DecryptError::Header("Crypto-Key"))?;
            let salt = header_param(enc, "salt").ok_or(DecryptError::Header("Encryption"))?;
            let salt: [u8; 16] =
                decode_b64_exact(salt).ok_or(DecryptError::Header("Encryption"))?;
            let rs = match header_param(enc, "rs") {
                None => RECORD_SIZE as usize,
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|&r| r > AESGCM_PAD_LEN && r <= MAX_DECRYPT_BODY)
                    .ok_or(DecryptError::Header("Encryption"))?,
            };
            let dh = header_param(ck, "dh").ok_or(DecryptError::Header("Crypto-Key"))?;
            let as_public: [u8; 65] =
                decode_b64_exact(dh).ok_or(DecryptError::Header("Crypto-Key"))?;
            decrypt_aesgcm(&private, &ua_public, auth, &salt, &as_public, rs, body)
        }
    }
}

/// [`decrypt`] reading `Content-Encoding`, `Encryption` and `Crypto-Key` from
/// the request headers (the same `http` header map hyper and reqwest use).
pub fn decrypt_request(
    ua_private_key: &[u8],
    auth: &[u8],
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ce = get("content-encoding").ok_or(DecryptError::Header("Content-Encoding"))?;
    let encoding =
        ContentEncoding::parse(ce.trim()).ok_or_else(|| DecryptError::Encoding(ce.to_string()))?;
    decrypt(
        ua_private_key,
        auth,
        body,
        encoding,
        get("encryption"),
        get("crypto-key"),
    )
}

fn import_ua_private(key: &[u8]) -> Result<agreement::PrivateKey, DecryptError> {
    let r = if key.len() == 32 {
        agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, key)
    } else {
        agreement::PrivateKey::from_private_key_der(&agreement::ECDH_P256, key)
    };
    r.map_err(|e| DecryptError::InvalidKey(e.to_string()))
}

/// Find `name=value` in a header such as `keyid=a;dh=BASE64, p256ecdsa=...`.
/// Parameters may be separated by `;` or `,`, and values may be quoted.
fn header_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split([';', ',']).find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

fn decode_b64_exact<const N: usize>(s: &str) -> Option<[u8; N]> {
    super::keys::decode_b64(s, N)?.try_into().ok()
}

fn decrypt_aes128gcm(
    private: &agreement::PrivateKey,
    ua_public: &[u8; 65],
    auth: &[u8; 16],
    body: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    if body.len() < SALT_LEN + 5 {
        return Err(DecryptError::Malformed(
            "shorter than the aes128gcm header".into(),
        ));
    }
    let (salt, rest) = body.split_at(SALT_LEN);
    let (rs, rest) = rest.split_at(4);
    let rs = u32::from_be_bytes([rs[0], rs[1], rs[2], rs[3]]) as usize;
    // A record must hold at least a delimiter and the tag.
    if rs < TAG_LEN + 2 {
        return Err(DecryptError::Malformed(format!(
            "record size {rs} too small"
        )));
    }
    let idlen = rest[0] as usize;
    let rest = &rest[1..];
    if idlen != KEY_LEN || rest.len() < idlen {
        return Err(DecryptError::Malformed(format!(
            "keyid must be the 65-byte sender key (idlen {idlen})"
        )));
    }
    let (keyid, records) = rest.split_at(idlen);
    let as_public: &[u8; 65] = keyid
        .try_into()
        .map_err(|_| DecryptError::Malformed("keyid".into()))?;
    let salt: &[u8; 16] = salt
        .try_into()
        .map_err(|_| DecryptError::Malformed("salt".into()))?;
    if records.is_empty() {
        return Err(DecryptError::Malformed("no records".into()));
    }
    let secret = ecdh(private, as_public)
        .ok_or_else(|| DecryptError::Malformed("sender key is not on P-256".into()))?;
    let kn = derive(
        ContentEncoding::Aes128gcm,
        &secret,
        auth,
        salt,
        ua_public,
        as_public,
    );
    let key = aes_key(&kn.key).map_err(|_| DecryptError::Auth)?;

    let mut out = Vec::with_capacity(records.len());
    let mut buf = Vec::with_capacity(rs.min(records.len()));
    let count = records.len().div_ceil(rs);
    for (seq, record) in records.chunks(rs).enumerate() {
        if record.len() <= TAG_LEN {
            return Err(DecryptError::Malformed(
                "record shorter than its tag".into(),
            ));
        }
        buf.clear();
        buf.extend_from_slice(record);
        let plain = key
            .open_in_place(
                record_nonce(&kn.nonce, seq as u64),
                aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| DecryptError::Auth)?;
        // Padding: data ‖ delimiter ‖ 0x00*. The delimiter is 0x02 on the last
        // record, 0x01 on the others (RFC 8188 §2).
        let delim = plain
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(DecryptError::Padding)?;
        let last = seq + 1 == count;
        match (plain[delim], last) {
            (0x02, true) | (0x01, false) => {}
            _ => return Err(DecryptError::Padding),
        }
        out.extend_from_slice(&plain[..delim]);
    }
    Ok(out)
}

fn decrypt_aesgcm(
    private: &agreement::PrivateKey,
    ua_public: &[u8; 65],
    auth: &[u8; 16],
    salt: &[u8; 16],
    as_public: &[u8; 65],
    rs: usize,
    body: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    if body.len() < TAG_LEN + AESGCM_PAD_LEN {
        return Err(DecryptError::Malformed(
            "shorter than one aesgcm record".into(),
        ));
    }
    let secret = ecdh(private, as_public).ok_or(DecryptError::Header("Crypto-Key"))?;
    let kn = derive(
        ContentEncoding::Aesgcm,
        &secret,
        auth,
        salt,
        ua_public,
        as_public,
    );
    let key = aes_key(&kn.key).map_err(|_| DecryptError::Auth)?;
    // In aesgcm, `rs` counts the plaintext (padding included); each encrypted
    // record adds the tag. A body that is an exact multiple of full records
    // would be truncatable, so the last record must be shorter than full.
    let full = rs + TAG_LEN;
    if body.len() % full == 0 {
        return Err(DecryptError::Malformed(
            "last record is full-sized (possible truncation)".into(),
        ));
    }
    let mut out = Vec::with_capacity(body.len());
    let mut buf = Vec::with_capacity(full.min(body.len()));
    for (seq, record) in body.chunks(full).enumerate() {
        if record.len() < TAG_LEN + AESGCM_PAD_LEN {
            return Err(DecryptError::Malformed(
                "record shorter than its tag and padding".into(),
            ));
        }
        buf.clear();
        buf.extend_from_slice(record);
        let plain = key
            .open_in_place(
                record_nonce(&kn.nonce, seq as u64),
                aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| DecryptError::Auth)?;
        let pad = u16::from_be_bytes([plain[0], plain[1]]) as usize;
        let data = plain
            .get(AESGCM_PAD_LEN + pad..)
            .ok_or(DecryptError::Padding)?;
        if plain[AESGCM_PAD_LEN..AESGCM_PAD_LEN + pad]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(DecryptError::Padding);
        }
        out.extend_from_slice(data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush::keys::parse_public_key;

    fn ua() -> (agreement::PrivateKey, P256dh, AuthSecret) {
        let k = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
        let p = public_point(&k).unwrap();
        (k, P256dh(p), AuthSecret([7; 16]))
    }

    fn raw(k: &agreement::PrivateKey) -> Vec<u8> {
        use aws_lc_rs::encoding::{AsBigEndian, EcPrivateKeyBin};
        let b: EcPrivateKeyBin<'_> = k.as_be_bytes().unwrap();
        b.as_ref().to_vec()
    }

    #[test]
    fn limits_arithmetic() {
        assert_eq!(AES128GCM_HEADER_LEN, 86);
        assert_eq!(max_plaintext(ContentEncoding::Aes128gcm), 3993);
        assert_eq!(max_plaintext(ContentEncoding::Aesgcm), 4078);
    }

    #[test]
    fn roundtrip_both_encodings_at_edges() {
        let (k, p, a) = ua();
        let raw = raw(&k);
        for enc in [ContentEncoding::Aes128gcm, ContentEncoding::Aesgcm] {
            for n in [0, 1, 100, max_plaintext(enc)] {
                let msg: Vec<u8> = (0..n).map(|i| i as u8).collect();
                let e = encrypt(&p, &a, &msg, enc).unwrap();
                assert!(e.body.len() <= MAX_BODY);
                if n == max_plaintext(enc) {
                    assert_eq!(e.body.len(), MAX_BODY);
                }
                let out = decrypt(
                    &raw,
                    &a.0,
                    &e.body,
                    enc,
                    e.encryption_header.as_deref(),
                    e.crypto_key_header.as_deref(),
                )
                .unwrap();
                assert_eq!(out, msg);
            }
            let too = vec![0u8; max_plaintext(enc) + 1];
            let err = encrypt(&p, &a, &too, enc).unwrap_err().to_string();
            assert!(err.contains(&max_plaintext(enc).to_string()), "{err}");
        }
    }

    #[test]
    fn fresh_key_and_salt_each_message() {
        let (_, p, a) = ua();
        let e1 = encrypt(&p, &a, b"x", ContentEncoding::Aes128gcm).unwrap();
        let e2 = encrypt(&p, &a, b"x", ContentEncoding::Aes128gcm).unwrap();
        assert_ne!(e1.body[..16], e2.body[..16], "salt reused");
        assert_ne!(e1.body[21..86], e2.body[21..86], "ephemeral key reused");
        assert_eq!(&e1.body[16..21], &[0, 0, 0x10, 0, 65]);
        parse_public_key(&URL_SAFE_NO_PAD.encode(&e1.body[21..86])).unwrap();
    }

    #[test]
    fn tampering_and_wrong_keys_fail() {
        let (k, p, a) = ua();
        let raw = raw(&k);
        let e = encrypt(&p, &a, b"hello", ContentEncoding::Aes128gcm).unwrap();
        let mut bad = e.body.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            decrypt(&raw, &a.0, &bad, ContentEncoding::Aes128gcm, None, None),
            Err(DecryptError::Auth)
        );
        assert_eq!(
            decrypt(
                &raw,
                &[8; 16],
                &e.body,
                ContentEncoding::Aes128gcm,
                None,
                None
            ),
            Err(DecryptError::Auth)
        );
        assert_eq!(
            decrypt(
                &raw,
                &[8; 3],
                &e.body,
                ContentEncoding::Aes128gcm,
                None,
                None
            ),
            Err(DecryptError::InvalidAuth)
        );
        let g = encrypt(&p, &a, b"hello", ContentEncoding::Aesgcm).unwrap();
        assert_eq!(
            decrypt(
                &raw,
                &a.0,
                &g.body,
                ContentEncoding::Aesgcm,
                None,
                g.crypto_key_header.as_deref()
            ),
            Err(DecryptError::Header("Encryption"))
        );
    }

    #[test]
    fn pkcs8_receiver_key_and_request_headers() {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let (k, p, a) = ua();
        let der: Pkcs8V1Der<'_> = k.as_der().unwrap();
        let g = encrypt(&p, &a, b"legacy", ContentEncoding::Aesgcm).unwrap();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("content-encoding", "aesgcm".parse().unwrap());
        h.insert(
            "encryption",
            g.encryption_header.clone().unwrap().parse().unwrap(),
        );
        let ck = format!("{};p256ecdsa=BAAA", g.crypto_key_header.clone().unwrap());
        h.insert("crypto-key", ck.parse().unwrap());
        assert_eq!(
            decrypt_request(der.as_ref(), &a.0, &h, &g.body).unwrap(),
            b"legacy"
        );
    }

    #[test]
    fn invalid_p256dh_field_is_an_error_not_a_panic() {
        let (_, _, a) = ua();
        let bogus = P256dh([4; 65]);
        assert!(matches!(
            encrypt(&bogus, &a, b"x", ContentEncoding::Aes128gcm),
            Err(EceError::Crypto(_))
        ));
    }
}

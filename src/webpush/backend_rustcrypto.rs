//! The same message encryption (`aes128gcm`) and VAPID signing as the shipped
//! code, built on the RustCrypto crates (p256, hkdf, aes-gcm, sha2) instead of
//! aws-lc-rs. Compiled only with the `rustcrypto` feature, for the backend
//! comparison benchmark; Herald itself never uses it.
//!
//! To keep the comparison fair it produces byte-identical output for fixed
//! inputs (checked against the RFC 8291 vector), is read back by Herald's own
//! [`decrypt`](super::ece::decrypt), and does the same work per call: one
//! allocation for the body, a fresh ephemeral key and salt, and the same
//! per-audience header cache as [`VapidSigner`](super::VapidSigner).
use super::{
    ece::{max_plaintext, ContentEncoding, EceError, AES128GCM_HEADER_LEN, RECORD_SIZE},
    keys::VapidKey,
    subscription::{AuthSecret, Endpoint, P256dh},
    vapid::{Contact, VapidError, REFRESH_MARGIN, TOKEN_LIFETIME},
};
use aes_gcm::{aead::AeadInPlace, Aes128Gcm, KeyInit};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hkdf::Hkdf;
use p256::{
    ecdsa::{signature::Signer, Signature, SigningKey},
    elliptic_curve::sec1::ToEncodedPoint,
    pkcs8::DecodePrivateKey,
    PublicKey, SecretKey,
};
use rand::RngCore;
use sha2::Sha256;
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

/// `aes128gcm` encryption with a fresh ephemeral key and salt.
pub fn encrypt(p256dh: &P256dh, auth: &AuthSecret, plaintext: &[u8]) -> Result<Vec<u8>, EceError> {
    let ephemeral = SecretKey::random(&mut rand::rngs::OsRng);
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    encrypt_inner(p256dh, auth, plaintext, &ephemeral, &salt)
}

/// Fixed ephemeral key and salt, for test vectors only.
#[doc(hidden)]
pub fn encrypt_with(
    p256dh: &P256dh,
    auth: &AuthSecret,
    plaintext: &[u8],
    ephemeral_private: &[u8; 32],
    salt: &[u8; 16],
) -> Result<Vec<u8>, EceError> {
    let ephemeral = SecretKey::from_slice(ephemeral_private)
        .map_err(|_| EceError::Crypto("invalid ephemeral key".into()))?;
    encrypt_inner(p256dh, auth, plaintext, &ephemeral, salt)
}

fn encrypt_inner(
    p256dh: &P256dh,
    auth: &AuthSecret,
    plaintext: &[u8],
    ephemeral: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, EceError> {
    let max = max_plaintext(ContentEncoding::Aes128gcm);
    if plaintext.len() > max {
        return Err(EceError::TooLarge {
            size: plaintext.len(),
            max,
            encoding: "aes128gcm",
        });
    }
    let ua = PublicKey::from_sec1_bytes(&p256dh.0)
        .map_err(|_| EceError::Crypto("keys.p256dh is not a valid P-256 public key".into()))?;
    let as_public = ephemeral.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), ua.as_affine());

    // RFC 8291 §3.4, with the hkdf crate doing extract and expand.
    let mut key_info = [0u8; 14 + 65 + 65];
    key_info[..14].copy_from_slice(b"WebPush: info\0");
    key_info[14..79].copy_from_slice(&p256dh.0);
    key_info[79..].copy_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&auth.0), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| EceError::Crypto("hkdf".into()))?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| EceError::Crypto("hkdf".into()))?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| EceError::Crypto("hkdf".into()))?;

    let mut body = Vec::with_capacity(AES128GCM_HEADER_LEN + plaintext.len() + 1 + 16);
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(plaintext);
    body.push(0x02);
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| EceError::Crypto("aes key".into()))?;
    let tag = cipher
        .encrypt_in_place_detached(&nonce.into(), b"", &mut body[AES128GCM_HEADER_LEN..])
        .map_err(|_| EceError::Crypto("AES-GCM sealing failed".into()))?;
    body.extend_from_slice(&tag);
    Ok(body)
}

struct Cached {
    header: Arc<str>,
    expires_at: u64,
}

/// VAPID signer on p256's ECDSA, with the same cache policy as the shipped one.
pub struct RustCryptoSigner {
    key: SigningKey,
    public_b64: String,
    contact: Option<Contact>,
    cache: RwLock<HashMap<String, Cached>>,
}

impl RustCryptoSigner {
    pub fn new(key: &VapidKey, contact: Option<Contact>) -> Result<Self, VapidError> {
        let sk = SigningKey::from_pkcs8_der(&key.to_pkcs8())
            .map_err(|e| VapidError::Sign(e.to_string()))?;
        Ok(Self {
            key: sk,
            public_b64: key.public_key_base64(),
            contact,
            cache: RwLock::new(HashMap::new()),
        })
    }

    pub fn authorization(&self, endpoint: &Endpoint) -> Result<Arc<str>, VapidError> {
        let aud = endpoint.origin();
        let now = now_secs();
        let fresh = |c: &Cached| now + REFRESH_MARGIN.as_secs() < c.expires_at;
        if let Some(c) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(aud)
            .filter(|c| fresh(c))
        {
            return Ok(c.header.clone());
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(aud).filter(|c| fresh(c)) {
            return Ok(c.header.clone());
        }
        let expires_at = now + TOKEN_LIFETIME.as_secs();
        let header: Arc<str> = Arc::from(self.header_for(aud, expires_at)?);
        cache.insert(
            aud.to_string(),
            Cached {
                header: header.clone(),
                expires_at,
            },
        );
        Ok(header)
    }

    pub fn authorization_uncached(&self, endpoint: &Endpoint) -> Result<String, VapidError> {
        self.header_for(endpoint.origin(), now_secs() + TOKEN_LIFETIME.as_secs())
    }

    fn header_for(&self, aud: &str, exp: u64) -> Result<String, VapidError> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            exp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            sub: Option<&'a str>,
        }
        let claims = serde_json::to_vec(&Claims {
            aud,
            exp,
            sub: self.contact.as_ref().map(Contact::as_str),
        })
        .map_err(|e| VapidError::Sign(e.to_string()))?;
        let mut token = String::with_capacity(256);
        token.push_str("eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.");
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let sig: Signature = self
            .key
            .try_sign(token.as_bytes())
            .map_err(|e| VapidError::Sign(e.to_string()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut token);
        Ok(format!("vapid t={token}, k={}", self.public_b64))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush::{ece, AllowedHosts};

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn matches_rfc8291_vector_and_herald_decrypts_it() {
        let p = P256dh::parse("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4").unwrap();
        let a = AuthSecret::parse("BTBZMqHH6r4Tts7J_aSIgg").unwrap();
        let eph: [u8; 32] = b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")
            .try_into()
            .unwrap();
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let msg = b"When I grow up, I want to be a watermelon";
        let rc = encrypt_with(&p, &a, msg, &eph, &salt).unwrap();
        let herald =
            ece::encrypt_with(&p, &a, msg, ContentEncoding::Aes128gcm, &eph, &salt).unwrap();
        assert_eq!(rc, herald.body);
        let ua_private = b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94");
        // Fresh keys: Herald's decrypt reads the RustCrypto output.
        for n in [0, 200, max_plaintext(ContentEncoding::Aes128gcm)] {
            let m = vec![0x5a; n];
            let body = encrypt(&p, &a, &m).unwrap();
            assert_eq!(
                ece::decrypt(
                    &ua_private,
                    &a.0,
                    &body,
                    ContentEncoding::Aes128gcm,
                    None,
                    None
                )
                .unwrap(),
                m
            );
        }
        assert!(encrypt(&p, &a, &[0; 3994]).is_err());
    }

    #[test]
    fn jwt_verifies_with_aws_lc() {
        let key = VapidKey::generate().unwrap();
        let s = RustCryptoSigner::new(&key, Some(Contact::parse("mailto:a@example.com").unwrap()))
            .unwrap();
        let ep = Endpoint::parse(
            "https://fcm.googleapis.com/fcm/send/x",
            &AllowedHosts::vendors(),
        )
        .unwrap();
        let h = s.authorization(&ep).unwrap();
        assert!(Arc::ptr_eq(&h, &s.authorization(&ep).unwrap()));
        let t = h
            .strip_prefix("vapid t=")
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let (input, sig) = t.rsplit_once('.').unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            key.public_key(),
        )
        .verify(input.as_bytes(), &b64(sig))
        .unwrap();
    }
}

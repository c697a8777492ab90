//! Secrets at rest and in use: the master key that seals VAPID private keys,
//! the admin token, app API keys and the short-lived user tokens pages use.
//!
//! Invariants:
//! - VAPID private keys are only ever stored sealed (AES-256-GCM under the
//!   master key, with the app id as associated data so a sealed key cannot be
//!   moved to another app).
//! - API keys and the admin token are high-entropy random strings; only their
//!   SHA-256 is kept, so a database dump does not reveal them.
//! - Every instance sharing a database must use the same master key, so it is
//!   never generated behind the operator's back on PostgreSQL.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("sealed secret cannot be opened (wrong master key or corrupted data)")]
    Unseal,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// 32 random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    b
}

/// A random token with a readable prefix, e.g. `hk_...` for API keys.
pub fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Writes a file only the owner can read, refusing to overwrite.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecretError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The key that seals secrets at rest.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_base64(s: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(s.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim()))
            .map_err(|_| SecretError::MasterKey("not valid base64".into()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            SecretError::MasterKey(format!("must be 32 bytes, got {}", b.len()))
        })?;
        Ok(MasterKey { key })
    }

    pub fn generate() -> Self {
        MasterKey {
            key: random_bytes(),
        }
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.key)
    }

    /// Reads the key file, or creates it (mode 0600) when `create` allows.
    pub fn load_or_create(path: &Path, create: bool) -> Result<(Self, bool), SecretError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::from_base64(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Self::generate();
                write_private(path, format!("{}\n", key.to_base64()).as_bytes())?;
                Ok((key, true))
            }
            Err(e) => Err(io(path)(e)),
        }
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).expect("32-byte key"))
    }

    /// `nonce || ciphertext || tag`, bound to `context` (the owning app id).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let mut out = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut out,
            )
            .expect("sealing cannot fail for in-memory buffers");
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend_from_slice(&out);
        sealed
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SecretError::Unseal);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Unseal)?;
        let mut buf = rest.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Unseal)?;
        Ok(plain.to_vec())
    }

    /// A key for signing user tokens, derived so that it differs from the
    /// sealing key (a leaked user-token key must not open sealed secrets).
    pub fn user_token_key(&self) -> Vec<u8> {
        let salt = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, b"herald");
        let prk = salt.extract(&self.key);
        let mut out = [0u8; 32];
        prk.expand(&[b"user tokens v1"], aws_lc_rs::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("32 bytes is a valid HKDF length");
        out.to_vec()
    }
}

/// The admin token, stored under the keys directory and printed once when created.
pub struct AdminToken {
    pub hash: Vec<u8>,
    /// Set only when the token was created just now, so it can be shown once.
    pub created: Option<String>,
}

impl AdminToken {
    pub fn from_value(token: &str) -> Self {
        AdminToken {
            hash: token_hash(token.trim()),
            created: None,
        }
    }

    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::from_value(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = random_token("ha_");
                write_private(path, format!("{token}\n").as_bytes())?;
                Ok(AdminToken {
                    hash: token_hash(&token),
                    created: Some(token),
                })
            }
            Err(e) => Err(io(path)(e)),
        }
    }

    pub fn matches(&self, presented: &str) -> bool {
        // Compare digests in constant time: the presented token is attacker-chosen.
        aws_lc_rs::constant_time::verify_slices_are_equal(&token_hash(presented), &self.hash)
            .is_ok()
    }
}

/// Claims of a user token: a page may manage subscriptions of `sub` in app `app`.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserClaims {
    pub app: String,
    pub sub: String,
    pub exp: u64,
}

/// Signs and checks user tokens (HS256 under a key derived from the master key).
#[derive(Clone)]
pub struct UserTokens {
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
}

impl UserTokens {
    pub fn new(master: &MasterKey) -> Self {
        let k = master.user_token_key();
        UserTokens {
            encoding: jsonwebtoken::EncodingKey::from_secret(&k),
            decoding: jsonwebtoken::DecodingKey::from_secret(&k),
        }
    }

    pub fn issue(&self, app: &str, user: &str, expires_at_unix: u64) -> String {
        let claims = UserClaims {
            app: app.into(),
            sub: user.into(),
            exp: expires_at_unix,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .expect("HS256 signing of a small claim set cannot fail")
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<UserClaims> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<UserClaims>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_context() {
        let key = MasterKey::generate();
        let sealed = key.seal("app-1", b"private key");
        assert_eq!(key.open("app-1", &sealed).unwrap(), b"private key");
        assert!(
            key.open("app-2", &sealed).is_err(),
            "sealed for another app"
        );
        assert!(
            MasterKey::generate().open("app-1", &sealed).is_err(),
            "another master key"
        );
        assert!(key.open("app-1", &sealed[..10]).is_err(), "truncated");
    }

    #[test]
    fn key_files_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.key");
        let (k1, created) = MasterKey::load_or_create(&path, true).unwrap();
        assert!(created);
        let (k2, created) = MasterKey::load_or_create(&path, true).unwrap();
        assert!(!created);
        assert_eq!(k1.to_base64(), k2.to_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(MasterKey::load_or_create(&dir.path().join("absent"), false).is_err());
    }

    #[test]
    fn the_admin_token_is_shown_only_when_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        let first = AdminToken::load_or_create(&path).unwrap();
        let token = first.created.clone().expect("new token shown once");
        let again = AdminToken::load_or_create(&path).unwrap();
        assert!(again.created.is_none());
        assert!(again.matches(&token));
        assert!(!again.matches("ha_wrong"));
    }

    #[test]
    fn user_tokens_carry_app_and_user_and_expire() {
        let tokens = UserTokens::new(&MasterKey::generate());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = tokens.issue("app", "bo", now + 60);
        let claims = tokens.verify(&t).unwrap();
        assert_eq!((claims.app.as_str(), claims.sub.as_str()), ("app", "bo"));
        assert!(
            tokens.verify(&tokens.issue("app", "bo", now - 1)).is_none(),
            "expired"
        );
        assert!(
            UserTokens::new(&MasterKey::generate()).verify(&t).is_none(),
            "other key"
        );
    }
}

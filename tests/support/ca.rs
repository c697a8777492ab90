//! A throw-away certificate authority for tests.
//!
//! Herald must reach push services over real TLS and trust only the CAs it is
//! told about, so tests cannot use plain HTTP or switch verification off: that
//! would hide exactly the configuration mistakes (missing extra CA, wrong host
//! name) the tests are meant to catch. Instead each emulator gets its own CA,
//! and the test hands the CA's PEM file to Herald as an extra trusted root.
//!
//! ```ignore
//! let ca = TestCa::new();
//! let leaf = ca.issue_server_cert(&["localhost", "127.0.0.1"]);
//! let ca_file = ca.write_pem(tmp.path());   // for Herald's extra CA certificates
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use time::{Duration as TimeDuration, OffsetDateTime};

/// A self-signed root that can issue server certificates.
pub struct TestCa {
    /// The root certificate, PEM. Trust this to trust every leaf it issues.
    pub cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its private key, ready for a rustls `ServerConfig`.
pub struct ServerCert {
    /// Leaf first, then the CA, as a server sends them.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// Create a fresh CA (ECDSA P-256). Every call gives a different, unrelated root,
    /// so a client configured for one emulator cannot accidentally trust another.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Herald Test Push Service CA");
        dn.push(DnType::OrganizationName, "Herald tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (not_before, not_after) = validity();
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Issue a server certificate for the given names. Strings that parse as IP
    /// addresses become IP SANs, the rest DNS SANs.
    pub fn issue_server_cert(&self, names: &[&str]) -> ServerCert {
        let key = KeyPair::generate().expect("generate leaf key");
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity();
        params.not_before = not_before;
        params.not_after = not_after;
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        ServerCert {
            chain: vec![leaf.der().clone(), self.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Write the root certificate as `test-ca.pem` in `dir` and return its path,
    /// for configuration that takes CA files rather than PEM text.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("write CA PEM");
        path
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Valid from a day ago (tolerates clock skew between processes) for a year:
/// realistic bounds rather than rcgen's 1975..4096 default, so code that looks
/// at validity sees something ordinary.
fn validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - TimeDuration::days(1), now + TimeDuration::days(365))
}

//! Web Push protocol core: everything needed to turn (subscription, payload,
//! options) into an HTTP request a real push service accepts, and to turn the
//! push service's answer into a decision.
//!
//! This module knows nothing of storage or HTTP serving. It is pure protocol:
//! - [`keys`]: VAPID key pairs (P-256), import/export.
//! - [`subscription`]: parsing the browser's `PushSubscription.toJSON()` and
//!   the allow-list of push-service hosts.
//! - [`ece`]: RFC 8291 payload encryption (`aes128gcm`, legacy `aesgcm`).
//! - [`vapid`]: RFC 8292 `Authorization` header with a per-audience cache.
//! - [`request`]: RFC 8030 headers (TTL, Urgency, Topic) and the request itself.
//! - [`vendor`]: which push service an endpoint belongs to and what its answers mean.
//!
//! All cryptography is aws-lc-rs. The receiving side of the encryption
//! ([`ece::decrypt`], [`ece::decrypt_request`]) is here too, so tests and a
//! push-service stand-in can read what Herald sends. With the `rustcrypto`
//! feature, `backend_rustcrypto` re-implements encryption and signing on the
//! RustCrypto crates for the backend comparison benchmark only.
//!
//! Nothing in this module panics on untrusted input (subscriptions, push
//! service answers, bodies to decrypt); the property tests in
//! `tests/webpush_props.rs` hold it to that.

/// Alternative crypto backend, for the backend comparison benchmark only.
#[cfg(feature = "rustcrypto")]
pub mod backend_rustcrypto;
pub mod ece;
pub mod keys;
pub mod request;
pub mod subscription;
pub mod vapid;
pub mod vendor;

pub use ece::ContentEncoding;
pub use keys::VapidKey;
pub use request::{PushOptions, TopicKey, Ttl, Urgency};
pub use subscription::{
    AllowedHosts, AuthSecret, Endpoint, P256dh, Subscription, SubscriptionError, SubscriptionJson,
};
pub use vapid::{Contact, VapidSigner};
pub use vendor::{Classified, Outcome, Vendor};

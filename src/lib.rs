//! Herald: a self-hosted Web Push delivery service.
//!
//! # Layout
//! - [`webpush`]: the protocol core (RFC 8291 encryption, RFC 8292 VAPID,
//!   RFC 8030 requests, what each push vendor's answers mean). Knows nothing
//!   of storage or serving.
//! - [`domain`]: Herald's vocabulary: recipients, the payload the browser
//!   decrypts, delivery states.
//! - [`store`]: one storage interface with a backend per database.
//! - [`queue`]: the durable, event-driven delivery queue: dispatcher, sender,
//!   recorder, retry policy.
//! - [`http`]: the HTTP API and pages; the one place errors become statuses.
//! - [`service`]: operations shared by the API and the command line.
//! - [`secrets`]: master key and sealing, admin token, API keys, user tokens.
//! - [`config`], [`metrics`], [`app`] (wiring).
//!
//! Dependencies point one way: `http` → `service`/`queue` → `store` → `domain`;
//! `webpush` is used by `queue` and `http` and depends on nothing of Herald's.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod secrets;
pub mod service;
pub mod store;
pub mod webpush;

pub use app::Application;
pub use config::Settings;

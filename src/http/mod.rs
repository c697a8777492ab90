//! The HTTP API, one router per resource. Nothing else in Herald depends on
//! this module; handlers parse input into domain types, call storage or the
//! queue, and map results to JSON.

pub mod apps;
pub mod error;
pub mod extract;
pub mod notifications;
pub mod pages;
pub mod queue;
pub mod subscriptions;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::secrets::{AdminToken, MasterKey, UserTokens};
use crate::store::Store;
use crate::webpush::AllowedHosts;

/// Everything a handler may need, behind one `Arc`: axum clones the state
/// for every extractor of every request, and cloning the fields one by one
/// (the store's pools and channel, the queue, the caches) cost a dozen
/// atomic counts up and down per request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Store,
    pub queue: Queue,
    pub admin: AdminToken,
    pub master: MasterKey,
    pub user_tokens: UserTokens,
    pub allowed_hosts: AllowedHosts,
    pub metrics: Arc<Metrics>,
    pub app_concurrency: u32,
    /// API key hash → app id. Keys never change and apps are never deleted,
    /// so a key once seen needs no database read again.
    pub api_keys: std::sync::RwLock<std::collections::HashMap<Vec<u8>, String>>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Pages on an app's own origin call the API with a user token, so the API
/// answers cross-origin requests. Every credential is a bearer token sent
/// explicitly, never a cookie, so allowing any origin exposes nothing.
fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

pub fn router(state: AppState, static_dir: &std::path::Path) -> Router {
    Router::new()
        .nest(
            "/api/v1",
            apps::router()
                .merge(subscriptions::router())
                .merge(notifications::router())
                .merge(queue::router())
                .layer(cors()),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(pages::router(static_dir))
        .with_state(state)
}

/// Up when the database answers; 503 (and says so) while it does not.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "database": state.store.backend()})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "degraded", "database": state.store.backend(), "error": e.to_string()}),
            ),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(c) = state.store.queue_counts().await {
        state.metrics.queued.set(c.pending);
    }
    state.metrics.in_flight.set(state.queue.in_flight() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

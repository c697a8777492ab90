//! Apps: creation, listing, settings, credentials, and the public VAPID key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::domain::rfc3339;
use crate::service::{self, ServiceError};
use crate::store::AppRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps", post(create).get(list))
        .route("/apps/{app}", get(show).patch(update))
        .route("/apps/{app}/credentials/regenerate", post(regenerate))
        .route("/apps/{app}/vapid-public-key", get(vapid_public_key))
        .route("/stats", get(stats))
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid { field, message } => ApiError::invalid(field, message),
            ServiceError::Store(e) => ApiError::Store(e),
            ServiceError::Crypto(e) => ApiError::Internal(e),
        }
    }
}

pub fn app_json(a: &AppRow) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "contact": a.contact,
        "vapid_public_key": a.vapid_public_key,
        "max_concurrency": a.max_concurrency,
        "paused": a.max_concurrency == 0,
        "last_config_error": a.last_config_error,
        "last_config_error_at": a.last_config_error_at.map(rfc3339),
        "created_at": rfc3339(a.created_at),
    })
}

/// The app, or 404.
pub async fn existing(state: &AppState, id: &str) -> Result<AppRow, ApiError> {
    state
        .store
        .app_get(id)
        .await?
        .ok_or(ApiError::NotFound("no app with this id"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApp {
    name: String,
    contact: String,
    max_concurrency: Option<u32>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateApp>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin()?;
    let created = service::create_app(
        &state.store,
        &state.master,
        &body.name,
        &body.contact,
        body.max_concurrency.unwrap_or(state.app_concurrency),
    )
    .await?;
    let mut out = app_json(&created.app);
    out["api_key"] = json!(created.api_key);
    Ok((StatusCode::CREATED, Json(out)))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let apps = state.store.app_list().await?;
    Ok(Json(
        json!({ "apps": apps.iter().map(app_json).collect::<Vec<_>>() }),
    ))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_backend(&app)?;
    Ok(Json(app_json(&existing(&state, &app).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateApp {
    contact: Option<String>,
    max_concurrency: Option<i64>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<UpdateApp>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let contact = body
        .contact
        .as_deref()
        .map(service::validate_contact)
        .transpose()?;
    if let Some(m) = body.max_concurrency {
        if !(0..=100_000).contains(&m) {
            return Err(ApiError::invalid(
                "max_concurrency",
                "max_concurrency must be between 0 (paused) and 100000",
            ));
        }
    }
    if contact.is_none() && body.max_concurrency.is_none() {
        return Err(ApiError::invalid(
            "contact",
            "give contact and/or max_concurrency",
        ));
    }
    let updated = state
        .store
        .app_update(
            &app,
            contact.as_ref().map(|c| c.as_str()),
            body.max_concurrency,
        )
        .await?
        .ok_or(ApiError::NotFound("no app with this id"))?;
    state.queue.sender().forget_app(&app);
    // Raising the limit may make held work claimable now.
    state.queue.wake();
    Ok(Json(app_json(&updated)))
}

async fn regenerate(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let r = service::regenerate_credentials(&state.store, &state.master, &app)
        .await?
        .ok_or(ApiError::NotFound("no app with this id"))?;
    state.queue.sender().forget_app(&app);
    Ok(Json(json!({
        "vapid_public_key": r.vapid_public_key,
        "subscriptions_removed": r.subscriptions_removed,
        "deliveries_removed": r.deliveries_removed,
    })))
}

async fn vapid_public_key(
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = existing(&state, &app).await?;
    Ok(Json(json!({ "vapid_public_key": app.vapid_public_key })))
}

async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let counts = state.store.queue_counts().await?;
    let vendors = state.store.vendor_stats().await?;
    Ok(Json(json!({
        "queue": { "pending": counts.pending, "in_flight": counts.in_flight },
        "vendors": vendors.iter().map(|v| json!({
            "vendor": v.vendor,
            "delivered": v.delivered,
            "failed": v.failed,
            "gone": v.gone,
            "expired": v.expired,
            "avg_queue_wait_ms": v.avg_queue_wait_ms,
            "avg_delivery_ms": v.avg_delivery_ms,
        })).collect::<Vec<_>>(),
    })))
}

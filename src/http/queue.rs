//! The admin's view of the queue and its levers.

use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Caller;
use super::AppState;
use crate::domain::{now_millis, rfc3339, DeliveryStatus};
use crate::store::{QueueFilter, QueueRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/queue", get(list).delete(clear))
        .route("/queue/push", post(push))
        .route("/queue/force", post(force))
        .route("/queue/{delivery}", delete(remove))
}

pub fn queue_json(r: &QueueRow) -> Value {
    let queued = r.status == "pending" || r.status == "in_flight";
    json!({
        "id": r.id,
        "app": r.app_id,
        "notification_id": r.notification_id,
        "subscription_id": r.subscription_id,
        "user": r.user_id,
        "title": r.title,
        "endpoint_host": r.endpoint_host,
        "vendor": r.vendor,
        "attempts": r.attempts,
        "last_error": r.last_error,
        "status": r.status,
        "created_at": rfc3339(r.created_at),
        "next_attempt_at": queued.then(|| rfc3339(r.next_attempt_at)),
        "finished_at": r.finished_at.map(rfc3339),
    })
}

#[derive(Deserialize)]
struct ListQuery {
    app: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                "status must be one of pending, in_flight, delivered, failed, gone, expired",
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 1000",
        ));
    }
    let rows = state
        .store
        .queue_list(&QueueFilter {
            app: q.app.filter(|a| !a.is_empty()),
            status,
            limit,
        })
        .await?;
    Ok(Json(
        json!({ "deliveries": rows.iter().map(queue_json).collect::<Vec<_>>() }),
    ))
}

async fn push(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let due = state.store.queue_due_count(now_millis()).await?;
    state.queue.wake();
    Ok(Json(json!({ "due": due })))
}

async fn force(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let forced = state.store.queue_force(now_millis()).await?;
    state.queue.wake();
    Ok(Json(json!({ "forced": forced })))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(delivery): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let id: i64 = delivery
        .parse()
        .map_err(|_| ApiError::invalid("delivery", "delivery must be a numeric delivery id"))?;
    match state.store.queue_remove(id).await? {
        0 => Err(ApiError::NotFound("no delivery with this id")),
        n => Ok(Json(json!({ "removed": n }))),
    }
}

#[derive(Deserialize)]
struct ClearQuery {
    app: Option<String>,
}

async fn clear(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ClearQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let app = q.app.filter(|a| !a.is_empty());
    if let Some(a) = &app {
        super::apps::existing(&state, a).await?;
    }
    let removed = state.store.queue_clear(app.as_deref()).await?;
    Ok(Json(json!({ "removed": removed })))
}

//! Sending: validate, store the notification and its fan-out durably, wake
//! the queue, answer 202. Delivery happens behind the answer.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::existing;
use super::error::ApiError;
use super::extract::{Caller, JsonBody};
use super::subscriptions::validate_user;
use super::AppState;
use crate::domain::{
    new_id, now_millis, rfc3339, DeliveryStatus, NewNotification, Payload, Recipients,
};
use crate::store::Accepted;
use crate::webpush::{ece, ContentEncoding, Ttl, Urgency};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps/{app}/notifications", post(send))
        .route("/apps/{app}/notifications/{id}", get(show))
}

/// A repeated key within this window answers as the first call did.
const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;
const MAX_USERS: usize = 1000;
const MAX_URL_LEN: usize = 2048;
const DEFAULT_TTL_SECS: u64 = 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    user: Option<String>,
    users: Option<Vec<String>>,
    subscription: Option<String>,
    topic: Option<String>,
    all: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: To,
    title: String,
    body: String,
    icon: Option<String>,
    badge: Option<String>,
    image: Option<String>,
    target_url: Option<String>,
    tag: Option<String>,
    data: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    ttl: Option<u64>,
    urgency: Option<String>,
    topic_key: Option<String>,
}

fn recipients(to: To) -> Result<Recipients, ApiError> {
    let given = [
        to.user.is_some(),
        to.users.is_some(),
        to.subscription.is_some(),
        to.topic.is_some(),
        to.all.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::invalid(
            "to",
            "to must have exactly one of user, users, subscription, topic, all",
        ));
    }
    if let Some(u) = to.user {
        validate_user("to.user", &u)?;
        return Ok(Recipients::User(u));
    }
    if let Some(us) = to.users {
        if us.is_empty() || us.len() > MAX_USERS {
            return Err(ApiError::invalid(
                "to.users",
                format!("to.users must list 1 to {MAX_USERS} users"),
            ));
        }
        for (i, u) in us.iter().enumerate() {
            validate_user(&format!("to.users[{i}]"), u)?;
        }
        return Ok(Recipients::Users(us));
    }
    if let Some(s) = to.subscription {
        if s.is_empty() {
            return Err(ApiError::invalid(
                "to.subscription",
                "to.subscription must be a subscription id",
            ));
        }
        return Ok(Recipients::Subscription(s));
    }
    if let Some(t) = to.topic {
        if t.is_empty() || t.len() > 128 {
            return Err(ApiError::invalid(
                "to.topic",
                "to.topic must be 1 to 128 bytes",
            ));
        }
        return Ok(Recipients::Topic(t));
    }
    match to.all {
        Some(true) => Ok(Recipients::All),
        _ => Err(ApiError::invalid("to.all", "to.all must be true")),
    }
}

fn absolute_url(field: &str, value: &str) -> Result<(), ApiError> {
    let rule = || {
        ApiError::invalid(
            field,
            format!("{field} must be an absolute http(s) URL of at most {MAX_URL_LEN} characters"),
        )
    };
    if value.len() > MAX_URL_LEN {
        return Err(rule());
    }
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(rule()),
    }
}

/// Icons may be absolute or relative to the page's origin (`/icon.png`).
fn image_url(field: &str, value: &str) -> Result<(), ApiError> {
    if value.starts_with('/') && !value.starts_with("//") && value.len() <= MAX_URL_LEN {
        return Ok(());
    }
    absolute_url(field, value).map_err(|_| {
        ApiError::invalid(
            field,
            format!("{field} must be an absolute http(s) URL or a path starting with /"),
        )
    })
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at most {max} bytes"),
        ));
    }
    Ok(())
}

async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SendRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_backend(&app)?;
    // An API key is bound to its app; only the admin token needs the lookup.
    if !caller.is_key_of(&app) {
        existing(&state, &app).await?;
    }
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
            _ => {
                return Err(ApiError::invalid(
                    "Idempotency-Key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                ))
            }
        },
    };
    let recipients = recipients(req.to)?;
    if req.title.trim().is_empty() {
        return Err(ApiError::invalid("title", "title must not be empty"));
    }
    bounded("title", &req.title, 1024)?;
    for (field, value) in [
        ("icon", &req.icon),
        ("badge", &req.badge),
        ("image", &req.image),
    ] {
        if let Some(v) = value {
            image_url(field, v)?;
        }
    }
    if let Some(t) = &req.target_url {
        absolute_url("target_url", t)?;
    }
    if let Some(tag) = &req.tag {
        bounded("tag", tag, 256)?;
    }
    if let Some(kind) = &req.kind {
        if !matches!(kind.as_str(), "info" | "success" | "warning" | "error") {
            return Err(ApiError::invalid(
                "type",
                "type must be one of info, success, warning, error",
            ));
        }
    }
    let ttl = match req.ttl {
        None => Ttl::new(DEFAULT_TTL_SECS),
        // WNS refuses TTL 0, and a push that may only be delivered "now" is
        // rarely what a caller means.
        Some(0) => {
            return Err(ApiError::invalid(
                "ttl",
                format!(
                    "ttl must be at least 1 second (values above {} are clamped to 28 days)",
                    Ttl::MAX
                ),
            ))
        }
        Some(s) => Ttl::new(s),
    };
    let urgency = match req.urgency.as_deref() {
        None => Urgency::Normal,
        Some(u) => Urgency::parse(u).ok_or_else(|| {
            ApiError::invalid(
                "urgency",
                "urgency must be one of very-low, low, normal, high",
            )
        })?,
    };
    if let Some(k) = &req.topic_key {
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::invalid(
                "topic_key",
                "topic_key must be 1 to 256 bytes",
            ));
        }
    }
    if let Recipients::Subscription(id) = &recipients {
        if state.store.subscription_get(&app, id).await?.is_none() {
            return Err(ApiError::invalid(
                "to.subscription",
                "no subscription with this id in this app",
            ));
        }
    }

    let id = new_id();
    let payload = Payload {
        id: id.clone(),
        title: req.title.clone(),
        body: req.body,
        icon: req.icon,
        badge: req.badge,
        image: req.image,
        target_url: req.target_url,
        tag: req.tag,
        kind: req.kind,
        data: req.data,
    };
    let bytes = serde_json::to_vec(&payload).map_err(|e| ApiError::Internal(e.to_string()))?;
    // The smaller of the two encodings' limits, so the notification fits
    // every subscriber whatever its browser.
    let max = ece::max_plaintext(ContentEncoding::Aes128gcm)
        .min(ece::max_plaintext(ContentEncoding::Aesgcm));
    if bytes.len() > max {
        return Err(ApiError::PayloadTooLarge {
            field: "body",
            message: format!("the notification encodes to {} bytes of JSON; the limit is {max} bytes (Web Push bodies are at most 4096 bytes encrypted)", bytes.len()),
        });
    }
    let notification = NewNotification {
        id,
        app_id: app,
        recipients,
        title: req.title,
        payload: bytes,
        ttl_secs: ttl.seconds(),
        urgency: urgency.as_str().to_string(),
        topic_key: req.topic_key,
        created_at: now_millis(),
    };
    let (id, deliveries, replayed) = match state
        .store
        .notification_create(
            &notification,
            idempotency_key.as_deref(),
            IDEMPOTENCY_WINDOW_MS,
        )
        .await?
    {
        Accepted::Created { id, deliveries } => (id, deliveries, false),
        Accepted::Replayed { id, deliveries } => (id, deliveries, true),
    };
    // Where the store hands new work to the queue itself, it also wakes the
    // queue for whatever it could not start.
    if deliveries > 0 && !replayed && !state.store.wakes_queue() {
        state.queue.wake();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "deliveries": deliveries })),
    ))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_backend(&app)?;
    existing(&state, &app).await?;
    let (n, rows) = state
        .store
        .notification_get(&app, &id)
        .await?
        .ok_or(ApiError::NotFound("no notification with this id"))?;
    let count = |s: &[DeliveryStatus]| {
        rows.iter()
            .filter(|r| s.iter().any(|s| s.as_str() == r.status))
            .count()
    };
    let pending = count(&[DeliveryStatus::Pending, DeliveryStatus::InFlight]);
    Ok(Json(json!({
        "id": n.id,
        "title": n.title,
        "status": if pending > 0 { "pending" } else { "completed" },
        "total": rows.len(),
        "delivered": count(&[DeliveryStatus::Delivered]),
        "pending": pending,
        "failed": count(&[DeliveryStatus::Failed]),
        "gone": count(&[DeliveryStatus::Gone]),
        "expired": count(&[DeliveryStatus::Expired]),
        "created_at": rfc3339(n.created_at),
        "expires_at": rfc3339(n.expires_at),
        "deliveries": rows.iter().map(|r| json!({
            "id": r.id,
            "subscription_id": r.subscription_id,
            "user": r.user_id,
            "status": r.status,
            "attempts": r.attempts,
            "last_error": r.last_error,
            "delivered_at": (r.status == "delivered").then(|| r.finished_at.map(rfc3339)).flatten(),
        })).collect::<Vec<_>>(),
    })))
}

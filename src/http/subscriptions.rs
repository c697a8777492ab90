//! Subscriptions: one row per device, added by the app's backend or by a page
//! holding a user token; user tokens for pages; renewal by the service worker.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::existing;
use super::error::ApiError;
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::domain::{now_millis, rfc3339};
use crate::store::{NewSubscription, SubscriptionRow};
use crate::webpush::{
    AllowedHosts, ContentEncoding, Subscription, SubscriptionError, SubscriptionJson, Vendor,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/apps/{app}/subscriptions",
            post(create).get(list).delete(delete_by_endpoint),
        )
        .route("/apps/{app}/subscriptions/renew", post(renew))
        .route("/apps/{app}/subscriptions/{id}", delete(delete_one))
        .route("/apps/{app}/user-tokens", post(user_token))
}

const MAX_USER_LEN: usize = 256;
const MAX_TOPICS: usize = 100;
const MAX_TOPIC_LEN: usize = 128;

pub fn validate_user(field: &str, user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be 1 to {MAX_USER_LEN} bytes"),
        ));
    }
    Ok(())
}

fn subscription_error(prefix: &str, e: SubscriptionError) -> ApiError {
    let code = match e {
        SubscriptionError::HostNotAllowed(_) => "host_not_allowed",
        _ => "invalid_subscription",
    };
    ApiError::Invalid {
        code,
        field: format!("{prefix}.{}", e.field()),
        message: e.to_string(),
    }
}

fn parse_subscription(
    prefix: &str,
    json: &Value,
    allowed: &AllowedHosts,
) -> Result<Subscription, ApiError> {
    let raw: SubscriptionJson =
        serde_json::from_value(json.clone()).map_err(|e| ApiError::Invalid {
            code: "invalid_subscription",
            field: prefix.to_string(),
            message: format!("{prefix} must be a PushSubscription JSON object: {e}"),
        })?;
    Subscription::parse(&raw, allowed).map_err(|e| subscription_error(prefix, e))
}

fn new_subscription(
    app: &str,
    user: &str,
    sub: &Subscription,
    encoding: ContentEncoding,
    topics: Vec<String>,
) -> NewSubscription {
    NewSubscription {
        app_id: app.to_string(),
        user_id: user.to_string(),
        endpoint: sub.endpoint.as_str().to_string(),
        endpoint_host: sub.endpoint.host().to_string(),
        vendor: Vendor::of(&sub.endpoint).as_str().to_string(),
        p256dh: sub.p256dh.0.to_vec(),
        auth: sub.auth.0.to_vec(),
        content_encoding: encoding.as_str().to_string(),
        topics,
    }
}

pub fn subscription_json(s: &SubscriptionRow) -> Value {
    json!({
        "id": s.id,
        "user": s.user_id,
        "endpoint_host": s.endpoint_host,
        "vendor": s.vendor,
        "content_encoding": s.content_encoding,
        "topics": s.topics,
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.updated_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubscription {
    user: Option<String>,
    subscription: Value,
    content_encoding: Option<String>,
    topics: Option<Vec<String>>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<CreateSubscription>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token_user = caller.require_app_or_user(&app)?;
    existing(&state, &app).await?;
    let user = match (token_user, body.user.as_deref()) {
        (Some(t), Some(u)) if t != u => {
            return Err(ApiError::Forbidden("this user token is for another user"))
        }
        (Some(t), _) => t.to_string(),
        (None, Some(u)) => u.to_string(),
        (None, None) => return Err(ApiError::invalid("user", "user is required")),
    };
    validate_user("user", &user)?;
    let sub = parse_subscription("subscription", &body.subscription, &state.allowed_hosts)?;
    let encoding = match body.content_encoding.as_deref() {
        None => ContentEncoding::Aes128gcm,
        Some(e) => ContentEncoding::parse(e).ok_or_else(|| {
            ApiError::invalid(
                "content_encoding",
                "content_encoding must be \"aes128gcm\" or \"aesgcm\"",
            )
        })?,
    };
    let topics = body.topics.unwrap_or_default();
    if topics.len() > MAX_TOPICS {
        return Err(ApiError::invalid(
            "topics",
            format!("at most {MAX_TOPICS} topics"),
        ));
    }
    for (i, t) in topics.iter().enumerate() {
        if t.is_empty() || t.len() > MAX_TOPIC_LEN {
            return Err(ApiError::invalid(
                format!("topics[{i}]"),
                format!("a topic must be 1 to {MAX_TOPIC_LEN} bytes"),
            ));
        }
    }
    let (id, created) = state
        .store
        .subscription_upsert(
            &new_subscription(&app, &user, &sub, encoding, topics),
            now_millis(),
        )
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(json!({ "id": id })),
    ))
}

#[derive(Deserialize)]
struct UserQuery {
    user: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    Query(q): Query<UserQuery>,
) -> Result<Json<Value>, ApiError> {
    let token_user = caller.require_app_or_user(&app)?;
    existing(&state, &app).await?;
    let user = token_user.or(q.user.as_deref());
    let subs = state.store.subscription_list(&app, user).await?;
    Ok(Json(
        json!({ "subscriptions": subs.iter().map(subscription_json).collect::<Vec<_>>() }),
    ))
}

async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let token_user = caller.require_app_or_user(&app)?;
    existing(&state, &app).await?;
    if state
        .store
        .subscription_delete(&app, &id, token_user)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("no subscription with this id"))
    }
}

#[derive(Deserialize)]
struct EndpointQuery {
    endpoint: Option<String>,
}

/// What a page knows about its device is the endpoint, not Herald's id.
async fn delete_by_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    Query(q): Query<EndpointQuery>,
) -> Result<StatusCode, ApiError> {
    let token_user = caller.require_app_or_user(&app)?;
    existing(&state, &app).await?;
    let endpoint = q
        .endpoint
        .filter(|e| !e.is_empty())
        .ok_or_else(|| ApiError::invalid("endpoint", "endpoint query parameter is required"))?;
    let Some(sub) = state
        .store
        .subscription_by_endpoint(&app, &endpoint)
        .await?
    else {
        return Err(ApiError::NotFound("no subscription with this endpoint"));
    };
    if state
        .store
        .subscription_delete(&app, &sub.id, token_user)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("no subscription with this endpoint"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Renew {
    old_endpoint: String,
    old_auth: String,
    subscription: Value,
}

/// `pushsubscriptionchange` in the service worker has no user token; it
/// proves it owned the old subscription with that subscription's auth secret,
/// which only the browser and Herald know.
async fn renew(
    State(state): State<AppState>,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<Renew>,
) -> Result<Json<Value>, ApiError> {
    existing(&state, &app).await?;
    let old_auth = crate::webpush::AuthSecret::parse(&body.old_auth)
        .map_err(|e| ApiError::invalid("old_auth", e.to_string()))?;
    let old = state
        .store
        .subscription_by_endpoint(&app, &body.old_endpoint)
        .await?;
    let old = match old {
        Some(o)
            if aws_lc_rs::constant_time::verify_slices_are_equal(&o.auth, &old_auth.0).is_ok() =>
        {
            o
        }
        _ => {
            return Err(ApiError::Forbidden(
                "old_endpoint and old_auth do not match a subscription of this app",
            ))
        }
    };
    let sub = parse_subscription("subscription", &body.subscription, &state.allowed_hosts)?;
    let encoding =
        ContentEncoding::parse(&old.content_encoding).unwrap_or(ContentEncoding::Aes128gcm);
    let (id, _) = state
        .store
        .subscription_upsert(
            &new_subscription(&app, &old.user_id, &sub, encoding, old.topics.clone()),
            now_millis(),
        )
        .await?;
    if id != old.id {
        state.store.subscription_delete(&app, &old.id, None).await?;
    }
    Ok(Json(json!({ "id": id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserTokenRequest {
    user: String,
    ttl_seconds: Option<u64>,
}

const MAX_USER_TOKEN_TTL: u64 = 24 * 3600;

async fn user_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<UserTokenRequest>,
) -> Result<Json<Value>, ApiError> {
    caller.require_backend(&app)?;
    existing(&state, &app).await?;
    validate_user("user", &body.user)?;
    let ttl = body.ttl_seconds.unwrap_or(3600);
    if !(1..=MAX_USER_TOKEN_TTL).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            format!("ttl_seconds must be between 1 and {MAX_USER_TOKEN_TTL}"),
        ));
    }
    let exp = (now_millis() / 1000) as u64 + ttl;
    let token = state.user_tokens.issue(&app, &body.user, exp);
    Ok(Json(
        json!({ "token": token, "expires_at": rfc3339(exp as i64 * 1000) }),
    ))
}

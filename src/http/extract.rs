//! Extractors: who is calling, and JSON bodies whose errors name the field.

use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// Who is calling, from `Authorization: Bearer <token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// An app's backend, by API key.
    App(String),
    /// A page acting for one user of one app, by user token.
    User {
        app: String,
        user: String,
    },
}

impl Caller {
    /// Whether this caller's credential already proves the app exists.
    pub fn is_key_of(&self, app: &str) -> bool {
        matches!(self, Caller::App(id) if id == app)
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            _ => Err(ApiError::Forbidden("this route needs the admin token")),
        }
    }

    /// The admin token or this app's API key.
    pub fn require_backend(&self, app: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::App(id) if id == app => Ok(()),
            Caller::App(_) => Err(ApiError::Forbidden("this API key belongs to another app")),
            Caller::User { .. } => Err(ApiError::Forbidden("a user token cannot use this route")),
        }
    }

    /// Backend callers, or a user token of this app. Returns the user a user
    /// token is limited to.
    pub fn require_app_or_user(&self, app: &str) -> Result<Option<&str>, ApiError> {
        match self {
            Caller::User { app: a, user } if a == app => Ok(Some(user)),
            Caller::User { .. } => Err(ApiError::Forbidden(
                "this user token belongs to another app",
            )),
            other => other.require_backend(app).map(|_| None),
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let header =
            parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .ok_or(ApiError::Unauthorized(
                    "missing Authorization: Bearer <token> header",
                ))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "Authorization must be Bearer <token>",
            ))?;
        if state.admin.matches(token) {
            return Ok(Caller::Admin);
        }
        if token.starts_with(crate::service::API_KEY_PREFIX) {
            let hash = crate::secrets::token_hash(token);
            if let Some(app) = state.api_keys.read().expect("key cache lock").get(&hash) {
                return Ok(Caller::App(app.clone()));
            }
            return match state.store.app_id_by_key_hash(&hash).await? {
                Some(app) => {
                    state
                        .api_keys
                        .write()
                        .expect("key cache lock")
                        .insert(hash, app.clone());
                    Ok(Caller::App(app))
                }
                None => Err(ApiError::Unauthorized("unknown API key")),
            };
        }
        match state.user_tokens.verify(token) {
            Some(claims) => Ok(Caller::User {
                app: claims.app,
                user: claims.sub,
            }),
            None => Err(ApiError::Unauthorized("invalid or expired token")),
        }
    }
}

/// `Json<T>` whose rejections are Herald errors naming the offending field.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        if !is_json {
            return Err(ApiError::BadJson {
                field: None,
                message: "expected Content-Type: application/json".into(),
            });
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadJson {
                field: None,
                message: format!("cannot read body: {e}"),
            })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let message = e.inner().to_string();
                ApiError::BadJson {
                    field: field_of(&e.path().to_string(), &message),
                    message,
                }
            })
    }
}

/// The JSON path at fault. serde reports unknown and missing fields in the
/// message rather than the path, so the name is taken from there.
fn field_of(path: &str, message: &str) -> Option<String> {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name);
    let parent = (path != ".").then_some(path);
    match (parent, named) {
        // An unknown field is already the last segment of the path.
        (Some(p), Some(n)) if p == n || p.ends_with(&format!(".{n}")) => Some(p.to_string()),
        (Some(p), Some(n)) => Some(format!("{p}.{n}")),
        (None, Some(n)) => Some(n.to_string()),
        (Some(p), None) => Some(p.to_string()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::field_of;

    #[test]
    fn unknown_and_missing_fields_are_named() {
        assert_eq!(
            field_of(".", "unknown field `titel`, expected one of `title`").as_deref(),
            Some("titel")
        );
        assert_eq!(
            field_of("to", "missing field `user`").as_deref(),
            Some("to.user")
        );
        assert_eq!(
            field_of("to.usr", "unknown field `usr`, expected `user`").as_deref(),
            Some("to.usr")
        );
        assert_eq!(
            field_of("titel", "unknown field `titel`").as_deref(),
            Some("titel")
        );
        assert_eq!(
            field_of(".", "missing field `title`").as_deref(),
            Some("title")
        );
        assert_eq!(
            field_of("ttl", "invalid type: string, expected u64").as_deref(),
            Some("ttl")
        );
        assert_eq!(field_of(".", "EOF while parsing").as_deref(), None);
    }
}

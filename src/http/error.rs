//! The one API error type and the one place it becomes an HTTP answer.
//!
//! Every error is `{"error": {"code", "message", "field"?}}`. Codes are
//! stable; messages are for people. Internal causes are logged, not shown.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    /// A field broke a rule. `code` names the rule family, `field` the JSON path.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        field: String,
        message: String,
    },
    /// The body is not the JSON this route takes.
    #[error("{message}")]
    BadJson {
        field: Option<String>,
        message: String,
    },
    #[error("{message}")]
    PayloadTooLarge {
        field: &'static str,
        message: String,
    },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code: "invalid_field",
            field: field.into(),
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::BadJson { .. } => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::Store(StoreError::Database(e)) if is_unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let field = match &self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            ApiError::BadJson { field, .. } => field.clone(),
            ApiError::PayloadTooLarge { field, .. } => Some(field.to_string()),
            _ => None,
        };
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            if status == StatusCode::SERVICE_UNAVAILABLE {
                "the database is unavailable; try again shortly".to_string()
            } else {
                "internal error".to_string()
            }
        } else {
            self.to_string()
        };
        let mut error = json!({ "code": code, "message": message });
        if let Some(f) = field {
            error["field"] = json!(f);
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}

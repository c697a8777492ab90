//! The service worker, the opt-in settings page, the client script, the admin
//! console and the demo page.

use std::path::Path;

use axum::Router;
use tower_http::services::{ServeDir, ServeFile};

use super::AppState;

pub fn router(dir: &Path) -> Router<AppState> {
    Router::new()
        .route_service("/", ServeFile::new(dir.join("index.html")))
        .route_service("/sw.js", ServeFile::new(dir.join("sw.js")))
        .route_service("/herald.js", ServeFile::new(dir.join("herald.js")))
        .route_service("/settings", ServeFile::new(dir.join("settings.html")))
        .route_service("/admin", ServeFile::new(dir.join("admin.html")))
        .nest_service("/static", ServeDir::new(dir))
}

//! The demo page and its files, embedded in the binary so it runs from any directory and works offline.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

/// Everything under `static/`.
#[derive(Embed)]
#[folder = "static/"]
struct Assets;

/// Serves `static/<path>` (any path not claimed by the API), `404` with a JSON body otherwise.
pub async fn fallback(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    serve_path(if path.is_empty() { "index.html" } else { path })
}

/// Serves one embedded file.
pub fn serve_path(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_owned();
            ([(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, "no-cache".to_owned())], file.data).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": format!("no such page: /{path}"), "code": "not_found"})),
        )
            .into_response(),
    }
}

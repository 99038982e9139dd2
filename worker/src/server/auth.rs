//! Who may use the server: the bearer token (`Authorization: Bearer …`, or `?token=` where
//! browsers cannot set headers) checked by one middleware on every guarded route, and the
//! Origin allowlist for browser WebSockets.

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{App, ServeArgs};

fn authorized(args: &ServeArgs, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    let Some(want) = &args.auth_token else { return true };
    let header =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    header == Some(want.as_str()) || query.get("token") == Some(want)
}

/// Middleware: 401 unless the request carries the server's token (when one is set).
pub async fn require_token(
    State(app): State<App>, Query(q): Query<HashMap<String, String>>, req: Request, next: Next,
) -> Response {
    if !authorized(&app.args, req.headers(), &q) {
        if req.uri().path().starts_with("/v1/") {
            return super::openai::error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong bearer token",
            );
        }
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
    }
    next.run(req).await
}

/// Whether a browser page from the request's `Origin` may open the WebSocket: any origin when
/// no allowlist is set, else the same host or a listed origin (`*` allows all).
pub fn origin_allowed(args: &ServeArgs, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else { return true };
    if args.allow_origins.is_empty() {
        return true;
    }
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
    let same = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
    same || args.allow_origins.iter().any(|o| o == origin || o == "*")
}

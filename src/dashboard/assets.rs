//! The page, its script and its style, compiled into the binary: nothing is
//! fetched at run time. The page carries the action token (only when actions
//! are on) and forbids, by its Content-Security-Policy, any script or style
//! but these and any framing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::IntoResponse;

use super::Dashboard;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page with this daemon's settings in its `<meta>` tags (hex and a
/// word: nothing there needs escaping).
pub fn page(token: &str, actions: bool) -> String {
    INDEX
        .replace("{{TOKEN}}", if actions { token } else { "" })
        .replace("{{ACTIONS}}", if actions { "on" } else { "off" })
}

pub async fn index(State(d): State<Arc<Dashboard>>) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_FRAME_OPTIONS, "DENY"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (CACHE_CONTROL, "no-store"),
        ],
        page(&d.token, d.actions),
    )
}

pub async fn script() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/javascript; charset=utf-8"), (X_CONTENT_TYPE_OPTIONS, "nosniff")], SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/css; charset=utf-8"), (X_CONTENT_TYPE_OPTIONS, "nosniff")], STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_in_the_page_only_with_actions() {
        assert!(page("abc123", true).contains("content=\"abc123\""));
        assert!(!page("abc123", false).contains("abc123"));
        assert!(page("t", false).contains("content=\"off\""));
        // No data is ever put in as markup, and nothing comes from elsewhere.
        assert!(
            !SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML") && !SCRIPT.contains("insertAdjacentHTML")
        );
        assert!(!INDEX.contains("://"));
        assert!(SCRIPT.lines().filter(|l| l.contains("://")).all(|l| l.contains("\"http://www.w3.org/2000/svg\"")));
    }
}

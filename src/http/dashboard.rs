//! `GET /` and `GET /assets/…`: the dashboard, a single page of plain HTML,
//! CSS and JavaScript modules compiled into the binary (no build step, no
//! CDN), served with a strict Content-Security-Policy.
//!
//! The CSP allows scripts, styles and connections from this origin only and
//! requires Trusted Types, so a string assigned to `innerHTML` throws instead
//! of becoming markup: device ids, messages and payloads can only ever reach
//! the DOM as text.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::error::ApiError;

/// One policy for every dashboard response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
trusted-types 'none'";

/// A file of `web/`, embedded.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    pub etag: &'static str,
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../web/", $file)),
            etag: concat!("\"", $file, "-", env!("CARGO_PKG_VERSION"), "\""),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Everything the page loads. `index.html` answers `GET /`.
pub static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/assets/app.css", "app.css", "text/css; charset=utf-8"),
    asset!("/assets/js/main.js", "js/main.js", JS),
    asset!("/assets/js/transport.js", "js/transport.js", JS),
    asset!("/assets/js/store.js", "js/store.js", JS),
    asset!("/assets/js/dom.js", "js/dom.js", JS),
    asset!("/assets/js/fleet.js", "js/fleet.js", JS),
    asset!("/assets/js/device.js", "js/device.js", JS),
    asset!("/assets/js/attacker.js", "js/attacker.js", JS),
    asset!("/assets/js/uploads.js", "js/uploads.js", JS),
    asset!("/assets/js/uploads-panel.js", "js/uploads-panel.js", JS),
    asset!("/assets/js/chart.js", "js/chart.js", JS),
    asset!("/assets/js/toasts.js", "js/toasts.js", JS),
    asset!("/assets/js/format.js", "js/format.js", JS),
    asset!("/assets/favicon.svg", "favicon.svg", "image/svg+xml"),
];

pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

fn with_security_headers(
    mut builder: actix_web::HttpResponseBuilder,
) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        // Revalidate every load (cheap with the ETag): a new binary's page
        // must never meet an old cached module.
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    builder
}

fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    // The ETag names the file and the release; debug builds change files
    // without a release, so they never answer 304.
    let fresh = !cfg!(debug_assertions)
        && req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    if fresh {
        return with_security_headers(HttpResponse::NotModified())
            .insert_header((header::ETAG, asset.etag))
            .finish();
    }
    let mut builder = with_security_headers(HttpResponse::Ok());
    if !cfg!(debug_assertions) {
        builder.insert_header((header::ETAG, asset.etag));
    }
    builder.content_type(asset.content_type).body(asset.body)
}

pub async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    asset(req).await
}

pub async fn asset(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    match find(req.path()) {
        Some(asset) => Ok(serve(&req, asset)),
        None => Err(ApiError::NotFound("no such dashboard file".into())),
    }
}

/// What the page needs to know of this server: the thresholds behind
/// "active / stale / silent", and whether streams need an API key.
pub async fn config(state: web::Data<AppState>) -> HttpResponse {
    let s = &state.settings;
    let body = json!({
        // `prune_seconds` is the page's name for `registry.active_window_seconds`.
        "prune_seconds": s.registry.active_window.as_secs(),
        "silent_after_seconds": s.registry.silent_after.as_secs(),
        // The legacy token alone also locks streams: the page then asks for
        // it as it would for a key, and trades it for tickets.
        "auth_required": !state.auth.is_open(),
    });
    with_security_headers(HttpResponse::Ok())
        .content_type("application/json")
        .body(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_non_empty_and_typed() {
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
            assert!(asset.content_type.contains('/'), "{}", asset.path);
        }
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        // A module imported but not listed would 404 in the browser only.
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split(['\'', '"']).nth(1) else {
                    continue;
                };
                let name = spec.trim_start_matches("./");
                let path = format!("/assets/js/{name}");
                assert!(
                    find(&path).is_some(),
                    "{} imports {spec}, not served",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn the_page_never_parses_strings_as_markup() {
        for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!text.contains(banned), "{} uses {banned}", asset.path);
            }
        }
    }

    #[test]
    fn the_policy_allows_nothing_from_elsewhere() {
        assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(!CONTENT_SECURITY_POLICY.contains("http"));
    }
}

//! The page a person uses, at `GET /` (setting `server.ui`): pick, drop or paste a picture,
//! see the classes and the heat map over the picture, ask about another class. Three files
//! compiled into the binary (`page/`): no build step, no framework, nothing from another
//! site, relative URLs only (it works behind a gateway under a path prefix). Not an API
//! operation, so not in the OpenAPI spec.
//!
//! The page asks `POST explain` with `overlay=false` and blends the raw map over the
//! picture itself, with `render.rs`'s arithmetic, so that its opacity slider needs no
//! request.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::config::Config;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// What the page may fetch and run: this origin only, no inline script. Canvas downloads
/// are `blob:` URLs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The routes of the page: `/` and its two assets.
pub fn routes<S: Clone + Send + Sync + 'static>(config: &Config) -> Router<S> {
    let index = index_html(config);
    Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| {
                let index = index.clone();
                async move {
                    // Programs that ask for something other than HTML (KServe's
                    // `is_server_live`, a load balancer's check) get KServe v1's liveness.
                    if !wants_html(&headers) {
                        return axum::Json(serde_json::json!({ "status": "alive" }))
                            .into_response();
                    }
                    page_response(index, "text/html; charset=utf-8", "no-cache")
                }
            }),
        )
        // The page names the assets with their digest (`?v=`), so a browser may keep them.
        .route(
            "/ui/app.js",
            get(|| async {
                page_response(
                    APP_JS.to_string(),
                    "text/javascript; charset=utf-8",
                    "public, max-age=86400",
                )
            }),
        )
        .route(
            "/ui/style.css",
            get(|| async {
                page_response(
                    STYLE_CSS.to_string(),
                    "text/css; charset=utf-8",
                    "public, max-age=86400",
                )
            }),
        )
}

/// Whether a request to `/` is a browser's: its Accept names HTML (or says nothing).
pub fn wants_html(headers: &HeaderMap) -> bool {
    match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(accept) => accept.to_ascii_lowercase().contains("text/html"),
    }
}

/// The page with this server's settings in it: whether a token is needed, and the
/// defaults of the options it shows. Asset URLs carry the assets' digests.
pub fn index_html(config: &Config) -> String {
    let settings = serde_json::json!({
        "auth": !config.server.api_keys.is_empty(),
        "resize": config.model.resize,
        "alpha": config.explain.alpha,
        "top_k": config.explain.top_k,
    });
    INDEX_HTML
        .replace("{{SETTINGS}}", &escape_attribute(&settings.to_string()))
        .replace("{{APP_VERSION}}", &digest(APP_JS))
        .replace("{{STYLE_VERSION}}", &digest(STYLE_CSS))
}

fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

fn escape_attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn page_response(body: String, content_type: &'static str, cache: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_settings_and_no_placeholder() {
        let mut config = Config::default();
        config.server.api_keys = vec!["k".into()];
        config.explain.top_k = 3;
        let html = index_html(&config);
        assert!(!html.contains("{{"), "a placeholder is left");
        assert!(html.contains(r#"content="{&quot;alpha&quot;:0.5,&quot;auth&quot;:true,"#));
        assert!(html.contains("&quot;top_k&quot;:3"));
        assert!(html.contains(&format!("ui/app.js?v={}", digest(APP_JS))));
        assert!(index_html(&Config::default()).contains("&quot;auth&quot;:false"));
    }

    #[test]
    fn every_url_is_relative_and_on_this_server() {
        // The page works under a path prefix and offline: no `/...` and no `http...` in
        // any src, href, fetch or url().
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for bad in [
                "src=\"/",
                "href=\"/",
                "fetch('/",
                "fetch(\"/",
                "fetch(`/",
                "url(",
                "http://",
                "https://",
                "@import",
            ] {
                assert!(!text.contains(bad), "{name} contains `{bad}`");
            }
        }
        assert!(APP_JS.contains("fetch('explain'") && APP_JS.contains("fetch('model'"));
    }

    #[test]
    fn the_pages_colour_table_is_the_servers() {
        let start = APP_JS.find("new Uint8Array([").expect("the JET table") + 16;
        let end = start + APP_JS[start..].find("])").unwrap();
        let values: Vec<u8> = APP_JS[start..end]
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().unwrap())
            .collect();
        let server: Vec<u8> = crate::colormap::JET.iter().flatten().copied().collect();
        assert_eq!(values, server);
    }
}

//! Request parsing: the real axum router (`gradcam_serve::http::router`) with a real
//! `AppState`, driven in-process with `tower::ServiceExt::oneshot`, one `POST /explain` per
//! input: Content-Type header, query string (options) and multipart body (parts, option
//! fields) all come from the fuzzer.
//!
//! The state's `Workers` are real (demo weights, loaded once when the fuzzer starts) but
//! the queue has **no places** (`queue_capacity = 0`): the handler reads and checks the
//! whole request (content type, length, query options, every multipart part and option
//! field) before it asks for admission, so everything this target is about runs, and a
//! request that survives parsing gets 503 instead of costing a forward pass. Decoding is
//! the `decode` target's job.
//!
//! Input layout: `<content-type>\n<query>\n<body>` (a missing line is empty; a
//! Content-Type that is not a valid header value is left out).
//!
//! A finding: a panic anywhere in the router, any status outside the ones parsing may
//! answer (400, 408, 413, 415, 422, 503), an error that is not a problem+json body whose
//! `status` matches the HTTP status, or a 503 without Retry-After.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request};
use axum::Router;
use gradcam_serve::config::Config;
use gradcam_serve::engine::{Engine, Explainer};
use gradcam_serve::http::{metrics::Metrics, router, AppState};
use gradcam_serve::options::Defaults;
use gradcam_serve::worker::Workers;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// Small, so the fuzzer's inputs (up to a few KiB) reach both 413 paths.
const MAX_UPLOAD_BYTES: usize = 2048;

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Router,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let mut config = Config::default();
        config.model.weights = "/nonexistent/weights.safetensors".into();
        config.model.demo_weights = true;
        config.model.threads = 1;
        config.server.workers = 1;
        config.server.queue_capacity = 0;
        config.server.max_upload_bytes = MAX_UPLOAD_BYTES;
        config.server.max_pixels = 4_000_000;
        let engine = Engine::load(&config.model, config.explain.layer).expect("demo weights load");
        let model = engine.description().clone();
        let explainers: Vec<Box<dyn Explainer>> = vec![Box::new(engine)];
        let workers = Workers::start(explainers, model, &config.server);
        // Past warm-up, a parsed request meets a full queue (503 overloaded); before it,
        // the model loading (503 not ready). Wait, so runs are alike.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !workers.is_ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = Arc::new(AppState {
            defaults: Defaults::from_config(&config),
            config,
            workers,
            metrics: Metrics::default(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Harness {
            runtime,
            app: router(state),
        }
    })
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `/explain?<query>`: the query's bytes as a client would send them: unreserved
/// characters and the delimiters raw (a raw `%` too, so bad escapes get through), the rest
/// percent-encoded.
fn explain_uri(query: &[u8]) -> String {
    let mut uri = String::from("/explain");
    if !query.is_empty() {
        uri.push('?');
        for &b in query {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
                uri.push(b as char);
            } else {
                uri.push_str(&format!("%{b:02X}"));
            }
        }
    }
    uri
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let (content_type, rest) = split_line(data);
    let (query, body) = split_line(rest);

    let uri = explain_uri(query);
    let mut request = Request::builder().method(Method::POST).uri(&uri);
    if let Ok(v) = HeaderValue::from_bytes(content_type) {
        request = request.header(header::CONTENT_TYPE, v);
    }
    let request = request
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_vec()))
        .expect("a valid request");

    let response = h
        .runtime
        .block_on(h.app.clone().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    assert!(
        matches!(status, 400 | 408 | 413 | 415 | 422 | 503),
        "status {status} for uri {uri:?}"
    );
    let headers = response.headers().clone();
    assert_eq!(
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..]),
        "status {status}: not problem+json"
    );
    if status == 503 {
        assert!(
            headers.contains_key(header::RETRY_AFTER),
            "503 without Retry-After"
        );
    }
    let bytes = h
        .runtime
        .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
        .expect("the error body is readable");
    let problem: serde_json::Value =
        serde_json::from_slice(&bytes).expect("the error body is JSON");
    assert_eq!(problem["status"].as_u64(), Some(status as u64), "{problem}");
    for field in ["type", "title", "detail"] {
        assert!(problem[field].is_string(), "{field} missing: {problem}");
    }
});

//! The protocols inference platforms speak: KServe's v1 (`v1.rs`) and the Open Inference
//! Protocol v2 (`v2.rs`, KServe, Triton, Seldon MLServer, TorchServe), so that their clients
//! and gateways work without glue. Both run each image through the same pipeline as
//! `POST /explain` (`http::pipeline`): the same queue, batching, limits and statuses; only
//! the body's shape differs, errors included (`{"error": "..."}`).

mod tensors;
mod v1;
mod v2;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{Map, Value};
use tokio::time::timeout_at;

use super::auth::{self, ApiKeys};
use super::pipeline::Clock;
use super::problem::ApiError;
use super::AppState;
use crate::options::{ExplainOptions, Options};

/// The protocols' routes. What runs the network needs a token when API keys are set, as
/// `/explain` does; health and metadata stay open.
pub fn routes(state: &AppState) -> Router<Arc<AppState>> {
    let keys = ApiKeys::new(&state.config.server.api_keys);
    let mut open = Router::new();
    if !state.config.server.ui {
        // Without the page, `/` is still KServe v1's liveness for programs.
        open = open.route("/", get(alive_without_page));
    }
    let guarded = Router::new()
        // `{name}:predict`: the verb is part of the last segment (split in the handler).
        .route("/v1/models/{name}", post(v1::predict_or_explain))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::infer_version),
        )
        .route_layer(middleware::from_fn_with_state(keys, require_token));
    open.route("/v1/models", get(v1::list))
        .route("/v1/models/{name}", get(model_ready))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::metadata_version),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::model_ready_version),
        )
        .merge(guarded)
}

/// `GET /v1/models/{name}` and `GET /v2/models/{name}/ready`, which both protocols answer
/// alike: `{"name", "ready"}`, 200 when ready, 503 while loading.
async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ProtocolError> {
    check_model(&state, &name)?;
    let ready = state.workers.is_ready();
    Ok(ready_answer(
        serde_json::json!({ "name": name, "ready": ready }),
        &state,
    ))
}

/// `body` with 200 when the model is ready, 503 while it loads.
fn ready_answer(body: serde_json::Value, state: &AppState) -> Response {
    let code = if state.workers.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// `GET /` with `server.ui` off: KServe v1's liveness for programs, 404 for a browser.
async fn alive_without_page(request: Request) -> Response {
    if super::page::wants_html(request.headers()) {
        return super::not_found(request).await.into_response();
    }
    axum::Json(serde_json::json!({ "status": "alive" })).into_response()
}

/// A refusal in the protocols' shape: `{"error": "..."}` with the status `/explain` would
/// give for the same fault.
#[derive(Debug)]
pub struct ProtocolError {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl ProtocolError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ProtocolError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: false,
        }
    }

    /// The same fault, its message prefixed with where it was (`instance 2: ...`).
    fn at(mut self, place: impl std::fmt::Display) -> Self {
        self.message = format!("{place}: {}", self.message);
        self
    }
}

impl From<ApiError> for ProtocolError {
    fn from(e: ApiError) -> Self {
        if e.status().is_server_error()
            && !matches!(e, ApiError::Overloaded { .. } | ApiError::NotReady)
        {
            tracing::error!(status = e.status().as_u16(), "{e}");
        }
        ProtocolError {
            status: e.status(),
            retry_after: matches!(e, ApiError::Overloaded { .. } | ApiError::NotReady),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gradcam-serve\""),
            );
        }
        response
    }
}

async fn require_token(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    match auth::check(&keys, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => ProtocolError::from(refused).into_response(),
    }
}

/// 404 unless `name` is the model this server serves.
fn check_model(state: &AppState, name: &str) -> Result<(), ProtocolError> {
    if name == state.model_name() {
        return Ok(());
    }
    Err(ProtocolError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "no model named `{name}`; this server serves `{}`",
            state.model_name()
        ),
        retry_after: false,
    })
}

/// The one version a model has here.
const VERSION: &str = "1";

fn check_version(version: &str) -> Result<(), ProtocolError> {
    if version == VERSION {
        return Ok(());
    }
    Err(ProtocolError {
        status: StatusCode::NOT_FOUND,
        message: format!("no version `{version}`; the model has one version, `{VERSION}`"),
        retry_after: false,
    })
}

/// The largest JSON body: one upload at the limit, base64-encoded (4/3 of it), and room
/// for the rest of the request.
fn body_limit(state: &AppState) -> usize {
    let upload = state.config.server.max_upload_bytes;
    upload.saturating_mul(4) / 3 + 64 * 1024
}

/// Reads the whole body, within the limit and the request's time.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    clock: Clock,
) -> Result<Bytes, ProtocolError> {
    let limit = body_limit(state);
    let too_large = |what: String| {
        ProtocolError::from(ApiError::TooLarge(format!(
            "{what}; the limit is {limit} bytes (server.max_upload_bytes, base64-encoded, and \
             64 KiB for the rest)"
        )))
    };
    if let Some(length) = super::announced_length(headers) {
        if length > limit as u64 {
            return Err(too_large(format!("the body is {length} bytes")));
        }
    }
    match timeout_at(clock.deadline, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::UploadTimeout(clock.timeout_secs).into()),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                Err(too_large("the body is over the limit".into()))
            } else {
                Err(ProtocolError::bad_request(format!(
                    "could not read the body: {e}"
                )))
            }
        }
    }
}

/// The request options in a JSON object (`parameters`, a v1 instance's fields): each value
/// a string, number, boolean or list (`[281, 285]` is `281,285`), as `/explain` takes them.
fn options_from(fields: &Map<String, Value>) -> Result<ExplainOptions, ApiError> {
    let mut options = ExplainOptions::default();
    for (name, value) in fields {
        let text = option_text(value)
            .ok_or_else(|| ApiError::invalid(name, &value.to_string(), NOT_A_VALUE))?;
        options.set(name, &text)?;
    }
    Ok(options)
}

const NOT_A_VALUE: &str = "an option is a string, a number, a boolean or a list of those";

fn option_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Array(_) | Value::Object(_) => None,
                v => option_text(v),
            })
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(",")),
        Value::Null | Value::Object(_) => None,
    }
}

/// `general` (the request's parameters) with `specific` (an instance's fields) over it,
/// checked against the model and the settings.
fn resolve(
    state: &AppState,
    general: &ExplainOptions,
    specific: &ExplainOptions,
) -> Result<Options, ApiError> {
    let mut chosen = general.clone();
    chosen.override_with(specific);
    Ok(chosen.resolve(&state.defaults, &state.workers.model.limits())?)
}

/// A refusal for a request with more images than the queue holds: they could never all
/// be admitted.
fn check_count(state: &AppState, count: usize, what: &str) -> Result<(), ProtocolError> {
    let capacity = state.workers.capacity();
    if count == 0 {
        return Err(ProtocolError::bad_request(format!(
            "no {what}s in the request"
        )));
    }
    if count > capacity {
        return Err(ProtocolError::bad_request(format!(
            "{count} {what}s in one request; at most {capacity} (server.queue_capacity): send \
             them in several requests"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::option_text;
    use serde_json::json;

    #[test]
    fn json_values_read_as_the_options_text() {
        assert_eq!(option_text(&json!("layer4")).as_deref(), Some("layer4"));
        assert_eq!(option_text(&json!(281)).as_deref(), Some("281"));
        assert_eq!(option_text(&json!(0.5)).as_deref(), Some("0.5"));
        assert_eq!(option_text(&json!(true)).as_deref(), Some("true"));
        assert_eq!(option_text(&json!([281, 285])).as_deref(), Some("281,285"));
        assert_eq!(option_text(&json!(null)), None);
        assert_eq!(option_text(&json!({"a": 1})), None);
        assert_eq!(option_text(&json!([[1]])), None);
    }
}

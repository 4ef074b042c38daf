//! The HTTP API: routes, middleware, OpenAPI spec. Handlers talk to the model only
//! through `Workers`.

pub mod auth;
pub mod drain;
pub mod explain;
pub mod kserve;
pub mod metrics;
pub mod page;
pub mod pipeline;
pub mod problem;

use std::sync::Arc;
use std::time::Duration;

use crate::cam::kernel_pca::Kernel;
use crate::cam::Method;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::engine::ModelDescription;
use crate::explanation::{ClassScore, Explanation, ImageSize, ModelInfo, Saliency, Timing};
use crate::faithfulness::Score;
use crate::options::{Defaults, ExplainOptions};
use crate::worker::Workers;
use auth::ApiKeys;
use drain::DrainLimits;
use metrics::Metrics;
use problem::{ApiError, Problem};

pub struct AppState {
    pub config: Config,
    /// What a request gets for the options it does not set.
    pub defaults: Defaults,
    pub workers: Workers,
    pub metrics: Metrics,
}

impl AppState {
    /// The model's name in the KServe and Open Inference Protocol paths.
    pub fn model_name(&self) -> &str {
        self.config
            .server
            .model_name
            .as_deref()
            .unwrap_or(&self.workers.model.architecture)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gradcam-serve",
        description = "Grad-CAM explanations of an image classifier's predictions (the \
            torchvision ResNet family: resnet18 .. resnet152, wide_resnet, resnext, at any \
            class count): the predicted class, the raw saliency map and a heat-map overlay, \
            in one call. The class ranges below are a 1000-class model's; the spec this \
            server serves at /openapi.json has the loaded model's."
    ),
    paths(explain::explain, model, health, ready, metrics_text),
    components(schemas(
        Explanation, ClassScore, Saliency, ImageSize, ModelInfo, Timing, Problem, Health,
        ModelDescription, ExplainOptions, explain::ExplainUpload, explain::OverlayBytes,
        crate::explanation::OverlayImage, crate::cam::MethodInfo,
        crate::explanation::Scores, crate::explanation::CandidateScore,
        crate::faithfulness::ScoreInfo
    )),
    modifiers(&BearerAuth),
    tags((name = "explain", description = "Explanations"), (name = "operations", description = "Health, readiness, metrics"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The spec for an ImageNet ResNet-50 (the demo model) with the default settings (ScoreCAM
/// not allowed), committed as openapi/openapi.json.
pub fn openapi_json() -> String {
    let resnet50 =
        crate::model::resnet::Architecture::named("resnet50", 1000).expect("a known name");
    let layers: Vec<String> = resnet50.layers().iter().map(ToString::to_string).collect();
    let defaults = crate::config::ExplainDefaults::default();
    let spec = model_spec(resnet50.num_classes, &layers, defaults.allow_scorecam);
    serde_json::to_string_pretty(&spec).expect("the spec serialises") + "\n"
}

/// The media types the `image` part may have (the server reads the format from the bytes).
const IMAGE_MEDIA_TYPES: &str =
    "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff";

/// The derived spec, with the form's option fields copied from `ExplainOptions` beside the
/// image (one flat object, so that no other field is allowed), each option saying that the
/// form field overrides the query parameter, and the image part's media types.
fn base_spec() -> serde_json::Value {
    let mut spec = serde_json::to_value(ApiDoc::openapi()).expect("the spec serialises");
    let options = spec["components"]["schemas"]["ExplainOptions"]["properties"].clone();
    let upload = &mut spec["components"]["schemas"]["ExplainUpload"]["properties"];
    for (name, schema) in options.as_object().into_iter().flatten() {
        upload[name] = schema.clone();
    }
    if let Some(form) =
        spec.pointer_mut("/paths/~1explain/post/requestBody/content/multipart~1form-data")
    {
        form["encoding"] = serde_json::json!({ "image": { "contentType": IMAGE_MEDIA_TYPES } });
    }
    spec
}

/// The `scores` option's description in the spec, before each score's meaning (made from
/// `Score::meaning`, so that the spec says what the server computes).
const SCORES_OPTION: &str = "How far to trust the map: pytorch-grad-cam 1.5.7's \
    faithfulness metrics (pytorch_grad_cam.metrics), one or several comma-separated, each in \
    the answer's `scores` (and per entry of `maps`; with `Accept: image/*`, in `X-Score-*` \
    headers). Each but `complexity` reruns the network on changed copies of the image (ROAD: \
    two per percentile of `road_percentiles`), in batches of 8, without autograd; the target's \
    logit is compared before and after. Ignored by the three-channel guided methods and \
    `dff`, whose answers are no one-channel map. Default: none. The scores:";

/// Where an option also is, for its description: the query and the form both take it.
const IN_QUERY: &str = "A form field of the same name overrides this parameter.";
const IN_FORM: &str = "Overrides the query parameter of the same name.";

fn with_precedence(description: &mut serde_json::Value, note: &str) {
    if let Some(text) = description.as_str() {
        *description = format!("{text} {note}").into();
    }
}

/// The spec as served at /openapi.json: the class ranges and the layers of the loaded
/// model in place of a 1000-class model's, and the methods this server allows (ScoreCAM
/// only with `explain.allow_scorecam`): a request the spec calls valid is one the server
/// takes. Served as JSON, as made: utoipa's types would not read it back (its `Encoding`
/// wants a `headers` map that it leaves out when empty).
pub fn openapi_for(model: &ModelDescription, allow_scorecam: bool) -> serde_json::Value {
    model_spec(model.num_classes, &model.layers, allow_scorecam)
}

/// A pattern of method names: `names`' every spelling, ScoreCAM's only when allowed.
fn method_pattern(allow_scorecam: bool, names: impl Fn(Method) -> bool) -> String {
    let names: Vec<String> = Method::ALL
        .into_iter()
        .filter(|&m| names(m) && (allow_scorecam || m != Method::ScoreCam))
        .flat_map(Method::spellings)
        .map(|n| n.replace('+', "\\+"))
        .collect();
    format!("^({})$", names.join("|"))
}

fn model_spec(classes: usize, layers: &[String], allow_scorecam: bool) -> serde_json::Value {
    let mut spec = base_spec();
    // (schema, where its description is) for each option the model decides.
    let fix = |name: &str, schema: &mut serde_json::Value| -> Option<String> {
        let obj = schema.as_object_mut()?;
        match name {
            "target" => {
                // The model's class range, exactly, so that a schema-valid target is one
                // the model has.
                obj.insert("pattern".into(), class_list_pattern(classes).into());
                Some(format!(
                    "Class index to explain, 0..={} (GET /model lists the labels), or up to {} \
                 of them comma-separated (`1,2`): one map each, the first in the answer's \
                 usual fields, all in `maps` (with `top_k_maps`, the most probable other \
                 classes follow). Default: the top-1 class.",
                    classes - 1,
                    crate::cam::MAX_TARGETS
                ))
            }
            "top_k_maps" => {
                obj.insert(
                    "maximum".into(),
                    classes.min(crate::cam::MAX_TARGETS).into(),
                );
                None
            }
            "method" => {
                obj.insert(
                    "pattern".into(),
                    method_pattern(allow_scorecam, |_| true).into(),
                );
                None
            }
            "base_method" => {
                let pattern = method_pattern(allow_scorecam, Method::refinable);
                obj.insert("pattern".into(), pattern.into());
                None
            }
            "scores" => {
                let one = format!("({})", Score::ALL.map(Score::name).join("|"));
                let most = Score::ALL.len() - 1;
                obj.insert(
                    "pattern".into(),
                    format!("^{one}(,{one}){{0,{most}}}$").into(),
                );
                // What each measures, its range and which way is better, from the code
                // that computes it.
                let each: Vec<String> = Score::ALL
                    .iter()
                    .map(|s| format!("`{}` ({}): {}.", s.name(), s.reference_class(), s.meaning()))
                    .collect();
                Some(format!("{} {}", SCORES_OPTION, each.join(" ")))
            }
            "auto_score" => {
                let names = Score::ALL.map(Score::name).join("|");
                obj.insert("pattern".into(), format!("^({names})$").into());
                None
            }
            "kernel" => {
                let names: Vec<&str> = Kernel::ALL.into_iter().map(Kernel::name).collect();
                obj.insert("pattern".into(), format!("^({})$", names.join("|")).into());
                None
            }
            "comparison_categories" => {
                // Positions in the model's classes: `target`'s range.
                obj.insert("pattern".into(), class_list_pattern(classes).into());
                None
            }
            "top_k" => {
                obj.insert("maximum".into(), classes.into());
                Some(format!(
                    "How many classes to list in `top_k`, 1..={classes}. Default 5."
                ))
            }
            "layer" => {
                // The model's own layer names, one or several comma-separated.
                let names: Vec<String> = layers.iter().map(|l| l.replace('.', "\\.")).collect();
                let one = format!("({})", names.join("|"));
                let most = crate::options::MAX_LAYERS - 1;
                obj.insert(
                    "pattern".into(),
                    format!("^{one}(,{one}){{0,{most}}}$").into(),
                );
                None
            }
            _ => None,
        }
    };
    if let Some(params) = spec.pointer_mut("/paths/~1explain/post/parameters") {
        for param in params.as_array_mut().into_iter().flatten() {
            let name = param["name"].as_str().unwrap_or_default().to_string();
            if let Some(text) = fix(&name, &mut param["schema"]) {
                param["description"] = text.into();
            }
            with_precedence(&mut param["description"], IN_QUERY);
        }
    }
    for form in ["ExplainOptions", "ExplainUpload"] {
        let pointer = format!("/components/schemas/{form}/properties");
        if let Some(props) = spec.pointer_mut(&pointer) {
            for (name, schema) in props.as_object_mut().into_iter().flatten() {
                if let Some(text) = fix(name, schema) {
                    schema["description"] = text.into();
                }
                if form == "ExplainUpload" && name != "image" {
                    with_precedence(&mut schema["description"], IN_FORM);
                }
            }
        }
    }
    spec
}

/// Up to `MAX_TARGETS` class indices of the model, comma-separated.
fn class_list_pattern(classes: usize) -> String {
    let one = format!("({})", index_pattern(classes - 1));
    let most = crate::cam::MAX_TARGETS - 1;
    format!("^{one}(,{one}){{0,{most}}}$")
}

/// A regular expression for the whole numbers 0..=max, written without leading zeros.
fn index_pattern(max: usize) -> String {
    let digits: Vec<u32> = max
        .to_string()
        .chars()
        .map(|c| c.to_digit(10).expect("a digit"))
        .collect();
    let n = digits.len();
    if n == 1 {
        return format!("[0-{max}]");
    }
    // Every shorter number, then those of max's length below max, then max itself.
    let mut parts = vec!["[0-9]".to_string()];
    parts.extend((2..n).map(|d| format!("[1-9][0-9]{{{}}}", d - 1)));
    for (i, &digit) in digits.iter().enumerate() {
        let low = u32::from(i == 0);
        if digit > low {
            let prefix: String = digits[..i].iter().map(u32::to_string).collect();
            let rest = n - i - 1;
            let tail = if rest > 0 {
                format!("[0-9]{{{rest}}}")
            } else {
                String::new()
            };
            parts.push(format!("{prefix}[{low}-{}]{tail}", digit - 1));
        }
    }
    parts.push(max.to_string());
    parts.join("|")
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok", or "loading" before the model is warmed up.
    pub status: String,
    /// The model, and the layer explained by default.
    pub model: ModelInfo,
    /// Explanations admitted and not yet answered.
    pub queue_depth: usize,
    pub queue_capacity: usize,
}

fn health_of(state: &AppState, ready: bool) -> Health {
    let model = &state.workers.model;
    Health {
        status: if ready { "ok" } else { "loading" }.into(),
        model: model.info(
            state
                .defaults
                .layer
                .as_deref()
                .unwrap_or(&model.default_layer),
        ),
        queue_depth: state.workers.in_flight(),
        queue_capacity: state.workers.capacity(),
    }
}

/// The loaded model: architecture, classes and their labels, the layers that may be
/// explained, the input size and normalisation, the weights' digest.
#[utoipa::path(get, path = "/model", tag = "operations",
    responses((status = 200, description = "The loaded model", body = ModelDescription)))]
async fn model(State(state): State<Arc<AppState>>) -> Json<ModelDescription> {
    Json(
        state
            .workers
            .model
            .served(state.defaults.allow_scorecam, state.defaults.method),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(health_of(&state, state.workers.is_ready()))
}

/// Readiness: the model is loaded and a warm-up pass has run.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "Ready for explanations", body = Health),
    (status = 503, description = "Still loading", body = Health)))]
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.workers.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health_of(&state, ready))).into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Metrics", body = String, content_type = "text/plain; version=0.0.4")),
    security((), ("bearer" = [])))]
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render();
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Counts every response by endpoint and status.
async fn count_responses(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    state
        .metrics
        .count_request(&endpoint, response.status().as_u16());
    response
}

pub(crate) async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("{} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Response {
    let problem = Problem {
        kind: "urn:gradcam-serve:problem:method-not-allowed".into(),
        title: "Method not allowed".into(),
        status: 405,
        detail: format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    };
    let mut r = (StatusCode::METHOD_NOT_ALLOWED, Json(problem)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// The body size a request announces in Content-Length, when it announces one.
pub fn announced_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub fn router(state: Arc<AppState>) -> Router {
    let server = &state.config.server;
    let keys = ApiKeys::new(&server.api_keys);
    let drain_limits = DrainLimits {
        max_bytes: server.max_upload_bytes as u64,
        within: Duration::from_secs(server.request_timeout_secs),
        linger_bytes: server.linger_bytes,
        linger_for: Duration::from_secs(server.linger_secs),
    };
    let guard = || middleware::from_fn_with_state(keys.clone(), auth::require_token);

    let mut explain_routes = Router::new()
        .route("/explain", post(explain::explain))
        .layer(DefaultBodyLimit::max(server.max_upload_bytes))
        .route_layer(guard());
    let mut metrics_routes = Router::new().route("/metrics", get(metrics_text));
    if server.protect_metrics {
        metrics_routes = metrics_routes.route_layer(guard());
    }
    let mut docs_routes: Router<Arc<AppState>> =
        Router::new().merge(SwaggerUi::new("/docs").external_url_unchecked(
            "/openapi.json",
            openapi_for(&state.workers.model, state.defaults.allow_scorecam),
        ));
    if server.protect_docs {
        docs_routes = docs_routes.route_layer(guard());
    }
    explain_routes = explain_routes
        .merge(metrics_routes)
        .merge(docs_routes)
        .route("/health", get(health))
        .route("/model", get(model))
        .route("/ready", get(ready));
    if server.ui {
        explain_routes = explain_routes.merge(page::routes(&state.config));
    }
    explain_routes = explain_routes.merge(kserve::routes(&state));

    let request_id = HeaderName::from_static("x-request-id");
    explain_routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .layer(middleware::from_fn_with_state(
            drain_limits,
            drain::drain_unread,
        ))
        .layer(CompressionLayer::new())
        .layer(cors(&server.cors_origins))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                // Refusals (503 when full) are answers, not failures; real 5xx are logged
                // where they happen.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .make_span_with(request_span)
                .on_response(
                    |response: &Response, latency: Duration, span: &tracing::Span| {
                        let status = response.status();
                        // As i64: tracing-opentelemetry writes u64 fields as text.
                        span.record("http.response.status_code", i64::from(status.as_u16()));
                        if status.is_server_error() {
                            span.record("otel.status_code", "ERROR");
                        }
                        tracing::debug!(status = status.as_u16(), ?latency, "answered");
                    },
                ),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// One span per request, named `POST /explain` (the route, not the raw path), with
/// OpenTelemetry's HTTP attributes; it continues the caller's trace (W3C `traceparent`).
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", request.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %request.method(),
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    span
}

fn cors(origins: &[String]) -> CorsLayer {
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("server-timing"),
        ])
        .max_age(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::{index_pattern, openapi_json};
    use crate::options::NAMES;

    /// The spec's query parameters and form fields are the request options, and nothing
    /// else (the form adds `image`): a new option reaches the spec or this fails.
    #[test]
    fn the_spec_lists_exactly_the_request_options() {
        let spec: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        let mut query: Vec<String> = spec["paths"]["/explain"]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        let mut form: Vec<String> = spec["components"]["schemas"]["ExplainUpload"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "image")
            .cloned()
            .collect();
        let mut names: Vec<String> = NAMES.iter().map(ToString::to_string).collect();
        query.sort();
        form.sort();
        names.sort();
        assert_eq!(query, names);
        assert_eq!(form, names);
    }

    #[test]
    fn index_patterns_cover_exactly_the_class_range() {
        assert_eq!(index_pattern(0), "[0-0]");
        assert_eq!(index_pattern(9), "[0-9]");
        assert_eq!(index_pattern(36), "[0-9]|[1-2][0-9]{1}|3[0-5]|36");
        assert_eq!(
            index_pattern(999),
            "[0-9]|[1-9][0-9]{1}|[1-8][0-9]{2}|9[0-8][0-9]{1}|99[0-8]|999"
        );
        assert_eq!(index_pattern(100), "[0-9]|[1-9][0-9]{1}|100");
    }
}

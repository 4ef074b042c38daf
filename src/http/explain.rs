//! `POST /explain`: multipart upload in, explanation (JSON or PNG) out.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::time::{timeout_at, Instant};
use utoipa::{IntoParams, ToSchema};

use super::problem::{ApiError, Problem};
use super::AppState;
use crate::engine::{self, Options};
use crate::explanation::{Explanation, Timing};
use crate::model::NUM_CLASSES;
use crate::preprocess::{DecodeLimits, ResizeMode};
use crate::worker::WorkerError;

/// Options, as query parameters or as form fields beside the image.
#[allow(dead_code)] // documents the options for the OpenAPI spec; parsing is by hand below
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExplainParams {
    /// Class index to explain, 0..=999. Default: the top-1 class.
    #[param(minimum = 0, maximum = 999)]
    target: Option<u16>,
    /// How many classes to list in `top_k`, 1..=1000. Default 5.
    #[param(minimum = 1, maximum = 1000)]
    top_k: Option<u16>,
    /// Heat-map opacity in the overlay, 0..=1. Default 0.5.
    #[param(minimum = 0.0, maximum = 1.0)]
    alpha: Option<f32>,
    /// Whether to draw the overlay PNG. Default true.
    overlay: Option<bool>,
    /// `stretch` (whole image) or `crop` (centre square, torchvision style). Default: the
    /// server's setting.
    #[param(pattern = "^(stretch|crop)$")]
    resize: Option<String>,
}

/// The multipart body: the image, and any option as a form field instead of a query
/// parameter. An option given both ways with different values, or a field not listed
/// here, gets 422 (a file part other than `image`: 400).
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainUpload {
    /// The image: JPEG, PNG, WebP, GIF (first frame), BMP or TIFF.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    #[schema(nullable = false, minimum = 0, maximum = 999)]
    target: Option<u16>,
    #[schema(nullable = false, minimum = 1, maximum = 1000)]
    top_k: Option<u16>,
    #[schema(nullable = false, minimum = 0.0, maximum = 1.0)]
    alpha: Option<f32>,
    #[schema(nullable = false)]
    overlay: Option<bool>,
    #[schema(nullable = false, pattern = "^(stretch|crop)$")]
    resize: Option<String>,
}

/// The overlay PNG, when asked for with `Accept: image/png`.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct PngBytes(Vec<u8>);

const OPTION_NAMES: [&str; 5] = ["target", "top_k", "alpha", "overlay", "resize"];

/// Collects options from the query string and the form, refusing bad values by name.
struct OptionParser {
    options: Options,
    seen: HashSet<String>,
}

impl OptionParser {
    fn set(&mut self, name: &str, value: &str) -> Result<(), ApiError> {
        if !OPTION_NAMES.contains(&name) {
            return Err(ApiError::invalid(
                name,
                value,
                format!(
                    "unknown option; the options are {}",
                    OPTION_NAMES.join(", ")
                ),
            ));
        }
        if self.seen.insert(name.to_string()) {
            return apply(&mut self.options, name, value);
        }
        // Given twice (query and form, or two fields): fine when both say the same thing
        // (`alpha=0` and `alpha=0.0`), refused when they disagree, as neither can win.
        let mut again = self.options;
        apply(&mut again, name, value)?;
        if again != self.options {
            return Err(ApiError::invalid(
                name,
                value,
                "given more than once, with different values",
            ));
        }
        Ok(())
    }
}

/// Parses one known option's value into `o`.
fn apply(o: &mut Options, name: &str, value: &str) -> Result<(), ApiError> {
    let v = value.trim();
    match name {
        "target" => match v.parse::<usize>() {
            Ok(t) if t < NUM_CLASSES => o.target = Some(t),
            _ => {
                return Err(ApiError::invalid(
                    name,
                    value,
                    "must be a class index in 0..=999",
                ))
            }
        },
        "top_k" => match v.parse::<usize>() {
            Ok(k) if (1..=NUM_CLASSES).contains(&k) => o.top_k = k,
            _ => {
                return Err(ApiError::invalid(
                    name,
                    value,
                    "must be an integer in 1..=1000",
                ))
            }
        },
        "alpha" => match v.parse::<f32>() {
            Ok(a) if (0.0..=1.0).contains(&a) => o.alpha = a,
            _ => return Err(ApiError::invalid(name, value, "must be a number in 0..=1")),
        },
        "overlay" => match v {
            "true" | "1" => o.overlay = true,
            "false" | "0" => o.overlay = false,
            _ => return Err(ApiError::invalid(name, value, "must be true or false")),
        },
        _ => match v.parse::<ResizeMode>() {
            Ok(mode) => o.resize = mode,
            Err(_) => return Err(ApiError::invalid(name, value, "must be stretch or crop")),
        },
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/explain",
    tag = "explain",
    params(ExplainParams),
    request_body(content = ExplainUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The prediction and its Grad-CAM explanation. With \
            `Accept: image/png`, the overlay PNG itself, with the prediction in X-Prediction-* \
            headers.", content(
            (Explanation = "application/json"),
            (PngBytes = "image/png"),
        )),
        (status = 400, description = "No `image` part, two of them, a malformed body, or not a decodable image", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong bearer token (when API keys are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The upload did not arrive in time", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Upload over the byte limit, or image over the pixel limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An option has a bad value; the detail names it", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The model failed (logged; the server goes on)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Queue full or model still loading; see Retry-After", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "The explanation took longer than the timeout", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])),
)]
pub async fn explain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let timeout_secs = state.config.server.request_timeout_secs;
    let deadline = started + std::time::Duration::from_secs(timeout_secs);
    let limit = state.config.server.max_upload_bytes;

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Refusals may come before the upload is read: `drain::drain_unread` reads what is
    // left before the answer goes out.
    let lowered = content_type.to_ascii_lowercase();
    if !lowered.starts_with("multipart/form-data") {
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return Err(ApiError::UnsupportedMediaType(format!(
            "send the image as multipart/form-data with a file part named `image` \
             (Content-Type was {shown})"
        )));
    }
    if !lowered.contains("boundary=") {
        return Err(ApiError::BadMultipart(
            "the multipart Content-Type has no boundary".into(),
        ));
    }
    if let Some(length) = super::announced_length(&headers) {
        if length > limit as u64 {
            return Err(ApiError::TooLarge(format!(
                "the body is {length} bytes; the limit is {limit} bytes"
            )));
        }
    }

    let mut parser = OptionParser {
        options: Options {
            target: None,
            top_k: state.config.explain.top_k,
            alpha: state.config.explain.alpha,
            overlay: true,
            resize: state.config.model.resize,
        },
        seen: HashSet::new(),
    };
    if let Some(query) = request.uri().query() {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map_err(|e| ApiError::invalid("query", query, e.to_string()))
            .and_then(|pairs| {
                pairs
                    .iter()
                    .try_for_each(|(name, value)| parser.set(name, value))
            })?;
    }

    let mut multipart = Multipart::from_request(request, &state)
        .await
        .map_err(|e| ApiError::BadMultipart(e.body_text()))?;
    let image = timeout_at(deadline, read_upload(&mut multipart, &mut parser, limit))
        .await
        .map_err(|_| ApiError::UploadTimeout(timeout_secs))??;
    let options = parser.options;

    if !state.workers.is_ready() {
        return Err(ApiError::NotReady);
    }
    let admission = state.workers.try_admit().ok_or(ApiError::Overloaded {
        capacity: state.workers.capacity(),
    })?;

    let limits = DecodeLimits {
        max_pixels: state.config.server.max_pixels,
    };
    let input_size = state.config.model.input_size;
    let prepared = timeout_at(
        deadline,
        tokio::task::spawn_blocking(move || {
            engine::prepare(&image, limits, input_size, options.resize)
        }),
    )
    .await
    .map_err(|_| ApiError::Timeout(timeout_secs))?
    .map_err(|e| ApiError::Internal(format!("decoding task failed: {e}")))?
    .map_err(ApiError::BadImage)?;

    let picture = prepared.picture;
    let region = prepared.input.region;
    let output = timeout_at(
        deadline,
        state
            .workers
            .explain(&admission, prepared.input, options.target),
    )
    .await
    .map_err(|_| ApiError::Timeout(timeout_secs))?
    .map_err(|e| match e {
        WorkerError::Stopped => ApiError::NotReady,
        other => ApiError::Internal(other.to_string()),
    })?;
    drop(admission);

    let timing = Timing {
        decode: prepared.decode_ms,
        queue: output.queue_ms,
        forward: output.forward_ms,
        backward: output.backward_ms,
        ..Timing::default()
    };
    let want_png = wants_png(&headers);
    let render_options = Options {
        overlay: options.overlay || want_png,
        ..options
    };
    let info = state.workers.info.clone();
    // Drawing, PNG encoding, base64 and JSON all take milliseconds for a large picture
    // (about 35 ms at 1920x1080): off the async threads, which serve every connection.
    let (explanation, body) = tokio::task::spawn_blocking(move || {
        let (mut explanation, png) =
            engine::finish(&picture, region, &output.raw, &render_options, info, timing);
        explanation.timing_ms.total = started.elapsed().as_secs_f64() * 1e3;
        match png {
            Some(png) if want_png => (explanation, Body::Png(png)),
            png => {
                let json = match png.filter(|_| options.overlay) {
                    Some(png) => explanation.to_json_with_overlay(&png),
                    None => serde_json::to_vec(&explanation).expect("an explanation serialises"),
                };
                (explanation, Body::Json(json))
            }
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("rendering task failed: {e}")))?;
    state.metrics.observe(&explanation.timing_ms);

    let timing_header = server_timing(&explanation.timing_ms);
    let mut response = match body {
        Body::Png(png) => {
            let mut r = (Bytes::from(png)).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
            prediction_headers(h, &explanation);
            r
        }
        Body::Json(json) => {
            let mut r = Bytes::from(json).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&timing_header) {
        response.headers_mut().insert("server-timing", v);
    }
    Ok(response)
}

/// An answer's body, made off the async threads.
enum Body {
    Png(Vec<u8>),
    Json(Vec<u8>),
}

/// Reads the parts: exactly one `image`, and option fields.
async fn read_upload(
    multipart: &mut Multipart,
    parser: &mut OptionParser,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("the upload is over the limit of {limit} bytes"));
    let part_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::BadMultipart(format!(
                "could not read the multipart body: {}",
                e.body_text()
            ))
        }
    };
    let mut image = None;
    while let Some(field) = multipart.next_field().await.map_err(part_error)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            if image.is_some() {
                return Err(ApiError::DuplicateImage);
            }
            image = Some(field.bytes().await.map_err(part_error)?);
        } else if field.file_name().is_some() {
            return Err(ApiError::BadMultipart(format!(
                "unexpected file part `{name}`: the image goes in a part named `image`"
            )));
        } else {
            let value = field.text().await.map_err(part_error)?;
            parser.set(&name, &value)?;
        }
    }
    image.ok_or(ApiError::MissingImage)
}

fn wants_png(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("image/png") && !accept.contains("application/json")
}

fn prediction_headers(h: &mut HeaderMap, e: &Explanation) {
    let pairs = [
        ("x-prediction-class", e.prediction.class_index.to_string()),
        ("x-prediction-label", e.prediction.label.clone()),
        ("x-prediction-score", e.prediction.score.to_string()),
        ("x-target-class", e.target.class_index.to_string()),
        ("x-target-label", e.target.label.clone()),
        ("x-target-score", e.target.score.to_string()),
        ("x-model-weights", e.model.weights.clone()),
        (
            "x-image-size",
            format!("{}x{}", e.image.width, e.image.height),
        ),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

fn server_timing(t: &Timing) -> String {
    [
        ("decode", t.decode),
        ("queue", t.queue),
        ("forward", t.forward),
        ("backward", t.backward),
        ("render", t.render),
        ("total", t.total),
    ]
    .iter()
    .map(|(name, ms)| format!("{name};dur={ms:.2}"))
    .collect::<Vec<_>>()
    .join(", ")
}

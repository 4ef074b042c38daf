//! `POST /explain`: multipart upload in, explanation (JSON or PNG) out.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::time::timeout_at;
use utoipa::ToSchema;

use super::pipeline::{self, Clock, ImageInput};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::explanation::{Explanation, Timing};
use crate::options::{ExplainOptions, OptionError, OverlayFormat, OverlayKind};

/// The multipart body: the image, and any option as a form field instead of a query
/// parameter. A form field overrides the same option in the query. A field not listed
/// here gets 422 (a file part other than `image`: 400). The spec lists the options'
/// fields beside `image` (from `ExplainOptions`, see `http::openapi_json`).
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainUpload {
    /// The image: JPEG, PNG, WebP, GIF (first frame), BMP or TIFF.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// The overlay image itself, when asked for with `Accept: image/png`, `image/jpeg` or
/// `image/webp`.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct OverlayBytes(Vec<u8>);

impl From<OptionError> for ApiError {
    fn from(e: OptionError) -> Self {
        ApiError::invalid(&e.name, &e.value, e.reason)
    }
}

/// Options from one source (the query, or the form): each named once; a repeat that says
/// the same thing (`alpha=0` and `alpha=0.0`) is fine, one that disagrees is refused.
#[derive(Default)]
struct OptionSource {
    options: ExplainOptions,
    seen: Vec<String>,
}

impl OptionSource {
    fn set(&mut self, name: &str, value: &str) -> Result<(), ApiError> {
        if !self.seen.iter().any(|s| s == name) {
            self.seen.push(name.to_string());
            return Ok(self.options.set(name, value)?);
        }
        let mut again = self.options.clone();
        again.set(name, value)?;
        if again != self.options {
            return Err(ApiError::invalid(
                name,
                value,
                "given more than once in the same place, with different values",
            ));
        }
        Ok(())
    }
}

#[utoipa::path(
    post,
    path = "/explain",
    tag = "explain",
    params(ExplainOptions),
    request_body(content = ExplainUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The prediction and its Grad-CAM explanation. With \
            `Accept: image/png`, `image/jpeg` or `image/webp` (and not `application/json`), \
            the overlay image itself in that format, with the prediction in X-Prediction-* \
            headers, the method in X-Method and each of `scores` in an X-Score-* header \
            (`X-Score-Confidence-Change`); `overlay_format`, if given, must then name the same format.", content(
            (Explanation = "application/json"),
            (OverlayBytes = "image/png"),
            (OverlayBytes = "image/jpeg"),
            (OverlayBytes = "image/webp"),
        )),
        (status = 400, description = "No `image` part, two of them, a malformed body, or not a decodable image", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong bearer token (when API keys are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The upload did not arrive in time", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Upload over the byte limit, or image over the pixel limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 406, description = "`Accept: image/png` with several targets: one PNG cannot hold several maps (ask for JSON)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An option has a bad value (an unknown `method` lists the valid ones; `scorecam` where the server does not allow it says how to turn it on); the detail names it. Or the loaded model cannot run what was asked (`urn:gradcam-serve:problem:unsupported`; the detail says why)", body = Problem, content_type = "application/problem+json"),
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
    let clock = Clock::start(&state);
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

    let mut query = OptionSource::default();
    if let Some(text) = request.uri().query() {
        serde_urlencoded::from_str::<Vec<(String, String)>>(text)
            .map_err(|e| ApiError::invalid("query", text, e.to_string()))
            .and_then(|pairs| {
                pairs
                    .iter()
                    .try_for_each(|(name, value)| query.set(name, value))
            })?;
    }

    // A bad query is refused before the upload is read.
    let model = state.workers.model.clone();
    query.options.resolve(&state.defaults, &model.limits())?;

    let mut multipart = Multipart::from_request(request, &state)
        .await
        .map_err(|e| ApiError::BadMultipart(e.body_text()))?;
    let mut form = OptionSource::default();
    let image = timeout_at(
        clock.deadline,
        read_upload(&mut multipart, &mut form, limit),
    )
    .await
    .map_err(|_| ApiError::UploadTimeout(clock.timeout_secs))??;
    let mut chosen = query.options;
    chosen.override_with(&form.options);
    let options = chosen.resolve(&state.defaults, &model.limits())?;
    // With `Accept: image/...` the answer is the overlay image in that format.
    let want_image = wanted_image(&headers);
    if want_image.is_some() && options.map_count() > 1 {
        return Err(ApiError::NotAcceptable(format!(
            "{} maps were asked for (target or top_k_maps) and one image holds one: ask for \
             application/json, whose `maps` has an overlay per class, or for one target",
            options.map_count()
        )));
    }
    let mut render_options = options.clone();
    if let Some(format) = want_image {
        if let Some(given) = chosen.overlay_format.filter(|&f| f != format) {
            return Err(ApiError::invalid(
                "overlay_format",
                &format!("{given:?}").to_lowercase(),
                format!(
                    "the request's Accept header asks for {}; leave overlay_format out or \
                     make it the same",
                    format.media_type()
                ),
            ));
        }
        render_options.overlay.format = format;
        if options.overlay.kind == OverlayKind::Off {
            render_options.overlay.kind = OverlayKind::Blend;
        }
    }

    let image = ImageInput::Encoded(image);
    let (explanation, body) =
        pipeline::explain_image(&state, image, options, render_options, clock, move |a| {
            let body = match a.overlay {
                Some(overlay) if want_image.is_some() => Body::Image(overlay),
                Some(overlay) => Body::Json(a.explanation.to_json_with_overlay(&overlay)),
                None => Body::Json(
                    serde_json::to_vec(&a.explanation).expect("an explanation serialises"),
                ),
            };
            (a.explanation, body)
        })
        .await?;

    let timing_header = server_timing(&explanation.timing_ms);
    let mut response = match body {
        Body::Image(overlay) => {
            let mut r = (Bytes::from(overlay.bytes)).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(overlay.format.media_type()),
            );
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
    Image(crate::render::EncodedOverlay),
    Json(Vec<u8>),
}

/// Reads the parts: exactly one `image`, and option fields.
async fn read_upload(
    multipart: &mut Multipart,
    form: &mut OptionSource,
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
            form.set(&name, &value)?;
        }
    }
    image.ok_or(ApiError::MissingImage)
}

/// The image format an `Accept` header asks for as the whole answer: the first of
/// `image/png`, `image/jpeg` and `image/webp` it names, unless it also takes JSON.
fn wanted_image(headers: &HeaderMap) -> Option<OverlayFormat> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if accept.contains("application/json") {
        return None;
    }
    [OverlayFormat::Png, OverlayFormat::Jpeg, OverlayFormat::Webp]
        .into_iter()
        .filter_map(|f| accept.find(f.media_type()).map(|at| (at, f)))
        .min_by_key(|&(at, _)| at)
        .map(|(_, f)| f)
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
    if let Some(o) = &e.overlay_image {
        for (name, value) in [
            ("x-overlay-kind", o.kind.clone()),
            ("x-overlay-size", format!("{}x{}", o.width, o.height)),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&e.method) {
        h.insert("x-method", v);
    }
    // `X-Score-Road: 0.41`, `X-Score-Confidence-Change: -0.62`.
    for (name, value) in e.scores.iter().flat_map(|s| &s.0) {
        let header = format!("x-score-{}", name.replace('_', "-"));
        let text = value.to_string();
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(header.as_bytes()),
            HeaderValue::from_str(&text),
        ) {
            h.insert(n, v);
        }
    }
}

fn server_timing(t: &Timing) -> String {
    t.stages()
        .iter()
        .map(|(name, ms)| format!("{name};dur={ms:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

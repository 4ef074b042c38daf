//! KServe v1: `GET /v1/models`, `GET /v1/models/{name}`, `POST /v1/models/{name}:predict`
//! and `POST /v1/models/{name}:explain`, with `{"instances": [...], "parameters": {...}}`
//! bodies. Each instance is an image as base64 in one of the conventions clients use, with
//! any `/explain` option beside it; `parameters` gives options for every instance (an
//! instance's own win). Several instances are several jobs through the same queue.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{check_count, check_model, options_from, read_body, resolve, ProtocolError};
use crate::explanation::ClassScore;
use crate::http::pipeline::{self, Clock, ImageInput};
use crate::http::problem::ApiError;
use crate::http::AppState;
use crate::options::{ExplainOptions, OverlayKind};

/// `GET /v1/models`: the one model served.
pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(serde_json::json!({ "models": [state.model_name()] }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1Request {
    instances: Vec<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// `:predict`'s answer for one instance.
#[derive(Serialize)]
struct Prediction {
    #[serde(flatten)]
    class: ClassScore,
    top_k: Vec<ClassScore>,
}

#[derive(Clone, Copy, PartialEq)]
enum Verb {
    Predict,
    Explain,
}

/// `POST /v1/models/{name}:predict` and `:explain` (the verb is the path's last part).
pub async fn predict_or_explain(
    State(state): State<Arc<AppState>>,
    Path(name_and_verb): Path<String>,
    request: Request,
) -> Result<Response, ProtocolError> {
    let clock = Clock::start(&state);
    let verb = match name_and_verb.rsplit_once(':') {
        Some((name, "predict")) => (name, Verb::Predict),
        Some((name, "explain")) => (name, Verb::Explain),
        _ => {
            return Err(ProtocolError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "POST /v1/models/{name_and_verb}: the path ends in `:predict` or `:explain`"
                ),
                retry_after: false,
            })
        }
    };
    let (name, verb) = verb;
    check_model(&state, name)?;
    let (parts, body) = request.into_parts();
    let body = read_body(&state, &parts.headers, body, clock).await?;
    let asked: V1Request = serde_json::from_slice(&body).map_err(|e| {
        ProtocolError::bad_request(format!(
            "the body is not a KServe v1 request ({{\"instances\": [...]}}): {e}"
        ))
    })?;
    check_count(&state, asked.instances.len(), "instance")?;
    let general =
        options_from(&asked.parameters).map_err(|e| ProtocolError::from(e).at("parameters"))?;
    let several = asked.instances.len() > 1;
    let place = |i: usize| format!("instance {i}");

    let mut jobs = Vec::with_capacity(asked.instances.len());
    for (i, instance) in asked.instances.into_iter().enumerate() {
        let (image, own) = read_instance(&state, instance).map_err(|e| e.at(place(i)))?;
        let mut options =
            resolve(&state, &general, &own).map_err(|e| ProtocolError::from(e).at(place(i)))?;
        if verb == Verb::Predict {
            options.overlay.kind = OverlayKind::Off;
        }
        jobs.push((image, options));
    }
    let runs = jobs.into_iter().enumerate().map(|(i, (image, options))| {
        let state = state.clone();
        async move {
            let render = options.clone();
            pipeline::explain_image(
                &state,
                ImageInput::Encoded(image),
                options,
                render,
                clock,
                move |a| match (verb, &a.overlay) {
                    (Verb::Predict, _) => serde_json::to_vec(&Prediction {
                        class: a.explanation.prediction.clone(),
                        top_k: a.explanation.top_k.clone(),
                    })
                    .expect("a prediction serialises"),
                    (Verb::Explain, Some(overlay)) => a.explanation.to_json_with_overlay(overlay),
                    (Verb::Explain, None) => {
                        serde_json::to_vec(&a.explanation).expect("an explanation serialises")
                    }
                },
            )
            .await
            .map_err(|e| {
                let e = ProtocolError::from(e);
                if several {
                    e.at(place(i))
                } else {
                    e
                }
            })
        }
    });
    let answers = try_join_all(runs).await?;
    let field = match verb {
        Verb::Predict => "predictions",
        Verb::Explain => "explanations",
    };
    // The answers are JSON already (an explanation's overlay is written straight into its
    // buffer): joined, not parsed again.
    let mut json = Vec::with_capacity(answers.iter().map(Vec::len).sum::<usize>() + 32);
    json.extend_from_slice(format!(r#"{{"{field}":["#).as_bytes());
    for (i, answer) in answers.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(answer);
    }
    json.extend_from_slice(b"]}");
    let mut response = Bytes::from(json).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// An instance: `{"image_bytes": {"b64": ...}}` (TensorFlow Serving's), `{"b64": ...}` or
/// `{"data": ...}`, with options beside it; or the base64 string alone.
fn read_instance(
    state: &AppState,
    instance: Value,
) -> Result<(Bytes, ExplainOptions), ProtocolError> {
    const FORMS: &str = r#"an instance gives its image as base64 in {"image_bytes": {"b64": ...}}, {"b64": ...} or {"data": ...}, or is that string itself"#;
    let mut fields = match instance {
        Value::String(text) => {
            return Ok((
                decode_base64(state, &text, "the instance")?,
                ExplainOptions::default(),
            ))
        }
        Value::Object(fields) => fields,
        other => {
            return Err(ProtocolError::bad_request(format!(
                "{FORMS}; this one is {}",
                kind_of(&other)
            )))
        }
    };
    let mut found = Vec::new();
    if let Some(nested) = fields.remove("image_bytes") {
        let text = nested
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("b64"))
            .and_then(Value::as_str)
            .ok_or_else(|| ProtocolError::bad_request(r#"`image_bytes` is {"b64": "<base64>"}"#))?;
        found.push(("image_bytes.b64", text.to_string()));
    }
    for key in ["b64", "data"] {
        if let Some(value) = fields.remove(key) {
            let Value::String(text) = value else {
                return Err(ProtocolError::bad_request(format!(
                    "`{key}` is the image as a base64 string; it is {}",
                    kind_of(&value)
                )));
            };
            found.push((key, text));
        }
    }
    let (key, text) = match found.len() {
        1 => found.pop().expect("one"),
        0 => return Err(ProtocolError::bad_request(format!("no image: {FORMS}"))),
        _ => {
            let keys: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
            return Err(ProtocolError::bad_request(format!(
                "{} images in one instance ({}): one each",
                found.len(),
                keys.join(", ")
            )));
        }
    };
    let image = decode_base64(state, &text, &format!("`{key}`"))?;
    let options = options_from(&fields)?;
    Ok((image, options))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Standard base64 (padding optional, line breaks allowed), or a `data:` URL of it as a
/// browser's FileReader makes; at most `server.max_upload_bytes` once decoded.
pub(super) fn decode_base64(
    state: &AppState,
    text: &str,
    what: &str,
) -> Result<Bytes, ProtocolError> {
    let text = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64_simd::forgiving_decode_to_vec(&compact).map_err(|_| {
        ProtocolError::bad_request(format!("{what} is not base64 (standard alphabet)"))
    })?;
    let limit = state.config.server.max_upload_bytes;
    if bytes.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "{what} is {} bytes once decoded; the limit is {limit} bytes",
            bytes.len()
        ))
        .into());
    }
    Ok(Bytes::from(bytes))
}

//! Open Inference Protocol v2 (KServe, Triton, Seldon MLServer, TorchServe): health,
//! server and model metadata, and `POST /v2/models/{name}/infer`.
//!
//! One input, either `image` (BYTES `[N]`: encoded image files) or `input` (FP32
//! `[N, 3, S, S]`: the model's input, already normalised with GET /model's mean and std).
//! Outputs, those asked for by name (all by default): `probabilities` FP32 `[N, classes]`,
//! `saliency` FP32 `[N, h, w]` (the raw map of `/explain`'s `saliency`; `[N, h, w, 3]` for
//! the guided methods), `overlay_png` BYTES `[N]`. The request's `parameters` carry the
//! `/explain` options.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::try_join_all;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::tensors::{self, BinaryParts, InferRequest, Values, HEADER_LENGTH};
use super::{
    check_count, check_model, check_version, options_from, read_body, ready_answer, resolve,
    ProtocolError, VERSION,
};
use crate::http::pipeline::{self, Clock, ImageInput};
use crate::http::problem::ApiError;
use crate::http::AppState;
use crate::options::{ExplainOptions, OverlayFormat, OverlayKind};

/// The outputs, in the order they are listed and answered by default.
const OUTPUTS: [&str; 3] = ["probabilities", "saliency", "overlay_png"];
/// The inputs: one of them per request.
const IMAGE: &str = "image";
const INPUT: &str = "input";
/// The request parameter of the binary extension (not an option).
const BINARY_OUTPUT: &str = "binary_data_output";

/// `GET /v2`
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// `GET /v2/health/live`: the process answers.
pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 once the model is loaded and warmed up, 503 before.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    ready_answer(json!({ "ready": state.workers.is_ready() }), &state)
}

/// `GET /v2/models/{name}/versions/{version}/ready`
pub async fn model_ready_version(
    state: State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ProtocolError> {
    check_version(&version)?;
    super::model_ready(state, Path(name)).await
}

/// `GET /v2/models/{name}`: the inputs and outputs, their datatypes and shapes (-1 where
/// a size varies: the batch, the map's size, which depends on the layer and method).
pub async fn metadata(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ProtocolError> {
    check_model(&state, &name)?;
    let model = &state.workers.model;
    let size = model.input_size as i64;
    Ok(Json(json!({
        "name": name,
        "versions": [VERSION],
        "platform": env!("CARGO_PKG_NAME"),
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT, "datatype": "FP32", "shape": [-1, 3, size, size]},
        ],
        "outputs": [
            {"name": OUTPUTS[0], "datatype": "FP32", "shape": [-1, model.num_classes]},
            {"name": OUTPUTS[1], "datatype": "FP32", "shape": [-1, -1, -1]},
            {"name": OUTPUTS[2], "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "architecture": model.architecture,
            "labels": model.labels,
            "layers": model.layers,
            "default_layer": model.default_layer,
            "mean": model.mean,
            "std": model.std,
        },
    })))
}

/// `GET /v2/models/{name}/versions/{version}`
pub async fn metadata_version(
    state: State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ProtocolError> {
    check_version(&version)?;
    metadata(state, Path(name)).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`
pub async fn infer_version(
    state: State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ProtocolError> {
    check_version(&version)?;
    infer(state, Path(name), request).await
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<OutputTensor>,
}

/// One output of the answer.
#[derive(Serialize)]
struct OutputTensor {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data {
    Fp32(Vec<f32>),
    Strings(Vec<String>),
}

/// What one image's run gives back.
struct ImageResult {
    probabilities: Vec<f32>,
    /// (height, width, channels, values)
    saliency: (usize, usize, usize, Vec<f32>),
    overlay: Option<Vec<u8>>,
}

/// `POST /v2/models/{name}/infer`
pub async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ProtocolError> {
    let clock = Clock::start(&state);
    check_model(&state, &name)?;
    let (parts, body) = request.into_parts();
    let header_length = parts
        .headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let body = read_body(&state, &parts.headers, body, clock).await?;
    let (mut asked, mut binary) = tensors::parse(&body, header_length.as_deref())?;
    drop(body);
    for (field, given, path) in [
        ("model_name", &asked.model_name, name.as_str()),
        ("model_version", &asked.model_version, VERSION),
    ] {
        if let Some(given) = given.as_deref().filter(|g| !g.is_empty() && *g != path) {
            return Err(ProtocolError::bad_request(format!(
                "the body's {field} `{given}` is not the path's `{path}`"
            )));
        }
    }

    let wanted = wanted_outputs(&asked)?;
    let images = read_images(&state, &mut asked, &mut binary)?;
    check_count(&state, images.len(), "image")?;

    let mut parameters = std::mem::take(&mut asked.parameters);
    parameters.remove(BINARY_OUTPUT);
    let general = options_from(&parameters).map_err(|e| ProtocolError::from(e).at("parameters"))?;
    let mut options = resolve(&state, &general, &ExplainOptions::default())?;
    let with_overlay = wanted.iter().any(|(name, _)| *name == OUTPUTS[2]);
    let mut render = options.clone();
    if with_overlay {
        render.overlay.format = OverlayFormat::Png;
        if render.overlay.kind == OverlayKind::Off {
            render.overlay.kind = OverlayKind::Blend;
        }
    } else {
        options.overlay.kind = OverlayKind::Off;
        render.overlay.kind = OverlayKind::Off;
    }

    let several = images.len() > 1;
    let runs = images.into_iter().enumerate().map(|(i, image)| {
        let (state, options, render) = (state.clone(), options.clone(), render.clone());
        async move {
            pipeline::explain_image(&state, image, options, render, clock, |a| {
                let s = &a.explanation.saliency;
                ImageResult {
                    probabilities: a.probabilities,
                    saliency: (
                        s.height,
                        s.width,
                        s.channels,
                        s.data.iter().flatten().copied().collect(),
                    ),
                    overlay: a.overlay.map(|o| o.bytes),
                }
            })
            .await
            .map_err(|e| {
                let e = ProtocolError::from(e);
                if several {
                    e.at(format!("image {i}"))
                } else {
                    e
                }
            })
        }
    });
    let results = try_join_all(runs).await?;
    answer(&name, asked.id, &wanted, results)
}

/// The outputs asked for, each with whether it goes as binary data.
fn wanted_outputs(asked: &InferRequest) -> Result<Vec<(&'static str, bool)>, ProtocolError> {
    let default_binary = match asked.parameters.get(BINARY_OUTPUT) {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            ProtocolError::bad_request(format!("parameter {BINARY_OUTPUT} is true or false"))
        })?,
    };
    if asked.outputs.is_empty() {
        return Ok(OUTPUTS.iter().map(|&n| (n, default_binary)).collect());
    }
    let mut wanted = Vec::new();
    for output in &asked.outputs {
        let name = OUTPUTS
            .into_iter()
            .find(|&n| n == output.name)
            .ok_or_else(|| {
                ProtocolError::bad_request(format!(
                    "no output named `{}`; the outputs are {}",
                    output.name,
                    OUTPUTS.join(", ")
                ))
            })?;
        if wanted.iter().any(|(n, _)| *n == name) {
            return Err(ProtocolError::bad_request(format!(
                "output `{name}` asked for twice"
            )));
        }
        let binary = match output.parameters.get("binary_data") {
            None => default_binary,
            Some(v) => v.as_bool().ok_or_else(|| {
                ProtocolError::bad_request(format!("output `{name}`: binary_data is true or false"))
            })?,
        };
        wanted.push((name, binary));
    }
    Ok(wanted)
}

/// The request's one input as images: encoded files, or the model's normalised input.
fn read_images(
    state: &AppState,
    asked: &mut InferRequest,
    binary: &mut BinaryParts,
) -> Result<Vec<ImageInput>, ProtocolError> {
    let names: Vec<&str> = asked.inputs.iter().map(|i| i.name.as_str()).collect();
    if asked.inputs.len() != 1 {
        return Err(ProtocolError::bad_request(format!(
            "{} inputs ({}); give one: `{IMAGE}` (BYTES, encoded images) or `{INPUT}` (FP32, \
             normalised)",
            asked.inputs.len(),
            names.join(", ")
        )));
    }
    let input = asked.inputs.remove(0);
    let raw = binary.remove(0);
    let model = &state.workers.model;
    let size = model.input_size as usize;
    let bad = |m: String| ProtocolError::bad_request(format!("input `{}`: {m}", input.name));
    match input.name.as_str() {
        IMAGE => {
            if input.datatype != "BYTES" {
                return Err(bad(format!(
                    "datatype {} is not taken: `{IMAGE}` is BYTES, the encoded image files \
                     (for pixels, send `{INPUT}` as FP32)",
                    input.datatype
                )));
            }
            if input.shape.len() != 1 {
                return Err(bad(format!(
                    "shape {:?}: `{IMAGE}` is [N], one encoded file per image",
                    input.shape
                )));
            }
            let Values::Bytes(files) = tensors::values(&input, raw)? else {
                unreachable!("BYTES gives bytes")
            };
            let limit = state.config.server.max_upload_bytes;
            files
                .into_iter()
                .enumerate()
                .map(|(i, file)| {
                    if file.len() > limit {
                        return Err(ApiError::TooLarge(format!(
                            "input `{IMAGE}` element {i} is {} bytes; the limit is {limit}",
                            file.len()
                        ))
                        .into());
                    }
                    Ok(ImageInput::Encoded(Bytes::from(file)))
                })
                .collect()
        }
        INPUT => {
            let expected = format!("[N, 3, {size}, {size}]");
            if input.datatype != "FP32" {
                return Err(bad(format!(
                    "datatype {} is not taken: `{INPUT}` is FP32 {expected} (for encoded \
                     files, send `{IMAGE}` as BYTES)",
                    input.datatype
                )));
            }
            let fits = matches!(input.shape.as_slice(),
                [_, 3, h, w] if *h as usize == size && *w as usize == size);
            if !fits {
                return Err(bad(format!(
                    "shape {:?}: this model takes {expected}, normalised with GET /model's \
                     mean and std",
                    input.shape
                )));
            }
            let Values::Fp32(floats) = tensors::values(&input, raw)? else {
                unreachable!("FP32 gives floats")
            };
            if let Some(at) = floats.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!("value {at} is not a finite number")));
            }
            Ok(floats
                .chunks_exact(3 * size * size)
                .map(|chw| ImageInput::Normalised(chw.to_vec()))
                .collect())
        }
        other => Err(ProtocolError::bad_request(format!(
            "no input named `{other}`; give `{IMAGE}` (BYTES, encoded images) or `{INPUT}` \
             (FP32 [N, 3, {size}, {size}], normalised)"
        ))),
    }
}

/// The answer: JSON, with the binary outputs after it when any is binary.
fn answer(
    name: &str,
    id: Option<String>,
    wanted: &[(&'static str, bool)],
    results: Vec<ImageResult>,
) -> Result<Response, ProtocolError> {
    let n = results.len();
    let (h, w, c, _) = results[0].saliency;
    if results
        .iter()
        .any(|r| (r.saliency.0, r.saliency.1, r.saliency.2) != (h, w, c))
    {
        return Err(ApiError::Internal("the images' maps differ in size".into()).into());
    }
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for &(output, binary) in wanted {
        let (datatype, shape, floats, files): (_, _, Option<Vec<f32>>, Option<Vec<Vec<u8>>>) =
            match output {
                "probabilities" => {
                    let classes = results[0].probabilities.len();
                    let all = results.iter().flat_map(|r| r.probabilities.iter().copied());
                    ("FP32", vec![n, classes], Some(all.collect()), None)
                }
                "saliency" => {
                    let mut shape = vec![n, h, w];
                    if c != 1 {
                        shape.push(c);
                    }
                    let all = results.iter().flat_map(|r| r.saliency.3.iter().copied());
                    ("FP32", shape, Some(all.collect()), None)
                }
                _ => {
                    let files = results
                        .iter()
                        .map(|r| r.overlay.clone().unwrap_or_default())
                        .collect();
                    ("BYTES", vec![n], None, Some(files))
                }
            };
        let mut parameters = Map::new();
        let data = if binary {
            let bytes = match (&floats, &files) {
                (Some(f), _) => f.iter().flat_map(|v| v.to_le_bytes()).collect(),
                (_, Some(files)) => tensors::join_bytes(files),
                _ => Vec::new(),
            };
            parameters.insert("binary_data_size".into(), bytes.len().into());
            tail.extend_from_slice(&bytes);
            None
        } else {
            Some(match (floats, files) {
                (Some(f), _) => Data::Fp32(f),
                (_, Some(files)) => Data::Strings(
                    files
                        .iter()
                        .map(|f| base64_simd::STANDARD.encode_to_string(f))
                        .collect(),
                ),
                _ => Data::Fp32(Vec::new()),
            })
        };
        outputs.push(OutputTensor {
            name: output,
            datatype,
            shape,
            parameters,
            data,
        });
    }
    // Serialised from the struct, not a `Value`: f32s keep their shortest text.
    let head = InferResponse {
        model_name: name,
        model_version: VERSION,
        id,
        outputs,
    };
    let mut json = serde_json::to_vec(&head).expect("an answer serialises");
    let json_length = json.len();
    let any_binary = wanted.iter().any(|&(_, b)| b);
    json.extend_from_slice(&tail);
    let mut response = Bytes::from(json).into_response();
    let headers = response.headers_mut();
    if any_binary {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(HEADER_LENGTH, HeaderValue::from(json_length));
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(response)
}

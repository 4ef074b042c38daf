//! One image from the request to its answer: decode, admission to the queue, the model
//! workers, then the overlay and the answer's body. Shared by every endpoint that runs the
//! network (`POST /explain`, KServe v1, Open Inference Protocol v2), so that each has the
//! same limits, timeouts, cancellation and errors.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use image::RgbImage;
use tokio::time::{timeout_at, Instant};

use super::problem::ApiError;
use super::AppState;
use crate::engine::{self, Prepared};
use crate::explanation::{EncodedOverlay, Explanation, ImageSize, Timing};
use crate::options::Options;
use crate::preprocess::{DecodeLimits, ModelInput};
use crate::telemetry;
use crate::worker::{JobOutput, WorkerError};

/// The image as a request gives it.
pub enum ImageInput {
    /// An encoded file (JPEG, PNG, ...), decoded on a blocking thread.
    Encoded(Bytes),
    /// The model's input itself: normalised CHW floats at the model's input size.
    Normalised(Vec<f32>),
}

/// One answered image: the explanation (its `timing_ms.total` set), its overlay when the
/// options ask for one, and every class's probability.
pub struct Answered {
    pub explanation: Explanation,
    pub overlay: Option<EncodedOverlay>,
    pub probabilities: Vec<f32>,
}

/// When the request started and when it must be answered by.
#[derive(Clone, Copy)]
pub struct Clock {
    pub started: Instant,
    pub deadline: Instant,
    pub timeout_secs: u64,
}

impl Clock {
    pub fn start(state: &AppState) -> Self {
        let started = Instant::now();
        let timeout_secs = state.config.server.request_timeout_secs;
        Clock {
            started,
            deadline: started + std::time::Duration::from_secs(timeout_secs),
            timeout_secs,
        }
    }
}

/// Runs one image through the model with `options` (checked already) and draws the
/// overlay with `render` (the same options, or with the overlay's format set by the
/// caller). `then` turns the answer into the response body on the same blocking thread
/// (drawing, encoding and JSON take milliseconds for a large picture: off the async
/// threads, which serve every connection).
pub async fn explain_image<T: Send + 'static>(
    state: &Arc<AppState>,
    image: ImageInput,
    options: Options,
    render: Options,
    clock: Clock,
    then: impl FnOnce(Answered) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let timed_out = || ApiError::Timeout(clock.timeout_secs);
    if !state.workers.is_ready() {
        return Err(ApiError::NotReady);
    }
    let admission = state
        .workers
        .try_admit(options.passes())
        .ok_or(ApiError::Overloaded {
            capacity: state.workers.capacity(),
        })?;

    let model = state.workers.model.clone();
    let spec = model.input_spec();
    // The request's span (the HTTP layer's), parent of each stage's.
    let request = tracing::Span::current();
    let prepared = match image {
        ImageInput::Encoded(bytes) => {
            let limits = DecodeLimits {
                max_pixels: state.config.server.max_pixels,
            };
            let (resize, max_side) = (options.resize, options.overlay.max_side);
            let span = tracing::info_span!("decode", image.bytes = bytes.len() as i64);
            timeout_at(
                clock.deadline,
                tokio::task::spawn_blocking(move || {
                    span.in_scope(|| {
                        engine::prepare_fitted(&bytes, limits, &spec, resize, max_side)
                    })
                }),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| ApiError::Internal(format!("decoding task failed: {e}")))?
            .map_err(ApiError::BadImage)?
        }
        ImageInput::Normalised(chw) => {
            let input = ModelInput::from_normalised(chw, &spec);
            let picture = RgbImage::from_raw(spec.size, spec.size, input.pixels.clone())
                .expect("size x size RGB pixels");
            Prepared {
                picture,
                input,
                decode_ms: 0.0,
                image: ImageSize {
                    width: spec.size,
                    height: spec.size,
                },
            }
        }
    };

    let Prepared {
        picture,
        input,
        decode_ms,
        image: image_size,
    } = prepared;
    let region = input.region;
    let submitted = SystemTime::now();
    // On timeout the future is dropped, which tells the worker to stop (504 here at once).
    let job = state.workers.submit(
        &admission,
        input,
        options.cam.clone(),
        options.scores.clone(),
    );
    let output = timeout_at(clock.deadline, job)
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| match e {
            WorkerError::Stopped => ApiError::NotReady,
            WorkerError::Unsupported(why) => ApiError::Unsupported(why),
            other => ApiError::Internal(other.to_string()),
        })?;
    drop(admission);
    worker_spans(&request, submitted, &output, &options);

    let timing = Timing {
        decode: decode_ms,
        queue: output.queue_ms,
        forward: output.scored.passes.forward_ms,
        backward: output.scored.passes.backward_ms,
        scores: output.scored.scores_ms,
        ..Timing::default()
    };
    let state = state.clone();
    let span = tracing::info_span!(parent: &request, "render", overlay.kind = ?render.overlay.kind);
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let (mut explanation, overlay) = engine::finish(
            &picture,
            image_size,
            region,
            &output.scored,
            &render,
            &model,
            timing,
        );
        explanation.timing_ms.total = clock.started.elapsed().as_secs_f64() * 1e3;
        state.metrics.observe(&explanation.timing_ms);
        then(Answered {
            explanation,
            overlay,
            probabilities: output.scored.raw.probabilities.clone(),
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("rendering task failed: {e}")))
}

/// The stages the model worker timed, as children of the request's span, back to back from
/// when the job was queued: `queue`, `forward`, `backward`, then `scores` when asked for.
fn worker_spans(
    request: &tracing::Span,
    submitted: SystemTime,
    output: &JobOutput,
    options: &Options,
) {
    use opentelemetry::KeyValue;
    let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1e3);
    let passes = &output.scored.passes;
    let method = KeyValue::new("gradcam.method", output.scored.raw.method.name());
    let stages = [
        ("queue", ms(output.queue_ms), vec![]),
        (
            "forward",
            ms(passes.forward_ms),
            vec![
                method.clone(),
                KeyValue::new("gradcam.batch_size", output.batch_size as i64),
            ],
        ),
        ("backward", ms(passes.backward_ms), vec![method]),
        ("scores", ms(output.scored.scores_ms), vec![]),
    ];
    let mut start = submitted;
    for (name, duration, attributes) in stages {
        if name == "scores" && options.scores.scores.is_empty() {
            continue;
        }
        telemetry::timed_stage(request, name, start, duration, attributes);
        start += duration;
    }
}

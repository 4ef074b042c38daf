//! One explanation, end to end, in three steps that can run on different threads:
//! `prepare` (decode + resize, CPU), `Engine::run` (the network, owned by one thread,
//! batched), `finish` (overlay + answer, CPU). The CLI calls them in a row; the server
//! runs the middle one on its model workers.

use std::time::Instant;

use image::RgbImage;
use tch::Tensor;

use crate::config::ModelConfig;
use crate::explanation::{ClassScore, Explanation, ImageSize, ModelInfo, Saliency, Timing};
use crate::gradcam::{self, GradCamError, PassTimings, RawExplanation};
use crate::labels::label;
use crate::model::ResNet50;
use crate::preprocess::{self, DecodeError, DecodeLimits, ModelInput, Region, ResizeMode};
use crate::render;
use crate::weights::{self, WeightsError};

/// What a caller may choose per explanation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Class to explain; None: the top-1 class.
    pub target: Option<usize>,
    pub top_k: usize,
    /// Heat-map opacity in the overlay, 0..1.
    pub alpha: f32,
    /// Whether to draw the overlay at all.
    pub overlay: bool,
    pub resize: ResizeMode,
}

/// A decoded upload and the model input made from it.
pub struct Prepared {
    pub picture: RgbImage,
    pub input: ModelInput,
    pub decode_ms: f64,
}

pub fn prepare(
    bytes: &[u8],
    limits: DecodeLimits,
    input_size: u32,
    resize: ResizeMode,
) -> Result<Prepared, DecodeError> {
    let start = Instant::now();
    let picture = preprocess::decode(bytes, limits)?;
    let input = preprocess::prepare(&picture, input_size, resize);
    Ok(Prepared {
        picture,
        input,
        decode_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// The loaded network. Not `Sync` (libtorch tensors): each worker thread owns one.
pub struct Engine {
    model: ResNet50,
    info: ModelInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(
        "no weights file at {0}: run `gradcam-serve fetch-weights` to download the official \
         ones, point --weights at a safetensors file, or pass --demo-weights to run with \
         random weights"
    )]
    NoWeights(std::path::PathBuf),
}

impl Engine {
    pub fn load(config: &ModelConfig) -> Result<Self, LoadError> {
        if config.threads > 0 {
            tch::set_num_threads(config.threads as i32);
        }
        let loaded = if config.weights.exists() {
            weights::load_file(&config.weights)?
        } else if config.demo_weights {
            weights::demo()
        } else {
            return Err(LoadError::NoWeights(config.weights.clone()));
        };
        let mut model = loaded.model;
        if config.fold_batch_norm {
            model.fold_batch_norm();
        }
        // oneDNN's path has convolutions only: without folding, batch norm stays plain.
        if config.fold_batch_norm && config.onednn_weights {
            if let Err(e) = model.use_onednn_weights(config.input_size as i64) {
                tracing::warn!(
                    "running with plain weights: reordering them for oneDNN failed: {e}"
                );
            }
            release_freed_memory();
        }
        Ok(Self {
            model,
            info: ModelInfo {
                name: "resnet50".into(),
                target_layer: "layer4".into(),
                weights: loaded.weights_id,
            },
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn is_demo(&self) -> bool {
        self.info.weights == weights::DEMO_ID
    }

    /// Runs the network and Grad-CAM on a batch of prepared inputs (all the same size).
    pub fn run(
        &self,
        inputs: &[&ModelInput],
        targets: &[Option<usize>],
    ) -> Result<(Vec<RawExplanation>, PassTimings), GradCamError> {
        gradcam::explain(&self.model, &batch_tensor(inputs), targets)
    }

    /// A plain prediction, without explanation (to compare costs).
    pub fn predict(&self, inputs: &[&ModelInput]) -> Result<Vec<f32>, GradCamError> {
        gradcam::predict(&self.model, &batch_tensor(inputs))
    }
}

/// Hands the heap's free memory back to the system. The plain weights freed after the
/// reorder (about 90 MB, in many blocks under the heap's top) would otherwise stay resident:
/// 336 MB after loading instead of 227 MB.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only returns free pages to the system, under glibc's lock.
        unsafe {
            malloc_trim(0);
        }
    }
}

fn batch_tensor(inputs: &[&ModelInput]) -> Tensor {
    let size = inputs[0].size as i64;
    let mut data = Vec::with_capacity(inputs.len() * inputs[0].chw.len());
    for input in inputs {
        assert_eq!(input.size as i64, size, "one input size per batch");
        data.extend_from_slice(&input.chw);
    }
    Tensor::from_slice(&data).view([inputs.len() as i64, 3, size, size])
}

/// Turns the network's answer into the explanation (classes with labels, the raw map as
/// rows) and, when asked for, the overlay PNG at the picture's own size. The PNG comes back
/// as bytes: the JSON answer embeds it with [`Explanation::to_json_with_overlay`], the CLI and
/// `Accept: image/png` send it as it is.
pub fn finish(
    picture: &RgbImage,
    region: Region,
    raw: &RawExplanation,
    options: &Options,
    model: ModelInfo,
    mut timing: Timing,
) -> (Explanation, Option<Vec<u8>>) {
    let start = Instant::now();
    let score = |i: usize| ClassScore {
        class_index: i,
        label: label(i).to_string(),
        score: raw.probabilities[i],
    };
    let top = gradcam::top_k(&raw.probabilities, options.top_k.max(1));
    let overlay_png = options.overlay.then(|| {
        let image = render::overlay(
            picture,
            &raw.cam,
            raw.width,
            raw.height,
            region,
            options.alpha,
        );
        render::encode_png(&image)
    });
    timing.render = start.elapsed().as_secs_f64() * 1e3;
    let explanation = Explanation {
        prediction: score(top[0].0),
        top_k: top.iter().map(|&(i, _)| score(i)).collect(),
        target: score(raw.target),
        saliency: Saliency {
            width: raw.width,
            height: raw.height,
            data: raw.cam.chunks(raw.width).map(<[f32]>::to_vec).collect(),
        },
        image: ImageSize {
            width: picture.width(),
            height: picture.height(),
        },
        model,
        timing_ms: timing,
        overlay_png: None,
    };
    (explanation, overlay_png)
}

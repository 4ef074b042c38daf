//! One explanation, end to end, in three steps that can run on different threads:
//! `prepare` (decode + resize, CPU), [`Explainer::explain`] (the network, owned by one
//! thread, batched), `finish` (overlay + answer, CPU). The CLI and the benchmark call them
//! in a row ([`explain_now`]); the server runs the middle one on its model workers.
//!
//! The workers see the network only through the [`Explainer`] trait, so that the worker
//! pool, the queue and the HTTP layer can be tested with a stand-in that the test controls.

use std::path::PathBuf;
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use utoipa::ToSchema;

use crate::cam::{self, CamAsk, CamExplanation};
use crate::config::ModelConfig;
use crate::explanation::{
    ClassScore, Explanation, ImageSize, ModelInfo, Saliency, TargetMap, Timing,
};
use crate::gradcam::{self, Ask, GradCamError, PassTimings, RawExplanation};
use crate::labels::{Labels, LabelsError};
use crate::model::{Layer, ModelError, ResNet};
use crate::options::{Limits, Options};
use crate::preprocess::{
    self, DecodeError, DecodeLimits, InputSpec, ModelInput, Region, ResizeMode,
};
use crate::render;
use crate::weights::{self, WeightsError};

/// What runs the network: the real [`Engine`], or a stand-in in tests. Each model worker
/// thread owns one (libtorch tensors are not `Sync`).
pub trait Explainer: Send {
    /// Runs a batch of prepared inputs (all of one size): one answer per input, in order.
    fn explain(
        &self,
        inputs: &[&ModelInput],
        asks: &[Ask],
    ) -> Result<(Vec<RawExplanation>, PassTimings), GradCamError>;

    /// Explains one input with any CAM method, several targets or several layers
    /// ([`cam::explain`]); `abandoned` says when nobody waits for the answer any more.
    fn explain_cam(
        &self,
        _input: &ModelInput,
        ask: &CamAsk,
        _abandoned: &dyn Fn() -> bool,
    ) -> Result<(CamExplanation, PassTimings), GradCamError> {
        Err(GradCamError::Unsupported(format!(
            "this explainer has only plain Grad-CAM, not {}",
            ask.method
        )))
    }

    /// A first pass before the worker reports ready, so that the first request does not
    /// pay for libtorch's lazy set-up.
    fn warm_up(&self) {}
}

/// Everything a client may want to know about the loaded model (`GET /model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "architecture": "resnet18", "num_classes": 3, "labels": ["normal", "pneumonia", "other"],
    "labels_source": "labels.txt", "layers": ["layer1", "layer2", "layer3", "layer4",
    "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0",
    "layer4.1"], "default_layer": "layer4", "input_size": 224,
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "weights": "demo-random"}))]
pub struct ModelDescription {
    /// torchvision's name of the architecture (`resnet50`, `resnext50_32x4d`, ...).
    pub architecture: String,
    pub num_classes: usize,
    /// Class names, in the classifier's order.
    pub labels: Vec<String>,
    /// Where the labels came from: a file, `imagenet`, or `generated` (`class N`).
    pub labels_source: String,
    /// The layers `layer` may name: each stage (its last block), then every block.
    #[schema(value_type = Vec<String>)]
    pub layers: Vec<Layer>,
    /// The layer explained when a request does not say.
    #[schema(value_type = String)]
    pub default_layer: Layer,
    /// Side of the square model input, in pixels.
    pub input_size: u32,
    /// The per-channel (RGB) normalisation of the input.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// SHA-256 of the weights file, or "demo-random" for seeded random demo weights.
    pub weights: String,
}

impl ModelDescription {
    pub fn is_demo(&self) -> bool {
        self.weights == weights::DEMO_ID
    }

    pub fn label(&self, class: usize) -> &str {
        self.labels.get(class).map_or("unknown", String::as_str)
    }

    pub fn input_spec(&self) -> InputSpec {
        InputSpec {
            size: self.input_size,
            mean: self.mean,
            std: self.std,
        }
    }

    /// What request options are checked against.
    pub fn limits(&self) -> Limits<'_> {
        Limits {
            classes: self.num_classes,
            layers: &self.layers,
        }
    }

    /// How an answer names the model and the layer it explained.
    pub fn info(&self, layer: Layer) -> ModelInfo {
        ModelInfo {
            name: self.architecture.clone(),
            target_layer: layer.to_string(),
            weights: self.weights.clone(),
        }
    }
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
    spec: &InputSpec,
    resize: ResizeMode,
) -> Result<Prepared, DecodeError> {
    let start = Instant::now();
    let picture = preprocess::decode(bytes, limits)?;
    let input = preprocess::prepare(&picture, spec, resize);
    Ok(Prepared {
        picture,
        input,
        decode_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// The loaded network.
pub struct Engine {
    model: ResNet,
    description: ModelDescription,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("demo weights: {0}")]
    Demo(ModelError),
    #[error(transparent)]
    Labels(#[from] LabelsError),
    #[error(
        "no weights file at {0}: run `gradcam-serve fetch-weights` to download the official \
         ones, point --weights at a safetensors file, or pass --demo-weights to run with \
         random weights"
    )]
    NoWeights(PathBuf),
    #[error("{0}")]
    Setting(String),
}

impl Engine {
    /// Loads the weights the config names (or demo weights) and its labels, and checks the
    /// default layer against the model.
    pub fn load(config: &ModelConfig, default_layer: Layer) -> Result<Self, LoadError> {
        if config.threads > 0 {
            tch::set_num_threads(config.threads as i32);
        }
        let architecture = config.architecture.as_deref();
        let (mut model, weights_id) = if config.weights.exists() {
            weights::load_file(&config.weights, architecture)?
        } else if config.demo_weights {
            let file = weights::demo(architecture).map_err(LoadError::Demo)?;
            let model = ResNet::from_tensors(file.tensors, None).map_err(LoadError::Demo)?;
            (model, file.id)
        } else {
            return Err(LoadError::NoWeights(config.weights.clone()));
        };
        let arch = model.architecture().clone();
        let labels = Labels::load(config.labels.as_deref(), arch.num_classes)?;
        let layers = arch.layers();
        if !layers.contains(&default_layer) {
            return Err(LoadError::Setting(format!(
                "explain.layer = {default_layer}: a {} has no such layer",
                arch.name()
            )));
        }
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
        let description = ModelDescription {
            architecture: arch.name(),
            num_classes: arch.num_classes,
            labels_source: labels.source.clone(),
            labels: labels.names().to_vec(),
            layers,
            default_layer,
            input_size: config.input_size,
            mean: config.mean,
            std: config.std,
            weights: weights_id,
        };
        Ok(Self { model, description })
    }

    pub fn description(&self) -> &ModelDescription {
        &self.description
    }

    /// A plain prediction, without explanation (to compare costs).
    pub fn predict(&self, inputs: &[&ModelInput]) -> Result<Vec<f32>, GradCamError> {
        gradcam::predict(&self.model, &batch_tensor(inputs))
    }
}

impl Explainer for Engine {
    fn explain(
        &self,
        inputs: &[&ModelInput],
        asks: &[Ask],
    ) -> Result<(Vec<RawExplanation>, PassTimings), GradCamError> {
        gradcam::explain(&self.model, &batch_tensor(inputs), asks)
    }

    fn explain_cam(
        &self,
        input: &ModelInput,
        ask: &CamAsk,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<(CamExplanation, PassTimings), GradCamError> {
        cam::explain(&self.model, &batch_tensor(&[input]), ask, abandoned)
    }

    fn warm_up(&self) {
        let size = self.description.input_size;
        let blank = ModelInput {
            chw: vec![0.0; (3 * size * size) as usize],
            size,
            region: preprocess::Region {
                x: 0,
                y: 0,
                width: size,
                height: size,
            },
        };
        let ask = Ask {
            target: None,
            layer: self.description.default_layer,
        };
        if let Err(e) = self.explain(&[&blank], &[ask]) {
            tracing::error!("warm-up pass failed: {e}");
        }
    }
}

/// Hands the heap's free memory back to the system. The plain weights freed after the
/// reorder (about 90 MB for a ResNet-50, in many blocks under the heap's top) would
/// otherwise stay resident: 336 MB after loading instead of 227 MB.
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

/// Turns the network's answer into the explanation (classes with labels, the maps as
/// rows) and, when asked for, the overlay PNG at the picture's own size (of the first
/// target; with several, each target's is in `maps`). The PNG comes back as bytes: the JSON
/// answer embeds it with [`Explanation::to_json_with_overlay`], the CLI and `Accept:
/// image/png` send it as it is.
pub fn finish(
    picture: &RgbImage,
    region: Region,
    raw: &CamExplanation,
    options: &Options,
    model: &ModelDescription,
    mut timing: Timing,
) -> (Explanation, Option<Vec<u8>>) {
    let start = Instant::now();
    let score = |i: usize| ClassScore {
        class_index: i,
        label: model.label(i).to_string(),
        score: raw.probabilities[i],
    };
    let top = gradcam::top_k(&raw.probabilities, options.top_k.max(1));
    let draw = |m: &cam::CamMap| {
        options.overlay.then(|| {
            let image = render::overlay(picture, &m.map, m.width, m.height, region, options.alpha);
            render::encode_png(&image)
        })
    };
    let saliency = |m: &cam::CamMap| Saliency {
        width: m.width,
        height: m.height,
        data: m.map.chunks(m.width.max(1)).map(<[f32]>::to_vec).collect(),
        scaled: m.scaled,
    };
    let first = &raw.maps[0];
    let overlay_png = draw(first);
    let maps = (raw.maps.len() > 1).then(|| {
        raw.maps
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let png = if i == 0 { overlay_png.clone() } else { draw(m) };
                TargetMap {
                    target: score(m.target),
                    saliency: saliency(m),
                    overlay_png: png.map(|p| base64_simd::STANDARD.encode_to_string(p)),
                }
            })
            .collect()
    });
    timing.render = start.elapsed().as_secs_f64() * 1e3;
    let layers: Vec<String> = raw.layers.iter().map(ToString::to_string).collect();
    let mut info = model.info(raw.layers[0]);
    info.target_layer = layers.join(",");
    let explanation = Explanation {
        prediction: score(top[0].0),
        top_k: top.iter().map(|&(i, _)| score(i)).collect(),
        target: score(first.target),
        method: raw.method.to_string(),
        saliency: saliency(first),
        maps,
        image: ImageSize {
            width: picture.width(),
            height: picture.height(),
        },
        model: info,
        timing_ms: timing,
        overlay_png: None,
    };
    (explanation, overlay_png)
}

/// Runs the network for one prepared input: plain Grad-CAM through the batched path
/// ([`Explainer::explain`]), anything else through [`Explainer::explain_cam`].
pub fn run_network(
    explainer: &dyn Explainer,
    input: &ModelInput,
    options: &Options,
    abandoned: &dyn Fn() -> bool,
) -> Result<(CamExplanation, PassTimings), GradCamError> {
    if options.cam.is_plain_gradcam() {
        let ask = Ask {
            target: options.target,
            layer: options.layer,
        };
        let (mut raw, passes) = explainer.explain(&[input], &[ask])?;
        Ok((raw.remove(0).into(), passes))
    } else {
        explainer.explain_cam(input, &options.cam, abandoned)
    }
}

/// The whole pipeline in a row on this thread, for the CLI and the benchmark: the
/// explanation (timing filled in, total included) and the overlay PNG when asked for.
pub fn explain_now(
    explainer: &dyn Explainer,
    model: &ModelDescription,
    bytes: &[u8],
    limits: DecodeLimits,
    options: &Options,
) -> anyhow::Result<(Explanation, Option<Vec<u8>>)> {
    let started = Instant::now();
    let prepared = prepare(bytes, limits, &model.input_spec(), options.resize)?;
    let (raw, passes) = run_network(explainer, &prepared.input, options, &|| false)?;
    let timing = Timing {
        decode: prepared.decode_ms,
        forward: passes.forward_ms,
        backward: passes.backward_ms,
        ..Timing::default()
    };
    let (mut explanation, png) = finish(
        &prepared.picture,
        prepared.input.region,
        &raw,
        options,
        model,
        timing,
    );
    explanation.timing_ms.total = started.elapsed().as_secs_f64() * 1e3;
    Ok((explanation, png))
}

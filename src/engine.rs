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
use crate::precision::{CpuFeatures, Precision};
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
    /// The picture: the image, or a JPEG decoded smaller (see `prepare_fitted`).
    pub picture: RgbImage,
    pub input: ModelInput,
    pub decode_ms: f64,
    /// The image's own size (EXIF orientation applied), whatever the picture's.
    pub image: ImageSize,
}

/// Decodes the whole image and makes the model's input.
pub fn prepare(
    bytes: &[u8],
    limits: DecodeLimits,
    spec: &InputSpec,
    resize: ResizeMode,
) -> Result<Prepared, DecodeError> {
    prepare_with(bytes, limits, spec, resize, None)
}

/// [`prepare`] for an overlay of at most `overlay_max_side` pixels: a large JPEG is decoded
/// at the smallest DCT scale that still covers that overlay and the model's input
/// ([`preprocess::decode_fitted`]), and the model's input is made from that picture.
pub fn prepare_fitted(
    bytes: &[u8],
    limits: DecodeLimits,
    spec: &InputSpec,
    resize: ResizeMode,
    overlay_max_side: u32,
) -> Result<Prepared, DecodeError> {
    let fit = preprocess::Fit::for_model(spec, overlay_max_side);
    prepare_with(bytes, limits, spec, resize, Some(fit))
}

fn prepare_with(
    bytes: &[u8],
    limits: DecodeLimits,
    spec: &InputSpec,
    resize: ResizeMode,
    fit: Option<preprocess::Fit>,
) -> Result<Prepared, DecodeError> {
    let start = Instant::now();
    let decoded = preprocess::decode_fitted(bytes, limits, fit)?;
    let input = preprocess::prepare(&decoded.picture, spec, resize);
    Ok(Prepared {
        picture: decoded.picture,
        input,
        decode_ms: start.elapsed().as_secs_f64() * 1e3,
        image: ImageSize {
            width: decoded.width,
            height: decoded.height,
        },
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
    ///
    /// The load's tensor work (batch-norm folding, the oneDNN reorder) runs on a thread of
    /// its own that ends with it. libgomp gives every thread that starts a parallel region a
    /// pool of OpenMP threads that lives as long as that thread; a pool left on the
    /// caller (the server's main thread) puts more OpenMP threads in the process than cores,
    /// and libgomp then stops spinning between parallel regions: the model worker's pool
    /// sleeps and is woken some 355 times per ResNet-50 pass, which cost +6 ms per
    /// explanation back to back and +20 ms on an idle server (README, an idle server).
    pub fn load(config: &ModelConfig, default_layer: Layer) -> Result<Self, LoadError> {
        Self::load_on(config, default_layer, CpuFeatures::detect())
    }

    /// [`Engine::load`] as if on a CPU with `cpu`'s instruction sets (which decide whether
    /// `precision = "bf16"` is allowed): tests check the refusal on any machine with it.
    pub fn load_on(
        config: &ModelConfig,
        default_layer: Layer,
        cpu: CpuFeatures,
    ) -> Result<Self, LoadError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("model-load".into())
                .spawn_scoped(scope, || Self::load_here(config, default_layer, cpu))
                .expect("spawning the model loading thread")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn load_here(
        config: &ModelConfig,
        default_layer: Layer,
        cpu: CpuFeatures,
    ) -> Result<Self, LoadError> {
        config.precision.check(cpu).map_err(LoadError::Setting)?;
        let bf16 = config.precision == Precision::Bf16;
        if bf16 && !(config.fold_batch_norm && config.onednn_weights) {
            return Err(LoadError::Setting(
                "model.precision = \"bf16\" runs on oneDNN's fused convolutions: it needs \
                 fold_batch_norm = true and onednn_weights = true"
                    .into(),
            ));
        }
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
        if config.onednn_weights {
            // The fused convolutions are the fast path's: on folded weights only.
            let onednn = model
                .use_onednn_weights_in(config.input_size as i64, config.precision)
                .and_then(|()| match config.fold_batch_norm {
                    true => model.use_fused_convolutions(),
                    false => Ok(()),
                });
            match onednn {
                Err(e) if bf16 => {
                    return Err(LoadError::Setting(format!(
                        "model.precision = \"bf16\": libtorch's oneDNN convolutions refused \
                         it: {e}"
                    )))
                }
                // Unfused oneDNN convolutions, or plain weights when the reorder failed.
                Err(e) => tracing::warn!("running without fused oneDNN convolutions: {e}"),
                Ok(()) => {}
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
/// rows) and, when asked for, the overlay image of the first target (at the image's size,
/// or scaled down to `options.overlay_max_side`) in `options.overlay_format`; with several
/// targets, each target's map and overlay are in `maps` too. The image comes back as bytes:
/// the JSON answer embeds it with [`Explanation::to_json_with_overlay`], the CLI and
/// `Accept: image/...` send it as it is. `image` is the uploaded image's own size, of which
/// `picture` may be a smaller copy.
pub fn finish(
    picture: &RgbImage,
    image: ImageSize,
    region: Region,
    raw: &CamExplanation,
    options: &Options,
    model: &ModelDescription,
    mut timing: Timing,
) -> (Explanation, Option<render::EncodedOverlay>) {
    let start = Instant::now();
    let score = |i: usize| ClassScore {
        class_index: i,
        label: model.label(i).to_string(),
        score: raw.probabilities[i],
    };
    let top = gradcam::top_k(&raw.probabilities, options.top_k.max(1));
    let draw = |m: &cam::CamMap| {
        render::render(
            picture,
            (image.width, image.height),
            region,
            (&m.map, m.width, m.height),
            options,
        )
    };
    let saliency = |m: &cam::CamMap| Saliency {
        width: m.width,
        height: m.height,
        data: m.map.chunks(m.width.max(1)).map(<[f32]>::to_vec).collect(),
        scaled: m.scaled,
    };
    let first = &raw.maps[0];
    let overlay = draw(first);
    let maps = (raw.maps.len() > 1).then(|| {
        raw.maps
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let encoded = if i == 0 { overlay.clone() } else { draw(m) };
                TargetMap::new(score(m.target), saliency(m), encoded.as_ref())
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
        image,
        model: info,
        timing_ms: timing,
        overlay_image: overlay.as_ref().map(render::EncodedOverlay::describe),
        overlay_png: None,
        overlay_jpeg: None,
        overlay_webp: None,
    };
    (explanation, overlay)
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
/// explanation (timing filled in, total included) and the overlay image when asked for.
pub fn explain_now(
    explainer: &dyn Explainer,
    model: &ModelDescription,
    bytes: &[u8],
    limits: DecodeLimits,
    options: &Options,
) -> anyhow::Result<(Explanation, Option<render::EncodedOverlay>)> {
    let started = Instant::now();
    let prepared = prepare_fitted(
        bytes,
        limits,
        &model.input_spec(),
        options.resize,
        options.overlay_max_side,
    )?;
    let (raw, passes) = run_network(explainer, &prepared.input, options, &|| false)?;
    let timing = Timing {
        decode: prepared.decode_ms,
        forward: passes.forward_ms,
        backward: passes.backward_ms,
        ..Timing::default()
    };
    let (mut explanation, png) = finish(
        &prepared.picture,
        prepared.image,
        prepared.input.region,
        &raw,
        options,
        model,
        timing,
    );
    explanation.timing_ms.total = started.elapsed().as_secs_f64() * 1e3;
    Ok((explanation, png))
}

//! From the `[model]` settings to a loaded [`Engine`]: the file told apart by its content
//! (a ResNet-family safetensors state dict, or a TorchScript file exported by
//! `gradcam_export`), the labels, the input the model takes, and the checks that refuse a
//! file or a setting the server cannot serve with a message that says what to do.

use std::path::PathBuf;

use super::description::{Backend, ModelDescription};
use super::Engine;
use crate::cam::{Method, MethodInfo};
use crate::config::ModelConfig;
use crate::faithfulness::Score;
use crate::labels::{Labels, LabelsError};
use crate::model::file::{self, FileKind};
use crate::model::resnet::{Architecture, ModelError, ResNet};
use crate::model::torchscript::{TorchScriptError, TorchScriptNetwork};
use crate::model::Network;
use crate::precision::{CpuFeatures, Precision};
use crate::preprocess::{InputSpec, MEAN, STD};
use crate::weights::{self, WeightsError};

/// What a ResNet takes when the settings do not say: 224 pixels, ImageNet's normalisation.
const RESNET_INPUT: InputSpec = InputSpec {
    size: 224,
    mean: MEAN,
    std: STD,
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    TorchScript(#[from] TorchScriptError),
    #[error("demo weights: {0}")]
    Demo(ModelError),
    #[error(transparent)]
    Labels(#[from] LabelsError),
    #[error(
        "no weights file at {0}: run `gradcam-serve fetch-weights` to download the official \
         ones, point --weights at a safetensors file or an exported model, or pass \
         --demo-weights to run with random weights"
    )]
    NoWeights(PathBuf),
    #[error("{path}: cannot read it: {error}")]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} is a zip archive that cannot be read ({reason}): is it cut short, by an \
         interrupted copy or download?"
    )]
    BrokenArchive { path: PathBuf, reason: String },
    #[error(
        "{0} is neither a safetensors state dict of a ResNet-family model nor a TorchScript \
         file exported by gradcam_export (python -m gradcam_export; docs/model-format.md)"
    )]
    UnknownFile(PathBuf),
    #[error("{0}")]
    Setting(String),
}

impl Engine {
    /// Loads the model file the config names (or demo weights) and its labels, and checks
    /// the default layer (None: the model's own) against it.
    ///
    /// The load's tensor work (batch-norm folding, the oneDNN reorder) runs on a thread of
    /// its own that ends with it. libgomp gives every thread that starts a parallel region a
    /// pool of OpenMP threads that lives as long as that thread; a pool left on the
    /// caller (the server's main thread) puts more OpenMP threads in the process than cores,
    /// and libgomp then stops spinning between parallel regions: the model worker's pool
    /// sleeps and is woken some 355 times per ResNet-50 pass, which cost +6 ms per
    /// explanation back to back and +20 ms on an idle server (README, an idle server).
    pub fn load(config: &ModelConfig, default_layer: Option<&str>) -> Result<Self, LoadError> {
        Self::load_on(config, default_layer, CpuFeatures::detect())
    }

    /// [`Engine::load`] as if on a CPU with `cpu`'s instruction sets (which decide whether
    /// `precision = "bf16"` is allowed): tests check the refusal on any machine with it.
    pub fn load_on(
        config: &ModelConfig,
        default_layer: Option<&str>,
        cpu: CpuFeatures,
    ) -> Result<Self, LoadError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("model-load".into())
                .spawn_scoped(scope, || load_here(config, default_layer, cpu))
                .expect("spawning the model loading thread")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

fn load_here(
    config: &ModelConfig,
    default_layer: Option<&str>,
    cpu: CpuFeatures,
) -> Result<Engine, LoadError> {
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    let path = &config.weights;
    let kind = if path.exists() {
        file::detect(path).map_err(|error| LoadError::Unreadable {
            path: path.clone(),
            error,
        })?
    } else if config.demo_weights {
        FileKind::Safetensors
    } else {
        return Err(LoadError::NoWeights(path.clone()));
    };
    let (network, description) = match kind {
        FileKind::Safetensors => native(config, cpu)?,
        FileKind::TorchScript => exported(config)?,
        FileKind::PyTorchPickle | FileKind::LegacyPickle => {
            return Err(WeightsError::PickleCheckpoint { path: path.clone() }.into())
        }
        FileKind::BrokenArchive(reason) => {
            return Err(LoadError::BrokenArchive {
                path: path.clone(),
                reason,
            })
        }
        FileKind::Unknown => return Err(LoadError::UnknownFile(path.clone())),
    };
    let mut description = description;
    if let Some(layer) = default_layer {
        if !network.layers().iter().any(|l| l == layer) {
            return Err(LoadError::Setting(format!(
                "explain.layer = {layer}: {} has no such layer (it has {})",
                description.architecture,
                network.layers().join(", ")
            )));
        }
        description.default_layer = layer.to_string();
    }
    Ok(Engine {
        network,
        description,
    })
}

/// The labels: the settings' file, else the model file's own, else ImageNet's or generated.
fn labels(
    config: &ModelConfig,
    embedded: Option<Vec<String>>,
    classes: usize,
) -> Result<Labels, LabelsError> {
    match (&config.labels, embedded) {
        (Some(file), _) => Labels::load(Some(file), classes),
        (None, Some(names)) => Ok(Labels::embedded(names)),
        (None, None) => Ok(Labels::default_for(classes)),
    }
}

fn describe(
    network: &dyn Network,
    backend: Backend,
    name: String,
    labels: Labels,
    input: InputSpec,
    weights: String,
) -> ModelDescription {
    ModelDescription {
        architecture: name,
        backend,
        num_classes: network.num_classes(),
        labels_source: labels.source.clone(),
        labels: labels.names().to_vec(),
        layers: network.layers().to_vec(),
        default_layer: network.default_layer().to_string(),
        input_size: input.size,
        mean: input.mean,
        std: input.std,
        weights,
        methods: methods(network),
        scores: Score::ALL.map(Score::info).to_vec(),
    }
}

/// The methods this network can run here: the eigen ones (and `eigen_smooth`) need the
/// system's LAPACK, AblationCAM only the layers whose channels it can find, FullGrad a
/// network that reaches its biases, the guided methods one that can guide its ReLUs.
fn methods(network: &dyn Network) -> Vec<MethodInfo> {
    let lapack = crate::cam::lapack::available().is_ok();
    let ablatable: Vec<String> = (0..network.layers().len())
        .filter(|&l| network.channel_axis(l).is_some())
        .map(|l| network.layers()[l].clone())
        .collect();
    Method::ALL
        .into_iter()
        .filter(|m| lapack || !matches!(m, Method::EigenCam | Method::EigenGradCam))
        .filter_map(|m| match m {
            Method::AblationCam if ablatable.is_empty() => None,
            Method::FullGrad if !network.reaches_biases() => None,
            Method::GuidedBackprop | Method::GuidedGradCam if !network.reaches_relus() => None,
            Method::AblationCam if ablatable.len() < network.layers().len() => {
                Some(m.info(Some(ablatable.clone())))
            }
            _ => Some(m.info(None)),
        })
        .map(|mut info| {
            // eigen_smooth is an SVD too.
            info.options.retain(|o| lapack || o != "eigen_smooth");
            info
        })
        .collect()
}

type Loaded = (Box<dyn Network>, ModelDescription);

/// A ResNet-family state dict (or demo weights), with its fast paths as configured.
fn native(config: &ModelConfig, cpu: CpuFeatures) -> Result<Loaded, LoadError> {
    config.precision.check(cpu).map_err(LoadError::Setting)?;
    let bf16 = config.precision == Precision::Bf16;
    if bf16 && !(config.fold_batch_norm && config.onednn_weights) {
        return Err(LoadError::Setting(
            "model.precision = \"bf16\" runs on oneDNN's fused convolutions: it needs \
             fold_batch_norm = true and onednn_weights = true"
                .into(),
        ));
    }
    if let Some(name) = &config.architecture {
        Architecture::named(name, 1)
            .map_err(|e| LoadError::Setting(format!("model.architecture: {e}")))?;
    }
    let architecture = config.architecture.as_deref();
    let (mut model, weights_id) = if config.weights.exists() {
        weights::load_file(&config.weights, architecture)?
    } else {
        let file = weights::demo(architecture).map_err(LoadError::Demo)?;
        let model = ResNet::from_tensors(file.tensors, None).map_err(LoadError::Demo)?;
        (model, file.id)
    };
    let input = config.input_spec_or(RESNET_INPUT);
    let labels = labels(config, None, model.num_classes())?;
    if config.fold_batch_norm {
        model.fold_batch_norm();
    }
    if config.onednn_weights {
        // The fused convolutions are the fast path's: on folded weights only.
        let onednn = model
            .use_onednn_weights_in(input.size as i64, config.precision)
            .and_then(|()| match config.fold_batch_norm {
                true => model.use_fused_convolutions(),
                false => Ok(()),
            });
        match onednn {
            Err(e) if bf16 => {
                return Err(LoadError::Setting(format!(
                    "model.precision = \"bf16\": libtorch's oneDNN convolutions refused it: {e}"
                )))
            }
            // Unfused oneDNN convolutions, or plain weights when the reorder failed.
            Err(e) => tracing::warn!("running without fused oneDNN convolutions: {e}"),
            Ok(()) => {}
        }
        release_freed_memory();
    }
    let name = model.architecture().name();
    let description = describe(&model, Backend::Native, name, labels, input, weights_id);
    Ok((Box::new(model), description))
}

/// A TorchScript file written by gradcam_export: it carries its input size, normalisation,
/// taps and labels, which settings may only repeat.
fn exported(config: &ModelConfig) -> Result<Loaded, LoadError> {
    let path = &config.weights;
    if config.precision == Precision::Bf16 {
        return Err(LoadError::Setting(format!(
            "model.precision = \"bf16\" is for the native ResNet path; {} is an exported model, \
             which runs in fp32: use precision = \"fp32\"",
            path.display()
        )));
    }
    let network = TorchScriptNetwork::load(path)?;
    let m = network.metadata().clone();
    if let Some(wanted) = &config.architecture {
        let found = m.architecture.as_deref().unwrap_or(&m.name);
        if wanted != found && *wanted != m.name {
            return Err(LoadError::Setting(format!(
                "model.architecture = {wanted}, but {} holds {found}",
                path.display()
            )));
        }
    }
    let own = InputSpec {
        size: m.input_size,
        mean: m.mean,
        std: m.std,
    };
    let input = config.input_spec_or(own);
    if input != own {
        return Err(LoadError::Setting(format!(
            "{} was exported for {}x{} inputs with mean {:?} and std {:?}; the settings ask \
             for {}x{}, {:?}, {:?}: the file carries its input, so leave model.input_size, \
             mean and std unset (or export again with the values you want)",
            path.display(),
            own.size,
            own.size,
            own.mean,
            own.std,
            input.size,
            input.size,
            input.mean,
            input.std
        )));
    }
    let labels = labels(config, m.labels.clone(), m.num_classes)?;
    let digest = weights::sha256_file(path).map_err(|error| LoadError::Unreadable {
        path: path.clone(),
        error,
    })?;
    let description = describe(&network, Backend::Torchscript, m.name, labels, own, digest);
    Ok((Box::new(network), description))
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

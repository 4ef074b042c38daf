//! Settings, in layers: built-in defaults, then `config.toml`, then `GRADCAM_*` environment
//! variables, then command-line flags (the last two through clap, see `cli.rs`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::precision::Precision;
use crate::preprocess::{InputSpec, ResizeMode, MEAN, STD};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub server: ServerConfig,
    pub explain: ExplainDefaults,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The model: a safetensors file with a torchvision ResNet-family state dict (the
    /// native path), or a TorchScript file exported by `python -m gradcam_export` (any
    /// classifier); told apart by content. A relative path is taken from the config file's
    /// folder.
    pub weights: PathBuf,
    /// The architecture the model must be (`resnet18`, `efficientnet_b0`, ...); None:
    /// whatever the file holds. Also the architecture of demo weights.
    pub architecture: Option<String>,
    /// Class names, one per line or a JSON array of strings; None: ImageNet's for 1000
    /// classes, else `class N`. A relative path is taken from the config file's folder.
    pub labels: Option<PathBuf>,
    /// Run with seeded random weights when the weights file is missing (labels are then
    /// meaningless, and every answer says `"weights": "demo-random"`).
    pub demo_weights: bool,
    /// Side of the square model input, in pixels (a multiple of 32); None: the exported
    /// file's, or 224 for a ResNet.
    pub input_size: Option<u32>,
    /// Per-channel (RGB) mean and standard deviation the model was trained with; None: the
    /// exported file's, or ImageNet's for a ResNet.
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// `stretch` (whole image to the input size) or `crop` (torchvision's resize + centre crop).
    pub resize: ResizeMode,
    /// Fold batch norm into a copy of the convolutions at load time for the fast path
    /// (predictions, layer4); earlier layers always run unfolded, bit-exact.
    pub fold_batch_norm: bool,
    /// Reorder the convolution weights once into oneDNN's own layout and keep the fast
    /// path's activations in it (about 0.9 of the time).
    pub onednn_weights: bool,
    /// The trunk's number format: `fp32`, or `bf16` (needs AVX-512 BF16 or AMX, refused at
    /// start elsewhere; needs `fold_batch_norm` and `onednn_weights`).
    pub precision: Precision,
    /// libtorch intra-op threads per worker; 0 leaves libtorch's default (one per core).
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Loopback unless you mean to expose it.
    pub bind: String,
    /// Model worker threads, each with its own copy of the model.
    pub workers: usize,
    /// Explanations admitted at once (queued plus running); beyond it requests get 503
    /// with Retry-After at once instead of waiting without bound.
    pub queue_capacity: usize,
    /// Most images one worker puts through the network together.
    pub max_batch: usize,
    /// How long a worker waits for more requests to fill a batch, in milliseconds; it waits
    /// only while other admitted requests are still being decoded (a lone request starts at
    /// once).
    pub batch_wait_ms: u64,
    /// Largest accepted request body, in bytes; larger uploads get 413 (see `linger_bytes`).
    pub max_upload_bytes: usize,
    /// Largest accepted image, in pixels (width x height), checked before decoding.
    pub max_pixels: u64,
    /// Longest time one request may take, in seconds, upload included; then 504 (408 while
    /// the upload is still arriving).
    pub request_timeout_secs: u64,
    /// Lingering close: after the 413 for an upload over `max_upload_bytes`, the server
    /// reads and throws away the rest of its body, up to this many bytes of body in all,
    /// so that a client that sends everything before it reads gets the 413 and not a
    /// reset. An upload announced larger is answered and closed at once. 0: no lingering.
    pub linger_bytes: u64,
    /// Lingering close: the longest the server goes on reading such a body after the
    /// answer, in seconds; then it closes. 0: no lingering.
    pub linger_secs: u64,
    /// Origins allowed by CORS; empty turns CORS off, `["*"]` allows any.
    pub cors_origins: Vec<String>,
    /// Bearer tokens accepted; empty turns authentication off.
    pub api_keys: Vec<String>,
    /// Whether /metrics needs a token when api_keys is set.
    pub protect_metrics: bool,
    /// Whether /docs and /openapi.json need a token when api_keys is set.
    pub protect_docs: bool,
    /// Serve the page a person uses at `GET /` (pick a picture, see its heat map);
    /// false: `/` is 404 like any unknown path (for a browser: a program that does not
    /// accept HTML gets KServe v1's liveness either way).
    pub ui: bool,
    /// The model's name in the KServe v1 and Open Inference Protocol v2 paths
    /// (`/v2/models/{name}/infer`); None: GET /model's `architecture`.
    pub model_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExplainDefaults {
    /// Classes listed in `top_k` when a request does not say.
    pub top_k: usize,
    /// Heat-map opacity in the overlay when a request does not say.
    pub alpha: f32,
    /// The layer explained when a request does not say; None: the model's default
    /// (`layer4` for a ResNet, the exported file's default tap).
    pub layer: Option<String>,
    /// Longest side of the overlay image when a request does not say (64..=16383).
    pub overlay_max_side: u32,
    /// The CAM method used when a request does not say (`gradcam`, `hirescam`, ...).
    pub method: crate::cam::Method,
    /// Allow `method=scorecam`: one forward pass of the whole network per channel of the
    /// layer (2048 at a ResNet-50's layer4, about a minute on two cores). Off: refused
    /// with 422. Always bounded by `server.request_timeout_secs`.
    pub allow_scorecam: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            weights: PathBuf::from("weights/resnet50.safetensors"),
            architecture: None,
            labels: None,
            demo_weights: false,
            input_size: None,
            mean: None,
            std: None,
            resize: ResizeMode::Stretch,
            fold_batch_norm: true,
            onednn_weights: true,
            precision: Precision::Fp32,
            threads: 0,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 1,
            queue_capacity: 32,
            max_batch: 4,
            batch_wait_ms: 2,
            max_upload_bytes: 20 * 1024 * 1024,
            max_pixels: crate::preprocess::DecodeLimits::default().max_pixels,
            request_timeout_secs: 30,
            linger_bytes: 256 * 1024 * 1024,
            linger_secs: 30,
            cors_origins: Vec::new(),
            api_keys: Vec::new(),
            protect_metrics: false,
            protect_docs: false,
            ui: true,
            model_name: None,
        }
    }
}

impl Default for ExplainDefaults {
    fn default() -> Self {
        Self {
            top_k: 5,
            alpha: 0.5,
            layer: None,
            // A web page shows an overlay at most about 1000 CSS pixels wide, and 960 is
            // exactly half or a quarter of the common large sizes (1920x1080, 3840x2160) and
            // near a quarter of 12 MP photos (4032x3024 decodes at 1008x756): those JPEGs are
            // decoded at that fraction in the DCT domain. Its PNG stays near 1 MB.
            overlay_max_side: 960,
            method: crate::cam::Method::GradCam,
            allow_scorecam: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read it")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: invalid TOML or setting")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`; when `required` is false a missing file means the defaults.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.model.weights.is_relative() {
            config.model.weights = base.join(&config.model.weights);
        }
        if let Some(labels) = config.model.labels.as_mut().filter(|l| l.is_relative()) {
            *labels = base.join(&*labels);
        }
        Ok(config)
    }

    /// Checks what serde cannot: ranges and relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let m = &self.model;
        if let Some(size) = m.input_size {
            if !(32..=1024).contains(&size) || !size.is_multiple_of(32) {
                return bad(format!(
                    "model.input_size = {size} (a multiple of 32 in 32..=1024)"
                ));
            }
        }
        let (mean, std) = (m.mean.unwrap_or(MEAN), m.std.unwrap_or(STD));
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || mean.iter().any(|v| !v.is_finite()) {
            return bad(format!(
                "model.mean = {mean:?}, model.std = {std:?} (finite numbers, std above 0)"
            ));
        }
        let s = &self.server;
        if s.workers == 0 || s.queue_capacity == 0 || s.max_batch == 0 {
            return bad("server.workers, queue_capacity and max_batch must be at least 1".into());
        }
        if s.request_timeout_secs == 0 {
            return bad("server.request_timeout_secs must be at least 1".into());
        }
        if s.max_upload_bytes < 1024 {
            return bad(format!(
                "server.max_upload_bytes = {} (at least 1024)",
                s.max_upload_bytes
            ));
        }
        if s.max_pixels == 0 {
            return bad("server.max_pixels must be at least 1".into());
        }
        if let Some(name) = &s.model_name {
            let fits = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if name.is_empty() || name.len() > 128 || !name.chars().all(fits) {
                return bad(format!(
                    "server.model_name = {name:?} (1 to 128 letters, digits, `-`, `_` or `.`: \
                     it is a path segment of the protocols' URLs)"
                ));
            }
        }
        if s.api_keys.iter().any(|k| k.trim().is_empty()) {
            return bad("server.api_keys holds an empty key".into());
        }
        let e = &self.explain;
        // Its upper end, the class count, is checked once the model is loaded.
        if e.top_k == 0 {
            return bad("explain.top_k must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&e.alpha) {
            return bad(format!("explain.alpha = {} (0..=1)", e.alpha));
        }
        if !crate::render::OVERLAY_MAX_SIDE.contains(&e.overlay_max_side) {
            return bad(format!(
                "explain.overlay_max_side = {} (64..=16383)",
                e.overlay_max_side
            ));
        }
        Ok(())
    }
}

impl ModelConfig {
    /// The input the settings ask for, where they say; the model's own elsewhere.
    pub fn input_spec_or(&self, model: InputSpec) -> InputSpec {
        InputSpec {
            size: self.input_size.unwrap_or(model.size),
            mean: self.mean.unwrap_or(model.mean),
            std: self.std.unwrap_or(model.std),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_toml_is_the_defaults() {
        // config.toml documents every setting with its default value.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let mut shipped = Config::load(&path, true).unwrap();
        shipped.model.weights = ModelConfig::default().weights;
        assert_eq!(shipped, Config::default());
    }

    #[test]
    fn relative_weights_are_taken_from_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[model]\nweights = \"w/x.safetensors\"\n").unwrap();
        let c = Config::load(&path, true).unwrap();
        assert_eq!(c.model.weights, dir.path().join("w/x.safetensors"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nbnid = \"x\"\n").unwrap();
        let err = format!(
            "{:#}",
            anyhow::Error::from(Config::load(&path, true).unwrap_err())
        );
        assert!(err.contains("bnid"), "{err}");
        let mut c = Config::default();
        c.model.input_size = Some(100);
        assert!(c.validate().unwrap_err().to_string().contains("input_size"));
    }

    #[test]
    fn missing_optional_file_means_defaults() {
        let c = Config::load(Path::new("/nonexistent/config.toml"), false).unwrap();
        assert_eq!(c, Config::default());
        assert!(Config::load(Path::new("/nonexistent/config.toml"), true).is_err());
    }
}

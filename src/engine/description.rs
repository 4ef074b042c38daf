//! What a client may know about the loaded model (`GET /model`, `gradcam-serve model`),
//! the same whichever network serves it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::cam::{Method, MethodInfo};
use crate::explanation::ModelInfo;
use crate::faithfulness::ScoreInfo;
use crate::options::Limits;
use crate::preprocess::InputSpec;
use crate::weights;

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A torchvision ResNet-family state dict, rebuilt in Rust with its fast paths.
    Native,
    /// A TorchScript file exported by `python -m gradcam_export`.
    Torchscript,
}

/// Everything a client may want to know about the loaded model (`GET /model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "architecture": "resnet18", "backend": "native", "num_classes": 3,
    "labels": ["normal", "pneumonia", "other"], "labels_source": "labels.txt",
    "layers": ["layer1", "layer2", "layer3", "layer4", "layer1.0", "layer1.1", "layer2.0",
    "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"], "default_layer": "layer4",
    "input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "weights": "demo-random", "methods": [{"name": "gradcam", "reference": "GradCAM",
    "takes_layer": true, "channels": 1, "gradient": true,
    "cost": "one forward and one backward pass per target",
    "options": ["eigen_smooth", "aug_smooth"]}]}))]
pub struct ModelDescription {
    /// The model's name: torchvision's architecture for a ResNet (`resnet50`,
    /// `resnext50_32x4d`, ...), the exported file's name otherwise (`efficientnet_b0`).
    pub architecture: String,
    /// `native` (a ResNet-family state dict) or `torchscript` (an exported model).
    pub backend: Backend,
    pub num_classes: usize,
    /// Class names, in the classifier's order.
    pub labels: Vec<String>,
    /// Where the labels came from: a file, `model file` (the exported file's own),
    /// `imagenet`, or `generated` (`class N`).
    pub labels_source: String,
    /// The layers `layer` may name: a ResNet's stages (their last block) then every block;
    /// an exported model's taps (module names).
    pub layers: Vec<String>,
    /// The layer explained when a request does not say.
    pub default_layer: String,
    /// Side of the square model input, in pixels.
    pub input_size: u32,
    /// The per-channel (RGB) normalisation of the input.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// SHA-256 of the model file, or "demo-random" for seeded random demo weights.
    pub weights: String,
    /// The CAM methods this server runs on this model (the `method` option), the default
    /// first.
    pub methods: Vec<MethodInfo>,
    /// The faithfulness scores a request may ask for (the `scores` option).
    #[serde(default)]
    pub scores: Vec<ScoreInfo>,
}

impl ModelDescription {
    /// As this server describes it: ScoreCAM only where the operator allows it, the
    /// default method first.
    pub fn served(&self, allow_scorecam: bool, default: Method) -> ModelDescription {
        let mut served = self.clone();
        served
            .methods
            .retain(|m| allow_scorecam || m.name != Method::ScoreCam.name());
        served.methods.sort_by_key(|m| m.name != default.name());
        served
    }

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
            default_layer: &self.default_layer,
        }
    }

    /// How an answer names the model and the layer(s) it explained.
    pub fn info(&self, layer: &str) -> ModelInfo {
        ModelInfo {
            name: self.architecture.clone(),
            target_layer: layer.to_string(),
            weights: self.weights.clone(),
        }
    }
}

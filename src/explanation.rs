//! The answer's shape, the same from the CLI (`explain --json`) and `POST /explain`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"class_index": 281, "label": "tabby", "score": 0.83}))]
pub struct ClassScore {
    /// ImageNet class index, 0..999.
    pub class_index: usize,
    /// Its human-readable name.
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// The raw Grad-CAM map at the target layer's resolution: ReLU(sum_k w_k A_k), not
/// normalised, `height` rows of `width` values.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"width": 2, "height": 2, "data": [[0.0, 0.12], [0.5, 1.7]]}))]
pub struct Saliency {
    pub width: usize,
    pub height: usize,
    pub data: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"name": "resnet50", "target_layer": "layer4", "weights": "demo-random"}))]
pub struct ModelInfo {
    pub name: String,
    pub target_layer: String,
    /// SHA-256 of the weights file, or "demo-random" for seeded random demo weights
    /// (whose labels mean nothing).
    pub weights: String,
}

/// Milliseconds spent in each stage of this request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Timing {
    pub decode: f64,
    pub queue: f64,
    pub forward: f64,
    pub backward: f64,
    pub render: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Explanation {
    /// The top-1 class.
    pub prediction: ClassScore,
    /// The most probable classes, most probable first.
    pub top_k: Vec<ClassScore>,
    /// The class the map explains: the requested one, else the top-1.
    pub target: ClassScore,
    pub saliency: Saliency,
    /// Base64 PNG of the heat map over the uploaded image, at the uploaded image's size
    /// (absent when `overlay=false`, or from the CLI with `--out`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
    /// The uploaded image's size, after EXIF orientation.
    pub image: ImageSize,
    pub model: ModelInfo,
    pub timing_ms: Timing,
}

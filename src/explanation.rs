//! The answer's shape, the same from the CLI (`explain --json`) and `POST /explain`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::faithfulness::{Candidate, MapScores};

pub use crate::render::EncodedOverlay;
use crate::render::{Drawn, OverlayFormat};

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

/// The map, `height` rows of `width` values. For one layer without `aug_smooth` (`scaled`
/// false): the method's raw map at the target layer's resolution after the ReLU, not
/// normalised (for Grad-CAM ReLU(sum_k w_k A_k)), what pytorch-grad-cam scales and resizes.
/// With several layers or `aug_smooth` (`scaled` true): the map pytorch-grad-cam returns,
/// at the model input's size, in [0, 1].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"width": 2, "height": 2, "data": [[0.0, 0.12], [0.5, 1.7]], "scaled": false}))]
pub struct Saliency {
    pub width: usize,
    pub height: usize,
    /// `height` rows; each of `width` values, or with `channels` 3 of `width` pixels'
    /// red, green and blue values one after another (`r0, g0, b0, r1, ...`).
    pub data: Vec<Vec<f32>>,
    /// Whether this is the scaled map at the input's size rather than the raw layer map.
    #[serde(default)]
    pub scaled: bool,
    /// 1, or 3 for `guided-backprop` and `guided-gradcam`: the input gradient of each
    /// colour at the model input's size, signed and not scaled (pytorch-grad-cam's
    /// `(H, W, 3)` array, row by row). Absent means 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub channels: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// One explained class, when a request asks for several (`target=281,285`, `top_k_maps`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct TargetMap {
    pub target: ClassScore,
    pub saliency: Saliency,
    /// This class's map's `scores`, as the answer's (absent when none were asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    /// What this class's overlay image is, as the answer's `overlay_image` (absent when
    /// `overlay=false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_image: Option<OverlayImage>,
    /// Base64 PNG of this class's overlay (`overlay_format=png`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
    /// Base64 JPEG of this class's overlay, with `overlay_format=jpeg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_jpeg: Option<String>,
    /// Base64 lossless WebP of this class's overlay, with `overlay_format=webp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_webp: Option<String>,
}

impl TargetMap {
    pub fn new(
        target: ClassScore,
        saliency: Saliency,
        scores: Option<Scores>,
        overlay: Option<&EncodedOverlay>,
    ) -> Self {
        let (overlay_png, overlay_jpeg, overlay_webp) = base64_fields(overlay);
        Self {
            target,
            saliency,
            scores,
            overlay_image: overlay.map(OverlayImage::from),
            overlay_png,
            overlay_jpeg,
            overlay_webp,
        }
    }
}

/// A map's faithfulness scores by name (`scores`): `road`, `confidence_change`, ... (what
/// each measures, its range and which way is better: `GET /model`'s `scores`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"road": 0.41, "confidence_change": -0.62}))]
pub struct Scores(pub BTreeMap<String, f32>);

impl From<&MapScores> for Scores {
    fn from(scores: &MapScores) -> Self {
        Scores(
            scores
                .iter()
                .map(|(score, value)| (score.name().to_string(), *value))
                .collect(),
        )
    }
}

/// One method `method=auto` compared, with its `auto_score`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"method": "hirescam", "score": 0.41, "same_map_as": "gradcam"}))]
pub struct CandidateScore {
    pub method: String,
    /// Its map's `auto_score`.
    pub score: f32,
    /// The earlier candidate whose map equals this one's (scored once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_map_as: Option<String>,
}

impl From<&Candidate> for CandidateScore {
    fn from(c: &Candidate) -> Self {
        CandidateScore {
            method: c.method.to_string(),
            score: c.score,
            same_map_as: c.same_map_as.map(|m| m.to_string()),
        }
    }
}

/// One concept of Deep Feature Factorization (`method=dff`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ConceptMap {
    /// Where the image shows it: the concept's row of the factorization, scaled to [0, 1]
    /// and resized to the model input's size (pytorch-grad-cam's explanation for it).
    pub saliency: Saliency,
    /// The classes the classifier gives its embedding, most probable first (softmax over
    /// the classes; `concept_top_k` of them). Empty where the layer is not the one the
    /// classifier reads (a ResNet's last block, `layer4`).
    pub classes: Vec<ClassScore>,
    /// Its colour in the overlay and its legend, `#rrggbb` (matplotlib's `gist_rainbow`,
    /// as pytorch-grad-cam's `show_factorization_on_image`).
    pub colour: String,
}

/// What the answer says of its overlay image (`overlay_image`): the bytes are in the field
/// its format names (`overlay_png`, `overlay_jpeg` or `overlay_webp`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[schema(example = json!({"kind": "blend", "media_type": "image/png", "field": "overlay_png", "width": 960, "height": 720}))]
pub struct OverlayImage {
    /// `blend` (the heat map over the picture), `heatmap` (the coloured map alone),
    /// `deprocessed` (the guided methods: their three-channel map as a picture,
    /// pytorch-grad-cam's `deprocess_image`, at the model input's size) or `concepts`
    /// (`dff`: each pixel coloured by its strongest concept over the image the model saw,
    /// with a legend of the concepts' classes to its right: twice as wide).
    pub kind: String,
    /// `image/png`, `image/jpeg` or `image/webp`.
    pub media_type: String,
    /// The answer's field that holds it, base64-encoded.
    pub field: String,
    /// Its size: the uploaded image's, or scaled down to `overlay_max_side`.
    pub width: u32,
    pub height: u32,
}

impl From<&EncodedOverlay> for OverlayImage {
    fn from(overlay: &EncodedOverlay) -> Self {
        OverlayImage {
            kind: match overlay.kind {
                Drawn::Heatmap => "heatmap",
                Drawn::Deprocessed => "deprocessed",
                Drawn::Concepts => "concepts",
                Drawn::Blend => "blend",
            }
            .into(),
            media_type: overlay.format.media_type().into(),
            field: overlay.format.field().into(),
            width: overlay.width,
            height: overlay.height,
        }
    }
}

/// The overlay base64-encoded in its format's field: (png, jpeg, webp).
fn base64_fields(
    overlay: Option<&EncodedOverlay>,
) -> (Option<String>, Option<String>, Option<String>) {
    let Some(overlay) = overlay else {
        return (None, None, None);
    };
    let text = Some(base64_simd::STANDARD.encode_to_string(&overlay.bytes));
    match overlay.format {
        OverlayFormat::Png => (text, None, None),
        OverlayFormat::Jpeg => (None, text, None),
        OverlayFormat::Webp => (None, None, text),
    }
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
    /// The layer explained (several: comma-separated). Empty for the methods that take no
    /// layer: `fullgrad` (every convolution and batch norm with a bias takes part) and
    /// `sobelcam` (the image's edges).
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
    /// The faithfulness scores (0 when none were asked for).
    pub scores: f64,
    pub render: f64,
    pub total: f64,
}

impl Timing {
    /// The stages' names, in order: the fields above, the `Server-Timing` header's names
    /// and the metrics' `stage` label.
    pub const STAGES: [&'static str; 7] = [
        "decode", "queue", "forward", "backward", "scores", "render", "total",
    ];

    /// Each stage's name and milliseconds.
    pub fn stages(&self) -> [(&'static str, f64); 7] {
        let ms = [
            self.decode,
            self.queue,
            self.forward,
            self.backward,
            self.scores,
            self.render,
            self.total,
        ];
        std::array::from_fn(|i| (Self::STAGES[i], ms[i]))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Explanation {
    /// The top-1 class.
    pub prediction: ClassScore,
    /// The most probable classes, most probable first.
    pub top_k: Vec<ClassScore>,
    /// The class the map explains: the requested one, else the top-1.
    pub target: ClassScore,
    /// The CAM method that made the maps (`gradcam`, `hirescam`, ...; with `method=auto`,
    /// the one it chose).
    #[serde(default)]
    pub method: String,
    pub saliency: Saliency,
    /// The map's faithfulness scores that `scores` asked for (absent when none were).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scores: Option<Scores>,
    /// `method=auto`: every method it compared, best first, with its `auto_score`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub candidates: Option<Vec<CandidateScore>>,
    /// `method=auto`: the score the candidates were ranked by.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auto_score: Option<String>,
    /// With several targets: one entry per class, in the order asked (the first is
    /// `target` and `saliency` again). Absent for one target.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub maps: Option<Vec<TargetMap>>,
    /// `method=dff`: the concepts Deep Feature Factorization found (`n_components` of
    /// them), each with its map and the classes it votes for. `saliency` is then each
    /// pixel's strongest concept, the same whatever the class. Absent for other methods.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub concepts: Option<Vec<ConceptMap>>,
    /// The uploaded image's size, after EXIF orientation.
    pub image: ImageSize,
    pub model: ModelInfo,
    pub timing_ms: Timing,
    /// What the overlay image is: its kind, media type, field and size (absent when
    /// `overlay=false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_image: Option<OverlayImage>,
    /// Base64 PNG of the overlay (`overlay_format=png`, the default): the heat map over the
    /// uploaded image (or the map alone with `overlay=heatmap`), at the image's size or
    /// scaled down to `overlay_max_side` (absent when `overlay=false`, or from the CLI with
    /// `--out`).
    // The overlay fields last, so that `to_json_with_overlay` can append one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
    /// Base64 JPEG of the overlay, with `overlay_format=jpeg` (as `overlay_png` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_jpeg: Option<String>,
    /// Base64 lossless WebP of the overlay, with `overlay_format=webp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_webp: Option<String>,
}

impl Explanation {
    /// Puts the overlay into the answer, base64-encoded, in its format's field.
    pub fn embed_overlay(&mut self, overlay: &EncodedOverlay) {
        (self.overlay_png, self.overlay_jpeg, self.overlay_webp) = base64_fields(Some(overlay));
    }

    /// The compact JSON answer with `overlay` in its format's field: the same bytes as
    /// `embed_overlay` and then `serde_json::to_vec`, but the base64 is written straight
    /// into the buffer. Base64 needs no escaping, and a 1920x1080 overlay makes 6 MB of it:
    /// encoding it into a String that the JSON writer then scans byte by byte took 6 ms.
    pub fn to_json_with_overlay(&self, overlay: &EncodedOverlay) -> Vec<u8> {
        assert!(
            self.overlay_png.is_none()
                && self.overlay_jpeg.is_none()
                && self.overlay_webp.is_none(),
            "the overlay is not embedded twice"
        );
        let bytes = &overlay.bytes;
        // Sized once: growing a multi-megabyte buffer by doubling copies it over and over.
        let mut json = Vec::with_capacity(bytes.len().div_ceil(3) * 4 + 16 * 1024);
        serde_json::to_writer(&mut json, self).expect("an explanation serialises");
        // The object's closing brace goes back on after the last field, the overlay's.
        assert_eq!(json.pop(), Some(b'}'));
        json.extend_from_slice(format!(r#","{}":""#, overlay.format.field()).as_bytes());
        base64_simd::STANDARD.encode_append(bytes, &mut json);
        json.extend_from_slice(br#""}"#);
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn answer() -> Explanation {
        let class = |i: usize| ClassScore {
            class_index: i,
            label: format!("class \"{i}\"\n"),
            score: 0.25,
        };
        Explanation {
            prediction: class(3),
            top_k: vec![class(3), class(7)],
            target: class(7),
            saliency: Saliency {
                width: 2,
                height: 1,
                data: vec![vec![0.5, 1e-9]],
                scaled: false,
                channels: 1,
            },
            method: "gradcam".into(),
            scores: None,
            candidates: None,
            auto_score: None,
            maps: None,
            concepts: None,
            image: ImageSize {
                width: 5,
                height: 4,
            },
            model: ModelInfo {
                name: "resnet50".into(),
                target_layer: "layer4".into(),
                weights: "demo-random".into(),
            },
            timing_ms: Timing::default(),
            overlay_image: None,
            overlay_png: None,
            overlay_jpeg: None,
            overlay_webp: None,
        }
    }

    #[test]
    fn the_stage_names_are_the_timings_fields() {
        let t = Timing {
            decode: 1.0,
            queue: 2.0,
            forward: 3.0,
            backward: 4.0,
            scores: 4.5,
            render: 5.0,
            total: 6.0,
        };
        let json = serde_json::to_value(&t).unwrap();
        for (name, ms) in t.stages() {
            assert_eq!(json[name], ms, "{name}");
        }
        assert_eq!(json.as_object().unwrap().len(), Timing::STAGES.len());
    }

    #[test]
    fn direct_json_is_byte_for_byte_what_serde_writes() {
        // Lengths 0..=5 cover every base64 padding case, then a large random-ish PNG
        // stand-in covers the SIMD loop.
        let mut payloads: Vec<Vec<u8>> = (0..=5).map(|n| (0..n as u8).collect()).collect();
        payloads.push(
            (0..100_003u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        );
        let formats = [OverlayFormat::Png, OverlayFormat::Jpeg, OverlayFormat::Webp];
        for (i, png) in payloads.into_iter().enumerate() {
            let overlay = EncodedOverlay {
                bytes: png.clone(),
                format: formats[i % 3],
                kind: Drawn::Blend,
                width: 5,
                height: 4,
            };
            let mut described = answer();
            described.overlay_image = Some(OverlayImage::from(&overlay));
            let mut embedded = described.clone();
            embedded.embed_overlay(&overlay);
            let expected = serde_json::to_vec(&embedded).unwrap();
            assert_eq!(
                described.to_json_with_overlay(&overlay),
                expected,
                "{} bytes",
                png.len()
            );
            // And the base64 decodes back with an independent decoder, from the field the
            // description names.
            let back: serde_json::Value = serde_json::from_slice(&expected).unwrap();
            let field = back["overlay_image"]["field"].as_str().unwrap();
            assert_eq!(field, overlay.format.field());
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(back[field].as_str().unwrap())
                .unwrap();
            assert_eq!(decoded, png);
        }
    }
}

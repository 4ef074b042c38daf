//! The options of one explanation, defined once: the query parameters and form fields of
//! `POST /explain` (and their OpenAPI text), the flags of `gradcam-serve explain`, and the
//! benchmark all use [`ExplainOptions`]; [`ExplainOptions::resolve`] checks it against the
//! loaded model (class count, layers) and fills in the server's defaults.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::cam::kernel_pca::Kernel;
use crate::cam::{CamAsk, Method, MethodParams, Targets, MAX_TARGETS};
use crate::config::{Config, ExplainDefaults};
use crate::faithfulness::{Score, ScoreAsk, MAX_PERCENTILES};
use crate::preprocess::ResizeMode;
pub use crate::render::{OverlayFormat, OverlayKind, OverlayOptions, OVERLAY_MAX_SIDE};

/// What a caller may choose per explanation; None: the server's default.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams, ToSchema, clap::Args,
)]
#[into_params(parameter_in = Query)]
pub struct ExplainOptions {
    /// Class index to explain, 0..=999 for a 1000-class model (the loaded model's range is
    /// in `GET /model`), or up to 10 of them comma-separated (`281,285`): one map each, the
    /// first in the answer's usual fields, all in `maps` (with `top_k_maps`, the most
    /// probable other classes follow). Default: the top-1 class.
    #[param(value_type = Option<String>, pattern = "^(0|[1-9][0-9]{0,5})(,(0|[1-9][0-9]{0,5})){0,9}$")]
    #[schema(value_type = String, required = false, pattern = "^(0|[1-9][0-9]{0,5})(,(0|[1-9][0-9]{0,5})){0,9}$")]
    #[arg(long)]
    pub target: Option<ClassList>,
    /// How many classes to list in `top_k`, 1..=1000 for a 1000-class model. Default 5.
    #[param(minimum = 1, maximum = 1000)]
    #[schema(nullable = false, minimum = 1, maximum = 1000)]
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Heat-map opacity in the overlay, 0..=1. Default 0.5.
    #[param(minimum = 0.0, maximum = 1.0)]
    #[schema(nullable = false, minimum = 0.0, maximum = 1.0)]
    #[arg(long)]
    pub alpha: Option<f32>,
    /// The overlay image in the answer: `true` (the heat map blended over the picture),
    /// `false` (none), or `heatmap` (the coloured map alone, RGB, for clients that blend it
    /// themselves; black outside the part the model saw with `resize=crop`). Default true.
    #[param(value_type = Option<String>, pattern = "^(true|false|heatmap)$")]
    #[schema(value_type = String, required = false, pattern = "^(true|false|heatmap)$")]
    #[arg(skip)]
    pub overlay: Option<OverlayKind>,
    /// `stretch` (whole image) or `crop` (centre square, torchvision style). Default: the
    /// server's setting.
    #[param(value_type = Option<String>, pattern = "^(stretch|crop)$")]
    #[schema(value_type = String, required = false, pattern = "^(stretch|crop)$")]
    // The CLI's --resize is the setting (model.resize), which is this option's default.
    #[arg(skip)]
    pub resize: Option<ResizeMode>,
    /// The layer to explain, as `GET /model` lists the loaded model's: for a ResNet
    /// `layer1` .. `layer4` (a stage's last block, as pytorch-grad-cam's
    /// `model.layerN[-1]`) or one block, `layer3.1`; for an exported model, a tap's module
    /// name (`features.8`). The map's size follows the layer: 7x7 at a ResNet's layer4,
    /// 14x14 at layer3 for a 224-pixel input. Default: the model's default layer
    /// (`layer4` for a ResNet).
    /// Several layers, comma-separated (`layer3,layer4`), give pytorch-grad-cam's
    /// multi-layer map: each layer's map scaled to the input size, then their mean.
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9_.-]{1,200}(,[A-Za-z0-9_.-]{1,200}){0,7}$")]
    #[schema(value_type = String, required = false, pattern = "^[A-Za-z0-9_.-]{1,200}(,[A-Za-z0-9_.-]{1,200}){0,7}$")]
    #[arg(long)]
    pub layer: Option<LayerList>,
    /// Longest side of the overlay image in pixels, 64..=16383: a larger picture is scaled
    /// down to fit, its aspect ratio kept (a JPEG is then decoded at 1/2, 1/4 or 1/8 of its
    /// size where that is enough for the overlay and the model). Default: the server's
    /// setting (960).
    #[param(minimum = 64, maximum = 16383)]
    #[schema(nullable = false, minimum = 64, maximum = 16383)]
    #[arg(long)]
    pub overlay_max_side: Option<u32>,
    /// The overlay's encoding: `png` (lossless), `jpeg` (quality 85, about a tenth of the
    /// PNG's size) or `webp` (lossless). The answer's field says which: `overlay_png`,
    /// `overlay_jpeg` or `overlay_webp`. Default `png`.
    #[param(value_type = Option<String>, pattern = "^(png|jpeg|webp)$")]
    #[schema(value_type = String, required = false, pattern = "^(png|jpeg|webp)$")]
    #[arg(long)]
    pub overlay_format: Option<OverlayFormat>,
    /// The CAM method, as pytorch-grad-cam 1.5.7 computes it: `gradcam` (GradCAM),
    /// `hirescam`, `gradcam-elementwise`, `gradcam-plusplus` (or `gradcam++`), `xgradcam`,
    /// `layercam`, `eigencam`, `eigengradcam`, `ablationcam`, `scorecam` (only where the
    /// server allows it), `fem`, `randomcam` (random channel weights, seeded by `seed`: a
    /// baseline), `finercam` (the target against the classes scored closest to it:
    /// `comparison_categories`, `finer_alpha`), `shapleycam`, `refinecam` (the product of
    /// `base_method`'s maps at the layers, `layer=layer3,layer4`), `kpcacam` (kernel PCA of
    /// the activations: `kernel`, `gamma`), `fullgrad` (input and bias gradients of the whole
    /// network, no `layer`; native ResNet models only), `sobelcam` (the image's edges,
    /// whatever the class: a baseline), `guided-backprop` and `guided-gradcam` (three
    /// channels at the input's size; native ResNet models only) and `sess` (`base_method`'s
    /// maps of 122 windows at 12 scales, fused: costly). `GET /model` lists the methods the loaded model
    /// runs, with the options each takes. Default: the server's setting, `gradcam` unless
    /// changed.
    // The pattern of the spec is made from `Method::ALL` (`http::model_spec`).
    #[param(value_type = Option<String>)]
    #[schema(value_type = String, required = false)]
    #[arg(long)]
    pub method: Option<Method>,
    /// pytorch-grad-cam's `eigen_smooth`: the first principal component of the weighted
    /// activations instead of their sum. Default false.
    #[schema(nullable = false)]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub eigen_smooth: Option<bool>,
    /// pytorch-grad-cam's `aug_smooth`: the mean map over the image and its horizontal
    /// flip, each times 0.9, 1 and 1.1 (six passes). The map is then the scaled one, at
    /// the input's size. Default false.
    #[schema(nullable = false)]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub aug_smooth: Option<bool>,
    /// Explain the k most probable classes, 1..=10: one map each. With `target`, the
    /// classes it lists come first, then the most probable others, until there are k maps
    /// (or as many as `target` lists, when that is more).
    #[param(minimum = 1, maximum = 10)]
    #[schema(nullable = false, minimum = 1, maximum = 10)]
    #[arg(long)]
    pub top_k_maps: Option<usize>,
    /// `randomcam`'s seed, 0..=4294967295: its channel weights are NumPy's
    /// `np.random.uniform(-1, 1)` draws after `np.random.seed(seed)`, so the same request
    /// gives the same map. Also the seed of ROAD's imputation noise (`scores`; NumPy's
    /// `RandomState(seed)` normal draws, where pytorch-grad-cam's are unseeded), so that
    /// the same request gives the same score. Default 0.
    #[param(minimum = 0, maximum = 4294967295u64)]
    #[schema(nullable = false, minimum = 0, maximum = 4294967295u64)]
    #[arg(long)]
    pub seed: Option<u32>,
    /// `finercam`'s `comparison_categories`: which classes the target is compared with, as
    /// positions in the classes sorted by how close their logit is to the target's (0 is
    /// the target itself), each below the model's class count, up to 10 comma-separated.
    /// Ignored by the other methods. Default `1,2,3` (fewer on a model with under four
    /// classes, as pytorch-grad-cam clamps it).
    #[param(value_type = Option<String>, pattern = "^(0|[1-9][0-9]{0,5})(,(0|[1-9][0-9]{0,5})){0,9}$")]
    #[schema(value_type = String, required = false, pattern = "^(0|[1-9][0-9]{0,5})(,(0|[1-9][0-9]{0,5})){0,9}$")]
    #[arg(long)]
    pub comparison_categories: Option<ClassList>,
    /// `finercam`'s `alpha`, 0..=10: how much of each compared class's logit is subtracted
    /// from the target's. Ignored by the other methods. Default 1.
    #[param(minimum = 0.0, maximum = 10.0)]
    #[schema(nullable = false, minimum = 0.0, maximum = 10.0)]
    #[arg(long)]
    pub finer_alpha: Option<f32>,
    /// `refinecam`'s and `sess`'s `base_method`: the method whose map at each layer
    /// `refinecam` multiplies, or of each window `sess` fuses; any with a layer map (not
    /// `finercam`, `refinecam`, `sess`, `fullgrad`, `sobelcam` or the guided methods).
    /// Ignored by the other methods. Default `gradcam-plusplus` for `refinecam`, `gradcam`
    /// for `sess`, as pytorch-grad-cam's.
    // The pattern of the spec is made from `Method::refinable` (`http::model_spec`).
    #[param(value_type = Option<String>)]
    #[schema(value_type = String, required = false)]
    #[arg(long)]
    pub base_method: Option<Method>,
    /// `kpcacam`'s kernel, as scikit-learn's `KernelPCA` names them: `linear`, `poly`
    /// (degree 3), `rbf`, `sigmoid` or `cosine`. Ignored by the other methods. Default
    /// `sigmoid`, as pytorch-grad-cam's.
    #[param(value_type = Option<String>, pattern = "^(linear|poly|rbf|sigmoid|cosine)$")]
    #[schema(value_type = String, required = false, pattern = "^(linear|poly|rbf|sigmoid|cosine)$")]
    #[arg(long)]
    pub kernel: Option<Kernel>,
    /// `kpcacam`'s kernel coefficient for `rbf`, `poly` and `sigmoid`, above 0 and at most
    /// 1000. Ignored by the other methods and kernels. Default 1 / the layer's channels
    /// (scikit-learn's).
    #[param(exclusive_minimum = 0.0, maximum = 1000.0)]
    #[schema(nullable = false, exclusive_minimum = 0.0, maximum = 1000.0)]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// `dff`'s number of concepts, 1..=16 (scikit-learn's NMF `n_components`). Ignored by
    /// the other methods. Default 5, as pytorch-grad-cam's `run_dff_on_image`.
    #[param(minimum = 1, maximum = 16)]
    #[schema(nullable = false, minimum = 1, maximum = 16)]
    #[arg(long)]
    pub n_components: Option<usize>,
    /// `dff`'s classes listed per concept, 1..=5 (pytorch-grad-cam's `top_k` of
    /// `create_labels_legend`; `top_k` here is the prediction's). Ignored by the other
    /// methods. Default 2.
    #[param(minimum = 1, maximum = 5)]
    #[schema(nullable = false, minimum = 1, maximum = 5)]
    #[arg(long)]
    pub concept_top_k: Option<usize>,
    /// How far to trust the map: pytorch-grad-cam 1.5.7's faithfulness metrics, one or
    /// several comma-separated, each in the answer's `scores` (and per entry of `maps`;
    /// with `Accept: image/*`, in `X-Score-*` headers): `road` (`ROADCombined`),
    /// `road_morf`, `road_lerf` (its two averages), `confidence_change`
    /// (`CamMultImageConfidenceChange`), `drop_in_confidence`, `increase_in_confidence`,
    /// `complexity`, `coherency`, `arcc` (`ARCC` with the request's method as its base).
    /// `GET /model`'s `scores` says what each measures, its range and which way is better.
    /// Each but `complexity` reruns the network on changed copies of the image (ROAD: two
    /// per percentile), in batches of 8. Ignored by the three-channel guided methods and
    /// `dff`, whose answers are no one-channel map. Default: none.
    // The pattern of the spec is made from `Score::ALL` (`http::model_spec`).
    #[param(value_type = Option<String>)]
    #[schema(value_type = String, required = false)]
    #[arg(long)]
    pub scores: Option<ScoreList>,
    /// ROAD's percentiles (`road`, `road_morf`, `road_lerf`, `arcc`), whole numbers in
    /// 1..=99, up to 9 comma-separated: at each, the pixels the map ranks above it (MoRF)
    /// or below (LeRF) are removed and filled in from their neighbours. Default
    /// `20,40,60,80`, as pytorch-grad-cam's `ARCC`.
    #[param(value_type = Option<String>, pattern = "^([1-9]|[1-9][0-9])(,([1-9]|[1-9][0-9])){0,8}$")]
    #[schema(value_type = String, required = false, pattern = "^([1-9]|[1-9][0-9])(,([1-9]|[1-9][0-9])){0,8}$")]
    #[arg(long)]
    pub road_percentiles: Option<PercentileList>,
    /// `method=auto`'s ranking: the score (one of `scores`' names) by which it picks the
    /// best method. Ignored by the other methods. Default `confidence_change`.
    // The pattern of the spec is made from `Score::ALL` (`http::model_spec`).
    #[param(value_type = Option<String>)]
    #[schema(value_type = String, required = false)]
    #[arg(long)]
    pub auto_score: Option<Score>,
}

impl std::str::FromStr for OverlayKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // Only the spec's words: 1 and 0 are integers to a client that reads it.
        match s {
            "true" => Ok(Self::Blend),
            "false" => Ok(Self::Off),
            "heatmap" => Ok(Self::Heatmap),
            _ => Err("must be true, false or heatmap".into()),
        }
    }
}

impl Serialize for OverlayKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Blend => s.serialize_bool(true),
            Self::Off => s.serialize_bool(false),
            Self::Heatmap => s.serialize_str("heatmap"),
        }
    }
}

impl<'de> Deserialize<'de> for OverlayKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Word(String),
        }
        match Given::deserialize(d)? {
            Given::Flag(true) => Ok(Self::Blend),
            Given::Flag(false) => Ok(Self::Off),
            Given::Word(w) => w.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::str::FromStr for OverlayFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "png" => Ok(Self::Png),
            "jpeg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            _ => Err(format!(
                "`{s}` is not an overlay format (png, jpeg or webp)"
            )),
        }
    }
}

/// One or more class indices, written comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassList(pub Vec<usize>);

impl ClassList {
    pub fn one(class: usize) -> Self {
        ClassList(vec![class])
    }
}

impl FromStr for ClassList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let classes: Vec<usize> = s
            .split(',')
            .map(|c| c.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| "must be a class index, or several comma-separated".to_string())?;
        if classes.len() > MAX_TARGETS {
            return Err(format!("at most {MAX_TARGETS} classes"));
        }
        Ok(ClassList(classes))
    }
}

impl fmt::Display for ClassList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&text.join(","))
    }
}

/// One or more layer names, written comma-separated. Which names exist is the model's
/// business (`resolve` checks them); here a name is letters, digits, `_`, `.` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerList(pub Vec<String>);

/// Most layers one request may aggregate.
pub const MAX_LAYERS: usize = 8;

impl LayerList {
    pub fn one(layer: &str) -> Self {
        LayerList(vec![layer.to_string()])
    }
}

impl FromStr for LayerList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let layers: Vec<String> = s.split(',').map(|l| l.trim().to_string()).collect();
        let name = |l: &String| {
            (1..=200).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        if let Some(bad) = layers.iter().find(|l| !name(l)) {
            return Err(format!(
                "`{bad}` is not a layer name (GET /model lists the model's layers)"
            ));
        }
        if layers.len() > MAX_LAYERS {
            return Err(format!("at most {MAX_LAYERS} layers"));
        }
        Ok(LayerList(layers))
    }
}

impl fmt::Display for LayerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Written as the text the query takes; read from that text, or from a number (a class).
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Text {
                    Number(usize),
                    Text(String),
                }
                let text = match Text::deserialize(d)? {
                    Text::Number(n) => n.to_string(),
                    Text::Text(t) => t,
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(ClassList);
serde_as_text!(LayerList);
serde_as_text!(ScoreList);
serde_as_text!(PercentileList);

/// One or more faithfulness scores, written comma-separated; each once, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreList(pub Vec<Score>);

impl FromStr for ScoreList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut scores = Vec::new();
        for name in s.split(',') {
            let score: Score = name.trim().parse()?;
            if !scores.contains(&score) {
                scores.push(score);
            }
        }
        Ok(ScoreList(scores))
    }
}

impl fmt::Display for ScoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|s| s.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// ROAD's percentiles, whole numbers in 1..=99, written comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PercentileList(pub Vec<u8>);

/// What a ROAD percentile may be: 0 would keep no pixel (nothing to fill from), 100 remove
/// none.
const PERCENTILE: std::ops::RangeInclusive<u8> = 1..=99;

impl FromStr for PercentileList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let reason = || {
            format!(
                "must be up to {MAX_PERCENTILES} whole numbers in {}..={}, comma-separated",
                PERCENTILE.start(),
                PERCENTILE.end()
            )
        };
        let listed: Vec<u8> = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| PERCENTILE.contains(p))
            })
            .collect::<Option<_>>()
            .ok_or_else(reason)?;
        if listed.is_empty() || listed.len() > MAX_PERCENTILES {
            return Err(reason());
        }
        Ok(PercentileList(listed))
    }
}

impl fmt::Display for PercentileList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(u8::to_string).collect();
        f.write_str(&text.join(","))
    }
}

/// The options' names, as the query and the form spell them.
pub const NAMES: [&str; 23] = [
    "target",
    "top_k",
    "alpha",
    "overlay",
    "resize",
    "layer",
    "overlay_max_side",
    "overlay_format",
    "method",
    "eigen_smooth",
    "aug_smooth",
    "top_k_maps",
    "seed",
    "comparison_categories",
    "finer_alpha",
    "base_method",
    "kernel",
    "gamma",
    "n_components",
    "concept_top_k",
    "scores",
    "road_percentiles",
    "auto_score",
];

/// A refused option: which, the value given, and what it must be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name} = {value:?}: {reason}")]
pub struct OptionError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl OptionError {
    fn new(name: &str, value: impl ToString, reason: impl Into<String>) -> Self {
        OptionError {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// The options of one explanation, every one decided and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub top_k: usize,
    pub resize: ResizeMode,
    /// How the overlay image is drawn and encoded.
    pub overlay: OverlayOptions,
    /// The method, the classes, every layer, and the smoothing options.
    pub cam: CamAsk,
    /// The faithfulness scores of each map, and `method=auto`'s ranking.
    pub scores: ScoreAsk,
}

impl Options {
    /// How many maps the answer will have.
    pub fn map_count(&self) -> usize {
        self.cam.targets.count()
    }

    /// About how many network passes the request costs, for its place in the queue: one
    /// for the explanation (however many its method makes: SESS and ScoreCAM are bounded by
    /// the request timeout instead), plus its scores'.
    pub fn passes(&self) -> usize {
        1 + self.scores.passes(self.map_count(), 1)
    }
}

/// What the options are checked against: the loaded model's classes and layers.
pub struct Limits<'a> {
    pub classes: usize,
    pub layers: &'a [String],
    /// The layer explained when a request names none.
    pub default_layer: &'a str,
}

impl ExplainOptions {
    /// Sets option `name` from its text (a query parameter or a form field). Each source
    /// sets an option once: a later source (the form, after the query) overrides it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), OptionError> {
        let v = value.trim();
        let err = |reason: &str| OptionError::new(name, value, reason);
        match name {
            "target" => self.target = Some(v.parse().map_err(|e: String| err(&e))?),
            "top_k" => self.top_k = Some(v.parse().map_err(|_| err("must be a whole number"))?),
            "alpha" => {
                self.alpha = Some(
                    v.parse::<f32>()
                        .ok()
                        .filter(|a| (0.0..=1.0).contains(a))
                        .ok_or_else(|| err("must be a number in 0..=1"))?,
                )
            }
            "overlay" => self.overlay = Some(v.parse().map_err(|e: String| err(&e))?),
            "overlay_max_side" => {
                self.overlay_max_side = Some(whole_number_in(v, &OVERLAY_MAX_SIDE).map_err(|e| err(&e))?)
            }
            "overlay_format" => {
                self.overlay_format = Some(v.parse().map_err(|_| err("must be png, jpeg or webp"))?)
            }
            "resize" => self.resize = Some(v.parse().map_err(|_| err("must be stretch or crop"))?),
            "layer" => self.layer = Some(v.parse().map_err(|e: String| err(&e))?),
            "method" => self.method = Some(v.parse().map_err(|e: String| err(&e))?),
            "eigen_smooth" => {
                self.eigen_smooth = Some(boolean(v).ok_or_else(|| err("must be true or false"))?)
            }
            "aug_smooth" => {
                self.aug_smooth = Some(boolean(v).ok_or_else(|| err("must be true or false"))?)
            }
            "top_k_maps" => {
                self.top_k_maps = Some(whole_number_in(v, &(1..=MAX_TARGETS)).map_err(|e| err(&e))?)
            }
            "n_components" => {
                self.n_components = Some(whole_number_in(v, &N_COMPONENTS).map_err(|e| err(&e))?)
            }
            "concept_top_k" => {
                self.concept_top_k = Some(whole_number_in(v, &CONCEPT_TOP_K).map_err(|e| err(&e))?)
            }
            "seed" => {
                self.seed = Some(
                    v.parse()
                        .map_err(|_| err("must be a whole number in 0..=4294967295"))?,
                )
            }
            "comparison_categories" => {
                self.comparison_categories = Some(v.parse().map_err(|_| {
                    err("must be up to 10 positions in the classes sorted by closeness to the target, comma-separated")
                })?)
            }
            "finer_alpha" => {
                self.finer_alpha = Some(
                    v.parse::<f32>()
                        .ok()
                        .filter(|a| FINER_ALPHA.contains(a))
                        .ok_or_else(|| err("must be a number in 0..=10"))?,
                )
            }
            "base_method" => {
                self.base_method = Some(
                    v.parse()
                        .ok()
                        .filter(|m: &Method| m.refinable())
                        .ok_or_else(|| err(&base_method_reason()))?,
                )
            }
            "kernel" => self.kernel = Some(v.parse().map_err(|e: String| err(&e))?),
            "scores" => self.scores = Some(v.parse().map_err(|e: String| err(&e))?),
            "road_percentiles" => {
                self.road_percentiles = Some(v.parse().map_err(|e: String| err(&e))?)
            }
            "auto_score" => self.auto_score = Some(v.parse().map_err(|e: String| err(&e))?),
            "gamma" => {
                self.gamma = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|g| gamma_in_range(*g))
                        .ok_or_else(|| err(GAMMA_RANGE))?,
                )
            }
            _ => {
                return Err(err(&format!(
                    "unknown option; the options are {}",
                    NAMES.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// Every option `other` sets replaces this one's.
    pub fn override_with(&mut self, other: &ExplainOptions) {
        let o = other.clone();
        self.target = o.target.or(self.target.take());
        self.top_k = o.top_k.or(self.top_k);
        self.alpha = o.alpha.or(self.alpha);
        self.overlay = o.overlay.or(self.overlay);
        self.resize = o.resize.or(self.resize);
        self.layer = o.layer.or(self.layer.take());
        self.method = o.method.or(self.method);
        self.eigen_smooth = o.eigen_smooth.or(self.eigen_smooth);
        self.aug_smooth = o.aug_smooth.or(self.aug_smooth);
        self.top_k_maps = o.top_k_maps.or(self.top_k_maps);
        self.overlay_max_side = o.overlay_max_side.or(self.overlay_max_side);
        self.overlay_format = o.overlay_format.or(self.overlay_format);
        self.seed = o.seed.or(self.seed);
        self.comparison_categories = o
            .comparison_categories
            .or(self.comparison_categories.take());
        self.finer_alpha = o.finer_alpha.or(self.finer_alpha);
        self.base_method = o.base_method.or(self.base_method);
        self.kernel = o.kernel.or(self.kernel);
        self.gamma = o.gamma.or(self.gamma);
        self.n_components = o.n_components.or(self.n_components);
        self.concept_top_k = o.concept_top_k.or(self.concept_top_k);
        self.scores = o.scores.or(self.scores.take());
        self.road_percentiles = o.road_percentiles.or(self.road_percentiles.take());
        self.auto_score = o.auto_score.or(self.auto_score);
    }

    /// The options in force: these, else the defaults, checked against the model.
    pub fn resolve(
        &self,
        defaults: &Defaults,
        limits: &Limits<'_>,
    ) -> Result<Options, OptionError> {
        let classes = limits.classes;
        let listed = self.target.as_ref().map(|t| t.0.as_slice()).unwrap_or(&[]);
        if let Some(t) = listed.iter().find(|&&t| t >= classes) {
            return Err(OptionError::new(
                "target",
                t,
                format!("must be a class index in 0..={}", classes - 1),
            ));
        }
        if listed.is_empty() && self.target.is_some() {
            return Err(OptionError::new("target", "", "must be a class index"));
        }
        // The server's default is capped at the class count (5 for a 3-class model lists
        // all 3); a request that asks for more is refused.
        let top_k = self.top_k.unwrap_or(defaults.top_k.min(classes));
        if !(1..=classes).contains(&top_k) {
            return Err(OptionError::new(
                "top_k",
                top_k,
                format!("must be in 1..={classes}, the model's class count"),
            ));
        }
        if let Some(a) = self.alpha.filter(|a| !(0.0..=1.0).contains(a)) {
            return Err(OptionError::new("alpha", a, "must be a number in 0..=1"));
        }
        let layers = match &self.layer {
            Some(list) if !list.0.is_empty() => list.0.clone(),
            _ => vec![defaults
                .layer
                .clone()
                .unwrap_or_else(|| limits.default_layer.to_string())],
        };
        if let Some(layer) = layers.iter().find(|l| !limits.layers.contains(l)) {
            return Err(OptionError::new(
                "layer",
                layer,
                format!(
                    "this model has no such layer: {} (GET /model lists them)",
                    layer_summary(limits.layers)
                ),
            ));
        }
        if let Some(s) = self
            .overlay_max_side
            .filter(|s| !OVERLAY_MAX_SIDE.contains(s))
        {
            return Err(OptionError::new(
                "overlay_max_side",
                s,
                in_range_reason(&OVERLAY_MAX_SIDE),
            ));
        }
        let method = self.method.unwrap_or(defaults.method);
        let params = self.method_params(classes)?;
        if method.per_layer(&params) == Method::ScoreCam && !defaults.allow_scorecam {
            let option = if method != Method::ScoreCam {
                "base_method"
            } else {
                "method"
            };
            return Err(OptionError::new(
                option,
                Method::ScoreCam,
                "ScoreCAM runs the whole network once per channel of the layer (2048 at a \
                 ResNet-50's layer4); this server does not allow it. Its operator can turn it \
                 on with explain.allow_scorecam = true (GRADCAM_ALLOW_SCORECAM=true)",
            ));
        }
        let targets = match (self.top_k_maps, listed) {
            (Some(k), listed) => {
                if k > classes || !(1..=MAX_TARGETS).contains(&k) {
                    return Err(OptionError::new(
                        "top_k_maps",
                        k,
                        format!("must be in 1..={}", classes.min(MAX_TARGETS)),
                    ));
                }
                Targets::TopK {
                    listed: listed.to_vec(),
                    at_least: k,
                }
            }
            (None, []) => Targets::Top1,
            (None, listed) => Targets::Classes(listed.to_vec()),
        };
        let scores = self.score_ask(method);
        Ok(Options {
            scores,
            top_k,
            resize: self.resize.unwrap_or(defaults.resize),
            overlay: OverlayOptions {
                kind: self.overlay.unwrap_or_default(),
                alpha: self.alpha.unwrap_or(defaults.alpha),
                max_side: self.overlay_max_side.unwrap_or(defaults.overlay_max_side),
                format: self.overlay_format.unwrap_or_default(),
            },
            cam: CamAsk {
                method,
                targets,
                layers,
                eigen_smooth: self.eigen_smooth.unwrap_or(false),
                // FinerCAM has no aug_smooth in pytorch-grad-cam (`Method::augmentable`).
                aug_smooth: self.aug_smooth.unwrap_or(false) && method.augmentable(),
                params,
            },
        })
    }

    /// What to score: none for methods whose answer is no one-channel map (the guided
    /// methods, `dff`), as other options a method cannot use are ignored.
    fn score_ask(&self, method: Method) -> ScoreAsk {
        let defaults = ScoreAsk::default();
        let one_channel = !(method.colour() || method == Method::Dff);
        ScoreAsk {
            scores: match &self.scores {
                Some(listed) if one_channel => listed.0.clone(),
                _ => vec![],
            },
            percentiles: self
                .road_percentiles
                .as_ref()
                .map(|p| p.0.iter().map(|&p| p as f64).collect())
                .unwrap_or(defaults.percentiles),
            seed: Some(self.seed.unwrap_or(0)),
            auto_score: self.auto_score.unwrap_or(defaults.auto_score),
        }
    }

    /// The options only some methods take, checked against the model's class count.
    fn method_params(&self, classes: usize) -> Result<MethodParams, OptionError> {
        let defaults = MethodParams::default();
        let comparison_categories = match &self.comparison_categories {
            Some(ClassList(listed)) => {
                if let Some(c) = listed.iter().find(|&&c| c >= classes) {
                    return Err(OptionError::new(
                        "comparison_categories",
                        c,
                        format!(
                            "must be positions in 0..={} (the model's classes)",
                            classes - 1
                        ),
                    ));
                }
                listed.clone()
            }
            // pytorch-grad-cam clamps its default to the classes there are.
            None => defaults
                .comparison_categories
                .into_iter()
                .filter(|&c| c < classes)
                .collect(),
        };
        if let Some(a) = self.finer_alpha.filter(|a| !FINER_ALPHA.contains(a)) {
            return Err(OptionError::new(
                "finer_alpha",
                a,
                "must be a number in 0..=10",
            ));
        }
        let base_method = self.base_method.or(defaults.base_method);
        if let Some(m) = base_method.filter(|m| !m.refinable()) {
            return Err(OptionError::new("base_method", m, base_method_reason()));
        }
        if let Some(g) = self.gamma.filter(|g| !gamma_in_range(*g)) {
            return Err(OptionError::new("gamma", g, GAMMA_RANGE));
        }
        Ok(MethodParams {
            kernel: self.kernel.unwrap_or(defaults.kernel),
            gamma: self.gamma.or(defaults.gamma),
            base_method,
            seed: self.seed.unwrap_or(defaults.seed),
            comparison_categories,
            finer_alpha: self.finer_alpha.unwrap_or(defaults.finer_alpha),
            n_components: self.n_components.unwrap_or(defaults.n_components),
            concept_top_k: self.concept_top_k.unwrap_or(defaults.concept_top_k),
        })
    }
}

/// `v` as a whole number in `range`, or why not (the message names the range, so the two
/// cannot disagree).
fn whole_number_in<T>(v: &str, range: &std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    v.parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| in_range_reason(range))
}

fn in_range_reason<T: std::fmt::Display>(range: &std::ops::RangeInclusive<T>) -> String {
    format!(
        "must be a whole number in {}..={}",
        range.start(),
        range.end()
    )
}

fn base_method_reason() -> String {
    let names: Vec<&str> = Method::ALL
        .iter()
        .filter(|m| m.refinable())
        .map(|m| m.name())
        .collect();
    format!("must be one of {}", names.join(", "))
}

/// `gamma`: a kernel coefficient, above 0 (scikit-learn's kernels take any, but 0 makes
/// every kernel but `linear` and `cosine` constant); a float64, as scikit-learn's, so that
/// every positive number the spec allows (5e-324 too) is one the server takes.
fn gamma_in_range(g: f64) -> bool {
    g > 0.0 && g <= 1000.0
}

const GAMMA_RANGE: &str = "must be a number above 0 and at most 1000";

/// The values `finer_alpha` may take.
const FINER_ALPHA: std::ops::RangeInclusive<f32> = 0.0..=10.0;
/// `n_components` and `concept_top_k`: what a legend beside the picture can show.
const N_COMPONENTS: std::ops::RangeInclusive<usize> = 1..=16;
const CONCEPT_TOP_K: std::ops::RangeInclusive<usize> = 1..=5;

/// The layers for a message: all of them when few, else the first and last few.
fn layer_summary(layers: &[String]) -> String {
    if layers.len() <= 12 {
        return layers.join(", ");
    }
    format!(
        "{}, ... {}",
        layers[..8].join(", "),
        layers[layers.len() - 3..].join(", ")
    )
}

/// `true` or `false`, nothing else (1 and 0 are integers to a client that reads the spec).
fn boolean(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// What a request gets for each option it does not set: the server's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub top_k: usize,
    pub alpha: f32,
    pub resize: ResizeMode,
    /// None: the model's own default layer.
    pub layer: Option<String>,
    pub overlay_max_side: u32,
    pub method: Method,
    pub allow_scorecam: bool,
}

impl Defaults {
    pub fn from_config(config: &Config) -> Self {
        let ExplainDefaults {
            top_k,
            alpha,
            layer,
            overlay_max_side,
            method,
            allow_scorecam,
        } = config.explain.clone();
        Defaults {
            top_k,
            alpha,
            resize: config.model.resize,
            layer,
            overlay_max_side,
            method,
            allow_scorecam,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ResNet-18's layers: each stage, then its two blocks each.
    fn layers() -> Vec<String> {
        let stages = (1..=4).map(|s| format!("layer{s}"));
        let blocks = (1..=4).flat_map(|s| (0..2).map(move |b| format!("layer{s}.{b}")));
        stages.chain(blocks).collect()
    }

    fn limits(classes: usize, layers: &[String]) -> Limits<'_> {
        Limits {
            classes,
            layers,
            default_layer: "layer4",
        }
    }

    fn defaults() -> Defaults {
        Defaults::from_config(&Config::default())
    }

    #[test]
    fn text_values_parse_and_bad_ones_are_named() {
        let mut o = ExplainOptions::default();
        for (name, value) in [
            ("target", " 7"),
            ("top_k", "3"),
            ("alpha", "0.25"),
            ("overlay", "false"),
            ("resize", "crop"),
            ("layer", "layer3.1"),
            ("overlay_max_side", "512"),
            ("overlay_format", "webp"),
        ] {
            o.set(name, value).unwrap();
        }
        let layers = layers();
        let limits = limits(10, &layers);
        let r = o.resolve(&defaults(), &limits).unwrap();
        assert_eq!(r.cam.targets, Targets::Classes(vec![7]));
        assert_eq!(r.top_k, 3);
        assert_eq!(r.overlay.alpha, 0.25);
        assert_eq!(r.overlay.kind, OverlayKind::Off);
        assert_eq!(r.resize, ResizeMode::Crop);
        assert_eq!(r.cam.layers, ["layer3.1"]);
        assert_eq!(r.overlay.max_side, 512);
        assert_eq!(r.overlay.format, OverlayFormat::Webp);
        let d = ExplainOptions::default()
            .resolve(&defaults(), &limits)
            .unwrap();
        assert_eq!(
            (d.overlay.kind, d.overlay.max_side, d.overlay.format),
            (OverlayKind::Blend, 960, OverlayFormat::Png)
        );
        assert_eq!(d.cam.layers, ["layer4"], "the model's default layer");
        for (name, value) in [
            ("target", "-1"),
            ("alpha", "2"),
            ("overlay", "yes"),
            ("overlay", "0"),
            ("overlay", "Heatmap"),
            ("overlay_max_side", "63"),
            ("overlay_max_side", "16384"),
            ("overlay_max_side", "1e3"),
            ("overlay_format", "gif"),
            ("overlay_format", "PNG"),
            ("resize", "fit"),
            ("layer", "fc["),
            ("layer", "layer4,"),
            ("layer", "a b"),
            ("colour", "red"),
        ] {
            let e = ExplainOptions::default().set(name, value).unwrap_err();
            assert_eq!(e.name, name);
        }
    }

    #[test]
    fn ranges_follow_the_models_class_count_and_layers() {
        let layers = layers();
        let limits = limits(10, &layers);
        let check = |name: &str, value: &str| {
            let mut o = ExplainOptions::default();
            o.set(name, value).unwrap();
            o.resolve(&defaults(), &limits)
        };
        assert!(check("target", "9").is_ok());
        let r = ExplainOptions::default()
            .resolve(
                &defaults(),
                &Limits {
                    classes: 3,
                    ..limits
                },
            )
            .unwrap();
        assert_eq!(r.top_k, 3, "the default of 5 is capped at the class count");
        let e = check("target", "10").unwrap_err();
        assert!(e.reason.contains("0..=9"), "{e}");
        let e = check("top_k", "11").unwrap_err();
        assert!(e.reason.contains("1..=10"), "{e}");
        // resnet18 has two blocks per stage.
        assert!(check("layer", "layer3.1").is_ok());
        let e = check("layer", "layer3.2").unwrap_err();
        assert!(e.reason.contains("layer4.1"), "{e}");
        let e = check("layer", "fc").unwrap_err();
        assert!(e.reason.contains("no such layer"), "{e}");
    }

    /// A value `set` takes for each option, to check that every name reaches every place.
    fn sample(name: &str) -> &'static str {
        match name {
            "target" => "3",
            "top_k" => "2",
            "alpha" => "0.25",
            "overlay" => "heatmap",
            "resize" => "crop",
            "layer" => "layer3",
            "overlay_max_side" => "512",
            "overlay_format" => "webp",
            "method" => "layercam",
            "eigen_smooth" => "true",
            "aug_smooth" => "true",
            "top_k_maps" => "2",
            "seed" => "7",
            "comparison_categories" => "1,4",
            "finer_alpha" => "0.5",
            "base_method" => "gradcam",
            "kernel" => "rbf",
            "gamma" => "0.01",
            "n_components" => "3",
            "concept_top_k" => "4",
            "scores" => "road,complexity",
            "road_percentiles" => "10,90",
            "auto_score" => "road",
            other => panic!("no sample value for option `{other}`: add one here"),
        }
    }

    /// NAMES is every field of ExplainOptions, `set` takes each, and `override_with`
    /// carries each: an option added in one place only fails here.
    #[test]
    fn every_option_is_named_set_and_overridden() {
        let fields = serde_json::to_value(ExplainOptions::default()).unwrap();
        let mut fields: Vec<&String> = fields.as_object().unwrap().keys().collect();
        let mut names: Vec<&str> = NAMES.to_vec();
        fields.sort();
        names.sort();
        assert_eq!(fields, names);
        let mut all = ExplainOptions::default();
        for name in NAMES {
            all.set(name, sample(name)).unwrap();
        }
        let set = serde_json::to_value(&all).unwrap();
        for name in NAMES {
            assert!(!set[name].is_null(), "set({name}) did not set it");
        }
        let mut carried = ExplainOptions::default();
        carried.override_with(&all);
        assert_eq!(carried, all, "override_with left an option behind");
    }

    #[test]
    fn a_later_source_overrides_an_earlier_one() {
        let mut query = ExplainOptions::default();
        query.set("overlay", "true").unwrap();
        query.set("alpha", "0.1").unwrap();
        let mut form = ExplainOptions::default();
        form.set("overlay", "false").unwrap();
        query.override_with(&form);
        assert_eq!(query.overlay, Some(OverlayKind::Off));
        assert_eq!(query.alpha, Some(0.1));
    }

    #[test]
    fn overlay_reads_and_writes_as_the_spec_says() {
        for (json, kind) in [
            ("true", OverlayKind::Blend),
            ("false", OverlayKind::Off),
            ("\"heatmap\"", OverlayKind::Heatmap),
        ] {
            assert_eq!(serde_json::from_str::<OverlayKind>(json).unwrap(), kind);
            assert_eq!(serde_json::to_string(&kind).unwrap(), json);
        }
        assert!(serde_json::from_str::<OverlayKind>("\"blend\"").is_err());
        assert!(serde_json::from_str::<OverlayKind>("1").is_err());
    }
}

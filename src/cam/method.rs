//! The CAM methods a request may choose, named as the API spells them, each with the
//! pytorch-grad-cam 1.5.7 class it reproduces.

use std::fmt;
use std::str::FromStr;

use super::kernel_pca::Kernel;
use crate::model::Needs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Method {
    /// GradCAM: channel weights = mean gradient.
    #[default]
    GradCam,
    /// HiResCAM: gradient times activation, element by element, summed over channels.
    HiResCam,
    /// GradCAMElementWise: ReLU(gradient * activation), summed over channels.
    GradCamElementWise,
    /// GradCAMPlusPlus: second-order weights.
    GradCamPlusPlus,
    /// XGradCAM: gradient weighted by the normalised activation.
    XGradCam,
    /// LayerCAM: ReLU(gradient) * activation.
    LayerCam,
    /// EigenCAM: first principal component of the activations (no gradient).
    EigenCam,
    /// EigenGradCAM: first principal component of gradient * activation.
    EigenGradCam,
    /// AblationCAM: the drop of the score when each channel is ablated.
    AblationCam,
    /// ScoreCAM: the score of the input masked by each channel.
    ScoreCam,
    /// FEM: channels weighted by how often they exceed mean + 2 std (no gradient).
    Fem,
    /// RandomCAM: channel weights drawn uniformly from [-1, 1] (seeded): a baseline.
    RandomCam,
    /// FinerCAM: Grad-CAM of the target's score against the classes scored closest to it.
    FinerCam,
    /// ShapleyCAM: channel weights = mean of gradient - Hessian-vector product / 2.
    ShapleyCam,
    /// RefineCAM: the product of a base method's maps at several layers (each scaled to
    /// the input), scaled.
    RefineCam,
    /// KPCA-CAM: the first kernel principal component of the activations (no gradient).
    KpcaCam,
    /// FullGrad: |input gradient x input| plus |bias x gradient| at every bias layer (no
    /// layer chosen).
    FullGrad,
    /// SobelCAM: the Sobel edges of the input image, whatever the class: a baseline.
    SobelCam,
    /// Guided backpropagation: the input gradient through ReLUs that pass only positive
    /// gradients, three channels at the input's size.
    GuidedBackprop,
    /// Guided Grad-CAM: guided backpropagation times the Grad-CAM map at the layer.
    GuidedGradCam,
    /// SESS: a base method's maps of windows of the image at 12 scales, weighted by each
    /// window's score, fused and blurred.
    Sess,
    /// Deep Feature Factorization: the layer's activations factorized (NMF) into concepts,
    /// each with its map and the classes it votes for.
    Dff,
    /// Not a map of its own: the one-pass method whose map scores best (`auto_score`),
    /// chosen per request by `faithfulness::auto`.
    Auto,
}

impl Method {
    pub const ALL: [Method; 23] = [
        Method::GradCam,
        Method::HiResCam,
        Method::GradCamElementWise,
        Method::GradCamPlusPlus,
        Method::XGradCam,
        Method::LayerCam,
        Method::EigenCam,
        Method::EigenGradCam,
        Method::AblationCam,
        Method::ScoreCam,
        Method::Fem,
        Method::RandomCam,
        Method::FinerCam,
        Method::ShapleyCam,
        Method::RefineCam,
        Method::KpcaCam,
        Method::FullGrad,
        Method::SobelCam,
        Method::GuidedBackprop,
        Method::GuidedGradCam,
        Method::Sess,
        Method::Dff,
        Method::Auto,
    ];

    /// The name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::HiResCam => "hirescam",
            Method::GradCamElementWise => "gradcam-elementwise",
            Method::GradCamPlusPlus => "gradcam-plusplus",
            Method::XGradCam => "xgradcam",
            Method::LayerCam => "layercam",
            Method::EigenCam => "eigencam",
            Method::EigenGradCam => "eigengradcam",
            Method::AblationCam => "ablationcam",
            Method::ScoreCam => "scorecam",
            Method::Fem => "fem",
            Method::RandomCam => "randomcam",
            Method::FinerCam => "finercam",
            Method::ShapleyCam => "shapleycam",
            Method::RefineCam => "refinecam",
            Method::KpcaCam => "kpcacam",
            Method::FullGrad => "fullgrad",
            Method::SobelCam => "sobelcam",
            Method::GuidedBackprop => "guided-backprop",
            Method::GuidedGradCam => "guided-gradcam",
            Method::Sess => "sess",
            Method::Dff => "dff",
            Method::Auto => "auto",
        }
    }

    /// pytorch-grad-cam's class.
    pub fn reference_class(self) -> &'static str {
        match self {
            Method::GradCam => "GradCAM",
            Method::HiResCam => "HiResCAM",
            Method::GradCamElementWise => "GradCAMElementWise",
            Method::GradCamPlusPlus => "GradCAMPlusPlus",
            Method::XGradCam => "XGradCAM",
            Method::LayerCam => "LayerCAM",
            Method::EigenCam => "EigenCAM",
            Method::EigenGradCam => "EigenGradCAM",
            Method::AblationCam => "AblationCAM",
            Method::ScoreCam => "ScoreCAM",
            Method::Fem => "FEM",
            Method::RandomCam => "RandomCAM",
            Method::FinerCam => "FinerCAM",
            Method::ShapleyCam => "ShapleyCAM",
            Method::RefineCam => "RefineCAM",
            Method::KpcaCam => "KPCA_CAM",
            Method::FullGrad => "FullGrad",
            Method::SobelCam => "sobel_cam",
            Method::GuidedBackprop => "GuidedBackpropReLUModel",
            Method::GuidedGradCam => "GuidedBackpropReLUModel x GradCAM",
            Method::Sess => "SESS",
            Method::Dff => "DeepFeatureFactorization",
            Method::Auto => "best one-pass CAM by pytorch_grad_cam.metrics",
        }
    }

    /// Whether the method reads the gradient at the layer (a backward pass per target).
    /// RandomCAM does not: pytorch-grad-cam runs a backward pass for it, and ignores it.
    /// RefineCAM and SESS: as their base method does (GradCAM++ and Grad-CAM by default:
    /// yes).
    pub fn uses_gradients(self) -> bool {
        !matches!(
            self,
            Method::EigenCam
                | Method::AblationCam
                | Method::ScoreCam
                | Method::Fem
                | Method::RandomCam
                | Method::KpcaCam
                | Method::SobelCam
                | Method::Dff
        )
    }

    /// What its forward pass must give at the layer. A map that thresholds or sorts the
    /// layer's activations (FEM's mean + 2 std) needs them as the reference computes them,
    /// not merely close: float rounding can flip a channel in or out.
    pub fn forward_needs(self) -> Needs {
        match self {
            // KPCA-CAM: the default sigmoid kernel of these large activations is tanh far
            // into saturation, and the eigenvector amplifies what rounding is left:
            // resnet50 at layer3 on noise.png was 6.4e-5 of the map off on the fast path,
            // 1.9e-6 on the exact one (tests/core/methods_parity.rs).
            Method::Fem | Method::KpcaCam | Method::Dff => Needs::ExactOutputs,
            m if m.uses_gradients() => Needs::Gradients,
            _ => Needs::Outputs,
        }
    }

    /// Whether `eigen_smooth` changes its map (EigenCAM and EigenGradCAM always project;
    /// FEM, AblationCAM and ScoreCAM ignore it, as pytorch-grad-cam does).
    pub fn smoothable(self) -> bool {
        (self.uses_gradients() || self == Method::RandomCam)
            && !matches!(self, Method::EigenGradCam | Method::GuidedBackprop)
    }

    /// Whether `aug_smooth` applies: FinerCAM's and RefineCAM's `forward` take no such
    /// argument in pytorch-grad-cam, and `sobel_cam` is no CAM, so there is no map to
    /// reproduce; it is ignored there.
    pub fn augmentable(self) -> bool {
        !matches!(
            self,
            Method::FinerCam
                | Method::RefineCam
                | Method::SobelCam
                | Method::GuidedBackprop
                | Method::Sess
                | Method::Dff
                | Method::Auto
        )
    }

    /// Whether RefineCAM may multiply its maps and SESS fuse them (`base_method`): every
    /// method made of one layer's map at a time (pytorch-grad-cam's `BaseCAM`
    /// subclasses), not FinerCAM (another target), RefineCAM or SESS themselves, nor
    /// FullGrad (no layer).
    pub fn refinable(self) -> bool {
        !matches!(
            self,
            Method::FinerCam
                | Method::RefineCam
                | Method::FullGrad
                | Method::SobelCam
                | Method::GuidedBackprop
                | Method::GuidedGradCam
                | Method::Sess
                | Method::Dff
                | Method::Auto
        )
    }

    /// Whether `layer` chooses what it explains: FullGrad takes every bias layer instead
    /// (pytorch-grad-cam warns that its `target_layers` are ignored), SobelCAM the image.
    pub fn takes_layer(self) -> bool {
        !matches!(
            self,
            Method::FullGrad | Method::SobelCam | Method::GuidedBackprop
        )
    }

    /// Whether its map has three channels (the input gradient's colours) at the input's
    /// size: the guided methods.
    pub fn colour(self) -> bool {
        matches!(self, Method::GuidedBackprop | Method::GuidedGradCam)
    }

    /// The method that makes each layer's map: RefineCAM's and SESS's base (GradCAM++ and
    /// Grad-CAM unless the request names one, as pytorch-grad-cam's defaults), else the
    /// method itself.
    pub fn per_layer(self, params: &MethodParams) -> Method {
        match self {
            Method::RefineCam => params.base_method.unwrap_or(Method::GradCamPlusPlus),
            Method::Sess => params.base_method.unwrap_or(Method::GradCam),
            _ => self,
        }
    }

    /// The request options that change its map beyond the common ones.
    pub fn options(self) -> Vec<&'static str> {
        let mut options = Vec::new();
        if self.smoothable() {
            options.push("eigen_smooth");
        }
        if self.augmentable() {
            options.push("aug_smooth");
        }
        match self {
            Method::RandomCam => options.push("seed"),
            Method::FinerCam => options.extend(["comparison_categories", "finer_alpha"]),
            Method::RefineCam | Method::Sess => options.push("base_method"),
            Method::KpcaCam => options.extend(["kernel", "gamma"]),
            Method::Dff => options.extend(["n_components", "concept_top_k"]),
            Method::Auto => options.push("auto_score"),
            _ => {}
        }
        options
    }

    /// What one explanation costs, in passes through the network.
    pub fn cost(self) -> &'static str {
        match self {
            Method::EigenCam | Method::Fem | Method::RandomCam => "one forward pass",
            Method::SobelCam => "one prediction (for the classes); the edges are nearly free",
            Method::KpcaCam => {
                "one forward pass, then the kernel matrix of the layer's positions and its \
                 eigenvectors (196 x 196 at a ResNet's layer4, 784 x 784 at layer3)"
            }
            Method::ShapleyCam => {
                "one forward pass, then per target one backward pass and one through the \
                 backward's graph (the Hessian-vector product)"
            }
            Method::AblationCam => {
                "one forward pass, then the layers after the chosen one once per 32 channels"
            }
            Method::ScoreCam => "one forward pass, then one per channel of the layer",
            Method::GuidedBackprop => {
                "one forward pass with autograd from the input on, then per target one \
                 backward pass to the input through guided ReLUs"
            }
            Method::GuidedGradCam => {
                "Grad-CAM's (one forward and one backward pass per target), and guided \
                 backpropagation's (one more forward and a backward to the input per target)"
            }
            Method::FullGrad => {
                "one forward pass with autograd from the input on, then per target one \
                 backward pass to the input (about three predictions)"
            }
            Method::RefineCam => {
                "its base method's (GradCAM++ by default: one forward and one backward pass \
                 per target), all layers from the same passes"
            }
            Method::Dff => {
                "one forward pass, then a non-negative matrix factorization of the layer's \
                 activations (scikit-learn's coordinate descent, at most 200 sweeps: about \
                 30 ms at a ResNet-50's layer4) and the classifier on each concept"
            }
            Method::Sess => {
                "its base method's (Grad-CAM by default) once per window: 122 windows of 12 \
                 scales at a 224 x 224 input, about 120 times Grad-CAM's cost; bounded by the \
                 request timeout"
            }
            Method::Auto => {
                "one forward and one backward pass, then `auto_score` of each distinct \
                 candidate map (confidence_change: one image each, scored in one batch)"
            }
            _ => "one forward and one backward pass per target",
        }
    }

    /// What `GET /model` says of it; `layers`: where it runs, when not at every layer.
    pub fn info(self, layers: Option<Vec<String>>) -> MethodInfo {
        MethodInfo {
            name: self.name().to_string(),
            reference: self.reference_class().to_string(),
            takes_layer: self.takes_layer(),
            channels: if self.colour() { 3 } else { 1 },
            gradient: self.uses_gradients(),
            cost: self.cost().to_string(),
            options: self.options().into_iter().map(String::from).collect(),
            layers,
        }
    }

    /// The names a request may give it: its name, and `gradcam++` for GradCAM++.
    pub fn spellings(self) -> impl Iterator<Item = &'static str> {
        let alias = (self == Method::GradCamPlusPlus).then_some("gradcam++");
        std::iter::once(self.name()).chain(alias)
    }

    /// Every accepted name, for error messages.
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.into_iter().flat_map(Method::spellings).collect();
        names.join(", ")
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.spellings().any(|name| name == s))
            .ok_or_else(|| format!("unknown method; the methods are {}", Self::names()))
    }
}

impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The options only some methods take (pytorch-grad-cam's per-method constructor and
/// `forward` arguments); the other methods ignore them.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodParams {
    /// RandomCAM: each map's weights are NumPy's draws after `np.random.seed(seed)`.
    pub seed: u32,
    /// FinerCAM: the classes it compares the target with, as positions in the classes
    /// sorted by how close their logit is to the target's (0 is the target itself).
    pub comparison_categories: Vec<usize>,
    /// FinerCAM's `alpha`: how much of each compared class's logit is subtracted.
    pub finer_alpha: f32,
    /// RefineCAM's and SESS's base method (`Method::refinable`); None: each one's default
    /// (`Method::per_layer`).
    pub base_method: Option<Method>,
    /// KPCA-CAM's kernel and its coefficient (None: 1 / the layer's channels).
    pub kernel: Kernel,
    pub gamma: Option<f64>,
    /// Deep Feature Factorization: how many concepts, and how many classes each lists.
    pub n_components: usize,
    pub concept_top_k: usize,
}

/// `run_dff_on_image`'s defaults: five concepts, two classes each.
const DEFAULT_N_COMPONENTS: usize = 5;
const DEFAULT_CONCEPT_TOP_K: usize = 2;

/// FinerCAM's default comparisons: the three classes scored closest to the target.
const DEFAULT_COMPARISON_CATEGORIES: [usize; 3] = [1, 2, 3];

impl Default for MethodParams {
    fn default() -> Self {
        MethodParams {
            seed: 0,
            comparison_categories: DEFAULT_COMPARISON_CATEGORIES.to_vec(),
            finer_alpha: 1.0,
            base_method: None,
            kernel: Kernel::default(),
            gamma: None,
            n_components: DEFAULT_N_COMPONENTS,
            concept_top_k: DEFAULT_CONCEPT_TOP_K,
        }
    }
}

/// A method the loaded model can run, as `GET /model` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "gradcam", "reference": "GradCAM", "takes_layer": true,
    "channels": 1, "gradient": true, "cost": "one forward and one backward pass per target",
    "options": ["eigen_smooth", "aug_smooth"]}))]
pub struct MethodInfo {
    /// The `method` option's value.
    pub name: String,
    /// The pytorch-grad-cam 1.5.7 class whose maps it reproduces.
    pub reference: String,
    /// Whether `layer` applies.
    pub takes_layer: bool,
    /// The map's channels: 1, or 3 for the guided methods (`saliency.channels`).
    pub channels: usize,
    /// Whether it needs a backward pass (the gradient at the layer).
    pub gradient: bool,
    /// What an explanation costs, in passes through the network.
    pub cost: String,
    /// The request options that change its map beyond the common ones.
    pub options: Vec<String>,
    /// The layers it can run at, when not every layer of `GET /model`'s `layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_valid() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
        }
        assert_eq!("gradcam++".parse(), Ok(Method::GradCamPlusPlus));
        let e = "gradcam+".parse::<Method>().unwrap_err();
        assert!(
            e.contains("hirescam") && e.contains("gradcam++") && e.contains("fem"),
            "{e}"
        );
    }
}

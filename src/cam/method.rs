//! The CAM methods a request may choose, named as the API spells them, each with the
//! pytorch-grad-cam 1.5.7 class it reproduces.

use std::fmt;
use std::str::FromStr;

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
}

impl Method {
    pub const ALL: [Method; 11] = [
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
        }
    }

    /// Whether the method reads the gradient at the layer (a backward pass per target).
    pub fn uses_gradients(self) -> bool {
        !matches!(
            self,
            Method::EigenCam | Method::AblationCam | Method::ScoreCam | Method::Fem
        )
    }

    /// What its forward pass must give at the layer. A map that thresholds or sorts the
    /// layer's activations (FEM's mean + 2 std) needs them as the reference computes them,
    /// not merely close: float rounding can flip a channel in or out.
    pub fn forward_needs(self) -> Needs {
        match self {
            Method::Fem => Needs::ExactOutputs,
            m if m.uses_gradients() => Needs::Gradients,
            _ => Needs::Outputs,
        }
    }

    /// Whether `eigen_smooth` changes its map (EigenCAM and EigenGradCAM always project;
    /// FEM, AblationCAM and ScoreCAM ignore it, as pytorch-grad-cam does).
    pub fn smoothable(self) -> bool {
        self.uses_gradients() && self != Method::EigenGradCam
    }

    /// What one explanation costs, in passes through the network.
    pub fn cost(self) -> &'static str {
        match self {
            Method::EigenCam | Method::Fem => "one forward pass",
            Method::AblationCam => {
                "one forward pass, then the layers after the chosen one once per 32 channels"
            }
            Method::ScoreCam => "one forward pass, then one per channel of the layer",
            _ => "one forward and one backward pass per target",
        }
    }

    /// What `GET /model` says of it; `layers`: where it runs, when not at every layer.
    pub fn info(self, layers: Option<Vec<String>>) -> MethodInfo {
        let mut options = Vec::new();
        if self.smoothable() {
            options.push("eigen_smooth".to_string());
        }
        options.push("aug_smooth".to_string());
        MethodInfo {
            name: self.name().to_string(),
            reference: self.reference_class().to_string(),
            takes_layer: true,
            gradient: self.uses_gradients(),
            cost: self.cost().to_string(),
            options,
            layers,
        }
    }

    /// Every accepted name, for error messages and the spec.
    pub fn names() -> String {
        let mut names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
        names.insert(4, "gradcam++");
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
        if s == "gradcam++" {
            return Ok(Method::GradCamPlusPlus);
        }
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
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

/// A method the loaded model can run, as `GET /model` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "gradcam", "reference": "GradCAM", "takes_layer": true,
    "gradient": true, "cost": "one forward and one backward pass per target",
    "options": ["eigen_smooth", "aug_smooth"]}))]
pub struct MethodInfo {
    /// The `method` option's value.
    pub name: String,
    /// The pytorch-grad-cam 1.5.7 class whose maps it reproduces.
    pub reference: String,
    /// Whether `layer` applies.
    pub takes_layer: bool,
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

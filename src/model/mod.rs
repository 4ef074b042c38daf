//! The network behind the explanations, through one trait with two implementations: the
//! native ResNet family ([`resnet`], rebuilt in Rust from a state dict, with its fast paths)
//! and any classifier exported as TorchScript by `python -m gradcam_export`
//! ([`torchscript`]). The CAM methods, the worker and the HTTP layer see only [`Network`].
//!
//! What a method needs of a network: the output of one or more layers, the gradient of a
//! class score at them, and for the perturbation methods the logits of changed inputs or of
//! a layer's changed output. Everything else (which ops run, without autograd up to the
//! layer, in what number format) is the implementation's business.

pub mod file;
pub mod resnet;
pub mod seeded;
pub mod torchscript;

use tch::Tensor;

pub use seeded::seeded_normal;

/// A classifier whose predictions can be explained. Each model worker owns one (libtorch
/// tensors are not `Sync`).
pub trait Network: Send {
    /// The layers a request may name, in the order `GET /model` lists them.
    fn layers(&self) -> &[String];

    /// The layer explained when a request names none.
    fn default_layer(&self) -> &str;

    fn num_classes(&self) -> usize;

    /// Raw logits `[N, classes]` of normalised images `[N, 3, S, S]`, without autograd: a
    /// prediction.
    fn logits(&self, input: &Tensor) -> Result<Tensor, NetworkError>;

    /// A forward pass that keeps the output of each of `layers` (indices into
    /// [`Network::layers`]), as `needs` says; with [`Needs::Gradients`],
    /// [`Network::gradients`] can then go back to them from a score, and nothing before the
    /// earliest of them records autograd history.
    fn forward(&self, input: &Tensor, layers: &[usize], needs: Needs)
        -> Result<Pass, NetworkError>;

    /// The gradient of `score` (a scalar made from `pass.logits`) at each layer of the pass,
    /// in the layout of `pass.maps`. `keep_graph` lets another score go back through the same
    /// pass.
    fn gradients(
        &self,
        pass: &Pass,
        score: &Tensor,
        keep_graph: bool,
    ) -> Result<Vec<Tensor>, NetworkError>;

    /// ShapleyCAM: the gradient of `score` at each layer of the pass (as
    /// [`Network::gradients`] gives it) and the Hessian-vector product there, the gradient
    /// of that gradient along the layer's own output (pytorch-grad-cam's
    /// `autograd.grad(grads, activations, grad_outputs=activations)`); zero where the
    /// gradient does not depend on the output (a linear head).
    fn gradients_and_curvature(
        &self,
        pass: &Pass,
        score: &Tensor,
        keep_graph: bool,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), NetworkError>;

    /// AblationCAM: the logits of one image (`input`, `[1, 3, S, S]`) when the output of
    /// `layer` is each of `outputs` in turn (`[n, ...]`, in the layout of `Pass::raw`).
    fn logits_replacing(
        &self,
        input: &Tensor,
        layer: usize,
        outputs: &Tensor,
    ) -> Result<Tensor, NetworkError>;

    /// Where a layer's channels are in its raw output (`Pass::raw`): 1 for convolutional
    /// maps, the last dimension for tokens; None when AblationCAM cannot tell.
    fn channel_axis(&self, layer: usize) -> Option<i64>;

    /// Whether [`Network::forward_guided`] runs (guided backpropagation can be offered).
    fn reaches_relus(&self) -> bool {
        false
    }

    /// Guided backpropagation: a forward pass with autograd from the input on, every ReLU
    /// replaced by one whose backward passes only positive gradients where its input was
    /// positive (pytorch-grad-cam's `GuidedBackpropReLUModel`).
    fn forward_guided(&self, _input: &Tensor) -> Result<GuidedPass, NetworkError> {
        Err(NetworkError::Unsupported(
            "guided backpropagation replaces every ReLU of the model, which only the native \
             ResNet models allow (an exported file's operations are fixed); choose another \
             method"
                .into(),
        ))
    }

    /// Deep Feature Factorization's concept scores: the classifier applied to each row of
    /// `concepts` (`[k, C]`, vectors in the channels of `layer`'s output), as
    /// pytorch-grad-cam's `computation_on_concepts=model.fc` does. Only where the layer's
    /// channels are what the classifier reads (after pooling); elsewhere Unsupported.
    fn classify_concepts(&self, _layer: usize, _concepts: &Tensor) -> Result<Tensor, NetworkError> {
        Err(NetworkError::Unsupported(
            "this model's classifier cannot score concepts at this layer".into(),
        ))
    }

    /// Whether [`Network::forward_with_biases`] runs (FullGrad can be offered).
    fn reaches_biases(&self) -> bool {
        false
    }

    /// FullGrad: a forward pass with autograd from the input on, keeping the output of
    /// every layer with a bias (pytorch-grad-cam's: each `Conv2d` with a bias and each
    /// `BatchNorm2d`, in the order the model registers them) and that bias.
    fn forward_with_biases(&self, _input: &Tensor) -> Result<BiasPass, NetworkError> {
        Err(NetworkError::Unsupported(
            "FullGrad needs the gradient at the output of every convolution and batch norm, \
             which this model does not expose (only the native ResNet models do); choose \
             another method"
                .into(),
        ))
    }
}

/// A pass for guided backpropagation ([`Network::forward_guided`]).
pub struct GuidedPass {
    /// The input as a leaf that takes a gradient.
    pub input: Tensor,
    /// Raw logits `[N, classes]`, part of the autograd graph.
    pub logits: Tensor,
}

impl GuidedPass {
    /// The guided gradient of `score` at the input, `[N, 3, H, W]`.
    pub fn input_gradient(&self, score: &Tensor, keep_graph: bool) -> Result<Tensor, NetworkError> {
        let g = Tensor::f_run_backward(&[score], &[&self.input], keep_graph, false)?.remove(0);
        Ok(or_zeros(g, &self.input))
    }
}

/// A pass for FullGrad ([`Network::forward_with_biases`]).
pub struct BiasPass {
    /// The input as a leaf that takes a gradient.
    pub input: Tensor,
    /// Raw logits `[N, classes]`, part of the autograd graph.
    pub logits: Tensor,
    /// Each bias layer's output `[N, C, h, w]`, in the graph, with its bias `[C]` (a batch
    /// norm's as folded into its convolution: `bias - running_mean * weight / std`).
    pub outputs: Vec<Tensor>,
    pub biases: Vec<Tensor>,
}

impl BiasPass {
    /// The gradient of `score` at the input and at each bias layer's output.
    pub fn gradients(
        &self,
        score: &Tensor,
        keep_graph: bool,
    ) -> Result<(Tensor, Vec<Tensor>), NetworkError> {
        let at: Vec<&Tensor> = std::iter::once(&self.input).chain(&self.outputs).collect();
        let mut all = Tensor::f_run_backward(&[score], &at, keep_graph, false)?;
        let input = all.remove(0);
        let outputs = all
            .into_iter()
            .zip(&self.outputs)
            .map(|(g, o)| or_zeros(g, o))
            .collect();
        Ok((or_zeros(input, &self.input), outputs))
    }
}

/// What a forward pass must give at the layers it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Their outputs, up to float rounding (a network may take faster paths).
    Outputs,
    /// Their outputs as the reference computes them, for a method that thresholds them:
    /// there rounding flips a channel across the threshold (`Method::forward_needs`).
    ExactOutputs,
    /// Their outputs, as exact as the gradient at them needs, and the gradient afterwards.
    Gradients,
}

/// One forward pass, with what it kept of the layers asked for (in that order).
pub struct Pass {
    /// The layers (indices into [`Network::layers`]) the entries below belong to.
    pub layers: Vec<usize>,
    /// Raw logits `[N, classes]`, part of the autograd graph when gradients were asked for.
    pub logits: Tensor,
    /// Each layer's output as pytorch-grad-cam stores it, as a map `[N, C, h, w]` (after
    /// the layer's reshape), detached.
    pub maps: Vec<Tensor>,
    /// The same in the layer's own layout (what AblationCAM ablates), detached.
    pub raw: Vec<Tensor>,
    /// What the gradients are taken with respect to, one per layer.
    pub(crate) differentiable: Vec<Tensor>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Unsupported(String),
}

/// The gradient of `score` at each of `at` with its graph kept, and each one's
/// Hessian-vector product along `at`'s values: the gradient of `sum(gradient * at)`
/// (`at` held constant in the product), which is what `grad_outputs=at` computes.
pub(crate) fn gradients_with_hvp(
    score: &Tensor,
    at: &[Tensor],
    keep_graph: bool,
) -> Result<(Vec<Tensor>, Vec<Tensor>), NetworkError> {
    let gradients = Tensor::f_run_backward(&[score], at, true, true)?;
    let mut products = Vec::with_capacity(at.len());
    for (i, (g, a)) in gradients.iter().zip(at).enumerate() {
        // The graph goes once more through this layer's gradient after this one.
        let keep = keep_graph || i + 1 < at.len();
        let product = if g.defined() && g.requires_grad() {
            let along = (g * a.detach()).sum(tch::Kind::Float);
            Tensor::f_run_backward(&[along], &[a], keep, false)
                .map_err(|e| {
                    // torch's CPU attention, for one, has no second derivative: a refusal.
                    let why = e.to_string();
                    let first = why.lines().next().unwrap_or_default();
                    NetworkError::Unsupported(format!(
                        "ShapleyCAM needs the second derivative of what follows the layer, \
                         and libtorch has none for one of this model's operations ({first}); \
                         pytorch-grad-cam's ShapleyCAM fails on it too. Choose another method"
                    ))
                })?
                .remove(0)
        } else {
            Tensor::new()
        };
        products.push(or_zeros(product, a));
    }
    let gradients = gradients
        .into_iter()
        .zip(at)
        .map(|(g, a)| or_zeros(g, a).detach())
        .collect();
    Ok((gradients, products))
}

/// A gradient autograd left undefined (the score does not depend on `like` that way) as
/// the zeros it stands for.
pub(crate) fn or_zeros(gradient: Tensor, like: &Tensor) -> Tensor {
    if gradient.defined() {
        gradient
    } else {
        like.zeros_like()
    }
}

/// The index of each name in `layers`, or the first name that is not there.
pub fn layer_indices(network: &dyn Network, names: &[String]) -> Result<Vec<usize>, String> {
    names
        .iter()
        .map(|name| {
            network
                .layers()
                .iter()
                .position(|l| l == name)
                .ok_or_else(|| name.clone())
        })
        .collect()
}

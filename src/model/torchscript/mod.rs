//! Any image classifier exported by `python -m gradcam_export` (docs/model-format.md): one
//! TorchScript file whose `forward(x, wanted, replace_at, replacement)` returns the logits
//! and, per tap (a target layer chosen at export), the tensor to differentiate a class score
//! with respect to and the activation pytorch-grad-cam stores. The gradient is libtorch's
//! autograd from the score to that tensor: TorchScript has no hooks, and needs none.
//!
//! The parameters are frozen at load and the input needs no gradient, so nothing before the
//! earliest wanted tap records autograd history (the file makes that tap's output a fresh
//! leaf): an explanation costs about a prediction (README, "Explain any model").

pub mod metadata;

use std::path::{Path, PathBuf};

use tch::jit::{CModule, IValue};
use tch::{Kind, Tensor};

use super::{Needs, Network, NetworkError, Pass};
pub use metadata::{Metadata, Tap, LIBTORCH_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum TorchScriptError {
    #[error(
        "{0}: a TorchScript file without gradcam-serve's metadata (a plain torch.jit.script or \
         torch.jit.trace of the model has no taps): export the model with `python -m \
         gradcam_export` (or gradcam_export.export in Python; see docs/model-format.md)"
    )]
    NoMetadata(PathBuf),
    #[error("{path}: its gradcam-serve metadata is not usable: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error(
        "{path}: written by torch {written_by} (TorchScript file format {format}); this \
         server's libtorch {ours} reads formats up to {max}: export it with torch {ours} or \
         older"
    )]
    TooNew {
        path: PathBuf,
        written_by: String,
        format: u64,
        ours: &'static str,
        max: u64,
    },
    #[error(
        "{path}: this server's libtorch {ours} cannot load it{written_by}: {reason}. A file \
         written by a newer torch than {ours} may use what libtorch {ours} lacks: export it \
         with torch {ours} or older"
    )]
    Load {
        path: PathBuf,
        ours: &'static str,
        written_by: String,
        reason: String,
    },
    #[error("{path}: its metadata contradicts the model it holds: {reason}")]
    Contradiction { path: PathBuf, reason: String },
}

/// An exported model, loaded.
pub struct TorchScriptNetwork {
    module: CModule,
    metadata: Metadata,
    layers: Vec<String>,
}

impl TorchScriptNetwork {
    /// Loads an exported file, after reading its metadata, and checks the metadata against
    /// one pass of the network (class count, each tap's shape).
    pub fn load(path: &Path) -> Result<Self, TorchScriptError> {
        let archive = metadata::read_archive(path).map_err(|reason| TorchScriptError::Load {
            path: path.into(),
            ours: LIBTORCH_VERSION,
            written_by: String::new(),
            reason,
        })?;
        let metadata = match archive.metadata {
            None => return Err(TorchScriptError::NoMetadata(path.into())),
            Some(Err(reason)) => {
                return Err(TorchScriptError::BadMetadata {
                    path: path.into(),
                    reason,
                })
            }
            Some(Ok(m)) => m,
        };
        if let Some(format) = archive
            .file_format
            .filter(|&f| f > metadata::MAX_FILE_FORMAT)
        {
            return Err(TorchScriptError::TooNew {
                path: path.into(),
                written_by: metadata.torch_version.clone(),
                format,
                ours: LIBTORCH_VERSION,
                max: metadata::MAX_FILE_FORMAT,
            });
        }
        let mut module = CModule::load(path).map_err(|e| TorchScriptError::Load {
            path: path.into(),
            ours: LIBTORCH_VERSION,
            written_by: format!(" (written by torch {})", metadata.torch_version),
            reason: first_line(&e.to_string()),
        })?;
        if metadata::newer(&metadata.torch_version, LIBTORCH_VERSION) {
            tracing::warn!(
                "{} was written by torch {}, newer than this server's libtorch {}; it loaded, \
                 and its outputs were checked",
                path.display(),
                metadata.torch_version,
                LIBTORCH_VERSION
            );
        }
        module.set_eval();
        // Frozen parameters: nothing before the wanted tap records autograd history, and no
        // gradient flows into the weights.
        let parameters = module
            .named_parameters()
            .map_err(|e| TorchScriptError::Load {
                path: path.into(),
                ours: LIBTORCH_VERSION,
                written_by: String::new(),
                reason: e.to_string(),
            })?;
        for (_, p) in parameters {
            let _ = p.set_requires_grad(false);
        }
        let layers = metadata.taps.iter().map(|t| t.name.clone()).collect();
        let network = Self {
            module,
            metadata,
            layers,
        };
        network
            .check_outputs()
            .map_err(|reason| TorchScriptError::Contradiction {
                path: path.into(),
                reason,
            })?;
        Ok(network)
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// One pass on a blank image: the class count and each tap's shape must be what the
    /// metadata says.
    fn check_outputs(&self) -> Result<(), String> {
        let size = self.metadata.input_size as i64;
        let blank = Tensor::zeros([1, 3, size, size], (Kind::Float, tch::Device::Cpu));
        let all: Vec<usize> = (0..self.layers.len()).collect();
        let pass = self
            .forward(&blank, &all, Needs::Outputs)
            .map_err(|e| format!("a pass on a blank {size}x{size} image failed: {e}"))?;
        let classes = pass.logits.size();
        if classes != [1, self.metadata.num_classes as i64] {
            return Err(format!(
                "it says {} classes, the model's logits are {classes:?}",
                self.metadata.num_classes
            ));
        }
        for (tap, map) in self.metadata.taps.iter().zip(&pass.maps) {
            let shape = map.size();
            if shape.len() != 4 || shape[1..] != tap.shape {
                return Err(format!(
                    "tap {} says {:?}, its output is {shape:?} after its reshape",
                    tap.name, tap.shape
                ));
            }
        }
        Ok(())
    }

    /// `forward`'s arguments: the input, which taps are wanted, which (if any) to replace.
    fn run(
        &self,
        input: &Tensor,
        wanted: &[usize],
        replace: Option<(usize, &Tensor)>,
    ) -> Result<(Tensor, Vec<Tensor>, Vec<Tensor>), NetworkError> {
        // The profiling executor groups ops into differentiable subgraphs from the second
        // call on and then loses the gradient to a tensor inside one; off, per thread.
        tch::jit::f_set_graph_executor_optimize(false)?;
        let mut mask = vec![0i64; self.layers.len()];
        for &w in wanted {
            mask[w] = 1;
        }
        let (at, replacement) = match replace {
            Some((tap, t)) => (tap as i64, t.shallow_clone()),
            None => (-1, Tensor::empty([0], (Kind::Float, tch::Device::Cpu))),
        };
        let args = [
            IValue::Tensor(input.shallow_clone()),
            IValue::Tensor(Tensor::from_slice(&mask)),
            IValue::Tensor(Tensor::from(at)),
            IValue::Tensor(replacement),
        ];
        let out = self.module.forward_is(&args)?;
        let bad = |what: &str| {
            NetworkError::Unsupported(format!(
                "the exported file's forward returned {what}, not (logits, [tensors], \
                 [tensors]): is it a file gradcam_export wrote?"
            ))
        };
        let IValue::Tuple(mut parts) = out else {
            return Err(bad("something else"));
        };
        if parts.len() != 3 {
            return Err(bad(&format!("a tuple of {}", parts.len())));
        }
        let stored = tensors(parts.pop().expect("three"));
        let differentiable = tensors(parts.pop().expect("three"));
        let logits = match parts.pop() {
            Some(IValue::Tensor(t)) => t,
            _ => return Err(bad("no logits tensor")),
        };
        match (differentiable, stored) {
            (Some(d), Some(s)) if d.len() == self.layers.len() && s.len() == d.len() => {
                Ok((logits, d, s))
            }
            _ => Err(bad("tap lists of another length")),
        }
    }

    /// A tap's reshape (ViT tokens to a map, ...) applied to `t`.
    /// One tensor per layer of `pass`, in the layout of `pass.maps`.
    fn in_map_layout(&self, pass: &Pass, all: Vec<Tensor>) -> Result<Vec<Tensor>, NetworkError> {
        all.iter()
            .zip(&pass.layers)
            .map(|(t, &l)| tch::no_grad(|| self.reshape(l, t)))
            .collect()
    }

    fn reshape(&self, tap: usize, t: &Tensor) -> Result<Tensor, NetworkError> {
        if self.metadata.taps[tap].reshape == "none" {
            return Ok(t.shallow_clone());
        }
        let args = [IValue::Int(tap as i64), IValue::Tensor(t.shallow_clone())];
        match self.module.method_is("reshape", &args)? {
            IValue::Tensor(t) => Ok(t),
            _ => Err(NetworkError::Unsupported(
                "the exported file's reshape returned no tensor".into(),
            )),
        }
    }
}

fn tensors(value: IValue) -> Option<Vec<Tensor>> {
    match value {
        IValue::TensorList(list) => Some(list),
        IValue::GenericList(list) => list
            .into_iter()
            .map(|v| match v {
                IValue::Tensor(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(text)
        .to_string()
}

impl Network for TorchScriptNetwork {
    fn layers(&self) -> &[String] {
        &self.layers
    }

    fn default_layer(&self) -> &str {
        &self.metadata.default_tap
    }

    fn num_classes(&self) -> usize {
        self.metadata.num_classes
    }

    fn logits(&self, input: &Tensor) -> Result<Tensor, NetworkError> {
        tch::no_grad(|| Ok(self.run(input, &[], None)?.0))
    }

    fn forward(
        &self,
        input: &Tensor,
        layers: &[usize],
        needs: Needs,
    ) -> Result<Pass, NetworkError> {
        // Without autograd either way: the file switches it on at the first wanted tap, so
        // that nothing before it pays autograd's bookkeeping (taps.py). The file has one
        // path, the eager model's operations: its outputs are always the exact ones.
        let wanted = if needs == Needs::Gradients {
            layers
        } else {
            &[]
        };
        let (logits, differentiable, stored) = tch::no_grad(|| self.run(input, wanted, None))?;
        let mut pass = Pass {
            logits,
            layers: layers.to_vec(),
            maps: Vec::with_capacity(layers.len()),
            raw: Vec::with_capacity(layers.len()),
            differentiable: Vec::with_capacity(layers.len()),
        };
        for &l in layers {
            // `stored` holds the values after any in-place op that followed the layer.
            let raw = stored[l].detach();
            pass.maps.push(tch::no_grad(|| self.reshape(l, &raw))?);
            pass.raw.push(raw);
            pass.differentiable.push(differentiable[l].shallow_clone());
        }
        Ok(pass)
    }

    fn gradients(
        &self,
        pass: &Pass,
        score: &Tensor,
        keep_graph: bool,
    ) -> Result<Vec<Tensor>, NetworkError> {
        let found = Tensor::f_run_backward(&[score], &pass.differentiable, keep_graph, false)?;
        // A layer the score does not depend on has no gradient: zero.
        let found = found
            .into_iter()
            .zip(&pass.differentiable)
            .map(|(g, at)| super::or_zeros(g, at))
            .collect();
        self.in_map_layout(pass, found)
    }

    fn gradients_and_curvature(
        &self,
        pass: &Pass,
        score: &Tensor,
        keep_graph: bool,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), NetworkError> {
        let (gradients, products) =
            super::gradients_with_hvp(score, &pass.differentiable, keep_graph)?;
        Ok((
            self.in_map_layout(pass, gradients)?,
            self.in_map_layout(pass, products)?,
        ))
    }

    /// Only what follows the layer where the file has it (`tail`); else the whole network
    /// on the image repeated, with the layer's output replaced (pytorch-grad-cam's cost).
    fn logits_replacing(
        &self,
        input: &Tensor,
        layer: usize,
        outputs: &Tensor,
    ) -> Result<Tensor, NetworkError> {
        tch::no_grad(|| {
            if self.metadata.taps[layer].tail {
                tch::jit::f_set_graph_executor_optimize(false)?;
                let args = [IValue::Int(layer as i64), IValue::Tensor(outputs.copy())];
                return match self.module.method_is("tail", &args)? {
                    IValue::Tensor(t) => Ok(t),
                    _ => Err(NetworkError::Unsupported(
                        "the exported file's tail returned no tensor".into(),
                    )),
                };
            }
            let n = outputs.size()[0];
            let repeated = input.repeat([n, 1, 1, 1]);
            Ok(self.run(&repeated, &[], Some((layer, outputs)))?.0)
        })
    }

    fn channel_axis(&self, layer: usize) -> Option<i64> {
        self.metadata.taps[layer].channel_axis
    }
}

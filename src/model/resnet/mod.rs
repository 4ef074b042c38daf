//! The torchvision ResNet family (resnet18 .. resnet152, wide_resnet, resnext), written out
//! block by block so that any block's output (the Grad-CAM target) is within reach.
//!
//! `tch::vision::resnet` is one opaque closure, so a stage's output would be out of reach.
//! The architecture is read from a state dict's tensor names and shapes (basic or
//! bottleneck blocks, blocks per stage, width, groups, class count), and the tensors keep
//! torchvision's names (`layer4.0.downsample.1.running_var`, `fc.weight`, ...), so a
//! torchvision or timm state dict saved as safetensors loads as is. Inference only: batch
//! norm uses its running statistics, and can be folded into the convolution before it.

mod architecture;
mod blocks;
mod guided;
mod onednn;
mod random;

use std::cell::OnceCell;
use std::collections::HashMap;

use tch::{Kind, Tensor};

pub use architecture::{known_architectures, Architecture, BlockKind, Layer, ModelError};
use blocks::{BatchNorm, Block, ConvBn};
pub use random::random_tensors;

use super::{BiasPass, GuidedPass, Needs, Network, NetworkError, Pass};
use crate::fused::Post;

pub struct ResNet {
    architecture: Architecture,
    stem: ConvBn,
    /// layer1.0 .. layer4.N, in network order.
    blocks: Vec<Block>,
    fc_weight: Tensor,
    fc_bias: Tensor,
    /// The no-grad trunk runs fused oneDNN convolutions (`use_fused_convolutions`).
    fused: bool,
    /// The layers a request may name (`Architecture::layers`), and the block each one's
    /// output comes from.
    layer_names: Vec<String>,
    layer_blocks: Vec<usize>,
}

impl ResNet {
    /// Builds the network from named tensors: the architecture is read from them, must
    /// equal `expected` when given, and then every tensor it needs must be there with its
    /// shape, and nothing else (another architecture's file).
    pub fn from_tensors(
        tensors: Vec<(String, Tensor)>,
        expected: Option<&str>,
    ) -> Result<Self, ModelError> {
        let mut map: HashMap<String, Tensor> = tensors
            .into_iter()
            .filter(|(name, _)| !name.ends_with("num_batches_tracked"))
            .collect();
        let shapes = map.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        let architecture = Architecture::infer(&shapes)?;
        let name = architecture.name();
        if let Some(expected) = expected {
            Architecture::named(expected, architecture.num_classes)?;
            if expected != name {
                return Err(ModelError::ArchitectureMismatch {
                    expected: expected.to_string(),
                    found: name,
                });
            }
        }
        let mut checked = HashMap::new();
        for (tensor, shape) in architecture.expected_tensors() {
            let t = map
                .remove(&tensor)
                .ok_or_else(|| ModelError::MissingTensor(tensor.clone()))?;
            if t.size() != shape {
                return Err(ModelError::WrongShape {
                    name: tensor,
                    architecture: name,
                    expected: shape,
                    found: t.size(),
                });
            }
            // Half-precision files are fine; the network runs in f32.
            let t = t.to_kind(Kind::Float).set_requires_grad(false);
            checked.insert(tensor, t);
        }
        if let Some(extra) = map.keys().min() {
            return Err(ModelError::UnexpectedTensor {
                name: extra.clone(),
                architecture: name,
                count: map.len(),
            });
        }
        Ok(Self::assemble(architecture, &mut checked))
    }

    fn assemble(architecture: Architecture, t: &mut HashMap<String, Tensor>) -> Self {
        let mut take = |name: String| t.remove(&name).expect("checked by from_tensors");
        let mut conv_bn = |conv: &str, bn: &str, stride: i64, padding: i64, groups: i64| ConvBn {
            weight: take(format!("{conv}.weight")),
            bn: BatchNorm {
                weight: take(format!("{bn}.weight")),
                bias: take(format!("{bn}.bias")),
                running_mean: take(format!("{bn}.running_mean")),
                running_var: take(format!("{bn}.running_var")),
            },
            plain_weight: OnceCell::new(),
            folded: None,
            stride,
            padding,
            groups,
        };
        let stem = conv_bn("conv1", "bn1", 2, 3, 1);
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, &count) in architecture.blocks.iter().enumerate() {
            let c_out = architecture.channels(stage);
            for b in 0..count {
                let p = format!("layer{}.{b}", stage + 1);
                let stride = if b == 0 && stage > 0 { 2 } else { 1 };
                let mut conv = |i: usize, stride: i64, padding: i64, groups: i64| {
                    conv_bn(
                        &format!("{p}.conv{i}"),
                        &format!("{p}.bn{i}"),
                        stride,
                        padding,
                        groups,
                    )
                };
                // torchvision's ResNet v1.5: a bottleneck's stride sits on its 3x3.
                let convs = match architecture.block {
                    BlockKind::Basic => vec![conv(1, stride, 1, 1), conv(2, 1, 1, 1)],
                    BlockKind::Bottleneck => vec![
                        conv(1, 1, 0, 1),
                        conv(2, stride, 1, architecture.groups),
                        conv(3, 1, 0, 1),
                    ],
                };
                let downsample = (b == 0 && (stage > 0 || c_in != c_out)).then(|| {
                    let (c, n) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    conv_bn(&c, &n, stride, 0, 1)
                });
                blocks.push(Block { convs, downsample });
                c_in = c_out;
            }
        }
        let fc_weight = take("fc.weight".into());
        let fc_bias = take("fc.bias".into());
        let layers = architecture.layers();
        let layer_blocks = layers
            .iter()
            .map(|&l| architecture.block_index(l).expect("its own layers"))
            .collect();
        ResNet {
            layer_names: layers.iter().map(Layer::to_string).collect(),
            layer_blocks,
            architecture,
            stem,
            blocks,
            fc_weight,
            fc_bias,
            fused: false,
        }
    }

    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// conv1 up to and including block `last` (an index into the blocks in network order),
    /// without autograd, on the fast path: [N, 3, H, W] normalised images to that block's
    /// output, plain and contiguous, in f32 whatever the fast path's precision. Equal to
    /// [`ResNet::features_exact`] up to float
    /// rounding (about 1e-6 relative), which is enough where only linear operations follow
    /// (the head, for layer4), but not where a ReLU that a gradient goes back through
    /// follows: an activation a rounding away from zero can flip that ReLU's mask and move
    /// an earlier layer's map by up to 3e-4 of its maximum (measured; see tests/core/parity.rs).
    pub fn features(&self, x: &Tensor, last: usize) -> Tensor {
        if self.fused {
            return tch::no_grad(|| {
                let x = x.to_kind(self.fast_onednn_kind().expect("checked when fused"));
                let x = self.stem.fused().forward(&x, Post::Relu);
                let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
                for block in &self.blocks[..=last] {
                    x = block.forward_fused(x);
                }
                x.to_kind(Kind::Float).contiguous()
            });
        }
        tch::no_grad(|| {
            let onednn = self
                .stem
                .folded
                .as_ref()
                .is_some_and(|f| f.weight.is_mkldnn());
            let x = if onednn {
                x.g_to_mkldnn(None)
            } else {
                x.shallow_clone()
            };
            let mut x = self.stem.forward(&x);
            let _ = x.relu_();
            let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
            for block in &self.blocks[..=last] {
                x = block.forward(&x);
            }
            if onednn {
                x.to_dense(None, false)
            } else {
                x.contiguous()
            }
        })
    }

    /// The output of block `last`, to be differentiated or thresholded: from the fast path
    /// when `last` is the last block (only the head follows, which is linear), else from the
    /// exact one, since the gradient then goes back through ReLUs whose masks the fast path's
    /// rounding could flip (see [`ResNet::features`]), and FEM's threshold could flip a
    /// channel the same way.
    pub fn features_for_gradient(&self, x: &Tensor, last: usize) -> Tensor {
        if last + 1 == self.blocks.len() {
            self.features(x, last)
        } else {
            self.features_exact(x, last)
        }
    }

    /// The same on the unfolded weights: torchvision's operations, equal to
    /// pytorch-grad-cam's activations to the bit.
    pub fn features_exact(&self, x: &Tensor, last: usize) -> Tensor {
        tch::no_grad(|| {
            let x = self.stem.forward_exact(x).relu();
            let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
            for block in &self.blocks[..=last] {
                x = block.forward_exact(&x);
            }
            x.contiguous()
        })
    }

    /// conv1 .. layer4: the last block's output [N, C, H/32, W/32].
    pub fn trunk(&self, x: &Tensor) -> Tensor {
        self.features(x, self.blocks.len() - 1)
    }

    /// The blocks after block `block`, then the head, without autograd: that block's
    /// output ([N, C, h, w], plain) to raw logits. AblationCAM reruns only this part of the
    /// network for its ablated copies of the layer's output.
    pub fn logits_after(&self, x: &Tensor, block: usize) -> Tensor {
        tch::no_grad(|| {
            let rest = &self.blocks[block + 1..];
            // The fast path's blocks on f32 oneDNN tensors; anything else (no oneDNN
            // weights, bf16 ones) runs the exact f32 blocks on plain tensors.
            let onednn = self.fast_onednn_kind() == Some(Kind::Float) && !rest.is_empty();
            let mut x = if onednn {
                x.g_to_mkldnn(None)
            } else {
                x.shallow_clone()
            };
            for b in rest {
                x = if onednn {
                    b.forward(&x)
                } else {
                    b.forward_exact(&x)
                };
            }
            if onednn {
                x = x.to_dense(None, false);
            }
            self.head(&x)
        })
    }

    /// Blocks `first..` on plain tensors with autograd: the output of the last block, and
    /// the output of each block in `keep` (indices, in any order) as it was computed.
    pub fn blocks_with_grad(
        &self,
        x: &Tensor,
        first: usize,
        keep: &[usize],
    ) -> (Tensor, HashMap<usize, Tensor>) {
        let mut kept = HashMap::new();
        let mut x = x.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate().skip(first) {
            x = block.forward_exact(&x);
            if keep.contains(&i) {
                kept.insert(i, x.shallow_clone());
            }
        }
        (x, kept)
    }

    /// Number of blocks, layer1.0 .. layer4.N.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Global average pool and the classifier: layer4 activation to raw logits.
    pub fn head(&self, activation: &Tensor) -> Tensor {
        // adaptive_avg_pool2d as torchvision's head has it (not a mean): the same sums, so
        // the same logits and gradients to the bit.
        activation
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .linear(&self.fc_weight, Some(&self.fc_bias))
    }

    /// The classifier's weight row for each class: [classes, channels].
    pub fn fc_weight(&self) -> &Tensor {
        &self.fc_weight
    }
}

impl Network for ResNet {
    fn layers(&self) -> &[String] {
        &self.layer_names
    }

    fn default_layer(&self) -> &str {
        "layer4"
    }

    fn num_classes(&self) -> usize {
        self.architecture.num_classes
    }

    fn logits(&self, input: &Tensor) -> Result<Tensor, NetworkError> {
        Ok(tch::no_grad(|| self.head(&self.trunk(input))))
    }

    /// Without autograd up to the earliest block asked for (on the fast path when that
    /// block is the last one, or when no gradient is asked for: see `features`), whose
    /// output becomes the only leaf that needs a gradient; then the later blocks and the
    /// head with autograd, keeping each block asked for. At layer4 an explanation thus
    /// costs a forward pass plus a few microseconds.
    fn forward(
        &self,
        input: &Tensor,
        layers: &[usize],
        needs: Needs,
    ) -> Result<Pass, NetworkError> {
        let blocks: Vec<usize> = layers.iter().map(|&l| self.layer_blocks[l]).collect();
        let first = *blocks.iter().min().expect("at least one layer");
        let gradients = needs == Needs::Gradients;
        let prefix = match needs {
            Needs::Outputs => self.features(input, first),
            // A threshold on the activations is as sensitive to the fast path's rounding
            // before the last block as the ReLU masks on the way back are.
            Needs::ExactOutputs | Needs::Gradients => self.features_for_gradient(input, first),
        };
        let leaf = prefix.detach().set_requires_grad(gradients);
        let run = || {
            let (last, mut kept) = self.blocks_with_grad(&leaf, first + 1, &blocks);
            kept.insert(first, leaf.shallow_clone());
            (self.head(&last), kept)
        };
        let (logits, kept) = if gradients { run() } else { tch::no_grad(run) };
        let differentiable: Vec<Tensor> = blocks.iter().map(|b| kept[b].shallow_clone()).collect();
        let maps: Vec<Tensor> = differentiable.iter().map(Tensor::detach).collect();
        Ok(Pass {
            layers: layers.to_vec(),
            logits,
            raw: maps.iter().map(Tensor::shallow_clone).collect(),
            maps,
            differentiable,
        })
    }

    fn gradients(
        &self,
        pass: &Pass,
        score: &Tensor,
        keep_graph: bool,
    ) -> Result<Vec<Tensor>, NetworkError> {
        Ok(Tensor::f_run_backward(
            &[score],
            &pass.differentiable,
            keep_graph,
            false,
        )?)
    }

    fn gradients_and_curvature(
        &self,
        pass: &Pass,
        score: &Tensor,
        keep_graph: bool,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), NetworkError> {
        super::gradients_with_hvp(score, &pass.differentiable, keep_graph)
    }

    /// Only the blocks after the layer's and the head run, on the copies.
    fn logits_replacing(
        &self,
        _input: &Tensor,
        layer: usize,
        outputs: &Tensor,
    ) -> Result<Tensor, NetworkError> {
        Ok(self.logits_after(outputs, self.layer_blocks[layer]))
    }

    fn reaches_biases(&self) -> bool {
        true
    }

    /// The exact path from the input on (FullGrad's gradients go back through every ReLU).
    /// torchvision's convolutions have no bias: the bias layers are the batch norms.
    fn forward_with_biases(&self, input: &Tensor) -> Result<BiasPass, NetworkError> {
        let input = input.detach().set_requires_grad(true);
        let stem = self.stem.forward_exact(&input);
        let mut outputs = vec![stem.shallow_clone()];
        let mut x = stem
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.blocks {
            x = block.forward_exact_keeping(&x, &mut outputs);
        }
        let logits = self.head(&x);
        let biases = tch::no_grad(|| {
            std::iter::once(&self.stem)
                .chain(self.blocks.iter().flat_map(Block::convs))
                .map(ConvBn::effective_bias)
                .collect()
        });
        Ok(BiasPass {
            input,
            logits,
            outputs,
            biases,
        })
    }

    fn reaches_relus(&self) -> bool {
        true
    }

    /// The exact path from the input on, every ReLU (the stem's, and each block's, the
    /// last after the shortcut add included: torchvision's `nn.ReLU` modules) guided.
    fn forward_guided(&self, input: &Tensor) -> Result<GuidedPass, NetworkError> {
        let guided = |t: &Tensor| guided::guided_relu(t).expect("libtorch runs the guided ReLU");
        let input = input.detach().set_requires_grad(true);
        let stem = guided::guided_relu(&self.stem.forward_exact(&input))?;
        let mut x = stem.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.blocks {
            x = block.forward_exact_with(&x, &mut Vec::new(), &guided);
        }
        let logits = self.head(&x);
        Ok(GuidedPass { input, logits })
    }

    fn channel_axis(&self, _layer: usize) -> Option<i64> {
        Some(1)
    }

    /// `fc` on the concepts, where `layer` is the last block's output (what the head pools).
    fn classify_concepts(&self, layer: usize, concepts: &Tensor) -> Result<Tensor, NetworkError> {
        if self.layer_blocks[layer] + 1 != self.blocks.len() {
            return Err(NetworkError::Unsupported(format!(
                "the classifier reads {}'s channels, not {}'s",
                self.default_layer(),
                self.layer_names[layer]
            )));
        }
        Ok(tch::no_grad(|| {
            concepts.linear(&self.fc_weight, Some(&self.fc_bias))
        }))
    }
}

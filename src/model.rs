//! The torchvision ResNet family (resnet18 .. resnet152, wide_resnet, resnext), written out
//! block by block so that any block's output (the Grad-CAM target) is within reach.
//!
//! `tch::vision::resnet` is one opaque closure, so a stage's output would be out of reach.
//! The architecture is read from a state dict's tensor names and shapes (basic or
//! bottleneck blocks, blocks per stage, width, groups, class count), and the tensors keep
//! torchvision's names (`layer4.0.downsample.1.running_var`, `fc.weight`, ...), so a
//! torchvision or timm state dict saved as safetensors loads as is. Inference only: batch
//! norm uses its running statistics, and can be folded into the convolution before it.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use tch::{Kind, Tensor};

use crate::fused::{self, Post};
use crate::precision::Precision;

const BN_EPS: f64 = 1e-5;
/// Planes of layer1..layer4 (torchvision's `_make_layer(block, 64 * 2^i, ...)`).
const PLANES: [i64; 4] = [64, 128, 256, 512];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (resnet18, resnet34).
    Basic,
    /// 1x1, 3x3 (strided, grouped), 1x1 with 4x expansion (resnet50 and larger).
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// What a ResNet is made of: everything torchvision's `ResNet(block, layers, num_classes,
/// groups, width_per_group)` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture {
    pub block: BlockKind,
    /// Blocks in layer1..layer4.
    pub blocks: [usize; 4],
    pub groups: i64,
    pub width_per_group: i64,
    pub num_classes: usize,
}

/// torchvision's constructors: (name, block, blocks per stage, groups, width per group).
#[rustfmt::skip]
const KNOWN: [(&str, BlockKind, [usize; 4], i64, i64); 10] = [
    ("resnet18",         BlockKind::Basic,      [2, 2, 2, 2],  1,  64),
    ("resnet34",         BlockKind::Basic,      [3, 4, 6, 3],  1,  64),
    ("resnet50",         BlockKind::Bottleneck, [3, 4, 6, 3],  1,  64),
    ("resnet101",        BlockKind::Bottleneck, [3, 4, 23, 3], 1,  64),
    ("resnet152",        BlockKind::Bottleneck, [3, 8, 36, 3], 1,  64),
    ("wide_resnet50_2",  BlockKind::Bottleneck, [3, 4, 6, 3],  1,  128),
    ("wide_resnet101_2", BlockKind::Bottleneck, [3, 4, 23, 3], 1,  128),
    ("resnext50_32x4d",  BlockKind::Bottleneck, [3, 4, 6, 3],  32, 4),
    ("resnext101_32x8d", BlockKind::Bottleneck, [3, 4, 23, 3], 32, 8),
    ("resnext101_64x4d", BlockKind::Bottleneck, [3, 4, 23, 3], 64, 4),
];

/// The names of torchvision's ResNet-family constructors this crate reads.
pub fn known_architectures() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().map(|k| k.0)
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("no tensor `{0}`: is it a torchvision ResNet-family state dict?")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, this {architecture} needs {expected:?}")]
    WrongShape {
        name: String,
        architecture: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error(
        "{count} tensor(s) that a {architecture} does not have, e.g. `{name}`: is it another \
         architecture?"
    )]
    UnexpectedTensor {
        name: String,
        architecture: String,
        count: usize,
    },
    #[error("the weights are a {found}, but the `architecture` setting says {expected}")]
    ArchitectureMismatch { expected: String, found: String },
    #[error(
        "unknown architecture `{0}`: the ResNet family names are resnet18, resnet34, resnet50, \
         resnet101, resnet152, wide_resnet50_2, wide_resnet101_2, resnext50_32x4d, \
         resnext101_32x8d, resnext101_64x4d"
    )]
    UnknownArchitecture(String),
}

impl Architecture {
    /// torchvision's architecture of that name, with `num_classes` outputs.
    pub fn named(name: &str, num_classes: usize) -> Result<Self, ModelError> {
        KNOWN
            .iter()
            .find(|k| k.0 == name)
            .map(
                |&(_, block, blocks, groups, width_per_group)| Architecture {
                    block,
                    blocks,
                    groups,
                    width_per_group,
                    num_classes,
                },
            )
            .ok_or_else(|| ModelError::UnknownArchitecture(name.to_string()))
    }

    /// torchvision's name for it (`resnext50_32x4d`), or a description of an unusual one.
    pub fn name(&self) -> String {
        let known = KNOWN.iter().find(|&&(_, block, blocks, groups, width)| {
            (block, blocks, groups, width)
                == (self.block, self.blocks, self.groups, self.width_per_group)
        });
        match known {
            Some(k) => k.0.to_string(),
            None => {
                let [a, b, c, d] = self.blocks;
                let kind = match self.block {
                    BlockKind::Basic => "basic",
                    BlockKind::Bottleneck => "bottleneck",
                };
                format!(
                    "resnet-{kind}-{a}-{b}-{c}-{d}-{}x{}d",
                    self.groups, self.width_per_group
                )
            }
        }
    }

    /// Reads the architecture off a state dict's tensor names and shapes. Only what
    /// decides the architecture is looked at here; [`ResNet::from_tensors`] then checks
    /// every tensor against it.
    pub fn infer(shapes: &HashMap<String, Vec<i64>>) -> Result<Self, ModelError> {
        let shape = |name: &str| {
            shapes
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
        };
        let fc = shape("fc.weight")?;
        let block = if shapes.contains_key("layer1.0.conv3.weight") {
            BlockKind::Bottleneck
        } else {
            BlockKind::Basic
        };
        let mut blocks = [0; 4];
        for (stage, count) in blocks.iter_mut().enumerate() {
            while shapes.contains_key(&format!("layer{}.{}.conv1.weight", stage + 1, *count)) {
                *count += 1;
            }
            if *count == 0 {
                return Err(ModelError::MissingTensor(format!(
                    "layer{}.0.conv1.weight",
                    stage + 1
                )));
            }
        }
        // The first 3x3 convolution is [width, width / groups, 3, 3], width being
        // planes * width_per_group / 64 * groups (torchvision's Bottleneck).
        let conv2 = shape("layer1.0.conv2.weight")?;
        let (groups, width_per_group) = match (block, conv2.as_slice()) {
            (BlockKind::Bottleneck, &[width, per_group, _, _]) if per_group > 0 => {
                let groups = (width / per_group).max(1);
                (groups, width / groups * 64 / PLANES[0])
            }
            _ => (1, 64),
        };
        let architecture = Architecture {
            block,
            blocks,
            groups,
            width_per_group,
            num_classes: fc.first().copied().unwrap_or(0).max(0) as usize,
        };
        if architecture.num_classes == 0 {
            return Err(ModelError::WrongShape {
                name: "fc.weight".into(),
                architecture: architecture.name(),
                expected: vec![1, architecture.feature_channels()],
                found: fc.clone(),
            });
        }
        Ok(architecture)
    }

    /// Channels out of a block of `stage` (0-based).
    fn channels(&self, stage: usize) -> i64 {
        PLANES[stage] * self.block.expansion()
    }

    /// Channels of layer4's output, the classifier's input.
    pub fn feature_channels(&self) -> i64 {
        self.channels(3)
    }

    /// Every tensor name and shape a torchvision state dict of this architecture holds
    /// (without the `num_batches_tracked` counters, which inference does not use).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<i64>)> {
        let mut out = Vec::new();
        let mut conv_bn = |conv: &str, bn: &str, c_out: i64, c_in: i64, k: i64| {
            out.push((format!("{conv}.weight"), vec![c_out, c_in, k, k]));
            for p in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{bn}.{p}"), vec![c_out]));
            }
        };
        conv_bn("conv1", "bn1", 64, 3, 7);
        let mut c_in = 64;
        for (stage, &blocks) in self.blocks.iter().enumerate() {
            let planes = PLANES[stage];
            let c_out = self.channels(stage);
            for b in 0..blocks {
                let p = format!("layer{}.{b}", stage + 1);
                let conv = |i: usize| (format!("{p}.conv{i}"), format!("{p}.bn{i}"));
                match self.block {
                    BlockKind::Basic => {
                        let (c, n) = conv(1);
                        conv_bn(&c, &n, planes, c_in, 3);
                        let (c, n) = conv(2);
                        conv_bn(&c, &n, planes, planes, 3);
                    }
                    BlockKind::Bottleneck => {
                        let width = planes * self.width_per_group / 64 * self.groups;
                        let (c, n) = conv(1);
                        conv_bn(&c, &n, width, c_in, 1);
                        let (c, n) = conv(2);
                        conv_bn(&c, &n, width, width / self.groups, 3);
                        let (c, n) = conv(3);
                        conv_bn(&c, &n, c_out, width, 1);
                    }
                }
                if b == 0 && (stage > 0 || c_in != c_out) {
                    let (c, n) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    conv_bn(&c, &n, c_out, c_in, 1);
                }
                c_in = c_out;
            }
        }
        let classes = self.num_classes as i64;
        out.push(("fc.weight".into(), vec![classes, c_in]));
        out.push(("fc.bias".into(), vec![classes]));
        out
    }

    /// The layers Grad-CAM may target, in network order: `layer1` .. `layer4` (a stage's
    /// last block, pytorch-grad-cam's `model.layerN[-1]`), then each block `layerN.B`.
    pub fn layers(&self) -> Vec<Layer> {
        let stages = (1..=4).map(|stage| Layer { stage, block: None });
        let blocks = self.blocks.iter().enumerate().flat_map(|(s, &n)| {
            (0..n).map(move |b| Layer {
                stage: s + 1,
                block: Some(b),
            })
        });
        stages.chain(blocks).collect()
    }

    /// Where `layer`'s output comes from, as an index into the blocks in network order;
    /// None when this architecture has no such block.
    pub fn block_index(&self, layer: Layer) -> Option<usize> {
        let count = *self.blocks.get(layer.stage.checked_sub(1)?)?;
        let block = layer.block.unwrap_or(count - 1);
        (block < count).then(|| self.blocks[..layer.stage - 1].iter().sum::<usize>() + block)
    }
}

/// A target layer: a stage's last block (`layer3`) or one block (`layer3.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layer {
    /// 1..=4
    pub stage: usize,
    pub block: Option<usize>,
}

impl Layer {
    pub const LAST: Layer = Layer {
        stage: 4,
        block: None,
    };
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.block {
            None => write!(f, "layer{}", self.stage),
            Some(b) => write!(f, "layer{}.{b}", self.stage),
        }
    }
}

impl FromStr for Layer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a layer name (layer1 .. layer4, or a block: layer3.1)");
        let rest = s.strip_prefix("layer").ok_or_else(bad)?;
        let (stage, block) = match rest.split_once('.') {
            Some((stage, block)) => (stage, Some(block)),
            None => (rest, None),
        };
        // Only as `Display` writes them (no `layer03`, no `layer3.01`): a name is one of
        // the listed ones or refused.
        let stage = match stage {
            "1" | "2" | "3" | "4" => stage.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        let canonical = |t: &str| {
            !t.is_empty()
                && t.len() <= 3
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t == "0" || !t.starts_with('0'))
        };
        let block = match block {
            None => None,
            Some(b) if canonical(b) => Some(b.parse().map_err(|_| bad())?),
            Some(_) => return Err(bad()),
        };
        Ok(Layer { stage, block })
    }
}

impl serde::Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Layer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A convolution followed by eval-mode batch norm, as the file has them, and optionally the
/// same two folded into one convolution with a bias for the fast path.
struct ConvBn {
    /// As loaded, unfolded: with `bn` after it, these run pytorch-grad-cam's very
    /// operations. Plain, or after `use_onednn_weights` in oneDNN's blocked layout, which
    /// runs the same kernel without reordering the weight on every call.
    weight: Tensor,
    /// The plain weight again, made from the oneDNN one the first time a gradient has to
    /// flow through this convolution (autograd runs on plain tensors only). Layer4
    /// explanations never need it, so it costs no memory for them.
    plain_weight: OnceCell<Tensor>,
    bn: BatchNorm,
    /// Batch norm folded in (`fold`), the weight later perhaps in oneDNN's blocked layout
    /// (`use_onednn_weights`): used where no gradient flows and nothing after it decides
    /// a ReLU that a gradient goes back through (see `ResNet::features`).
    folded: Option<Folded>,
    stride: i64,
    padding: i64,
    groups: i64,
}

struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

struct Folded {
    /// A plain tensor, or a oneDNN (mkldnn) tensor already in the layout its kernels use.
    weight: Tensor,
    bias: Tensor,
}

impl ConvBn {
    /// Without autograd, on the folded weights when there are: oneDNN tensors in and out
    /// when those are oneDNN's.
    fn forward(&self, x: &Tensor) -> Tensor {
        let Some(folded) = &self.folded else {
            return self.forward_exact(x);
        };
        if folded.weight.is_mkldnn() {
            // Input and output stay oneDNN tensors (see `ResNet::features`).
            return x.mkldnn_convolution(
                &folded.weight,
                Some(&folded.bias),
                [self.padding, self.padding],
                [self.stride, self.stride],
                [1, 1],
                self.groups,
            );
        }
        x.conv2d(
            &folded.weight,
            Some(&folded.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.groups,
        )
    }

    /// The convolution then the batch norm, as torchvision runs them, on plain tensors;
    /// differentiable with respect to `x`.
    fn forward_exact(&self, x: &Tensor) -> Tensor {
        let bn = &self.bn;
        let y = if self.weight.is_mkldnn() && !x.requires_grad() {
            // What `conv2d` runs (oneDNN's convolution of plain tensors), minus the reorder
            // of the weight: the same values to the bit.
            x.mkldnn_convolution(
                &self.weight,
                None::<Tensor>,
                [self.padding, self.padding],
                [self.stride, self.stride],
                [1, 1],
                self.groups,
            )
        } else {
            x.conv2d(
                self.plain_weight(),
                None::<Tensor>,
                [self.stride, self.stride],
                [self.padding, self.padding],
                [1, 1],
                self.groups,
            )
        };
        y.batch_norm(
            Some(&bn.weight),
            Some(&bn.bias),
            Some(&bn.running_mean),
            Some(&bn.running_var),
            false,
            0.0,
            BN_EPS,
            false,
        )
    }

    fn plain_weight(&self) -> &Tensor {
        if !self.weight.is_mkldnn() {
            return &self.weight;
        }
        self.plain_weight
            .get_or_init(|| tch::no_grad(|| self.weight.to_dense(None, false)))
    }

    /// Eval-mode batch norm is an affine map per channel, so it folds into the
    /// convolution up to float rounding: w' = w * g / sqrt(v + eps),
    /// b' = beta - mean * g / sqrt(v + eps).
    fn fold(&mut self) {
        let bn = &self.bn;
        let scale = &bn.weight / (&bn.running_var + BN_EPS).sqrt();
        self.folded = Some(Folded {
            weight: &self.weight * scale.view([-1, 1, 1, 1]),
            bias: &bn.bias - &bn.running_mean * &scale,
        });
    }

    /// The folded convolution as a fused oneDNN one (oneDNN weights only).
    fn fused(&self) -> fused::Conv<'_> {
        let folded = self.folded.as_ref().expect("fused convolutions are folded");
        fused::Conv {
            weight: &folded.weight,
            bias: Some(&folded.bias),
            padding: self.padding,
            stride: self.stride,
            groups: self.groups,
        }
    }

    /// `weight` reordered into oneDNN's blocked layout for an input of `input` shape
    /// (the layout depends on the channels and the CPU far more than on the batch), its
    /// values in `kind` (f32, or bf16 for `Precision::Bf16`).
    fn onednn_weight(
        &self,
        weight: &Tensor,
        input: [i64; 4],
        kind: Kind,
    ) -> Result<Tensor, tch::TchError> {
        weight
            .f_to_kind(kind)?
            .f_to_mkldnn(None)?
            .f_mkldnn_reorder_conv2d_weight(
                [self.padding, self.padding],
                [self.stride, self.stride],
                [1, 1],
                self.groups,
                Some(input.as_slice()),
            )
    }

    /// Output height and width for an input of `h` x `w`.
    fn output_size(&self, h: i64, w: i64) -> (i64, i64) {
        let kernel = self.weight.size()[2];
        let out = |n: i64| (n + 2 * self.padding - kernel) / self.stride + 1;
        (out(h), out(w))
    }

    fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// A residual block: its convolutions in order (two for a basic block, three for a
/// bottleneck), a ReLU after each but the last, the shortcut added, a final ReLU.
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    /// Without autograd, in place where torchvision is (`relu(inplace=True)`, `out +=
    /// identity`): each block then allocates three tensors fewer.
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward(&y);
            if i < last {
                let _ = y.relu_();
            }
        }
        match &self.downsample {
            Some(d) => y += d.forward(x),
            None => y += x,
        };
        let _ = y.relu_();
        y
    }

    /// The same with fused oneDNN convolutions on strided tensors: the ReLUs, and the
    /// shortcut add with the final ReLU, run inside the convolutions. Writes into `x` when
    /// the shortcut is the identity, so it takes `x` by value.
    fn forward_fused(&self, x: Tensor) -> Tensor {
        let mut shortcut = match &self.downsample {
            Some(d) => d.fused().forward(&x, Post::None),
            None => x.shallow_clone(),
        };
        let (last, first) = self.convs.split_last().expect("a block has convolutions");
        let mut y = x;
        for conv in first {
            y = conv.fused().forward(&y, Post::Relu);
        }
        last.fused().forward(&y, Post::AddRelu(&mut shortcut))
    }

    /// Unfolded and out of place on plain tensors, as torchvision runs it, so that autograd
    /// can go back through it and every value equals pytorch-grad-cam's to the bit.
    fn forward_exact(&self, x: &Tensor) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward_exact(&y);
            if i < last {
                y = y.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward_exact(x),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu()
    }

    fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        self.convs.iter_mut().chain(self.downsample.as_mut())
    }

    fn convs(&self) -> impl Iterator<Item = &ConvBn> {
        self.convs.iter().chain(self.downsample.as_ref())
    }
}

pub struct ResNet {
    architecture: Architecture,
    stem: ConvBn,
    /// layer1.0 .. layer4.N, in network order.
    blocks: Vec<Block>,
    fc_weight: Tensor,
    fc_bias: Tensor,
    /// The no-grad trunk runs fused oneDNN convolutions (`use_fused_convolutions`).
    fused: bool,
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
        ResNet {
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

    fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        std::iter::once(&mut self.stem).chain(self.blocks.iter_mut().flat_map(Block::convs_mut))
    }

    /// Folds every batch norm into a copy of its convolution for the fast path (equal up
    /// to float rounding); the unfolded ones stay for the exact path.
    pub fn fold_batch_norm(&mut self) {
        tch::no_grad(|| self.convs_mut().for_each(ConvBn::fold));
    }

    /// Reorders every convolution weight (unfolded, and folded when folded) once into
    /// oneDNN's blocked layout for `input_size` images; the fast path then keeps its
    /// activations in oneDNN tensors too. Eager libtorch reorders the plain weights on
    /// every call; on 2 cores this runs a single image or a batch of 4 in about 0.9 of the
    /// time, with the same results at batch 1 to the bit.
    pub fn use_onednn_weights(&mut self, input_size: i64) -> Result<(), tch::TchError> {
        self.use_onednn_weights_in(input_size, Precision::Fp32)
    }

    /// [`ResNet::use_onednn_weights`] with the folded weights' values in `precision` (the
    /// unfolded ones, for the exact path, stay f32). Bf16 weights run only through the
    /// fused convolutions (`use_fused_convolutions`).
    pub fn use_onednn_weights_in(
        &mut self,
        input_size: i64,
        precision: Precision,
    ) -> Result<(), tch::TchError> {
        let kind = precision.kind();
        // Each convolution's input shape, in `convs_mut` order.
        let mut inputs = Vec::new();
        let (h, w) = self.stem.output_size(input_size, input_size);
        inputs.push([1, 3, input_size, input_size]);
        // After the 3x3, stride 2 max pool.
        let (mut h, mut w) = ((h + 1) / 2, (w + 1) / 2);
        let mut channels = self.stem.out_channels();
        for block in &self.blocks {
            let input = [1, channels, h, w];
            let (mut ch, mut cw, mut c) = (h, w, channels);
            for conv in &block.convs {
                inputs.push([1, c, ch, cw]);
                (ch, cw) = conv.output_size(ch, cw);
                c = conv.out_channels();
            }
            if block.downsample.is_some() {
                inputs.push(input);
            }
            (h, w, channels) = (ch, cw, c);
        }
        // Reorder everything first and swap only if all succeeded (a libtorch built
        // without oneDNN refuses the first one), so that a failure leaves the model whole.
        let reordered = tch::no_grad(|| {
            std::iter::once(&self.stem)
                .chain(self.blocks.iter().flat_map(Block::convs))
                .zip(&inputs)
                .map(|(conv, &input)| {
                    let folded = match &conv.folded {
                        Some(f) => Some(conv.onednn_weight(&f.weight, input, kind)?),
                        None => None,
                    };
                    Ok((
                        conv.onednn_weight(&conv.weight, input, Kind::Float)?,
                        folded,
                    ))
                })
                .collect::<Result<Vec<_>, tch::TchError>>()
        })?;
        for (conv, (unfolded, folded)) in self.convs_mut().zip(reordered) {
            conv.weight = unfolded;
            if let (Some(f), Some(weight)) = (conv.folded.as_mut(), folded) {
                f.weight = weight;
            }
        }
        Ok(())
    }

    /// The number type of the fast path's oneDNN weights, when it has them.
    fn fast_onednn_kind(&self) -> Option<Kind> {
        let folded = self.stem.folded.as_ref()?;
        folded.weight.is_mkldnn().then(|| folded.weight.kind())
    }

    /// Runs the no-grad trunk with fused oneDNN convolutions (see src/fused.rs): 0.82 of the
    /// time of oneDNN tensors with a separate ReLU and add (BENCHMARKS.md), the same results
    /// up to float rounding. Needs `use_onednn_weights` first; a libtorch without
    /// the fused operators is refused here, with the model left as it was.
    pub fn use_fused_convolutions(&mut self) -> Result<(), tch::TchError> {
        let Some(kind) = self.fast_onednn_kind() else {
            return Err(tch::TchError::Kind(
                "fused convolutions need the folded weights in oneDNN's layout".into(),
            ));
        };
        let probe = Tensor::zeros([1, 3, 32, 32], (kind, tch::Device::Cpu));
        let _ = tch::no_grad(|| self.stem.fused().f_forward(&probe, Post::Relu))?;
        self.fused = true;
        Ok(())
    }

    /// conv1 up to and including block `last` (an index into the blocks in network order),
    /// without autograd, on the fast path: [N, 3, H, W] normalised images to that block's
    /// output, plain and contiguous, in f32 whatever the fast path's precision. Equal to
    /// [`ResNet::features_exact`] up to float
    /// rounding (about 1e-6 relative), which is enough where only linear operations follow
    /// (the head, for layer4), but not where a ReLU that a gradient goes back through
    /// follows: an activation a rounding away from zero can flip that ReLU's mask and move
    /// an earlier layer's map by up to 3e-4 of its maximum (measured; see tests/parity.rs).
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

    /// The output of block `last`, to be differentiated: from the fast path when `last` is
    /// the last block (only the head follows, which is linear), else from the exact one,
    /// since the gradient then goes back through ReLUs whose masks the fast path's rounding
    /// could flip (see [`ResNet::features`]).
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

/// Seeded random weights of `architecture` in torchvision's layout, for running without
/// real weights (demo mode) and for tests. Batch-norm statistics are randomised too, so
/// that code which ignored them would be caught. Drawn from a generator of our own rather
/// than libtorch's global one, which any thread may reseed at any moment.
pub fn random_tensors(architecture: &Architecture, seed: u64) -> Vec<(String, Tensor)> {
    architecture
        .expected_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            let uniform = |low: f64, high: f64| seeded_uniform(&shape, seed, low, high);
            let t = if name.ends_with("running_var") {
                uniform(0.75, 1.25)
            } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                seeded_normal(&shape, seed, 0.05)
            } else if shape.len() == 4 {
                // Kaiming normal (fan_out, ReLU), as torchvision initialises convolutions.
                let fan_out = (shape[0] * shape[2] * shape[3]) as f64;
                seeded_normal(&shape, seed, (2.0 / fan_out).sqrt())
            } else if name == "fc.weight" {
                seeded_normal(&shape, seed, 0.001)
            } else {
                // The other batch-norm scales.
                uniform(0.75, 1.25)
            };
            (name, t)
        })
        .collect()
}

/// SplitMix64: a small, fast generator, identical on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seeded_uniform(shape: &[i64], seed: u64, low: f64, high: f64) -> Tensor {
    let mut rng = SplitMix64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| (low + (high - low) * rng.next_f64()) as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// Normal values with mean 0 and standard deviation `std` (Box-Muller), reproducible.
pub fn seeded_normal(shape: &[i64], seed: u64, std: f64) -> Tensor {
    let mut rng = SplitMix64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
            let u2 = rng.next_f64();
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes_of(a: &Architecture) -> HashMap<String, Vec<i64>> {
        a.expected_tensors().into_iter().collect()
    }

    #[test]
    fn every_known_architecture_is_read_back_from_its_own_tensors() {
        for name in known_architectures() {
            let a = Architecture::named(name, 17).unwrap();
            let back = Architecture::infer(&shapes_of(&a)).unwrap();
            assert_eq!(back, a, "{name}");
            assert_eq!(back.name(), name);
        }
    }

    #[test]
    fn tensor_counts_match_torchvision() {
        // len(state_dict()) minus the num_batches_tracked counters, from torchvision.
        let count = |n: &str| {
            Architecture::named(n, 1000)
                .unwrap()
                .expected_tensors()
                .len()
        };
        assert_eq!(count("resnet18"), 122 - 20);
        assert_eq!(count("resnet50"), 320 - 53);
        assert_eq!(count("resnext50_32x4d"), 320 - 53);
    }

    #[test]
    fn layer_names_parse_print_and_resolve() {
        let a = Architecture::named("resnet50", 1000).unwrap();
        for (text, index) in [
            ("layer1", 2),
            ("layer2", 6),
            ("layer3", 12),
            ("layer4", 15),
            ("layer3.1", 8),
            ("layer1.0", 0),
        ] {
            let layer: Layer = text.parse().unwrap();
            assert_eq!(layer.to_string(), text);
            assert_eq!(a.block_index(layer), Some(index), "{text}");
        }
        assert_eq!(a.block_index("layer4.3".parse().unwrap()), None);
        for bad in [
            "layer5", "layer0", "layer", "layer3.", "conv1", "layer3.x", "layer+3",
        ] {
            assert!(bad.parse::<Layer>().is_err(), "{bad}");
        }
        let names: Vec<String> = a.layers().iter().map(Layer::to_string).collect();
        assert_eq!(names.len(), 4 + 16);
        assert_eq!(
            names[..5],
            ["layer1", "layer2", "layer3", "layer4", "layer1.0"]
        );
    }

    #[test]
    fn an_unusual_shape_gets_a_descriptive_name() {
        let mut a = Architecture::named("resnet50", 3).unwrap();
        a.blocks = [1, 1, 1, 1];
        let back = Architecture::infer(&shapes_of(&a)).unwrap();
        assert_eq!(back.name(), "resnet-bottleneck-1-1-1-1-1x64d");
    }
}

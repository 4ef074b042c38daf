//! What a torchvision ResNet-family network is made of, read from a state dict's tensor
//! names and shapes (basic or bottleneck blocks, blocks per stage, width, groups, class
//! count), and the layers Grad-CAM may target in it (`layer3`, `layer3.1`).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

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
    /// decides the architecture is looked at here; [`super::ResNet::from_tensors`] then checks
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
    pub(super) fn channels(&self, stage: usize) -> i64 {
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

//! ResNet-50, written out as a trunk (conv1 .. layer4) and a head (average pool, fc).
//!
//! `tch::vision::resnet` is one opaque closure, so layer4's output (the Grad-CAM target)
//! would be out of reach. The tensors keep torchvision's names (`layer4.0.downsample.1.
//! running_var`, `fc.weight`, ...), so a torchvision or timm state dict saved as safetensors
//! loads as is. Inference only: batch norm uses its running statistics, and can be folded
//! into the convolution before it when the weights load.

use std::collections::HashMap;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::weights::WeightsError;

pub const NUM_CLASSES: usize = 1000;
/// Channels of layer4's output, the activation Grad-CAM weighs.
pub const FEATURE_CHANNELS: i64 = 2048;
const BN_EPS: f64 = 1e-5;
/// (blocks, bottleneck width, first stride) of layer1..layer4.
const STAGES: [(usize, i64, i64); 4] = [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)];
const EXPANSION: i64 = 4;

/// A convolution followed by eval-mode batch norm, or one convolution with a bias once the
/// batch norm has been folded into it.
struct ConvBn {
    /// A plain tensor, or after `use_onednn_weights` a oneDNN (mkldnn) tensor already in the
    /// blocked layout its kernels use.
    weight: Tensor,
    bias: Option<Tensor>,
    bn: Option<BatchNorm>,
    stride: i64,
    padding: i64,
}

struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.weight.is_mkldnn() {
            // Input and output stay oneDNN tensors (see `ResNet50::trunk`).
            return x.mkldnn_convolution(
                &self.weight,
                self.bias.as_ref(),
                [self.padding, self.padding],
                [self.stride, self.stride],
                [1, 1],
                1,
            );
        }
        let y = x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        );
        match &self.bn {
            None => y,
            Some(bn) => y.batch_norm(
                Some(&bn.weight),
                Some(&bn.bias),
                Some(&bn.running_mean),
                Some(&bn.running_var),
                false,
                0.0,
                BN_EPS,
                false,
            ),
        }
    }

    /// Eval-mode batch norm is an affine map per channel, so it folds exactly into the
    /// convolution: w' = w * g / sqrt(v + eps), b' = beta - mean * g / sqrt(v + eps).
    fn fold(&mut self) {
        if let Some(bn) = self.bn.take() {
            let scale = &bn.weight / (&bn.running_var + BN_EPS).sqrt();
            self.weight = &self.weight * scale.view([-1, 1, 1, 1]);
            self.bias = Some(&bn.bias - &bn.running_mean * &scale);
        }
    }

    /// The weight reordered into oneDNN's blocked layout for an input of `input` shape
    /// (the layout depends on the channels and the CPU far more than on the batch).
    fn onednn_weight(&self, input: [i64; 4]) -> Result<Tensor, tch::TchError> {
        self.weight
            .f_to_mkldnn(None)?
            .f_mkldnn_reorder_conv2d_weight(
                [self.padding, self.padding],
                [self.stride, self.stride],
                [1, 1],
                1,
                Some(input.as_slice()),
            )
    }

    /// Output height and width for an input of `h` x `w`.
    fn output_size(&self, h: i64, w: i64) -> (i64, i64) {
        let kernel = self.weight.size()[2];
        let out = |n: i64| (n + 2 * self.padding - kernel) / self.stride + 1;
        (out(h), out(w))
    }
}

struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    /// In place where torchvision is (`relu(inplace=True)`, `out += identity`): each
    /// block then allocates three tensors fewer. The trunk runs without autograd, so
    /// nothing needs the overwritten values.
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = self.conv1.forward(x);
        let _ = y.relu_();
        let mut y = self.conv2.forward(&y);
        let _ = y.relu_();
        let mut y = self.conv3.forward(&y);
        match &self.downsample {
            Some(d) => y += d.forward(x),
            None => y += x,
        };
        let _ = y.relu_();
        y
    }

    fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        [&mut self.conv1, &mut self.conv2, &mut self.conv3]
            .into_iter()
            .chain(self.downsample.as_mut())
    }
}

pub struct ResNet50 {
    stem: ConvBn,
    layers: Vec<Vec<Bottleneck>>,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

/// Every tensor name and shape a torchvision ResNet-50 state dict holds (without the
/// `num_batches_tracked` counters, which inference does not use).
pub fn expected_tensors() -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    let mut conv_bn = |conv: &str, bn: &str, c_out: i64, c_in: i64, k: i64| {
        out.push((format!("{conv}.weight"), vec![c_out, c_in, k, k]));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{bn}.{p}"), vec![c_out]));
        }
    };
    conv_bn("conv1", "bn1", 64, 3, 7);
    let mut c_in = 64;
    for (stage, &(blocks, width, _)) in STAGES.iter().enumerate() {
        for b in 0..blocks {
            let p = format!("layer{}.{b}", stage + 1);
            conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), width, c_in, 1);
            conv_bn(&format!("{p}.conv2"), &format!("{p}.bn2"), width, width, 3);
            conv_bn(
                &format!("{p}.conv3"),
                &format!("{p}.bn3"),
                width * EXPANSION,
                width,
                1,
            );
            if b == 0 {
                let (c, n) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                conv_bn(&c, &n, width * EXPANSION, c_in, 1);
            }
            c_in = width * EXPANSION;
        }
    }
    out.push((
        "fc.weight".into(),
        vec![NUM_CLASSES as i64, FEATURE_CHANNELS],
    ));
    out.push(("fc.bias".into(), vec![NUM_CLASSES as i64]));
    out
}

impl ResNet50 {
    /// Builds the network from named tensors, checking that every expected tensor is there
    /// with the right shape and that nothing foreign is (another architecture's file).
    pub fn from_tensors(
        source: &Path,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<Self, WeightsError> {
        let mut map: HashMap<String, Tensor> = tensors
            .into_iter()
            .filter(|(name, _)| !name.ends_with("num_batches_tracked"))
            .collect();
        let mut checked = HashMap::new();
        for (name, shape) in expected_tensors() {
            let t = map
                .remove(&name)
                .ok_or_else(|| WeightsError::MissingTensor {
                    path: source.to_path_buf(),
                    name: name.clone(),
                })?;
            if t.size() != shape {
                return Err(WeightsError::WrongShape {
                    path: source.to_path_buf(),
                    name,
                    expected: shape,
                    found: t.size(),
                });
            }
            // Half-precision files are fine; the network runs in f32.
            let t = t.to_kind(Kind::Float).set_requires_grad(false);
            checked.insert(name, t);
        }
        if let Some(extra) = map.keys().min() {
            return Err(WeightsError::UnexpectedTensor {
                path: source.to_path_buf(),
                name: extra.clone(),
                count: map.len(),
            });
        }
        Ok(Self::assemble(&mut checked))
    }

    fn assemble(t: &mut HashMap<String, Tensor>) -> Self {
        let mut take = |name: String| t.remove(&name).expect("checked by from_tensors");
        let mut conv_bn = |conv: &str, bn: &str, stride: i64, padding: i64| ConvBn {
            weight: take(format!("{conv}.weight")),
            bias: None,
            bn: Some(BatchNorm {
                weight: take(format!("{bn}.weight")),
                bias: take(format!("{bn}.bias")),
                running_mean: take(format!("{bn}.running_mean")),
                running_var: take(format!("{bn}.running_var")),
            }),
            stride,
            padding,
        };
        let stem = conv_bn("conv1", "bn1", 2, 3);
        let mut layers = Vec::new();
        for (stage, &(blocks, _, first_stride)) in STAGES.iter().enumerate() {
            let mut layer = Vec::new();
            for b in 0..blocks {
                let p = format!("layer{}.{b}", stage + 1);
                // torchvision's ResNet v1.5: the stride sits on the 3x3 convolution.
                let stride = if b == 0 { first_stride } else { 1 };
                layer.push(Bottleneck {
                    conv1: conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), 1, 0),
                    conv2: conv_bn(&format!("{p}.conv2"), &format!("{p}.bn2"), stride, 1),
                    conv3: conv_bn(&format!("{p}.conv3"), &format!("{p}.bn3"), 1, 0),
                    downsample: (b == 0).then(|| {
                        let (c, n) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                        conv_bn(&c, &n, stride, 0)
                    }),
                });
            }
            layers.push(layer);
        }
        let fc_weight = take("fc.weight".into());
        let fc_bias = take("fc.bias".into());
        ResNet50 {
            stem,
            layers,
            fc_weight,
            fc_bias,
        }
    }

    /// Folds every batch norm into its convolution (exact up to float rounding).
    pub fn fold_batch_norm(&mut self) {
        tch::no_grad(|| {
            self.stem.fold();
            for block in self.layers.iter_mut().flatten() {
                block.convs_mut().for_each(ConvBn::fold);
            }
        });
    }

    /// Reorders every (folded) convolution weight once into oneDNN's blocked layout for
    /// `input_size` images; the trunk then keeps its activations in oneDNN tensors too.
    /// Eager libtorch reorders the plain weights on every call; on 2 cores this runs a
    /// single image or a batch of 4 in about 0.9 of the time, with the same results at
    /// batch 1 to the bit. The plain weights are let go, so it costs no memory. Batch norm
    /// must be folded first: the oneDNN path has convolutions only.
    pub fn use_onednn_weights(&mut self, input_size: i64) -> Result<(), tch::TchError> {
        assert!(
            self.stem.bn.is_none(),
            "batch norm is folded before the weights are reordered"
        );
        // Reorder everything first and swap only if all succeeded (a libtorch built
        // without oneDNN refuses the first one), so that a failure leaves the model whole.
        let mut reordered = Vec::new();
        tch::no_grad(|| -> Result<(), tch::TchError> {
            let (h, w) = self.stem.output_size(input_size, input_size);
            reordered.push(self.stem.onednn_weight([1, 3, input_size, input_size])?);
            // After the 3x3, stride 2 max pool.
            let (mut h, mut w) = ((h + 1) / 2, (w + 1) / 2);
            let mut channels = self.stem.weight.size()[0];
            for block in self.layers.iter().flatten() {
                let input = [1, channels, h, w];
                let width = block.conv1.weight.size()[0];
                reordered.push(block.conv1.onednn_weight(input)?);
                reordered.push(block.conv2.onednn_weight([1, width, h, w])?);
                (h, w) = block.conv2.output_size(h, w);
                reordered.push(block.conv3.onednn_weight([1, width, h, w])?);
                if let Some(d) = &block.downsample {
                    reordered.push(d.onednn_weight(input)?);
                }
                channels = block.conv3.weight.size()[0];
            }
            Ok(())
        })?;
        let convs = std::iter::once(&mut self.stem).chain(
            self.layers
                .iter_mut()
                .flatten()
                .flat_map(Bottleneck::convs_mut),
        );
        for (conv, weight) in convs.zip(reordered) {
            conv.weight = weight;
        }
        Ok(())
    }

    /// conv1 .. layer4: [N, 3, H, W] normalised images to the layer4 activation
    /// [N, 2048, H/32, W/32] (after the last block's ReLU), contiguous.
    pub fn trunk(&self, x: &Tensor) -> Tensor {
        let onednn = self.stem.weight.is_mkldnn();
        let x = if onednn {
            x.g_to_mkldnn(None)
        } else {
            x.shallow_clone()
        };
        let mut x = self.stem.forward(&x);
        let _ = x.relu_();
        let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in self.layers.iter().flatten() {
            x = block.forward(&x);
        }
        if onednn {
            x.to_dense(None, false)
        } else {
            x.contiguous()
        }
    }

    /// Global average pool and the classifier: layer4 activation to raw logits [N, 1000].
    pub fn head(&self, activation: &Tensor) -> Tensor {
        // adaptive_avg_pool2d as torchvision's head has it (not a mean): the same sums, so
        // the same logits and gradients to the bit.
        activation
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .linear(&self.fc_weight, Some(&self.fc_bias))
    }

    /// The classifier's weight row for each class: [1000, 2048].
    pub fn fc_weight(&self) -> &Tensor {
        &self.fc_weight
    }
}

/// Seeded random weights in torchvision's layout, for running without real weights (demo
/// mode) and for tests. Batch-norm statistics are randomised too, so that code which
/// ignored them would be caught. Drawn from a generator of our own rather than libtorch's
/// global one, which any thread may reseed at any moment.
pub fn random_tensors(seed: u64) -> Vec<(String, Tensor)> {
    expected_tensors()
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

//! The fast path's weights: batch norm folded into the convolutions, weights reordered once
//! into oneDNN's blocked layout, fused oneDNN convolutions (see src/fused.rs).

use tch::{Kind, Tensor};

use super::blocks::{Block, ConvBn, Folded, BN_EPS};
use super::ResNet;
use crate::fused;
use crate::fused::Post;
use crate::precision::Precision;

impl ConvBn {
    /// Eval-mode batch norm is an affine map per channel, so it folds into the
    /// convolution up to float rounding: w' = w * g / sqrt(v + eps),
    /// b' = beta - mean * g / sqrt(v + eps).
    pub(super) fn fold(&mut self) {
        let bn = &self.bn;
        let scale = &bn.weight / (&bn.running_var + BN_EPS).sqrt();
        self.folded = Some(Folded {
            weight: &self.weight * scale.view([-1, 1, 1, 1]),
            bias: &bn.bias - &bn.running_mean * &scale,
        });
    }

    /// The folded convolution as a fused oneDNN one (oneDNN weights only).
    pub(super) fn fused(&self) -> fused::Conv<'_> {
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
    pub(super) fn onednn_weight(
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
}

impl ResNet {
    pub(super) fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
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
    pub(super) fn fast_onednn_kind(&self) -> Option<Kind> {
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
}

//! The layers of a ResNet: a convolution with its eval-mode batch norm, and a residual
//! block, each runnable three ways: the fast path without autograd (folded batch norm,
//! oneDNN tensors, in place), fused oneDNN convolutions, and the exact path (unfolded, out of
//! place, on plain tensors, differentiable, equal to torchvision's values to the bit).

use std::cell::OnceCell;

use tch::Tensor;

use crate::fused::Post;

pub(super) const BN_EPS: f64 = 1e-5;

/// A convolution followed by eval-mode batch norm, as the file has them, and optionally the
/// same two folded into one convolution with a bias for the fast path.
pub(super) struct ConvBn {
    /// As loaded, unfolded: with `bn` after it, these run pytorch-grad-cam's very
    /// operations. Plain, or after `use_onednn_weights` in oneDNN's blocked layout, which
    /// runs the same kernel without reordering the weight on every call.
    pub(super) weight: Tensor,
    /// The plain weight again, made from the oneDNN one the first time a gradient has to
    /// flow through this convolution (autograd runs on plain tensors only). Layer4
    /// explanations never need it, so it costs no memory for them.
    pub(super) plain_weight: OnceCell<Tensor>,
    pub(super) bn: BatchNorm,
    /// Batch norm folded in (`fold`), the weight later perhaps in oneDNN's blocked layout
    /// (`use_onednn_weights`): used where no gradient flows and nothing after it decides
    /// a ReLU that a gradient goes back through (see `ResNet::features`).
    pub(super) folded: Option<Folded>,
    pub(super) stride: i64,
    pub(super) padding: i64,
    pub(super) groups: i64,
}

pub(super) struct BatchNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) running_mean: Tensor,
    pub(super) running_var: Tensor,
}

pub(super) struct Folded {
    /// A plain tensor, or a oneDNN (mkldnn) tensor already in the layout its kernels use.
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
}

impl ConvBn {
    /// Without autograd, on the folded weights when there are: oneDNN tensors in and out
    /// when those are oneDNN's.
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
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
    pub(super) fn forward_exact(&self, x: &Tensor) -> Tensor {
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

    /// The batch norm's bias as FullGrad takes it (pytorch-grad-cam's `get_bias_data`, in
    /// its order of operations): `bias - running_mean * weight / sqrt(running_var + eps)`.
    pub(super) fn effective_bias(&self) -> Tensor {
        let bn = &self.bn;
        -(&bn.running_mean * &bn.weight / (&bn.running_var + BN_EPS).sqrt()) + &bn.bias
    }

    pub(super) fn plain_weight(&self) -> &Tensor {
        if !self.weight.is_mkldnn() {
            return &self.weight;
        }
        self.plain_weight
            .get_or_init(|| tch::no_grad(|| self.weight.to_dense(None, false)))
    }

    /// Output height and width for an input of `h` x `w`.
    pub(super) fn output_size(&self, h: i64, w: i64) -> (i64, i64) {
        let kernel = self.weight.size()[2];
        let out = |n: i64| (n + 2 * self.padding - kernel) / self.stride + 1;
        (out(h), out(w))
    }

    pub(super) fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// A residual block: its convolutions in order (two for a basic block, three for a
/// bottleneck), a ReLU after each but the last, the shortcut added, a final ReLU.
pub(super) struct Block {
    pub(super) convs: Vec<ConvBn>,
    pub(super) downsample: Option<ConvBn>,
}

impl Block {
    /// Without autograd, in place where torchvision is (`relu(inplace=True)`, `out +=
    /// identity`): each block then allocates three tensors fewer.
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
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
    pub(super) fn forward_fused(&self, x: Tensor) -> Tensor {
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
    pub(super) fn forward_exact(&self, x: &Tensor) -> Tensor {
        self.forward_exact_keeping(x, &mut Vec::new())
    }

    /// [`Block::forward_exact`], pushing each convolution's output (after its batch norm)
    /// onto `kept`, in the order of [`Block::convs`].
    pub(super) fn forward_exact_keeping(&self, x: &Tensor, kept: &mut Vec<Tensor>) -> Tensor {
        self.forward_exact_with(x, kept, &Tensor::relu)
    }

    /// [`Block::forward_exact_keeping`] with `relu` in place of each ReLU (guided
    /// backpropagation's).
    pub(super) fn forward_exact_with(
        &self,
        x: &Tensor,
        kept: &mut Vec<Tensor>,
        relu: &dyn Fn(&Tensor) -> Tensor,
    ) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward_exact(&y);
            kept.push(y.shallow_clone());
            if i < last {
                y = relu(&y);
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => {
                let s = d.forward_exact(x);
                kept.push(s.shallow_clone());
                s
            }
            None => x.shallow_clone(),
        };
        relu(&(y + shortcut))
    }

    pub(super) fn convs_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        self.convs.iter_mut().chain(self.downsample.as_mut())
    }

    pub(super) fn convs(&self) -> impl Iterator<Item = &ConvBn> {
        self.convs.iter().chain(self.downsample.as_ref())
    }
}

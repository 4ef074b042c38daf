//! Convolutions with what follows them fused in: the ReLU, and a residual block's shortcut
//! add and final ReLU. libtorch runs them as oneDNN post-ops (`mkldnn::_convolution_pointwise`,
//! the operators PyTorch's freezing pass for `torch.compile` uses on CPU), so the output is
//! written once instead of being read and written again by a separate ReLU and add. tch does
//! not reach these operators; csrc/fused_conv.cpp calls them through libtorch's dispatcher.
//!
//! The weights are oneDNN tensors in the blocked layout (`ResNet::use_onednn_weights`); the
//! activations are ordinary strided tensors (channels-last out of oneDNN), so the trunk's
//! output can go straight into the autograd head.

use std::ffi::{c_char, CStr};

use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn gcs_conv_pointwise(
        x: *const C_tensor,
        w: *const C_tensor,
        bias: *const C_tensor,
        padding: *const i64,
        stride: *const i64,
        groups: i64,
        attr: *const c_char,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn gcs_conv_add_relu_(
        x: *const C_tensor,
        accumulator: *mut C_tensor,
        w: *const C_tensor,
        bias: *const C_tensor,
        padding: *const i64,
        stride: *const i64,
        groups: i64,
    ) -> *mut c_char;
    fn gcs_free_error(message: *mut c_char);
}

/// What a fused convolution does after convolving.
pub enum Post<'a> {
    /// Nothing (a downsample shortcut).
    None,
    Relu,
    /// `accumulator = relu(conv(x) + accumulator)`, in place.
    AddRelu(&'a mut Tensor),
}

/// A convolution's fixed parameters.
pub struct Conv<'a> {
    /// A oneDNN tensor (see the module's comment).
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub padding: i64,
    pub stride: i64,
    pub groups: i64,
}

/// Ok, or the message the shim returned (its exception), freed.
pub(crate) fn check(message: *mut c_char) -> Result<(), tch::TchError> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a NUL-terminated string that the shim strdup'ed for us, read before it is
    // freed.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, with the shim's own free, and not used after.
    unsafe { gcs_free_error(message) };
    Err(tch::TchError::Torch(text))
}

impl Conv<'_> {
    /// The convolution of `x` followed by `post`: a new tensor for `None` and `Relu`, the
    /// accumulator itself for `AddRelu`.
    pub fn f_forward(&self, x: &Tensor, post: Post<'_>) -> Result<Tensor, tch::TchError> {
        let padding = [self.padding; 2];
        let stride = [self.stride; 2];
        let bias = self.bias.map_or(std::ptr::null(), Tensor::as_ptr);
        match post {
            Post::AddRelu(accumulator) => {
                // oneDNN reads `x` while it writes the sum into the accumulator: the two
                // must not share memory. `Block::forward_fused` relies on it (its shortcut
                // is the block's input, never the last convolution's).
                let strided = !x.is_mkldnn() && !accumulator.is_mkldnn();
                if strided && x.data_ptr() == accumulator.data_ptr() {
                    return Err(tch::TchError::Kind(
                        "a fused add-and-ReLU's accumulator must not be its input".into(),
                    ));
                }
                // SAFETY: valid tensors for the call (tch keeps them alive for it); the shim
                // writes into `accumulator`'s storage only, which we hold mutably and which
                // is not `x`'s (checked above).
                check(unsafe {
                    gcs_conv_add_relu_(
                        x.as_ptr(),
                        accumulator.as_mut_ptr(),
                        self.weight.as_ptr(),
                        bias,
                        padding.as_ptr(),
                        stride.as_ptr(),
                        self.groups,
                    )
                })?;
                Ok(accumulator.shallow_clone())
            }
            Post::None | Post::Relu => {
                let attr: &CStr = match post {
                    Post::Relu => c"relu",
                    _ => c"none",
                };
                let mut out: *mut C_tensor = std::ptr::null_mut();
                // SAFETY: valid tensors for the call; the shim writes only `out`, a pointer
                // to our local.
                check(unsafe {
                    gcs_conv_pointwise(
                        x.as_ptr(),
                        self.weight.as_ptr(),
                        bias,
                        padding.as_ptr(),
                        stride.as_ptr(),
                        self.groups,
                        attr.as_ptr(),
                        &mut out,
                    )
                })?;
                // SAFETY: on success `out` is a new at::Tensor the shim allocated for us; we
                // take ownership of it once.
                Ok(unsafe { Tensor::from_ptr(out) })
            }
        }
    }

    /// [`Conv::f_forward`], panicking on a libtorch error as tch's own operators do.
    pub fn forward(&self, x: &Tensor, post: Post<'_>) -> Tensor {
        self.f_forward(x, post).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    /// A 3x3 convolution of 4 channels with its weight in oneDNN's layout.
    fn onednn_weight() -> Tensor {
        Tensor::ones([4, 4, 3, 3], (Kind::Float, Device::Cpu))
            .to_mkldnn()
            .mkldnn_reorder_conv2d_weight([1, 1], [1, 1], [1, 1], 1, Some([1, 4, 8, 8].as_slice()))
    }

    #[test]
    fn the_accumulator_must_not_be_the_input() {
        let weight = onednn_weight();
        let conv = Conv {
            weight: &weight,
            bias: None,
            padding: 1,
            stride: 1,
            groups: 1,
        };
        let x = Tensor::ones([1, 4, 8, 8], (Kind::Float, Device::Cpu));
        let mut same = x.shallow_clone();
        let err = conv.f_forward(&x, Post::AddRelu(&mut same)).unwrap_err();
        assert!(err.to_string().contains("must not be its input"), "{err}");
        // Another tensor: relu(conv(x) + acc), the centre sums 4 * 9 ones, plus 1.
        let mut other = Tensor::ones([1, 4, 8, 8], (Kind::Float, Device::Cpu));
        let y = conv.f_forward(&x, Post::AddRelu(&mut other)).unwrap();
        assert_eq!(y.double_value(&[0, 0, 4, 4]), 37.0);
        assert_eq!(other.double_value(&[0, 0, 4, 4]), 37.0, "written in place");
    }
}

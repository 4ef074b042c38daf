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

fn check(message: *mut c_char) -> Result<(), tch::TchError> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a NUL-terminated string that the shim strdup'ed for us, freed once here.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
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
                // SAFETY: valid tensors for the call; the shim writes into `accumulator`'s
                // storage only, which we hold mutably.
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
                // SAFETY: as above; on success `out` is a new at::Tensor that we own.
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
                Ok(unsafe { Tensor::from_ptr(out) })
            }
        }
    }

    /// [`Conv::f_forward`], panicking on a libtorch error as tch's own operators do.
    pub fn forward(&self, x: &Tensor, post: Post<'_>) -> Tensor {
        self.f_forward(x, post).unwrap()
    }
}

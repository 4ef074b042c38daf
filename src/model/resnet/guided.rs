//! Guided backpropagation's ReLU, from csrc/guided_relu.cpp: a ReLU forward, and a
//! backward that passes only positive gradients where the input was positive
//! (pytorch-grad-cam's `GuidedBackpropReLU`, which its `GuidedBackpropReLUModel` puts in
//! place of every `nn.ReLU`).

use std::ffi::c_char;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::fused::check;

extern "C" {
    fn gcs_guided_relu(x: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
}

/// `relu(x)` whose gradient is guided backpropagation's.
pub(super) fn guided_relu(x: &Tensor) -> Result<Tensor, tch::TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: a valid tensor for the call; the shim writes only `out`, a pointer to our
    // local.
    check(unsafe { gcs_guided_relu(x.as_ptr(), &mut out) })?;
    // SAFETY: on success `out` is a new at::Tensor the shim allocated for us; we take
    // ownership of it once.
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_is_a_relu_and_backward_lets_only_positive_gradients_through() {
        let x = Tensor::from_slice(&[-2.0f32, -0.5, 0.0, 0.5, 2.0]).set_requires_grad(true);
        let y = guided_relu(&x).unwrap();
        assert_eq!(Vec::<f32>::try_from(&y).unwrap(), [0.0, 0.0, 0.0, 0.5, 2.0]);
        // Gradient +1 and -1 alternately: only positive gradients at positive inputs pass.
        let upstream = Tensor::from_slice(&[1.0f32, 1.0, 1.0, -1.0, 1.0]);
        let score = (&y * &upstream).sum(tch::Kind::Float);
        let g = Tensor::run_backward(&[score], &[&x], false, false).remove(0);
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), [0.0, 0.0, 0.0, 0.0, 1.0]);
    }
}

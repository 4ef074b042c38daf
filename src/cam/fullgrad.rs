//! FullGrad (pytorch-grad-cam 1.5.7's `FullGrad`): |input gradient x input|, each colour
//! channel min-max scaled, plus for every bias layer the sum over its channels of
//! |bias x gradient at its output|, each channel min-max scaled and resized to the input;
//! all summed and scaled. No layer is chosen: every bias layer takes part.

use super::maps;
use super::scale::{min_max_scale, resize_bilinear};

/// One image's gradients, as `Vec<f32>` in row-major order.
pub struct FullGradInputs<'a> {
    /// The normalised input `[3, height, width]` and the gradient there.
    pub input: &'a [f32],
    pub input_gradient: &'a [f32],
    pub layers: Vec<BiasLayer<'a>>,
}

/// One bias layer of one image: its bias `[C]` and the gradient at its output `[C, h, w]`.
pub struct BiasLayer<'a> {
    pub bias: &'a [f32],
    pub gradient: &'a [f32],
    pub height: usize,
    pub width: usize,
}

/// The map pytorch-grad-cam returns (`width` x `height`, in [0, 1]); with `eigen_smooth`,
/// the first principal component of the per-layer maps taken at an eighth of the size.
pub fn full_grad_map(
    inputs: &FullGradInputs<'_>,
    width: usize,
    height: usize,
    eigen_smooth: bool,
) -> Result<Vec<f32>, String> {
    let size = width * height;
    // `cam_per_target_layer`: three input channels, then one map per bias layer.
    let mut parts: Vec<Vec<f32>> = inputs
        .input
        .chunks_exact(size)
        .zip(inputs.input_gradient.chunks_exact(size))
        .map(|(x, g)| {
            let product: Vec<f32> = x.iter().zip(g).map(|(x, g)| (g * x).abs()).collect();
            resize_bilinear(&min_max_scale(&product), width, height, width, height)
        })
        .collect();
    for layer in &inputs.layers {
        let (bias, gradient, h, w) = (layer.bias, layer.gradient, layer.height, layer.width);
        // Each channel scaled at the layer's resolution; their sum resized once (the
        // resize is linear: the same as pytorch-grad-cam's sum of resized channels up to
        // float rounding, at 1/C of the cost).
        let mut sum = vec![0f32; h * w];
        for (&b, g) in bias.iter().zip(gradient.chunks_exact(h * w)) {
            let product: Vec<f32> = g.iter().map(|g| (b * g).abs()).collect();
            for (s, v) in sum.iter_mut().zip(min_max_scale(&product)) {
                *s += v;
            }
        }
        parts.push(resize_bilinear(&sum, w, h, width, height));
    }
    let total = if eigen_smooth {
        // Resized to an eighth first, "since this method typically has a very large
        // number of channels" (pytorch-grad-cam), each part scaled on the way.
        let (w8, h8) = (width / 8, height / 8);
        let small: Vec<f32> = parts
            .iter()
            .flat_map(|p| resize_bilinear(&min_max_scale(p), width, height, w8, h8))
            .collect();
        let projected = maps::projection(&small, parts.len())?;
        resize_bilinear(&min_max_scale(&projected), w8, h8, width, height)
    } else {
        let mut total = vec![0f32; size];
        for part in &parts {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        total
    };
    Ok(min_max_scale(&total))
}

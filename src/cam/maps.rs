//! One image's map at one layer, for each method, from the layer's activation `A` and
//! gradient `G` ([channels, positions] each, row-major), with pytorch-grad-cam 1.5.7's
//! NumPy float operations in their order (as `gradcam::cam_from` does for Grad-CAM), so
//! that the maps agree with it to float rounding.

use super::{lapack, Method};
use crate::gradcam::numpy_sum;

/// What a gradient method makes of `A` and `G` before the channels are summed: a weight
/// per channel (`get_cam_weights`), or a term per channel and position (the methods
/// that override `get_cam_image`).
pub enum Terms {
    Weights(Vec<f32>),
    Elementwise(Vec<f32>),
}

/// `get_cam_weights` / the elementwise product of each gradient method. `activation` and
/// `gradient` are one image's, [channels, positions].
pub fn terms(method: Method, activation: &[f32], gradient: &[f32], channels: usize) -> Terms {
    let positions = activation.len() / channels;
    let per_channel = |f: &dyn Fn(&[f32], &[f32]) -> f32| -> Vec<f32> {
        (0..channels)
            .map(|k| {
                let range = k * positions..(k + 1) * positions;
                f(&activation[range.clone()], &gradient[range])
            })
            .collect()
    };
    let zip = |f: fn(f32, f32) -> f32| -> Vec<f32> {
        gradient
            .iter()
            .zip(activation)
            .map(|(&g, &a)| f(g, a))
            .collect()
    };
    match method {
        // np.mean(grads, axis=(2, 3)): a pairwise sum, divided.
        // FinerCAM and ShapleyCAM are Grad-CAM of another score / of another gradient.
        Method::GradCam | Method::FinerCam | Method::ShapleyCam => {
            Terms::Weights(per_channel(&|_, g| {
                (numpy_sum(g) as f64 / positions as f64) as f32
            }))
        }
        Method::GradCamPlusPlus => Terms::Weights(per_channel(&|a, g| {
            let sum_a = numpy_sum(a);
            let w: Vec<f32> = g
                .iter()
                .map(|&g| {
                    let g2 = g * g;
                    let g3 = g2 * g;
                    let aij = g2 / (2.0 * g2 + sum_a * g3 + 1e-6);
                    let aij = if g != 0.0 { aij } else { 0.0 };
                    g.max(0.0) * aij
                })
                .collect();
            numpy_sum(&w)
        })),
        Method::XGradCam => Terms::Weights(per_channel(&|a, g| {
            let denominator = numpy_sum(a) + 1e-7;
            let w: Vec<f32> = g
                .iter()
                .zip(a)
                .map(|(&g, &a)| g * a / denominator)
                .collect();
            numpy_sum(&w)
        })),
        Method::HiResCam | Method::EigenGradCam => Terms::Elementwise(zip(|g, a| g * a)),
        Method::GradCamElementWise => Terms::Elementwise(zip(|g, a| (g * a).max(0.0))),
        Method::LayerCam => Terms::Elementwise(zip(|g, a| g.max(0.0) * a)),
        Method::EigenCam
        | Method::AblationCam
        | Method::ScoreCam
        | Method::Fem
        | Method::RandomCam
        | Method::RefineCam
        | Method::Sess
        | Method::Dff
        | Method::KpcaCam
        | Method::FullGrad
        | Method::SobelCam
        | Method::GuidedBackprop
        | Method::GuidedGradCam
        | Method::Auto => {
            unreachable!("{method} has no gradient terms")
        }
    }
}

/// `weights[:, None, None] * A`, as an array of the same shape.
pub fn weighted(weights: &[f32], activation: &[f32]) -> Vec<f32> {
    let positions = activation.len() / weights.len();
    activation
        .chunks_exact(positions)
        .zip(weights)
        .flat_map(|(a, &w)| a.iter().map(move |&v| w * v))
        .collect()
}

/// RandomCAM's weights: `np.random.uniform(-1, 1, size=channels)` from NumPy's legacy
/// generator (MT19937; each double from two draws, 53 bits).
pub fn uniform_weights(generator: &mut rand_mt::Mt, channels: usize) -> Vec<f64> {
    (0..channels)
        .map(|_| -1.0 + 2.0 * numpy_double(generator))
        .collect()
}

/// NumPy's legacy double in [0, 1): 53 bits from two MT19937 draws.
pub fn numpy_double(generator: &mut rand_mt::Mt) -> f64 {
    let high = (generator.next_u32() >> 5) as f64;
    let low = (generator.next_u32() >> 6) as f64;
    (high * 67108864.0 + low) / 9007199254740992.0
}

/// `weights[:, None, None] * A` summed over the channels with float64 weights: NumPy
/// promotes the product to float64 and adds the channels one after another.
pub fn weighted_sum_f64(weights: &[f64], activation: &[f32]) -> Vec<f32> {
    let positions = activation.len() / weights.len();
    let mut cam = vec![0f64; positions];
    for (row, &w) in activation.chunks_exact(positions).zip(weights) {
        for (c, &v) in cam.iter_mut().zip(row) {
            *c += w * v as f64;
        }
    }
    cam.into_iter().map(|c| c as f32).collect()
}

/// `.sum(axis=1)` of a [channels, positions] array: the channels added one after another.
pub fn channel_sum(values: &[f32], channels: usize) -> Vec<f32> {
    let positions = values.len() / channels;
    let mut cam = vec![0f32; positions];
    for row in values.chunks_exact(positions) {
        for (c, &v) in cam.iter_mut().zip(row) {
            *c += v;
        }
    }
    cam
}

/// The map before the ReLU (`get_cam_image`) of a method that weights or multiplies the
/// activation: the channel sum, or with `eigen_smooth` the first principal component.
pub fn cam_image(
    terms: &Terms,
    activation: &[f32],
    channels: usize,
    eigen_smooth: bool,
) -> Result<Vec<f32>, String> {
    let elementwise;
    let values = match terms {
        Terms::Weights(w) => {
            elementwise = weighted(w, activation);
            &elementwise
        }
        Terms::Elementwise(v) => v,
    };
    if eigen_smooth {
        projection(values, channels)
    } else {
        Ok(channel_sum(values, channels))
    }
}

/// `np.maximum(cam, 0)`.
pub fn relu(mut cam: Vec<f32>) -> Vec<f32> {
    cam.iter_mut().for_each(|c| *c = c.max(0.0));
    cam
}

/// pytorch-grad-cam's `get_2d_projection` for one image: the positions' values
/// ([positions, channels]) centred per channel, projected on the first right singular
/// vector, with NumPy's sign (see `lapack`). Err: no system LAPACK.
pub fn projection(values: &[f32], channels: usize) -> Result<Vec<f32>, String> {
    let positions = values.len() / channels;
    // Column-major [positions, channels]: one channel after another, as `values` is.
    let centred: Vec<f64> = values
        .chunks_exact(positions)
        .flat_map(|row| {
            // reshaped.mean(axis=0) in float32: a pairwise sum over the positions, divided.
            let mean = (numpy_sum(row) as f64 / positions as f64) as f32;
            row.iter()
                .map(move |&v| (if v.is_nan() { 0.0 } else { v } - mean) as f64)
        })
        .collect();
    let p = lapack::first_projection(&centred, positions, channels)?;
    Ok(p.into_iter().map(|v| v as f32).collect())
}

/// FEM (k = 2): channels weighted by the share of their positions above mean + 2 std,
/// in float64 as NumPy computes a boolean mean and what it multiplies.
pub fn fem(activation: &[f32], channels: usize) -> Vec<f32> {
    let positions = activation.len() / channels;
    let n = positions as f32;
    let mut cam = vec![0f64; positions];
    for a in activation.chunks_exact(positions) {
        let mean = numpy_sum(a) / n;
        // np.std: the mean, the squared deviations summed pairwise, divided, rooted.
        let squares: Vec<f32> = a
            .iter()
            .map(|&v| {
                let d = v - mean;
                d * d
            })
            .collect();
        let std = (numpy_sum(&squares) / n).sqrt();
        let threshold = mean + 2.0 * std;
        let above = a.iter().filter(|&&v| v > threshold).count();
        let weight = above as f64 / positions as f64;
        for (c, &v) in cam.iter_mut().zip(a) {
            *c += weight * v as f64;
        }
    }
    cam.into_iter().map(|c| c.max(0.0) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_methods_follow_their_formulas() {
        // Two channels over two positions.
        let a = [1.0, 3.0, 2.0, 0.5];
        let g = [1.0, -1.0, -2.0, 4.0];
        let sum = |m| match terms(m, &a, &g, 2) {
            Terms::Elementwise(v) => channel_sum(&v, 2),
            Terms::Weights(w) => channel_sum(&weighted(&w, &a), 2),
        };
        assert_eq!(sum(Method::HiResCam), vec![1.0 - 4.0, -3.0 + 2.0]);
        assert_eq!(sum(Method::GradCamElementWise), vec![1.0, 2.0]);
        assert_eq!(sum(Method::LayerCam), vec![1.0, 2.0]);
        // Grad-CAM: weights 0 and 1.
        assert_eq!(sum(Method::GradCam), vec![2.0, 0.5]);
    }

    #[test]
    fn plusplus_and_xgradcam_weights() {
        let a = [1.0, 3.0];
        let g = [0.5, 0.0];
        let Terms::Weights(w) = terms(Method::GradCamPlusPlus, &a, &g, 1) else {
            panic!()
        };
        // g=0.5: g2 0.25, g3 0.125, sum_a 4: aij = 0.25 / (0.5 + 0.5 + 1e-6); g=0: 0.
        assert!((w[0] - 0.5 * 0.25 / 1.000001).abs() < 1e-7);
        let Terms::Weights(w) = terms(Method::XGradCam, &a, &g, 1) else {
            panic!()
        };
        assert!((w[0] - 0.5 / 4.0).abs() < 1e-7);
    }

    #[test]
    fn projection_finds_the_principal_direction() {
        // Channels over positions, all along one direction plus a constant per channel:
        // the projection is that direction's coordinate, centred, with one sign for all
        // (which one is LAPACK's: tests/core/methods_parity.rs holds it to NumPy's).
        for (t, dir) in [
            (vec![1.0f32, -1.0, 2.0, -2.0], vec![1.0f32, 2.0, -1.0]),
            (vec![2.0, -0.5, -1.5], vec![1.0, -2.0, 0.5, 3.0, -1.0]),
        ] {
            let values: Vec<f32> = dir
                .iter()
                .flat_map(|&d| t.iter().map(move |&v| 5.0 + d * v))
                .collect();
            let p = projection(&values, dir.len()).unwrap();
            let norm = dir.iter().map(|d| d * d).sum::<f32>().sqrt();
            let sign = p[0].signum() * t[0].signum();
            for (got, want) in p.iter().zip(&t) {
                assert!((got - sign * want * norm).abs() < 1e-5, "{p:?}");
            }
        }
    }

    #[test]
    fn fem_weights_channels_by_their_outliers() {
        // Channel 0 has one outlier among 10 positions, channel 1 none.
        let mut a = vec![0.0f32; 20];
        a[3] = 10.0;
        a[10..].fill(1.0);
        let cam = fem(&a, 2);
        assert!((cam[3] - 1.0).abs() < 1e-6, "{cam:?}");
        assert_eq!(cam[0], 0.0);
    }
}

//! Grad-CAM, computed the way pytorch-grad-cam computes it (`GradCAM(model,
//! target_layers=[...])`), for a batch of images, on any [`Network`]: one forward pass that
//! keeps the layers asked for, one backward pass from the chosen logits to them (no
//! parameter gradients, no graph before the earliest layer: see each network's `forward`),
//! then each image's map from its layer's activation and gradient.

use std::time::Instant;

use tch::{Kind, Tensor};

use crate::model::{layer_indices, Needs, Network, NetworkError};

/// What to explain in one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The class whose raw logit is differentiated; None: the top-1 class.
    pub target: Option<usize>,
    /// The layer, as the network names it.
    pub layer: String,
}

/// What the network says about one image.
#[derive(Debug, Clone)]
pub struct GradCamMap {
    /// Softmax over the classes.
    pub probabilities: Vec<f32>,
    /// The class whose raw logit was differentiated.
    pub target: usize,
    /// The layer explained.
    pub layer: String,
    /// ReLU(sum_k w_k A_k), unnormalised, row-major `height` x `width`.
    pub cam: Vec<f32>,
    pub width: usize,
    pub height: usize,
}

/// Time spent, for the whole batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassTimings {
    pub forward_ms: f64,
    pub backward_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GradCamError {
    #[error("target class {target} is out of range (0..={})", classes - 1)]
    TargetOutOfRange { target: usize, classes: usize },
    #[error("this model has no layer {0}")]
    NoSuchLayer(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("abandoned: nobody waits for this explanation any more")]
    Abandoned,
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// Explains a batch: `input` is [N, 3, S, S] normalised, `asks[i]` what to explain in
/// image i. Images may ask for different layers: the pass keeps each of them.
pub fn batch(
    network: &dyn Network,
    input: &Tensor,
    asks: &[Ask],
) -> Result<(Vec<GradCamMap>, PassTimings), GradCamError> {
    let n = input.size()[0] as usize;
    assert_eq!(n, asks.len(), "one ask per image");
    let classes = network.num_classes();
    if let Some(target) = asks.iter().filter_map(|a| a.target).find(|&t| t >= classes) {
        return Err(GradCamError::TargetOutOfRange { target, classes });
    }
    let names: Vec<String> = asks.iter().map(|a| a.layer.clone()).collect();
    let per_image = layer_indices(network, &names).map_err(GradCamError::NoSuchLayer)?;
    let mut layers = per_image.clone();
    layers.sort_unstable();
    layers.dedup();

    let start = Instant::now();
    let pass = network.forward(input, &layers, Needs::Gradients)?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let logits = &pass.logits;
    let chosen: Vec<i64> = {
        let top1 = Vec::<i64>::try_from(logits.detach().argmax(1, false))?;
        asks.iter()
            .zip(top1)
            .map(|(a, top)| a.target.map_or(top, |t| t as i64))
            .collect()
    };
    // Each image's score depends only on its own activations, so the gradient of the sum
    // is every image's own gradient at once.
    let index = Tensor::from_slice(&chosen).unsqueeze(1);
    let score = logits.gather(1, &index, false).sum(Kind::Float);
    let gradients = network.gradients(&pass, &score, false)?;
    let mut values = Vec::with_capacity(layers.len());
    for (activation, gradient) in pass.maps.iter().zip(&gradients) {
        let size = activation.size();
        values.push(LayerValues {
            activation: Vec::try_from(activation.contiguous().view([-1]))?,
            gradient: Vec::try_from(gradient.contiguous().view([-1]))?,
            channels: size[1] as usize,
            height: size[2] as usize,
            width: size[3] as usize,
        });
    }
    let probabilities = logits.detach().softmax(-1, Kind::Float);
    let probabilities = Vec::<f32>::try_from(probabilities.contiguous().view([-1]))?;
    let out = (0..n)
        .map(|i| {
            let v = &values[layers.binary_search(&per_image[i]).expect("kept")];
            let per_image = v.channels * v.height * v.width;
            let range = i * per_image..(i + 1) * per_image;
            GradCamMap {
                probabilities: probabilities[i * classes..(i + 1) * classes].to_vec(),
                target: chosen[i] as usize,
                layer: asks[i].layer.clone(),
                cam: cam_from(&v.activation[range.clone()], &v.gradient[range], v.channels),
                width: v.width,
                height: v.height,
            }
        })
        .collect();
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((
        out,
        PassTimings {
            forward_ms,
            backward_ms,
        },
    ))
}

/// A layer's output and its gradient for the whole batch, flat, [N, channels, h, w].
struct LayerValues {
    activation: Vec<f32>,
    gradient: Vec<f32>,
    channels: usize,
    height: usize,
    width: usize,
}

/// The map from one image's activation and gradient ([channels, positions] each):
/// `ReLU(sum_k w_k A_k)` with `w_k` the mean gradient of channel k.
///
/// The float operations follow pytorch-grad-cam's NumPy code in order, so that a map
/// agrees with it to the last bit when the activations do: `np.mean` over the positions
/// (NumPy's pairwise sum, divided in double precision), then the weighted channels summed
/// one after another. A different summation order moves the map by about 1e-6, enough to
/// flip the 8-bit colour of a few overlay pixels near a level boundary.
pub fn cam_from(activation: &[f32], gradient: &[f32], channels: usize) -> Vec<f32> {
    let positions = activation.len() / channels;
    let mut cam = vec![0f32; positions];
    for k in 0..channels {
        let g = &gradient[k * positions..(k + 1) * positions];
        let weight = (numpy_sum(g) as f64 / positions as f64) as f32;
        let a = &activation[k * positions..(k + 1) * positions];
        for (c, &v) in cam.iter_mut().zip(a) {
            *c += weight * v;
        }
    }
    cam.iter_mut().for_each(|c| *c = c.max(0.0));
    cam
}

/// NumPy's float32 `add.reduce` over a contiguous run (`pairwise_sum`): eight running
/// sums combined pairwise for runs of 8..=128, halves recursively above.
pub fn numpy_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |acc, &v| acc + v)
    } else if n <= 128 {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let body = n - n % 8;
        for chunk in a[8..body].chunks_exact(8) {
            for j in 0..8 {
                r[j] += chunk[j];
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[body..] {
            res += v;
        }
        res
    } else {
        let half = (n / 2) - (n / 2) % 8;
        numpy_sum(&a[..half]) + numpy_sum(&a[half..])
    }
}

/// Plain prediction (no explanation), for comparing costs: softmax [N, classes].
pub fn predict(network: &dyn Network, input: &Tensor) -> Result<Vec<f32>, GradCamError> {
    let logits = network.logits(input)?;
    let probabilities = tch::no_grad(|| logits.softmax(-1, Kind::Float));
    Ok(Vec::<f32>::try_from(probabilities.contiguous().view([-1]))?)
}

/// The `k` most probable classes, most probable first (ties: lower index first).
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|i| (i, probabilities[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_sum_is_exact_on_integers_and_pairwise_on_floats() {
        let ints: Vec<f32> = (1..=200).map(|v| v as f32).collect();
        assert_eq!(numpy_sum(&ints[..5]), 15.0);
        assert_eq!(numpy_sum(&ints[..49]), 1225.0);
        assert_eq!(numpy_sum(&ints), 20100.0);
        // Pairwise order differs from a left fold: one by one, 1e8 absorbs every 4 (half
        // its float spacing of 8); summed among themselves first, the 4s survive.
        let mut v = vec![1e8f32];
        v.extend(std::iter::repeat_n(4.0f32, 15));
        assert_eq!(v.iter().fold(0f32, |a, &b| a + b), 1e8);
        assert_eq!(numpy_sum(&v), 100_000_056.0);
    }

    #[test]
    fn cam_is_relu_of_gradient_weighted_channels() {
        // Two channels over two positions: weights 1 and -2.
        let activation = [1.0, 3.0, 1.0, 0.5];
        let gradient = [1.0, 1.0, -2.0, -2.0];
        assert_eq!(cam_from(&activation, &gradient, 2), vec![0.0, 2.0]);
    }

    #[test]
    fn top_k_orders_by_score_then_index() {
        let p = [0.1, 0.5, 0.1, 0.3];
        assert_eq!(top_k(&p, 3), vec![(1, 0.5), (3, 0.3), (0, 0.1)]);
        assert_eq!(top_k(&p, 10).len(), 4);
    }
}

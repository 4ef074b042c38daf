//! Seeded random weights of a ResNet, for demo mode and tests.

use tch::Tensor;

use super::Architecture;
use crate::model::seeded::{seeded_normal, seeded_uniform};

/// Seeded random weights of `architecture` in torchvision's layout, for running without
/// real weights (demo mode) and for tests. Batch-norm statistics are randomised too, so
/// that code which ignored them would be caught. Drawn from a generator of our own rather
/// than libtorch's global one, which any thread may reseed at any moment.
pub fn random_tensors(architecture: &Architecture, seed: u64) -> Vec<(String, Tensor)> {
    architecture
        .expected_tensors()
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

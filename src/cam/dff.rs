//! Deep Feature Factorization (pytorch-grad-cam 1.5.7's `dff` and
//! `DeepFeatureFactorization`, with the classifier as `computation_on_concepts`, as its
//! `run_dff_on_image` runs it): the layer's activations, one row per channel, shifted to
//! be non-negative and factorized by scikit-learn's NMF ([`super::nmf`]) into
//! `n_components` concepts. Each concept has a map (where the image shows it) and an
//! embedding in the layer's channels, which the classifier scores (which classes it votes
//! for). The question it answers is "which concepts did the network see", so the maps are
//! the same whatever the class asked for.

use std::time::Instant;

use tch::{Kind, Tensor};

use super::{nmf, scale, CamAsk, CamMaps, Image};
use crate::gradcam::{self, GradCamError, PassTimings};
use crate::model::{Needs, Network, NetworkError};

/// One concept.
#[derive(Debug, Clone, PartialEq)]
pub struct Concept {
    /// Where the image shows it: its row of the factorization min-max scaled and resized
    /// to the input's size (`scale_cam_image`), row-major.
    pub map: Vec<f32>,
    /// The classes its embedding scores highest, softmax probabilities, most probable
    /// first (`concept_top_k` of them); empty where the layer does not feed the classifier.
    pub classes: Vec<(usize, f32)>,
}

/// The factorization of one image, and the image as the model saw it (what its overlay
/// is drawn on, as `show_factorization_on_image` draws on the input image).
#[derive(Debug, Clone, PartialEq)]
pub struct Concepts {
    pub concepts: Vec<Concept>,
    /// RGB bytes, `width` x `height`, row-major.
    pub pixels: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// `dff(activations, n_components)` for one image: the activations `[C, positions]` as
/// rows, NaN set to 0, each row shifted by its minimum, factorized. Returns the concepts'
/// embeddings (`W + offset`, `C x n_components`, row-major) and their rows of `H`
/// (`n_components` x positions).
pub fn factorize(
    activation: &[f32],
    channels: usize,
    n_components: usize,
) -> Result<(Vec<f32>, Vec<Vec<f32>>), GradCamError> {
    let positions = activation.len() / channels;
    let cleaned: Vec<f32> = activation
        .iter()
        .map(|&v| if v.is_nan() { 0.0 } else { v })
        .collect();
    let offsets: Vec<f32> = cleaned
        .chunks_exact(positions)
        .map(|row| row.iter().copied().fold(f32::INFINITY, f32::min))
        .collect();
    let shifted: Vec<f32> = cleaned
        .chunks_exact(positions)
        .zip(&offsets)
        .flat_map(|(row, &o)| row.iter().map(move |v| v - o))
        .collect();
    let f = nmf::factorize(&shifted, channels, positions, n_components).map_err(|e| {
        GradCamError::Unsupported(format!("the layer's activations cannot be factorized: {e}"))
    })?;
    let embeddings =
        f.w.chunks_exact(n_components)
            .zip(&offsets)
            .flat_map(|(row, &o)| row.iter().map(move |w| w + o))
            .collect();
    let rows = f.h.chunks_exact(positions).map(<[f32]>::to_vec).collect();
    Ok((embeddings, rows))
}

/// Deep Feature Factorization of one image at `ask.layers[0]`: `ask.params.n_components`
/// concepts, each with its map and its `concept_top_k` classes. Each target's map is each
/// pixel's strongest concept (what the overlay's brightness shows).
pub fn explain(
    network: &dyn Network,
    image: &Image<'_>,
    layer: usize,
    ask: &CamAsk,
) -> Result<(CamMaps, PassTimings), GradCamError> {
    if ask.layers.len() != 1 {
        return Err(GradCamError::Unsupported(
            "dff factorizes one layer's activations: give one `layer`".into(),
        ));
    }
    let input = &image.normalised;
    let size = input.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let start = Instant::now();
    // NMF iterates on the activations: they are taken as the reference computes them.
    let pass = network.forward(input, &[layer], Needs::ExactOutputs)?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let logits = pass.logits.detach();
    let probabilities = Vec::<f32>::try_from(logits.get(0).softmax(-1, Kind::Float))?;
    let shape = pass.maps[0].size();
    let (channels, h, w) = (shape[1] as usize, shape[2] as usize, shape[3] as usize);
    let activation = Vec::<f32>::try_from(pass.maps[0].contiguous().view([-1]))?;
    let k = ask.params.n_components;
    let (embeddings, rows) = factorize(&activation, channels, k)?;

    // computation_on_concepts: the classifier on each concept's embedding, softmaxed.
    let concepts = Tensor::from_slice(&embeddings)
        .view([channels as i64, k as i64])
        .transpose(0, 1)
        .contiguous();
    let scores = match network.classify_concepts(layer, &concepts) {
        Ok(logits) => {
            let p = logits.softmax(-1, Kind::Float);
            let classes = p.size()[1] as usize;
            let p = Vec::<f32>::try_from(p.contiguous().view([-1]))?;
            p.chunks_exact(classes)
                .map(|row| gradcam::top_k(row, ask.params.concept_top_k.min(classes)))
                .collect()
        }
        Err(NetworkError::Unsupported(_)) => vec![vec![]; k],
        Err(e) => return Err(e.into()),
    };
    let concepts: Vec<Concept> = rows
        .iter()
        .zip(scores)
        .map(|(row, classes)| Concept {
            map: scale::resize_bilinear(&scale::min_max_scale(row), w, h, width, height),
            classes,
        })
        .collect();
    let strongest: Vec<f32> = (0..width * height)
        .map(|i| {
            concepts
                .iter()
                .map(|c| c.map[i])
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect();
    let maps =
        super::same_map_for_every_target(&ask.targets, &probabilities, strongest, width, height);
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((
        CamMaps {
            probabilities,
            logits: None,
            method: ask.method,
            layers: ask.layers.clone(),
            maps,
            concepts: Some(Concepts {
                concepts,
                pixels: image.pixels.to_vec(),
                width,
                height,
            }),
        },
        PassTimings {
            forward_ms,
            backward_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two channels' worth of a rank-one pattern: the one concept's row follows the
    /// pattern, its embedding adds back each row's minimum.
    #[test]
    fn a_rank_one_layer_is_one_concept_with_offsets_restored() {
        let pattern = [0.0f32, 1.0, 2.0, 4.0];
        let activation: Vec<f32> = [(3.0f32, -1.0f32), (1.0, 5.0)]
            .iter()
            .flat_map(|&(scale, shift)| pattern.iter().map(move |p| p * scale + shift))
            .collect();
        let (embeddings, rows) = factorize(&activation, 2, 1).unwrap();
        let row = &rows[0];
        for (p, r) in pattern.iter().zip(row) {
            assert!((r / row[3] - p / 4.0).abs() < 1e-3, "{row:?}");
        }
        // W * H reproduces the shifted rows; W + offset is the embedding.
        let w0 = embeddings[0] - (-1.0);
        assert!((w0 * row[3] - 12.0).abs() < 1e-2, "{embeddings:?} {row:?}");
    }

    #[test]
    fn nan_is_zero_and_infinity_is_refused() {
        let (_, rows) = factorize(&[f32::NAN, 1.0, 2.0, 3.0], 2, 1).unwrap();
        assert!(rows[0].iter().all(|v| v.is_finite()));
        let e = factorize(&[f32::INFINITY, 1.0, 2.0, 3.0], 2, 1).unwrap_err();
        assert!(e.to_string().contains("cannot be factorized"), "{e}");
    }
}

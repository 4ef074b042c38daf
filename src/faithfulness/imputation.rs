//! ROAD's perturbation (pytorch-grad-cam 1.5.7's `RemoveMostRelevantFirst`,
//! `RemoveLeastRelevantFirst` and `NoisyLinearImputer`): the pixels a map ranks above (or
//! below) a percentile are removed and filled in from their neighbours, so that the model
//! cannot tell where they were from the fill itself.
//!
//! Each removed pixel is the weighted mean of its eight neighbours (1/6 across, 1/12
//! diagonally; neighbours outside the image left out), which couples the removed pixels
//! into one sparse linear system per image. pytorch-grad-cam solves it with SciPy's
//! `spsolve` (SuperLU); here faer's sparse Cholesky: the system's negation is symmetric
//! and positive definite (weakly diagonally dominant, with a known pixel or the border
//! around every connected region), so an LLT with a fill-reducing ordering is the solver
//! made for it. Both solve in float64; the answer is then rounded to float32 as torch does.

use faer::linalg::solvers::Solve;
use faer::sparse::{SparseColMat, Triplet};
use faer::{Mat, Side};

use crate::cam::LegacyNormal;

/// The neighbours' offsets (row, column) and weights, pytorch-grad-cam's
/// `neighbors_weights`, in its order.
const NEIGHBOURS: [((isize, isize), f64); 8] = [
    ((1, 1), 1.0 / 12.0),
    ((0, 1), 1.0 / 6.0),
    ((-1, 1), 1.0 / 12.0),
    ((1, -1), 1.0 / 12.0),
    ((0, -1), 1.0 / 6.0),
    ((-1, -1), 1.0 / 12.0),
    ((1, 0), 1.0 / 6.0),
    ((-1, 0), 1.0 / 6.0),
];

/// pytorch-grad-cam's noise: 0.01 times a standard normal draw, added to each filled-in value.
pub const NOISE: f32 = 0.01;

/// Which pixels ROAD removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Most relevant first (MoRF): the pixels at or above the map's `p`-th percentile.
    MostRelevantFirst,
    /// Least relevant first (LeRF): those at or above the `p`-th percentile of `1 - map`.
    LeastRelevantFirst,
}

/// The imputation's linear system could not be solved (faer's message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("ROAD's imputation could not be solved: {0}")]
pub struct ImputeError(String);

/// The mask ROAD keeps: true where the pixel stays. `map` is row-major at the image's size.
pub fn kept(map: &[f32], order: Order, percentile: f64) -> Vec<bool> {
    // RemoveLeastRelevantFirst hands `1 - mask` (in float32) to the same code.
    let ranked: Vec<f32> = match order {
        Order::MostRelevantFirst => map.to_vec(),
        Order::LeastRelevantFirst => map.iter().map(|v| 1.0 - v).collect(),
    };
    let threshold = percentile_of(&ranked, percentile);
    ranked.iter().map(|&v| v < threshold).collect()
}

/// `np.percentile(values, p)` of float32 values (method "linear", `p` a Python number):
/// NumPy's virtual index in float64, then its float32 `_lerp` from the nearer end.
pub fn percentile_of(values: &[f32], p: f64) -> f32 {
    assert!(!values.is_empty(), "a percentile of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let q = p / 100.0;
    // `_compute_virtual_index` as NumPy writes it, with method "linear"'s alpha and beta.
    let (alpha, beta) = (1.0, 1.0);
    let virtual_index = n as f64 * q + (alpha + q * (1.0 - alpha - beta)) - 1.0;
    let previous = (virtual_index.floor().max(0.0) as usize).min(n - 1);
    let next = (previous + 1).min(n - 1);
    let gamma = virtual_index - previous as f64;
    let (a, b) = (sorted[previous], sorted[next]);
    let difference = b - a;
    if gamma >= 0.5 {
        b - difference * (1.0 - gamma) as f32
    } else {
        a + difference * gamma as f32
    }
}

/// The noise [`impute`] adds for `kept`: `NOISE` times a standard normal draw for each
/// removed pixel of each channel (channel after channel, pixel after pixel, as
/// `torch.randn_like(res.t())` lays them out). Drawn apart from the solve so that the
/// solves can run in parallel and the draws stay in one order.
pub fn noise_for(kept: &[bool], channels: usize, normal: &mut LegacyNormal) -> Vec<f32> {
    let removed = kept.iter().filter(|&&k| !k).count();
    (0..channels * removed)
        .map(|_| NOISE * normal.draw() as f32)
        .collect()
}

/// The image (`channels` x `height` x `width`, row-major, as the model takes it) with every
/// pixel not `kept` filled in from its neighbours, plus `noise` ([`noise_for`]; None: no
/// noise).
pub fn impute(
    image: &[f32],
    channels: usize,
    (height, width): (usize, usize),
    kept: &[bool],
    noise: Option<&[f32]>,
) -> Result<Vec<f32>, ImputeError> {
    let pixels = height * width;
    assert_eq!(image.len(), channels * pixels);
    assert_eq!(kept.len(), pixels);
    let removed: Vec<usize> = (0..pixels).filter(|&i| !kept[i]).collect();
    let mut filled = image.to_vec();
    if removed.is_empty() {
        return Ok(filled);
    }
    if removed.len() == pixels {
        // Nothing is kept (a map with more pixels at its minimum than the percentile, as
        // EigenCAM's zeros): the system is singular with a zero right-hand side, and
        // SciPy's SuperLU answers zeros, so the image becomes the normalised mean (plus
        // the noise), as pytorch-grad-cam's does.
        for (i, value) in filled.iter_mut().enumerate() {
            *value = noise.map_or(0.0, |n| n[i]);
        }
        return Ok(filled);
    }
    let mut unknown = vec![usize::MAX; pixels];
    for (v, &i) in removed.iter().enumerate() {
        unknown[i] = v;
    }
    let n = removed.len();
    // The system negated (pytorch-grad-cam's `A` is negative definite): M x = r.
    let mut entries = Vec::with_capacity(n * 9);
    let mut right = Mat::<f64>::zeros(n, channels);
    for (v, &i) in removed.iter().enumerate() {
        let (row, column) = ((i / width) as isize, (i % width) as isize);
        let mut inside = 1.0f64;
        for &((dr, dc), weight) in &NEIGHBOURS {
            let (r, c) = (row + dr, column + dc);
            if r < 0 || c < 0 || r >= height as isize || c >= width as isize {
                inside -= weight;
                continue;
            }
            let j = r as usize * width + c as usize;
            if kept[j] {
                // `b -= weight * img` with the product in float32 (a Python float times a
                // float32 array), the sum in float64.
                for ch in 0..channels {
                    let product = weight as f32 * image[ch * pixels + j];
                    right[(v, ch)] += product as f64;
                }
            } else {
                entries.push(Triplet::new(v, unknown[j], -weight));
            }
        }
        entries.push(Triplet::new(v, v, inside));
    }
    let system = SparseColMat::<usize, f64>::try_new_from_triplets(n, n, &entries)
        .map_err(|e| ImputeError(format!("{e:?}")))?;
    let factor = system
        .sp_cholesky(Side::Lower)
        .map_err(|e| ImputeError(format!("{e:?}")))?;
    let solution = factor.solve(&right);
    for ch in 0..channels {
        for (v, &i) in removed.iter().enumerate() {
            let added = noise.map_or(0.0, |noise| noise[ch * n + v]);
            filled[ch * pixels + i] = solution[(v, ch)] as f32 + added;
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_as_numpy() {
        let values = [3.0f32, 1.0, 2.0, 4.0];
        assert_eq!(percentile_of(&values, 0.0), 1.0);
        assert_eq!(percentile_of(&values, 100.0), 4.0);
        assert_eq!(percentile_of(&values, 50.0), 2.5);
        // np.percentile([1, 2, 3, 4], 20) = 1.6 (in float32).
        assert_eq!(percentile_of(&values, 20.0), 1.6f32);
    }

    #[test]
    fn most_relevant_first_removes_the_top_of_the_map() {
        let map: Vec<f32> = (0..10).map(|i| i as f32 / 9.0).collect();
        let keep = kept(&map, Order::MostRelevantFirst, 80.0);
        assert_eq!(keep.iter().filter(|&&k| !k).count(), 2);
        assert!(!keep[9] && !keep[8] && keep[7]);
        let keep = kept(&map, Order::LeastRelevantFirst, 80.0);
        assert!(!keep[0] && !keep[1] && keep[2]);
    }

    #[test]
    fn a_smooth_image_is_filled_in_exactly() {
        // A constant image: every removed pixel's neighbours agree, so the fill is exact.
        let (h, w) = (6, 7);
        let image = vec![0.25f32; 2 * h * w];
        let mut keep = vec![true; h * w];
        for i in [0, 8, 9, 10, 16, 41] {
            keep[i] = false;
        }
        let filled = impute(&image, 2, (h, w), &keep, None).unwrap();
        for (a, b) in filled.iter().zip(&image) {
            assert!((a - b).abs() < 1e-6, "{a} != {b}");
        }
    }

    #[test]
    fn the_fill_is_the_mean_of_the_neighbours() {
        // One removed pixel in the middle: the weighted mean of its eight neighbours.
        let (h, w) = (3, 3);
        let image: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let mut keep = vec![true; 9];
        keep[4] = false;
        let filled = impute(&image, 1, (h, w), &keep, None).unwrap();
        let expected = (0.0 + 2.0 + 6.0 + 8.0) / 12.0 + (1.0 + 3.0 + 5.0 + 7.0) / 6.0;
        assert!((filled[4] - expected).abs() < 1e-6);
        assert_eq!(&filled[..4], &image[..4]);
    }

    #[test]
    fn seeded_noise_repeats_and_nothing_kept_gives_zeros() {
        let image: Vec<f32> = (0..25).map(|i| (i % 7) as f32).collect();
        let mut keep = vec![true; 25];
        keep[12] = false;
        keep[13] = false;
        let noise = |seed| noise_for(&keep, 1, &mut LegacyNormal::new(seed));
        assert_eq!(noise(3).len(), 2);
        let a = impute(&image, 1, (5, 5), &keep, Some(&noise(3))).unwrap();
        let b = impute(&image, 1, (5, 5), &keep, Some(&noise(3))).unwrap();
        let quiet = impute(&image, 1, (5, 5), &keep, None).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, quiet);
        assert!((a[12] - quiet[12]).abs() < 0.1);
        // SciPy's answer to the singular system of an image with nothing kept.
        assert_eq!(
            impute(&image, 1, (5, 5), &[false; 25], None).unwrap(),
            vec![0.0; 25]
        );
    }
}

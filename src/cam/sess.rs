//! SESS, "Saliency Enhancing with Scaling and Sliding" (pytorch-grad-cam 1.5.7's `SESS`
//! with its defaults): the image resized to 12 scales, each cut into windows of the
//! input's size, the base method's map of every window weighted by the window's softmax
//! score for the target, pasted back and averaged where positive, then blurred.
//!
//! What it costs: at a 224 x 224 input the scales are 224, 288, ..., 928 and give 122
//! windows, so 122 of the base method's explanations (Grad-CAM: a forward and a backward
//! pass each) for one map. The caller's `abandoned` is asked between windows, so the
//! request timeout bounds it as it bounds ScoreCAM.

use std::time::Instant;

use tch::{Kind, Tensor};

use super::{compute, returned_map, scale, CamAsk, CamMap, CamMaps, Image, Targets};
use crate::gradcam::{GradCamError, PassTimings};
use crate::model::Network;

/// pytorch-grad-cam's defaults: 12 scales, each `2/7` of the window larger than the last.
const SCALES: usize = 12;
const SCALE_STEP_RATIO: f64 = 2.0 / 7.0;
/// `cv2.GaussianBlur(cam, (11, 11), 5.0)` on the fused map.
const BLUR_SIZE: usize = 11;
const BLUR_SIGMA: f64 = 5.0;

/// Where a window was cut: its top-left corner in the image resized to `scaled_width` x
/// `scaled_height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub scaled_width: usize,
    pub scaled_height: usize,
}

/// The window's sizes of the shorter side, smallest first (`SESS.get_scales`).
pub fn scales(window: usize) -> Vec<usize> {
    let step = (window as f64 * SCALE_STEP_RATIO).round() as usize;
    (0..SCALES).map(|i| window + step * i).collect()
}

/// Where windows start along one side (`window_starts`): every `step`, the last one moved
/// back so that it ends at the border.
pub fn window_starts(length: usize, step: usize, window: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    for start in (0..length).step_by(step) {
        if start + window >= length {
            starts.push(length.saturating_sub(window));
            break;
        }
        starts.push(start);
    }
    starts
}

/// torchvision's `resize(tensor, short_side)`: the shorter side to `short_side`, the
/// longer in proportion (truncated), bilinear with antialiasing; the same size: as is.
fn resized(input: &Tensor, short_side: usize) -> Tensor {
    let size = input.size();
    let (h, w) = (size[2] as usize, size[3] as usize);
    let (out_h, out_w) = if w <= h {
        (short_side * h / w, short_side)
    } else {
        (short_side, short_side * w / h)
    };
    if (out_h, out_w) == (h, w) {
        return input.shallow_clone();
    }
    input.internal_upsample_bilinear2d_aa(
        [out_h as i64, out_w as i64],
        false,
        None::<f64>,
        None::<f64>,
    )
}

/// Every window of every scale, and where it was cut (`SESS.collect_patches`).
fn windows(input: &Tensor, window: usize) -> Vec<(Tensor, Window)> {
    let mut out = Vec::new();
    for scale in scales(window) {
        let scaled = resized(input, scale);
        let size = scaled.size();
        let (scaled_height, scaled_width) = (size[2] as usize, size[3] as usize);
        for y in window_starts(scaled_height, window, window) {
            for x in window_starts(scaled_width, window, window) {
                let patch =
                    scaled
                        .narrow(2, y as i64, window as i64)
                        .narrow(3, x as i64, window as i64);
                let at = Window {
                    x,
                    y,
                    scaled_width,
                    scaled_height,
                };
                out.push((patch, at));
            }
        }
    }
    out
}

/// The window's map placed at its corner of the resized image (zero elsewhere), resized
/// back to the input's size (`SESS.paste_cam`: `cv2.resize`, INTER_LINEAR).
pub fn pasted(map: &[f32], window: usize, at: Window, width: usize, height: usize) -> Vec<f32> {
    let mut canvas = vec![0f32; at.scaled_width * at.scaled_height];
    for (row, values) in map.chunks_exact(window).enumerate() {
        let start = (at.y + row) * at.scaled_width + at.x;
        canvas[start..start + window].copy_from_slice(values);
    }
    scale::resize_bilinear(&canvas, at.scaled_width, at.scaled_height, width, height)
}

/// `_CAMFusion` with `pool='mean'`, `theta=0`: each pixel's mean over the windows whose
/// map is positive there.
pub struct Fusion {
    total: Vec<f32>,
    counts: Vec<f32>,
}

impl Fusion {
    pub fn new(pixels: usize) -> Self {
        Fusion {
            total: vec![0.0; pixels],
            counts: vec![0.0; pixels],
        }
    }

    pub fn add(&mut self, map: &[f32]) {
        for ((t, c), &v) in self.total.iter_mut().zip(&mut self.counts).zip(map) {
            if v > 0.0 {
                *t += v;
                *c += 1.0;
            }
        }
    }

    pub fn result(&self) -> Vec<f32> {
        self.total
            .iter()
            .zip(&self.counts)
            .map(|(&t, &c)| if c > 0.0 { t / c } else { 0.0 })
            .collect()
    }
}

/// OpenCV's Gaussian kernel for float images: `exp(-x^2 / (2 sigma^2))` normalised, in
/// float64 (OpenCV computes it bit-exactly in soft float64), rounded to float32.
fn gaussian_kernel(size: usize, sigma: f64) -> Vec<f32> {
    let centre = (size - 1) as f64 / 2.0;
    let values: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - centre).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = values.iter().sum();
    values.iter().map(|v| (v / sum) as f32).collect()
}

/// Index `i` (possibly outside `0..n`) under OpenCV's default border, reflect-101
/// (`gfedcb|abcdefgh|gfedcba`).
fn reflect101(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let i = i.rem_euclid(period);
    (if i < n { i } else { period - i }) as usize
}

/// `cv2.GaussianBlur(map, (11, 11), 5.0)` on a float32 map: the separable filter, rows
/// then columns, reflect-101 borders.
pub fn gaussian_blur(map: &[f32], width: usize, height: usize) -> Vec<f32> {
    let kernel = gaussian_kernel(BLUR_SIZE, BLUR_SIGMA);
    let radius = (BLUR_SIZE / 2) as isize;
    let mut rows = vec![0f32; map.len()];
    for y in 0..height {
        let row = &map[y * width..(y + 1) * width];
        for x in 0..width {
            rows[y * width + x] = kernel.iter().enumerate().fold(0.0, |s, (k, &f)| {
                let i = reflect101(x as isize + k as isize - radius, width);
                s + f * row[i]
            });
        }
    }
    let mut out = vec![0f32; map.len()];
    for y in 0..height {
        for x in 0..width {
            out[y * width + x] = kernel.iter().enumerate().fold(0.0, |s, (k, &f)| {
                let j = reflect101(y as isize + k as isize - radius, height);
                s + f * rows[j * width + x]
            });
        }
    }
    out
}

/// SESS's map for each target of `ask`, with `ask.params`' base method (Grad-CAM unless
/// given) at `ask.layers`. The probabilities and the top-1 are the whole image's.
pub fn enhanced(
    network: &dyn Network,
    input: &Tensor,
    ask: &CamAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<(CamMaps, PassTimings), GradCamError> {
    let size = input.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let start = Instant::now();
    let logits = network.logits(input)?;
    let mut forward_ms = start.elapsed().as_secs_f64() * 1e3;
    let probabilities = Vec::<f32>::try_from(logits.get(0).softmax(-1, Kind::Float))?;
    // np.argmax: the first largest.
    let targets = ask.targets.classes(&probabilities);

    // The window is the shorter side: the smallest scale is the image itself.
    let window = width.min(height);
    let base = CamAsk {
        method: ask.method.per_layer(&ask.params),
        targets: Targets::Classes(targets.clone()),
        layers: ask.layers.clone(),
        eigen_smooth: ask.eigen_smooth,
        aug_smooth: false,
        params: ask.params.clone(),
    };
    let mut backward_ms = 0.0;
    // Per window: its softmax score for each target, and its map for each target.
    let mut scored: Vec<(Window, Vec<f32>, Vec<CamMap>)> = Vec::new();
    for (patch, at) in windows(input, window) {
        if abandoned() {
            return Err(GradCamError::Abandoned);
        }
        let image = Image {
            normalised: patch,
            pixels: &[],
        };
        let (cams, timings) = compute(network, &image, &base, abandoned)?;
        forward_ms += timings.forward_ms;
        backward_ms += timings.backward_ms;
        // SESS.get_scores: the target's softmax score, clipped at 0.
        let scores = targets
            .iter()
            .map(|&t| cams.probabilities[t].max(0.0))
            .collect();
        scored.push((at, scores, cams.maps));
    }

    let start = Instant::now();
    let maps = targets
        .iter()
        .enumerate()
        .map(|(j, &target)| {
            let max_score = scored
                .iter()
                .map(|(_, s, _)| s[j])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut fusion = Fusion::new(width * height);
            for (at, scores, cams) in &scored {
                // Channel-wise weights in [0, 1]; all ones when no window scores.
                let weight = if max_score > 0.0 {
                    scores[j] / max_score
                } else {
                    1.0
                };
                let map: Vec<f32> = returned_map(&cams[j], window, window)
                    .iter()
                    .map(|v| v * weight)
                    .collect();
                fusion.add(&pasted(&map, window, *at, width, height));
            }
            let blurred = gaussian_blur(&fusion.result(), width, height);
            CamMap {
                target,
                map: scale::min_max_scale(&blurred),
                width,
                height,
                scaled: true,
                channels: 1,
            }
        })
        .collect();
    backward_ms += start.elapsed().as_secs_f64() * 1e3;
    Ok((
        CamMaps {
            probabilities,
            logits: None,
            method: ask.method,
            layers: ask.layers.clone(),
            maps,
            concepts: None,
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

    #[test]
    fn scales_and_windows_are_pytorch_grad_cams() {
        assert_eq!(
            scales(224),
            [224, 288, 352, 416, 480, 544, 608, 672, 736, 800, 864, 928]
        );
        assert_eq!(window_starts(224, 224, 224), [0]);
        assert_eq!(window_starts(288, 224, 224), [0, 64]);
        assert_eq!(window_starts(672, 224, 224), [0, 224, 448]);
        assert_eq!(window_starts(928, 224, 224), [0, 224, 448, 672, 704]);
        let count: usize = scales(224)
            .iter()
            .map(|&s| window_starts(s, 224, 224).len().pow(2))
            .sum();
        assert_eq!(count, 122);
    }

    #[test]
    fn reflect101_mirrors_without_repeating_the_edge() {
        let got: Vec<usize> = (-3..8).map(|i| reflect101(i, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
    }

    #[test]
    fn blur_keeps_a_flat_map_and_spreads_a_point_symmetrically() {
        let flat = gaussian_blur(&[0.5; 30 * 20], 30, 20);
        assert!(flat.iter().all(|v| (v - 0.5).abs() < 1e-6), "{flat:?}");
        let mut point = vec![0f32; 21 * 21];
        point[10 * 21 + 10] = 1.0;
        let b = gaussian_blur(&point, 21, 21);
        let k = gaussian_kernel(BLUR_SIZE, BLUR_SIGMA);
        assert!((b[10 * 21 + 10] - k[5] * k[5]).abs() < 1e-7);
        assert_eq!(b[10 * 21 + 9], b[10 * 21 + 11]);
        assert_eq!(b[9 * 21 + 10], b[11 * 21 + 10]);
        let total: f32 = b.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    #[test]
    fn fusion_averages_only_where_maps_are_positive() {
        let mut f = Fusion::new(3);
        f.add(&[1.0, 0.0, 0.5]);
        f.add(&[0.5, 0.0, 0.0]);
        assert_eq!(f.result(), [0.75, 0.0, 0.5]);
    }

    #[test]
    fn a_window_is_pasted_where_it_was_cut() {
        let at = Window {
            x: 2,
            y: 0,
            scaled_width: 4,
            scaled_height: 2,
        };
        // The same size: pasting is placing.
        let got = pasted(&[1.0, 2.0, 3.0, 4.0], 2, at, 4, 2);
        assert_eq!(got, [0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0]);
    }
}

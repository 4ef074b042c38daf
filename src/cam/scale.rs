//! pytorch-grad-cam's `scale_cam_image`: a map min-max scaled, and bilinearly resized as
//! OpenCV's INTER_LINEAR does it. The multi-layer and `aug_smooth` maps are made of these,
//! and the overlay (`render`) draws with them.

/// `x - min`, then `/ (max + 1e-7)`: values in [0, 1). A flat map becomes all zeros, never
/// NaN. (Subtracting the minimum matters even when every value is positive.)
pub fn min_max_scale(map: &[f32]) -> Vec<f32> {
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    let shifted: Vec<f32> = map.iter().map(|v| v - min).collect();
    let max = shifted.iter().copied().fold(0.0, f32::max);
    shifted.iter().map(|v| v / (max + 1e-7)).collect()
}

/// OpenCV INTER_LINEAR taps from `src` samples to `dst`: for each output index, the two
/// source indices and the weight of the second (pixel centres aligned, edges clamped).
pub(crate) fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let i = f.floor();
            let (i, frac) = if i < 0.0 {
                (0, 0.0)
            } else if i as usize >= src - 1 {
                (src - 1, 0.0)
            } else {
                (i as usize, (f - i) as f32)
            };
            (i, (i + 1).min(src - 1), frac)
        })
        .collect()
}

/// Bilinear upsampling with OpenCV's INTER_LINEAR sampling (pixel centres aligned, i.e.
/// `align_corners=False`, edges clamped), one output row at a time. Each source row is
/// interpolated along x once; an output pixel is then one step along y between two of
/// them: the same float operations as a pixel-by-pixel bilinear, so the same values, at a
/// fraction of the cost, and a large picture's map is never held whole.
pub struct Upsampler {
    rows: Vec<Vec<f32>>,
    ys: Vec<(usize, usize, f32)>,
}

impl Upsampler {
    pub fn new(
        map: &[f32],
        width: usize,
        height: usize,
        out_width: usize,
        out_height: usize,
    ) -> Self {
        assert_eq!(map.len(), width * height);
        let xs = taps(width, out_width);
        let rows = map
            .chunks_exact(width)
            .map(|row| {
                xs.iter()
                    .map(|&(x0, x1, fx)| row[x0] * (1.0 - fx) + row[x1] * fx)
                    .collect()
            })
            .collect();
        Self {
            rows,
            ys: taps(height, out_height),
        }
    }

    /// Output row `y` into `out` (of the output width).
    pub fn row(&self, y: usize, out: &mut [f32]) {
        let (y0, y1, fy) = self.ys[y];
        let (top, bottom) = (&self.rows[y0], &self.rows[y1]);
        for ((o, t), b) in out.iter_mut().zip(top).zip(bottom) {
            *o = t * (1.0 - fy) + b * fy;
        }
    }

    /// The smallest and largest output values.
    pub fn range(&self, out_width: usize) -> (f32, f32) {
        // Eight lanes, so the compiler can keep them in one vector register each.
        let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
        let mut row = vec![0f32; out_width];
        for y in 0..self.ys.len() {
            self.row(y, &mut row);
            for chunk in row.chunks(8) {
                for (i, &v) in chunk.iter().enumerate() {
                    lo[i] = if v < lo[i] { v } else { lo[i] };
                    hi[i] = if v > hi[i] { v } else { hi[i] };
                }
            }
        }
        (
            lo.into_iter().fold(f32::INFINITY, f32::min),
            hi.into_iter().fold(f32::NEG_INFINITY, f32::max),
        )
    }
}

/// Bilinear resize of a row-major `width` x `height` map, with OpenCV's INTER_LINEAR
/// sampling (pixel centres aligned, i.e. `align_corners=False`, edges clamped).
pub fn resize_bilinear(
    map: &[f32],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<f32> {
    let up = Upsampler::new(map, width, height, out_width, out_height);
    let mut out = vec![0f32; out_width * out_height];
    for (y, row) in out.chunks_exact_mut(out_width.max(1)).enumerate() {
        up.row(y, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_scale_subtracts_the_minimum() {
        let s = min_max_scale(&[2.0, 3.0, 4.0]);
        assert_eq!(s[0], 0.0);
        assert!((s[1] - 0.5).abs() < 1e-6);
        assert!(s[2] <= 1.0 && s[2] > 0.9999);
    }

    #[test]
    fn flat_map_scales_to_zeros_not_nan() {
        assert_eq!(min_max_scale(&[0.0; 4]), vec![0.0; 4]);
        assert_eq!(min_max_scale(&[3.0; 4]), vec![0.0; 4]);
    }

    #[test]
    fn bilinear_matches_opencv_on_a_known_case() {
        // cv2.resize(np.float32([[0, 1], [2, 3]]), (4, 4), interpolation=INTER_LINEAR)
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn same_size_resize_is_identity() {
        let map: Vec<f32> = (0..49).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&map, 7, 7, 7, 7), map);
    }
}

//! From a raw Grad-CAM map to the heat-map overlay a person looks at, as pytorch-grad-cam
//! draws it: min-max scaling, bilinear upsampling (OpenCV INTER_LINEAR), min-max scaling
//! again (its `aggregate_multi_layers` rescales the upsampled map, which moves pixels by up
//! to 3 levels), OpenCV's JET colours, a weighted blend, rescaled to full range.

use image::{ImageEncoder, RgbImage};

use crate::colormap;
use crate::preprocess::Region;

/// `x - min`, then `/ (max + 1e-7)`: values in [0, 1). A flat map becomes all zeros, never
/// NaN. (Subtracting the minimum matters even when every value is positive.)
pub fn min_max_scale(map: &[f32]) -> Vec<f32> {
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    let shifted: Vec<f32> = map.iter().map(|v| v - min).collect();
    let max = shifted.iter().copied().fold(0.0, f32::max);
    shifted.iter().map(|v| v / (max + 1e-7)).collect()
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
    assert_eq!(map.len(), width * height);
    let taps = |src: usize, dst: usize| -> Vec<(usize, usize, f32)> {
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
    };
    let xs = taps(width, out_width);
    let ys = taps(height, out_height);
    let mut out = Vec::with_capacity(out_width * out_height);
    for &(y0, y1, fy) in &ys {
        let (r0, r1) = (&map[y0 * width..][..width], &map[y1 * width..][..width]);
        for &(x0, x1, fx) in &xs {
            let top = r0[x0] * (1.0 - fx) + r0[x1] * fx;
            let bottom = r1[x0] * (1.0 - fx) + r1[x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The map as overlay intensities in [0, 1] at `width` x `height`: scaled, upsampled,
/// scaled again, as pytorch-grad-cam's `GradCAM.__call__` returns it.
pub fn heat_mask(
    map: &[f32],
    map_width: usize,
    map_height: usize,
    width: u32,
    height: u32,
) -> Vec<f32> {
    min_max_scale(&resize_bilinear(
        &min_max_scale(map),
        map_width,
        map_height,
        width as usize,
        height as usize,
    ))
}

/// Draws the map over the picture. `alpha` is the heat map's weight (pytorch-grad-cam's
/// `1 - image_weight`, 0.5 by default). The map covers `region` of the picture (the whole
/// picture unless the model saw a crop); outside it the picture is shown at the blend's
/// image weight alone, dimmed, so it is plain which part the model saw.
pub fn overlay(
    picture: &RgbImage,
    map: &[f32],
    map_width: usize,
    map_height: usize,
    region: Region,
    alpha: f32,
) -> RgbImage {
    let (w, h) = picture.dimensions();
    let mask = heat_mask(map, map_width, map_height, region.width, region.height);
    let image_weight = 1.0 - alpha;
    // Blend in [0, 1] floats, as show_cam_on_image does, then rescale by the maximum.
    let mut blended = vec![0f32; (w * h * 3) as usize];
    let mut max = 0f32;
    for (i, (px, out)) in picture
        .as_raw()
        .chunks_exact(3)
        .zip(blended.chunks_exact_mut(3))
        .enumerate()
    {
        let (x, y) = ((i as u32) % w, (i as u32) / w);
        let inside = x >= region.x
            && y >= region.y
            && x < region.x + region.width
            && y < region.y + region.height;
        let heat = if inside {
            let m = mask[((y - region.y) * region.width + (x - region.x)) as usize];
            // np.uint8(255 * mask): truncation.
            colormap::jet((255.0 * m) as u8)
        } else {
            [0, 0, 0]
        };
        let heat_weight = if inside { alpha } else { 0.0 };
        for c in 0..3 {
            let v = heat_weight * (heat[c] as f32 / 255.0) + image_weight * (px[c] as f32 / 255.0);
            out[c] = v;
            max = max.max(v);
        }
    }
    let bytes = blended
        .iter()
        .map(|v| {
            if max > 0.0 {
                (255.0 * (v / max)) as u8
            } else {
                0
            }
        })
        .collect();
    RgbImage::from_raw(w, h, bytes).expect("sized from the picture")
}

/// PNG bytes, with fast compression: an overlay is made once and sent once, and the fast
/// setting costs a fraction of the default's time for a somewhat larger file.
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    )
    .write_image(
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgb8,
    )
    .expect("encoding to memory cannot fail");
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

    #[test]
    fn overlay_has_picture_size_and_hot_spot_is_red() {
        let picture = RgbImage::from_pixel(64, 32, image::Rgb([128, 128, 128]));
        let mut map = vec![0.0f32; 49];
        map[0] = 1.0; // hot top-left corner
        let region = Region {
            x: 0,
            y: 0,
            width: 64,
            height: 32,
        };
        let out = overlay(&picture, &map, 7, 7, region, 0.5);
        assert_eq!(out.dimensions(), (64, 32));
        let corner = out.get_pixel(0, 0).0;
        let far = out.get_pixel(63, 31).0;
        assert!(corner[0] > corner[2], "hot spot should be red: {corner:?}");
        assert!(far[2] > far[0], "cold area should be blue: {far:?}");
    }

    #[test]
    fn overlay_outside_the_region_is_the_dimmed_picture() {
        let picture = RgbImage::from_pixel(10, 10, image::Rgb([200, 100, 50]));
        let region = Region {
            x: 2,
            y: 2,
            width: 4,
            height: 4,
        };
        let out = overlay(&picture, &[1.0; 49], 7, 7, region, 0.5);
        let outside = out.get_pixel(9, 9).0;
        // Same hue as the picture.
        assert!(outside[0] > outside[1] && outside[1] > outside[2]);
    }

    #[test]
    fn png_round_trips() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let back = image::load_from_memory(&encode_png(&img))
            .unwrap()
            .to_rgb8();
        assert_eq!(back, img);
    }
}

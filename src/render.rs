//! From a raw Grad-CAM map to the heat-map overlay a person looks at, as pytorch-grad-cam
//! draws it: min-max scaling, bilinear upsampling (OpenCV INTER_LINEAR), min-max scaling
//! again (its `aggregate_multi_layers` rescales the upsampled map, which moves pixels by up
//! to 3 levels; the scaling itself is `cam::scale`), OpenCV's JET colours, a weighted blend,
//! rescaled to full range; then encoded as the request asks (`OverlayOptions`).

use image::{ImageEncoder, RgbImage};
use serde::{Deserialize, Serialize};

use crate::cam::scale::{min_max_scale, Upsampler};
use crate::colormap;
use crate::gradcam::numpy_sum;
use crate::preprocess::{self, Region};

/// What the answer's overlay image shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverlayKind {
    /// The heat map blended over the picture (`overlay=true`).
    #[default]
    Blend,
    /// No overlay image (`overlay=false`).
    Off,
    /// The coloured heat map alone (`overlay=heatmap`).
    Heatmap,
}

/// What an overlay image drawn shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drawn {
    /// The heat map blended over the picture.
    Blend,
    /// The coloured heat map alone.
    Heatmap,
    /// A guided method's three-channel map as a picture (pytorch-grad-cam's
    /// `deprocess_image`): what `overlay=true` and `overlay=heatmap` give for them.
    Deprocessed,
    /// Deep Feature Factorization's concepts over the picture, with their legend.
    Concepts,
}

/// How the overlay image is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl OverlayFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    /// The answer's field that holds the overlay in this format.
    pub fn field(self) -> &'static str {
        match self {
            Self::Png => "overlay_png",
            Self::Jpeg => "overlay_jpeg",
            Self::Webp => "overlay_webp",
        }
    }
}

/// The range of an overlay's longest side (`overlay_max_side`): WebP's largest side at the
/// top.
pub const OVERLAY_MAX_SIDE: std::ops::RangeInclusive<u32> = 64..=16383;

/// How one overlay image is drawn and encoded: a request's overlay options, decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayOptions {
    pub kind: OverlayKind,
    /// Heat-map opacity, 0..=1 (pytorch-grad-cam's `1 - image_weight`).
    pub alpha: f32,
    /// The longest side, in pixels.
    pub max_side: u32,
    pub format: OverlayFormat,
}

/// The second min-max scaling of pytorch-grad-cam (its `scale_cam_image` after the
/// resize), applied to upsampled values as they are made: `(v - min) / ((max - min) +
/// 1e-7)`. min_max_scale computes `max(v - min)`, which is `max - min`, float subtraction
/// being monotonic.
struct HeatScale {
    up: Upsampler,
    min: f32,
    denominator: f32,
}

impl HeatScale {
    fn new(map: &[f32], map_width: usize, map_height: usize, width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        let up = Upsampler::new(&min_max_scale(map), map_width, map_height, w, h);
        let (min, max) = up.range(w);
        let range = if w * h == 0 { 0.0 } else { max - min };
        Self {
            up,
            min,
            denominator: range + 1e-7,
        }
    }

    /// Row `y` of the mask, values in [0, 1).
    fn row(&self, y: usize, out: &mut [f32]) {
        self.up.row(y, out);
        for v in out {
            *v = (*v - self.min) / self.denominator;
        }
    }
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
    let scale = HeatScale::new(map, map_width, map_height, width, height);
    let mut mask = vec![0f32; width as usize * height as usize];
    for (y, row) in mask.chunks_exact_mut((width as usize).max(1)).enumerate() {
        scale.row(y, row);
    }
    mask
}

/// Draws the map over the picture. `alpha` is the heat map's weight (pytorch-grad-cam's
/// `1 - image_weight`, 0.5 by default). The map covers `region` of the picture (the whole
/// picture unless the model saw a crop); outside it the picture is shown at the blend's
/// image weight alone, dimmed, so it is plain which part the model saw.
///
/// The result equals show_cam_on_image's float blend `alpha * jet / 255 + image_weight *
/// pixel / 255`, rescaled by its maximum, value for value; but each term takes one of 256
/// values, so both come from tables, the maximum from the brightest pixel under each heat
/// level, and the final bytes from a table per level: no float image is ever held.
pub fn overlay(
    picture: &RgbImage,
    map: &[f32],
    map_width: usize,
    map_height: usize,
    region: Region,
    alpha: f32,
) -> RgbImage {
    let (w, h) = (picture.width() as usize, picture.height() as usize);
    let (rx, ry) = (region.x as usize, region.y as usize);
    let (rw, rh) = (region.width as usize, region.height as usize);
    assert!(
        rx + rw <= w && ry + rh <= h,
        "the region lies within the picture"
    );
    let image_weight = 1.0 - alpha;
    let heat: Vec<[f32; 3]> = colormap::JET
        .iter()
        .map(|rgb| rgb.map(|v| alpha * (v as f32 / 255.0)))
        .collect();
    let base: Vec<f32> = (0..=255u8)
        .map(|p| image_weight * (p as f32 / 255.0))
        .collect();

    // Heat levels, np.uint8(255 * mask) (a truncation), and the brightest picture value
    // per level and channel (present levels only).
    let scale = HeatScale::new(map, map_width, map_height, region.width, region.height);
    let mut levels = vec![0u8; rw * rh];
    let mut mask_row = vec![0f32; rw];
    for (y, row_levels) in levels.chunks_exact_mut(rw.max(1)).enumerate() {
        scale.row(y, &mut mask_row);
        for (level, &m) in row_levels.iter_mut().zip(&mask_row) {
            *level = (255.0 * m) as u8;
        }
    }
    let rgb = picture.as_raw();
    let row_parts = |y: usize, row: &'_ [u8]| -> (usize, usize) {
        // Byte offsets in a picture row where the region starts and ends.
        if (ry..ry + rh).contains(&y) {
            (rx * 3, (rx + rw) * 3)
        } else {
            (row.len(), row.len())
        }
    };
    let merge = |into: &mut [u8; 3], run: [u8; 3]| {
        for c in 0..3 {
            into[c] = into[c].max(run[c]);
        }
    };
    let mut brightest = [[0u8; 3]; 256];
    let mut present = [false; 256];
    let mut brightest_outside = [0u8; 3];
    for (y, row) in rgb.chunks_exact(w * 3).enumerate() {
        let (start, end) = row_parts(y, row);
        for px in row[..start]
            .chunks_exact(3)
            .chain(row[end..].chunks_exact(3))
        {
            for c in 0..3 {
                brightest_outside[c] = brightest_outside[c].max(px[c]);
            }
        }
        if start < end {
            let row_levels = &levels[(y - ry) * rw..][..rw];
            // Neighbours mostly share a level: keep its maximum in registers until the
            // level changes.
            let (mut current, mut run) = (row_levels[0], [0u8; 3]);
            for (px, &level) in row[start..end].chunks_exact(3).zip(row_levels) {
                if level != current {
                    merge(&mut brightest[current as usize], run);
                    present[current as usize] = true;
                    (current, run) = (level, [0; 3]);
                }
                run = [run[0].max(px[0]), run[1].max(px[1]), run[2].max(px[2])];
            }
            merge(&mut brightest[current as usize], run);
            present[current as usize] = true;
        }
    }
    // The blend's maximum (0 at least, as the reference folds from 0). Adding is monotonic,
    // so the brightest pixel of a level gives that level's largest sum.
    let mut max = (0..3).fold(0f32, |m, c| {
        m.max(0.0 + base[brightest_outside[c] as usize])
    });
    for level in (0..256).filter(|&l| present[l]) {
        for c in 0..3 {
            max = max.max(heat[level][c] + base[brightest[level][c] as usize]);
        }
    }
    let scaled = |v: f32| {
        if max > 0.0 {
            (255.0 * (v / max)) as u8
        } else {
            0
        }
    };
    let outside: Vec<u8> = base.iter().map(|&b| scaled(0.0 + b)).collect();
    // Output bytes per (level, channel), for the levels present.
    let mut table = vec![0u8; 256 * 3 * 256];
    for level in (0..256).filter(|&l| present[l]) {
        for c in 0..3 {
            let t = &mut table[(level * 3 + c) * 256..][..256];
            for (out, &b) in t.iter_mut().zip(&base) {
                *out = scaled(heat[level][c] + b);
            }
        }
    }

    let mut bytes = vec![0u8; w * h * 3];
    for (y, (row, out)) in rgb
        .chunks_exact(w * 3)
        .zip(bytes.chunks_exact_mut(w * 3))
        .enumerate()
    {
        let (start, end) = row_parts(y, row);
        for (o, &p) in out[..start].iter_mut().zip(&row[..start]) {
            *o = outside[p as usize];
        }
        for (o, &p) in out[end..].iter_mut().zip(&row[end..]) {
            *o = outside[p as usize];
        }
        if start < end {
            let row_levels = &levels[(y - ry) * rw..][..rw];
            let pixels = row[start..end].chunks_exact(3);
            for ((o, px), &level) in out[start..end]
                .chunks_exact_mut(3)
                .zip(pixels)
                .zip(row_levels)
            {
                let t = &table[level as usize * 768..][..768];
                o[0] = t[px[0] as usize];
                o[1] = t[256 + px[1] as usize];
                o[2] = t[512 + px[2] as usize];
            }
        }
    }
    RgbImage::from_raw(w as u32, h as u32, bytes).expect("sized from the picture")
}

/// An overlay image, encoded.
#[derive(Debug, Clone)]
pub struct EncodedOverlay {
    pub bytes: Vec<u8>,
    pub format: OverlayFormat,
    pub kind: Drawn,
    pub width: u32,
    pub height: u32,
}

/// The overlay's size for an image of `width` x `height`: the same, or scaled down (aspect
/// kept) so that its longer side is `max_side`.
pub fn fitted_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= max_side {
        return (width, height);
    }
    let scale =
        |side: u32| ((side as u64 * max_side as u64 + long as u64 / 2) / long as u64).max(1) as u32;
    (scale(width), scale(height))
}

/// Draws and encodes the overlay image the options ask for, or None for `overlay=false`.
/// `picture` is the decoded picture (maybe a scaled JPEG), `image` the uploaded image's
/// size, `region` the part of the picture the model saw, `map` the raw map and its width
/// and height.
pub fn draw(
    picture: &RgbImage,
    image: (u32, u32),
    region: Region,
    map: (&[f32], usize, usize),
    options: &OverlayOptions,
) -> Option<EncodedOverlay> {
    if options.kind == OverlayKind::Off {
        return None;
    }
    let (pw, ph) = picture.dimensions();
    let (w, h) = fitted_size(image.0, image.1, options.max_side);
    // The picture is never smaller than the overlay but for rounding: never upsample.
    let (w, h) = (w.min(pw), h.min(ph));
    let region = scale_region(region, (pw, ph), (w, h));
    let (cam, mw, mh) = map;
    let drawn = match options.kind {
        OverlayKind::Heatmap => heatmap(cam, mw, mh, region, w, h),
        _ if (w, h) == (pw, ph) => overlay(picture, cam, mw, mh, region, options.alpha),
        _ => overlay(
            &preprocess::resized(picture, w, h),
            cam,
            mw,
            mh,
            region,
            options.alpha,
        ),
    };
    Some(EncodedOverlay {
        bytes: encode(&drawn, options.format),
        format: options.format,
        kind: if options.kind == OverlayKind::Heatmap {
            Drawn::Heatmap
        } else {
            Drawn::Blend
        },
        width: w,
        height: h,
    })
}

/// The overlay of a three-channel map (the guided methods, `width` x `height` x 3, at the
/// model input's size): `deprocess_image` of it, fitted to `max_side`. It shows the
/// gradient, not the photo, so it is neither blended nor stretched to the upload's size.
pub fn draw_deprocessed(
    map: &[f32],
    width: usize,
    height: usize,
    options: &OverlayOptions,
) -> Option<EncodedOverlay> {
    if options.kind == OverlayKind::Off {
        return None;
    }
    let (w, h) = (width as u32, height as u32);
    let image = RgbImage::from_raw(w, h, deprocess_image(map)).expect("width x height x 3");
    let (fw, fh) = fitted_size(w, h, options.max_side);
    let image = if (fw, fh) == (w, h) {
        image
    } else {
        preprocess::resized(&image, fw, fh)
    };
    Some(EncodedOverlay {
        bytes: encode(&image, options.format),
        format: options.format,
        kind: Drawn::Deprocessed,
        width: fw,
        height: fh,
    })
}

/// pytorch-grad-cam's `deprocess_image` in its float32 operations: the values centred,
/// divided by (their standard deviation + 1e-5), times 0.1, plus 0.5, clipped to [0, 1],
/// times 255, truncated to bytes. Sums are NumPy's pairwise ones.
pub fn deprocess_image(map: &[f32]) -> Vec<u8> {
    let n = map.len() as f32;
    let mean = numpy_sum(map) / n;
    let centred: Vec<f32> = map.iter().map(|v| v - mean).collect();
    // np.std: the mean again (of the centred values), the mean square about it, its root.
    let again = numpy_sum(&centred) / n;
    let squares: Vec<f32> = centred.iter().map(|v| (v - again) * (v - again)).collect();
    let std = (numpy_sum(&squares) / n).sqrt();
    let denominator = std + 1e-5;
    centred
        .iter()
        .map(|v| ((v / denominator * 0.1 + 0.5).clamp(0.0, 1.0) * 255.0) as u8)
        .collect()
}

/// `region` of a `from`-sized picture, in a `to`-sized copy of it.
fn scale_region(region: Region, from: (u32, u32), to: (u32, u32)) -> Region {
    if from == to {
        return region;
    }
    let along = |v: u32, f: u32, t: u32| ((v as u64 * t as u64 + f as u64 / 2) / f as u64) as u32;
    let x = along(region.x, from.0, to.0).min(to.0 - 1);
    let y = along(region.y, from.1, to.1).min(to.1 - 1);
    Region {
        x,
        y,
        width: along(region.width, from.0, to.0).clamp(1, to.0 - x),
        height: along(region.height, from.1, to.1).clamp(1, to.1 - y),
    }
}

/// The coloured map alone (JET, as the blend colours it), `width` x `height`, RGB; black
/// outside `region`.
pub fn heatmap(
    map: &[f32],
    map_width: usize,
    map_height: usize,
    region: Region,
    width: u32,
    height: u32,
) -> RgbImage {
    let (w, rx, ry) = (width as usize, region.x as usize, region.y as usize);
    let scale = HeatScale::new(map, map_width, map_height, region.width, region.height);
    let mut out = RgbImage::new(width, height);
    let mut mask_row = vec![0f32; region.width as usize];
    let rows = out
        .chunks_exact_mut(w * 3)
        .skip(ry)
        .take(region.height as usize);
    for (y, row) in rows.enumerate() {
        scale.row(y, &mut mask_row);
        for (px, &m) in row[rx * 3..].chunks_exact_mut(3).zip(&mask_row) {
            // The level as the blend takes it: np.uint8(255 * mask).
            px.copy_from_slice(&colormap::JET[(255.0 * m) as u8 as usize]);
        }
    }
    out
}

/// Quality of the JPEG overlay: no visible artefacts on the heat map's smooth colours, about
/// a tenth of the PNG's bytes.
pub const JPEG_QUALITY: u8 = 85;

/// `image` in `format`: PNG (fast, see `encode_png`), JPEG (quality 85, 4:2:0) or lossless
/// WebP (the only WebP the `image` crate writes).
pub fn encode(image: &RgbImage, format: OverlayFormat) -> Vec<u8> {
    let (w, h) = image.dimensions();
    let mut out = Vec::new();
    match format {
        OverlayFormat::Png => return encode_png(image),
        OverlayFormat::Jpeg => jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY)
            .encode(
                image.as_raw(),
                w as u16,
                h as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .expect("an overlay of at most 16383 pixels a side encodes"),
        OverlayFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .encode(image.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .expect("an overlay of at most 16383 pixels a side encodes"),
    }
    out
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
    use crate::cam::scale::taps;

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

    /// show_cam_on_image as written: a float image, its maximum, then the bytes; and the
    /// pixel-by-pixel bilinear. `overlay` must give the same bytes.
    fn overlay_reference(picture: &RgbImage, map: &[f32], region: Region, alpha: f32) -> RgbImage {
        let (w, h) = picture.dimensions();
        let scaled = min_max_scale(map);
        let xs = taps(7, region.width as usize);
        let ys = taps(7, region.height as usize);
        let mut up = Vec::new();
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let (r0, r1) = (&scaled[y0 * 7..][..7], &scaled[y1 * 7..][..7]);
                let top = r0[x0] * (1.0 - fx) + r0[x1] * fx;
                let bottom = r1[x0] * (1.0 - fx) + r1[x1] * fx;
                up.push(top * (1.0 - fy) + bottom * fy);
            }
        }
        let mask = min_max_scale(&up);
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
                colormap::jet((255.0 * m) as u8)
            } else {
                [0, 0, 0]
            };
            let heat_weight = if inside { alpha } else { 0.0 };
            for c in 0..3 {
                let v =
                    heat_weight * (heat[c] as f32 / 255.0) + (1.0 - alpha) * (px[c] as f32 / 255.0);
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
        RgbImage::from_raw(w, h, bytes).unwrap()
    }

    #[test]
    fn overlay_equals_the_plain_float_blend_byte_for_byte() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..24 {
            let (w, h) = (1 + (next() % 90) as u32, 1 + (next() % 70) as u32);
            let dark = case % 5 == 0; // a dim picture: the maximum is not 1
            let picture = RgbImage::from_fn(w, h, |_, _| {
                image::Rgb([0; 3].map(|_| (next() % if dark { 40 } else { 256 }) as u8))
            });
            let map: Vec<f32> = (0..49)
                .map(|_| match case % 4 {
                    0 => 1.5, // flat
                    1 => (next() % 1000) as f32 * 1e-4,
                    _ => (next() % 1000) as f32 / 7.0,
                })
                .collect();
            let region = if case % 3 == 0 {
                let (rw, rh) = (1 + next() as u32 % w, 1 + next() as u32 % h);
                Region {
                    x: next() as u32 % (w - rw + 1),
                    y: next() as u32 % (h - rh + 1),
                    width: rw,
                    height: rh,
                }
            } else {
                Region {
                    x: 0,
                    y: 0,
                    width: w,
                    height: h,
                }
            };
            let alpha = [0.0, 0.3, 0.5, 1.0][case % 4];
            assert_eq!(
                overlay(&picture, &map, 7, 7, region, alpha),
                overlay_reference(&picture, &map, region, alpha),
                "case {case}: {w}x{h}, {region:?}, alpha {alpha}"
            );
        }
    }

    #[test]
    fn overlay_size_fits_the_longer_side() {
        assert_eq!(fitted_size(4032, 3024, 960), (960, 720));
        assert_eq!(fitted_size(3024, 4032, 960), (720, 960));
        assert_eq!(fitted_size(1920, 1080, 960), (960, 540));
        assert_eq!(fitted_size(640, 480, 960), (640, 480));
        assert_eq!(fitted_size(10000, 3, 64), (64, 1));
    }

    #[test]
    fn region_scales_with_the_picture_and_stays_inside() {
        let r = Region {
            x: 109,
            y: 30,
            width: 420,
            height: 420,
        };
        let s = scale_region(r, (640, 480), (320, 240));
        assert_eq!((s.x, s.y, s.width, s.height), (55, 15, 210, 210));
        let edge = Region {
            x: 639,
            y: 0,
            width: 1,
            height: 480,
        };
        let s = scale_region(edge, (640, 480), (64, 48));
        assert!(s.x + s.width <= 64 && s.width >= 1, "{s:?}");
    }

    #[test]
    fn heatmap_is_the_jet_of_the_blends_levels_and_black_outside() {
        let mut map = vec![0.0f32; 49];
        map[0] = 1.0;
        let region = Region {
            x: 2,
            y: 1,
            width: 20,
            height: 10,
        };
        let out = heatmap(&map, 7, 7, region, 30, 12);
        assert_eq!(out.dimensions(), (30, 12));
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(29, 11).0, [0, 0, 0]);
        // Hot at the region's top-left, the coldest JET colour at its far corner.
        assert_eq!(out.get_pixel(2, 1).0, colormap::JET[254]);
        assert_eq!(out.get_pixel(21, 10).0, colormap::JET[0]);
    }

    #[test]
    fn every_format_decodes_back_at_its_size() {
        let img = RgbImage::from_fn(50, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 8, 90]));
        for (format, lossless) in [
            (OverlayFormat::Png, true),
            (OverlayFormat::Jpeg, false),
            (OverlayFormat::Webp, true),
        ] {
            let bytes = encode(&img, format);
            let guessed = image::guess_format(&bytes).unwrap();
            assert_eq!(guessed.to_mime_type(), format.media_type());
            let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), (50, 30));
            if lossless {
                assert_eq!(back, img, "{format:?}");
            }
        }
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

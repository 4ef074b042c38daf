//! Deep Feature Factorization's overlay: pytorch-grad-cam's `show_factorization_on_image`
//! with `image_weight=0.3`, as its `run_dff_on_image` calls it: each pixel takes its
//! strongest concept's colour (matplotlib's `gist_rainbow`), with that concept's map as
//! the colour's brightness (OpenCV's 8-bit HSV round trip), blended over the image the
//! model saw; a legend of each concept's classes beside it, as wide as the picture.
//!
//! The blend is reproduced in pytorch-grad-cam's operations (float64 image, float32
//! masks, truncation to bytes); the legend is ours: pytorch-grad-cam draws it with a
//! matplotlib figure, whose fonts and layout a server cannot match, so it says the same
//! (a coloured line per concept, its `label:score` lines) in an embedded bitmap font.

use embedded_graphics::mono_font::{ascii, MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use image::{Rgb, RgbImage};

use crate::cam::Concepts;
use crate::colormap;
use crate::render::{self, Drawn, EncodedOverlay, OverlayKind, OverlayOptions};

/// The picture's share of the blend (`image_weight`).
const IMAGE_WEIGHT: f64 = 0.3;

/// OpenCV's `COLOR_RGB2HSV` of one 8-bit pixel (hue in 0..180): its integer arithmetic
/// with 12-bit fixed-point reciprocal tables.
pub fn rgb_to_hsv(rgb: [u8; 3]) -> [u8; 3] {
    const SHIFT: u32 = 12;
    let round = 1 << (SHIFT - 1);
    let [r, g, b] = rgb.map(i32::from);
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    // saturate_cast<int> of a double: rounded half to even.
    let table = |numerator: f64, i: i32| {
        if i == 0 {
            0
        } else {
            (numerator / f64::from(i)).round_ties_even() as i32
        }
    };
    let s = (diff * table(f64::from(255 << SHIFT), v) + round) >> SHIFT;
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * table(f64::from(180 << SHIFT) / 6.0, diff) + round) >> SHIFT;
    if h < 0 {
        h += 180;
    }
    [h as u8, s as u8, v as u8]
}

/// OpenCV's `COLOR_HSV2RGB` of one 8-bit pixel: in float32, hue scaled by 6/180, back to
/// bytes truncated (OpenCV 5's 8-bit path: rounding, as OpenCV 4 did, was one level off
/// on 74% of 20,000 random pixels against cv2 5.1; truncation matched them all).
pub fn hsv_to_rgb(hsv: [u8; 3]) -> [u8; 3] {
    let h = f32::from(hsv[0]);
    let s = f32::from(hsv[1]) * (1.0 / 255.0);
    let v = f32::from(hsv[2]) * (1.0 / 255.0);
    let (r, g, b) = if s == 0.0 {
        (v, v, v)
    } else {
        let h = (h * (6.0f32 / 180.0)) % 6.0;
        let mut sector = h.floor() as i32;
        let mut h = h - sector as f32;
        if !(0..6).contains(&sector) {
            sector = 0;
            h = 0.0;
        }
        let tab = [
            v,
            v * (1.0 - s),
            v * (1.0 - s * h),
            v * (1.0 - s * (1.0 - h)),
        ];
        // OpenCV's (b, g, r) per sector.
        const SECTORS: [[usize; 3]; 6] = [
            [1, 3, 0],
            [1, 0, 2],
            [3, 0, 1],
            [0, 2, 1],
            [0, 1, 3],
            [2, 1, 0],
        ];
        let [bi, gi, ri] = SECTORS[sector as usize];
        (tab[ri], tab[gi], tab[bi])
    };
    [r, g, b].map(|c| (c * 255.0).clamp(0.0, 255.0) as u8)
}

/// The blended picture (`width` x `height` RGB bytes) of `pixels` and the concepts' maps
/// (each `width` x `height`, in [0, 1]) in `colours`, pytorch-grad-cam's operations: the
/// strongest concept per pixel (the first on ties, `argmax`), its colour with brightness
/// `uint8(255 * map)`, `img * 0.3 + mask * 0.7` truncated to bytes.
pub fn blend(pixels: &[u8], maps: &[&[f32]], colours: &[[u8; 3]]) -> Vec<u8> {
    let hsv: Vec<[u8; 3]> = colours.iter().map(|&c| rgb_to_hsv(c)).collect();
    // `mask * (1 - image_weight)`: a float32 array times a Python float stays float32.
    let mask_weight = (1.0 - IMAGE_WEIGHT) as f32;
    let mut out = Vec::with_capacity(pixels.len());
    for (p, picture) in pixels.chunks_exact(3).enumerate() {
        let (strongest, value) =
            maps.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, m)| {
                    if m[p] > bv {
                        (i, m[p])
                    } else {
                        (bi, bv)
                    }
                });
        let [h, s, _] = hsv[strongest];
        let rgb = hsv_to_rgb([h, s, (255.0 * value) as u8]);
        for (&c, &m) in picture.iter().zip(&rgb) {
            let mask = f32::from(m) / 255.0;
            let result = f64::from(c) / 255.0 * IMAGE_WEIGHT + f64::from(mask * mask_weight);
            out.push((result * 255.0) as u8);
        }
    }
    out
}

/// An `RgbImage` as embedded-graphics' drawing target.
struct Canvas<'a>(&'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Self::Error> {
        let (w, h) = self.0.dimensions();
        for Pixel(at, c) in pixels {
            if let (Ok(x), Ok(y)) = (u32::try_from(at.x), u32::try_from(at.y)) {
                if x < w && y < h {
                    self.0.put_pixel(x, y, Rgb([c.r(), c.g(), c.b()]));
                }
            }
        }
        Ok(())
    }
}

/// The legend: on white, per concept a line in its colour and its `label:score` lines,
/// in the largest of three bitmap fonts that fits them all (clipped when none does).
pub fn legend(width: u32, height: u32, colours: &[[u8; 3]], lines: &[Vec<String>]) -> RgbImage {
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let rows: usize = lines.iter().map(|l| l.len().max(1)).sum();
    let fonts: [&MonoFont; 3] = [&ascii::FONT_10X20, &ascii::FONT_7X13, &ascii::FONT_5X8];
    let line_height = |f: &MonoFont| f.character_size.height + 2;
    // Each concept: its lines, and a gap of half a line.
    let needed =
        |f: &MonoFont| rows as u32 * line_height(f) + lines.len() as u32 * line_height(f) / 2 + 4;
    let font = fonts
        .into_iter()
        .find(|f| needed(f) <= height)
        .unwrap_or(fonts[2]);
    let step = line_height(font);
    let swatch = (width / 6).clamp(8, 40);
    let text_x = swatch + 8;
    let columns = (width.saturating_sub(text_x + 2) / font.character_size.width) as usize;
    let mut canvas = Canvas(&mut image);
    let mut y = 4i32;
    for (colour, concept) in colours.iter().zip(lines) {
        let [r, g, b] = *colour;
        let thickness = (step / 3).max(2);
        Rectangle::new(
            Point::new(4, y + (step as i32 - thickness as i32) / 2),
            Size::new(swatch, thickness),
        )
        .into_styled(PrimitiveStyle::with_fill(Rgb888::new(r, g, b)))
        .draw(&mut canvas)
        .expect("infallible");
        for line in concept {
            let shown: String = line
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .take(columns)
                .collect();
            Text::with_baseline(
                &shown,
                Point::new(text_x as i32, y + 1),
                MonoTextStyle::new(font, Rgb888::BLACK),
                Baseline::Top,
            )
            .draw(&mut canvas)
            .expect("infallible");
            y += step as i32;
        }
        y += concept.is_empty() as i32 * step as i32 + step as i32 / 2;
    }
    image
}

/// The overlay of a factorization: the blend at the model input's size with the legend
/// to its right (`lines`: each concept's `label:score` lines), fitted to `max_side`.
/// `overlay=heatmap` draws the coloured concepts alone (no picture under them).
pub fn draw(
    concepts: &Concepts,
    lines: &[Vec<String>],
    options: &OverlayOptions,
) -> Option<EncodedOverlay> {
    if options.kind == OverlayKind::Off {
        return None;
    }
    let (w, h) = (concepts.width as u32, concepts.height as u32);
    let colours = colormap::concept_colours(concepts.concepts.len());
    let maps: Vec<&[f32]> = concepts.concepts.iter().map(|c| &c.map[..]).collect();
    let under = if options.kind == OverlayKind::Heatmap {
        vec![0; concepts.pixels.len()]
    } else {
        concepts.pixels.clone()
    };
    let blended = RgbImage::from_raw(w, h, blend(&under, &maps, &colours)).expect("w x h x 3");
    let key = legend(w, h, &colours, lines);
    let mut picture = RgbImage::new(2 * w, h);
    image::imageops::replace(&mut picture, &blended, 0, 0);
    image::imageops::replace(&mut picture, &key, i64::from(w), 0);
    let (fw, fh) = render::fitted_size(2 * w, h, options.max_side);
    let picture = if (fw, fh) == (2 * w, h) {
        picture
    } else {
        crate::preprocess::resized(&picture, fw, fh)
    };
    Some(EncodedOverlay {
        bytes: render::encode(&picture, options.format),
        format: options.format,
        kind: Drawn::Concepts,
        width: fw,
        height: fh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cv2.cvtColor` on the five default concept colours and back with other values.
    #[test]
    fn hsv_round_trips_as_opencv() {
        assert_eq!(rgb_to_hsv([255, 0, 40]), [175, 255, 255]);
        assert_eq!(rgb_to_hsv([255, 234, 0]), [28, 255, 255]);
        assert_eq!(rgb_to_hsv([0, 0, 0]), [0, 0, 0]);
        assert_eq!(rgb_to_hsv([10, 10, 10]), [0, 0, 10]);
        assert_eq!(hsv_to_rgb([175, 255, 255]), [255, 0, 42]);
        assert_eq!(hsv_to_rgb([175, 255, 0]), [0, 0, 0]);
        assert_eq!(hsv_to_rgb([0, 0, 77]), [77, 77, 77]);
        // Where rounding would give [54, 34, 54] and [138, 143, 145].
        assert_eq!(hsv_to_rgb([150, 96, 54]), [54, 33, 53]);
        assert_eq!(hsv_to_rgb([97, 13, 145]), [137, 143, 145]);
    }

    #[test]
    fn the_strongest_concept_colours_each_pixel() {
        let pixels = [0u8, 0, 0, 255, 255, 255];
        let first = [1.0f32 - 1e-7, 0.0];
        let second = [0.5f32, 0.0];
        let out = blend(&pixels, &[&first, &second], &[[255, 0, 0], [0, 0, 255]]);
        // Pixel 0: the first concept's red over black, at 0.7 of its brightness.
        assert!(
            (170..=178).contains(&out[0]) && out[1..3] == [0, 0],
            "{out:?}"
        );
        // Pixel 1: no concept (all zero): the first wins the tie, at brightness 0.
        assert_eq!(&out[3..], &[76, 76, 76]);
    }

    #[test]
    fn the_legend_is_drawn_in_the_concepts_colours() {
        let lines = vec![vec!["tabby:0.91".to_string()], vec![]];
        let key = legend(224, 224, &[[255, 0, 40], [0, 255, 0]], &lines);
        let has = |c: [u8; 3]| key.pixels().any(|p| p.0 == c);
        assert!(has([255, 0, 40]) && has([0, 255, 0]) && has([0, 0, 0]));
    }
}

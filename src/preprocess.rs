//! From uploaded bytes to the model's input: decode (any supported format and colour type,
//! EXIF orientation applied) to RGB, resize, ImageNet normalisation.

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::Deserialize;

/// ImageNet statistics, as torchvision and pytorch-grad-cam normalise.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The model's input: a square of `size` pixels, each channel scaled to 0..1, then
/// `(v - mean) / std` (torchvision's `ToTensor` + `Normalize`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSpec {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputSpec {
    /// ImageNet's normalisation at `size`.
    pub fn imagenet(size: u32) -> Self {
        InputSpec {
            size,
            mean: MEAN,
            std: STD,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("the upload is empty")]
    Empty,
    #[error("not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnknownFormat,
    #[error("the image has no pixels ({width}x{height})")]
    NoPixels { width: u32, height: u32 },
    #[error(
        "the image is {width}x{height} = {pixels} pixels, over the limit of {max} pixels; \
         it was refused before decoding"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("the image could not be decoded: {0}")]
    Undecodable(String),
}

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width x height accepted; checked from the header, before any pixel is
    /// allocated, so a decompression bomb costs nothing.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
        }
    }
}

/// Decodes an upload to 8-bit RGB in its displayed orientation. Alpha is dropped (as
/// PIL's `convert("RGB")` does), grey is expanded, 16-bit is scaled down, an animation
/// gives its first frame.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    decode_fitted(bytes, limits, None).map(|d| d.picture)
}

/// How small a decoded picture may be and still serve: the overlay's longest side and the
/// model's input. Only a JPEG is decoded smaller (see [`decode_fitted`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// The overlay's longest side, in pixels (when the picture is larger).
    pub max_side: u32,
    /// The shorter side the model's input needs: torchvision's `Resize(256)` for a 224
    /// input (see [`Fit::for_model`]).
    pub min_short_side: u32,
}

impl Fit {
    /// The needs of an overlay of at most `max_side` pixels and of the model's `spec`.
    pub fn for_model(spec: &InputSpec, max_side: u32) -> Self {
        Fit {
            max_side,
            min_short_side: (spec.size as u64 * 256).div_ceil(224) as u32,
        }
    }

    /// The JPEG scale to decode a `width` x `height` image at, in eighths (1, 2, 4 or 8):
    /// the smallest whose picture still covers both needs.
    pub fn eighths(&self, width: u32, height: u32) -> u32 {
        let (long, short) = (width.max(height), width.min(height));
        let want_long = long.min(self.max_side);
        let want_short = short.min(self.min_short_side);
        [1, 2, 4, 8]
            .into_iter()
            .find(|&e| scaled(long, e) >= want_long && scaled(short, e) >= want_short)
            .unwrap_or(8)
    }
}

/// A side's length at `eighths` / 8, rounded up as JPEG's scaled IDCT makes it.
fn scaled(side: u32, eighths: u32) -> u32 {
    (side as u64 * eighths as u64).div_ceil(8) as u32
}

/// A decoded upload: the picture, maybe smaller than the image, and the image's own size.
pub struct Decoded {
    pub picture: RgbImage,
    /// The image's size in its displayed orientation, whatever the picture's.
    pub width: u32,
    pub height: u32,
}

/// [`decode`], but a JPEG larger than `fit` needs is decoded at 1/2, 1/4 or 1/8 of its
/// size in the DCT domain (libjpeg's scaled IDCT, through `jpeg-decoder`): a 4032x3024
/// photo for a 960-pixel overlay decodes at 1008x756 in half the time, and the picture is
/// averaged over each 4x4 block, as an antialiased resize would. Other formats, and a JPEG
/// `jpeg-decoder` cannot take (CMYK, 16-bit, anything it refuses), decode whole as before.
pub fn decode_fitted(
    bytes: &[u8],
    limits: DecodeLimits,
    fit: Option<Fit>,
) -> Result<Decoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Undecodable(e.to_string()))?;
    let format = reader.format();
    match format {
        None => return Err(DecodeError::UnknownFormat),
        // The JPEG decoder fills a cut-off image with grey rather than failing; an upload
        // that lost its end is refused instead of explained half-blank.
        Some(image::ImageFormat::Jpeg) if !bytes.windows(2).rev().any(|w| w == [0xFF, 0xD9]) => {
            return Err(DecodeError::Undecodable(
                "the JPEG data is truncated (no end-of-image marker)".into(),
            ))
        }
        Some(_) => {}
    }
    // Second line of defence behind the header check below: no single allocation inside a
    // decoder may exceed what the largest allowed image needs.
    let max_alloc = limits.max_pixels.saturating_mul(8).max(1 << 26);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(max_alloc);
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if pixels == 0 {
        return Err(DecodeError::NoPixels { width, height });
    }
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooManyPixels {
            width,
            height,
            pixels,
            max: limits.max_pixels,
        });
    }
    // A broken EXIF block must not cost the picture: without it, no rotation.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let eighths = match (fit, format) {
        (Some(fit), Some(image::ImageFormat::Jpeg)) => fit.eighths(width, height),
        _ => 8,
    };
    let smaller = (eighths < 8)
        .then(|| decode_jpeg_scaled(bytes, eighths, max_alloc))
        .flatten();
    let mut image = match smaller {
        Some(picture) => DynamicImage::ImageRgb8(picture),
        None => DynamicImage::from_decoder(decoder).map_err(classify)?,
    };
    image.apply_orientation(orientation);
    let (width, height) = match orientation {
        image::metadata::Orientation::Rotate90
        | image::metadata::Orientation::Rotate270
        | image::metadata::Orientation::Rotate90FlipH
        | image::metadata::Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    };
    let picture = match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    };
    Ok(Decoded {
        picture,
        width,
        height,
    })
}

/// A JPEG decoded at `eighths` / 8 of its size, or None where `jpeg-decoder` cannot (the
/// whole decode then decides, and words any error).
fn decode_jpeg_scaled(bytes: &[u8], eighths: u32, max_alloc: u64) -> Option<RgbImage> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(usize::try_from(max_alloc).unwrap_or(usize::MAX));
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (w, h) = (info.width as u32, info.height as u32);
    // Asking for exactly the scaled size picks that scale (it takes the first that covers
    // either side).
    let (sw, sh) = decoder
        .scale(scaled(w, eighths) as u16, scaled(h, eighths) as u16)
        .ok()?;
    let (sw, sh) = (sw as u32, sh as u32);
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => RgbImage::from_raw(sw, sh, decoder.decode().ok()?),
        jpeg_decoder::PixelFormat::L8 => {
            let grey = decoder.decode().ok()?;
            image::GrayImage::from_raw(sw, sh, grey).map(|g| DynamicImage::ImageLuma8(g).to_rgb8())
        }
        _ => None,
    }
}

fn classify(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Unsupported(_) => DecodeError::UnknownFormat,
        other => DecodeError::Undecodable(other.to_string()),
    }
}

/// How an image of any shape becomes the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// The whole image resized to the input size (aspect ratio not kept), so the overlay
    /// covers the whole picture.
    #[default]
    Stretch,
    /// torchvision's evaluation transform: shorter side to 256/224 of the input size, then
    /// the centre square; the overlay covers that square's place in the picture.
    Crop,
}

impl std::str::FromStr for ResizeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stretch" => Ok(Self::Stretch),
            "crop" => Ok(Self::Crop),
            _ => Err(format!("`{s}` is not a resize mode (stretch or crop)")),
        }
    }
}

/// A rectangle of the original image, in its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The model's input for one image: normalised CHW floats, and the part of the original
/// image they show.
pub struct ModelInput {
    pub chw: Vec<f32>,
    /// The same image before normalisation: RGB bytes, `size` x `size`, row-major (what
    /// SobelCAM takes its edges from).
    pub pixels: Vec<u8>,
    pub size: u32,
    pub region: Region,
}

impl ModelInput {
    fn new(pixels: Vec<u8>, spec: &InputSpec, region: Region) -> Self {
        ModelInput {
            chw: normalise(&pixels, spec),
            pixels,
            size: spec.size,
            region,
        }
    }
}

impl ModelInput {
    /// The model's input given as already-normalised CHW floats (`size` x `size`), as the
    /// Open Inference Protocol's FP32 tensor sends it. The pixels (the overlay's picture,
    /// SobelCAM's edges) are the floats un-normalised, rounded and clamped to 0..=255.
    pub fn from_normalised(chw: Vec<f32>, spec: &InputSpec) -> Self {
        let plane = (spec.size * spec.size) as usize;
        assert_eq!(chw.len(), plane * 3, "3 x size x size floats");
        let mut pixels = vec![0u8; plane * 3];
        for c in 0..3 {
            let (mean, std) = (spec.mean[c], spec.std[c]);
            for (i, v) in chw[c * plane..(c + 1) * plane].iter().enumerate() {
                pixels[i * 3 + c] = ((v * std + mean) * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
        let whole = Region {
            x: 0,
            y: 0,
            width: spec.size,
            height: spec.size,
        };
        ModelInput {
            chw,
            pixels,
            size: spec.size,
            region: whole,
        }
    }
}

/// Longest aspect ratio `ResizeMode::Crop` resizes whole (see `prepare`).
const MAX_CROP_ASPECT: u64 = 16;

pub fn prepare(image: &RgbImage, spec: &InputSpec, mode: ResizeMode) -> ModelInput {
    let size = spec.size;
    let (w, h) = image.dimensions();
    let whole = Region {
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    match mode {
        ResizeMode::Stretch if (w, h) == (size, size) => {
            ModelInput::new(image.to_vec(), spec, whole)
        }
        ResizeMode::Stretch => ModelInput::new(resize(image, size, size), spec, whole),
        // Only the centre of the long side reaches the model, but Resize(256) below would
        // scale the whole image first: a 4000000x1 strip (a few KiB of PNG, under the pixel
        // limit) would need a 1024000000x256 intermediate, hundreds of GB, and the failed
        // allocation aborts the process. Past MAX_CROP_ASPECT:1, keep just the centre part
        // of that aspect first; images up to that ratio are resized exactly as before.
        ResizeMode::Crop
            if w as u64 > h as u64 * MAX_CROP_ASPECT || h as u64 > w as u64 * MAX_CROP_ASPECT =>
        {
            let (cw, ch) = if w > h {
                (h * MAX_CROP_ASPECT as u32, h)
            } else {
                (w, w * MAX_CROP_ASPECT as u32)
            };
            let (x, y) = ((w - cw) / 2, (h - ch) / 2);
            let centre = image::imageops::crop_imm(image, x, y, cw, ch).to_image();
            let mut input = prepare(&centre, spec, mode);
            input.region.x += x;
            input.region.y += y;
            input
        }
        ResizeMode::Crop => {
            // torchvision: Resize(256) keeps the aspect ratio (the longer side truncated),
            // CenterCrop(224) rounds the offsets half to even (Python's round).
            let short = (size as f64 * 256.0 / 224.0).round() as u32;
            let (rw, rh) = if w <= h {
                (short, ((short as u64 * h as u64) / w as u64).max(1) as u32)
            } else {
                (((short as u64 * w as u64) / h as u64).max(1) as u32, short)
            };
            let resized = resize(image, rw, rh);
            let left = ((rw - size) as f64 / 2.0).round_ties_even() as u32;
            let top = ((rh - size) as f64 / 2.0).round_ties_even() as u32;
            let mut cropped = Vec::with_capacity((size * size * 3) as usize);
            for y in top..top + size {
                let start = ((y * rw + left) * 3) as usize;
                cropped.extend_from_slice(&resized[start..start + (size * 3) as usize]);
            }
            let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
            let region = Region {
                x: (left as f64 * sx).round() as u32,
                y: (top as f64 * sy).round() as u32,
                width: ((size as f64 * sx).round() as u32).clamp(1, w),
                height: ((size as f64 * sy).round() as u32).clamp(1, h),
            };
            ModelInput::new(cropped, spec, region)
        }
    }
}

/// `image` resized to `width` x `height` (antialiased, as the model's input is).
pub fn resized(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    RgbImage::from_raw(width, height, resize(image, width, height)).expect("sized by resize")
}

/// Antialiased bilinear resize (a triangle filter widened when shrinking, like PIL's).
fn resize(image: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = image.dimensions();
    // fast_image_resize runs the vertical pass first, into a buffer of the source's width
    // and the target's height: for a wide, low image (4000000x1 to 224x224, a few KiB of
    // PNG) that is gigabytes. When that buffer would outgrow both the source and 16 M
    // pixels, go horizontal first, in two calls that need no buffer; other images are
    // resized exactly as before.
    let buffer = w as u64 * height as u64;
    if w != width && h != height && buffer > (w as u64 * h as u64).max(1 << 24) {
        let narrow = resize_raw(image.as_raw(), w, h, width, h);
        return resize_raw(&narrow, width, h, width, height);
    }
    resize_raw(image.as_raw(), w, h, width, height)
}

fn resize_raw(rgb: &[u8], w: u32, h: u32, width: u32, height: u32) -> Vec<u8> {
    let src = fr::images::ImageRef::new(w, h, rgb, fr::PixelType::U8x3)
        .expect("an RGB buffer of its size");
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel type on both sides");
    dst.into_vec()
}

/// Interleaved RGB bytes (size x size) to planar, normalised floats.
///
/// Each byte maps through a table made with the very float operations torchvision's
/// `ToTensor` + `Normalize` do (`(v / 255 - mean) / std` in f32), so inputs agree with the
/// reference to the bit; a fused `v * a - b` differs in the last bit and moves the map.
fn normalise(rgb: &[u8], spec: &InputSpec) -> Vec<f32> {
    let plane = (spec.size * spec.size) as usize;
    debug_assert_eq!(rgb.len(), plane * 3);
    let (mean, std) = (spec.mean, spec.std);
    let table: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c]));
    let mut out = vec![0f32; plane * 3];
    for (c, lut) in table.iter().enumerate() {
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, px) in dst.iter_mut().zip(rgb.chunks_exact(3)) {
            *d = lut[px[c] as usize];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_matches_torchvision_formula() {
        let rgb = [0u8, 128, 255];
        let out = normalise(&rgb, &InputSpec::imagenet(1));
        for c in 0..3 {
            let want = (rgb[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            assert_eq!(out[c], want, "channel {c}");
        }
    }

    #[test]
    fn normalised_floats_give_back_their_pixels() {
        let spec = InputSpec::imagenet(32);
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 7, 255]));
        let made = prepare(&img, &spec, ResizeMode::Stretch);
        let given = ModelInput::from_normalised(made.chw.clone(), &spec);
        assert_eq!(given.pixels, made.pixels);
        assert_eq!(given.chw, made.chw);
        assert_eq!(given.region, made.region);
        // Out-of-range floats clamp instead of wrapping.
        let wild = ModelInput::from_normalised(vec![1e6; 3 * 32 * 32], &spec);
        assert!(wild.pixels.iter().all(|&p| p == 255));
    }

    #[test]
    fn input_size_image_is_not_resampled() {
        let img = RgbImage::from_fn(224, 224, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let input = prepare(&img, &InputSpec::imagenet(224), ResizeMode::Stretch);
        assert_eq!(
            input.chw,
            normalise(img.as_raw(), &InputSpec::imagenet(224))
        );
        assert_eq!(input.region.width, 224);
    }

    #[test]
    fn stretch_covers_the_whole_image() {
        let img = RgbImage::from_pixel(640, 480, image::Rgb([200, 10, 10]));
        let input = prepare(&img, &InputSpec::imagenet(224), ResizeMode::Stretch);
        assert_eq!(input.chw.len(), 3 * 224 * 224);
        assert_eq!(
            input.region,
            Region {
                x: 0,
                y: 0,
                width: 640,
                height: 480
            }
        );
        // A flat image stays flat through the resize.
        let want = (200.0 / 255.0 - MEAN[0]) / STD[0];
        assert!(input.chw[..224 * 224]
            .iter()
            .all(|v| (v - want).abs() < 1e-5));
    }

    #[test]
    fn crop_takes_the_centre_square_like_torchvision() {
        // 640x480: shorter side to 256 gives 341x256; the centre 224 square starts at
        // (58, 16) there (58.5 rounds to even), which is (109, 30) in the original, and
        // 224 * 640 / 341 = 420 pixels wide.
        let img = RgbImage::from_fn(640, 480, |x, _| image::Rgb([(x % 256) as u8, 0, 0]));
        let input = prepare(&img, &InputSpec::imagenet(224), ResizeMode::Crop);
        assert_eq!(
            input.region,
            Region {
                x: 109,
                y: 30,
                width: 420,
                height: 420
            }
        );
        assert_eq!(input.chw.len(), 3 * 224 * 224);
    }

    #[test]
    fn jpeg_scale_is_the_smallest_that_covers_overlay_and_model() {
        let fit = Fit::for_model(&InputSpec::imagenet(224), 960);
        assert_eq!(fit.min_short_side, 256);
        // 12 MP photo: 1008x756 covers 960 and 256.
        assert_eq!(fit.eighths(4032, 3024), 2);
        assert_eq!(fit.eighths(3024, 4032), 2);
        assert_eq!(fit.eighths(1920, 1080), 4);
        assert_eq!(fit.eighths(3840, 2160), 2);
        // Small images decode whole.
        assert_eq!(fit.eighths(960, 720), 8);
        assert_eq!(fit.eighths(224, 224), 8);
        // A tiny overlay: the model's input bounds the scale (378 >= 256 at 1/8; 6000x1000
        // needs 1/2 for its short side, 250 at 1/4 being under 256).
        let tiny = Fit::for_model(&InputSpec::imagenet(224), 64);
        assert_eq!(tiny.eighths(4032, 3024), 1);
        assert_eq!(tiny.eighths(6000, 1000), 4);
    }

    fn jpeg(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(image)
            .unwrap();
        out
    }

    #[test]
    fn a_large_jpeg_decodes_scaled_and_close_to_the_whole_decode() {
        let img = RgbImage::from_fn(1600, 1200, |x, y| {
            image::Rgb([(x / 7) as u8, (y / 5) as u8, ((x + y) / 11) as u8])
        });
        let bytes = jpeg(&img);
        let fit = Fit::for_model(&InputSpec::imagenet(224), 400);
        let d = decode_fitted(&bytes, DecodeLimits::default(), Some(fit)).unwrap();
        assert_eq!((d.width, d.height), (1600, 1200));
        assert_eq!(d.picture.dimensions(), (400, 300));
        let whole = decode(&bytes, DecodeLimits::default()).unwrap();
        let reference = resized(&whole, 400, 300);
        let worst = d
            .picture
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 6, "scaled decode differs by {worst} levels");
        // Without a fit, the whole image as before.
        assert_eq!(
            decode_fitted(&bytes, DecodeLimits::default(), None)
                .unwrap()
                .picture,
            whole
        );
    }

    #[test]
    fn a_scaled_jpeg_keeps_its_exif_orientation() {
        // A 1600x800 JPEG with EXIF orientation 6 (rotate 90 clockwise): shown 800x1600.
        let img = RgbImage::from_fn(1600, 800, |x, _| {
            image::Rgb([if x < 800 { 255 } else { 0 }, 0, 0])
        });
        let plain = jpeg(&img);
        let exif: &[u8] = &[
            0xFF, 0xE1, 0x00, 0x22, b'E', b'x', b'i', b'f', 0, 0, b'M', b'M', 0, 0x2A, 0, 0, 0, 8,
            0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut bytes = plain[..2].to_vec();
        bytes.extend_from_slice(exif);
        bytes.extend_from_slice(&plain[2..]);
        let fit = Fit::for_model(&InputSpec::imagenet(224), 400);
        let d = decode_fitted(&bytes, DecodeLimits::default(), Some(fit)).unwrap();
        assert_eq!((d.width, d.height), (800, 1600));
        assert_eq!(d.picture.dimensions(), (400, 800));
        // The red left half is now the top half.
        assert!(d.picture.get_pixel(200, 100).0[0] > 200);
        assert!(d.picture.get_pixel(200, 700).0[0] < 50);
    }

    #[test]
    fn resize_mode_parses() {
        assert_eq!("crop".parse::<ResizeMode>(), Ok(ResizeMode::Crop));
        assert!("squash".parse::<ResizeMode>().is_err());
    }
}

//! Decoding every supported format and colour type, EXIF orientation, and refusals; no
//! HTTP, no model.

use std::io::Cursor;

use gradcam_serve::preprocess::{decode, DecodeError, DecodeLimits};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// Red top-left quadrant on blue, so orientation can be checked.
fn marked(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        if x < width / 2 && y < height / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn assert_marked(decoded: &RgbImage, width: u32, height: u32, tolerance: u8) {
    assert_eq!(decoded.dimensions(), (width, height));
    let close = |a: [u8; 3], b: [u8; 3]| (0..3).all(|c| a[c].abs_diff(b[c]) <= tolerance);
    assert!(
        close(decoded.get_pixel(1, 1).0, [255, 0, 0]),
        "{:?}",
        decoded.get_pixel(1, 1)
    );
    assert!(close(
        decoded.get_pixel(width - 2, height - 2).0,
        [0, 0, 255]
    ));
}

#[test]
fn decodes_every_supported_format() {
    let image = DynamicImage::ImageRgb8(marked(40, 30));
    for (format, tolerance) in [
        (ImageFormat::Png, 0),
        (ImageFormat::Jpeg, 40),
        (ImageFormat::WebP, 0),
        (ImageFormat::Gif, 0),
        (ImageFormat::Bmp, 0),
        (ImageFormat::Tiff, 0),
    ] {
        let bytes = encode(&image, format);
        let decoded =
            decode(&bytes, DecodeLimits::default()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_marked(&decoded, 40, 30, tolerance);
    }
}

#[test]
fn converts_every_colour_type_to_rgb() {
    let rgb = marked(16, 12);
    let variants = [
        DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb.clone()).to_luma8()),
        DynamicImage::ImageLumaA8(DynamicImage::ImageRgb8(rgb.clone()).to_luma_alpha8()),
        DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()),
        DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(rgb.clone()).to_rgb16()),
        DynamicImage::ImageLuma16(DynamicImage::ImageRgb8(rgb.clone()).to_luma16()),
        DynamicImage::ImageRgba16(DynamicImage::ImageRgb8(rgb.clone()).to_rgba16()),
    ];
    for variant in variants {
        let colour = variant.color();
        let decoded = decode(&encode(&variant, ImageFormat::Png), DecodeLimits::default()).unwrap();
        assert_eq!(decoded.dimensions(), (16, 12), "{colour:?}");
        // Grey variants keep the brightness difference, colour ones the colours.
        let (a, b) = (decoded.get_pixel(1, 1).0, decoded.get_pixel(14, 10).0);
        if matches!(
            colour,
            image::ColorType::L8 | image::ColorType::La8 | image::ColorType::L16
        ) {
            assert!(
                a[0] == a[1] && a[1] == a[2] && a != b,
                "{colour:?}: {a:?} {b:?}"
            );
        } else {
            assert_eq!((a, b), ([255, 0, 0], [0, 0, 255]), "{colour:?}");
        }
    }
}

#[test]
fn animated_gif_gives_its_first_frame() {
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        let frames = [
            marked(20, 20),
            RgbImage::from_pixel(20, 20, Rgb([0, 255, 0])),
        ]
        .map(|f| image::Frame::new(DynamicImage::ImageRgb8(f).to_rgba8()));
        encoder.encode_frames(frames).unwrap();
    }
    let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
    assert_marked(&decoded, 20, 20, 0);
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cmyk.jpg"
    ))
    .unwrap();
    let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
    assert_eq!(decoded.dimensions(), (32, 24));
    let (left, right) = (decoded.get_pixel(4, 12).0, decoded.get_pixel(28, 12).0);
    assert!(
        left[0] > 200 && left[1] < 60 && left[2] < 60,
        "left should be red: {left:?}"
    );
    assert!(
        right[2] > 150 && right[0] < 80,
        "right should be blue: {right:?}"
    );
}

/// A JPEG with an APP1 EXIF block holding one Orientation tag, or garbage as EXIF.
fn jpeg_with_exif(image: &RgbImage, exif_payload: &[u8]) -> Vec<u8> {
    let plain = encode(&DynamicImage::ImageRgb8(image.clone()), ImageFormat::Jpeg);
    let mut segment = b"Exif\0\0".to_vec();
    segment.extend(exif_payload);
    let mut out = plain[..2].to_vec(); // SOI
    out.extend([0xFF, 0xE1]);
    out.extend(((segment.len() + 2) as u16).to_be_bytes());
    out.extend(segment);
    out.extend(&plain[2..]);
    out
}

fn orientation_tiff(orientation: u16) -> Vec<u8> {
    let mut t = b"MM\0\x2a\0\0\0\x08".to_vec(); // big-endian TIFF, first IFD at 8
    t.extend(1u16.to_be_bytes()); // one entry
    t.extend(0x0112u16.to_be_bytes()); // Orientation
    t.extend(3u16.to_be_bytes()); // SHORT
    t.extend(1u32.to_be_bytes()); // count
    t.extend(orientation.to_be_bytes());
    t.extend([0, 0]); // padding of the value field
    t.extend(0u32.to_be_bytes()); // no next IFD
    t
}

#[test]
fn exif_orientation_is_applied() {
    // Orientation 6: the stored image must be turned 90 degrees clockwise to display, so
    // the stored top-left corner shows at the top right.
    let bytes = jpeg_with_exif(&marked(40, 20), &orientation_tiff(6));
    let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
    assert_eq!(decoded.dimensions(), (20, 40));
    let top_right = decoded.get_pixel(18, 1).0;
    let top_left = decoded.get_pixel(1, 1).0;
    assert!(top_right[0] > 200 && top_right[2] < 60, "{top_right:?}");
    assert!(top_left[2] > 200 && top_left[0] < 60, "{top_left:?}");
}

#[test]
fn broken_exif_is_ignored_not_fatal() {
    let bytes = jpeg_with_exif(&marked(40, 20), b"MM\0\x2a\xff\xff\xff\xffgarbage");
    let decoded = decode(&bytes, DecodeLimits::default()).unwrap();
    assert_marked(&decoded, 40, 20, 40);
}

#[test]
fn refuses_what_is_not_a_whole_image() {
    let limits = DecodeLimits::default();
    assert_eq!(decode(b"", limits), Err(DecodeError::Empty));
    assert_eq!(
        decode(b"just some text, not pixels", limits),
        Err(DecodeError::UnknownFormat)
    );
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!(decode(&noise, limits).is_err());
    let png = encode(&DynamicImage::ImageRgb8(marked(64, 64)), ImageFormat::Png);
    assert!(matches!(
        decode(&png[..png.len() / 2], limits),
        Err(DecodeError::Undecodable(_))
    ));
    let jpeg = encode(&DynamicImage::ImageRgb8(marked(64, 64)), ImageFormat::Jpeg);
    assert!(matches!(
        decode(&jpeg[..jpeg.len() / 2], limits),
        Err(DecodeError::Undecodable(_))
    ));
}

#[test]
fn tiny_images_decode_and_empty_ones_are_refused() {
    let one = encode(&DynamicImage::ImageRgb8(marked(1, 1)), ImageFormat::Png);
    assert_eq!(
        decode(&one, DecodeLimits::default()).unwrap().dimensions(),
        (1, 1)
    );
    // A BMP may declare 0 x 0 pixels.
    let mut bmp = encode(&DynamicImage::ImageRgb8(marked(1, 1)), ImageFormat::Bmp);
    bmp[18..22].copy_from_slice(&0i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&0i32.to_le_bytes());
    assert!(decode(&bmp, DecodeLimits::default()).is_err());
}

#[test]
fn pixel_limit_is_checked_before_decoding() {
    let png = encode(&DynamicImage::ImageRgb8(marked(200, 100)), ImageFormat::Png);
    let limits = DecodeLimits { max_pixels: 19_999 };
    assert_eq!(
        decode(&png, limits),
        Err(DecodeError::TooManyPixels {
            width: 200,
            height: 100,
            pixels: 20_000,
            max: 19_999
        })
    );
    assert!(decode(&png, DecodeLimits { max_pixels: 20_000 }).is_ok());
}

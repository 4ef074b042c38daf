//! Inputs the fuzz targets (fuzz/, `make fuzz`) flagged, replayed on every `cargo test`.
//!
//! Every file under tests/fuzz-regressions/decode/ goes through what the `decode` target
//! does: `preprocess::decode` with a 4 M pixel limit, then on success
//! `preprocess::prepare` in both resize modes, checking the same invariants. A
//! regression shows as a panic, an assertion, or the test process aborting on a failed
//! allocation.
//!
//! The inputs so far (see tests/fuzz-regressions/README.md):
//! - `crop-32800x24-cmyk-slow-unit.jpg`: the fuzzer's slow unit (531 bytes, 14 s under
//!   ASan): a 32800x24 CMYK JPEG that `resize=crop` scaled whole to 349866x256 first.
//! - `crop-strip-4000000x1.png`, `crop-strip-1x4000000.png`: the same flaw taken to the
//!   pixel limit (12-16 KiB of PNG each): `crop` wanted a 786 GB intermediate, and
//!   `stretch` a 2.7 GB resize buffer; the allocation failure aborted the process.

use std::path::PathBuf;
use std::time::Instant;

use gradcam_serve::preprocess::{decode, prepare, DecodeLimits, InputSpec, ResizeMode};

const MAX_PIXELS: u64 = 4_000_000;
const SIZE: u32 = 224;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn decode_regressions_neither_panic_nor_blow_up() {
    let files = inputs("decode");
    assert!(
        !files.is_empty(),
        "no inputs under tests/fuzz-regressions/decode"
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let started = Instant::now();
        let Ok(img) = decode(
            &data,
            DecodeLimits {
                max_pixels: MAX_PIXELS,
            },
        ) else {
            eprintln!("{name}: refused by decode");
            continue;
        };
        let (w, h) = img.dimensions();
        assert!(
            w > 0 && h > 0 && w as u64 * h as u64 <= MAX_PIXELS,
            "{name}: {w}x{h}"
        );
        for mode in [ResizeMode::Stretch, ResizeMode::Crop] {
            let input = prepare(&img, &InputSpec::imagenet(SIZE), mode);
            assert_eq!(input.size, SIZE, "{name} {mode:?}");
            assert_eq!(
                input.chw.len(),
                (3 * SIZE * SIZE) as usize,
                "{name} {mode:?}"
            );
            assert!(input.chw.iter().all(|v| v.is_finite()), "{name} {mode:?}");
            let r = input.region;
            assert!(
                r.width >= 1 && r.height >= 1 && r.x + r.width <= w && r.y + r.height <= h,
                "{name} {mode:?}: region {r:?} outside the {w}x{h} image"
            );
        }
        eprintln!(
            "{name}: {w}x{h}, decoded and prepared both ways in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// The elongated images keep the centre of their long side under `crop`, where
/// torchvision's Resize(256) + CenterCrop(224) looks, and still cover the whole picture
/// under `stretch`.
#[test]
fn crop_of_a_strip_is_its_centre() {
    for (w, h) in [(100_000u32, 3u32), (3, 100_000)] {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let t = if w > h { x } else { y };
            image::Rgb([(t % 251) as u8, 0, 0])
        });
        let crop = prepare(&img, &InputSpec::imagenet(SIZE), ResizeMode::Crop).region;
        let (long, start, extent) = if w > h {
            (w, crop.x, crop.width)
        } else {
            (h, crop.y, crop.height)
        };
        let centre = start + extent / 2;
        assert!(
            centre.abs_diff(long / 2) <= 1,
            "{w}x{h}: crop region {crop:?} is not centred"
        );
        assert!(extent <= 3, "{w}x{h}: crop region {crop:?}");
        let stretch = prepare(&img, &InputSpec::imagenet(SIZE), ResizeMode::Stretch).region;
        assert_eq!((stretch.width, stretch.height), (w, h));
    }
}

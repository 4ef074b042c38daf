//! Decode + preprocess: any bytes through `preprocess::decode` (pixel limit 4 M), and on
//! success through `preprocess::prepare` in both resize modes. A panic, an abort, a leak
//! or an allocation over libFuzzer's malloc limit is a finding; so is a broken invariant
//! of the model input (its length, the region it claims to show).
#![no_main]

use gradcam_serve::preprocess::{decode, prepare, DecodeLimits, InputSpec, ResizeMode};
use libfuzzer_sys::fuzz_target;

const MAX_PIXELS: u64 = 4_000_000;
const SIZE: u32 = 224;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = decode(
        data,
        DecodeLimits {
            max_pixels: MAX_PIXELS,
        },
    ) else {
        return;
    };
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0, "decode returned an empty {w}x{h} image");
    assert!(
        w as u64 * h as u64 <= MAX_PIXELS,
        "decode returned {w}x{h}, over the pixel limit"
    );
    for mode in [ResizeMode::Stretch, ResizeMode::Crop] {
        let input = prepare(&img, &InputSpec::imagenet(SIZE), mode);
        assert_eq!(input.size, SIZE);
        assert_eq!(input.chw.len(), (3 * SIZE * SIZE) as usize, "{mode:?}");
        assert!(input.chw.iter().all(|v| v.is_finite()), "{mode:?}");
        let r = input.region;
        assert!(
            r.width >= 1 && r.height >= 1 && r.x + r.width <= w && r.y + r.height <= h,
            "{mode:?}: region {r:?} outside the {w}x{h} image"
        );
    }
});

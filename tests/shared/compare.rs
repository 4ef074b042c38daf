//! How a map and an overlay are compared with pytorch-grad-cam's, for every parity test
//! (tests/core and tests/api include this file).

use image::RgbImage;

/// The largest difference relative to the reference's largest magnitude.
pub fn worst(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "maps of different sizes");
    let scale = want.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0f32, f32::max)
}

/// Overlay pixels within +-2 levels of pytorch-grad-cam's `show_cam_on_image`. One
/// exception, bounded: the colour is JET[uint8(255 * mask)], a truncation, so where
/// 255 * mask sits within float noise of a whole number the two sides may pick
/// neighbouring table entries (up to 4 levels apart in a channel). OpenCV's SIMD resize
/// rounds differently from any scalar code in the last bit (about 1e-7), and a folded batch
/// norm moves the raw map by about 1e-6, so such pixels exist; they are counted, and held to
/// 4 levels. `mask` is our heat mask at the overlay's size, `worst` the map's relative
/// error (`worst`).
pub fn assert_overlay_close(
    ours: &RgbImage,
    theirs: &RgbImage,
    mask: &[f32],
    worst: f32,
    what: &str,
) {
    assert_eq!(
        ours.dimensions(),
        theirs.dimensions(),
        "{what}: overlay size"
    );
    let noise = 255.0 * (4.0 * worst + 2e-6);
    let on_boundary = |m: f32| {
        let level = 255.0 * m;
        (level - level.round()).abs() <= noise
    };
    let (mut max_diff, mut boundary_pixels, mut boundary_max) = (0u8, 0usize, 0u8);
    for (i, (a, b)) in ours.pixels().zip(theirs.pixels()).enumerate() {
        let d = (0..3).map(|c| a[c].abs_diff(b[c])).max().unwrap();
        if d > 2 && on_boundary(mask[i]) {
            boundary_pixels += 1;
            boundary_max = boundary_max.max(d);
        } else {
            max_diff = max_diff.max(d);
        }
    }
    eprintln!(
        "{what}: raw map max rel diff {worst:.2e}, overlay max diff {max_diff}, \
         {boundary_pixels} colour-boundary pixel(s) up to {boundary_max}"
    );
    assert!(
        boundary_max <= 4,
        "{what}: boundary pixel off by {boundary_max}"
    );
    // The share of pixels whose 255 * mask lies within the map's error of a whole number.
    let (w, h) = ours.dimensions();
    let allowed = ((w * h) as f32 * (1e-3 + 2.0 * 255.0 * worst)) as usize;
    assert!(
        boundary_pixels <= allowed,
        "{what}: {boundary_pixels} boundary pixels, more than {allowed}"
    );
    assert!(
        max_diff <= 2,
        "{what}: overlay differs by {max_diff} levels"
    );
}

//! Parity with pytorch-grad-cam on identical weights and inputs.
//!
//! The reference data comes from `tests/reference/make_reference.py` (run by `make test`,
//! which points GRADCAM_PARITY_DIR at it). Without it these tests are ignored, never passed.

use std::path::PathBuf;

use gradcam_serve::config::ModelConfig;
use gradcam_serve::engine::{self, Engine, Options};
use gradcam_serve::explanation::Timing;
use gradcam_serve::preprocess::{DecodeLimits, ResizeMode};
use gradcam_serve::render;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    weights: String,
    cases: Vec<Case>,
    jet_rgb: Vec<[u8; 3]>,
}

#[derive(Deserialize)]
struct Case {
    image: String,
    overlay: String,
    target: Option<usize>,
    explained_class: usize,
    top5: Vec<usize>,
    probabilities: Vec<f32>,
    raw_map: Vec<Vec<f32>>,
}

fn reference() -> (PathBuf, Reference) {
    let dir = PathBuf::from(
        std::env::var("GRADCAM_PARITY_DIR")
            .expect("GRADCAM_PARITY_DIR must name the output of make_reference.py (make test)"),
    );
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    (
        dir,
        serde_json::from_str(&text).expect("reference.json parses"),
    )
}

fn engine(dir: &std::path::Path, r: &Reference, fold_batch_norm: bool) -> Engine {
    Engine::load(&ModelConfig {
        weights: dir.join(&r.weights),
        fold_batch_norm,
        ..ModelConfig::default()
    })
    .expect("reference weights load")
}

fn check_against_reference(fold_batch_norm: bool) {
    let (dir, r) = reference();
    let engine = engine(&dir, &r, fold_batch_norm);
    assert!(!r.cases.is_empty());
    for case in &r.cases {
        let bytes = std::fs::read(dir.join(&case.image)).unwrap();
        let prepared =
            engine::prepare(&bytes, DecodeLimits::default(), 224, ResizeMode::Stretch).unwrap();
        let (mut raw, _) = engine.run(&[&prepared.input], &[case.target]).unwrap();
        let raw = raw.remove(0);
        let options = Options {
            target: case.target,
            top_k: 5,
            alpha: 0.5,
            overlay: true,
            resize: ResizeMode::Stretch,
        };
        let (explanation, png) = engine::finish(
            &prepared.picture,
            prepared.input.region,
            &raw,
            &options,
            engine.info().clone(),
            Timing::default(),
        );

        // Same top-1 and top-5, same class explained.
        let ours: Vec<usize> = explanation.top_k.iter().map(|c| c.class_index).collect();
        assert_eq!(ours, case.top5, "{}: top-5", case.image);
        assert_eq!(explanation.target.class_index, case.explained_class);
        for c in &explanation.top_k {
            let want = case.probabilities[c.class_index];
            assert!(
                (c.score - want).abs() <= 1e-4 * want.max(1e-3),
                "{}: p",
                case.image
            );
        }

        // Raw map within 1e-4 relative to the map's scale.
        let want: Vec<f32> = case.raw_map.concat();
        let got: Vec<f32> = explanation.saliency.data.concat();
        assert_eq!(
            (explanation.saliency.width, explanation.saliency.height),
            (7, 7)
        );
        let scale = want.iter().copied().fold(0f32, f32::max).max(1e-12);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / scale)
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4,
            "{} (fold_batch_norm={fold_batch_norm}): raw map off by {worst:e} relative",
            case.image
        );

        // Overlay pixels within +-2 levels. One exception, bounded: the colour is
        // JET[uint8(255 * mask)], a truncation, so where 255 * mask sits within float noise
        // of a whole number the two sides may pick neighbouring table entries (up to 4
        // levels apart in a channel). OpenCV's SIMD resize rounds differently from any
        // scalar code in the last bit (about 1e-7), and a folded batch norm moves the raw
        // map by about 1e-6, so such pixels exist; they are counted, and held to 4 levels.
        let ours = image::load_from_memory(&png.unwrap()).unwrap().to_rgb8();
        let theirs = image::open(dir.join(&case.overlay)).unwrap().to_rgb8();
        assert_eq!(ours.dimensions(), theirs.dimensions());
        let mask = render::heat_mask(&got, 7, 7, 224, 224);
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
            "{} (fold_batch_norm={fold_batch_norm}): top-5 equal, raw map max rel diff \
             {worst:.2e}, overlay max diff {max_diff}, {boundary_pixels} colour-boundary \
             pixel(s) up to {boundary_max}",
            case.image
        );
        assert!(
            boundary_max <= 4,
            "{}: boundary pixel off by {boundary_max}",
            case.image
        );
        assert!(
            boundary_pixels <= 224 * 224 / 1000,
            "{}: too many boundary pixels",
            case.image
        );
        assert!(
            max_diff <= 2,
            "{}: overlay differs by {max_diff} levels",
            case.image
        );
    }
}

#[test]
#[ignore = "needs the pytorch-grad-cam reference data: run `make test`"]
fn matches_pytorch_grad_cam() {
    check_against_reference(false);
}

#[test]
#[ignore = "needs the pytorch-grad-cam reference data: run `make test`"]
fn matches_pytorch_grad_cam_with_batch_norm_folded() {
    check_against_reference(true);
}

#[test]
#[ignore = "needs the pytorch-grad-cam reference data: run `make test`"]
fn colormap_is_opencv_jet() {
    let (_, r) = reference();
    assert_eq!(r.jet_rgb.len(), 256);
    for (level, want) in r.jet_rgb.iter().enumerate() {
        assert_eq!(gradcam_serve::colormap::JET[level], *want, "level {level}");
    }
}

#[test]
#[ignore = "needs the pytorch-grad-cam reference data: run `make test`"]
fn batched_run_equals_one_by_one() {
    let (dir, r) = reference();
    let engine = engine(&dir, &r, true);
    let prepared: Vec<_> = r
        .cases
        .iter()
        .map(|c| {
            let bytes = std::fs::read(dir.join(&c.image)).unwrap();
            engine::prepare(&bytes, DecodeLimits::default(), 224, ResizeMode::Stretch).unwrap()
        })
        .collect();
    let targets: Vec<Option<usize>> = r.cases.iter().map(|c| c.target).collect();
    let inputs: Vec<_> = prepared.iter().map(|p| &p.input).collect();
    let (batched, _) = engine.run(&inputs, &targets).unwrap();
    for (i, p) in prepared.iter().enumerate() {
        let (single, _) = engine.run(&[&p.input], &[targets[i]]).unwrap();
        assert_eq!(batched[i].target, single[0].target);
        let scale = single[0].cam.iter().copied().fold(1e-12f32, f32::max);
        for (a, b) in batched[i].cam.iter().zip(&single[0].cam) {
            assert!((a - b).abs() / scale < 1e-4, "case {i}: {a} vs {b}");
        }
    }
}

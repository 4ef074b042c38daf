//! The network, the Grad-CAM math and weight loading, without HTTP.

use std::path::Path;

use gradcam_serve::config::ModelConfig;
use gradcam_serve::engine::{Engine, LoadError};
use gradcam_serve::gradcam;
use gradcam_serve::model::{self, ResNet50};
use gradcam_serve::weights::{self, WeightsError};
use tch::{Kind, Tensor};

fn demo_model() -> ResNet50 {
    ResNet50::from_tensors(Path::new("demo"), model::random_tensors(7)).unwrap()
}

fn input(seed: u64, n: i64) -> Tensor {
    model::seeded_normal(&[n, 3, 224, 224], seed, 1.0)
}

/// The reference note's exact check: at layer4 the head is average pooling and a linear
/// layer, so Grad-CAM = ReLU(fc.weight[c] . A) / (h * w).
#[test]
fn layer4_gradcam_equals_the_closed_form() {
    let model = demo_model();
    let x = input(1, 2);
    let targets = [None, Some(123)];
    let (raws, _) = gradcam::explain(&model, &x, &targets).unwrap();
    let activation = tch::no_grad(|| model.trunk(&x));
    for (i, raw) in raws.iter().enumerate() {
        assert_eq!((raw.width, raw.height), (7, 7));
        let a = activation.get(i as i64); // [2048, 7, 7]
        let w = model.fc_weight().get(raw.target as i64); // [2048]
        let closed = (w.view([2048, 1, 1]) * &a)
            .sum_dim_intlist([0].as_slice(), false, Kind::Float)
            .relu()
            / 49.0;
        let closed = Vec::<f32>::try_from(closed.view([-1])).unwrap();
        let scale = closed.iter().copied().fold(1e-12f32, f32::max);
        for (got, want) in raw.cam.iter().zip(&closed) {
            assert!(
                (got - want).abs() / scale < 1e-5,
                "image {i}: {got} vs {want}"
            );
        }
    }
    assert_eq!(raws[1].target, 123);
    let top1 = tch::no_grad(|| model.head(&activation)).argmax(1, false);
    assert_eq!(raws[0].target as i64, top1.int64_value(&[0]));
}

#[test]
fn explanation_needs_no_parameter_gradients() {
    let model = demo_model();
    let (raws, _) = gradcam::explain(&model, &input(2, 1), &[None]).unwrap();
    assert!(raws[0].cam.iter().any(|v| *v > 0.0));
    // The weights never require gradients: the backward pass stops at layer4.
    assert!(!model.fc_weight().requires_grad());
}

#[test]
fn probabilities_match_a_plain_prediction() {
    let model = demo_model();
    let x = input(3, 1);
    let (raws, _) = gradcam::explain(&model, &x, &[None]).unwrap();
    let plain = gradcam::predict(&model, &x).unwrap();
    for (a, b) in raws[0].probabilities.iter().zip(&plain) {
        assert!((a - b).abs() < 1e-6);
    }
    let total: f32 = plain.iter().sum();
    assert!((total - 1.0).abs() < 1e-4);
}

#[test]
fn folding_batch_norm_keeps_logits_and_maps() {
    let plain = demo_model();
    let mut folded = demo_model();
    folded.fold_batch_norm();
    let x = input(4, 1);
    let (a, _) = gradcam::explain(&plain, &x, &[None]).unwrap();
    let (b, _) = gradcam::explain(&folded, &x, &[None]).unwrap();
    let la = tch::no_grad(|| plain.head(&plain.trunk(&x)));
    let lb = tch::no_grad(|| folded.head(&folded.trunk(&x)));
    let max_logit = la.abs().max().double_value(&[]);
    let diff = (&la - &lb).abs().max().double_value(&[]);
    assert_eq!(a[0].target, b[0].target);
    assert!(
        diff / max_logit < 1e-4,
        "logits differ by {diff} (scale {max_logit})"
    );
    let scale = a[0].cam.iter().copied().fold(1e-12f32, f32::max);
    for (x, y) in a[0].cam.iter().zip(&b[0].cam) {
        assert!((x - y).abs() / scale < 1e-4);
    }
}

#[test]
fn onednn_weights_give_the_same_maps() {
    // The folded weights reordered into oneDNN's layout, activations kept in it: the same
    // maps and probabilities as plain tensors up to float rounding, at any batch size.
    let mut plain = demo_model();
    plain.fold_batch_norm();
    let mut onednn = demo_model();
    onednn.fold_batch_norm();
    onednn.use_onednn_weights(224).unwrap();
    for (seed, n, targets) in [
        (6, 3, vec![None, Some(7), Some(400)]),
        (8, 1, vec![None]),
        (9, 4, vec![None; 4]),
    ] {
        let x = input(seed, n);
        let (a, _) = gradcam::explain(&plain, &x, &targets).unwrap();
        let (b, _) = gradcam::explain(&onednn, &x, &targets).unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.target, b.target);
            let scale = a.cam.iter().copied().fold(1e-12f32, f32::max);
            for (x, y) in a.cam.iter().zip(&b.cam) {
                assert!((x - y).abs() / scale < 1e-4, "batch {n}: {x} vs {y}");
            }
            for (p, q) in a.probabilities.iter().zip(&b.probabilities) {
                assert!((p - q).abs() < 1e-5, "batch {n}: {p} vs {q}");
            }
        }
    }
    // Another input size than the one the layout was chosen for still computes right.
    let x = model::seeded_normal(&[2, 3, 320, 256], 10, 1.0);
    let (a, _) = gradcam::explain(&plain, &x, &[None, None]).unwrap();
    let (b, _) = gradcam::explain(&onednn, &x, &[None, None]).unwrap();
    assert_eq!((b[0].width, b[0].height), (8, 10));
    for (a, b) in a.iter().zip(&b) {
        let scale = a.cam.iter().copied().fold(1e-12f32, f32::max);
        for (x, y) in a.cam.iter().zip(&b.cam) {
            assert!((x - y).abs() / scale < 1e-4, "320x256: {x} vs {y}");
        }
    }
}

#[test]
fn out_of_range_target_is_an_error_not_a_crash() {
    let model = demo_model();
    assert!(gradcam::explain(&model, &input(5, 1), &[Some(1000)]).is_err());
}

fn write(path: &Path, tensors: &[(String, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

#[test]
fn weights_files_load_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    write(&good, &model::random_tensors(3));
    let loaded = weights::load_file(&good).unwrap();
    assert_eq!(loaded.weights_id, weights::sha256_file(&good).unwrap());
    assert_eq!(loaded.weights_id.len(), 64);

    // A torchvision file also holds num_batches_tracked counters: ignored.
    let mut with_counters = model::random_tensors(3);
    with_counters.push(("bn1.num_batches_tracked".into(), Tensor::from(0i64)));
    write(&good, &with_counters);
    assert!(weights::load_file(&good).is_ok());

    let missing = dir.path().join("missing.safetensors");
    let mut tensors = model::random_tensors(3);
    tensors.retain(|(n, _)| n != "layer3.2.bn2.running_var");
    write(&missing, &tensors);
    let err = weights::load_file(&missing).err().unwrap();
    assert!(matches!(err, WeightsError::MissingTensor { .. }));
    let text = err.to_string();
    assert!(
        text.contains("missing.safetensors") && text.contains("layer3.2.bn2.running_var"),
        "{text}"
    );

    let shape = dir.path().join("shape.safetensors");
    let mut tensors = model::random_tensors(3);
    for (n, t) in tensors.iter_mut() {
        if n == "fc.weight" {
            *t = Tensor::zeros([10, 2048], (Kind::Float, tch::Device::Cpu));
        }
    }
    write(&shape, &tensors);
    let text = weights::load_file(&shape).err().unwrap().to_string();
    assert!(
        text.contains("fc.weight") && text.contains("[10, 2048]") && text.contains("[1000, 2048]"),
        "{text}"
    );

    let extra = dir.path().join("resnet101.safetensors");
    let mut tensors = model::random_tensors(3);
    tensors.push((
        "layer3.6.conv1.weight".into(),
        Tensor::zeros([256, 1024, 1, 1], (Kind::Float, tch::Device::Cpu)),
    ));
    write(&extra, &tensors);
    let text = weights::load_file(&extra).err().unwrap().to_string();
    assert!(
        text.contains("layer3.6.conv1.weight") && text.contains("another architecture"),
        "{text}"
    );

    let pth = dir.path().join("resnet50.pth");
    std::fs::write(&pth, b"PK\x03\x04 pretend zip of a pickle").unwrap();
    let text = weights::load_file(&pth).err().unwrap().to_string();
    assert!(
        text.contains("pickle") && text.contains("safetensors"),
        "{text}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    let text = weights::load_file(&garbage).err().unwrap().to_string();
    assert!(
        text.contains("garbage.safetensors") && text.contains("not a valid safetensors"),
        "{text}"
    );
}

#[test]
fn missing_weights_without_demo_mode_is_a_clear_error() {
    let config = ModelConfig {
        weights: "/nowhere/resnet50.safetensors".into(),
        ..ModelConfig::default()
    };
    let err = Engine::load(&config).err().unwrap();
    assert!(matches!(err, LoadError::NoWeights(_)));
    let text = err.to_string();
    assert!(
        text.contains("/nowhere/resnet50.safetensors") && text.contains("fetch-weights"),
        "{text}"
    );
    let demo = Engine::load(&ModelConfig {
        demo_weights: true,
        ..config
    })
    .unwrap();
    assert!(demo.is_demo());
    assert_eq!(demo.info().weights, "demo-random");
}

#[test]
fn cli_exits_non_zero_naming_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.safetensors");
    std::fs::write(&bad, b"nope").unwrap();
    let image = dir.path().join("x.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(&image)
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradcam-serve"))
        .args(["explain", "--weights"])
        .arg(&bad)
        .arg(&image)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.safetensors"), "{stderr}");
}

#[test]
fn fetch_weights_offline_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("w.safetensors");
    // A port nothing listens on stands in for an unreachable host.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradcam-serve"))
        .args([
            "fetch-weights",
            "--url",
            "http://127.0.0.1:9/model.safetensors",
            "--weights",
        ])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not download") && stderr.contains("offline"),
        "{stderr}"
    );
    assert!(!dest.exists());
}

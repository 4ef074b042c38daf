//! The network, the Grad-CAM math and weight loading, without HTTP.

use std::path::Path;

use gradcam_serve::config::ModelConfig;
use gradcam_serve::engine::{Engine, LoadError};
use gradcam_serve::gradcam::{self, Ask};
use gradcam_serve::model;
use gradcam_serve::model::resnet::{self, Architecture, ModelError, ResNet};
use gradcam_serve::weights::{self, WeightsError};
use tch::{Kind, Tensor};

fn arch(name: &str, classes: usize) -> Architecture {
    Architecture::named(name, classes).unwrap()
}

fn random_model(name: &str, classes: usize, seed: u64) -> ResNet {
    ResNet::from_tensors(resnet::random_tensors(&arch(name, classes), seed), None).unwrap()
}

fn demo_model() -> ResNet {
    random_model("resnet50", 1000, 7)
}

fn layer(name: &str) -> String {
    name.to_string()
}

/// One ask per target, all at `at`.
fn asks_at(at: &str, targets: &[Option<usize>]) -> Vec<Ask> {
    targets
        .iter()
        .map(|&target| Ask {
            target,
            layer: layer(at),
        })
        .collect()
}

fn asks(targets: &[Option<usize>]) -> Vec<Ask> {
    asks_at("layer4", targets)
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
    let (raws, _) = gradcam::batch(&model, &x, &asks(&targets)).unwrap();
    let activation = tch::no_grad(|| model.trunk(&x));
    for (i, raw) in raws.iter().enumerate() {
        assert_eq!((raw.width, raw.height), (7, 7));
        let a = activation.get(i as i64); // [2048, 7, 7]
        let w = model.fc_weight().get(raw.target as i64); // [2048]
        assert_eq!(raw.layer, "layer4");
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
    let (raws, _) = gradcam::batch(&model, &input(2, 1), &asks(&[None])).unwrap();
    assert!(raws[0].cam.iter().any(|v| *v > 0.0));
    // The weights never require gradients: the backward pass stops at layer4.
    assert!(!model.fc_weight().requires_grad());
}

#[test]
fn probabilities_match_a_plain_prediction() {
    let model = demo_model();
    let x = input(3, 1);
    let (raws, _) = gradcam::batch(&model, &x, &asks(&[None])).unwrap();
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
    let (a, _) = gradcam::batch(&plain, &x, &asks(&[None])).unwrap();
    let (b, _) = gradcam::batch(&folded, &x, &asks(&[None])).unwrap();
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
fn earlier_layers_run_unfolded_and_agree_to_the_bit() {
    // Before layer4 the gradient goes back through ReLUs whose masks the fast path's
    // rounding could flip, so those layers run the unfolded network on every setting:
    // folded, oneDNN weights or neither, the maps and probabilities are the same bits.
    let plain = demo_model();
    let mut fast = demo_model();
    fast.fold_batch_norm();
    fast.use_onednn_weights(224).unwrap();
    let x = input(12, 1);
    for at in ["layer3", "layer2", "layer3.1", "layer4.1"] {
        let asks = asks_at(at, &[Some(3)]);
        let (a, _) = gradcam::batch(&plain, &x, &asks).unwrap();
        let (b, _) = gradcam::batch(&fast, &x, &asks).unwrap();
        assert_eq!(a[0].cam, b[0].cam, "{at}");
        assert_eq!(a[0].probabilities, b[0].probabilities, "{at}");
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
        let (a, _) = gradcam::batch(&plain, &x, &asks(&targets)).unwrap();
        let (b, _) = gradcam::batch(&onednn, &x, &asks(&targets)).unwrap();
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
    let (a, _) = gradcam::batch(&plain, &x, &asks(&[None, None])).unwrap();
    let (b, _) = gradcam::batch(&onednn, &x, &asks(&[None, None])).unwrap();
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
    assert!(gradcam::batch(&model, &input(5, 1), &asks(&[Some(1000)])).is_err());
    let no_block = asks_at("layer4.3", &[None]);
    let err = gradcam::batch(&model, &input(5, 1), &no_block).unwrap_err();
    assert!(err.to_string().contains("layer4.3"), "{err}");
}

fn write(path: &Path, tensors: &[(String, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

fn r50(seed: u64) -> Vec<(String, Tensor)> {
    resnet::random_tensors(&arch("resnet50", 1000), seed)
}

fn load_error(path: &Path, architecture: Option<&str>) -> WeightsError {
    weights::load_file(path, architecture).err().unwrap()
}

#[test]
fn weights_files_load_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    write(&good, &r50(3));
    let (network, id) = weights::load_file(&good, None).unwrap();
    assert_eq!(id, weights::sha256_file(&good).unwrap());
    assert_eq!(id.len(), 64);
    assert_eq!(network.architecture().name(), "resnet50");

    // A torchvision file also holds num_batches_tracked counters: ignored.
    let mut with_counters = r50(3);
    with_counters.push(("bn1.num_batches_tracked".into(), Tensor::from(0i64)));
    write(&good, &with_counters);
    assert!(weights::load_file(&good, Some("resnet50")).is_ok());

    // A ResNet-50 file with a ResNet-18 `architecture` setting: both named.
    let text = load_error(&good, Some("resnet18")).to_string();
    assert!(
        text.contains("resnet50") && text.contains("resnet18") && text.contains("good.safetensors"),
        "{text}"
    );
    let text = load_error(&good, Some("resnet51")).to_string();
    assert!(text.contains("unknown architecture `resnet51`"), "{text}");

    let missing = dir.path().join("missing.safetensors");
    let mut tensors = r50(3);
    tensors.retain(|(n, _)| n != "layer3.2.bn2.running_var");
    write(&missing, &tensors);
    let err = load_error(&missing, None);
    assert!(matches!(
        err,
        WeightsError::Model {
            error: ModelError::MissingTensor(_),
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("missing.safetensors") && text.contains("layer3.2.bn2.running_var"),
        "{text}"
    );

    // A whole stage missing: the first tensor it needs is named.
    tensors.retain(|(n, _)| !n.starts_with("layer2."));
    write(&missing, &tensors);
    let text = load_error(&missing, None).to_string();
    assert!(text.contains("layer2.0.conv1.weight"), "{text}");

    let shape = dir.path().join("shape.safetensors");
    let mut tensors = r50(3);
    for (n, t) in tensors.iter_mut() {
        if n == "layer3.0.conv2.weight" {
            *t = Tensor::zeros([256, 256, 1, 1], (Kind::Float, tch::Device::Cpu));
        }
    }
    write(&shape, &tensors);
    let text = load_error(&shape, None).to_string();
    assert!(
        text.contains("layer3.0.conv2.weight")
            && text.contains("[256, 256, 1, 1]")
            && text.contains("[256, 256, 3, 3]"),
        "{text}"
    );

    let extra = dir.path().join("extra.safetensors");
    let mut tensors = r50(3);
    tensors.push((
        "head.fc2.weight".into(),
        Tensor::zeros([10, 2048], (Kind::Float, tch::Device::Cpu)),
    ));
    write(&extra, &tensors);
    let text = load_error(&extra, None).to_string();
    assert!(
        text.contains("head.fc2.weight") && text.contains("another architecture"),
        "{text}"
    );

    let pth = dir.path().join("resnet50.pth");
    std::fs::write(&pth, b"PK\x03\x04 pretend zip of a pickle").unwrap();
    let text = load_error(&pth, None).to_string();
    assert!(
        text.contains("pickle") && text.contains("safetensors"),
        "{text}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    let text = load_error(&garbage, None).to_string();
    assert!(
        text.contains("garbage.safetensors") && text.contains("not a valid safetensors"),
        "{text}"
    );

    // A file cut short (an interrupted copy).
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = load_error(&truncated, None).to_string();
    assert!(
        text.contains("truncated.safetensors") && text.contains("not a valid safetensors"),
        "{text}"
    );
}

#[test]
fn every_resnet_family_architecture_loads_and_explains_every_stage() {
    // Small inputs keep the big ones quick; the map is input / 4 at layer1, / 32 at layer4.
    for (name, classes) in [
        ("resnet18", 10),
        ("resnet34", 3),
        ("resnet50", 1000),
        ("wide_resnet50_2", 5),
        ("resnext50_32x4d", 7),
    ] {
        let mut network = random_model(name, classes, 11);
        assert_eq!(network.architecture().name(), name);
        network.fold_batch_norm();
        network.use_onednn_weights(64).unwrap();
        let x = model::seeded_normal(&[2, 3, 64, 64], 12, 1.0);
        for (at, side) in [("layer1", 16), ("layer2", 8), ("layer3", 4), ("layer4", 2)] {
            let (raws, _) =
                gradcam::batch(&network, &x, &asks_at(at, &[None, Some(classes - 1)])).unwrap();
            assert_eq!((raws[0].width, raws[0].height), (side, side), "{name} {at}");
            assert_eq!(raws[0].probabilities.len(), classes);
            assert_eq!(raws[1].target, classes - 1);
            assert_eq!(raws[1].layer, layer(at));
        }
    }
}

#[test]
fn earlier_layers_agree_with_and_without_onednn_and_in_mixed_batches() {
    // The gradient runs back through the blocks after the layer on plain tensors; with
    // oneDNN weights the plain weights are made back from them. Same maps either way, and a
    // batch mixing layers and targets gives each image what it gives alone.
    let mut plain = random_model("resnext50_32x4d", 20, 5);
    plain.fold_batch_norm();
    let mut onednn = random_model("resnext50_32x4d", 20, 5);
    onednn.fold_batch_norm();
    onednn.use_onednn_weights(96).unwrap();
    let x = model::seeded_normal(&[4, 3, 96, 96], 13, 1.0);
    let mixed = vec![
        Ask {
            target: None,
            layer: layer("layer3"),
        },
        Ask {
            target: Some(3),
            layer: layer("layer4"),
        },
        Ask {
            target: None,
            layer: layer("layer2.1"),
        },
        Ask {
            target: Some(19),
            layer: layer("layer3.1"),
        },
    ];
    let (batched, _) = gradcam::batch(&onednn, &x, &mixed).unwrap();
    for (i, ask) in mixed.iter().enumerate() {
        let one = x.narrow(0, i as i64, 1);
        let (alone, _) = gradcam::batch(&onednn, &one, std::slice::from_ref(ask)).unwrap();
        let (reference, _) = gradcam::batch(&plain, &one, std::slice::from_ref(ask)).unwrap();
        for other in [&alone[0], &reference[0]] {
            assert_eq!(batched[i].target, other.target, "image {i}");
            assert_eq!(
                (batched[i].width, batched[i].height),
                (other.width, other.height)
            );
            let scale = other.cam.iter().copied().fold(1e-12f32, f32::max);
            for (a, b) in batched[i].cam.iter().zip(&other.cam) {
                assert!(
                    (a - b).abs() / scale < 1e-4,
                    "image {i} at {}: {a} vs {b}",
                    ask.layer
                );
            }
        }
    }
}

#[test]
fn a_labels_file_of_the_wrong_length_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("r18.safetensors");
    write(&weights, &resnet::random_tensors(&arch("resnet18", 10), 1));
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "a\nb\nc\n").unwrap();
    let config = ModelConfig {
        weights: weights.clone(),
        labels: Some(labels.clone()),
        ..ModelConfig::default()
    };
    let text = Engine::load(&config, None).err().unwrap().to_string();
    assert!(
        text.contains("3 labels") && text.contains("10 classes"),
        "{text}"
    );
    std::fs::write(
        &labels,
        (0..10)
            .map(|i| format!("finding {i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let engine = Engine::load(&config, None).unwrap();
    let d = engine.description();
    assert_eq!((d.architecture.as_str(), d.num_classes), ("resnet18", 10));
    assert_eq!(d.labels[9], "finding 9");
    assert_eq!(d.layers.len(), 4 + 8);
    // A default layer the model lacks is refused too.
    let text = Engine::load(&config, Some("layer4.2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        text.contains("layer4.2") && text.contains("resnet18"),
        "{text}"
    );
}

#[test]
fn missing_weights_without_demo_mode_is_a_clear_error() {
    let config = ModelConfig {
        weights: "/nowhere/resnet50.safetensors".into(),
        ..ModelConfig::default()
    };
    let err = Engine::load(&config, None).err().unwrap();
    assert!(matches!(err, LoadError::NoWeights(_)));
    let text = err.to_string();
    assert!(
        text.contains("/nowhere/resnet50.safetensors") && text.contains("fetch-weights"),
        "{text}"
    );
    let demo = Engine::load(
        &ModelConfig {
            demo_weights: true,
            ..config.clone()
        },
        None,
    )
    .unwrap();
    assert!(demo.description().is_demo());
    assert_eq!(demo.description().weights, "demo-random");
    assert_eq!(demo.description().architecture, "resnet50");
    // Demo weights of another architecture, when the setting names one.
    let demo18 = Engine::load(
        &ModelConfig {
            demo_weights: true,
            architecture: Some("resnet18".into()),
            ..config
        },
        None,
    )
    .unwrap();
    assert_eq!(demo18.description().architecture, "resnet18");
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

    // Another architecture's published file, by name; an unknown name is refused first.
    assert!(weights::official_weights_url("resnext50_32x4d")
        .ends_with("/timm/resnext50_32x4d.tv_in1k/resolve/main/model.safetensors"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradcam-serve"))
        .args(["fetch-weights", "--architecture", "resnet51", "--weights"])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown architecture `resnet51`"),
        "{stderr}"
    );
    assert!(!dest.exists());
}

#[test]
fn cli_runs_scorecam_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.png");
    image::RgbImage::from_fn(40, 32, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, 90])
    })
    .save(&image)
    .unwrap();
    // A small network at a small size: 512 masked passes of 32x32 are quick.
    let run = |allow: Option<&str>| {
        let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_gradcam-serve"));
        cli.args([
            "explain",
            "--demo-weights",
            "--architecture",
            "resnet18",
            "--input-size",
            "32",
            "--method",
            "scorecam",
            "--json",
        ])
        .arg(&image)
        .env_remove("GRADCAM_ALLOW_SCORECAM")
        .current_dir(dir.path());
        if let Some(value) = allow {
            cli.env("GRADCAM_ALLOW_SCORECAM", value);
        }
        cli.output().unwrap()
    };
    let refused = run(None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("GRADCAM_ALLOW_SCORECAM=true"), "{stderr}");

    let allowed = run(Some("true"));
    let stderr = String::from_utf8_lossy(&allowed.stderr);
    assert!(allowed.status.success(), "{stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(answer["method"], "scorecam", "{answer}");
    assert_eq!(answer["saliency"]["width"], 1, "{answer}");
}

/// A state dict saved from a training wrapper carries its prefix on every name (a
/// third-party ResNet-18 package's weights are all `backbone.*`; DataParallel's `module.`,
/// Lightning's `model.`, nested): it loads as the plain one does.
#[test]
fn a_wrapper_prefix_on_every_tensor_name_is_read_through() {
    let dir = tempfile::tempdir().unwrap();
    let plain: Vec<(String, Tensor)> = resnet::random_tensors(&arch("resnet18", 10), 4);
    let map_of = |engine: &Engine| {
        let input = model::seeded_normal(&[1, 3, 64, 64], 5, 1.0);
        let (raws, _) = gradcam::batch(engine.network(), &input, &asks(&[Some(3)])).unwrap();
        raws[0].cam.clone()
    };
    let load = |name: &str, tensors: &[(String, Tensor)]| {
        let path = dir.path().join(name);
        write(&path, tensors);
        Engine::load(
            &ModelConfig {
                weights: path,
                ..ModelConfig::default()
            },
            None,
        )
    };
    let reference = map_of(&load("plain.safetensors", &plain).unwrap());
    for prefix in ["backbone.", "module.", "model.", "module.backbone."] {
        let wrapped: Vec<(String, Tensor)> = plain
            .iter()
            .map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone()))
            .collect();
        let engine = load("wrapped.safetensors", &wrapped).unwrap();
        assert_eq!(engine.description().architecture, "resnet18", "{prefix}");
        assert_eq!(map_of(&engine), reference, "{prefix}");
    }
    // A prefix on some names only is not a wrapper's: refused, the message said once.
    let mut mixed = plain;
    mixed[0].0 = format!("backbone.{}", mixed[0].0);
    let error = anyhow::Error::from(load("mixed.safetensors", &mixed).err().unwrap());
    let text = format!("{error:#}");
    assert!(text.contains("no tensor `conv1.weight`"), "{text}");
    assert_eq!(text.matches("no tensor").count(), 1, "said twice: {text}");
}

/// SESS asks `abandoned` before each of its 122 windows, so the request timeout stops it
/// between windows rather than after them all.
#[test]
fn sess_stops_between_windows_once_abandoned() {
    use gradcam_serve::cam::{self, CamAsk, Method, MethodParams, Targets};
    use gradcam_serve::gradcam::GradCamError;
    let model = random_model("resnet18", 10, 3);
    let image = cam::Image {
        normalised: model::seeded_normal(&[1, 3, 64, 64], 5, 1.0),
        pixels: &[],
    };
    let ask = CamAsk {
        method: Method::Sess,
        targets: Targets::Top1,
        layers: vec![layer("layer4")],
        eigen_smooth: false,
        aug_smooth: false,
        params: MethodParams::default(),
    };
    let asked = std::cell::Cell::new(0);
    let abandoned = || {
        asked.set(asked.get() + 1);
        asked.get() > 3
    };
    let result = cam::compute(&model, &image, &ask, &abandoned);
    assert!(matches!(result, Err(GradCamError::Abandoned)), "{result:?}");
    assert_eq!(asked.get(), 4, "three windows explained, then stopped");
    // Not abandoned, the same ask gives a scaled map at the input's size.
    let (maps, _) = cam::compute(&model, &image, &ask, &|| false).unwrap();
    let m = &maps.maps[0];
    assert!(m.scaled && (m.width, m.height) == (64, 64));
    let top = m.map.iter().cloned().fold(f32::MIN, f32::max);
    assert!(top > 0.99 && m.map.iter().all(|&v| v >= 0.0), "{top}");
}

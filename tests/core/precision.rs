//! `model.precision = "bf16"`: refused at start on a CPU without AVX-512 BF16 or AMX
//! (checked on every machine, with the CPU's flags faked), and on a CPU with them, its
//! fidelity to f32 on the parity images: top-5 agreement and map error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradcam_serve::config::ModelConfig;
use gradcam_serve::engine::{self, Engine, Explainer, LoadError};
use gradcam_serve::gradcam::{Ask, GradCamMap};
use gradcam_serve::precision::{CpuFeatures, Precision};
use gradcam_serve::preprocess::{DecodeLimits, ResizeMode};
use serde::Deserialize;

fn demo_config(precision: Precision) -> ModelConfig {
    ModelConfig {
        weights: PathBuf::from("/nonexistent/weights.safetensors"),
        architecture: Some("resnet18".into()),
        demo_weights: true,
        precision,
        ..ModelConfig::default()
    }
}

const NO_BF16: CpuFeatures = CpuFeatures {
    avx512_bf16: false,
    amx_bf16: false,
    name: "AVX2-only test CPU",
};

#[test]
fn bf16_is_refused_at_start_naming_the_missing_instruction_sets() {
    let Err(LoadError::Setting(refusal)) =
        Engine::load_on(&demo_config(Precision::Bf16), None, NO_BF16)
    else {
        panic!("bf16 on a CPU without AVX-512 BF16 or AMX must be refused");
    };
    assert!(refusal.contains("AVX-512 BF16"), "{refusal}");
    assert!(refusal.contains("AMX"), "{refusal}");
    // fp32, the default, loads on the same CPU.
    Engine::load_on(&demo_config(Precision::Fp32), None, NO_BF16).unwrap();
}

#[test]
fn bf16_needs_the_onednn_path() {
    let with_bf16 = CpuFeatures {
        avx512_bf16: true,
        ..NO_BF16
    };
    let config = ModelConfig {
        onednn_weights: false,
        ..demo_config(Precision::Bf16)
    };
    let Err(LoadError::Setting(refusal)) = Engine::load_on(&config, None, with_bf16) else {
        panic!("bf16 without onednn_weights must be refused");
    };
    assert!(refusal.contains("onednn_weights"), "{refusal}");
}

#[derive(Deserialize)]
struct Reference {
    weights: String,
    cases: Vec<Case>,
    models: Vec<ModelReference>,
}

#[derive(Deserialize)]
struct ModelReference {
    architecture: String,
    weights: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    image: String,
    layer: Option<String>,
}

fn explain(engine: &Engine, dir: &Path, case: &Case) -> GradCamMap {
    let bytes = std::fs::read(dir.join(&case.image)).unwrap();
    let spec = engine.description().input_spec();
    let prepared =
        engine::prepare(&bytes, DecodeLimits::default(), &spec, ResizeMode::Stretch).unwrap();
    let layer = case.layer.as_deref().unwrap_or("layer4").parse().unwrap();
    let ask = Ask {
        target: None,
        layer,
    };
    let (mut raw, _) = engine.gradcam_batch(&[&prepared.input], &[ask]).unwrap();
    raw.remove(0)
}

fn top5(p: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order.truncate(5);
    order
}

/// bf16 against f32 on every parity image, architecture and layer. Holds the map to 5 % of
/// its maximum where both explain the same class, and prints every figure.
#[test]
#[ignore = "needs the pytorch-grad-cam reference data: run `make test`"]
fn bf16_stays_close_to_fp32_on_the_parity_images() {
    let dir = PathBuf::from(std::env::var("GRADCAM_PARITY_DIR").expect("GRADCAM_PARITY_DIR"));
    let r: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let mut models = vec![("resnet50".to_string(), r.weights, r.cases)];
    models.extend(
        r.models
            .into_iter()
            .map(|m| (m.architecture, m.weights, m.cases)),
    );
    if let Err(why) = Precision::Bf16.check(CpuFeatures::detect()) {
        // This CPU cannot run bf16, so its fidelity is not measured here; what holds here is
        // that every parity model refuses it at load, saying which instructions are missing.
        for (architecture, weights, _) in &models {
            let config = ModelConfig {
                weights: dir.join(weights),
                precision: Precision::Bf16,
                ..ModelConfig::default()
            };
            let Err(LoadError::Setting(refusal)) = Engine::load(&config, None) else {
                panic!("{architecture}: bf16 loaded on a CPU without it");
            };
            assert!(
                refusal.contains("avx512_bf16") && refusal.contains("amx_bf16"),
                "{refusal}"
            );
        }
        eprintln!("bf16 fidelity not measured: this CPU cannot run bf16 ({why}); refused at load");
        return;
    }
    let (mut cases, mut same_top1, mut same_top5_set, mut worst) = (0, 0, 0, 0f32);
    let mut per_layer: HashMap<String, f32> = HashMap::new();
    for (architecture, weights, model_cases) in &models {
        let load = |precision| {
            let config = ModelConfig {
                weights: dir.join(weights),
                architecture: Some(architecture.clone()),
                precision,
                ..ModelConfig::default()
            };
            Engine::load(&config, None).unwrap()
        };
        let (fp32, bf16) = (load(Precision::Fp32), load(Precision::Bf16));
        for case in model_cases {
            let (a, b) = (explain(&fp32, &dir, case), explain(&bf16, &dir, case));
            let (ta, tb) = (top5(&a.probabilities), top5(&b.probabilities));
            let mut sa = ta.clone();
            let mut sb = tb.clone();
            sa.sort();
            sb.sort();
            cases += 1;
            same_top1 += usize::from(ta[0] == tb[0]);
            same_top5_set += usize::from(sa == sb);
            let layer = case.layer.clone().unwrap_or("layer4".into());
            let what = format!("{architecture} {} at {layer}", case.image);
            if a.target != b.target {
                eprintln!("{what}: top-1 differs ({} vs {})", a.target, b.target);
                continue;
            }
            let scale = a.cam.iter().copied().fold(0f32, f32::max).max(1e-12);
            let error = a
                .cam
                .iter()
                .zip(&b.cam)
                .map(|(x, y)| (x - y).abs() / scale)
                .fold(0f32, f32::max);
            eprintln!(
                "{what}: top-5 fp32 {ta:?} bf16 {tb:?}, map max error {error:.2e} of its max"
            );
            let at = per_layer.entry(layer).or_default();
            *at = at.max(error);
            worst = worst.max(error);
            assert!(error <= 0.05, "{what}: bf16 map off by {error:.3}");
        }
    }
    eprintln!(
        "bf16 vs fp32 over {cases} cases: same top-1 {same_top1}, same top-5 set \
         {same_top5_set}, worst map error {worst:.2e} of the map's max; per layer {per_layer:?}"
    );
    assert!(cases >= 10);
}

//! `gradcam-bench exported`: a model file's Grad-CAM explanation at its default layer
//! against its own plain prediction, in process, batch 1 (the any-model issue's goal: at
//! most 1.15). Any file the server loads: an exported TorchScript model or a ResNet
//! state dict (the native path, to compare the two on the same weights).
//!
//! Each round runs the prediction and the explanation once, in alternating order, so that
//! a drift in the machine's speed touches both alike.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use gradcam_serve::engine::{self, Explainer};
use gradcam_serve::gradcam::Ask;
use gradcam_serve::preprocess::{DecodeLimits, ResizeMode};

use crate::{ms_since, shipped_engine, summarise};

pub fn exported_bench(
    weights: &Path,
    image: &Path,
    runs: usize,
    threads: usize,
) -> anyhow::Result<Value> {
    let engine = shipped_engine(weights, threads)?;
    let model = engine.description().clone();
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let prepared = engine::prepare(
        &bytes,
        DecodeLimits::default(),
        &model.input_spec(),
        ResizeMode::Stretch,
    )?;
    let input = &prepared.input;
    let ask = Ask {
        target: None,
        layer: model.default_layer.clone(),
    };
    let (mut predictions, mut explanations, mut forward, mut backward) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut step = |which: usize, record: bool| -> anyhow::Result<()> {
        let t = Instant::now();
        if which == 0 {
            std::hint::black_box(engine.predict(&[input])?);
            if record {
                predictions.push(ms_since(t));
            }
        } else {
            let (raw, passes) = engine.gradcam_batch(&[input], std::slice::from_ref(&ask))?;
            std::hint::black_box(raw);
            if record {
                explanations.push(ms_since(t));
                forward.push(passes.forward_ms);
                backward.push(passes.backward_ms);
            }
        }
        Ok(())
    };
    for _ in 0..3 {
        step(0, false)?;
        step(1, false)?;
    }
    for round in 0..runs {
        step(round % 2, true)?;
        step(1 - round % 2, true)?;
    }
    let prediction = summarise(&predictions);
    let explanation = summarise(&explanations);
    eprintln!(
        "exported: {} ({:?}) at {}: prediction p50 {:.1} ms, explanation p50 {:.1} ms",
        model.architecture, model.backend, model.default_layer, prediction.p50, explanation.p50
    );
    Ok(json!({
        "model": model.architecture,
        "backend": model.backend,
        "layer": model.default_layer,
        "threads": tch::get_num_threads(),
        "runs": runs,
        "prediction_ms": prediction,
        "explanation_ms": explanation,
        "explanation_forward_ms": summarise(&forward),
        "explanation_backward_ms": summarise(&backward),
        "ratio": explanation.p50 / prediction.p50,
    }))
}

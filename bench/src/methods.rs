//! `gradcam-bench methods`: every CAM method at layer4 against our own prediction, in
//! process, batch 1, the shipped settings (issue 11's table; bench/baseline.py `--methods`
//! times pytorch-grad-cam's classes on the same weights and image).
//!
//! Each round runs the prediction and every fast method once, in an order rotated from
//! round to round, so that a drift in the machine's speed touches every column alike.
//! AblationCAM, ScoreCAM and SESS run `slow_runs` times after the rounds.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use gradcam_serve::cam::{CamAsk, Method, Targets};
use gradcam_serve::engine::{Engine, Explainer};
use gradcam_serve::preprocess::ModelInput;

use crate::{ask, input_224, ms_since, shipped_engine, summarise};

/// Methods whose cost grows with the layer's channel count (a pass per channel or batch
/// of channels) rather than one forward and one backward.
fn is_slow(method: Method) -> bool {
    // SESS explains 122 windows: seconds a call.
    matches!(
        method,
        Method::AblationCam | Method::ScoreCam | Method::Sess
    )
}

/// One explanation of the top-1 class at layer4 with `method`, as the server runs it:
/// plain Grad-CAM through the batched pass, every other method through `Explainer::cam`.
fn explain_once(engine: &Engine, input: &ModelInput, method: Method) -> anyhow::Result<()> {
    if method == Method::GradCam {
        std::hint::black_box(
            engine.gradcam_batch(&[input], &[ask(gradcam_serve::model::resnet::Layer::LAST)])?,
        );
    } else {
        let cam = CamAsk {
            method,
            targets: Targets::Top1,
            layers: vec!["layer4".into()],
            eigen_smooth: false,
            aug_smooth: false,
            params: Default::default(),
        };
        std::hint::black_box(engine.cam(input, &cam, &|| false)?);
    }
    Ok(())
}

pub fn methods_bench(
    weights: &Path,
    image: &Path,
    runs: usize,
    slow_runs: usize,
    threads: usize,
) -> anyhow::Result<Value> {
    let input = &input_224(image)?;
    let engine = shipped_engine(weights, threads)?;
    // method=auto ranks the others by a score: the scores step times it (scores.rs).
    let fast: Vec<Method> = Method::ALL
        .into_iter()
        .filter(|&m| !is_slow(m) && m != Method::Auto)
        .collect();
    eprintln!(
        "methods: {} libtorch threads, {runs} rounds of prediction + {} methods, then {slow_runs} runs of AblationCAM, ScoreCAM and SESS",
        tch::get_num_threads(),
        fast.len()
    );

    // Column 0 is the prediction, then one per fast method.
    let columns = fast.len() + 1;
    let run_column = |column: usize| -> anyhow::Result<f64> {
        let t = Instant::now();
        if column == 0 {
            std::hint::black_box(engine.predict(&[input])?);
        } else {
            explain_once(&engine, input, fast[column - 1])?;
        }
        Ok(ms_since(t))
    };
    for column in 0..columns {
        for _ in 0..2 {
            run_column(column)?;
        }
    }
    let mut times = vec![Vec::with_capacity(runs); columns];
    for round in 0..runs {
        for step in 0..columns {
            let column = (round + step) % columns;
            times[column].push(run_column(column)?);
        }
    }
    let mut methods = serde_json::Map::new();
    for (i, &method) in fast.iter().enumerate() {
        methods.insert(method.name().into(), json!(summarise(&times[i + 1])));
    }
    // No warm-up run of their own: the rounds above warmed the trunk and the head, and
    // one run is thousands of passes (ScoreCAM at layer4: 2048 masked inputs).
    for method in Method::ALL.into_iter().filter(|&m| is_slow(m)) {
        let mut ms = Vec::with_capacity(slow_runs);
        for _ in 0..slow_runs {
            let t = Instant::now();
            explain_once(&engine, input, method)?;
            ms.push(ms_since(t));
        }
        eprintln!(
            "methods: {} p50 {:.0} ms",
            method.name(),
            summarise(&ms).p50
        );
        methods.insert(method.name().into(), json!(summarise(&ms)));
    }
    Ok(json!({
        "threads": tch::get_num_threads(),
        "runs": runs,
        "slow_runs": slow_runs,
        "layer": "layer4",
        "prediction_ms": summarise(&times[0]),
        "methods": methods,
    }))
}

//! `gradcam-bench scores`: the faithfulness scores (issue 23) at layer4, in process, batch
//! 1, the shipped settings: a plain Grad-CAM explanation, Grad-CAM with each score alone,
//! and `method=auto` ranked by its default `auto_score` (confidence_change) and by `road`,
//! against our own prediction (bench/baseline.py `--scores` times pytorch-grad-cam's
//! `ROADCombined` and `CamMultImageConfidenceChange` on the same weights and image).
//!
//! Every explanation goes through `engine::run_network`, as the server runs it, with the
//! options a request would give (`scores=...`, `method=auto`, `auto_score=road`). Each
//! round runs every column due in it once, in an order rotated from round to round, so
//! that a drift in the machine's speed touches every column alike: the cheap columns run in
//! every round, the ROAD ones (`road`, `road_morf`, `road_lerf`, `arcc`: 8 imputations
//! each) in `slow_runs` rounds and `method=auto` with `auto_score=road` (ROAD for each
//! distinct candidate map) in `auto_road_runs` rounds, both spread evenly over the rounds.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use gradcam_serve::config::Config;
use gradcam_serve::engine::{self, Engine};
use gradcam_serve::faithfulness::Score;
use gradcam_serve::options::{Defaults, ExplainOptions, Options};
use gradcam_serve::preprocess::ModelInput;

use crate::{input_224, ms_since, shipped_engine, summarise};

/// What one column runs.
enum Work {
    Prediction,
    /// An explanation with these options (scores, method).
    Explain(Box<Options>),
}

struct Column {
    /// The name in the JSON: `prediction`, `gradcam`, a score's name, `auto`, `auto_road`.
    name: String,
    work: Work,
    /// Rounds it runs in.
    runs: usize,
    whole: Vec<f64>,
    /// `Scored::scores_ms` of each run (the scores, and auto's ranking).
    scores: Vec<f64>,
    /// The round of each run, for ratios within a round.
    rounds: Vec<usize>,
    /// The first run's score value (scored columns) and chosen method (auto).
    value: Option<f32>,
    chosen: Option<String>,
}

/// The options a request with these `name=value` pairs would resolve to, at layer4.
fn options(engine: &Engine, pairs: &[(&str, &str)]) -> anyhow::Result<Options> {
    let mut asked = ExplainOptions::default();
    asked
        .set("layer", "layer4")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, value) in pairs {
        asked.set(name, value).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    asked
        .resolve(
            &Defaults::from_config(&Config::default()),
            &engine.description().limits(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Whether a column with `runs` runs in `rounds` rounds runs in `round`: in rounds
/// `j * rounds / runs` (rounded down) for `j` in `0..runs`, spread evenly from round 0.
fn due(round: usize, runs: usize, rounds: usize) -> bool {
    (round * runs).div_ceil(rounds) < ((round + 1) * runs).div_ceil(rounds)
}

fn run_column(engine: &Engine, input: &ModelInput, column: &mut Column) -> anyhow::Result<()> {
    let t = Instant::now();
    match &column.work {
        Work::Prediction => {
            std::hint::black_box(engine.predict(&[input])?);
            column.whole.push(ms_since(t));
        }
        Work::Explain(options) => {
            let scored =
                engine::run_network(engine, input, &options.cam, &options.scores, &|| false)?;
            column.whole.push(ms_since(t));
            column.scores.push(scored.scores_ms);
            if column.value.is_none() {
                column.value = scored.scores.first().and_then(|s| s.first()).map(|s| s.1);
            }
            if scored.candidates.is_some() && column.chosen.is_none() {
                column.chosen = Some(scored.raw.method.name().to_string());
            }
            std::hint::black_box(scored);
        }
    }
    Ok(())
}

pub fn scores_bench(
    weights: &Path,
    image: &Path,
    runs: usize,
    slow_runs: usize,
    auto_road_runs: usize,
    threads: usize,
) -> anyhow::Result<Value> {
    let input = &input_224(image)?;
    let engine = shipped_engine(weights, threads)?;
    let column = |name: &str, work: Work, runs: usize| Column {
        name: name.into(),
        work,
        runs,
        whole: Vec::with_capacity(runs),
        scores: Vec::with_capacity(runs),
        rounds: Vec::with_capacity(runs),
        value: None,
        chosen: None,
    };
    let explain = |pairs: &[(&str, &str)]| -> anyhow::Result<Work> {
        Ok(Work::Explain(Box::new(options(&engine, pairs)?)))
    };
    let mut columns = vec![
        column("prediction", Work::Prediction, runs),
        column("gradcam", explain(&[("method", "gradcam")])?, runs),
    ];
    for score in Score::ALL {
        let slow = matches!(
            score,
            Score::Road | Score::RoadMorf | Score::RoadLerf | Score::Arcc
        );
        columns.push(column(
            score.name(),
            explain(&[("method", "gradcam"), ("scores", score.name())])?,
            if slow { slow_runs } else { runs },
        ));
    }
    columns.push(column("auto", explain(&[("method", "auto")])?, runs));
    columns.push(column(
        "auto_road",
        explain(&[("method", "auto"), ("auto_score", "road")])?,
        auto_road_runs,
    ));
    let rounds = columns.iter().map(|c| c.runs).max().unwrap_or(0);
    eprintln!(
        "scores: {} libtorch threads, {rounds} rounds: prediction, Grad-CAM, each score, \
         method=auto ({runs} runs each; ROAD and ARCC {slow_runs}, auto with auto_score=road \
         {auto_road_runs})",
        tch::get_num_threads(),
    );

    // Warm-up, unrecorded: two runs of the cheap columns, one of the others.
    for c in &mut columns {
        let warm = if c.runs >= runs { 2 } else { 1 };
        for _ in 0..warm {
            run_column(&engine, input, c)?;
        }
        c.whole.clear();
        c.scores.clear();
    }
    let n = columns.len();
    for round in 0..rounds {
        for step in 0..n {
            let i = (round + step) % n;
            let c = &mut columns[i];
            if c.whole.len() < c.runs && due(round, c.runs, rounds) {
                run_column(&engine, input, c)?;
                c.rounds.push(round);
            }
        }
    }
    let prediction = summarise(&columns[0].whole).p50;
    let mut out = serde_json::Map::new();
    for c in &columns[1..] {
        let whole = summarise(&c.whole);
        let scores = summarise(&c.scores);
        eprintln!(
            "scores: {:<24} whole p50 {:8.1} ms, score p50 {:8.1} ms ({:.1} predictions), {} runs",
            c.name,
            whole.p50,
            scores.p50,
            scores.p50 / prediction,
            c.whole.len()
        );
        out.insert(
            c.name.clone(),
            json!({
                "whole_ms": whole,
                "score_ms": scores,
                "whole_each_ms": c.whole,
                "score_each_ms": c.scores,
                "rounds": c.rounds,
                "value": c.value,
                "chosen": c.chosen,
            }),
        );
    }
    let p = &columns[0];
    Ok(json!({
        "threads": tch::get_num_threads(),
        "layer": "layer4",
        "rounds": rounds,
        "runs": runs,
        "slow_runs": slow_runs,
        "auto_road_runs": auto_road_runs,
        "percentiles": gradcam_serve::faithfulness::DEFAULT_PERCENTILES,
        "prediction_ms": summarise(&p.whole),
        "prediction_each_ms": p.whole,
        "prediction_rounds": p.rounds,
        "columns": out,
    }))
}

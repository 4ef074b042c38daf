//! Benchmarks for `make bench` (driven by bench/run.py, which writes BENCHMARKS.md).
//!
//! - `assets`: the shared inputs: seeded random ResNet-50 weights as safetensors (the same
//!   file the server and the Python baseline load) and two synthetic JPEGs (224x224 and
//!   1920x1080: gradients, shapes and noise, quality 90).
//! - `engine`: in process, one thread setting: forward-only prediction (`Engine::predict`)
//!   against explanation (`Explainer::gradcam_batch`), batch-norm folding on and off, batch 1 and 4, and
//!   the whole in-process pipeline (decode, network, overlay, JSON) per image size.
//! - `engine-loop`: the engine with the shipped settings, driven over stdin: each line
//!   "BATCH RUNS" runs that many explanations of that batch size and answers one JSON line
//!   of their latencies. bench/run.py alternates short bursts of it with the figure it is
//!   compared with (PyTorch's forward, the server over HTTP), so that both sides of a
//!   target ratio see the same machine: on a shared 2-core machine the speed drifts by
//!   +-15 % within minutes.
//! - `methods`: every CAM method at layer4 against the prediction (bench/src/methods.rs).
//! - `scores`: Grad-CAM with each faithfulness score, and `method=auto`, against a plain
//!   Grad-CAM explanation and the prediction (bench/src/scores.rs).
//! - `http`: a closed-loop load generator over loopback against a running server: one
//!   keep-alive connection per simulated client, plain HTTP/1.1 over std's TcpStream, so the
//!   client costs next to nothing beside the server on the same cores.
//!
//! Every subcommand prints one JSON document on stdout; progress goes to stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use image::{codecs::jpeg::JpegEncoder, Rgb, RgbImage};
use serde::Serialize;
use serde_json::{json, Value};

mod exported;
mod methods;
mod phone;
mod scores;

use gradcam_serve::config::{Config, ModelConfig};
use gradcam_serve::engine::{self, Engine, Explainer};
use gradcam_serve::explanation::Timing;
use gradcam_serve::faithfulness::Scored;
use gradcam_serve::gradcam::{Ask, PassTimings};
use gradcam_serve::model::resnet::{self as model, Architecture, Layer};
use gradcam_serve::options::{Defaults, ExplainOptions};
use gradcam_serve::precision::Precision;
use gradcam_serve::preprocess::{DecodeLimits, InputSpec, ModelInput, ResizeMode};

/// The engine with the shipped settings on `weights`.
fn shipped_engine(weights: &Path, threads: usize) -> anyhow::Result<Engine> {
    let config = ModelConfig {
        weights: weights.to_path_buf(),
        threads,
        ..ModelConfig::default()
    };
    Ok(Engine::load(&config, None)?)
}

/// The 224x224 image file as the model's input, stretched as the server would.
fn input_224(image: &Path) -> anyhow::Result<ModelInput> {
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let spec = InputSpec::imagenet(224);
    Ok(engine::prepare(&bytes, DecodeLimits::default(), &spec, ResizeMode::Stretch)?.input)
}

/// An explanation of the top-1 class at `layer`.
fn ask(layer: Layer) -> Ask {
    Ask {
        target: None,
        layer: layer.to_string(),
    }
}

#[derive(Parser)]
#[command(name = "gradcam-bench", about = "Benchmarks behind `make bench`")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the benchmark's weights and images into a folder.
    Assets {
        #[arg(long)]
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 20_260_101)]
        seed: i64,
    },
    /// In-process latencies: prediction vs explanation, folding on/off, batches, pipeline.
    Engine {
        #[arg(long)]
        weights: PathBuf,
        /// The input-size image (224x224): no resampling on the way in.
        #[arg(long)]
        image: PathBuf,
        /// A large image for the whole-pipeline figures.
        #[arg(long)]
        large_image: Option<PathBuf>,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// libtorch intra-op threads; 0 leaves libtorch's default.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// The engine with the shipped settings, driven over stdin ("BATCH RUNS" per line,
    /// one JSON line of latencies back per line).
    EngineLoop {
        #[arg(long)]
        weights: PathBuf,
        /// The input-size image (224x224).
        #[arg(long)]
        image: PathBuf,
        /// libtorch intra-op threads; 0 leaves libtorch's default.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// The trunk's number format (model.precision).
        #[arg(long, value_enum, default_value_t = Precision::Fp32)]
        precision: Precision,
    },
    /// Phone photos in process: stage costs (wall and CPU) of a 4032x3024 JPEG with the
    /// shipped settings and as before them, the overlay encoders, the scaled decode's
    /// fidelity.
    Phone {
        #[arg(long)]
        weights: PathBuf,
        /// The phone photo (`assets` writes one).
        #[arg(long)]
        image: PathBuf,
        /// Folder of the parity images (target/parity): their case-*.png are explained
        /// from a 4032x3024 JPEG of each, decoded whole and scaled.
        #[arg(long)]
        parity_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 15)]
        runs: usize,
        /// libtorch intra-op threads; 0 leaves libtorch's default.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Every CAM method at layer4 against the prediction, in process (issue 11's table).
    Methods {
        #[arg(long)]
        weights: PathBuf,
        /// The input-size image (224x224).
        #[arg(long)]
        image: PathBuf,
        /// Rounds of the prediction and every one-pass method.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Runs of AblationCAM and of ScoreCAM.
        #[arg(long, default_value_t = 3)]
        slow_runs: usize,
        /// libtorch intra-op threads; 0 leaves libtorch's default.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Faithfulness scores at layer4: Grad-CAM with each score alone and `method=auto`,
    /// against a plain Grad-CAM explanation and the prediction, in process (issue 23).
    Scores {
        #[arg(long)]
        weights: PathBuf,
        /// The input-size image (224x224).
        #[arg(long)]
        image: PathBuf,
        /// Rounds of the prediction, Grad-CAM, the cheap scores and `method=auto`.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Runs of Grad-CAM with road, road_morf, road_lerf and arcc (ROAD's imputations).
        #[arg(long, default_value_t = 5)]
        slow_runs: usize,
        /// Runs of `method=auto` with `auto_score=road`.
        #[arg(long, default_value_t = 3)]
        auto_road_runs: usize,
        /// libtorch intra-op threads; 0 leaves libtorch's default.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// A model file's Grad-CAM explanation at its default layer against its own prediction,
    /// in process (exported TorchScript models, or the native path on the same weights).
    Exported {
        #[arg(long)]
        weights: PathBuf,
        /// The input-size image.
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// libtorch intra-op threads; 0 leaves libtorch's default.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Load generator: closed loop at each concurrency, against a running server.
    Http {
        /// Base URL, e.g. http://127.0.0.1:8080
        #[arg(long)]
        url: String,
        #[arg(long)]
        image: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        concurrency: Vec<usize>,
        /// Measured seconds per level.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Unrecorded seconds at the start of each level.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Print each level's result as a JSON line to stderr as well.
        #[arg(long)]
        verbose: bool,
        /// Each client waits this long before each request (not counted in its latency):
        /// an idle server between requests rather than a closed loop.
        #[arg(long, default_value_t = 0.0)]
        pause_ms: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Assets { out, seed } => assets(&out, seed)?,
        Command::Engine {
            weights,
            image,
            large_image,
            runs,
            warmup,
            threads,
        } => engine_bench(
            &weights,
            &image,
            large_image.as_deref(),
            runs,
            warmup,
            threads,
        )?,
        Command::EngineLoop {
            weights,
            image,
            threads,
            precision,
        } => {
            engine_loop(&weights, &image, threads, precision)?;
            return Ok(());
        }
        Command::Phone {
            weights,
            image,
            parity_dir,
            runs,
            threads,
        } => phone::phone_bench(
            &shipped_engine(&weights, threads)?,
            &image,
            parity_dir.as_deref(),
            runs,
        )?,
        Command::Methods {
            weights,
            image,
            runs,
            slow_runs,
            threads,
        } => methods::methods_bench(&weights, &image, runs, slow_runs, threads)?,
        Command::Scores {
            weights,
            image,
            runs,
            slow_runs,
            auto_road_runs,
            threads,
        } => scores::scores_bench(&weights, &image, runs, slow_runs, auto_road_runs, threads)?,
        Command::Exported {
            weights,
            image,
            runs,
            threads,
        } => exported::exported_bench(&weights, &image, runs, threads)?,
        Command::Http {
            url,
            image,
            concurrency,
            duration,
            warmup,
            verbose,
            pause_ms,
        } => http_bench(
            &url,
            &image,
            &concurrency,
            duration,
            warmup,
            verbose,
            Duration::from_secs_f64(pause_ms / 1e3),
        )?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Statistics

#[derive(Serialize, Clone, Copy, Default)]
struct Summary {
    n: usize,
    mean: f64,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Percentile with linear interpolation between order statistics (NumPy's default, which
/// the Python baseline uses too).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn summarise(values: &[f64]) -> Summary {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary::default();
    }
    Summary {
        n: v.len(),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        min: v[0],
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v[v.len() - 1],
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------
// Assets

/// A deterministic picture with something for a network to look at: colour gradients,
/// filled discs and rectangles, stripes and per-pixel noise (which also keeps the JPEG
/// from compressing to nothing).
fn synthetic_image(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let (w, h) = (width as f32, height as f32);
    let mut img = RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / w, y as f32 / h);
        Rgb([
            (255.0 * u) as u8,
            (255.0 * v) as u8,
            (255.0 * (1.0 - 0.5 * (u + v))) as u8,
        ])
    });
    let scale = w.min(h);
    for i in 0..12 {
        let colour = Rgb([next() as u8, next() as u8, next() as u8]);
        let cx = (next() % width) as f32;
        let cy = (next() % height) as f32;
        let r = scale * (0.05 + (next() % 100) as f32 / 100.0 * 0.15);
        for y in (cy - r).max(0.0) as u32..((cy + r) as u32).min(height) {
            for x in (cx - r).max(0.0) as u32..((cx + r) as u32).min(width) {
                let inside = if i % 2 == 0 {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    dx * dx + dy * dy < r * r
                } else {
                    true
                };
                if inside {
                    img.put_pixel(x, y, colour);
                }
            }
        }
    }
    let period = (scale / 20.0).max(2.0);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let noise = (next() % 41) as i32 - 20;
        let band = ((x as f32 + y as f32 * 0.5) / period) as u32;
        let stripe = if band.is_multiple_of(2) && y > height / 2 {
            25
        } else {
            0
        };
        for c in p.0.iter_mut() {
            *c = (*c as i32 + noise + stripe).clamp(0, 255) as u8;
        }
    }
    img
}

fn write_jpeg(img: &RgbImage, path: &Path) -> anyhow::Result<u64> {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(img)?;
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes.len() as u64)
}

fn assets(out: &Path, seed: i64) -> anyhow::Result<Value> {
    std::fs::create_dir_all(out)?;
    let weights = out.join("resnet50-bench.safetensors");
    let architecture = Architecture::named("resnet50", 1000)?;
    let tensors = model::random_tensors(&architecture, seed as u64);
    tch::Tensor::write_safetensors(&tensors, &weights)?;
    let mut images = Vec::new();
    for (name, w, h, s) in [
        ("bench-224.jpg", 224, 224, 1u64),
        ("bench-1080p.jpg", 1920, 1080, 2),
    ] {
        let path = out.join(name);
        let bytes = write_jpeg(&synthetic_image(w, h, s), &path)?;
        images.push(json!({"path": path, "width": w, "height": h, "bytes": bytes}));
    }
    // Beside `images`, which the report reads as exactly two.
    let phone = phone::phone_photo(&out.join("bench-phone-4032x3024.jpg"))?;
    Ok(json!({"weights": weights, "seed": seed, "images": images, "phone": phone}))
}

// ---------------------------------------------------------------------------------------
// Engine, in process

fn engine_bench(
    weights: &Path,
    image: &Path,
    large_image: Option<&Path>,
    runs: usize,
    warmup: usize,
    threads: usize,
) -> anyhow::Result<Value> {
    let limits = DecodeLimits::default();
    let input_size = 224;
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let spec = InputSpec::imagenet(input_size);
    let prepared = engine::prepare(&bytes, limits, &spec, ResizeMode::Stretch)?;
    let input = &prepared.input;
    let layer4 = ask(Layer::LAST);
    let mut configs = Vec::new();
    // Folding off, folding on with plain weights, then the default (folded, oneDNN weights):
    // the default's figures come last, when allocator and caches are as warm as they get.
    for (fold, onednn) in [(false, false), (true, false), (true, true)] {
        let config = ModelConfig {
            weights: weights.to_path_buf(),
            input_size: Some(input_size),
            fold_batch_norm: fold,
            onednn_weights: onednn,
            threads,
            ..ModelConfig::default()
        };
        let engine = Engine::load(&config, None)?;
        eprintln!(
            "engine: fold_batch_norm={fold}, onednn_weights={onednn}, {} libtorch threads, {runs} runs",
            tch::get_num_threads()
        );
        for _ in 0..warmup {
            engine.predict(&[input])?;
            engine.gradcam_batch(&[input], std::slice::from_ref(&layer4))?;
        }
        let (mut predict, mut explain, mut fwd, mut bwd) = (vec![], vec![], vec![], vec![]);
        // Alternate the order so that neither side always runs second (warmer caches).
        for i in 0..runs {
            for step in 0..2 {
                if (i + step) % 2 == 0 {
                    let t = Instant::now();
                    let p = engine.predict(&[input])?;
                    predict.push(ms_since(t));
                    std::hint::black_box(p);
                } else {
                    let t = Instant::now();
                    let (raw, passes) =
                        engine.gradcam_batch(&[input], std::slice::from_ref(&layer4))?;
                    explain.push(ms_since(t));
                    fwd.push(passes.forward_ms);
                    bwd.push(passes.backward_ms);
                    std::hint::black_box(raw);
                }
            }
        }
        // Batches of 4 (the server's default max_batch): images per second.
        let batch: Vec<_> = std::iter::repeat_n(input, 4).collect();
        let targets = vec![layer4.clone(); 4];
        engine.gradcam_batch(&batch, &targets)?;
        let batch_runs = (runs / 4).max(5);
        let mut batch4 = Vec::new();
        for _ in 0..batch_runs {
            let t = Instant::now();
            engine.gradcam_batch(&batch, &targets)?;
            batch4.push(ms_since(t));
        }
        let (p, e, b4) = (summarise(&predict), summarise(&explain), summarise(&batch4));
        configs.push(json!({
            "fold_batch_norm": fold,
            "onednn_weights": onednn,
            "predict_ms": p,
            "explain_ms": e,
            "explain_forward_ms": summarise(&fwd),
            "explain_backward_ms": summarise(&bwd),
            "ratio_p50": e.p50 / p.p50,
            "ratio_p90": e.p90 / p.p90,
            // Throughputs from the median latency: robust to the odd stall on a busy machine.
            "batch1_images_per_s": 1e3 / e.p50,
            "batch4_ms": b4,
            "batch4_images_per_s": 4e3 / b4.p50,
        }));
    }

    // The shipped settings: explanation at each stage against prediction, alternating.
    let engine = shipped_engine(weights, threads)?;
    let mut layers = Vec::new();
    for stage in 1..=4 {
        let at = ask(Layer { stage, block: None });
        eprintln!(
            "engine: explanation at {} against prediction, {runs} runs",
            at.layer
        );
        for _ in 0..warmup {
            engine.gradcam_batch(&[input], std::slice::from_ref(&at))?;
        }
        let (mut predict, mut explain, mut fwd, mut bwd) = (vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            for step in 0..2 {
                let t = Instant::now();
                if (i + step) % 2 == 0 {
                    std::hint::black_box(engine.predict(&[input])?);
                    predict.push(ms_since(t));
                } else {
                    let (raw, passes) =
                        engine.gradcam_batch(&[input], std::slice::from_ref(&at))?;
                    explain.push(ms_since(t));
                    fwd.push(passes.forward_ms);
                    bwd.push(passes.backward_ms);
                    std::hint::black_box(raw);
                }
            }
        }
        let (p, e) = (summarise(&predict), summarise(&explain));
        layers.push(json!({
            "layer": at.layer.to_string(),
            "predict_ms": p,
            "explain_ms": e,
            // The explanation's two parts: up to the logits, then the gradient and map.
            "forward_ms": summarise(&fwd),
            "backward_ms": summarise(&bwd),
            "ratio_p50": e.p50 / p.p50,
        }));
    }

    // The whole in-process pipeline with the default settings: decode + resize, network,
    // overlay + PNG, JSON with the embedded overlay.
    let model = engine.description();
    let options = ExplainOptions::default()
        .resolve(&Defaults::from_config(&Config::default()), &model.limits())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut pipeline = Vec::new();
    let mut images = vec![(image.to_path_buf(), runs.min(30))];
    if let Some(large) = large_image {
        images.push((large.to_path_buf(), (runs / 4).max(8)));
    }
    for (path, n) in images {
        let bytes = std::fs::read(&path)?;
        eprintln!("engine: pipeline on {}, {n} runs", path.display());
        let (mut decode, mut network, mut render, mut json_ms, mut total) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut size = (0, 0);
        for i in 0..n + 2 {
            let start = Instant::now();
            let prepared = engine::prepare_fitted(
                &bytes,
                limits,
                &spec,
                ResizeMode::Stretch,
                options.overlay.max_side,
            )?;
            let t = Instant::now();
            let (mut raw, _) =
                engine.gradcam_batch(&[&prepared.input], std::slice::from_ref(&layer4))?;
            let network_ms = ms_since(t);
            let (explanation, png) = engine::finish(
                &prepared.picture,
                prepared.image,
                prepared.input.region,
                &Scored::unscored(raw.remove(0).into(), PassTimings::default()),
                &options,
                model,
                Timing::default(),
            );
            let t = Instant::now();
            let body = match png {
                Some(png) => explanation.to_json_with_overlay(&png),
                None => serde_json::to_vec(&explanation)?,
            };
            let json_time = ms_since(t);
            let total_ms = ms_since(start);
            std::hint::black_box(body);
            size = (prepared.picture.width(), prepared.picture.height());
            if i >= 2 {
                decode.push(prepared.decode_ms);
                network.push(network_ms);
                render.push(explanation.timing_ms.render);
                json_ms.push(json_time);
                total.push(total_ms);
            }
        }
        pipeline.push(json!({
            "image": path,
            "width": size.0,
            "height": size.1,
            "decode_ms": summarise(&decode),
            "network_ms": summarise(&network),
            "render_ms": summarise(&render),
            "json_ms": summarise(&json_ms),
            "total_ms": summarise(&total),
        }));
    }
    Ok(json!({
        "threads": tch::get_num_threads(),
        "interop_threads": tch::get_num_interop_threads(),
        "input_size": input_size,
        "runs": runs,
        "warmup": warmup,
        "configs": configs,
        "layers": layers,
        "pipeline": pipeline,
    }))
}

fn engine_loop(
    weights: &Path,
    image: &Path,
    threads: usize,
    precision: Precision,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let spec = InputSpec::imagenet(224);
    let prepared = engine::prepare(&bytes, DecodeLimits::default(), &spec, ResizeMode::Stretch)?;
    let config = ModelConfig {
        weights: weights.to_path_buf(),
        threads,
        precision,
        ..ModelConfig::default()
    };
    let engine = Engine::load(&config, None)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", json!({"threads": tch::get_num_threads()}))?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace().map(str::parse::<usize>);
        let (Some(Ok(batch @ 1..)), Some(Ok(runs)), None) =
            (words.next(), words.next(), words.next())
        else {
            bail!("expected a line \"BATCH RUNS\", got {line:?}");
        };
        let inputs: Vec<_> = std::iter::repeat_n(&prepared.input, batch).collect();
        let asks = vec![ask(Layer::LAST); batch];
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            std::hint::black_box(engine.gradcam_batch(&inputs, &asks)?);
            ms.push(ms_since(t));
        }
        writeln!(out, "{}", json!({ "ms": ms }))?;
        out.flush()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// HTTP load generator

struct Target {
    host: String,
    addr: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let host = rest.split('/').next().unwrap_or(rest).to_string();
    if host.is_empty() {
        bail!("no host in {url}");
    }
    Ok(Target {
        addr: host.clone(),
        host,
    })
}

struct Connection {
    reader: BufReader<TcpStream>,
}

struct Response {
    status: u16,
    body: Vec<u8>,
    server_timing: Option<String>,
    close: bool,
}

impl Connection {
    fn open(target: &Target) -> std::io::Result<Self> {
        let stream = TcpStream::connect(&target.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, stream),
        })
    }

    fn send(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.reader.get_mut().write_all(request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut close, mut server_timing) = (None, false, false, None);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    "server-timing" => server_timing = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                line.clear();
                self.reader.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        } else {
            self.reader.read_to_end(&mut body)?;
            close = true;
        }
        Ok(Response {
            status,
            body,
            server_timing,
            close,
        })
    }
}

fn explain_request(target: &Target, image: &[u8]) -> Vec<u8> {
    let boundary = "gradcam-bench-7d1c0f2a9e";
    let mut body = Vec::with_capacity(image.len() + 256);
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
         filename=\"bench.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(image);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    let mut request = format!(
        "POST /explain HTTP/1.1\r\nHost: {}\r\nUser-Agent: gradcam-bench\r\n\
         Accept: application/json\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n",
        target.host,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

const STAGES: [&str; STAGE_COUNT] = Timing::STAGES;
const STAGE_COUNT: usize = Timing::STAGES.len();

/// The server's stage timings, from its Server-Timing header or else the JSON body.
fn stage_timings(response: &Response) -> Option<[f64; STAGE_COUNT]> {
    let mut out = [f64::NAN; STAGE_COUNT];
    if let Some(header) = &response.server_timing {
        for entry in header.split(',') {
            let mut parts = entry.trim().split(';');
            let name = parts.next().unwrap_or("");
            let dur = parts
                .find_map(|p| p.trim().strip_prefix("dur="))
                .and_then(|d| d.parse::<f64>().ok());
            if let (Some(i), Some(d)) = (STAGES.iter().position(|s| *s == name), dur) {
                out[i] = d;
            }
        }
        if out.iter().all(|v| v.is_finite()) {
            return Some(out);
        }
    }
    #[derive(serde::Deserialize)]
    struct Body {
        timing_ms: Timing,
    }
    let t = serde_json::from_slice::<Body>(&response.body)
        .ok()?
        .timing_ms;
    Some(t.stages().map(|(_, ms)| ms))
}

struct Sample {
    start: Instant,
    end: Instant,
    ok: bool,
    status: u16,
    stages: Option<[f64; STAGE_COUNT]>,
}

fn client_loop(
    target: &Target,
    request: &[u8],
    warmup_end: Instant,
    end: Instant,
    pause: Duration,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut conn: Option<Connection> = None;
    loop {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        let start = Instant::now();
        if start >= end {
            break;
        }
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => Connection::open(target),
        }
        .and_then(|mut c| c.send(request).map(|r| (c, r)));
        let finished = Instant::now();
        match result {
            Ok((c, response)) => {
                let ok = response.status == 200;
                // Parse only what is measured, after the clock stopped.
                let stages = if ok && start >= warmup_end {
                    stage_timings(&response)
                } else {
                    None
                };
                if !response.close {
                    conn = Some(c);
                }
                if response.status == 503 {
                    // Queue full: back off a little, as a client honouring Retry-After would.
                    std::thread::sleep(Duration::from_millis(20));
                }
                samples.push(Sample {
                    start,
                    end: finished,
                    ok,
                    status: response.status,
                    stages,
                });
            }
            Err(_) => {
                samples.push(Sample {
                    start,
                    end: finished,
                    ok: false,
                    status: 0,
                    stages: None,
                });
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    samples
}

fn http_bench(
    url: &str,
    image: &Path,
    levels: &[usize],
    duration: f64,
    warmup: f64,
    verbose: bool,
    pause: Duration,
) -> anyhow::Result<Value> {
    let target = Arc::new(parse_url(url)?);
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let request: Arc<Vec<u8>> = Arc::new(explain_request(&target, &bytes));
    // One request first: fail fast on a server that does not answer.
    let mut probe = Connection::open(&target).with_context(|| format!("connecting to {url}"))?;
    let first = probe.send(&request)?;
    if first.status != 200 {
        bail!(
            "POST /explain answered {}: {}",
            first.status,
            String::from_utf8_lossy(&first.body)
        );
    }
    let response_bytes = first.body.len();
    drop(probe);
    let mut results = Vec::new();
    for &c in levels {
        let t0 = Instant::now();
        let warmup_end = t0 + Duration::from_secs_f64(warmup);
        let end = warmup_end + Duration::from_secs_f64(duration);
        let handles: Vec<_> = (0..c)
            .map(|_| {
                let (target, request) = (target.clone(), request.clone());
                std::thread::spawn(move || client_loop(&target, &request, warmup_end, end, pause))
            })
            .collect();
        let samples: Vec<Sample> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect();
        let last_end = samples.iter().map(|s| s.end).max().unwrap_or(end);
        let measured: Vec<&Sample> = samples.iter().filter(|s| s.start >= warmup_end).collect();
        // Throughput: answers completed inside the measured window, per second of it.
        let completed = samples
            .iter()
            .filter(|s| s.ok && s.end >= warmup_end && s.end <= end)
            .count();
        let latencies: Vec<f64> = measured
            .iter()
            .filter(|s| s.ok)
            .map(|s| (s.end - s.start).as_secs_f64() * 1e3)
            .collect();
        let errors = measured.iter().filter(|s| !s.ok).count();
        let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
        for s in measured.iter().filter(|s| !s.ok) {
            *statuses.entry(s.status.to_string()).or_default() += 1;
        }
        let mut stages = serde_json::Map::new();
        for (i, name) in STAGES.iter().enumerate() {
            let v: Vec<f64> = measured
                .iter()
                .filter_map(|s| s.stages.map(|t| t[i]))
                .filter(|v| v.is_finite())
                .collect();
            stages.insert(name.to_string(), json!(summarise(&v)));
        }
        let lat = summarise(&latencies);
        let level = json!({
            "concurrency": c,
            "duration_s": duration,
            "requests": measured.len(),
            "completed_in_window": completed,
            "errors": errors,
            "error_statuses": statuses,
            "throughput_rps": completed as f64 / duration,
            "latency_ms": lat,
            "stages_ms": stages,
            "drain_s": (last_end.saturating_duration_since(end)).as_secs_f64(),
        });
        eprintln!(
            "http: {} c={c:>2}: {:6.2} req/s, p50 {:7.1} ms, p99 {:7.1} ms, {} errors",
            image.file_name().unwrap_or_default().to_string_lossy(),
            completed as f64 / duration,
            lat.p50,
            lat.p99,
            errors
        );
        if verbose {
            eprintln!("{level}");
        }
        results.push(level);
    }
    Ok(json!({
        "url": url,
        "image": image,
        "image_bytes": bytes.len(),
        "response_bytes": response_bytes,
        "warmup_s": warmup,
        "pause_ms": pause.as_secs_f64() * 1e3,
        "levels": results,
    }))
}

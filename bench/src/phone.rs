//! Phone photos (issue 14, goal 3), in process: where the time of a 4032x3024 JPEG goes,
//! stage by stage, with the shipped settings (the JPEG decoded at a DCT scale, the overlay
//! capped at `overlay_max_side`) and as before them (whole decode, full-size PNG); the
//! overlay encoders' time and size; and how far the scaled decode moves the answer.
//!
//! CPU is counted with the kernel's clocks: the stages outside the network run on this
//! thread alone (`CLOCK_THREAD_CPUTIME_ID`), the network on libtorch's threads too
//! (`CLOCK_PROCESS_CPUTIME_ID` across the call).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use image::{codecs::jpeg::JpegEncoder, imageops::FilterType, ImageEncoder, Rgb, RgbImage};
use serde_json::{json, Value};

use gradcam_serve::config::Config;
use gradcam_serve::engine::{self, Engine, Explainer, Prepared};
use gradcam_serve::explanation::Timing;
use gradcam_serve::faithfulness::Scored;
use gradcam_serve::gradcam::{Ask, PassTimings};
use gradcam_serve::options::{Defaults, ExplainOptions, Options, OverlayFormat};
use gradcam_serve::preprocess::{self, DecodeLimits, Region};
use gradcam_serve::render;

use crate::{ms_since, summarise};

#[repr(C)]
struct Timespec {
    seconds: i64,
    nanoseconds: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
}

const PROCESS_CPU: i32 = 2; // CLOCK_PROCESS_CPUTIME_ID
const THREAD_CPU: i32 = 3; // CLOCK_THREAD_CPUTIME_ID

fn cpu_ms(clock: i32) -> f64 {
    let mut t = Timespec {
        seconds: 0,
        nanoseconds: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    unsafe { clock_gettime(clock, &mut t) };
    t.seconds as f64 * 1e3 + t.nanoseconds as f64 / 1e6
}

/// The phone-sized test photo: docs/chelsea.jpg (451x300) upscaled to 4032x3024 with a
/// triangle filter, light sensor-like noise (+-2 levels) so that it compresses like a
/// photo and not like a smooth upscale, JPEG quality 90: about 1.1 MB, as a phone's.
pub fn phone_photo(path: &Path) -> anyhow::Result<Value> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/chelsea.jpg");
    let cat = image::open(&source)
        .with_context(|| format!("reading {}", source.display()))?
        .to_rgb8();
    let (w, h) = (4032, 3024);
    let big = image::imageops::resize(&cat, w, h, FilterType::Triangle);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let photo = RgbImage::from_fn(w, h, |x, y| {
        let p = big.get_pixel(x, y).0;
        Rgb(p.map(|v| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (v as i32 + ((state >> 40) % 5) as i32 - 2).clamp(0, 255) as u8
        }))
    });
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&photo)?;
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(json!({"path": path, "width": w, "height": h, "bytes": bytes.len()}))
}

/// Per-run figures of one pipeline: wall and CPU milliseconds per stage, answer bytes.
#[derive(Default)]
struct Stages {
    decode_wall: Vec<f64>,
    decode_cpu: Vec<f64>,
    network_wall: Vec<f64>,
    network_cpu: Vec<f64>,
    render_wall: Vec<f64>,
    render_cpu: Vec<f64>,
    json_wall: Vec<f64>,
    json_cpu: Vec<f64>,
    outside_cpu: Vec<f64>,
    total_wall: Vec<f64>,
    answer_bytes: usize,
    picture: (u32, u32),
    overlay: (u32, u32),
}

impl Stages {
    fn summary(&self) -> Value {
        let outside = summarise(&self.outside_cpu).p50;
        let network = summarise(&self.network_cpu).p50;
        json!({
            "decode_ms": summarise(&self.decode_wall),
            "decode_cpu_ms": summarise(&self.decode_cpu),
            "network_ms": summarise(&self.network_wall),
            "network_cpu_ms": summarise(&self.network_cpu),
            "render_ms": summarise(&self.render_wall),
            "render_cpu_ms": summarise(&self.render_cpu),
            "json_ms": summarise(&self.json_wall),
            "json_cpu_ms": summarise(&self.json_cpu),
            "outside_cpu_ms": summarise(&self.outside_cpu),
            "total_ms": summarise(&self.total_wall),
            "outside_over_network_cpu": outside / network,
            "answer_bytes": self.answer_bytes,
            "picture": [self.picture.0, self.picture.1],
            "overlay": [self.overlay.0, self.overlay.1],
        })
    }
}

/// One explanation in a row, each stage timed. `fitted`: the shipped decode (a JPEG at the
/// DCT scale the overlay and the model need); else the whole image, as before.
fn run_once(
    engine: &Engine,
    bytes: &[u8],
    options: &Options,
    fitted: bool,
    stages: &mut Stages,
) -> anyhow::Result<()> {
    let model = engine.description();
    let spec = model.input_spec();
    let limits = DecodeLimits::default();
    let (start, cpu0) = (Instant::now(), cpu_ms(THREAD_CPU));
    let prepared = if fitted {
        engine::prepare_fitted(
            bytes,
            limits,
            &spec,
            options.resize,
            options.overlay.max_side,
        )?
    } else {
        engine::prepare(bytes, limits, &spec, options.resize)?
    };
    let (decode_wall, decode_cpu) = (ms_since(start), cpu_ms(THREAD_CPU) - cpu0);

    let (t, p0) = (Instant::now(), cpu_ms(PROCESS_CPU));
    let ask = Ask {
        target: None,
        layer: "layer4".into(),
    };
    let (mut raw, _) = engine.gradcam_batch(&[&prepared.input], std::slice::from_ref(&ask))?;
    let (network_wall, network_cpu) = (ms_since(t), cpu_ms(PROCESS_CPU) - p0);

    let (t, c0) = (Instant::now(), cpu_ms(THREAD_CPU));
    let Prepared {
        picture,
        input,
        image,
        ..
    } = prepared;
    let (explanation, overlay) = engine::finish(
        &picture,
        image,
        input.region,
        &Scored::unscored(raw.remove(0).into(), PassTimings::default()),
        options,
        model,
        Timing::default(),
    );
    let (render_wall, render_cpu) = (ms_since(t), cpu_ms(THREAD_CPU) - c0);

    let (t, c0) = (Instant::now(), cpu_ms(THREAD_CPU));
    let body = match &overlay {
        Some(o) => explanation.to_json_with_overlay(o),
        None => serde_json::to_vec(&explanation)?,
    };
    let (json_wall, json_cpu) = (ms_since(t), cpu_ms(THREAD_CPU) - c0);

    stages.decode_wall.push(decode_wall);
    stages.decode_cpu.push(decode_cpu);
    stages.network_wall.push(network_wall);
    stages.network_cpu.push(network_cpu);
    stages.render_wall.push(render_wall);
    stages.render_cpu.push(render_cpu);
    stages.json_wall.push(json_wall);
    stages.json_cpu.push(json_cpu);
    stages.outside_cpu.push(decode_cpu + render_cpu + json_cpu);
    stages.total_wall.push(ms_since(start));
    stages.answer_bytes = body.len();
    stages.picture = picture.dimensions();
    stages.overlay = overlay.map_or((0, 0), |o| (o.width, o.height));
    Ok(())
}

/// Best-of-`runs` thread CPU milliseconds of `f`.
fn best_cpu(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let c0 = cpu_ms(THREAD_CPU);
            f();
            cpu_ms(THREAD_CPU) - c0
        })
        .fold(f64::INFINITY, f64::min)
}

/// Each way to encode the shipped overlay (the blend at 960x720): time and size.
fn encoders(picture: &RgbImage, map: &[f32], options: &Options) -> Vec<Value> {
    let (w, h) = render::fitted_size(picture.width(), picture.height(), options.overlay.max_side);
    let small = preprocess::resized(picture, w, h);
    let whole = Region {
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    let blend = render::overlay(&small, map, 7, 7, whole, options.overlay.alpha);
    let mut rows = Vec::new();
    let mut row = |name: &str, runs: usize, encode: &dyn Fn() -> Vec<u8>| {
        let bytes = encode().len();
        let cpu = best_cpu(runs, || {
            std::hint::black_box(encode());
        });
        eprintln!("phone: {name}: {cpu:.1} ms, {bytes} bytes");
        rows.push(json!({"encoder": name, "cpu_ms_best": cpu, "bytes": bytes}));
    };
    use image::codecs::png::{CompressionType, FilterType as Png, PngEncoder};
    let png = |compression: CompressionType, filter: Png| {
        let mut out = Vec::new();
        PngEncoder::new_with_quality(&mut out, compression, filter)
            .write_image(blend.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .expect("in memory");
        out
    };
    row("png fast, Sub filter (shipped)", 9, &|| {
        render::encode(&blend, OverlayFormat::Png)
    });
    row("png fast, Up filter", 9, &|| {
        png(CompressionType::Fast, Png::Up)
    });
    row("png fast, Paeth filter", 9, &|| {
        png(CompressionType::Fast, Png::Paeth)
    });
    row("png fast, adaptive filter", 9, &|| {
        png(CompressionType::Fast, Png::Adaptive)
    });
    row("png fast, no filter", 9, &|| {
        png(CompressionType::Fast, Png::NoFilter)
    });
    row("png default level, Sub filter", 3, &|| {
        png(CompressionType::Default, Png::Sub)
    });
    row("jpeg q85, jpeg-encoder (shipped)", 9, &|| {
        render::encode(&blend, OverlayFormat::Jpeg)
    });
    row("jpeg q85, image crate's encoder", 5, &|| {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&blend)
            .expect("in memory");
        out
    });
    row("webp lossless (shipped)", 9, &|| {
        render::encode(&blend, OverlayFormat::Webp)
    });
    rows
}

/// How far the scaled decode moves the answer: each photo encoded as a 4032x3024 JPEG
/// (quality 90), explained from the whole decode and from the shipped, scaled one.
fn fidelity(engine: &Engine, photos: &[(String, RgbImage)]) -> anyhow::Result<Vec<Value>> {
    let model = engine.description();
    let spec = model.input_spec();
    let limits = DecodeLimits::default();
    let options = shipped_options(engine)?;
    let ask = Ask {
        target: None,
        layer: "layer4".into(),
    };
    let mut rows = Vec::new();
    for (name, photo) in photos {
        let big = image::imageops::resize(photo, 4032, 3024, FilterType::Triangle);
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&big)?;
        let whole = engine::prepare(&bytes, limits, &spec, options.resize)?;
        let scaled = engine::prepare_fitted(
            &bytes,
            limits,
            &spec,
            options.resize,
            options.overlay.max_side,
        )?;
        let (mut a, _) = engine.gradcam_batch(&[&whole.input], std::slice::from_ref(&ask))?;
        let (mut b, _) = engine.gradcam_batch(&[&scaled.input], std::slice::from_ref(&ask))?;
        let (a, b) = (a.remove(0), b.remove(0));
        let top5 = |p: &[f32]| -> Vec<usize> {
            gradcam_serve::gradcam::top_k(p, 5)
                .iter()
                .map(|&(i, _)| i)
                .collect()
        };
        let scale = a.cam.iter().copied().fold(0f32, f32::max).max(1e-12);
        let map_error = a
            .cam
            .iter()
            .zip(&b.cam)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0f32, f32::max);
        let probability_error = a
            .probabilities
            .iter()
            .zip(&b.probabilities)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let input_error = whole
            .input
            .chw
            .iter()
            .zip(&scaled.input.chw)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let row = json!({
            "photo": name,
            "top5_whole": top5(&a.probabilities),
            "top5_scaled": top5(&b.probabilities),
            "top5_equal": top5(&a.probabilities) == top5(&b.probabilities),
            "same_target": a.target == b.target,
            "map_error_relative": map_error,
            "probability_error": probability_error,
            "input_error": input_error,
            "picture": [scaled.picture.width(), scaled.picture.height()],
        });
        eprintln!("phone: fidelity {row}");
        rows.push(row);
    }
    Ok(rows)
}

fn shipped_options(engine: &Engine) -> anyhow::Result<Options> {
    ExplainOptions::default()
        .resolve(
            &Defaults::from_config(&Config::default()),
            &engine.description().limits(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The `phone` subcommand: stage costs with the shipped settings and as before them, the
/// encoders, and the scaled decode's fidelity on the parity images (`parity_dir`'s
/// `case-*.png`) and the phone photo itself.
pub fn phone_bench(
    engine: &Engine,
    photo: &Path,
    parity_dir: Option<&Path>,
    runs: usize,
) -> anyhow::Result<Value> {
    let bytes = std::fs::read(photo).with_context(|| format!("reading {}", photo.display()))?;
    let shipped = shipped_options(engine)?;
    let mut before = shipped.clone();
    // The whole image as the overlay, as before the cap.
    before.overlay.max_side = *gradcam_serve::options::OVERLAY_MAX_SIDE.end();
    let mut no_overlay = shipped.clone();
    no_overlay.overlay.kind = gradcam_serve::options::OverlayKind::Off;
    let mut heatmap = shipped.clone();
    heatmap.overlay.kind = gradcam_serve::options::OverlayKind::Heatmap;
    let mut jpeg = shipped.clone();
    jpeg.overlay.format = OverlayFormat::Jpeg;
    let mut webp = shipped.clone();
    webp.overlay.format = OverlayFormat::Webp;
    let mut variants = Vec::new();
    for (name, options, fitted, n) in [
        (
            "before: whole decode, full-size PNG",
            before,
            false,
            (runs / 3).max(3),
        ),
        ("shipped defaults", shipped.clone(), true, runs),
        ("overlay=false", no_overlay, true, runs),
        ("overlay=heatmap", heatmap, true, runs),
        ("overlay_format=jpeg", jpeg, true, runs),
        ("overlay_format=webp", webp, true, runs),
    ] {
        let mut stages = Stages::default();
        run_once(engine, &bytes, &options, fitted, &mut Stages::default())?;
        for _ in 0..n {
            run_once(engine, &bytes, &options, fitted, &mut stages)?;
        }
        let summary = stages.summary();
        eprintln!(
            "phone: {name}: total p50 {:.1} ms, outside/network CPU {:.2}, {} bytes",
            summary["total_ms"]["p50"], summary["outside_over_network_cpu"], stages.answer_bytes
        );
        variants.push(json!({"variant": name, "runs": n, "stages": summary}));
    }

    let spec = engine.description().input_spec();
    let prepared = engine::prepare_fitted(
        &bytes,
        DecodeLimits::default(),
        &spec,
        shipped.resize,
        shipped.overlay.max_side,
    )?;
    let ask = Ask {
        target: None,
        layer: "layer4".into(),
    };
    let (raw, _) = engine.gradcam_batch(&[&prepared.input], std::slice::from_ref(&ask))?;
    let picture = engine::prepare(&bytes, DecodeLimits::default(), &spec, shipped.resize)?.picture;
    let encoders = encoders(&picture, &raw[0].cam, &shipped);

    let mut photos = Vec::new();
    if let Some(dir) = parity_dir {
        let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("case-") && name.ends_with(".png") && !name.contains("overlay")
            })
            .collect();
        cases.sort();
        for case in cases {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            photos.push((name, image::open(&case)?.to_rgb8()));
        }
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/chelsea.jpg");
    photos.push(("docs/chelsea.jpg".into(), image::open(&source)?.to_rgb8()));
    let fidelity = fidelity(engine, &photos)?;

    Ok(json!({
        "photo": photo,
        "photo_bytes": bytes.len(),
        "threads": tch::get_num_threads(),
        "overlay_max_side": shipped.overlay.max_side,
        "variants": variants,
        "encoders": encoders,
        "fidelity": fidelity,
    }))
}

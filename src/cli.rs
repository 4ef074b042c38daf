//! Command line: `serve`, `explain IMAGE`, `fetch-weights`. Every setting of config.toml has
//! a flag and a `GRADCAM_*` variable here, which override the file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::engine::{self, Engine};
use crate::options::{Defaults, ExplainOptions, OverlayKind};
use crate::precision::Precision;
use crate::preprocess::{DecodeLimits, ResizeMode};
use crate::weights;

#[derive(Parser, Debug)]
#[command(
    name = "gradcam-serve",
    version,
    about = "Grad-CAM explanations of a ResNet-family image classifier's predictions: an HTTP \
             service and a CLI"
)]
pub struct Cli {
    /// Settings file. Without this flag, ./config.toml is read when it exists.
    #[arg(long, env = "GRADCAM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP service.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        defaults: ExplainArgs,
    },
    /// Explain one image file and print the answer (the same JSON as POST /explain).
    Explain {
        /// Image file (JPEG, PNG, WebP, GIF, BMP or TIFF).
        image: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        options: ExplainOptions,
        /// Write the overlay image here, in --overlay-format (the JSON then leaves it out).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the full JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
        /// Largest image accepted, in pixels.
        #[arg(long, env = "GRADCAM_MAX_PIXELS")]
        max_pixels: Option<u64>,
        /// Allow --method scorecam (a forward pass per channel of the layer: minutes on a
        /// few cores) [explain.allow_scorecam]
        #[arg(long, env = "GRADCAM_ALLOW_SCORECAM", num_args = 0..=1, default_missing_value = "true")]
        allow_scorecam: Option<bool>,
    },
    /// Load the model and print what GET /model answers: architecture, classes, labels,
    /// layers, input size, normalisation, weights digest (JSON).
    Model {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        defaults: ExplainArgs,
    },
    /// Print the OpenAPI spec of the HTTP API (as committed in openapi/openapi.json).
    Openapi,
    /// Download torchvision's official ImageNet weights of an architecture (safetensors),
    /// check their SHA-256, and write them where the config points.
    FetchWeights {
        /// Where to write them; default: the configured weights path.
        #[arg(long, env = "GRADCAM_WEIGHTS")]
        weights: Option<PathBuf>,
        /// torchvision's name of the architecture (resnet18 .. resnet152, wide_resnet50_2,
        /// wide_resnet101_2, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d).
        #[arg(long, default_value = "resnet50")]
        architecture: String,
        /// Download from here instead of the architecture's published file.
        #[arg(long)]
        url: Option<String>,
        /// Expected SHA-256 (hex); default: the digest the hub publishes for the file.
        #[arg(long)]
        sha256: Option<String>,
        /// Download even when the file is already there.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug, Default)]
pub struct ModelArgs {
    /// Safetensors weights of a torchvision ResNet-family model [config: model.weights]
    #[arg(long, env = "GRADCAM_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// The architecture the weights must be, e.g. resnet18 [model.architecture]
    #[arg(long, env = "GRADCAM_ARCHITECTURE")]
    pub architecture: Option<String>,
    /// Class names: one per line, or a JSON array of strings [model.labels]
    #[arg(long, env = "GRADCAM_LABELS")]
    pub labels: Option<PathBuf>,
    /// Use seeded random weights when the weights file is missing [model.demo_weights]
    #[arg(long, env = "GRADCAM_DEMO_WEIGHTS", num_args = 0..=1, default_missing_value = "true")]
    pub demo_weights: Option<bool>,
    /// Side of the square model input, a multiple of 32 [model.input_size]
    #[arg(long, env = "GRADCAM_INPUT_SIZE")]
    pub input_size: Option<u32>,
    /// Per-channel input mean, R,G,B [model.mean]
    #[arg(long, env = "GRADCAM_MEAN", value_parser = parse_rgb)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel input standard deviation, R,G,B [model.std]
    #[arg(long, env = "GRADCAM_STD", value_parser = parse_rgb)]
    pub std: Option<[f32; 3]>,
    /// stretch or crop [model.resize]
    #[arg(long, env = "GRADCAM_RESIZE")]
    pub resize: Option<ResizeMode>,
    /// Fold batch norm into the convolutions at load [model.fold_batch_norm]
    #[arg(long, env = "GRADCAM_FOLD_BATCH_NORM", num_args = 0..=1, default_missing_value = "true")]
    pub fold_batch_norm: Option<bool>,
    /// Keep the weights in oneDNN's layout (faster) [model.onednn_weights]
    #[arg(long, env = "GRADCAM_ONEDNN_WEIGHTS", num_args = 0..=1, default_missing_value = "true")]
    pub onednn_weights: Option<bool>,
    /// fp32, or bf16 on CPUs with AVX-512 BF16 or AMX [model.precision]
    #[arg(long, env = "GRADCAM_PRECISION")]
    pub precision: Option<Precision>,
    /// libtorch intra-op threads per worker, 0 = default [model.threads]
    #[arg(long, env = "GRADCAM_THREADS")]
    pub threads: Option<usize>,
}

#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// Listen address [server.bind]
    #[arg(long, env = "GRADCAM_BIND")]
    pub bind: Option<String>,
    /// Model worker threads [server.workers]
    #[arg(long, env = "GRADCAM_WORKERS")]
    pub workers: Option<usize>,
    /// Explanations admitted at once, queued plus running [server.queue_capacity]
    #[arg(long, env = "GRADCAM_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Most images per batch [server.max_batch]
    #[arg(long, env = "GRADCAM_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Milliseconds to wait to fill a batch, while more requests are being decoded [server.batch_wait_ms]
    #[arg(long, env = "GRADCAM_BATCH_WAIT_MS")]
    pub batch_wait_ms: Option<u64>,
    /// Largest request body in bytes [server.max_upload_bytes]
    #[arg(long, env = "GRADCAM_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<usize>,
    /// Largest image in pixels [server.max_pixels]
    #[arg(long, env = "GRADCAM_MAX_PIXELS")]
    pub max_pixels: Option<u64>,
    /// Longest a request may take, in seconds [server.request_timeout_secs]
    #[arg(long, env = "GRADCAM_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Bytes of an upload over the limit read and discarded after its 413, 0 = none
    /// [server.linger_bytes]
    #[arg(long, env = "GRADCAM_LINGER_BYTES")]
    pub linger_bytes: Option<u64>,
    /// Seconds to go on reading an upload over the limit after its 413, 0 = none
    /// [server.linger_secs]
    #[arg(long, env = "GRADCAM_LINGER_SECS")]
    pub linger_secs: Option<u64>,
    /// CORS origins, comma-separated ("*" for any) [server.cors_origins]
    #[arg(long, env = "GRADCAM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Bearer tokens, comma-separated [server.api_keys]
    #[arg(
        long,
        env = "GRADCAM_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<String>>,
    /// /metrics needs a token when api_keys is set [server.protect_metrics]
    #[arg(long, env = "GRADCAM_PROTECT_METRICS", num_args = 0..=1, default_missing_value = "true")]
    pub protect_metrics: Option<bool>,
    /// /docs and /openapi.json need a token when api_keys is set [server.protect_docs]
    #[arg(long, env = "GRADCAM_PROTECT_DOCS", num_args = 0..=1, default_missing_value = "true")]
    pub protect_docs: Option<bool>,
    /// Serve the page a person uses at GET / [server.ui]
    #[arg(long, env = "GRADCAM_UI", num_args = 0..=1, default_missing_value = "true")]
    pub ui: Option<bool>,
    /// The model's name in the KServe v1 and v2 paths; default: its architecture [server.model_name]
    #[arg(long, env = "GRADCAM_MODEL_NAME")]
    pub model_name: Option<String>,
}

#[derive(Args, Debug, Default)]
pub struct ExplainArgs {
    /// Classes listed in top_k [explain.top_k]
    #[arg(long, env = "GRADCAM_TOP_K")]
    pub top_k: Option<usize>,
    /// Heat-map opacity in the overlay, 0..1 [explain.alpha]
    #[arg(long, env = "GRADCAM_ALPHA")]
    pub alpha: Option<f32>,
    /// Layer explained when a request does not say: for a ResNet layer1..layer4 or a block
    /// (layer3.1), for an exported model one of its taps; default: the model's own
    /// [explain.layer]
    #[arg(long = "default-layer", env = "GRADCAM_LAYER")]
    pub layer: Option<String>,
    /// Longest side of the overlay image when a request does not say, 64..=16383
    /// [explain.overlay_max_side]
    #[arg(long, env = "GRADCAM_OVERLAY_MAX_SIDE")]
    pub overlay_max_side: Option<u32>,
    /// CAM method used when a request does not say: gradcam, hirescam, eigencam, ...
    /// [explain.method]
    #[arg(long = "default-method", env = "GRADCAM_METHOD")]
    pub method: Option<crate::cam::Method>,
    /// Allow method=scorecam (a forward pass per channel of the layer) [explain.allow_scorecam]
    #[arg(long, env = "GRADCAM_ALLOW_SCORECAM", num_args = 0..=1, default_missing_value = "true")]
    pub allow_scorecam: Option<bool>,
}

/// Three comma-separated numbers.
fn parse_rgb(text: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{text}`: {e}"))?;
    values
        .try_into()
        .map_err(|_| format!("`{text}`: three comma-separated numbers, R,G,B"))
}

/// Sets `$target = value` for each flag that was given.
macro_rules! override_with {
    ($args:expr, $target:expr, [$($field:ident),* $(,)?]) => {
        $( if let Some(v) = $args.$field.clone() { $target.$field = v; } )*
    };
}

impl ModelArgs {
    pub fn apply(&self, config: &mut Config) {
        let m = &mut config.model;
        override_with!(
            self,
            m,
            [
                weights,
                demo_weights,
                resize,
                fold_batch_norm,
                onednn_weights,
                precision,
                threads
            ]
        );
        if let Some(a) = &self.architecture {
            m.architecture = Some(a.clone());
        }
        if let Some(size) = self.input_size {
            m.input_size = Some(size);
        }
        if let Some(mean) = self.mean {
            m.mean = Some(mean);
        }
        if let Some(std) = self.std {
            m.std = Some(std);
        }
        if let Some(l) = &self.labels {
            m.labels = Some(l.clone());
        }
    }
}

impl ServerArgs {
    pub fn apply(&self, config: &mut Config) {
        let s = &mut config.server;
        override_with!(
            self,
            s,
            [
                bind,
                workers,
                queue_capacity,
                max_batch,
                batch_wait_ms,
                max_upload_bytes,
                max_pixels,
                request_timeout_secs,
                linger_bytes,
                linger_secs,
                cors_origins,
                api_keys,
                protect_metrics,
                protect_docs,
                ui,
            ]
        );
        if let Some(name) = &self.model_name {
            s.model_name = Some(name.clone());
        }
    }
}

impl ExplainArgs {
    pub fn apply(&self, config: &mut Config) {
        let e = &mut config.explain;
        if let Some(layer) = &self.layer {
            e.layer = Some(layer.clone());
        }
        override_with!(
            self,
            e,
            [top_k, alpha, overlay_max_side, method, allow_scorecam]
        );
    }
}

pub fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p, true)?,
        None => Config::load(std::path::Path::new("config.toml"), false)?,
    })
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(&cli.config)?;
    match cli.command {
        Command::Serve {
            model,
            server,
            defaults,
        } => {
            model.apply(&mut config);
            server.apply(&mut config);
            defaults.apply(&mut config);
            config.validate()?;
            crate::server::run(config)
        }
        Command::Explain {
            image,
            model,
            options,
            out,
            json,
            max_pixels,
            allow_scorecam,
        } => {
            model.apply(&mut config);
            if let Some(m) = max_pixels {
                config.server.max_pixels = m;
            }
            if let Some(allow) = allow_scorecam {
                config.explain.allow_scorecam = allow;
            }
            config.validate()?;
            explain_file(&config, &image, &options, out.as_deref(), json)
        }
        Command::Model { model, defaults } => {
            model.apply(&mut config);
            defaults.apply(&mut config);
            config.validate()?;
            let engine = Engine::load(&config.model, config.explain.layer.as_deref())?;
            let served = engine
                .description()
                .served(config.explain.allow_scorecam, config.explain.method);
            println!("{}", serde_json::to_string_pretty(&served)?);
            Ok(())
        }
        Command::Openapi => {
            print!("{}", crate::http::openapi_json());
            Ok(())
        }
        Command::FetchWeights {
            weights: dest,
            architecture,
            url,
            sha256,
            force,
        } => {
            crate::model::resnet::Architecture::named(&architecture, 1000)?;
            let url = url.unwrap_or_else(|| weights::official_weights_url(&architecture));
            let dest = dest.unwrap_or(config.model.weights);
            if dest.exists() && !force {
                println!(
                    "{} is already there (use --force to download again)",
                    dest.display()
                );
                return Ok(());
            }
            eprintln!("downloading {url}\n  to {}", dest.display());
            let digest = weights::fetch(&url, &dest, sha256.as_deref(), Some(&architecture))?;
            println!("wrote {} (sha256 {digest})", dest.display());
            Ok(())
        }
    }
}

fn explain_file(
    config: &Config,
    image: &std::path::Path,
    options: &ExplainOptions,
    out: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    let engine = Engine::load(&config.model, config.explain.layer.as_deref())?;
    let model = engine.description();
    let mut options = options.clone();
    options.overlay = Some(if out.is_some() || json {
        OverlayKind::Blend
    } else {
        OverlayKind::Off
    });
    let options = options
        .resolve(&Defaults::from_config(config), &model.limits())
        .map_err(|e| anyhow::anyhow!("--{}: {e}", e.name.replace('_', "-")))?;
    if model.is_demo() {
        eprintln!(
            "WARNING: no weights at {}: using seeded RANDOM demo weights; the labels below \
             mean nothing",
            config.model.weights.display()
        );
    }
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let limits = DecodeLimits {
        max_pixels: config.server.max_pixels,
    };
    let (mut explanation, png) = engine::explain_now(&engine, model, &bytes, limits, &options)
        .with_context(|| format!("{}", image.display()))?;
    match (out, png) {
        (Some(path), Some(overlay)) => std::fs::write(path, &overlay.bytes)
            .with_context(|| format!("writing {}", path.display()))?,
        (None, Some(png)) => explanation.embed_overlay(&png),
        _ => {}
    }
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &explanation)?;
        writeln!(stdout)?;
        return Ok(());
    }
    let e = &explanation;
    writeln!(
        stdout,
        "{} ({}x{})",
        image.display(),
        e.image.width,
        e.image.height
    )?;
    writeln!(stdout, "weights: {}", e.model.weights)?;
    for (rank, c) in e.top_k.iter().enumerate() {
        writeln!(
            stdout,
            "  {}. {:>3} {:<30} {:.4}",
            rank + 1,
            c.class_index,
            c.label,
            c.score
        )?;
    }
    let at = if e.model.target_layer.is_empty() {
        String::new()
    } else {
        format!(" at {}", e.model.target_layer)
    };
    writeln!(
        stdout,
        "{} map of class {} ({}){at}, {}x{} ({}):",
        e.method,
        e.target.class_index,
        e.target.label,
        e.saliency.width,
        e.saliency.height,
        if e.saliency.scaled { "scaled" } else { "raw" }
    )?;
    for row in &e.saliency.data {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:8.4}")).collect();
        writeln!(stdout, "  {}", cells.join(" "))?;
    }
    if let Some(path) = out {
        writeln!(stdout, "overlay written to {}", path.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every setting, as `section.key`: the fields of `Config`, read from its serialised
    /// form (an unset `Option` is `null`, so none is missed).
    fn settings() -> Vec<(String, String)> {
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut out = Vec::new();
        for (section, fields) in value.as_object().unwrap() {
            for key in fields.as_object().unwrap().keys() {
                out.push((section.clone(), key.clone()));
            }
        }
        out
    }

    /// (long flag, variable, help) of each argument of `serve`.
    fn serve_flags() -> Vec<(String, Option<String>, String)> {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        serve
            .get_arguments()
            .filter_map(|a| {
                let long = a.get_long()?.to_string();
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                Some((long, env, help))
            })
            .collect()
    }

    /// Each setting has a `serve` flag whose help names it (`[section.key]`), the variable
    /// `GRADCAM_KEY`, and a line (set or commented) in its section of config.toml; and no
    /// flag names a setting that does not exist. A setting added in one place only fails.
    #[test]
    fn every_setting_has_a_flag_a_variable_and_a_line_in_config_toml() {
        let flags = serve_flags();
        let toml = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"),
        )
        .unwrap();
        let sections: Vec<(&str, &str)> = toml
            .split("\n[")
            .skip(1)
            .filter_map(|part| part.split_once(']'))
            .collect();
        let settings = settings();
        assert!(settings.len() >= 30, "{settings:?}");
        for (section, key) in &settings {
            let marker = format!("{section}.{key}]");
            let flag = flags.iter().find(|(_, _, help)| help.contains(&marker));
            let Some((long, env, _)) = flag else {
                panic!("no `serve` flag says [{section}.{key}] in its help");
            };
            let variable = format!("GRADCAM_{}", key.to_uppercase());
            assert_eq!(env.as_deref(), Some(variable.as_str()), "--{long}");
            let lines = sections
                .iter()
                .find(|(name, _)| name == section)
                .map(|(_, body)| *body)
                .unwrap_or_else(|| panic!("config.toml has no [{section}]"));
            let documented = lines.lines().any(|l| {
                let l = l.trim_start_matches("# ");
                l.starts_with(&format!("{key} ="))
            });
            assert!(
                documented,
                "config.toml's [{section}] does not show `{key}`"
            );
        }
        for (long, env, help) in &flags {
            if long == "config" {
                continue;
            }
            let named = settings
                .iter()
                .any(|(s, k)| help.contains(&format!("{s}.{k}]")));
            assert!(named, "--{long} ({env:?}) names no setting: {help}");
        }
    }
}

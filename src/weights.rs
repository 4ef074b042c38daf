//! Where the native ResNet's weights come from: a safetensors file, seeded random demo
//! weights, or a download of the official torchvision weights. `model::resnet` checks them
//! tensor by tensor.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::model::resnet::{self, Architecture, ModelError, ResNet};

/// Seed of the demo weights: the same demo model on every machine.
pub const DEMO_SEED: u64 = 20_260_101;
/// How explanations name demo weights, so nobody mistakes their labels for predictions.
pub const DEMO_ID: &str = "demo-random";

/// torchvision's ImageNet weights (IMAGENET1K_V1) of `architecture` as timm republished
/// them in safetensors form, with torchvision's tensor names.
pub fn official_weights_url(architecture: &str) -> String {
    format!("https://huggingface.co/timm/{architecture}.tv_in1k/resolve/main/model.safetensors")
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights file {path}: cannot read it")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is a PyTorch pickle checkpoint (torch.save, a .pth file), which the server \
         cannot run as it is. Export the model with its target layers: `python -m \
         gradcam_export torchvision ARCH --weights {path} -o model.pt` for a torchvision \
         architecture, or gradcam_export.export(model, target_layers=[...], path=\"model.pt\") \
         in Python (docs/model-format.md); a ResNet-family state dict may instead be converted \
         to safetensors: python -c \"import torch, safetensors.torch as st; \
         sd = torch.load('{path}', map_location='cpu'); sd = sd.get('state_dict', sd); \
         st.save_file({{k: v.contiguous() for k, v in sd.items()}}, 'model.safetensors')\""
    )]
    PickleCheckpoint { path: PathBuf },
    #[error("weights file {path} is not a valid safetensors file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    // Not `source`: the message already says it, and a source would be printed again.
    #[error("weights file {path}: {error}")]
    Model { path: PathBuf, error: ModelError },
}

/// The named tensors of a weights file, and how to name them in every answer.
pub struct WeightsFile {
    pub tensors: Vec<(String, tch::Tensor)>,
    /// The SHA-256 of the file, or [`DEMO_ID`].
    pub id: String,
}

pub fn read_file(path: &Path) -> Result<WeightsFile, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 8];
    let mut file = File::open(path).map_err(io)?;
    let n = file.read(&mut magic).map_err(io)?;
    if n >= 4 && &magic[..4] == b"PK\x03\x04" {
        return Err(WeightsError::PickleCheckpoint {
            path: path.to_path_buf(),
        });
    }
    let id = sha256_file(path).map_err(io)?;
    let tensors = tch::Tensor::read_safetensors(path).map_err(|e| WeightsError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(WeightsFile { tensors, id })
}

/// A weights file built into the network, `architecture` (when given) checked.
pub fn load_file(
    path: &Path,
    architecture: Option<&str>,
) -> Result<(ResNet, String), WeightsError> {
    let file = read_file(path)?;
    let tensors = without_wrapper_prefix(file.tensors, path);
    let network =
        ResNet::from_tensors(tensors, architecture).map_err(|error| WeightsError::Model {
            path: path.to_path_buf(),
            error,
        })?;
    Ok((network, file.id))
}

/// Prefixes that training wrappers put before every tensor name: `DataParallel`'s
/// `module.`, Lightning's `model.`, detection and SSL packages' `backbone.`.
const WRAPPER_PREFIXES: [&str; 3] = ["module.", "model.", "backbone."];

/// The tensors with a wrapper prefix that every name carries taken off (several, nested,
/// as `module.backbone.`), and the prefix named in the log; otherwise as they are.
pub fn without_wrapper_prefix(
    mut tensors: Vec<(String, tch::Tensor)>,
    path: &Path,
) -> Vec<(String, tch::Tensor)> {
    let mut removed = String::new();
    while let Some(prefix) = WRAPPER_PREFIXES.iter().find(|p| {
        !tensors.is_empty()
            && tensors.iter().all(|(n, _)| n.starts_with(*p))
            && !tensors.iter().any(|(n, _)| n == "fc.weight")
    }) {
        removed.push_str(prefix);
        for (name, _) in &mut tensors {
            name.drain(..prefix.len());
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            "{}: every tensor name began with `{removed}`, a training wrapper's prefix; read \
             without it",
            path.display()
        );
    }
    tensors
}

/// Seeded random weights of `architecture` (resnet50 when not given), 1000 classes.
pub fn demo(architecture: Option<&str>) -> Result<WeightsFile, ModelError> {
    let architecture = Architecture::named(architecture.unwrap_or("resnet50"), 1000)?;
    Ok(WeightsFile {
        tensors: resnet::random_tensors(&architecture, DEMO_SEED),
        id: DEMO_ID.to_string(),
    })
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Downloads `url` to `dest` with a progress bar and checks its SHA-256: against
/// `expected_sha256` when given, else against the digest the Hugging Face hub publishes for
/// the file (its `X-Linked-Etag` header). Writes to a temporary file first, so a failed or
/// mismatched download never leaves a file where the config points.
pub fn fetch(
    url: &str,
    dest: &Path,
    expected_sha256: Option<&str>,
    architecture: Option<&str>,
) -> anyhow::Result<String> {
    use anyhow::{bail, Context};
    let response = ureq::get(url)
        .timeout(std::time::Duration::from_secs(600))
        .call()
        .with_context(|| {
            format!("could not download {url} (offline, or the host is unreachable)")
        })?;
    let published = response
        .header("x-linked-etag")
        .or_else(|| response.header("etag"))
        .map(|s| s.trim_matches('"').to_ascii_lowercase())
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let expected = match (expected_sha256, published) {
        (Some(pinned), _) => pinned.to_ascii_lowercase(),
        (None, Some(published)) => published,
        (None, None) => {
            bail!("{url} published no SHA-256 to check the download against; pass --sha256 HEX")
        }
    };
    let total = response
        .header("content-length")
        .and_then(|s| s.parse::<u64>().ok());
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let partial = dest.with_extension("partial");
    let mut out =
        File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut reader = response.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).context("download interrupted")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish();
    out.sync_all()?;
    let got = hex::encode(hasher.finalize());
    if got != expected {
        let _ = std::fs::remove_file(&partial);
        bail!("SHA-256 mismatch for {url}: expected {expected}, got {got}; nothing written");
    }
    // A file that hashes right must also be a ResNet of that kind before it replaces
    // anything.
    if let Err(e) = load_file(&partial, architecture) {
        let _ = std::fs::remove_file(&partial);
        bail!("downloaded file is not a usable network: {e}");
    }
    std::fs::rename(&partial, dest)
        .with_context(|| format!("moving the download to {}", dest.display()))?;
    Ok(got)
}

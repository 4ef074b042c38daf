//! The metadata an exported file carries (`extra/gradcam.json` in the archive, written by
//! `gradcam_export`; docs/model-format.md), read before libtorch opens the file, so that a
//! file it cannot use is refused with a reason.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

/// What `format` says in every file `gradcam_export` writes.
pub const FORMAT: &str = "gradcam-serve/torchscript";
/// The newest `format_version` this server reads.
pub const FORMAT_VERSION: u32 = 1;
/// The libtorch this server runs (from its headers, by build.rs).
pub const LIBTORCH_VERSION: &str = env!("GRADCAM_LIBTORCH_VERSION");
/// The newest TorchScript file format that libtorch reads.
pub const MAX_FILE_FORMAT: u64 = parse_u64(env!("GRADCAM_LIBTORCH_MAX_FILE_FORMAT"));

const fn parse_u64(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut value = 0;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u64;
        i += 1;
    }
    value
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Metadata {
    pub format: String,
    pub format_version: u32,
    pub name: String,
    /// torchvision's architecture name when the CLI made it.
    #[serde(default)]
    pub architecture: Option<String>,
    pub num_classes: usize,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    pub input_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub taps: Vec<Tap>,
    pub default_tap: String,
    /// The torch that wrote the file.
    pub torch_version: String,
    #[serde(default)]
    pub exporter_version: Option<String>,
    /// `fx` or `trace`.
    #[serde(default)]
    pub route: Option<String>,
}

/// A target layer chosen at export.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tap {
    /// The module's qualified name in the model (`features.8`).
    pub name: String,
    /// `none`, `vit`, `swin` or `custom`.
    pub reshape: String,
    /// `[C, h, w]` of the reshaped output for the file's input size.
    pub shape: [i64; 3],
    /// Where the channels are in the raw output (1, or -1 for tokens); None: unknown.
    #[serde(default)]
    pub channel_axis: Option<i64>,
    /// Whether the file can run only what follows this tap (`tail`).
    #[serde(default)]
    pub tail: bool,
}

/// What the archive holds besides the network.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveInfo {
    /// None: a TorchScript file without gradcam-serve's metadata.
    pub metadata: Option<Result<Metadata, String>>,
    /// The archive's file format version (`<name>/version`), when it has one.
    pub file_format: Option<u64>,
}

pub fn read_archive(path: &Path) -> Result<ArchiveInfo, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    let mut read = |name: &str| -> Result<String, String> {
        let mut text = String::new();
        archive
            .by_name(name)
            .map_err(|e| e.to_string())?
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Ok(text)
    };
    let metadata = names
        .iter()
        .find(|n| n.ends_with("/extra/gradcam.json"))
        .map(|name| read(name).and_then(|text| parse(&text)));
    let file_format = names
        .iter()
        .find(|n| n.ends_with("/version") && n.matches('/').count() == 1)
        .and_then(|name| read(name).ok())
        .and_then(|text| text.trim().parse().ok());
    Ok(ArchiveInfo {
        metadata,
        file_format,
    })
}

/// The metadata checked in itself: its format, the tap list, the labels' count.
pub fn parse(text: &str) -> Result<Metadata, String> {
    let m: Metadata = serde_json::from_str(text).map_err(|e| format!("unreadable: {e}"))?;
    if m.format != FORMAT {
        return Err(format!("format is {:?}, not {FORMAT:?}", m.format));
    }
    if m.format_version > FORMAT_VERSION {
        return Err(format!(
            "format version {} is newer than this server's ({FORMAT_VERSION}): update \
             gradcam-serve, or export with the gradcam_export that comes with it",
            m.format_version
        ));
    }
    if m.taps.is_empty() {
        return Err("it lists no taps".into());
    }
    if !m.taps.iter().any(|t| t.name == m.default_tap) {
        return Err(format!(
            "its default tap {:?} is not one of its taps",
            m.default_tap
        ));
    }
    if m.num_classes == 0 {
        return Err("it says the model has 0 classes".into());
    }
    if let Some(labels) = &m.labels {
        if labels.len() != m.num_classes {
            return Err(format!(
                "it has {} labels for {} classes",
                labels.len(),
                m.num_classes
            ));
        }
    }
    if m.input_size == 0 || m.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err("its input size or std is not usable".into());
    }
    Ok(m)
}

/// Whether version `a` (`2.14.0`) is newer than `b`, comparing the numbers in order.
pub fn newer(a: &str, b: &str) -> bool {
    let numbers = |v: &str| -> Vec<u64> {
        v.split(['.', '+', '-'])
            .map_while(|p| p.parse().ok())
            .collect()
    };
    numbers(a) > numbers(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "format": FORMAT, "format_version": 1, "name": "m", "num_classes": 2,
            "labels": ["a", "b"], "input_size": 224, "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5], "default_tap": "features.8", "torch_version": "2.13.0",
            "taps": [{"name": "features.8", "reshape": "none", "shape": [4, 7, 7],
                      "channel_axis": 1, "tail": true}]
        })
    }

    #[test]
    fn metadata_is_checked_in_itself() {
        assert!(parse(&sample().to_string()).is_ok());
        let broken = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = sample();
            f(&mut v);
            parse(&v.to_string()).unwrap_err()
        };
        assert!(broken(&|v| v["labels"] = serde_json::json!(["a"])).contains("1 labels for 2"));
        assert!(broken(&|v| v["default_tap"] = "x".into()).contains("not one of its taps"));
        assert!(broken(&|v| v["format_version"] = 9.into()).contains("newer"));
        assert!(broken(&|v| v["format"] = "other".into()).contains("format"));
        assert!(broken(&|v| v["taps"] = serde_json::json!([])).contains("no taps"));
        assert!(parse("{").unwrap_err().contains("unreadable"));
    }

    #[test]
    fn versions_compare_by_number() {
        assert!(newer("2.14.0", "2.13.0"));
        assert!(newer("2.13.1", "2.13.0"));
        assert!(newer("10.0", "9.9.9"));
        assert!(!newer("2.13.0", "2.13.0"));
        assert!(!newer("2.4.1", "2.13.0"));
        assert!(!newer("2.13.0+cu130", "2.13.0"));
    }
}

//! Class names, in the order of the classifier's outputs: a labels file (one per line, or
//! a JSON array of strings), ImageNet's 1000 (torchvision's list, shipped with the crate)
//! for a 1000-class model without one, else `class 7`-style names.

use std::path::{Path, PathBuf};

const IMAGENET: &str = include_str!("imagenet_classes.txt");

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("labels file {path}: cannot read it")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("labels file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "labels file {path} has {found} labels, but the model has {classes} classes: one \
         label per class, in the classifier's order"
    )]
    WrongCount {
        path: PathBuf,
        found: usize,
        classes: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    names: Vec<String>,
    /// Where they came from: the file, "imagenet", or "generated".
    pub source: String,
}

impl Labels {
    /// The labels for a model of `classes` outputs: from `file` when given (its count must
    /// match), else ImageNet's for 1000 classes, else generated ones.
    pub fn load(file: Option<&Path>, classes: usize) -> Result<Self, LabelsError> {
        let Some(path) = file else {
            return Ok(Self::default_for(classes));
        };
        let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let names = parse(&text).map_err(|reason| LabelsError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        if names.len() != classes {
            return Err(LabelsError::WrongCount {
                path: path.to_path_buf(),
                found: names.len(),
                classes,
            });
        }
        Ok(Labels {
            names,
            source: path.display().to_string(),
        })
    }

    /// The labels an exported model file carries.
    pub fn embedded(names: Vec<String>) -> Self {
        Labels {
            names,
            source: "model file".into(),
        }
    }

    pub fn default_for(classes: usize) -> Self {
        if classes == 1000 {
            Labels {
                names: IMAGENET.lines().map(str::to_string).collect(),
                source: "imagenet".into(),
            }
        } else {
            Labels {
                names: (0..classes).map(|i| format!("class {i}")).collect(),
                source: "generated".into(),
            }
        }
    }

    /// Whether these are made-up `class N` names (the server warns at start).
    pub fn are_generated(&self) -> bool {
        self.source == "generated"
    }

    /// The label of class `index` ("unknown" past the end, never for the model's outputs).
    pub fn get(&self, index: usize) -> &str {
        self.names.get(index).map_or("unknown", String::as_str)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A JSON array of strings, or plain text with one label per line (blank lines at the end
/// ignored, a Windows line end taken off).
fn parse(text: &str) -> Result<Vec<String>, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(trimmed)
            .map_err(|e| format!("not a JSON array of strings: {e}"));
    }
    let names: Vec<String> = trimmed
        .lines()
        .map(|l| l.trim_end_matches('\r').trim().to_string())
        .collect();
    if let Some(line) = names.iter().position(String::is_empty) {
        return Err(format!("line {} is empty: one label per line", line + 1));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_1000_imagenet_labels_in_order() {
        let l = Labels::default_for(1000);
        assert_eq!(l.len(), 1000);
        assert_eq!(l.get(0), "tench");
        assert_eq!(l.get(207), "golden retriever");
        assert_eq!(l.get(281), "tabby");
        assert_eq!(l.get(999), "toilet tissue");
        assert!(!l.are_generated());
    }

    #[test]
    fn other_class_counts_get_generated_labels() {
        let l = Labels::default_for(10);
        assert_eq!(l.names().len(), 10);
        assert_eq!(l.get(7), "class 7");
        assert!(l.are_generated());
    }

    #[test]
    fn text_and_json_files_load_and_wrong_counts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("l.txt");
        std::fs::write(&text, "normal\r\npneumonia\nfracture\n\n").unwrap();
        let l = Labels::load(Some(&text), 3).unwrap();
        assert_eq!(l.names(), ["normal", "pneumonia", "fracture"]);
        let json = dir.path().join("l.json");
        std::fs::write(&json, r#"["a", "b \"quoted\""]"#).unwrap();
        assert_eq!(Labels::load(Some(&json), 2).unwrap().get(1), "b \"quoted\"");
        let err = Labels::load(Some(&text), 10).unwrap_err().to_string();
        assert!(
            err.contains("3 labels") && err.contains("10 classes"),
            "{err}"
        );
        std::fs::write(&text, "a\n\nb\n").unwrap();
        let err = Labels::load(Some(&text), 3).unwrap_err().to_string();
        assert!(err.contains("line 2 is empty"), "{err}");
        std::fs::write(&json, "[1, 2]").unwrap();
        assert!(Labels::load(Some(&json), 2).is_err());
        assert!(Labels::load(Some(&dir.path().join("none")), 2).is_err());
    }
}

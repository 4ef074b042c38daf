//! The 1000 ImageNet class names, in the order of the classifier's outputs (torchvision's
//! list, shipped with the crate so every class index comes with its label).

use std::sync::LazyLock;

static LABELS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| include_str!("imagenet_classes.txt").lines().collect());

/// The label of class `index`, or "unknown" past the end (never for the model's outputs).
pub fn label(index: usize) -> &'static str {
    LABELS.get(index).copied().unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    #[test]
    fn there_are_1000_labels_in_imagenet_order() {
        assert_eq!(super::LABELS.len(), crate::model::NUM_CLASSES);
        assert_eq!(super::label(0), "tench");
        assert_eq!(super::label(207), "golden retriever");
        assert_eq!(super::label(281), "tabby");
        assert_eq!(super::label(999), "toilet tissue");
    }
}

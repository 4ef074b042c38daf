//! gradcam-serve: explanations (Grad-CAM and every CAM method of pytorch-grad-cam) of an
//! image classifier's predictions: a ResNet-family state dict run natively, or any model
//! exported as TorchScript by `gradcam_export`.
//!
//! Layers, from the bottom. A module uses only modules listed before it: tests/core/layers.rs
//! reads this list and fails on an import (`crate::...`) against it.
//!
//! 1. `precision`: the trunk's number format and the CPU check for bf16
//! 2. `fused`: oneDNN convolutions with their ReLU and add fused in (the C++ shim)
//! 3. `colormap`: OpenCV's JET table
//! 4. `labels`: class names
//! 5. `preprocess`: decoding, resizing, normalising an upload
//! 6. `model`: the `Network` trait, the native ResNet, exported TorchScript models
//! 7. `weights`: safetensors state dicts, demo weights, downloads
//! 8. `gradcam`: batched Grad-CAM on any network
//! 9. `cam`: every CAM method, pytorch-grad-cam's map scaling
//! 10. `faithfulness`: how far to trust a map (pytorch-grad-cam's metrics), `method=auto`
//! 11. `render`: the overlay image and its options
//! 12. `factorization`: Deep Feature Factorization's overlay, concepts and their legend
//! 13. `explanation`: the answer's shape
//! 14. `config`: the settings
//! 15. `options`: what a request may choose, checked against the model and the settings
//! 16. `engine`: the `Explainer` trait the workers call, loading a model, one explanation end to end
//! 17. `worker`: model threads behind a bounded queue
//! 18. `telemetry`: logs, and OpenTelemetry traces over OTLP when the standard variables ask
//! 19. `http`: the HTTP API
//! 20. `server`: start-up and shutdown of the service
//! 21. `cli`: the commands

pub mod cam;
pub mod cli;
pub mod colormap;
pub mod config;
pub mod engine;
pub mod explanation;
pub mod factorization;
pub mod faithfulness;
pub mod fused;
pub mod gradcam;
pub mod http;
pub mod labels;
pub mod model;
pub mod options;
pub mod precision;
pub mod preprocess;
pub mod render;
pub mod server;
pub mod telemetry;
pub mod weights;
pub mod worker;

//! gradcam-serve: Grad-CAM explanations of a ResNet-family classifier's predictions.
//!
//! Layers, from the bottom: `model` (the network, read from a state dict), `weights` and
//! `labels` (what it is loaded from), `gradcam` (the batched Grad-CAM math), `cam` (every CAM method), `preprocess` and
//! `render` (images in and out), `options` (what a request may choose), `engine` (the
//! `Explainer` trait and one explanation end to end), `worker` (model threads behind a
//! bounded queue), `server` + `http` (the HTTP API).

pub mod cam;
pub mod cli;
pub mod colormap;
pub mod config;
pub mod engine;
pub mod explanation;
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
pub mod weights;
pub mod worker;

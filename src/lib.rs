//! gradcam-serve: Grad-CAM explanations of a ResNet-50's predictions.
//!
//! Layers, from the bottom: `model` (the network), `gradcam` (the explanation math),
//! `preprocess` and `render` (images in and out), `engine` (one explanation end to end),
//! `worker` (model threads behind a bounded queue), `server` + `http` (the HTTP API).

pub mod cli;
pub mod colormap;
pub mod config;
pub mod engine;
pub mod explanation;
pub mod gradcam;
pub mod http;
pub mod labels;
pub mod model;
pub mod preprocess;
pub mod render;
pub mod server;
pub mod weights;
pub mod worker;

//! The math, the models and the image code, without HTTP: Grad-CAM and every CAM method
//! against pytorch-grad-cam (the parity modules read `make test`'s reference data, and are
//! ignored, never passed, without it), model files, precision, decoding, fuzz regressions.

#[path = "../shared/compare.rs"]
mod compare;
mod decode;
mod fuzz_regressions;
mod layers;
mod methods_parity;
mod model;
mod parity;
mod precision;
mod scores;

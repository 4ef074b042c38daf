//! The HTTP API, black-box: real server processes on port 0 (`helpers::Server`) and the
//! service in process with a held explainer the test controls (`helpers::held`), talked
//! to over HTTP as clients would: answers, errors, the queue, bad input, oversized uploads,
//! and exported models against pytorch-grad-cam.

#[path = "../shared/compare.rs"]
mod compare;
mod helpers;

mod any_model;
mod http_api;
mod oversized;
mod protocols;
mod queue;
mod robustness;
mod scores;

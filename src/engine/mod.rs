//! One explanation, end to end, in three steps that can run on different threads:
//! `prepare` (decode + resize, CPU), the network ([`Explainer`]: owned by one thread,
//! batched for plain Grad-CAM), `finish` (overlay + answer, CPU). The CLI and the benchmark
//! call them in a row ([`explain_now`]); the server runs the middle one on its model
//! workers.
//!
//! "Explain" means one thing per layer: here, an upload to its answer; `gradcam::batch`
//! and `cam::compute` make maps; `Workers::submit` queues a job; `POST /explain` is the
//! endpoint.
//!
//! The workers see the network only through the [`Explainer`] trait, so that the worker
//! pool, the queue and the HTTP layer can be tested with a stand-in that the test controls.

mod description;
mod load;

use std::time::Instant;

use image::RgbImage;
use tch::Tensor;

use crate::cam::{self, CamAsk, CamMaps, Method};
use crate::colormap;
pub use crate::engine::description::{Backend, ModelDescription};
pub use crate::engine::load::LoadError;
use crate::explanation::{
    CandidateScore, ClassScore, ConceptMap, Explanation, ImageSize, OverlayImage, Saliency, Scores,
    TargetMap, Timing,
};
use crate::factorization;
use crate::faithfulness::{self, ScoreAsk, Scored};
use crate::gradcam::{self, Ask, GradCamError, GradCamMap, PassTimings};
use crate::model::Network;
use crate::options::Options;
use crate::preprocess::{
    self, DecodeError, DecodeLimits, InputSpec, ModelInput, Region, ResizeMode,
};
use crate::render;

/// What runs the network: the real [`Engine`], or a stand-in in tests. Each model worker
/// thread owns one (libtorch tensors are not `Sync`).
pub trait Explainer: Send {
    /// Plain Grad-CAM of a batch of prepared inputs (all of one size): one map per input, in
    /// order ([`gradcam::batch`]).
    fn gradcam_batch(
        &self,
        inputs: &[&ModelInput],
        asks: &[Ask],
    ) -> Result<(Vec<GradCamMap>, PassTimings), GradCamError>;

    /// Any CAM method, several targets or several layers, for one input
    /// ([`cam::compute`]); `abandoned` says when nobody waits for the answer any more.
    fn cam(
        &self,
        _input: &ModelInput,
        ask: &CamAsk,
        _abandoned: &dyn Fn() -> bool,
    ) -> Result<(CamMaps, PassTimings), GradCamError> {
        Err(GradCamError::Unsupported(format!(
            "this explainer has only plain Grad-CAM, not {}",
            ask.method
        )))
    }

    /// [`Explainer::cam`] (or `method=auto`'s choice) with the maps' faithfulness scores
    /// ([`faithfulness::explain`]).
    fn scored(
        &self,
        _input: &ModelInput,
        ask: &CamAsk,
        _scores: &ScoreAsk,
        _abandoned: &dyn Fn() -> bool,
    ) -> Result<Scored, GradCamError> {
        Err(GradCamError::Unsupported(format!(
            "this explainer cannot score maps or choose a method ({})",
            ask.method
        )))
    }

    /// A first pass before the worker reports ready, so that the first request does not
    /// pay for libtorch's lazy set-up.
    fn warm_up(&self) {}
}

/// A decoded upload and the model input made from it.
pub struct Prepared {
    /// The picture: the image, or a JPEG decoded smaller (see `prepare_fitted`).
    pub picture: RgbImage,
    pub input: ModelInput,
    pub decode_ms: f64,
    /// The image's own size (EXIF orientation applied), whatever the picture's.
    pub image: ImageSize,
}

/// Decodes the whole image and makes the model's input.
pub fn prepare(
    bytes: &[u8],
    limits: DecodeLimits,
    spec: &InputSpec,
    resize: ResizeMode,
) -> Result<Prepared, DecodeError> {
    prepare_with(bytes, limits, spec, resize, None)
}

/// [`prepare`] for an overlay of at most `overlay_max_side` pixels: a large JPEG is decoded
/// at the smallest DCT scale that still covers that overlay and the model's input
/// ([`preprocess::decode_fitted`]), and the model's input is made from that picture.
pub fn prepare_fitted(
    bytes: &[u8],
    limits: DecodeLimits,
    spec: &InputSpec,
    resize: ResizeMode,
    overlay_max_side: u32,
) -> Result<Prepared, DecodeError> {
    let fit = preprocess::Fit::for_model(spec, overlay_max_side);
    prepare_with(bytes, limits, spec, resize, Some(fit))
}

fn prepare_with(
    bytes: &[u8],
    limits: DecodeLimits,
    spec: &InputSpec,
    resize: ResizeMode,
    fit: Option<preprocess::Fit>,
) -> Result<Prepared, DecodeError> {
    let start = Instant::now();
    let decoded = preprocess::decode_fitted(bytes, limits, fit)?;
    let input = preprocess::prepare(&decoded.picture, spec, resize);
    Ok(Prepared {
        picture: decoded.picture,
        input,
        decode_ms: start.elapsed().as_secs_f64() * 1e3,
        image: ImageSize {
            width: decoded.width,
            height: decoded.height,
        },
    })
}

/// The loaded network and what it is.
pub struct Engine {
    network: Box<dyn Network>,
    description: ModelDescription,
}

impl Engine {
    pub fn description(&self) -> &ModelDescription {
        &self.description
    }

    pub fn network(&self) -> &dyn Network {
        &*self.network
    }

    /// A plain prediction, without explanation (to compare costs).
    pub fn predict(&self, inputs: &[&ModelInput]) -> Result<Vec<f32>, GradCamError> {
        gradcam::predict(&*self.network, &batch_tensor(inputs))
    }
}

impl Explainer for Engine {
    fn gradcam_batch(
        &self,
        inputs: &[&ModelInput],
        asks: &[Ask],
    ) -> Result<(Vec<GradCamMap>, PassTimings), GradCamError> {
        gradcam::batch(&*self.network, &batch_tensor(inputs), asks)
    }

    fn cam(
        &self,
        input: &ModelInput,
        ask: &CamAsk,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<(CamMaps, PassTimings), GradCamError> {
        let image = cam::Image {
            normalised: batch_tensor(&[input]),
            pixels: &input.pixels,
        };
        cam::compute(&*self.network, &image, ask, abandoned)
    }

    fn scored(
        &self,
        input: &ModelInput,
        ask: &CamAsk,
        scores: &ScoreAsk,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<Scored, GradCamError> {
        let image = cam::Image {
            normalised: batch_tensor(&[input]),
            pixels: &input.pixels,
        };
        faithfulness::explain(&*self.network, &image, ask, scores, abandoned)
    }

    fn warm_up(&self) {
        let size = self.description.input_size;
        let blank = ModelInput {
            chw: vec![0.0; (3 * size * size) as usize],
            pixels: vec![0; (3 * size * size) as usize],
            size,
            region: preprocess::Region {
                x: 0,
                y: 0,
                width: size,
                height: size,
            },
        };
        let ask = Ask {
            target: None,
            layer: self.description.default_layer.clone(),
        };
        if let Err(e) = self.gradcam_batch(&[&blank], &[ask]) {
            tracing::error!("warm-up pass failed: {e}");
        }
    }
}

fn batch_tensor(inputs: &[&ModelInput]) -> Tensor {
    let size = inputs[0].size as i64;
    let mut data = Vec::with_capacity(inputs.len() * inputs[0].chw.len());
    for input in inputs {
        assert_eq!(input.size as i64, size, "one input size per batch");
        data.extend_from_slice(&input.chw);
    }
    Tensor::from_slice(&data).view([inputs.len() as i64, 3, size, size])
}

/// Turns the network's answer into the explanation (classes with labels, the maps as
/// rows) and, when asked for, the overlay image of the first target (at the image's size,
/// or scaled down to `options.overlay.max_side`) in `options.overlay.format`; with several
/// targets, each target's map and overlay are in `maps` too. The image comes back as bytes:
/// the JSON answer embeds it with [`Explanation::to_json_with_overlay`], the CLI and
/// `Accept: image/...` send it as it is. `image` is the uploaded image's own size, of which
/// `picture` may be a smaller copy.
pub fn finish(
    picture: &RgbImage,
    image: ImageSize,
    region: Region,
    scored: &Scored,
    options: &Options,
    model: &ModelDescription,
    mut timing: Timing,
) -> (Explanation, Option<render::EncodedOverlay>) {
    let start = Instant::now();
    let raw = &scored.raw;
    let scores_of = |i: usize| scored.scores.get(i).map(Scores::from);
    let score = |i: usize| ClassScore {
        class_index: i,
        label: model.label(i).to_string(),
        score: raw.probabilities[i],
    };
    let top = gradcam::top_k(&raw.probabilities, options.top_k.max(1));
    let draw = |m: &cam::CamMap| {
        if m.channels == 3 {
            return render::draw_deprocessed(&m.map, m.width, m.height, &options.overlay);
        }
        render::draw(
            picture,
            (image.width, image.height),
            region,
            (&m.map, m.width, m.height),
            &options.overlay,
        )
    };
    let saliency = |m: &cam::CamMap| Saliency {
        width: m.width,
        height: m.height,
        data: rows(&m.map, m.width * m.channels),
        scaled: m.scaled,
        channels: m.channels,
    };
    let first = &raw.maps[0];
    // Deep Feature Factorization: its concepts, and their picture for every target.
    let concepts = raw.concepts.as_ref().map(|f| {
        let colours = colormap::concept_colours(f.concepts.len());
        let listed: Vec<ConceptMap> = f
            .concepts
            .iter()
            .zip(colours)
            .map(|(c, [r, g, b])| ConceptMap {
                saliency: Saliency {
                    width: f.width,
                    height: f.height,
                    data: rows(&c.map, f.width),
                    scaled: true,
                    channels: 1,
                },
                // The concept's own probabilities, not the image's.
                classes: c
                    .classes
                    .iter()
                    .map(|&(i, p)| ClassScore {
                        class_index: i,
                        label: model.label(i).to_string(),
                        score: p,
                    })
                    .collect(),
                colour: format!("#{r:02x}{g:02x}{b:02x}"),
            })
            .collect();
        (f, listed)
    });
    // The concepts' picture is the same for every target: drawn once.
    let concepts_picture = concepts.as_ref().map(|(f, listed)| {
        // pytorch-grad-cam's legend lines: `label:score`, its first three names.
        let lines: Vec<Vec<String>> = listed
            .iter()
            .map(|c| {
                c.classes
                    .iter()
                    .map(|class| {
                        let names: Vec<&str> = class.label.split(',').take(3).collect();
                        format!("{}:{:.2}", names.join(","), class.score)
                    })
                    .collect()
            })
            .collect();
        factorization::draw(f, &lines, &options.overlay)
    });
    let draw = |m: &cam::CamMap| match &concepts_picture {
        Some(picture) => picture.clone(),
        None => draw(m),
    };
    let overlay = draw(first);
    let maps = (raw.maps.len() > 1).then(|| {
        raw.maps
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let encoded = if i == 0 { overlay.clone() } else { draw(m) };
                TargetMap::new(score(m.target), saliency(m), scores_of(i), encoded.as_ref())
            })
            .collect()
    });
    timing.render = start.elapsed().as_secs_f64() * 1e3;
    let info = model.info(&raw.layers.join(","));
    let explanation = Explanation {
        prediction: score(top[0].0),
        top_k: top.iter().map(|&(i, _)| score(i)).collect(),
        target: score(first.target),
        method: raw.method.to_string(),
        saliency: saliency(first),
        scores: scores_of(0),
        candidates: scored
            .candidates
            .as_ref()
            .map(|c| c.iter().map(CandidateScore::from).collect()),
        auto_score: scored
            .candidates
            .as_ref()
            .map(|_| options.scores.auto_score.to_string()),
        maps,
        concepts: concepts.map(|(_, listed)| listed),
        image,
        model: info,
        timing_ms: timing,
        overlay_image: overlay.as_ref().map(OverlayImage::from),
        overlay_png: None,
        overlay_jpeg: None,
        overlay_webp: None,
    };
    (explanation, overlay)
}

/// A row-major map as the answer's rows of `width` values each.
fn rows(map: &[f32], width: usize) -> Vec<Vec<f32>> {
    map.chunks(width.max(1)).map(<[f32]>::to_vec).collect()
}

/// Runs the network for one prepared input, on this thread: scores and `method=auto`
/// through [`Explainer::scored`], plain Grad-CAM through the batched path
/// ([`Explainer::gradcam_batch`]), anything else through [`Explainer::cam`], as the
/// workers decide ([`CamAsk::batched`]).
pub fn run_network(
    explainer: &dyn Explainer,
    input: &ModelInput,
    ask: &CamAsk,
    scores: &ScoreAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<Scored, GradCamError> {
    if !scores.scores.is_empty() || ask.method == Method::Auto {
        return explainer.scored(input, ask, scores, abandoned);
    }
    let (raw, passes): (CamMaps, PassTimings) = match ask.batched() {
        Some(one) => {
            let (mut raw, passes) = explainer.gradcam_batch(&[input], &[one])?;
            (raw.remove(0).into(), passes)
        }
        None => explainer.cam(input, ask, abandoned)?,
    };
    Ok(Scored::unscored(raw, passes))
}

/// The whole pipeline in a row on this thread, for the CLI and the benchmark: the
/// explanation (timing filled in, total included) and the overlay image when asked for.
pub fn explain_now(
    explainer: &dyn Explainer,
    model: &ModelDescription,
    bytes: &[u8],
    limits: DecodeLimits,
    options: &Options,
) -> anyhow::Result<(Explanation, Option<render::EncodedOverlay>)> {
    let started = Instant::now();
    let prepared = prepare_fitted(
        bytes,
        limits,
        &model.input_spec(),
        options.resize,
        options.overlay.max_side,
    )?;
    let scored = run_network(
        explainer,
        &prepared.input,
        &options.cam,
        &options.scores,
        &|| false,
    )?;
    let timing = Timing {
        decode: prepared.decode_ms,
        forward: scored.passes.forward_ms,
        backward: scored.passes.backward_ms,
        scores: scored.scores_ms,
        ..Timing::default()
    };
    let (mut explanation, png) = finish(
        &prepared.picture,
        prepared.image,
        prepared.input.region,
        &scored,
        options,
        model,
        timing,
    );
    explanation.timing_ms.total = started.elapsed().as_secs_f64() * 1e3;
    Ok((explanation, png))
}

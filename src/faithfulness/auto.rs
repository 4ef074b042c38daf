//! `method=auto`: pytorch-grad-cam's advice for choosing a method is "benchmark it"; this
//! does it per request. Every candidate's map comes from the same forward and backward
//! pass (`cam::one_pass_maps`), each distinct map is scored with `auto_score`, and the
//! best one is the answer.
//!
//! FEM and KPCA-CAM are one-pass methods too, but they threshold or saturate on the
//! layer's exact activations (`Method::forward_needs`), which a gradient pass need not
//! give: they would cost a second forward pass, so they are not candidates.

use super::{score_returned, Better, MapScores, ScoreAsk};
use crate::cam::{self, CamAsk, CamMaps, Image, Method};
use crate::gradcam::{GradCamError, PassTimings};
use crate::model::Network;

/// The candidates, in the order ties are broken (Grad-CAM first).
pub const AUTO_METHODS: [Method; 8] = [
    Method::GradCam,
    Method::GradCamPlusPlus,
    Method::HiResCam,
    Method::XGradCam,
    Method::GradCamElementWise,
    Method::LayerCam,
    Method::EigenCam,
    Method::EigenGradCam,
];

/// Two maps closer than this everywhere (maps in 0..=1, as pytorch-grad-cam returns them)
/// are the same map scored once: at a ResNet's last block the gradient is the same at
/// every position, so HiResCAM and XGradCAM equal Grad-CAM up to float rounding.
const SAME_MAP: f32 = 1e-5;

/// One candidate method and its `auto_score`.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub method: Method,
    pub score: f32,
    /// The earlier candidate whose map this one's equals (then it was not scored again).
    pub same_map_as: Option<Method>,
}

/// The best candidate's maps (their `method` says which it is), the pass's timings and
/// every candidate with its score, best first. With several targets a method's score is
/// the mean of its maps'; with several layers its maps are pytorch-grad-cam's multi-layer
/// ones.
pub fn auto(
    network: &dyn Network,
    image: &Image<'_>,
    ask: &CamAsk,
    scores: &ScoreAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<(CamMaps, PassTimings, Vec<Candidate>), GradCamError> {
    // The eigen methods need the system's LAPACK (`cam::lapack`).
    let lapack = cam::lapack::available().is_ok();
    let methods: Vec<Method> = AUTO_METHODS
        .into_iter()
        .filter(|m| lapack || !matches!(m, Method::EigenCam | Method::EigenGradCam))
        .collect();
    let (mut maps, passes) = cam::one_pass_maps(network, image, ask, &methods)?;
    let size = image.normalised.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    // Per method, each target's map as pytorch-grad-cam returns it.
    let returned: Vec<Vec<Vec<f32>>> = maps
        .iter()
        .map(|m| {
            m.maps
                .iter()
                .map(|t| cam::returned_map(t, width, height))
                .collect()
        })
        .collect();
    // Each method's first equal (every target's map) among the earlier ones.
    let same: Vec<Option<usize>> = (0..returned.len())
        .map(|i| {
            (0..i).find(|&j| {
                returned[i]
                    .iter()
                    .zip(&returned[j])
                    .all(|(a, b)| same_map(a, b))
            })
        })
        .collect();
    let distinct: Vec<usize> = (0..returned.len()).filter(|&i| same[i].is_none()).collect();
    let targets: Vec<usize> = maps[0].maps.iter().map(|m| m.target).collect();
    let ranked = ScoreAsk {
        scores: vec![scores.auto_score],
        ..scores.clone()
    };
    // Every distinct method's maps, all targets, scored in one go (one batch of images).
    let scored: Vec<MapScores> = score_returned(
        network,
        image,
        maps[0].logits.as_deref(),
        &distinct
            .iter()
            .flat_map(|&i| returned[i].iter().cloned())
            .collect::<Vec<_>>(),
        &distinct
            .iter()
            .flat_map(|_| targets.iter().copied())
            .collect::<Vec<_>>(),
        &distinct
            .iter()
            .flat_map(|&i| std::iter::repeat_n(methods[i], targets.len()))
            .collect::<Vec<_>>(),
        ask,
        &ranked,
        abandoned,
    )?;
    // A method's score: the mean over the targets (the one target's, usually).
    let value_of = |i: usize| {
        let first = same[i].unwrap_or(i);
        let k = distinct.iter().position(|&d| d == first).expect("scored");
        let each = &scored[k * targets.len()..(k + 1) * targets.len()];
        each.iter().map(|s| s[0].1).sum::<f32>() / targets.len() as f32
    };
    let mut candidates: Vec<Candidate> = (0..maps.len())
        .map(|i| Candidate {
            method: methods[i],
            score: value_of(i),
            same_map_as: same[i].map(|j| methods[j]),
        })
        .collect();
    // Best first; ties keep the candidates' order (a stable sort).
    let better = scores.auto_score.better();
    candidates.sort_by(|a, b| match better {
        Better::Higher => b.score.total_cmp(&a.score),
        Better::Lower => a.score.total_cmp(&b.score),
    });
    let best = methods
        .iter()
        .position(|&m| m == candidates[0].method)
        .expect("a candidate");
    Ok((maps.swap_remove(best), passes, candidates))
}

fn same_map(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= SAME_MAP)
}

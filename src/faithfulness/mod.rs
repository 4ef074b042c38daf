//! How far to trust a map: pytorch-grad-cam 1.5.7's faithfulness metrics
//! (`pytorch_grad_cam.metrics`), computed for each map of an explanation on the network
//! that made it, and `method=auto`, which scores the one-pass methods and answers with the
//! best ([`auto`]).
//!
//! Every score but `complexity` reruns the network on the image changed by the map: scaled
//! by it (the confidence metrics, `coherency`), or with the pixels it ranks highest (MoRF)
//! or lowest (LeRF) removed and filled in ([`imputation`], ROAD). The changed images of all
//! maps go through the network in batches of [`BATCH`] (the rest one by one), without
//! autograd. A score compares the target's logit (pytorch-grad-cam's
//! `ClassifierOutputTarget`) before and after.

mod auto;
pub mod imputation;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use tch::{Kind, Tensor};

pub use auto::{auto, Candidate, AUTO_METHODS};

use crate::cam::{self, CamAsk, CamMaps, Image, LegacyNormal, Method, Targets};
use crate::gradcam::{GradCamError, PassTimings};
use crate::model::Network;
use imputation::Order;

/// Images per pass through the network when scoring.
pub const BATCH: usize = 8;

/// ARCC's and this service's ROAD percentiles (pytorch-grad-cam's ROAD classes default to
/// 10, 20, ..., 90; its ARCC uses these).
pub const DEFAULT_PERCENTILES: [f64; 4] = [20.0, 40.0, 60.0, 80.0];

/// Most percentiles one request may give.
pub const MAX_PERCENTILES: usize = 9;

/// One faithfulness measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Score {
    Road,
    RoadMorf,
    RoadLerf,
    ConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    Complexity,
    Coherency,
    Arcc,
}

/// Which way a score is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Score {
    pub const ALL: [Score; 9] = [
        Score::Road,
        Score::RoadMorf,
        Score::RoadLerf,
        Score::ConfidenceChange,
        Score::DropInConfidence,
        Score::IncreaseInConfidence,
        Score::Complexity,
        Score::Coherency,
        Score::Arcc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Score::Road => "road",
            Score::RoadMorf => "road_morf",
            Score::RoadLerf => "road_lerf",
            Score::ConfidenceChange => "confidence_change",
            Score::DropInConfidence => "drop_in_confidence",
            Score::IncreaseInConfidence => "increase_in_confidence",
            Score::Complexity => "complexity",
            Score::Coherency => "coherency",
            Score::Arcc => "arcc",
        }
    }

    /// The pytorch-grad-cam class that computes it.
    pub fn reference_class(self) -> &'static str {
        match self {
            Score::Road => "ROADCombined",
            Score::RoadMorf => "ROADMostRelevantFirstAverage",
            Score::RoadLerf => "ROADLeastRelevantFirstAverage",
            Score::ConfidenceChange => "CamMultImageConfidenceChange",
            Score::DropInConfidence => "DropInConfidence",
            Score::IncreaseInConfidence => "IncreaseInConfidence",
            Score::Complexity => "Complexity",
            Score::Coherency => "Coherency",
            Score::Arcc => "ARCC",
        }
    }

    pub fn better(self) -> Better {
        match self {
            Score::RoadMorf | Score::DropInConfidence | Score::Complexity => Better::Lower,
            _ => Better::Higher,
        }
    }

    /// What it measures and its range, for the spec, `GET /model` and the README.
    pub fn meaning(self) -> &'static str {
        match self {
            Score::Road => {
                "(road_lerf - road_morf) / 2: how much more the target's logit falls when \
                 the pixels the map ranks highest are removed than when the lowest are; \
                 in logits, unbounded; higher is better"
            }
            Score::RoadMorf => {
                "the target logit's mean change when the pixels above each percentile of the \
                 map are removed and filled in from their neighbours; in logits; lower (a \
                 larger fall) is better"
            }
            Score::RoadLerf => {
                "the same with the pixels the map ranks lowest removed; in logits; higher \
                 (a smaller fall) is better"
            }
            Score::ConfidenceChange => {
                "the target logit's change when the image is multiplied by the map; in \
                 logits; higher is better"
            }
            Score::DropInConfidence => {
                "max(0, -confidence_change): how far the logit falls; lower is better"
            }
            Score::IncreaseInConfidence => {
                "1 when confidence_change is above 0, else 0; higher is better"
            }
            Score::Complexity => {
                "the map's mean absolute value, 0..=1: how much of the image it covers; \
                 lower (a simpler map) is better"
            }
            Score::Coherency => {
                "(1 + the Pearson correlation of the map with the same method's map of the \
                 image multiplied by it) / 2, 0..=1; higher is better"
            }
            Score::Arcc => {
                "the harmonic mean of coherency, 1 - complexity and ROAD (doubled, clipped \
                 to 0..=1), 0..=1; higher is better"
            }
        }
    }

    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
        names.join(", ")
    }

    /// What `GET /model` says of it.
    pub fn info(self) -> ScoreInfo {
        ScoreInfo {
            name: self.name().to_string(),
            reference: self.reference_class().to_string(),
            better: match self.better() {
                Better::Higher => "higher",
                Better::Lower => "lower",
            }
            .to_string(),
            meaning: self.meaning().to_string(),
        }
    }

    fn needs_road(self) -> bool {
        matches!(
            self,
            Score::Road | Score::RoadMorf | Score::RoadLerf | Score::Arcc
        )
    }

    fn needs_scaled_image(self) -> bool {
        matches!(
            self,
            Score::ConfidenceChange | Score::DropInConfidence | Score::IncreaseInConfidence
        )
    }

    fn needs_coherency(self) -> bool {
        matches!(self, Score::Coherency | Score::Arcc)
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Score {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Score::ALL
            .into_iter()
            .find(|score| score.name() == s.trim())
            .ok_or_else(|| format!("`{s}` is not a score; the scores are {}", Score::names()))
    }
}

impl serde::Serialize for Score {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Score {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A score a request may ask for, as `GET /model` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "road", "reference": "ROADCombined", "better": "higher",
    "meaning": "(road_lerf - road_morf) / 2: ..."}))]
pub struct ScoreInfo {
    /// The `scores` option's value.
    pub name: String,
    /// The pytorch-grad-cam 1.5.7 class (`pytorch_grad_cam.metrics`) it reproduces.
    pub reference: String,
    /// `higher` or `lower`: which way the map is more faithful.
    pub better: String,
    /// What it measures, and its range.
    pub meaning: String,
}

/// What to score, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreAsk {
    /// In the order asked, each once.
    pub scores: Vec<Score>,
    /// ROAD's percentiles, each in 1..=99.
    pub percentiles: Vec<f64>,
    /// The seed of ROAD's imputation noise (NumPy's legacy `RandomState(seed)` normal
    /// draws); None: no noise (for comparisons with pytorch-grad-cam's noise set to 0).
    pub seed: Option<u32>,
    /// What `method=auto` ranks the methods by.
    pub auto_score: Score,
}

impl Default for ScoreAsk {
    fn default() -> Self {
        ScoreAsk {
            scores: vec![],
            percentiles: DEFAULT_PERCENTILES.to_vec(),
            seed: Some(0),
            auto_score: Score::ConfidenceChange,
        }
    }
}

impl ScoreAsk {
    /// Network passes the scores of `maps` maps cost, each counted as one prediction
    /// (coherency reruns the method: `method_passes`), so that the queue can count a
    /// scored request as its passes.
    pub fn passes(&self, maps: usize, method_passes: usize) -> usize {
        maps * per_map_passes(&self.scores, self.percentiles.len(), method_passes)
    }
}

/// Forwards (images through the network) of one map's scores.
fn per_map_passes(scores: &[Score], percentiles: usize, method_passes: usize) -> usize {
    let any = |f: fn(Score) -> bool| scores.iter().any(|&s| f(s));
    let mut images = 0;
    if any(Score::needs_scaled_image) {
        images += 1;
    }
    if any(Score::needs_road) {
        images += 2 * percentiles;
    }
    // The original image's logits come from the explanation's pass (for the methods whose
    // pass has them: the others run it once more, a pass not counted here).
    let mut passes = batches(images).count();
    if any(Score::needs_coherency) {
        passes += method_passes;
    }
    passes
}

/// An explanation with its scores: what the network side answers.
pub struct Scored {
    pub raw: CamMaps,
    pub passes: PassTimings,
    /// One per map of `raw`, or none when no score was asked for.
    pub scores: Vec<MapScores>,
    /// `method=auto`: every candidate, best first.
    pub candidates: Option<Vec<Candidate>>,
    pub scores_ms: f64,
}

impl Scored {
    pub fn unscored(raw: CamMaps, passes: PassTimings) -> Self {
        Scored {
            raw,
            passes,
            scores: vec![],
            candidates: None,
            scores_ms: 0.0,
        }
    }
}

/// Explains `image` as `cam` asks (choosing the method when it is `auto`) and scores the
/// maps as `ask` asks.
pub fn explain(
    network: &dyn Network,
    image: &Image<'_>,
    cam: &CamAsk,
    ask: &ScoreAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<Scored, GradCamError> {
    let start = Instant::now();
    let (raw, passes, candidates) = if cam.method == Method::Auto {
        let (raw, passes, candidates) = auto(network, image, cam, ask, abandoned)?;
        (raw, passes, Some(candidates))
    } else {
        let (raw, passes) = cam::compute(network, image, cam, abandoned)?;
        (raw, passes, None)
    };
    let ranking_ms = if candidates.is_some() {
        start.elapsed().as_secs_f64() * 1e3 - passes.forward_ms - passes.backward_ms
    } else {
        0.0
    };
    // The chosen method's maps are scored as if it had been asked for.
    let cam = CamAsk {
        method: raw.method,
        ..cam.clone()
    };
    let (scores, scores_ms) = score_maps(network, image, &raw, &cam, ask, abandoned)?;
    Ok(Scored {
        raw,
        passes,
        scores,
        candidates,
        scores_ms: ranking_ms + scores_ms,
    })
}

/// One map's scores, in the order asked.
pub type MapScores = Vec<(Score, f32)>;

/// The scores of each map of `raw` (the explanation of `image` that `cam` asked for), and
/// how long they took.
pub fn score_maps(
    network: &dyn Network,
    image: &Image<'_>,
    raw: &CamMaps,
    cam: &CamAsk,
    ask: &ScoreAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<(Vec<MapScores>, f64), GradCamError> {
    let start = Instant::now();
    if ask.scores.is_empty() {
        return Ok((vec![], 0.0));
    }
    if let Some(m) = raw.maps.iter().find(|m| m.channels != 1) {
        return Err(GradCamError::Unsupported(format!(
            "scores rate a one-channel heat map; {}'s map has {} channels",
            raw.method, m.channels
        )));
    }
    let size = image.normalised.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let returned: Vec<Vec<f32>> = raw
        .maps
        .iter()
        .map(|m| cam::returned_map(m, width, height))
        .collect();
    let targets: Vec<usize> = raw.maps.iter().map(|m| m.target).collect();
    let methods = vec![cam.method; returned.len()];
    let scores = score_returned(
        network,
        image,
        raw.logits.as_deref(),
        &returned,
        &targets,
        &methods,
        cam,
        ask,
        abandoned,
    )?;
    Ok((scores, start.elapsed().as_secs_f64() * 1e3))
}

/// The scores of maps as pytorch-grad-cam returns them (at the input's size, in 0..=1),
/// each for its target and made by its method (with `cam`'s other settings: coherency
/// makes it again). `logits`: the image's own, when the explanation's pass has them (else
/// the image runs again with the changed ones).
#[allow(clippy::too_many_arguments)]
pub fn score_returned(
    network: &dyn Network,
    image: &Image<'_>,
    logits: Option<&[f32]>,
    maps: &[Vec<f32>],
    targets: &[usize],
    methods: &[Method],
    cam: &CamAsk,
    ask: &ScoreAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<Vec<MapScores>, GradCamError> {
    let size = image.normalised.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let wants = |f: fn(Score) -> bool| ask.scores.iter().any(|&s| f(s));
    let x = Vec::<f32>::try_from(image.normalised.contiguous().view([-1]))?;
    let channels = x.len() / (height * width);
    // The changed images, and whose they are: the original first, when a score compares
    // logits and the explanation's pass did not give them (complexity and coherency alone
    // need no forward here).
    let compares_logits = wants(Score::needs_scaled_image) || wants(Score::needs_road);
    let rerun_original = compares_logits && logits.is_none();
    let mut images: Vec<Vec<f32>> = if rerun_original {
        vec![x.clone()]
    } else {
        vec![]
    };
    let mut perturbed = Vec::with_capacity(maps.len());
    let mut normal = ask.seed.map(LegacyNormal::new);
    // ROAD's masks, and their noise drawn in one order; their images come after the others.
    let mut removals: Vec<(Vec<bool>, Option<Vec<f32>>)> = Vec::new();
    for map in maps {
        let mut index = Perturbed::default();
        if wants(Score::needs_scaled_image) {
            index.scaled = Some(images.len());
            images.push(scaled_by(&x, map, channels));
        }
        if wants(Score::needs_road) {
            // ROADCombined's order: every LeRF percentile, then every MoRF one.
            for order in [Order::LeastRelevantFirst, Order::MostRelevantFirst] {
                let mut each = Vec::with_capacity(ask.percentiles.len());
                for &p in &ask.percentiles {
                    let keep = imputation::kept(map, order, p);
                    let noise = normal
                        .as_mut()
                        .map(|n| imputation::noise_for(&keep, channels, n));
                    // Its place among the removals, made an image's place below.
                    each.push(removals.len());
                    removals.push((keep, noise));
                }
                match order {
                    Order::LeastRelevantFirst => index.lerf = each,
                    Order::MostRelevantFirst => index.morf = each,
                }
            }
        }
        perturbed.push(index);
    }
    if abandoned() {
        return Err(GradCamError::Abandoned);
    }
    let first = images.len();
    images.extend(impute_all(&x, channels, (height, width), &removals)?);
    for index in &mut perturbed {
        for i in index.lerf.iter_mut().chain(index.morf.iter_mut()) {
            *i += first;
        }
    }
    let changed = logits_in_batches(network, &images, channels, height, width, abandoned)?;
    let classes = network.num_classes();
    let logit = |image: usize, target: usize| changed[image * classes + target];

    let mut all = Vec::with_capacity(maps.len());
    for (((map, &target), &method), index) in maps.iter().zip(targets).zip(methods).zip(&perturbed)
    {
        let before = match logits {
            Some(own) => own[target],
            None if compares_logits => logit(0, target),
            None => f32::NAN,
        };
        // Each metric's `after - before`, in float32 as pytorch-grad-cam subtracts.
        let change = |i: usize| logit(i, target) - before;
        let confidence = index.scaled.map_or(f32::NAN, change);
        // `np.mean` of float32 values.
        let average = |each: &[usize]| -> f32 {
            each.iter().map(|&i| change(i)).sum::<f32>() / each.len() as f32
        };
        let (lerf, morf) = (average(&index.lerf), average(&index.morf));
        let road = (lerf - morf) / 2.0;
        let complexity = complexity(map);
        let coherency = if wants(Score::needs_coherency) {
            let cam = CamAsk {
                method,
                ..cam.clone()
            };
            coherency(network, image, map, target, &cam, abandoned)?
        } else {
            f32::NAN
        };
        let mut scores = Vec::with_capacity(ask.scores.len());
        for &score in &ask.scores {
            let value = match score {
                Score::Road => road,
                Score::RoadMorf => morf,
                Score::RoadLerf => lerf,
                Score::ConfidenceChange => confidence,
                Score::DropInConfidence => (-confidence).max(0.0),
                Score::IncreaseInConfidence => f32::from(u8::from(confidence > 0.0)),
                Score::Complexity => complexity,
                Score::Coherency => coherency,
                Score::Arcc => arcc(coherency, complexity, road),
            };
            scores.push((score, value));
        }
        all.push(scores);
    }
    Ok(all)
}

/// Where each changed image of one map is among the images scored (what was not asked
/// for is not there: its scores are not read).
#[derive(Default)]
struct Perturbed {
    scaled: Option<usize>,
    /// Per percentile.
    lerf: Vec<usize>,
    morf: Vec<usize>,
}

/// Every ROAD imputation, on as many threads as the machine has (at most one per
/// removal): each is a sparse factorization of its own (tens of milliseconds at 224 x 224),
/// and nothing else runs on this worker meanwhile.
fn impute_all(
    x: &[f32],
    channels: usize,
    size: (usize, usize),
    removals: &[(Vec<bool>, Option<Vec<f32>>)],
) -> Result<Vec<Vec<f32>>, GradCamError> {
    if removals.is_empty() {
        return Ok(vec![]);
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(removals.len());
    let per_thread = removals.len().div_ceil(threads);
    let filled: Vec<Result<Vec<f32>, imputation::ImputeError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = removals
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(keep, noise)| {
                            imputation::impute(x, channels, size, keep, noise.as_deref())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("an imputation thread does not panic"))
            .collect()
    });
    filled
        .into_iter()
        .map(|f| f.map_err(|e| GradCamError::Unsupported(e.to_string())))
        .collect()
}

/// `input_tensor * cam`: each channel times the map.
fn scaled_by(x: &[f32], map: &[f32], channels: usize) -> Vec<f32> {
    let pixels = map.len();
    (0..channels * pixels)
        .map(|i| x[i] * map[i % pixels])
        .collect()
}

/// The sizes of the passes that run `images` images: full batches of `BATCH`, then the
/// rest one at a time. A lone image takes the network's fastest path; batches of 2 to 7
/// cost more per image than either (`gradcam-bench engine-loop`, "BATCH RUNS" lines: on
/// two AVX-512 cores a batch of two took 3.7 times one image, a batch of eight 7.6 times).
fn batches(images: usize) -> impl Iterator<Item = usize> {
    std::iter::repeat_n(BATCH, images / BATCH).chain(std::iter::repeat_n(1, images % BATCH))
}

/// The logits of every image (each `channels` x `height` x `width`), in [`batches`],
/// flattened (image after image).
fn logits_in_batches(
    network: &dyn Network,
    images: &[Vec<f32>],
    channels: usize,
    height: usize,
    width: usize,
    abandoned: &dyn Fn() -> bool,
) -> Result<Vec<f32>, GradCamError> {
    let mut all = Vec::new();
    let mut start = 0;
    for len in batches(images.len()) {
        let chunk = &images[start..start + len];
        start += len;
        if abandoned() {
            return Err(GradCamError::Abandoned);
        }
        let data: Vec<f32> = chunk.iter().flatten().copied().collect();
        let batch = Tensor::from_slice(&data).view([
            chunk.len() as i64,
            channels as i64,
            height as i64,
            width as i64,
        ]);
        let logits = network.logits(&batch)?;
        all.extend(Vec::<f32>::try_from(
            logits.to_kind(Kind::Float).contiguous().view([-1]),
        )?);
    }
    Ok(all)
}

/// pytorch-grad-cam's `Complexity`: the map's L1 norm over its pixel count.
fn complexity(map: &[f32]) -> f32 {
    (map.iter().map(|v| v.abs() as f64).sum::<f64>() / map.len() as f64) as f32
}

/// pytorch-grad-cam's `Coherency`: the same method on the image multiplied by the map, and
/// `(pearson + 1) / 2` of its map with the map. (pytorch-grad-cam's needs a `BaseCAM`;
/// SobelCAM, a function of the picture, gets the picture multiplied by the map.)
fn coherency(
    network: &dyn Network,
    image: &Image<'_>,
    map: &[f32],
    target: usize,
    cam: &CamAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<f32, GradCamError> {
    let size = image.normalised.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let scale = Tensor::from_slice(map).view([1, 1, height as i64, width as i64]);
    // SobelCAM reads the picture, not the tensor: the picture times the map, truncated to
    // bytes as `np.uint8` does.
    let picture: Vec<u8> = image
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| (p as f32 * map[i / 3]) as u8)
        .collect();
    let mixed = Image {
        normalised: &image.normalised * scale,
        pixels: &picture,
    };
    let ask = CamAsk {
        targets: Targets::Classes(vec![target]),
        ..cam.clone()
    };
    let (again, _) = cam::compute(network, &mixed, &ask, abandoned)?;
    let remade = cam::returned_map(&again.maps[0], width, height);
    Ok(((pearson(&remade, map) + 1.0) / 2.0) as f32)
}

/// `batch_pearson_coherency` of one pair: sample covariance over the two sample deviations
/// (plus 1e-8).
fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        cov += dx * dy;
        va += dx * dx;
        vb += dy * dy;
    }
    let (cov, sa, sb) = (
        cov / (n - 1.0),
        (va / (n - 1.0)).sqrt(),
        (vb / (n - 1.0)).sqrt(),
    );
    cov / (sa * sb + 1e-8)
}

/// pytorch-grad-cam's `ARCC`: the harmonic mean of coherency, 1 - complexity and ROAD
/// (doubled and clipped to 0..=1), each plus 1e-8.
fn arcc(coherency: f32, complexity: f32, road: f32) -> f32 {
    let road = (road * 2.0).clamp(0.0, 1.0) as f64;
    let terms = 1.0 / (coherency as f64 + 1e-8)
        + 1.0 / ((1.0 - complexity as f64) + 1e-8)
        + 1.0 / (road + 1e-8);
    (3.0 / terms) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for s in Score::ALL {
            assert_eq!(s.name().parse::<Score>(), Ok(s));
        }
        assert!("roads".parse::<Score>().unwrap_err().contains("road_morf"));
    }

    #[test]
    fn arcc_is_a_harmonic_mean() {
        let h = arcc(0.5, 0.5, 0.25);
        assert!((h - 0.5).abs() < 1e-6, "{h}");
        // ROAD at or below 0 makes ARCC vanish.
        assert!(arcc(0.9, 0.1, -0.2) < 1e-6);
    }

    #[test]
    fn pearson_of_a_map_with_itself_is_one() {
        let a = [0.1f32, 0.5, 0.9, 0.3];
        assert!((pearson(&a, &a) - 1.0).abs() < 1e-6);
        let b: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!((pearson(&a, &b) + 1.0).abs() < 1e-6);
        // A constant map has no correlation (pytorch-grad-cam's epsilon keeps it finite).
        assert_eq!(pearson(&a, &[0.5; 4]), 0.0);
    }

    #[test]
    fn passes_count_the_images_scored() {
        let ask = ScoreAsk {
            scores: vec![Score::Complexity],
            ..ScoreAsk::default()
        };
        assert_eq!(ask.passes(1, 1), 0);
        let ask = ScoreAsk {
            scores: vec![Score::Road, Score::ConfidenceChange],
            ..ScoreAsk::default()
        };
        // 1 + 8: a batch of eight and one alone.
        assert_eq!(ask.passes(1, 1), 2);
        assert_eq!(ask.passes(3, 1), 6);
        let ask = ScoreAsk {
            scores: vec![Score::ConfidenceChange],
            ..ScoreAsk::default()
        };
        // The scaled image alone.
        assert_eq!(ask.passes(1, 1), 1);
        let ask = ScoreAsk {
            scores: vec![Score::Arcc],
            ..ScoreAsk::default()
        };
        // Eight ROAD images, one batch, and the method's two passes again (coherency).
        assert_eq!(ask.passes(1, 2), 3);
    }
}

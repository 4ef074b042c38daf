//! Every CAM method of pytorch-grad-cam 1.5.7 that works from a layer's activations (and
//! gradients, or reruns), for one image, with several targets and several layers in one
//! call, and its `eigen_smooth` and `aug_smooth` options (see `Method` for the list), on
//! any [`Network`].
//!
//! One pass serves every target: the network keeps the layers asked for (without autograd
//! before the earliest of them); each target then costs one backward pass from the
//! logits to the layers (gradient methods only: EigenCAM, FEM, AblationCAM and ScoreCAM
//! need none). AblationCAM reruns the network with the layer's output ablated (only what
//! follows the layer where the network can), ScoreCAM the whole network once per channel
//! (both in chunks, giving up when nobody waits).
//!
//! What a map is: for one layer without `aug_smooth`, the method's map at the layer's
//! resolution after the ReLU, not normalised (what pytorch-grad-cam hands to
//! `scale_cam_image`), as Grad-CAM's `saliency` always was. With several layers or
//! `aug_smooth`, the map pytorch-grad-cam returns, at the input's size, in [0, 1]: each
//! layer's map min-max scaled and resized, their mean scaled again, and with `aug_smooth`
//! the mean of that over the six augmented inputs. [`returned_map`] gives the latter for
//! any map.

mod dff;
mod fullgrad;
pub mod kernel_pca;
pub mod lapack;
mod maps;
mod method;
mod nmf;
mod perturb;
pub mod scale;
mod sess;
mod sobel;

use std::time::Instant;

use tch::{Kind, Tensor};

pub use dff::{Concept, Concepts};
pub use method::{Method, MethodInfo, MethodParams};
pub use nmf::LegacyNormal;

use crate::gradcam::{self, GradCamError, GradCamMap, PassTimings};
use crate::model::{layer_indices, Needs, Network, NetworkError, Pass};

/// Most classes one request may explain.
pub const MAX_TARGETS: usize = 10;

/// Which classes to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// The top-1 class (with `aug_smooth`, each augmented input's own top-1, as
    /// pytorch-grad-cam does without targets).
    Top1,
    /// These classes, in this order.
    Classes(Vec<usize>),
    /// These classes first (often none), then the most probable others, until there are
    /// `at_least` maps (`top_k_maps`, with or without `target`).
    TopK { listed: Vec<usize>, at_least: usize },
}

impl Targets {
    /// Each map's class: None for each image's own top-1. `probabilities`: the image's.
    fn resolve(&self, probabilities: &[f32]) -> Vec<Option<usize>> {
        match self {
            Targets::Top1 => vec![None],
            Targets::Classes(c) => c.iter().copied().map(Some).collect(),
            Targets::TopK { listed, .. } => {
                let others = gradcam::top_k(probabilities, probabilities.len())
                    .into_iter()
                    .map(|(c, _)| c)
                    .filter(|c| !listed.contains(c));
                listed
                    .iter()
                    .copied()
                    .chain(others)
                    .take(self.count())
                    .map(Some)
                    .collect()
            }
        }
    }

    /// Each map's class, the image's top-1 (the first most probable) where none was named.
    pub(crate) fn classes(&self, probabilities: &[f32]) -> Vec<usize> {
        let top1 = gradcam::top_k(probabilities, 1)[0].0;
        self.resolve(probabilities)
            .into_iter()
            .map(|t| t.unwrap_or(top1))
            .collect()
    }

    /// How many maps the answer will have.
    pub fn count(&self) -> usize {
        match self {
            Targets::Top1 => 1,
            Targets::Classes(c) => c.len(),
            Targets::TopK { listed, at_least } => listed.len().max(*at_least),
        }
    }
}

/// What to explain in one image.
#[derive(Debug, Clone, PartialEq)]
pub struct CamAsk {
    pub method: Method,
    pub targets: Targets,
    /// One or more layers (as the network names them), aggregated as pytorch-grad-cam does
    /// with several target layers.
    pub layers: Vec<String>,
    pub eigen_smooth: bool,
    pub aug_smooth: bool,
    /// What only some methods take (RandomCAM's seed, FinerCAM's comparisons, RefineCAM's
    /// base method, KPCA-CAM's kernel).
    pub params: MethodParams,
}

impl CamAsk {
    /// The same ask for the batched `gradcam::batch`, when it is plain Grad-CAM of one
    /// class (or the top-1) at one layer; None: it runs alone through [`compute`].
    pub fn batched(&self) -> Option<gradcam::Ask> {
        let target = match &self.targets {
            Targets::Top1 => None,
            Targets::Classes(c) if c.len() == 1 => Some(c[0]),
            _ => return None,
        };
        let plain = self.method == Method::GradCam
            && self.layers.len() == 1
            && !self.eigen_smooth
            && !self.aug_smooth;
        plain.then(|| gradcam::Ask {
            target,
            layer: self.layers[0].clone(),
        })
    }
}

/// One target's map.
#[derive(Debug, Clone, PartialEq)]
pub struct CamMap {
    pub target: usize,
    /// Row-major `height` x `width`.
    pub map: Vec<f32>,
    pub width: usize,
    pub height: usize,
    /// False: the raw map at the layer's resolution; true: the map pytorch-grad-cam
    /// returns, at the input's size (see the module's documentation).
    pub scaled: bool,
    /// 1, or 3 for the guided methods: then `map` is `height` x `width` x 3 (each pixel's
    /// red, green and blue gradient, as pytorch-grad-cam's `(H, W, 3)` array), at the
    /// input's size, not scaled.
    pub channels: usize,
}

/// The network's answer for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct CamMaps {
    /// Softmax over the classes (of the image itself, not of an augmented copy).
    pub probabilities: Vec<f32>,
    /// The image's own raw logits, where the pass that made the maps has them: the scores
    /// compare against them instead of running the image again.
    pub logits: Option<Vec<f32>>,
    pub method: Method,
    pub layers: Vec<String>,
    /// One per target, in order.
    pub maps: Vec<CamMap>,
    /// Deep Feature Factorization's concepts (`method=dff`); None for the other methods.
    pub concepts: Option<Concepts>,
}

impl From<GradCamMap> for CamMaps {
    fn from(raw: GradCamMap) -> Self {
        CamMaps {
            probabilities: raw.probabilities,
            logits: None,
            method: Method::GradCam,
            layers: vec![raw.layer],
            maps: vec![CamMap {
                target: raw.target,
                map: raw.cam,
                width: raw.width,
                height: raw.height,
                scaled: false,
                channels: 1,
            }],
            concepts: None,
        }
    }
}

/// The map as pytorch-grad-cam's `cam(input_tensor, targets)` returns it, at `width` x
/// `height` (the input's size): a raw map scaled, resized and scaled again; a scaled map
/// as it is.
pub fn returned_map(m: &CamMap, width: usize, height: usize) -> Vec<f32> {
    if m.scaled || m.channels > 1 {
        assert_eq!((m.width, m.height), (width, height));
        return m.map.clone();
    }
    aggregate(&[(&m.map, m.width, m.height)], width, height)
}

/// `compute_cam_per_layer` + `aggregate_multi_layers` on ReLU'd layer maps: each one
/// `scale_cam_image`d to the input size, their mean, its ReLU, scaled again.
fn aggregate(layer_maps: &[(&Vec<f32>, usize, usize)], width: usize, height: usize) -> Vec<f32> {
    let mut sum = vec![0f32; width * height];
    for &(map, w, h) in layer_maps {
        let scaled = scale::resize_bilinear(&scale::min_max_scale(map), w, h, width, height);
        for (s, v) in sum.iter_mut().zip(scaled) {
            *s += v;
        }
    }
    let n = layer_maps.len() as f32;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n).max(0.0)).collect();
    scale::min_max_scale(&mean)
}

/// RefineCAM: each layer's map as its base method returns it (scaled, at the input's
/// size), multiplied in float32 layer after layer (`np.prod`), the product scaled.
fn refined(
    per_layer: &[Vec<f32>],
    shapes: &[(usize, usize, usize)],
    width: usize,
    height: usize,
) -> Vec<f32> {
    let mut product: Option<Vec<f32>> = None;
    for (map, &(_, h, w)) in per_layer.iter().zip(shapes) {
        let returned = aggregate(&[(map, w, h)], width, height);
        product = Some(match product {
            None => returned,
            Some(p) => p.iter().zip(&returned).map(|(a, b)| a * b).collect(),
        });
    }
    scale::min_max_scale(&product.expect("at least one layer"))
}

/// ttach's default augmentations in pytorch-grad-cam, in its order: (horizontal flip,
/// multiplier) for flip in (no, yes) and multiplier in (0.9, 1, 1.1).
const AUGMENTATIONS: [(bool, f64); 6] = [
    (false, 0.9),
    (false, 1.0),
    (false, 1.1),
    (true, 0.9),
    (true, 1.0),
    (true, 1.1),
];
/// The augmentation that leaves the image as it is.
const IDENTITY: usize = 1;

/// The image to explain, as the network takes it and as it looked.
pub struct Image<'a> {
    /// `[1, 3, H, W]`, normalised.
    pub normalised: Tensor,
    /// The same before normalisation: RGB bytes, H x W, row-major (SobelCAM's input).
    pub pixels: &'a [u8],
}

/// Explains one image. `abandoned` is asked between the chunks of AblationCAM and
/// ScoreCAM: true stops the work (the caller has gone).
pub fn compute(
    network: &dyn Network,
    image: &Image<'_>,
    ask: &CamAsk,
    abandoned: &dyn Fn() -> bool,
) -> Result<(CamMaps, PassTimings), GradCamError> {
    let input = &image.normalised;
    let classes = network.num_classes();
    let wanted: Vec<usize> = match &ask.targets {
        Targets::Classes(c) | Targets::TopK { listed: c, .. } => c.clone(),
        Targets::Top1 => vec![],
    };
    if let Some(&target) = wanted.iter().find(|&&t| t >= classes) {
        return Err(GradCamError::TargetOutOfRange { target, classes });
    }
    assert!(!ask.layers.is_empty(), "at least one layer");
    let layers = layer_indices(network, &ask.layers).map_err(GradCamError::NoSuchLayer)?;
    let size = input.size();
    let (height, width) = (size[2] as usize, size[3] as usize);

    let start = Instant::now();
    let (batch, original) = if ask.aug_smooth {
        let flipped = input.flip([3]);
        let copies: Vec<Tensor> = AUGMENTATIONS
            .iter()
            .map(|&(flip, factor)| {
                let x = if flip { &flipped } else { input };
                if factor == 1.0 {
                    x.shallow_clone()
                } else {
                    x * factor
                }
            })
            .collect();
        (Tensor::cat(&copies, 0), IDENTITY)
    } else {
        (input.shallow_clone(), 0)
    };
    match ask.method {
        Method::Auto => {
            return Err(GradCamError::Unsupported(
                "method=auto chooses among the methods by their scores; it is answered by \
                 faithfulness::auto, not here"
                    .into(),
            ))
        }
        Method::FullGrad => return full_grad(network, &batch, original, ask),
        Method::SobelCam => return sobel_edges(network, input, image.pixels, ask),
        Method::Sess => return sess::enhanced(network, input, ask, abandoned),
        Method::Dff => return dff::explain(network, image, layers[0], ask),
        Method::GuidedBackprop => return guided(network, input, ask, None),
        Method::GuidedGradCam => {
            let grad_cam = CamAsk {
                method: Method::GradCam,
                ..ask.clone()
            };
            let cams = compute(network, image, &grad_cam, abandoned)?;
            return guided(network, input, ask, Some(cams));
        }
        _ => {}
    }
    let images = batch.size()[0] as usize;
    // What makes each layer's map (RefineCAM multiplies its base method's).
    let method = ask.method.per_layer(&ask.params);
    let gradients = method.uses_gradients();
    let pass = network.forward(&batch, &layers, method.forward_needs())?;
    let logits = &pass.logits;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let flat_logits = Vec::<f32>::try_from(logits.detach().contiguous().view([-1]))?;
    let probabilities = Vec::<f32>::try_from(
        logits
            .detach()
            .get(original as i64)
            .softmax(-1, Kind::Float),
    )?;
    let top1 = Vec::<i64>::try_from(logits.detach().argmax(1, false))?;
    let targets = ask.targets.resolve(&probabilities);
    let (values, shapes) = layer_maps(&pass)?;

    let mut maps = Vec::with_capacity(targets.len());
    for (j, target) in targets.iter().enumerate() {
        let chosen: Vec<usize> = (0..images)
            .map(|b| target.unwrap_or(top1[b] as usize))
            .collect();
        let grads: Vec<Vec<f32>> = if gradients {
            let score = if method == Method::FinerCam {
                finer_score(logits, &flat_logits, &chosen, &ask.params)?
            } else {
                let index =
                    Tensor::from_slice(&chosen.iter().map(|&c| c as i64).collect::<Vec<_>>())
                        .unsqueeze(1);
                logits.gather(1, &index, false).sum(Kind::Float)
            };
            let retain = j + 1 < targets.len();
            let at_layers = if method == Method::ShapleyCam {
                // ShapleyCAM's `grads - 0.5 * hvp`, in float32 as torch computes it.
                let (g, hvp) = network
                    .gradients_and_curvature(&pass, &score, retain)
                    // A model without second derivatives: the request's fault, not ours.
                    .map_err(refused)?;
                g.iter().zip(&hvp).map(|(g, h)| g - h * 0.5).collect()
            } else {
                network.gradients(&pass, &score, retain)?
            };
            at_layers
                .iter()
                .map(|g| Vec::<f32>::try_from(g.contiguous().view([-1])))
                .collect::<Result<_, _>>()?
        } else {
            vec![]
        };
        // RandomCAM: NumPy's generator seeded afresh for each map, drawn from in
        // pytorch-grad-cam's order (augmentation, then layer).
        let mut random = rand_mt::Mt::new(ask.params.seed);
        // Each image's map at each layer.
        let mut per_image: Vec<Vec<Vec<f32>>> = Vec::with_capacity(images);
        for (b, &class) in chosen.iter().enumerate() {
            let mut per_layer = Vec::with_capacity(layers.len());
            for (l, &(channels, h, w)) in shapes.iter().enumerate() {
                let n = channels * h * w;
                let range = b * n..(b + 1) * n;
                let a = &values[l][range.clone()];
                let g = grads.get(l).map(|g| &g[range]);
                let score = flat_logits[b * classes + class];
                let one = |t: &Tensor| t.get(b as i64).unsqueeze(0);
                let map = match method {
                    Method::RandomCam => {
                        let w = maps::uniform_weights(&mut random, channels);
                        if ask.eigen_smooth {
                            let w = w.iter().map(|&w| w as f32).collect();
                            maps::cam_image(&maps::Terms::Weights(w), a, channels, true)
                                .map_err(GradCamError::Unsupported)?
                        } else {
                            maps::weighted_sum_f64(&w, a)
                        }
                    }
                    Method::AblationCam => {
                        let w = perturb::ablation_weights(
                            network,
                            &one(&batch),
                            &one(&pass.raw[l]),
                            layers[l],
                            class,
                            score,
                            abandoned,
                        )?;
                        maps::cam_image(&maps::Terms::Weights(w), a, channels, ask.eigen_smooth)
                            .map_err(GradCamError::Unsupported)?
                    }
                    Method::ScoreCam => {
                        let w = perturb::score_weights(
                            network,
                            &one(&batch),
                            &one(&pass.maps[l]),
                            class,
                            abandoned,
                        )?;
                        maps::cam_image(&maps::Terms::Weights(w), a, channels, ask.eigen_smooth)
                            .map_err(GradCamError::Unsupported)?
                    }
                    method => map_from_pass(method, a, g, channels, ask)?,
                };
                per_layer.push(maps::relu(map));
            }
            per_image.push(per_layer);
        }
        let class = chosen[original];
        maps.push(if ask.method == Method::RefineCam {
            CamMap {
                target: class,
                map: refined(&per_image[original], &shapes, width, height),
                width,
                height,
                scaled: true,
                channels: 1,
            }
        } else if layers.len() == 1 && !ask.aug_smooth {
            let (_, h, w) = shapes[0];
            CamMap {
                target: class,
                map: per_image.swap_remove(original).swap_remove(0),
                width: w,
                height: h,
                scaled: false,
                channels: 1,
            }
        } else {
            let returned: Vec<Vec<f32>> = per_image
                .iter()
                .map(|per_layer| {
                    let layer_maps: Vec<_> = per_layer
                        .iter()
                        .zip(&shapes)
                        .map(|(m, &(_, h, w))| (m, w, h))
                        .collect();
                    aggregate(&layer_maps, width, height)
                })
                .collect();
            CamMap {
                target: class,
                map: deaugmented_mean(returned, ask.aug_smooth, width),
                width,
                height,
                scaled: true,
                channels: 1,
            }
        });
    }
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((
        CamMaps {
            probabilities,
            logits: Some(flat_logits[original * classes..(original + 1) * classes].to_vec()),
            method: ask.method,
            layers: ask.layers.clone(),
            maps,
            concepts: None,
        },
        PassTimings {
            forward_ms,
            backward_ms,
        },
    ))
}

/// The layer map (before its ReLU) of a method that needs only the layer's activations `a`
/// and, for the gradient methods, its gradient `g`, both `channels` x positions.
fn map_from_pass(
    method: Method,
    a: &[f32],
    g: Option<&[f32]>,
    channels: usize,
    ask: &CamAsk,
) -> Result<Vec<f32>, GradCamError> {
    Ok(match method {
        Method::EigenCam => maps::projection(a, channels).map_err(GradCamError::Unsupported)?,
        Method::Fem => maps::fem(a, channels),
        Method::KpcaCam => {
            kernel_pca::kernel_projection(a, channels, ask.params.kernel, ask.params.gamma)?
        }
        Method::GradCam if !ask.eigen_smooth => {
            gradcam::cam_from(a, g.expect("a gradient"), channels)
        }
        method => {
            let g = g.expect("a gradient");
            let terms = maps::terms(method, a, g, channels);
            // EigenGradCAM is the projection of gradient * activation, always.
            let project = ask.eigen_smooth || method == Method::EigenGradCam;
            maps::cam_image(&terms, a, channels, project).map_err(GradCamError::Unsupported)?
        }
    })
}

/// `method=auto`'s candidates: each of `methods`' maps (each made from the layers'
/// activations and gradients alone) for the targets and layers `ask` names, all from one
/// forward pass and one backward pass per target; each as [`compute`] answers for that
/// method (`aug_smooth` aside, which `auto` ignores).
pub fn one_pass_maps(
    network: &dyn Network,
    image: &Image<'_>,
    ask: &CamAsk,
    methods: &[Method],
) -> Result<(Vec<CamMaps>, PassTimings), GradCamError> {
    let input = &image.normalised;
    let classes = network.num_classes();
    if let Targets::Classes(c) | Targets::TopK { listed: c, .. } = &ask.targets {
        if let Some(&target) = c.iter().find(|&&t| t >= classes) {
            return Err(GradCamError::TargetOutOfRange { target, classes });
        }
    }
    assert!(!ask.layers.is_empty(), "at least one layer");
    let layers = layer_indices(network, &ask.layers).map_err(GradCamError::NoSuchLayer)?;
    let size = input.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let start = Instant::now();
    let pass = network.forward(input, &layers, Needs::Gradients)?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let logits = &pass.logits;
    let own_logits = Vec::<f32>::try_from(logits.detach().get(0))?;
    let probabilities = Vec::<f32>::try_from(logits.detach().get(0).softmax(-1, Kind::Float))?;
    let targets = ask.targets.classes(&probabilities);
    let (activations, shapes) = layer_maps(&pass)?;
    // Per method, per target: its map.
    let mut per_method: Vec<Vec<CamMap>> = vec![Vec::with_capacity(targets.len()); methods.len()];
    for (j, &target) in targets.iter().enumerate() {
        let score = logits.get(0).get(target as i64);
        let gradients: Vec<Vec<f32>> = network
            .gradients(&pass, &score, j + 1 < targets.len())?
            .iter()
            .map(|g| Vec::<f32>::try_from(g.contiguous().view([-1])))
            .collect::<Result<_, _>>()?;
        for (m, &method) in methods.iter().enumerate() {
            let per_layer: Vec<Vec<f32>> = activations
                .iter()
                .zip(&gradients)
                .zip(&shapes)
                .map(|((a, g), &(channels, _, _))| {
                    Ok(maps::relu(map_from_pass(
                        method,
                        a,
                        Some(g),
                        channels,
                        ask,
                    )?))
                })
                .collect::<Result<_, GradCamError>>()?;
            per_method[m].push(if layers.len() == 1 {
                let (_, h, w) = shapes[0];
                CamMap {
                    target,
                    map: per_layer.into_iter().next().expect("one layer"),
                    width: w,
                    height: h,
                    scaled: false,
                    channels: 1,
                }
            } else {
                let layer_maps: Vec<_> = per_layer
                    .iter()
                    .zip(&shapes)
                    .map(|(m, &(_, h, w))| (m, w, h))
                    .collect();
                CamMap {
                    target,
                    map: aggregate(&layer_maps, width, height),
                    width,
                    height,
                    scaled: true,
                    channels: 1,
                }
            });
        }
    }
    let maps = methods
        .iter()
        .zip(per_method)
        .map(|(&method, maps)| CamMaps {
            probabilities: probabilities.clone(),
            logits: Some(own_logits.clone()),
            method,
            layers: ask.layers.clone(),
            maps,
            concepts: None,
        })
        .collect();
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((
        maps,
        PassTimings {
            forward_ms,
            backward_ms,
        },
    ))
}

/// FinerCAM's target (`FinerWeightedTarget`) summed over the images: per image, the
/// compared classes' softmax-weighted mean of the target's logit minus `finer_alpha` times
/// theirs. The compared classes are the `comparison_categories`-th closest in logit to the
/// target (pytorch-grad-cam's `argsort(abs(logits - target logit))`).
fn finer_score(
    logits: &Tensor,
    flat_logits: &[f32],
    chosen: &[usize],
    params: &MethodParams,
) -> Result<Tensor, GradCamError> {
    let classes = flat_logits.len() / chosen.len();
    let mut total: Option<Tensor> = None;
    for (b, &main) in chosen.iter().enumerate() {
        let row_values = &flat_logits[b * classes..(b + 1) * classes];
        let by_closeness = closest_classes(row_values, main);
        let compared: Vec<usize> = params
            .comparison_categories
            .iter()
            .map(|&k| by_closeness[k])
            .collect();
        if compared.is_empty() {
            return Err(GradCamError::Unsupported(
                "FinerCAM compares the target with other classes; this model has one".into(),
            ));
        }
        let row = logits.get(b as i64);
        let probabilities = row.softmax(-1, Kind::Float);
        let main_logit = row.get(main as i64);
        let (mut numerator, mut denominator): (Option<Tensor>, Option<Tensor>) = (None, None);
        for &c in &compared {
            let weight = probabilities.get(c as i64);
            let term = &weight * (&main_logit - row.get(c as i64) * params.finer_alpha as f64);
            numerator = Some(numerator.map_or(term.shallow_clone(), |n| n + &term));
            denominator = Some(denominator.map_or(weight.shallow_clone(), |d| d + &weight));
        }
        let score = numerator.expect("a class") / (denominator.expect("a class") + 1e-9);
        total = Some(total.map_or(score.shallow_clone(), |t| t + &score));
    }
    Ok(total.expect("an image"))
}

/// The classes ordered by how close their logit is to `main`'s (`main` first), ties by
/// index.
fn closest_classes(logits: &[f32], main: usize) -> Vec<usize> {
    let distance = |c: usize| (logits[c] - logits[main]).abs();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&x, &y| distance(x).total_cmp(&distance(y)).then(x.cmp(&y)));
    order
}

/// The map of the image itself from the returned map of each image of the batch: with
/// `aug_smooth`, their mean (summed one after another, divided, as `np.mean` does) after
/// the flipped ones are flipped back.
fn deaugmented_mean(returned: Vec<Vec<f32>>, aug_smooth: bool, width: usize) -> Vec<f32> {
    if !aug_smooth {
        return returned.into_iter().next().expect("one image");
    }
    let n = returned.len() as f32;
    let mut sum = vec![0f32; returned[0].len()];
    for (b, m) in returned.iter().enumerate() {
        let m = if AUGMENTATIONS[b].0 {
            flip_rows(m, width)
        } else {
            m.clone()
        };
        for (s, v) in sum.iter_mut().zip(m) {
            *s += v;
        }
    }
    sum.iter().map(|s| s / n).collect()
}

/// FullGrad: one forward pass from the input with autograd, then per target one backward
/// pass to the input and every bias layer; each image's map from those ([`fullgrad`]).
fn full_grad(
    network: &dyn Network,
    batch: &Tensor,
    original: usize,
    ask: &CamAsk,
) -> Result<(CamMaps, PassTimings), GradCamError> {
    let size = batch.size();
    let (images, height, width) = (size[0] as usize, size[2] as usize, size[3] as usize);
    let start = Instant::now();
    let pass = network.forward_with_biases(batch).map_err(refused)?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let logits = pass.logits.detach();
    let probabilities = Vec::<f32>::try_from(logits.get(original as i64).softmax(-1, Kind::Float))?;
    let top1 = Vec::<i64>::try_from(logits.argmax(1, false))?;
    let flat = |t: &Tensor| Vec::<f32>::try_from(t.detach().contiguous().view([-1]));
    let input = flat(&pass.input)?;
    let biases: Vec<Vec<f32>> = pass.biases.iter().map(flat).collect::<Result<_, _>>()?;
    let targets = ask.targets.resolve(&probabilities);
    let mut maps = Vec::with_capacity(targets.len());
    for (j, target) in targets.iter().enumerate() {
        let chosen: Vec<i64> = (0..images)
            .map(|b| target.map_or(top1[b], |t| t as i64))
            .collect();
        let score = pass
            .logits
            .gather(1, &Tensor::from_slice(&chosen).unsqueeze(1), false)
            .sum(Kind::Float);
        let (input_gradient, gradients) = pass.gradients(&score, j + 1 < targets.len())?;
        let input_gradient = flat(&input_gradient)?;
        let gradients: Vec<Vec<f32>> = gradients.iter().map(flat).collect::<Result<_, _>>()?;
        let shapes: Vec<(usize, usize)> = pass
            .outputs
            .iter()
            .map(|o| (o.size()[2] as usize, o.size()[3] as usize))
            .collect();
        let per_image = input.len() / images;
        let returned = (0..images)
            .map(|b| {
                let layers = biases
                    .iter()
                    .zip(&gradients)
                    .zip(&shapes)
                    .map(|((bias, g), &(height, width))| {
                        let n = g.len() / images;
                        fullgrad::BiasLayer {
                            bias,
                            gradient: &g[b * n..(b + 1) * n],
                            height,
                            width,
                        }
                    })
                    .collect();
                let image = b * per_image..(b + 1) * per_image;
                let inputs = fullgrad::FullGradInputs {
                    input: &input[image.clone()],
                    input_gradient: &input_gradient[image],
                    layers,
                };
                fullgrad::full_grad_map(&inputs, width, height, ask.eigen_smooth)
                    .map_err(GradCamError::Unsupported)
            })
            .collect::<Result<Vec<_>, _>>()?;
        maps.push(CamMap {
            target: chosen[original] as usize,
            map: deaugmented_mean(returned, ask.aug_smooth, width),
            width,
            height,
            scaled: true,
            channels: 1,
        });
    }
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((
        CamMaps {
            probabilities,
            logits: None,
            method: Method::FullGrad,
            layers: vec![],
            maps,
            concepts: None,
        },
        PassTimings {
            forward_ms,
            backward_ms,
        },
    ))
}

/// Guided backpropagation: the input gradient of each target's logit through guided ReLUs
/// (pytorch-grad-cam's `GuidedBackpropReLUModel`), as `(H, W, 3)`; for Guided Grad-CAM
/// each pixel's times the Grad-CAM map `grad_cam` returns at that pixel (the Grad-CAM
/// paper's product, as pytorch-grad-cam's example computes it).
fn guided(
    network: &dyn Network,
    input: &Tensor,
    ask: &CamAsk,
    grad_cam: Option<(CamMaps, PassTimings)>,
) -> Result<(CamMaps, PassTimings), GradCamError> {
    let size = input.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let start = Instant::now();
    let pass = network.forward_guided(input).map_err(refused)?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let probabilities = Vec::<f32>::try_from(pass.logits.detach().get(0).softmax(-1, Kind::Float))?;
    let classes: Vec<usize> = match &grad_cam {
        Some((cams, _)) => cams.maps.iter().map(|m| m.target).collect(),
        None => {
            // np.argmax of the logits: the first largest.
            let top1 = Vec::<i64>::try_from(pass.logits.detach().argmax(1, false))?[0] as usize;
            let targets = ask.targets.resolve(&probabilities);
            targets.into_iter().map(|t| t.unwrap_or(top1)).collect()
        }
    };
    let mut maps = Vec::with_capacity(classes.len());
    for (j, &class) in classes.iter().enumerate() {
        let score = pass.logits.get(0).get(class as i64);
        let gradient = pass.input_gradient(&score, j + 1 < classes.len())?;
        let hwc = gradient.get(0).permute([1, 2, 0]).contiguous().view([-1]);
        let mut map = Vec::<f32>::try_from(hwc)?;
        if let Some((cams, _)) = &grad_cam {
            let mask = returned_map(&cams.maps[j], width, height);
            for (pixel, &m) in map.chunks_exact_mut(3).zip(&mask) {
                pixel.iter_mut().for_each(|v| *v *= m);
            }
        }
        maps.push(CamMap {
            target: class,
            map,
            width,
            height,
            scaled: false,
            channels: 3,
        });
    }
    let mut timings = PassTimings {
        forward_ms,
        backward_ms: start.elapsed().as_secs_f64() * 1e3,
    };
    let layers = match grad_cam {
        Some((cams, cam_timings)) => {
            timings.forward_ms += cam_timings.forward_ms;
            timings.backward_ms += cam_timings.backward_ms;
            cams.layers
        }
        None => vec![],
    };
    Ok((
        CamMaps {
            probabilities,
            logits: None,
            method: ask.method,
            layers,
            maps,
            concepts: None,
        },
        timings,
    ))
}

/// SobelCAM: a prediction for the classes, and for every target the same map, the Sobel
/// edges of the image scaled to [0, 1] (`scale_cam_image`) as every returned map is.
fn sobel_edges(
    network: &dyn Network,
    input: &Tensor,
    pixels: &[u8],
    ask: &CamAsk,
) -> Result<(CamMaps, PassTimings), GradCamError> {
    let size = input.size();
    let (height, width) = (size[2] as usize, size[3] as usize);
    let start = Instant::now();
    let logits = network.logits(input)?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let probabilities = Vec::<f32>::try_from(logits.get(0).softmax(-1, Kind::Float))?;
    let edges: Vec<f32> = sobel::sobel_cam(pixels, width, height)
        .into_iter()
        .map(f32::from)
        .collect();
    let maps = same_map_for_every_target(
        &ask.targets,
        &probabilities,
        scale::min_max_scale(&edges),
        width,
        height,
    );
    let backward_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((
        CamMaps {
            probabilities,
            logits: None,
            method: Method::SobelCam,
            layers: vec![],
            maps,
            concepts: None,
        },
        PassTimings {
            forward_ms,
            backward_ms,
        },
    ))
}

/// A class-agnostic map (SobelCAM's edges, DFF's strongest concept), scaled and at the
/// input's size, as the map of every target; None resolves to the top-1 (the first
/// largest, as `np.argmax`).
fn same_map_for_every_target(
    targets: &Targets,
    probabilities: &[f32],
    map: Vec<f32>,
    width: usize,
    height: usize,
) -> Vec<CamMap> {
    let top1 = gradcam::top_k(probabilities, 1)[0].0;
    targets
        .resolve(probabilities)
        .into_iter()
        .map(|target| CamMap {
            target: target.unwrap_or(top1),
            map: map.clone(),
            width,
            height,
            scaled: true,
            channels: 1,
        })
        .collect()
}

/// A network's "this model cannot" as the request's refusal (422) where the method asked
/// for needs what the network lacks; its other failures stay ours.
fn refused(e: NetworkError) -> GradCamError {
    match e {
        NetworkError::Unsupported(why) => GradCamError::Unsupported(why),
        e => e.into(),
    }
}

/// A row-major map mirrored left to right.
fn flip_rows(map: &[f32], width: usize) -> Vec<f32> {
    map.chunks_exact(width)
        .flat_map(|row| row.iter().rev().copied())
        .collect()
}

/// Each layer's map of the pass, flattened, and its (channels, height, width).
type LayerMaps = (Vec<Vec<f32>>, Vec<(usize, usize, usize)>);

fn layer_maps(pass: &Pass) -> Result<LayerMaps, GradCamError> {
    let values = pass
        .maps
        .iter()
        .map(|a| Vec::<f32>::try_from(a.contiguous().view([-1])))
        .collect::<Result<_, _>>()?;
    let shapes = pass
        .maps
        .iter()
        .map(|a| {
            let s = a.size();
            (s[1] as usize, s[2] as usize, s[3] as usize)
        })
        .collect();
    Ok((values, shapes))
}

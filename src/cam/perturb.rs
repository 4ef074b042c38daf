//! The two methods that weigh channels by rerunning the network on changed inputs:
//! AblationCAM (each channel of the layer's output ablated in turn) and ScoreCAM (the input
//! masked by each channel, upsampled). Both check between chunks whether anybody still
//! waits for the answer, so that a request that timed out frees its worker.

use tch::{Kind, Tensor};

use crate::gradcam::GradCamError;
use crate::model::Network;

/// pytorch-grad-cam's batch for the ablated copies: its ablation value depends on the
/// position of a channel in such a batch (see `ablation_values`).
const REFERENCE_ABLATION_BATCH: usize = 32;

/// Bytes of copies of the layer's output (or of masked inputs) put through the network at
/// once: large enough for the matrix products to run at full speed, small enough for a
/// server's memory.
const CHUNK_BYTES: usize = 32 << 20;

/// AblationCAM's weights for one image: `(score - ablated score) / score` per channel.
/// `raw` is the layer's output [1, ...] in its own layout (`Pass::raw`), `layer` its index,
/// `input` the image [1, 3, H, W], `score` the class's logit on the whole image.
///
/// pytorch-grad-cam replaces the target layer and reruns the whole model for every batch
/// of 32 channels; the network reruns only what follows the layer where it can (a ResNet
/// always: at layer4 the head alone; an exported model where the file has the layer's
/// tail).
pub fn ablation_weights(
    network: &dyn Network,
    input: &Tensor,
    raw: &Tensor,
    layer: usize,
    class: usize,
    score: f32,
    abandoned: &dyn Fn() -> bool,
) -> Result<Vec<f32>, GradCamError> {
    let axis = network.channel_axis(layer).ok_or_else(|| {
        GradCamError::Unsupported(
            "ablationcam: this layer's channels are not where AblationCAM can find them (its \
             reshape_transform is a custom one); choose another method"
                .into(),
        )
    })?;
    let dims = raw.dim() as i64;
    // Within one copy (the batch dimension taken off).
    let axis = if axis < 0 { dims + axis } else { axis } - 1;
    let channels = raw.size()[(axis + 1) as usize] as usize;
    let copy_bytes = (raw.numel() * 4).max(1);
    let chunk = (CHUNK_BYTES / copy_bytes).clamp(1, channels);
    let minimum = raw.min().double_value(&[]) as f32;
    let values = ablation_values(minimum, channels);
    let mut repeats = vec![1i64; dims as usize];
    let mut weights = Vec::with_capacity(channels);
    for start in (0..channels).step_by(chunk) {
        if abandoned() {
            return Err(GradCamError::Abandoned);
        }
        let n = chunk.min(channels - start);
        repeats[0] = n as i64;
        let copies = raw.repeat(repeats.as_slice());
        for i in 0..n {
            let _ = copies
                .get(i as i64)
                .select(axis, (start + i) as i64)
                .fill_(values[start + i] as f64);
        }
        let logits = network.logits_replacing(input, layer, &copies)?;
        let ablated = Vec::<f32>::try_from(logits.select(1, class as i64).contiguous())?;
        weights.extend(ablated.iter().map(|&a| (score - a) / score));
    }
    Ok(weights)
}

/// The value pytorch-grad-cam's `AblationLayer` writes into each ablated channel: 0 when
/// the layer's smallest value is 0 (always so after a ReLU, as at every ResNet block's
/// output); else, within each batch of 32 copies, the batch's current minimum minus 1e7,
/// which its in-place writes lower by 1e7 at each copy.
fn ablation_values(minimum: f32, channels: usize) -> Vec<f32> {
    if minimum == 0.0 {
        return vec![0.0; channels];
    }
    (0..channels)
        .map(|k| {
            let mut v = minimum;
            for _ in 0..=k % REFERENCE_ABLATION_BATCH {
                v -= 1e7;
            }
            v
        })
        .collect()
}

/// ScoreCAM's weights for one image: the softmax over the channels of the class's logit
/// for the input multiplied by each channel (bilinearly upsampled with aligned corners,
/// min-max normalised). `input` is [1, 3, H, W], `activation` [1, C, h, w].
pub fn score_weights(
    network: &dyn Network,
    input: &Tensor,
    activation: &Tensor,
    class: usize,
    abandoned: &dyn Fn() -> bool,
) -> Result<Vec<f32>, GradCamError> {
    let size = input.size();
    let (height, width) = (size[2], size[3]);
    let channels = activation.size()[1];
    let chunk = (CHUNK_BYTES / (input.numel() * 4).max(1)).clamp(1, channels as usize) as i64;
    let mut scores: Vec<f32> = Vec::with_capacity(channels as usize);
    tch::no_grad(|| -> Result<(), GradCamError> {
        for start in (0..channels).step_by(chunk as usize) {
            if abandoned() {
                return Err(GradCamError::Abandoned);
            }
            let n = chunk.min(channels - start);
            // Upsampling is per channel, so a slice of channels gives the same values.
            let up = activation.narrow(1, start, n).upsample_bilinear2d(
                [height, width],
                true,
                None,
                None,
            );
            let flat = up.view([1, n, -1]);
            let maxs = flat.amax([-1], false).view([1, n, 1, 1]);
            let mins = flat.amin([-1], false).view([1, n, 1, 1]);
            let up = (up - &mins) / ((maxs - mins) + 1e-8);
            // [1, 1, 3, H, W] * [1, n, 1, H, W] -> n masked inputs.
            let masked = (input.unsqueeze(1) * up.unsqueeze(2)).view([n, 3, height, width]);
            let logits = network.logits(&masked)?;
            scores.extend(Vec::<f32>::try_from(
                logits.select(1, class as i64).contiguous(),
            )?);
        }
        Ok(())
    })?;
    let weights = Tensor::from_slice(&scores).softmax(-1, Kind::Float);
    Ok(Vec::<f32>::try_from(weights)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ablation_writes_zero_after_a_relu_else_ever_lower_values() {
        assert_eq!(ablation_values(0.0, 3), vec![0.0; 3]);
        let v = ablation_values(-1.0, 34);
        assert_eq!(v[0], -1.0 - 1e7);
        assert_eq!(v[1], -1.0 - 2e7);
        // A new batch of 32 starts again from the layer's minimum.
        assert_eq!(v[32], v[0]);
    }
}

//! KPCA-CAM's map (pytorch-grad-cam's `get_2d_projection_kernel`): the layer's positions
//! (centred per channel) projected on the first component of scikit-learn's
//! `KernelPCA(n_components=1, kernel, gamma)`, as its `fit_transform` gives it: the top
//! eigenvector of the centred kernel matrix, its largest entry made positive
//! (`svd_flip`), times the square root of its eigenvalue.
//!
//! scikit-learn runs this in float32 (ARPACK above 200 positions, else LAPACK's dense
//! solver); here the kernel and its eigenvectors are float64 through libtorch's LAPACK, so
//! the maps agree to float32 rounding (tests/core/methods_parity.rs), not bit for bit.

use std::fmt;
use std::str::FromStr;

use tch::{Kind, Tensor};

use crate::gradcam::numpy_sum;

/// scikit-learn's kernels, as `KernelPCA` takes them (`degree` 3 and `coef0` 1, its
/// defaults, for `poly` and `sigmoid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernel {
    Linear,
    Poly,
    Rbf,
    /// KPCA-CAM's default.
    #[default]
    Sigmoid,
    Cosine,
}

impl Kernel {
    pub const ALL: [Kernel; 5] = [
        Kernel::Linear,
        Kernel::Poly,
        Kernel::Rbf,
        Kernel::Sigmoid,
        Kernel::Cosine,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Linear => "linear",
            Kernel::Poly => "poly",
            Kernel::Rbf => "rbf",
            Kernel::Sigmoid => "sigmoid",
            Kernel::Cosine => "cosine",
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kernel::ALL.into_iter().map(Kernel::name).collect();
                format!("must be one of {}", names.join(", "))
            })
    }
}

impl serde::Serialize for Kernel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Kernel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One image's map from its activation ([channels, positions], row-major). `gamma`: the
/// kernel's coefficient, None for scikit-learn's default of 1 / channels.
pub fn kernel_projection(
    activation: &[f32],
    channels: usize,
    kernel: Kernel,
    gamma: Option<f64>,
) -> Result<Vec<f32>, tch::TchError> {
    let positions = activation.len() / channels;
    // [positions, channels], each channel centred in float32 (`reshaped - reshaped.mean(0)`).
    let mut centred = vec![0f32; positions * channels];
    for (k, row) in activation.chunks_exact(positions).enumerate() {
        let clean: Vec<f32> = row
            .iter()
            .map(|&v| if v.is_nan() { 0.0 } else { v })
            .collect();
        let mean = (numpy_sum(&clean) as f64 / positions as f64) as f32;
        for (p, v) in clean.iter().enumerate() {
            centred[p * channels + k] = v - mean;
        }
    }
    let x = Tensor::from_slice(&centred)
        .view([positions as i64, channels as i64])
        .to_kind(Kind::Double);
    let gamma = gamma.unwrap_or(1.0 / channels as f64);
    let dot = || x.matmul(&x.tr());
    let k = match kernel {
        Kernel::Linear => dot(),
        Kernel::Poly => (dot() * gamma + 1.0).pow_tensor_scalar(3),
        Kernel::Sigmoid => (dot() * gamma + 1.0).tanh(),
        Kernel::Rbf => {
            let squares = (&x * &x).sum_dim_intlist(1, true, Kind::Double);
            let distances = (&squares + squares.tr() - dot() * 2.0).clamp_min(0.0);
            (distances * -gamma).exp()
        }
        Kernel::Cosine => {
            // Rows of zeros stay zeros (scikit-learn's `normalize`).
            let norms = x.square().sum_dim_intlist(1, true, Kind::Double).sqrt();
            let unit = &x / norms.where_scalarother(&norms.gt(0.0), 1.0);
            unit.matmul(&unit.tr())
        }
    };
    // KernelCenterer: minus the column means and the row means, plus the overall mean.
    let column_means = k.mean_dim(0, true, Kind::Double);
    let row_means = k.mean_dim(1, true, Kind::Double);
    let centred_k = &k - &column_means - &row_means + column_means.mean(Kind::Double);
    let (values, vectors) = centred_k.f_linalg_eigh("L")?;
    let top = values.double_value(&[-1]).max(0.0);
    let vector = Vec::<f64>::try_from(vectors.select(1, -1).contiguous())?;
    // svd_flip: the entry of largest magnitude (the first of equals) made positive.
    let largest = vector
        .iter()
        .enumerate()
        .fold(
            (0, 0f64),
            |(i, m), (j, &v)| {
                if v.abs() > m {
                    (j, v.abs())
                } else {
                    (i, m)
                }
            },
        )
        .0;
    let sign = if vector[largest] < 0.0 { -1.0 } else { 1.0 };
    let scale = sign * top.sqrt();
    Ok(vector.iter().map(|v| (v * scale) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Channels over positions: one direction plus a constant per channel. With the linear
    /// kernel, kernel PCA is PCA: the projection is that direction's coordinate, centred,
    /// its largest entry positive.
    #[test]
    fn the_linear_kernel_is_plain_pca() {
        let t = [1.0f32, -3.0, 2.0, 0.5];
        let dir = [1.0f32, 2.0, -1.0];
        let values: Vec<f32> = dir
            .iter()
            .flat_map(|&d| t.iter().map(move |&v| 5.0 + d * v))
            .collect();
        let p = kernel_projection(&values, 3, Kernel::Linear, None).unwrap();
        let mean = t.iter().sum::<f32>() / 4.0;
        let norm = dir.iter().map(|d| d * d).sum::<f32>().sqrt();
        // The largest centred coordinate is t[1] - mean (negative): flipped to positive.
        for (got, v) in p.iter().zip(t) {
            let want = -(v - mean) * norm;
            assert!((got - want).abs() < 1e-4, "{p:?}");
        }
    }

    #[test]
    fn kernels_parse_by_their_scikit_learn_names() {
        for k in Kernel::ALL {
            assert_eq!(k.name().parse::<Kernel>(), Ok(k));
        }
        assert!("gaussian".parse::<Kernel>().is_err());
        assert_eq!(Kernel::default(), Kernel::Sigmoid);
    }
}

//! Non-negative matrix factorisation that reproduces scikit-learn 1.9.1's
//! `NMF(n_components=k, init="random", random_state=0).fit_transform(X)` on a
//! float32 matrix, as used by pytorch-grad-cam's Deep Feature Factorization
//! (`dff()`).
//!
//! That call resolves to these sklearn defaults, all fixed here:
//! solver `"cd"` (coordinate descent), `beta_loss="frobenius"`, `tol=1e-4`,
//! `max_iter=200`, `alpha_W = alpha_H = 0` (no regularisation) and
//! `shuffle=False` (coordinates visited in order `0..k`). `fit_transform`
//! returns the `W` of the last iteration as is (no extra solve); hitting
//! `max_iter` only raises a `ConvergenceWarning`, and the reconstruction error
//! it also computes does not change `W` or `H`.
//!
//! Every floating-point step follows the reference so that the result is
//! bit-identical wherever the reference itself is deterministic:
//!
//! * initialisation (`_initialize_nmf`, `init="random"`): numpy's float32
//!   pairwise `X.mean()`, `avg = sqrt(mean / k)` in float32, then
//!   `H = |avg * N(k, n_features)|` and `W = |avg * N(n_samples, k)|` where `N`
//!   are legacy `RandomState(0).standard_normal` draws (MT19937 + polar
//!   Box-Muller) rounded to float32;
//! * the Cython kernel `_update_cdnmf_fast`, in float32 without fused
//!   multiply-add (the sklearn wheel is built for baseline x86-64), with the
//!   violation accumulated in float32 and the two half-sweeps summed in f64;
//! * the four BLAS products per iteration (`Ht.T @ Ht`, `X @ Ht`, `W.T @ W`,
//!   `X.T @ W`) follow the accumulation order of OpenBLAS's Haswell/Zen
//!   kernels that numpy wheels dispatch to on AVX2 machines: one fused
//!   multiply-add chain per output element, with the inner dimension split
//!   into blocks of `GEMM_Q = 320` whose partial sums are added to the output.
//!   Checked bit-exact for k = 3..5. numpy/OpenBLAS take other paths for
//!   k = 1 (gemv) and some wider k (k = 8 differed in a probe), and other
//!   BLAS kernels (e.g. AVX-512) round differently in the last bit; such
//!   differences move the result no more than a 1-ulp change of `X` does
//!   (about 1e-6..2e-5 relative in sklearn itself).

use std::fmt;

/// Stopping tolerance on `violation / violation_init` (sklearn `tol`).
const TOL: f64 = 1e-4;
/// Iteration cap (sklearn `max_iter`).
const MAX_ITER: usize = 200;
/// `random_state=0` as hard-coded by pytorch-grad-cam's `dff()`.
const SEED: u32 = 0;
/// OpenBLAS `SGEMM_DEFAULT_Q` for the Haswell/Zen kernels: the inner
/// dimension of every product is accumulated in blocks of this length.
const GEMM_Q: usize = 320;
/// OpenBLAS `SGEMM_DEFAULT_UNROLL_M` for Haswell; the gemm driver rounds the
/// last-but-one inner block up to a multiple of it (the syrk driver does not).
const GEMM_UNROLL_M: usize = 8;

/// Result of [`factorize`]: `X ≈ W · H`.
#[derive(Debug, Clone, PartialEq)]
pub struct Factorization {
    /// Row-major `n_samples x n_components` (sklearn's `fit_transform` result).
    pub w: Vec<f32>,
    /// Row-major `n_components x n_features` (sklearn's `components_`).
    pub h: Vec<f32>,
    /// Coordinate-descent sweeps performed (sklearn's `n_iter_`), `1..=200`.
    pub iterations: usize,
}

/// Why [`factorize`] rejected its input.
#[derive(Debug, Clone, PartialEq)]
pub enum NmfError {
    /// `n_components` was zero.
    ZeroComponents,
    /// `n_samples` or `n_features` was zero.
    Empty,
    /// `x.len()` differs from `n_samples * n_features` (or that overflows).
    ShapeMismatch {
        /// `n_samples * n_features`, or `None` when the product overflows.
        expected: Option<usize>,
        /// `x.len()`.
        actual: usize,
    },
    /// An element is negative, NaN or infinite (sklearn rejects all three).
    InvalidValue {
        /// Row-major index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
}

impl fmt::Display for NmfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroComponents => write!(f, "NMF needs at least one component"),
            Self::Empty => write!(f, "NMF input matrix has no rows or no columns"),
            Self::ShapeMismatch {
                expected: Some(expected),
                actual,
            } => write!(
                f,
                "NMF input has {actual} values but the shape needs {expected}"
            ),
            Self::ShapeMismatch {
                expected: None,
                actual,
            } => write!(
                f,
                "NMF input shape overflows usize (input has {actual} values)"
            ),
            Self::InvalidValue { index, value } => write!(
                f,
                "NMF input must be finite and non-negative, element {index} is {value}"
            ),
        }
    }
}

impl std::error::Error for NmfError {}

/// Factorises the row-major `n_samples x n_features` matrix `x` into
/// `n_components` parts exactly as sklearn 1.9.1's
/// `NMF(n_components, init="random", random_state=0).fit_transform` does.
///
/// `n_components` may exceed `min(n_samples, n_features)` (sklearn allows
/// that for `init="random"`). An all-zero `x` yields zero factors after one
/// iteration, like sklearn.
pub fn factorize(
    x: &[f32],
    n_samples: usize,
    n_features: usize,
    n_components: usize,
) -> Result<Factorization, NmfError> {
    if n_components == 0 {
        return Err(NmfError::ZeroComponents);
    }
    if n_samples == 0 || n_features == 0 {
        return Err(NmfError::Empty);
    }
    let expected = n_samples.checked_mul(n_features);
    if expected != Some(x.len()) {
        return Err(NmfError::ShapeMismatch {
            expected,
            actual: x.len(),
        });
    }
    // `-0.0` passes, as in sklearn's `check_non_negative` (`X.min() < 0`).
    if let Some((index, &value)) = x
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || **v < 0.0)
    {
        return Err(NmfError::InvalidValue { index, value });
    }

    let k = n_components;
    let (mut w, mut ht) = initialize(x, n_samples, n_features, k);

    // `X @ Ht` is computed as `(X.T).T @ Ht`, sharing the `X.T @ W` kernel.
    let x_t = transpose(x, n_samples, n_features);
    let iterations = solve(x, &x_t, k, &mut w, &mut ht);
    Ok(Factorization {
        w,
        h: transpose(&ht, n_features, k),
        iterations,
    })
}

/// Runs the coordinate-descent loop in place, returning the iteration count.
///
/// The BLAS-order products are fused multiply-add chains; on x86-64 CPUs with
/// FMA they are compiled to the instruction. Results are bit-identical to the
/// portable path (`f32::mul_add` is correctly rounded everywhere; without the
/// target feature it becomes a libm `fmaf` call), only faster.
fn solve(x: &[f32], x_t: &[f32], k: usize, w: &mut [f32], ht: &mut [f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, as checked just above.
        return unsafe { solve_fma(x, x_t, k, w, ht) };
    }
    iterate(x, x_t, k, w, ht)
}

/// [`iterate`] compiled with hardware FMA (about 15x faster than `fmaf` calls).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn solve_fma(x: &[f32], x_t: &[f32], k: usize, w: &mut [f32], ht: &mut [f32]) -> usize {
    iterate(x, x_t, k, w, ht)
}

/// sklearn's `_fit_coordinate_descent` loop: a `W` sweep, then an `H` sweep
/// (on `Ht` with `X.T`), stopping once `violation / violation_init <= tol`.
/// Always inlined (as are the helpers) so that `solve_fma` gets FMA codegen.
#[inline(always)]
fn iterate(x: &[f32], x_t: &[f32], k: usize, w: &mut [f32], ht: &mut [f32]) -> usize {
    let (n_samples, n_features) = (w.len() / k, ht.len() / k);
    let mut violation_init = 0.0;
    for n_iter in 1..=MAX_ITER {
        // Cython returns a float32; Python adds it to `0.0` in double.
        let hht = gram(ht, k);
        let xht = xt_times(x_t, n_samples, ht, k);
        let mut violation = f64::from(update_coordinates(w, &hht, &xht, k));
        let wtw = gram(w, k);
        let xtw = xt_times(x, n_features, w, k);
        violation += f64::from(update_coordinates(ht, &wtw, &xtw, k));

        if n_iter == 1 {
            violation_init = violation;
        }
        if violation_init == 0.0 || violation / violation_init <= TOL {
            return n_iter;
        }
    }
    MAX_ITER
}

/// sklearn's `_initialize_nmf(init="random")`; returns `W` (`n_samples x k`)
/// and `H` already transposed (`n_features x k`) as the solver stores it.
fn initialize(x: &[f32], n_samples: usize, n_features: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    // numpy's `_mean` divides the float32 sum by an `intp` count, which
    // promotes to float64 before the result is cast back to float32.
    let mean = (f64::from(pairwise_sum(x)) / x.len() as f64) as f32;
    // `np.float32 / int` stays float32 (NEP 50 weak Python scalars).
    let avg = (mean / k as f32).sqrt();
    let mut normal = LegacyNormal::new(SEED);
    let mut draw = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| (avg * normal.draw() as f32).abs())
            .collect()
    };
    // H is drawn first; the Box-Muller cache carries over into W.
    let h = draw(k * n_features);
    let w = draw(n_samples * k);
    (w, transpose(&h, k, n_features))
}

/// numpy's float32 `add.reduce` over a contiguous array: pairwise summation
/// with eight interleaved accumulators on blocks of at most 128 elements.
/// The reduction starts from the identity `0.0`, so this is the full result.
fn pairwise_sum(a: &[f32]) -> f32 {
    const PW_BLOCKSIZE: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &v| s + v)
    } else if n <= PW_BLOCKSIZE {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&a[..8]);
        let body = n - n % 8;
        for chunk in a[8..body].chunks_exact(8) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[body..] {
            res += v;
        }
        res
    } else {
        let half = n / 2;
        let split = half - half % 8;
        pairwise_sum(&a[..split]) + pairwise_sum(&a[split..])
    }
}

/// `rows x cols` row-major -> `cols x rows` row-major.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    for (r, row) in a.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// Inner-dimension blocks of OpenBLAS's level-3 drivers: `GEMM_Q` while at
/// least two full blocks remain, then the remainder halved (gemm rounds the
/// first half up to `GEMM_UNROLL_M`, syrk rounds `(len + 1) / 2`).
#[inline(always)]
fn inner_blocks(len: usize, syrk: bool) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= len {
            return None;
        }
        let rest = len - start;
        let size = if rest >= 2 * GEMM_Q {
            GEMM_Q
        } else if rest <= GEMM_Q {
            rest
        } else if syrk {
            rest.div_ceil(2)
        } else {
            (rest / 2).div_ceil(GEMM_UNROLL_M) * GEMM_UNROLL_M
        };
        let block = start..start + size;
        start += size;
        Some(block)
    })
}

/// `A.T @ A` for row-major `A` (`rows x k`), numpy's `syrk` path.
#[inline(always)]
fn gram(a: &[f32], k: usize) -> Vec<f32> {
    let rows = a.len() / k;
    let mut out = vec![0.0f32; k * k];
    let mut acc = vec![0.0f32; k * k];
    for block in inner_blocks(rows, true) {
        acc.fill(0.0);
        for row in a[block.start * k..block.end * k].chunks_exact(k) {
            for (acc_row, &at) in acc.chunks_exact_mut(k).zip(row) {
                for (s, &ar) in acc_row.iter_mut().zip(row) {
                    *s = at.mul_add(ar, *s);
                }
            }
        }
        for (o, &s) in out.iter_mut().zip(&acc) {
            *o += s;
        }
    }
    out
}

/// `X.T @ B` for row-major `X` (`rows x cols`) and `B` (`rows x k`).
#[inline(always)]
fn xt_times(x: &[f32], cols: usize, b: &[f32], k: usize) -> Vec<f32> {
    let rows = x.len() / cols;
    let mut out = vec![0.0f32; cols * k];
    // Block partial sums kept transposed (`k x cols`) so that the innermost
    // loop runs over contiguous `j` and vectorises; each output element is
    // still one sequential chain over the rows of the block.
    let mut acc = vec![0.0f32; k * cols];
    for block in inner_blocks(rows, false) {
        acc.fill(0.0);
        for (x_row, b_row) in x[block.start * cols..block.end * cols]
            .chunks_exact(cols)
            .zip(b[block.start * k..block.end * k].chunks_exact(k))
        {
            for (acc_t, &bv) in acc.chunks_exact_mut(cols).zip(b_row) {
                for (s, &xv) in acc_t.iter_mut().zip(x_row) {
                    *s = xv.mul_add(bv, *s);
                }
            }
        }
        for (t, acc_t) in acc.chunks_exact(cols).enumerate() {
            for (j, &s) in acc_t.iter().enumerate() {
                out[j * k + t] += s;
            }
        }
    }
    out
}

/// One cyclic coordinate-descent sweep over `w` (`rows x k`), a transcription
/// of sklearn's Cython `_update_cdnmf_fast` in float32; returns the summed
/// absolute projected gradient. For the `H` half-sweep it is called with
/// `Ht`, `W.T @ W` and `X.T @ W`.
#[inline(always)]
fn update_coordinates(w: &mut [f32], hht: &[f32], xht: &[f32], k: usize) -> f32 {
    let mut violation = 0.0f32;
    for t in 0..k {
        let hht_row = &hht[t * k..(t + 1) * k];
        let hess = hht_row[t];
        for (row, xht_row) in w.chunks_exact_mut(k).zip(xht.chunks_exact(k)) {
            // Separate multiply and add: the reference is compiled without FMA.
            let mut grad = -xht_row[t];
            for (&h, &wv) in hht_row.iter().zip(row.iter()) {
                grad += h * wv;
            }
            // Cython `min(0., grad)`: `grad` if `grad < 0` else `0`.
            let pg = if row[t] != 0.0 || grad < 0.0 {
                grad
            } else {
                0.0
            };
            violation += pg.abs();
            if hess != 0.0 {
                // Cython `max(v, 0.)`: `0` only if `0 > v` (keeps `-0.0`).
                let v = row[t] - grad / hess;
                row[t] = if 0.0 > v { 0.0 } else { v };
            }
        }
    }
    violation
}

/// numpy's legacy `RandomState.standard_normal`: polar Box-Muller on
/// MT19937 (seeded as `RandomState(int)` seeds it, `init_genrand`), caching the
/// second value of each pair.
pub struct LegacyNormal {
    mt: rand_mt::Mt,
    cached: Option<f64>,
}

impl LegacyNormal {
    pub fn new(seed: u32) -> Self {
        Self {
            mt: rand_mt::Mt::new(seed),
            cached: None,
        }
    }

    pub fn draw(&mut self) -> f64 {
        if let Some(v) = self.cached.take() {
            return v;
        }
        loop {
            let x1 = 2.0 * super::maps::numpy_double(&mut self.mt) - 1.0;
            let x2 = 2.0 * super::maps::numpy_double(&mut self.mt) - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.cached = Some(f * x1);
                return f * x2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_random_state_0() {
        // np.random.RandomState(0)._bit_generator.random_raw(10)
        const EXPECTED: [u32; 10] = [
            2357136044, 2546248239, 3071714933, 3626093760, 2588848963, 3684848379, 2340255427,
            3638918503, 1819583497, 2678185683,
        ];
        let mut mt = rand_mt::Mt::new(0);
        let got: Vec<u32> = (0..10).map(|_| mt.next_u32()).collect();
        assert_eq!(got, EXPECTED);
    }

    #[test]
    fn legacy_gauss_matches_random_state_0_bit_for_bit() {
        // np.random.RandomState(0).standard_normal(6).view(np.uint64)
        const EXPECTED: [u64; 6] = [
            0x3ffc_398e_f3e5_cfa5,
            0x3fd9_9c2c_facc_8953,
            0x3fef_51d2_5222_c9ab,
            0x4001_ed59_69e3_314e,
            0x3ffd_e184_7cb1_3dda,
            0xbfef_45dc_42a5_8c82,
        ];
        let mut normal = LegacyNormal::new(0);
        let got: Vec<u64> = (0..6).map(|_| normal.draw().to_bits()).collect();
        assert_eq!(got, EXPECTED);
    }

    #[test]
    fn pairwise_sum_differs_from_naive_like_numpy() {
        // np.full(1000, 0.1, np.float32).sum() == 100.000015 (naive: 99.99905)
        let a = vec![0.1f32; 1000];
        assert_eq!(pairwise_sum(&a), 100.000_015);
        assert_ne!(a.iter().sum::<f32>(), pairwise_sum(&a));
    }

    #[test]
    fn inner_blocks_follow_openblas_drivers() {
        let sizes = |len, syrk| inner_blocks(len, syrk).map(|b| b.len()).collect::<Vec<_>>();
        assert_eq!(sizes(49, false), [49]);
        assert_eq!(sizes(2048, false), [320, 320, 320, 320, 320, 224, 224]);
        assert_eq!(sizes(330, false), [168, 162]);
        assert_eq!(sizes(653, true), [320, 167, 166]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(factorize(&[1.0], 1, 1, 0), Err(NmfError::ZeroComponents));
        assert_eq!(factorize(&[], 0, 3, 2), Err(NmfError::Empty));
        assert_eq!(
            factorize(&[1.0; 5], 2, 3, 1),
            Err(NmfError::ShapeMismatch {
                expected: Some(6),
                actual: 5
            })
        );
        assert_eq!(
            factorize(&[1.0], usize::MAX, 2, 1),
            Err(NmfError::ShapeMismatch {
                expected: None,
                actual: 1
            })
        );
        for bad in [-1.0, f32::NAN, f32::INFINITY] {
            let err = factorize(&[1.0, bad], 1, 2, 1).unwrap_err();
            assert!(matches!(err, NmfError::InvalidValue { index: 1, .. }));
            assert!(err.to_string().contains("element 1"));
        }
    }

    #[test]
    fn zero_matrix_stops_after_one_iteration() {
        let f = factorize(&[0.0, -0.0, 0.0, 0.0], 2, 2, 3).unwrap();
        assert_eq!(f.iterations, 1);
        assert!(f.w.iter().chain(&f.h).all(|&v| v == 0.0));
        assert_eq!((f.w.len(), f.h.len()), (6, 6));
    }

    #[test]
    fn rank_one_matrix_is_reconstructed() {
        let u = [1.0f32, 2.0, 3.0, 4.0];
        let v = [0.5f32, 1.0, 2.0];
        let x: Vec<f32> = u
            .iter()
            .flat_map(|a| v.iter().map(move |b| a * b))
            .collect();
        let f = factorize(&x, 4, 3, 1).unwrap();
        for (i, row) in x.chunks_exact(3).enumerate() {
            for (j, &xv) in row.iter().enumerate() {
                assert!((f.w[i] * f.h[j] - xv).abs() < 1e-3 * xv.max(1.0));
            }
        }
    }
}

//! Reproducible random tensors from a generator of our own: identical on every machine, and
//! untouched by libtorch's global generator, which any thread may reseed at any moment.

use tch::Tensor;

/// SplitMix64: a small, fast generator, identical on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn seeded_uniform(shape: &[i64], seed: u64, low: f64, high: f64) -> Tensor {
    let mut rng = SplitMix64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| (low + (high - low) * rng.next_f64()) as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// Normal values with mean 0 and standard deviation `std` (Box-Muller), reproducible.
pub fn seeded_normal(shape: &[i64], seed: u64, std: f64) -> Tensor {
    let mut rng = SplitMix64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
            let u2 = rng.next_f64();
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}

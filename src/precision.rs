//! The number format of the no-grad trunk (`model.precision`), and whether this CPU has the
//! instructions that make bf16 worth running: oneDNN computes bf16 convolutions with
//! AVX-512 BF16 or AMX; elsewhere it would emulate them, slower than f32, so bf16 is refused
//! at start instead.

use serde::{Deserialize, Serialize};
use tch::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats everywhere: pytorch-grad-cam's results.
    #[default]
    Fp32,
    /// bfloat16 weights and activations in the trunk; the head, the gradient and the map
    /// are computed in f32 from the bf16 activations.
    Bf16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// Whether `cpu` runs this precision at speed; Err says which instructions it lacks.
    pub fn check(self, cpu: CpuFeatures) -> Result<(), String> {
        match self {
            Precision::Fp32 => Ok(()),
            Precision::Bf16 if cpu.avx512_bf16 || cpu.amx_bf16 => Ok(()),
            Precision::Bf16 => Err(format!(
                "model.precision = \"bf16\" needs a CPU with AVX-512 BF16 (avx512_bf16) or AMX \
                 (amx_bf16); this {} has neither: use precision = \"fp32\"",
                cpu.name
            )),
        }
    }
}

/// The instruction sets bf16 needs, as a CPU reports them. `detect` reads this machine's;
/// tests build others, so that the refusal is checked on every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx512_bf16: bool,
    pub amx_bf16: bool,
    /// How the refusal names the CPU.
    pub name: &'static str,
}

impl CpuFeatures {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx512_bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
                amx_bf16: amx_bf16(),
                name: "x86-64 CPU",
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures {
                avx512_bf16: false,
                amx_bf16: false,
                name: "non-x86 CPU",
            }
        }
    }
}

/// AMX-BF16: CPUID leaf 7, EDX bit 22 (std's `amx-bf16` detection is not stable yet).
/// oneDNN asks Linux for the tile state itself before it uses AMX.
#[cfg(target_arch = "x86_64")]
fn amx_bf16() -> bool {
    // Leaf 7 is read only when the highest basic leaf (leaf 0's EAX) says it exists.
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    __cpuid(0).eax >= 7 && __cpuid_count(7, 0).edx & (1 << 22) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(avx512_bf16: bool, amx_bf16: bool) -> CpuFeatures {
        CpuFeatures {
            avx512_bf16,
            amx_bf16,
            name: "test CPU",
        }
    }

    #[test]
    fn bf16_needs_avx512_bf16_or_amx_and_the_refusal_names_both() {
        let refusal = Precision::Bf16.check(cpu(false, false)).unwrap_err();
        assert!(refusal.contains("AVX-512 BF16"), "{refusal}");
        assert!(refusal.contains("AMX"), "{refusal}");
        assert!(Precision::Bf16.check(cpu(true, false)).is_ok());
        assert!(Precision::Bf16.check(cpu(false, true)).is_ok());
    }

    #[test]
    fn fp32_runs_on_any_cpu() {
        assert!(Precision::Fp32.check(cpu(false, false)).is_ok());
    }

    #[test]
    fn the_setting_is_written_in_lowercase() {
        let p: Precision = toml::from_str::<toml::Value>("p = \"bf16\"").unwrap()["p"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(p, Precision::Bf16);
    }
}

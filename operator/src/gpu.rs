//! GPU product profiles: defaults the operator applies when `gpu.product` names a known
//! GPU. Data, not branches: one row per product family; user values always win.

/// Defaults for one GPU family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProfile {
    /// Token of the `nvidia.com/gpu.product` label that identifies the family.
    pub token: &'static str,
    pub max_concurrent_requests: i32,
    /// Runtime `--dtype`: bf16 needs sm_80 or newer, so pre-Ampere cards run f16.
    pub dtype: &'static str,
}

pub const PROFILES: &[GpuProfile] = &[
    GpuProfile {
        token: "T4",
        max_concurrent_requests: 8,
        dtype: "f16",
    },
    GpuProfile {
        token: "L4",
        max_concurrent_requests: 16,
        dtype: "auto",
    },
    GpuProfile {
        token: "A4000",
        max_concurrent_requests: 20,
        dtype: "auto",
    },
    GpuProfile {
        token: "A10G",
        max_concurrent_requests: 16,
        dtype: "auto",
    },
    GpuProfile {
        token: "L40S",
        max_concurrent_requests: 32,
        dtype: "auto",
    },
    GpuProfile {
        token: "A100",
        max_concurrent_requests: 48,
        dtype: "auto",
    },
    GpuProfile {
        token: "H100",
        max_concurrent_requests: 64,
        dtype: "auto",
    },
    GpuProfile {
        token: "H200",
        max_concurrent_requests: 96,
        dtype: "auto",
    },
];

/// Defaults when the product is unknown or unset.
pub const FALLBACK: GpuProfile = GpuProfile {
    token: "",
    max_concurrent_requests: 16,
    dtype: "auto",
};

/// The profile of a `nvidia.com/gpu.product` label value such as `NVIDIA-L40S`,
/// `Tesla-T4` or `NVIDIA-A100-SXM4-80GB`. Tokens match whole dash-separated words, so
/// `L4` never matches `L40S`.
pub fn profile(product: Option<&str>) -> GpuProfile {
    let Some(product) = product else {
        return FALLBACK;
    };
    let words: Vec<String> = product
        .split(['-', '_', ' '])
        .map(str::to_ascii_uppercase)
        .collect();
    PROFILES
        .iter()
        .find(|p| words.iter().any(|w| w == p.token))
        .copied()
        .unwrap_or(FALLBACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_map_to_their_family() {
        assert_eq!(profile(Some("NVIDIA-L40S")).max_concurrent_requests, 32);
        assert_eq!(profile(Some("NVIDIA-L4")).max_concurrent_requests, 16);
        assert_eq!(profile(Some("Tesla-T4")).dtype, "f16");
        assert_eq!(
            profile(Some("NVIDIA-A100-SXM4-80GB")).max_concurrent_requests,
            48
        );
        assert_eq!(
            profile(Some("NVIDIA-H100-80GB-HBM3")).max_concurrent_requests,
            64
        );
        assert_eq!(profile(Some("NVIDIA-H200")).max_concurrent_requests, 96);
        assert_eq!(
            profile(Some("NVIDIA-RTX-A4000")).max_concurrent_requests,
            20
        );
        assert_eq!(profile(Some("NVIDIA-A10G")).max_concurrent_requests, 16);
        assert_eq!(profile(Some("AMD-MI300X")), FALLBACK);
        assert_eq!(profile(None), FALLBACK);
    }
}

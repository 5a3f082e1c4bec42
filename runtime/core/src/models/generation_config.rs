//! generation_config.json's sampling defaults, which vLLM applies by default
//! (`--generation-config auto`): a request's own values win, then the deployment's,
//! then these. Values outside what the API accepts are dropped (the request would be
//! refused for a field it never sent). Dream's file adds its diffusion `steps` and `alg`
//! (the remasking rule, by Dream's name), kept as written: the decoding layer reads them.

use serde_json::Value;

/// The publisher's sampling defaults; `None` where the file says nothing usable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Autoregressive models only; 0 (off) is `None`.
    pub top_k: Option<usize>,
    /// Autoregressive models only: HF's `repetition_penalty`; 1.0 (off) is `None`.
    pub repetition_penalty: Option<f32>,
    /// Diffusion models only: Dream's `steps`, the most denoising steps of an answer.
    pub steps: Option<usize>,
    /// Diffusion models only: Dream's `alg` (`origin`, `maskgit_plus`, `topk_margin`,
    /// `entropy`), as written.
    pub algorithm: Option<String>,
}

impl SamplingDefaults {
    /// Reads the fields from a parsed generation_config.json (`Null` for none).
    /// `autoregressive`: whether `top_k` applies (diffusion samplers refuse it).
    pub fn from_generation_config(v: &Value, autoregressive: bool) -> Self {
        let number = |k: &str| v.get(k).and_then(Value::as_f64);
        Self {
            temperature: number("temperature")
                .filter(|t| (0.0..=2.0).contains(t))
                .map(|t| t as f32),
            top_p: number("top_p")
                .filter(|p| *p > 0.0 && *p <= 1.0)
                .map(|p| p as f32),
            top_k: v
                .get("top_k")
                .and_then(Value::as_u64)
                .filter(|&k| k > 0 && autoregressive)
                .map(|k| k as usize),
            repetition_penalty: number("repetition_penalty")
                .filter(|p| *p > 0.0 && *p <= 2.0 && *p != 1.0 && autoregressive)
                .map(|p| p as f32),
            steps: v
                .get("steps")
                .and_then(Value::as_u64)
                .filter(|&k| k > 0 && !autoregressive)
                .map(|k| k as usize),
            algorithm: v
                .get("alg")
                .and_then(Value::as_str)
                .filter(|_| !autoregressive)
                .map(str::to_string),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn real(family: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/real")
            .join(family)
            .join("generation_config.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_real_files_give_what_they_publish() {
        // Dream: temperature 0.0, top_p/top_k null, 512 steps of its `origin` rule.
        let dream = SamplingDefaults::from_generation_config(&real("dream-v0-instruct-7b"), false);
        assert_eq!(
            dream,
            SamplingDefaults {
                temperature: Some(0.0),
                steps: Some(512),
                algorithm: Some("origin".into()),
                ..Default::default()
            }
        );
        // LLaDA and Phi-2 publish token ids only.
        assert!(
            SamplingDefaults::from_generation_config(&real("llada-8b-instruct"), false).is_empty()
        );
        assert!(SamplingDefaults::from_generation_config(&real("phi-2"), true).is_empty());
    }

    #[test]
    fn unusable_values_are_dropped_and_top_k_is_for_autoregressive_models() {
        // Qwen2.5-Instruct's published sampling fields.
        let v = json!({"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
                       "steps": 64, "alg": "entropy"});
        let ar = SamplingDefaults::from_generation_config(&v, true);
        assert_eq!(
            (ar.temperature, ar.top_p, ar.top_k, ar.repetition_penalty),
            (Some(0.7), Some(0.8), Some(20), Some(1.05))
        );
        assert_eq!((ar.steps, ar.algorithm), (None, None), "diffusion fields");
        let diffusion = SamplingDefaults::from_generation_config(&v, false);
        assert_eq!(
            (diffusion.top_k, diffusion.repetition_penalty),
            (None, None)
        );
        assert_eq!(
            (diffusion.steps, diffusion.algorithm.as_deref()),
            (Some(64), Some("entropy"))
        );
        let bad = json!({"temperature": 3.0, "top_p": 0.0, "top_k": 0, "repetition_penalty": 1.0});
        assert!(SamplingDefaults::from_generation_config(&bad, true).is_empty());
    }
}

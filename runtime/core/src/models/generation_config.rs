//! generation_config.json's sampling defaults, which vLLM applies by default
//! (`--generation-config auto`): a request's own values win, then the deployment's,
//! then these. Values outside what the API accepts are dropped (the request would be
//! refused for a field it never sent).

use serde_json::Value;

/// The publisher's sampling defaults; `None` where the file says nothing usable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Autoregressive models only; 0 (off) is `None`.
    pub top_k: Option<usize>,
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
        // Dream: temperature 0.0, top_p/top_k null.
        let dream = SamplingDefaults::from_generation_config(&real("dream-v0-instruct-7b"), false);
        assert_eq!(
            dream,
            SamplingDefaults {
                temperature: Some(0.0),
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
        let v = json!({"temperature": 0.7, "top_p": 0.8, "top_k": 20});
        let ar = SamplingDefaults::from_generation_config(&v, true);
        assert_eq!(
            (ar.temperature, ar.top_p, ar.top_k),
            (Some(0.7), Some(0.8), Some(20))
        );
        assert_eq!(
            SamplingDefaults::from_generation_config(&v, false).top_k,
            None
        );
        let bad = json!({"temperature": 3.0, "top_p": 0.0, "top_k": 0});
        assert!(SamplingDefaults::from_generation_config(&bad, true).is_empty());
    }
}

//! Qwen2 and Qwen2.5 (HF `Qwen2ForCausalLM`): the Llama layers with q/k/v biases and,
//! in the small releases, the LM head tied to the embedding (`tie_word_embeddings`).

use std::path::Path;

use candle_nn::VarBuilder;
use serde_json::Value;

use super::causal::CausalModel;
use super::hf::{build_causal, Config};
use super::ModelError;

pub fn load(config: &Value, path: &Path, vb: VarBuilder) -> Result<CausalModel, ModelError> {
    let cfg = Config::from_value(config, path)?;
    if config
        .get("use_sliding_window")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Err(ModelError::InvalidFile {
            path: path.to_path_buf(),
            message: "use_sliding_window: true is not supported".into(),
        });
    }
    build_causal(&cfg, vb, true)
        .map_err(|e| super::loader::weights_error(path.parent().unwrap_or(path), e))
}

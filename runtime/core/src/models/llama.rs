//! Llama (HF `LlamaForCausalLM`: TinyLlama, Llama 2 and 3 with default RoPE, grouped
//! key/value heads): the causal LLaMA layers of [`super::hf`], optional
//! `attention_bias`.

use std::path::Path;

use candle_nn::VarBuilder;
use serde_json::Value;

use super::causal::CausalModel;
use super::hf::{build_causal, Config};
use super::ModelError;

pub fn load(config: &Value, path: &Path, vb: VarBuilder) -> Result<CausalModel, ModelError> {
    let cfg = Config::from_value(config, path)?;
    build_causal(&cfg, vb, false)
        .map_err(|e| super::loader::weights_error(path.parent().unwrap_or(path), e))
}

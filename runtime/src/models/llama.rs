//! Llama (HF `LlamaForCausalLM` layout): the autoregressive models, causal attention.
//! So far the full forward pass only, which the APD verifier and the autoregressive
//! runtime will build on; it reuses the diffusion models' [`Trunk`] with a causal bias.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::Trunk;
use super::{Batch, ModelError};

pub use super::hf::Config;

#[derive(Debug, Clone)]
pub struct Llama {
    trunk: Trunk,
    lm_head: Linear,
    config: Config,
}

impl Llama {
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (trunk, lm_head) = super::hf::build(cfg, vb, false)?;
        Ok(Self {
            trunk,
            lm_head,
            config: cfg.clone(),
        })
    }

    /// Next-token logits `[B, T, V]` for every position of a left-padded batch: position
    /// i attends to the real tokens at positions <= i.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let causal = batch.with_causal_bias(self.dtype())?;
        self.lm_head.forward(&self.trunk.hidden_states(&causal)?)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.lm_head.weight().device()
    }

    pub fn dtype(&self) -> DType {
        self.lm_head.weight().dtype()
    }
}

/// Loads a Llama checkpoint (config.json + safetensors in HF layout).
pub fn load(dir: &Path, device: &Device, dtype: DType) -> std::result::Result<Llama, ModelError> {
    let config = super::loader::read_json(dir, "config.json")?;
    let cfg = Config::from_value(&config, &dir.join("config.json"))?;
    let files = super::weight_files(dir)?;
    let vb = super::loader::var_builder(&files, dtype, device)?;
    Llama::load(&cfg, vb).map_err(|e| super::loader::weights_error(dir, e))
}

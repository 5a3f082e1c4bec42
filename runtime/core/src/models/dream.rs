//! Dream (Dream-org/Dream-v0-7B): Qwen2.5 weights and names (q/k/v with bias, grouped
//! key/value heads), bidirectional attention, and logits shifted right by one: Dream
//! predicts the token at position i from the hidden state at i - 1.

use std::ops::Range;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::bidirectional::Trunk;
use super::KvCacheMode;
use super::{Batch, DiffusionLm, KvCache};

pub use super::hf::Config;

#[derive(Debug, Clone)]
pub struct Dream {
    trunk: Trunk,
    lm_head: Linear,
    config: Config,
}

impl Dream {
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (trunk, lm_head) = super::hf::build(cfg, vb, true)?;
        Ok(Self {
            trunk,
            lm_head,
            config: cfg.clone(),
        })
    }
}

impl DiffusionLm for Dream {
    fn forward(&self, batch: &Batch, positions: Option<Range<usize>>) -> Result<Tensor> {
        let hidden = self.trunk.hidden_states(batch)?;
        let width = hidden.dim(1)?;
        let r = positions.unwrap_or(0..width);
        // The shift: position i reads hidden state i - 1. Position 0 has no predecessor
        // and keeps its own logits, as upstream does (it is always prompt, never decoded).
        let shifted = if r.start == 0 {
            let own = hidden.narrow(1, 0, 1)?;
            if r.len() > 1 {
                Tensor::cat(&[&own, &hidden.narrow(1, 0, r.len() - 1)?], 1)?
            } else {
                own
            }
        } else {
            hidden.narrow(1, r.start - 1, r.len())?
        };
        self.lm_head.forward(&shifted)
    }

    fn forward_capture(&self, batch: &Batch, positions: Range<usize>) -> Result<(Tensor, KvCache)> {
        self.trunk
            .logits_capture(&self.lm_head, batch, positions, 1)
    }

    fn forward_cached(
        &self,
        batch: &Batch,
        cache: &KvCache,
        positions: Range<usize>,
        mode: KvCacheMode,
    ) -> Result<Tensor> {
        // Column i's logits come from hidden state i - 1.
        self.trunk
            .logits_cached(&self.lm_head, batch, cache, positions, mode, 1)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_context(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn device(&self) -> &Device {
        self.lm_head.weight().device()
    }

    fn dtype(&self) -> DType {
        self.lm_head.weight().dtype()
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.trunk.kv_bytes_per_token(self.dtype())
    }
}

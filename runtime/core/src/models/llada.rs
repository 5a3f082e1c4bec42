//! LLaDA (GSAI-ML/LLaDA-8B): LLaMA blocks without the causal mask, under the OLMo-style
//! weight names of the upstream checkpoint (`model.transformer.blocks.N.*`).

use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, linear_no_bias, rms_norm, Linear, VarBuilder};
use serde_json::Value;

use super::bidirectional::{check_heads, Attention, Block, RotaryTable, SwiGlu, Trunk};
use super::loader::{f64_field, usize_field};
use super::KvCacheMode;
use super::{Batch, DiffusionLm, KvCache, ModelError};

/// The fields of LLaDA's config.json that shape the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub mlp_hidden_size: usize,
    /// Rows of the embedding and LM head (`embedding_size`, falling back to `vocab_size`).
    pub embedding_size: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_sequence_length: usize,
    pub weight_tying: bool,
}

impl Config {
    pub fn from_value(v: &Value, path: &Path) -> std::result::Result<Self, ModelError> {
        let d_model = usize_field(v, "d_model", path)?;
        let n_heads = usize_field(v, "n_heads", path)?;
        // Upstream leaves n_kv_heads null for plain multi-head attention.
        let n_kv_heads = usize_field(v, "n_kv_heads", path).unwrap_or(n_heads);
        let embedding_size = usize_field(v, "embedding_size", path)
            .or_else(|_| usize_field(v, "vocab_size", path))?;
        if v.get("include_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err(ModelError::InvalidFile {
                path: path.to_path_buf(),
                message: "include_bias: true is not supported (no LLaDA release uses biases)"
                    .into(),
            });
        }
        check_heads(d_model, n_heads, n_kv_heads).map_err(|message| ModelError::InvalidFile {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(Self {
            d_model,
            n_layers: usize_field(v, "n_layers", path)?,
            n_heads,
            n_kv_heads,
            mlp_hidden_size: usize_field(v, "mlp_hidden_size", path)?,
            embedding_size,
            rope_theta: f64_field(v, "rope_theta", 10_000.0),
            rms_norm_eps: f64_field(v, "rms_norm_eps", 1e-5),
            max_sequence_length: usize_field(v, "max_sequence_length", path).unwrap_or(4096),
            weight_tying: v
                .get("weight_tying")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Llada {
    trunk: Trunk,
    lm_head: Linear,
    config: Config,
}

impl Llada {
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("model").pp("transformer");
        let head_dim = cfg.d_model / cfg.n_heads;
        let kv_dim = cfg.n_kv_heads * head_dim;
        let embed = embedding(cfg.embedding_size, cfg.d_model, vb.pp("wte"))?;
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let b = vb.pp("blocks").pp(i);
                Ok(Block {
                    attn_norm: rms_norm(cfg.d_model, cfg.rms_norm_eps, b.pp("attn_norm"))?,
                    attn: Attention {
                        q: linear_no_bias(cfg.d_model, cfg.d_model, b.pp("q_proj"))?,
                        k: linear_no_bias(cfg.d_model, kv_dim, b.pp("k_proj"))?,
                        v: linear_no_bias(cfg.d_model, kv_dim, b.pp("v_proj"))?,
                        o: linear_no_bias(cfg.d_model, cfg.d_model, b.pp("attn_out"))?,
                        n_heads: cfg.n_heads,
                        n_kv_heads: cfg.n_kv_heads,
                        head_dim,
                    },
                    mlp_norm: rms_norm(cfg.d_model, cfg.rms_norm_eps, b.pp("ff_norm"))?,
                    mlp: SwiGlu {
                        gate: linear_no_bias(cfg.d_model, cfg.mlp_hidden_size, b.pp("ff_proj"))?,
                        up: linear_no_bias(cfg.d_model, cfg.mlp_hidden_size, b.pp("up_proj"))?,
                        down: linear_no_bias(cfg.mlp_hidden_size, cfg.d_model, b.pp("ff_out"))?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.d_model, cfg.rms_norm_eps, vb.pp("ln_f"))?;
        let lm_head = if cfg.weight_tying {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            linear_no_bias(cfg.d_model, cfg.embedding_size, vb.pp("ff_out"))?
        };
        let rotary = RotaryTable::new(
            head_dim,
            cfg.max_sequence_length,
            cfg.rope_theta,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self {
            trunk: Trunk {
                embed,
                blocks,
                norm,
                rotary,
            },
            lm_head,
            config: cfg.clone(),
        })
    }
}

impl DiffusionLm for Llada {
    fn forward(&self, batch: &Batch, positions: Option<Range<usize>>) -> Result<Tensor> {
        let hidden = self.trunk.hidden_states(batch)?;
        let hidden = match positions {
            Some(r) => hidden.narrow(1, r.start, r.len())?,
            None => hidden,
        };
        self.lm_head.forward(&hidden)
    }

    fn forward_capture(&self, batch: &Batch, positions: Range<usize>) -> Result<(Tensor, KvCache)> {
        self.trunk
            .logits_capture(&self.lm_head, batch, positions, 0)
    }

    fn forward_cached(
        &self,
        batch: &Batch,
        cache: &KvCache,
        positions: Range<usize>,
        mode: KvCacheMode,
    ) -> Result<Tensor> {
        self.trunk
            .logits_cached(&self.lm_head, batch, cache, positions, mode, 0)
    }

    fn vocab_size(&self) -> usize {
        self.config.embedding_size
    }

    fn max_context(&self) -> usize {
        self.config.max_sequence_length
    }

    fn device(&self) -> &Device {
        self.lm_head.weight().device()
    }

    fn dtype(&self) -> DType {
        self.lm_head.weight().dtype()
    }
}

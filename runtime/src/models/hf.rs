//! The Hugging Face LLaMA/Qwen2 layout shared by Dream (bidirectional), Llama and Qwen2
//! (causal): config.json fields and the layers under `model.` with an `lm_head`.

use std::path::Path;

use candle_core::Result;
use candle_nn::{embedding, linear, linear_no_bias, rms_norm, Linear, VarBuilder};
use serde_json::Value;

use super::causal::{self, Activation, CausalModel, Mlp, Norm, PositionEncoding, SelfAttention};
use super::layers::{check_heads, Attention, Block, RotaryTable, SwiGlu, Trunk};
use super::loader::{f64_field, usize_field};
use super::ModelError;

/// The fields of a LLaMA/Qwen2-style config.json that shape the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// `hidden_act`: the gated MLP's activation (silu for every LLaMA-family release).
    pub hidden_act: Activation,
    /// Llama's `attention_bias`: q/k/v/o with biases (Qwen2 has q/k/v biases always).
    pub attention_bias: bool,
}

impl Config {
    pub fn from_value(v: &Value, path: &Path) -> std::result::Result<Self, ModelError> {
        let hidden_size = usize_field(v, "hidden_size", path)?;
        let num_attention_heads = usize_field(v, "num_attention_heads", path)?;
        let num_key_value_heads =
            usize_field(v, "num_key_value_heads", path).unwrap_or(num_attention_heads);
        check_heads(hidden_size, num_attention_heads, num_key_value_heads).map_err(|message| {
            ModelError::InvalidFile {
                path: path.to_path_buf(),
                message,
            }
        })?;
        // transformers 5 writes rope_parameters.rope_theta; older files rope_theta.
        let rope_theta = match v.get("rope_parameters") {
            Some(p) => f64_field(p, "rope_theta", f64_field(v, "rope_theta", 10_000.0)),
            None => f64_field(v, "rope_theta", 10_000.0),
        };
        check_rope_type(v, path)?;
        let invalid = |message: String| ModelError::InvalidFile {
            path: path.to_path_buf(),
            message,
        };
        let hidden_act = Activation::from_name(
            v.get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu"),
        )
        .map_err(invalid)?;
        if v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false) {
            return Err(invalid("mlp_bias: true is not supported".into()));
        }
        if let Some(head_dim) = v.get("head_dim").and_then(Value::as_u64) {
            if head_dim as usize != hidden_size / num_attention_heads {
                return Err(invalid(format!(
                    "head_dim {head_dim} differs from hidden_size / num_attention_heads = {}; not supported",
                    hidden_size / num_attention_heads
                )));
            }
        }
        Ok(Self {
            hidden_size,
            intermediate_size: usize_field(v, "intermediate_size", path)?,
            num_hidden_layers: usize_field(v, "num_hidden_layers", path)?,
            num_attention_heads,
            num_key_value_heads,
            vocab_size: usize_field(v, "vocab_size", path)?,
            rope_theta,
            rms_norm_eps: f64_field(v, "rms_norm_eps", 1e-6),
            // Dream's 131072 would make a 131072-row rotary table: cap what we precompute.
            max_position_embeddings: usize_field(v, "max_position_embeddings", path)
                .unwrap_or(32_768)
                .min(32_768),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            hidden_act,
            attention_bias: v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// Only the default RoPE is implemented: a scaled variant (llama3, yarn, linear, ...)
/// would load and run but answer with wrong positions, so it is refused by name.
pub(crate) fn check_rope_type(v: &Value, path: &Path) -> std::result::Result<(), ModelError> {
    let scaling = v
        .get("rope_parameters")
        .or_else(|| v.get("rope_scaling"))
        .filter(|s| !s.is_null());
    let kind = scaling
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if kind != "default" {
        return Err(ModelError::InvalidFile {
            path: path.to_path_buf(),
            message: format!("rope type {kind:?} is not supported (only the default RoPE)"),
        });
    }
    Ok(())
}

/// The trunk and LM head under HF names; `qkv_bias` for Qwen2-style checkpoints.
pub fn build(cfg: &Config, vb: VarBuilder, qkv_bias: bool) -> Result<(Trunk, Linear)> {
    let head_dim = cfg.hidden_size / cfg.num_attention_heads;
    let kv_dim = cfg.num_key_value_heads * head_dim;
    let h = cfg.hidden_size;
    let proj = |inp: usize, out: usize, vb: VarBuilder| {
        if qkv_bias {
            linear(inp, out, vb)
        } else {
            linear_no_bias(inp, out, vb)
        }
    };
    let m = vb.pp("model");
    let embed = embedding(cfg.vocab_size, h, m.pp("embed_tokens"))?;
    let blocks = (0..cfg.num_hidden_layers)
        .map(|i| {
            let l = m.pp("layers").pp(i);
            let a = l.pp("self_attn");
            let f = l.pp("mlp");
            Ok(Block {
                attn_norm: rms_norm(h, cfg.rms_norm_eps, l.pp("input_layernorm"))?,
                attn: Attention {
                    q: proj(h, h, a.pp("q_proj"))?,
                    k: proj(h, kv_dim, a.pp("k_proj"))?,
                    v: proj(h, kv_dim, a.pp("v_proj"))?,
                    o: linear_no_bias(h, h, a.pp("o_proj"))?,
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim,
                },
                mlp_norm: rms_norm(h, cfg.rms_norm_eps, l.pp("post_attention_layernorm"))?,
                mlp: SwiGlu {
                    gate: linear_no_bias(h, cfg.intermediate_size, f.pp("gate_proj"))?,
                    up: linear_no_bias(h, cfg.intermediate_size, f.pp("up_proj"))?,
                    down: linear_no_bias(cfg.intermediate_size, h, f.pp("down_proj"))?,
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let norm = rms_norm(h, cfg.rms_norm_eps, m.pp("norm"))?;
    let lm_head = if cfg.tie_word_embeddings {
        Linear::new(embed.embeddings().clone(), None)
    } else {
        linear_no_bias(h, cfg.vocab_size, vb.pp("lm_head"))?
    };
    let rotary = RotaryTable::new(
        head_dim,
        cfg.max_position_embeddings,
        cfg.rope_theta,
        vb.dtype(),
        vb.device(),
    )?;
    Ok((
        Trunk {
            embed,
            blocks,
            norm,
            rotary,
        },
        lm_head,
    ))
}

/// A causal LLaMA-family model (Llama, Qwen2) under HF names; `qkv_bias` for Qwen2.
pub fn build_causal(cfg: &Config, vb: VarBuilder, qkv_bias: bool) -> Result<CausalModel> {
    let head_dim = cfg.hidden_size / cfg.num_attention_heads;
    let kv_dim = cfg.num_key_value_heads * head_dim;
    let h = cfg.hidden_size;
    let with_bias = |bias: bool| {
        move |inp: usize, out: usize, vb: VarBuilder| {
            if bias {
                linear(inp, out, vb)
            } else {
                linear_no_bias(inp, out, vb)
            }
        }
    };
    let qkv = with_bias(qkv_bias || cfg.attention_bias);
    let o_proj = with_bias(cfg.attention_bias);
    let m = vb.pp("model");
    let embed = embedding(cfg.vocab_size, h, m.pp("embed_tokens"))?;
    let layers = (0..cfg.num_hidden_layers)
        .map(|i| {
            let l = m.pp("layers").pp(i);
            let a = l.pp("self_attn");
            let f = l.pp("mlp");
            Ok(causal::Layer {
                attn_norm: Norm::Rms(rms_norm(h, cfg.rms_norm_eps, l.pp("input_layernorm"))?),
                attn: SelfAttention {
                    q: qkv(h, h, a.pp("q_proj"))?,
                    k: qkv(h, kv_dim, a.pp("k_proj"))?,
                    v: qkv(h, kv_dim, a.pp("v_proj"))?,
                    o: o_proj(h, h, a.pp("o_proj"))?,
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim,
                    scale: 1.0 / (head_dim as f64).sqrt(),
                },
                mlp_norm: Some(Norm::Rms(rms_norm(
                    h,
                    cfg.rms_norm_eps,
                    l.pp("post_attention_layernorm"),
                )?)),
                mlp: Mlp::Gated {
                    gate: linear_no_bias(h, cfg.intermediate_size, f.pp("gate_proj"))?,
                    up: linear_no_bias(h, cfg.intermediate_size, f.pp("up_proj"))?,
                    down: linear_no_bias(cfg.intermediate_size, h, f.pp("down_proj"))?,
                    act: cfg.hidden_act,
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let norm = Norm::Rms(rms_norm(h, cfg.rms_norm_eps, m.pp("norm"))?);
    let lm_head = if cfg.tie_word_embeddings {
        Linear::new(embed.embeddings().clone(), None)
    } else {
        linear_no_bias(h, cfg.vocab_size, vb.pp("lm_head"))?
    };
    let table = RotaryTable::new(
        head_dim,
        cfg.max_position_embeddings,
        cfg.rope_theta,
        vb.dtype(),
        vb.device(),
    )?;
    Ok(CausalModel {
        embed,
        positions: PositionEncoding::Rotary {
            table,
            dims: head_dim,
        },
        layers,
        norm,
        lm_head,
        max_context: cfg.max_position_embeddings,
    })
}

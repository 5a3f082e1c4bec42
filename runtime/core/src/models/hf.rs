//! The Hugging Face LLaMA/Qwen2 layout shared by Dream (bidirectional), Llama and Qwen2
//! (causal): config.json fields and the layers under `model.` with an `lm_head`.

use std::path::Path;

use candle_core::Result;
use candle_nn::{
    embedding, linear, linear_no_bias, rms_norm, Embedding, Linear, RmsNorm, VarBuilder,
};
use serde_json::Value;

use super::bidirectional::{check_heads, Attention, Block, RotaryTable, SwiGlu, Trunk};
use super::causal::{self, Activation, CausalModel, Mlp, Norm, PositionEncoding, SelfAttention};
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

/// One layer's weights under HF names, before they become a bidirectional [`Block`] or
/// a causal [`causal::Layer`].
struct LayerWeights {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Every weight of a LLaMA/Qwen2-layout checkpoint, and the rotary table.
struct Weights {
    embed: Embedding,
    layers: Vec<LayerWeights>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryTable,
    head_dim: usize,
}

/// Loads the weights; `qkv_bias` for Qwen2-style q/k/v biases, `o_bias` for Llama's
/// `attention_bias` (which puts biases on all four projections).
fn load_weights(cfg: &Config, vb: VarBuilder, qkv_bias: bool, o_bias: bool) -> Result<Weights> {
    let head_dim = cfg.hidden_size / cfg.num_attention_heads;
    let kv_dim = cfg.num_key_value_heads * head_dim;
    let (h, inter, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
    let proj = |bias: bool, inp: usize, out: usize, vb: VarBuilder| {
        if bias {
            linear(inp, out, vb)
        } else {
            linear_no_bias(inp, out, vb)
        }
    };
    let m = vb.pp("model");
    let embed = embedding(cfg.vocab_size, h, m.pp("embed_tokens"))?;
    let layers = (0..cfg.num_hidden_layers)
        .map(|i| {
            let l = m.pp("layers").pp(i);
            let a = l.pp("self_attn");
            let f = l.pp("mlp");
            Ok(LayerWeights {
                attn_norm: rms_norm(h, eps, l.pp("input_layernorm"))?,
                q: proj(qkv_bias, h, h, a.pp("q_proj"))?,
                k: proj(qkv_bias, h, kv_dim, a.pp("k_proj"))?,
                v: proj(qkv_bias, h, kv_dim, a.pp("v_proj"))?,
                o: proj(o_bias, h, h, a.pp("o_proj"))?,
                mlp_norm: rms_norm(h, eps, l.pp("post_attention_layernorm"))?,
                gate: linear_no_bias(h, inter, f.pp("gate_proj"))?,
                up: linear_no_bias(h, inter, f.pp("up_proj"))?,
                down: linear_no_bias(inter, h, f.pp("down_proj"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let norm = rms_norm(h, eps, m.pp("norm"))?;
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
    Ok(Weights {
        embed,
        layers,
        norm,
        lm_head,
        rotary,
        head_dim,
    })
}

/// The bidirectional trunk and LM head (Dream); `qkv_bias` for Qwen2-style checkpoints.
pub fn build(cfg: &Config, vb: VarBuilder, qkv_bias: bool) -> Result<(Trunk, Linear)> {
    let w = load_weights(cfg, vb, qkv_bias, false)?;
    let blocks = w
        .layers
        .into_iter()
        .map(|l| Block {
            attn_norm: l.attn_norm,
            attn: Attention {
                q: l.q,
                k: l.k,
                v: l.v,
                o: l.o,
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim: w.head_dim,
            },
            mlp_norm: l.mlp_norm,
            mlp: SwiGlu {
                gate: l.gate,
                up: l.up,
                down: l.down,
            },
        })
        .collect();
    let trunk = Trunk {
        embed: w.embed,
        blocks,
        norm: w.norm,
        rotary: w.rotary,
    };
    Ok((trunk, w.lm_head))
}

/// A causal LLaMA-family model (Llama, Qwen2) under HF names; `qkv_bias` for Qwen2.
pub fn build_causal(cfg: &Config, vb: VarBuilder, qkv_bias: bool) -> Result<CausalModel> {
    let w = load_weights(cfg, vb, qkv_bias || cfg.attention_bias, cfg.attention_bias)?;
    let head_dim = w.head_dim;
    let layers = w
        .layers
        .into_iter()
        .map(|l| causal::Layer {
            attn_norm: Norm::Rms(l.attn_norm),
            attn: SelfAttention {
                q: l.q,
                k: l.k,
                v: l.v,
                o: l.o,
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim,
                scale: 1.0 / (head_dim as f64).sqrt(),
                f32_scores: false,
            },
            mlp_norm: Some(Norm::Rms(l.mlp_norm)),
            mlp: Mlp::Gated {
                gate: l.gate,
                up: l.up,
                down: l.down,
                act: cfg.hidden_act,
            },
        })
        .collect();
    Ok(CausalModel {
        embed: w.embed,
        positions: PositionEncoding::Rotary {
            table: w.rotary,
            dims: head_dim,
        },
        layers,
        norm: Norm::Rms(w.norm),
        lm_head: w.lm_head,
        max_context: cfg.max_position_embeddings,
    })
}

//! Phi (HF `PhiForCausalLM`, Phi-1.5 and Phi-2): one LayerNorm per block feeding
//! attention and MLP in parallel, biases everywhere, rotary embedding on the first
//! `partial_rotary_factor` of each head, a plain GELU MLP and an LM head with bias.

use std::path::Path;

use candle_nn::{embedding, layer_norm, linear, VarBuilder};
use serde_json::Value;

use super::bidirectional::{check_heads, RotaryTable};
use super::causal::{Activation, CausalModel, Layer, Mlp, Norm, PositionEncoding, SelfAttention};
use super::hf::check_rope_type;
use super::loader::{f64_field, usize_field};
use super::ModelError;

pub fn load(v: &Value, path: &Path, vb: VarBuilder) -> Result<CausalModel, ModelError> {
    let invalid = |message: String| ModelError::InvalidFile {
        path: path.to_path_buf(),
        message,
    };
    let h = usize_field(v, "hidden_size", path)?;
    let heads = usize_field(v, "num_attention_heads", path)?;
    let kv_heads = usize_field(v, "num_key_value_heads", path).unwrap_or(heads);
    let head_dim = check_heads(h, heads, kv_heads).map_err(invalid)?;
    let rope = v.get("rope_parameters").filter(|p| p.is_object());
    let factor = rope.map_or_else(
        || f64_field(v, "partial_rotary_factor", 0.5),
        |p| {
            f64_field(
                p,
                "partial_rotary_factor",
                f64_field(v, "partial_rotary_factor", 0.5),
            )
        },
    );
    let theta = rope.map_or_else(
        || f64_field(v, "rope_theta", 10_000.0),
        |p| f64_field(p, "rope_theta", f64_field(v, "rope_theta", 10_000.0)),
    );
    check_rope_type(v, path)?;
    let rotary_dims = (head_dim as f64 * factor) as usize;
    if rotary_dims == 0 || rotary_dims % 2 != 0 {
        return Err(invalid(format!(
            "partial_rotary_factor {factor} gives {rotary_dims} rotary dimensions of {head_dim}; need an even number above 0"
        )));
    }
    if v.get("qk_layernorm")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Err(invalid("qk_layernorm: true is not supported".into()));
    }
    let act = Activation::from_name(
        v.get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new"),
    )
    .map_err(invalid)?;
    let inter = usize_field(v, "intermediate_size", path)?;
    let vocab = usize_field(v, "vocab_size", path)?;
    let layers = usize_field(v, "num_hidden_layers", path)?;
    let eps = f64_field(v, "layer_norm_eps", 1e-5);
    let max_context = usize_field(v, "max_position_embeddings", path).unwrap_or(2048);
    let kv_dim = kv_heads * head_dim;
    let build = || -> candle_core::Result<CausalModel> {
        let m = vb.pp("model");
        let embed = embedding(vocab, h, m.pp("embed_tokens"))?;
        let layers = (0..layers)
            .map(|i| {
                let l = m.pp("layers").pp(i);
                let a = l.pp("self_attn");
                Ok(Layer {
                    attn_norm: Norm::Layer(layer_norm(h, eps, l.pp("input_layernorm"))?),
                    attn: SelfAttention {
                        q: linear(h, heads * head_dim, a.pp("q_proj"))?,
                        k: linear(h, kv_dim, a.pp("k_proj"))?,
                        v: linear(h, kv_dim, a.pp("v_proj"))?,
                        o: linear(heads * head_dim, h, a.pp("dense"))?,
                        n_heads: heads,
                        n_kv_heads: kv_heads,
                        head_dim,
                        scale: 1.0 / (head_dim as f64).sqrt(),
                        f32_scores: true,
                    },
                    mlp_norm: None,
                    mlp: Mlp::Plain {
                        fc_in: linear(h, inter, l.pp("mlp").pp("fc1"))?,
                        fc_out: linear(inter, h, l.pp("mlp").pp("fc2"))?,
                        act,
                    },
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = Norm::Layer(layer_norm(h, eps, m.pp("final_layernorm"))?);
        let lm_head = linear(h, vocab, vb.pp("lm_head"))?;
        let table = RotaryTable::new(rotary_dims, max_context, theta, vb.dtype(), vb.device())?;
        Ok(CausalModel {
            embed,
            positions: PositionEncoding::Rotary {
                table,
                dims: rotary_dims,
            },
            layers,
            norm,
            lm_head,
            max_context,
        })
    };
    build().map_err(|e| super::loader::weights_error(path.parent().unwrap_or(path), e))
}

//! GPT-2 (HF `GPT2LMHeadModel`): learned absolute positions, LayerNorm, a plain GELU
//! MLP, and `Conv1D` weights stored transposed (`[in, out]`), with q, k and v fused in
//! one `c_attn`. The LM head is the token embedding. Checkpoints saved from
//! `GPT2LMHeadModel` put everything under `transformer.`; the original `gpt2` upload
//! does not, and both load.

use std::path::Path;

use candle_core::Tensor;
use candle_nn::{embedding, layer_norm, Linear, VarBuilder};
use serde_json::Value;

use super::bidirectional::check_heads;
use super::causal::{Activation, CausalModel, Layer, Mlp, Norm, PositionEncoding, SelfAttention};
use super::loader::{f64_field, usize_field};
use super::ModelError;

/// A `Conv1D` (`weight [inp, out]`, `bias [out]`) as a [`Linear`].
fn conv1d(inp: usize, out: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    let w = vb.get((inp, out), "weight")?.t()?.contiguous()?;
    let b = vb.get(out, "bias")?;
    Ok(Linear::new(w, Some(b)))
}

/// Rows `part * h..(part + 1) * h` of a fused q/k/v projection.
fn split(fused: &Linear, part: usize, h: usize) -> candle_core::Result<Linear> {
    let w = fused.weight().narrow(0, part * h, h)?.contiguous()?;
    let b = fused.bias().map(|b| b.narrow(0, part * h, h)).transpose()?;
    Ok(Linear::new(w, b))
}

pub fn load(v: &Value, path: &Path, vb: VarBuilder) -> Result<CausalModel, ModelError> {
    let invalid = |message: String| ModelError::InvalidFile {
        path: path.to_path_buf(),
        message,
    };
    let h = usize_field(v, "n_embd", path)?;
    let heads = usize_field(v, "n_head", path)?;
    let head_dim = check_heads(h, heads, heads).map_err(invalid)?;
    let layers = usize_field(v, "n_layer", path)?;
    let vocab = usize_field(v, "vocab_size", path)?;
    let max_context = usize_field(v, "n_positions", path)?;
    let inner = usize_field(v, "n_inner", path).unwrap_or(4 * h);
    let eps = f64_field(v, "layer_norm_epsilon", 1e-5);
    let flag = |key: &str, default: bool| v.get(key).and_then(Value::as_bool).unwrap_or(default);
    let act = Activation::from_name(
        v.get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new"),
    )
    .map_err(invalid)?;
    let scaled = flag("scale_attn_weights", true);
    let by_layer = flag("scale_attn_by_inverse_layer_idx", false);
    let root = if vb.contains_tensor("transformer.wte.weight") {
        vb.pp("transformer")
    } else {
        vb.clone()
    };
    let build = || -> candle_core::Result<CausalModel> {
        let embed = embedding(vocab, h, root.pp("wte"))?;
        let wpe = embedding(max_context, h, root.pp("wpe"))?;
        let blocks = (0..layers)
            .map(|i| {
                let l = root.pp("h").pp(i);
                let fused = conv1d(h, 3 * h, l.pp("attn").pp("c_attn"))?;
                let mut scale = if scaled {
                    1.0 / (head_dim as f64).sqrt()
                } else {
                    1.0
                };
                if by_layer {
                    scale /= (i + 1) as f64;
                }
                Ok(Layer {
                    attn_norm: Norm::Layer(layer_norm(h, eps, l.pp("ln_1"))?),
                    attn: SelfAttention {
                        q: split(&fused, 0, h)?,
                        k: split(&fused, 1, h)?,
                        v: split(&fused, 2, h)?,
                        o: conv1d(h, h, l.pp("attn").pp("c_proj"))?,
                        n_heads: heads,
                        n_kv_heads: heads,
                        head_dim,
                        scale,
                        f32_scores: false,
                    },
                    mlp_norm: Some(Norm::Layer(layer_norm(h, eps, l.pp("ln_2"))?)),
                    mlp: Mlp::Plain {
                        fc_in: conv1d(h, inner, l.pp("mlp").pp("c_fc"))?,
                        fc_out: conv1d(inner, h, l.pp("mlp").pp("c_proj"))?,
                        act,
                    },
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = Norm::Layer(layer_norm(h, eps, root.pp("ln_f"))?);
        let lm_head = Linear::new(embed.embeddings().clone(), None::<Tensor>);
        Ok(CausalModel {
            embed,
            positions: PositionEncoding::Learned(wpe),
            layers: blocks,
            norm,
            lm_head,
            max_context,
        })
    };
    build().map_err(|e| super::loader::weights_error(path.parent().unwrap_or(path), e))
}

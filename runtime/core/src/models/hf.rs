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
    pub rope_scaling: RopeScaling,
    /// Width of one attention head (config.json's `head_dim`, else hidden / heads).
    pub head_dim: usize,
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
        let invalid_heads = |message: String| ModelError::InvalidFile {
            path: path.to_path_buf(),
            message,
        };
        // `head_dim` may differ from hidden / heads (Gemma, Qwen3, some Llama
        // derivatives): q and o are then heads x head_dim wide.
        let head_dim = match v.get("head_dim").and_then(Value::as_u64) {
            Some(d) => {
                let d = d as usize;
                if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
                    return Err(invalid_heads(format!(
                        "{num_attention_heads} attention heads are not a multiple of {num_key_value_heads} key/value heads"
                    )));
                }
                if d == 0 || d % 2 != 0 {
                    return Err(invalid_heads(format!(
                        "head_dim {d} must be even for rotary embeddings"
                    )));
                }
                d
            }
            None => check_heads(hidden_size, num_attention_heads, num_key_value_heads)
                .map_err(invalid_heads)?,
        };
        // transformers 5 writes rope_parameters.rope_theta; older files rope_theta.
        let rope_theta = match v.get("rope_parameters") {
            Some(p) => f64_field(p, "rope_theta", f64_field(v, "rope_theta", 10_000.0)),
            None => f64_field(v, "rope_theta", 10_000.0),
        };
        let rope_scaling = rope_scaling(v, path)?;
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
        Ok(Self {
            hidden_size,
            intermediate_size: usize_field(v, "intermediate_size", path)?,
            num_hidden_layers: usize_field(v, "num_hidden_layers", path)?,
            num_attention_heads,
            num_key_value_heads,
            vocab_size: usize_field(v, "vocab_size", path)?,
            rope_theta,
            rope_scaling,
            head_dim,
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

/// How RoPE's frequencies are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Llama 3.1/3.2's: long wavelengths divided by `factor`, short ones kept, those in
    /// between interpolated (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The RoPE scaling config.json asks for: the default or llama3; every other kind
/// (yarn, linear, dynamic, ...) would load and run but answer with wrong positions,
/// so it is refused by name.
pub fn rope_scaling(v: &Value, path: &Path) -> std::result::Result<RopeScaling, ModelError> {
    let (kind, scaling) = rope_kind(v);
    match (kind, scaling) {
        ("llama3", Some(s)) => {
            let field = |name: &str| {
                s.get(name)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| ModelError::InvalidFile {
                        path: path.to_path_buf(),
                        message: format!(
                            "rope_scaling.{name} is missing (rope_type llama3 needs it)"
                        ),
                    })
            };
            Ok(RopeScaling::Llama3 {
                factor: field("factor")?,
                low_freq_factor: field("low_freq_factor")?,
                high_freq_factor: field("high_freq_factor")?,
                original_max_position_embeddings: field("original_max_position_embeddings")?,
            })
        }
        _ => check_rope_type(v, path).map(|()| RopeScaling::Default),
    }
}

/// The RoPE kind config.json names (transformers 5's `rope_parameters`, older files'
/// `rope_scaling`), and that section.
fn rope_kind(v: &Value) -> (&str, Option<&Value>) {
    let scaling = v
        .get("rope_parameters")
        .or_else(|| v.get("rope_scaling"))
        .filter(|s| !s.is_null());
    let kind = scaling
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    (kind, scaling)
}

/// RoPE's inverse frequencies for `head_dim` and `theta` under `scaling`.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: RopeScaling) -> Vec<f32> {
    let base = (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64));
    match scaling {
        RopeScaling::Default => base.map(|f| f as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            base.map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let scaled = if wavelen > low_freq_wavelen {
                    f / factor
                } else {
                    f
                };
                let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                if medium {
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                } else {
                    scaled as f32
                }
            })
            .collect()
        }
    }
}

/// Only the default RoPE: a scaled variant would load and run but answer with wrong
/// positions, so it is refused by name.
pub(crate) fn check_rope_type(v: &Value, path: &Path) -> std::result::Result<(), ModelError> {
    let (kind, _) = rope_kind(v);
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
    let head_dim = cfg.head_dim;
    let kv_dim = cfg.num_key_value_heads * head_dim;
    let q_dim = cfg.num_attention_heads * head_dim;
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
                q: proj(qkv_bias, h, q_dim, a.pp("q_proj"))?,
                k: proj(qkv_bias, h, kv_dim, a.pp("k_proj"))?,
                v: proj(qkv_bias, h, kv_dim, a.pp("v_proj"))?,
                o: proj(o_bias, q_dim, h, a.pp("o_proj"))?,
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
    let rotary = RotaryTable::from_inv_freq(
        inv_freq(head_dim, cfg.rope_theta, cfg.rope_scaling),
        cfg.max_position_embeddings,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LLAMA3: RopeScaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64.0,
    };

    #[test]
    fn llama3_keeps_short_wavelengths_divides_long_ones_and_interpolates_between() {
        let plain = inv_freq(16, 10_000.0, RopeScaling::Default);
        let scaled = inv_freq(16, 10_000.0, LLAMA3);
        let wavelen = |f: f32| 2.0 * std::f64::consts::PI / f64::from(f);
        for (p, s) in plain.iter().zip(&scaled) {
            let w = wavelen(*p);
            if w < 16.0 {
                assert_eq!(p, s, "wavelength {w} < 64/4 is kept");
            } else if w > 64.0 {
                assert!(
                    (p / 8.0 - s).abs() < 1e-9,
                    "wavelength {w} > 64 is divided by 8"
                );
            } else {
                assert!(s < p && *s > p / 8.0, "wavelength {w} is interpolated");
            }
        }
        assert_eq!(plain[0], 1.0);
    }

    #[test]
    fn rope_kinds_are_read_or_refused_by_name() {
        let path = Path::new("config.json");
        let llama32 = json!({"rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}});
        assert!(
            matches!(rope_scaling(&llama32, path).unwrap(), RopeScaling::Llama3 { factor, .. } if factor == 32.0)
        );
        assert_eq!(
            rope_scaling(&json!({"rope_scaling": null}), path).unwrap(),
            RopeScaling::Default
        );
        let missing = json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}});
        let err = rope_scaling(&missing, path).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.low_freq_factor"), "{err}");
        let yarn = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        assert!(rope_scaling(&yarn, path)
            .unwrap_err()
            .to_string()
            .contains("\"yarn\""));
    }
}

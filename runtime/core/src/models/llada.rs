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
    /// Rotary embedding in f32 under bf16/f16 weights (upstream's default: true).
    pub rope_full_precision: bool,
    pub rms_norm_eps: f64,
    pub max_sequence_length: usize,
    pub weight_tying: bool,
}

/// The switches of LLaDA's (OLMo's) `ModelConfig` this file implements one setting of:
/// (field, upstream default when absent, the values accepted, what the others would
/// need). Every other value is refused at load, by name, rather than run wrong.
fn switches() -> Vec<(&'static str, Value, Vec<Value>, &'static str)> {
    let s = |v: &str| Value::String(v.into());
    let b = Value::Bool;
    vec![
        (
            "block_type",
            s("sequential"),
            vec![s("llama")],
            "the OLMo sequential/parallel blocks",
        ),
        (
            "activation_type",
            s("swiglu"),
            vec![s("silu")],
            "another MLP activation",
        ),
        (
            "layer_norm_type",
            s("default"),
            vec![s("rms")],
            "LayerNorm instead of RMSNorm",
        ),
        (
            "layer_norm_with_affine",
            b(true),
            vec![b(true)],
            "norms without weights",
        ),
        (
            "bias_for_layer_norm",
            Value::Null,
            vec![Value::Null, b(false)],
            "norm biases",
        ),
        (
            "rope",
            b(false),
            vec![b(true)],
            "positions without rotary embeddings",
        ),
        ("alibi", b(false), vec![b(false)], "ALiBi positions"),
        (
            "attention_layer_norm",
            b(false),
            vec![b(false)],
            "query/key norms",
        ),
        ("include_bias", b(false), vec![b(false)], "linear biases"),
        (
            "include_qkv_bias",
            b(false),
            vec![b(false), Value::Null],
            "q/k/v biases",
        ),
        (
            "scale_logits",
            b(false),
            vec![b(false)],
            "logits scaled by 1/sqrt(d_model)",
        ),
        (
            "input_emb_norm",
            b(false),
            vec![b(false)],
            "a norm on the input embeddings",
        ),
        (
            "multi_query_attention",
            Value::Null,
            vec![Value::Null, b(false)],
            "multi-query attention (set n_kv_heads instead)",
        ),
    ]
}

/// Refuses, naming the field, every switch set to what this file does not implement.
pub fn check_switches(v: &Value, path: &Path) -> std::result::Result<(), ModelError> {
    for (field, default, accepted, needs) in switches() {
        let value = v.get(field).cloned().unwrap_or(default);
        if !accepted.contains(&value) {
            return Err(ModelError::InvalidFile {
                path: path.to_path_buf(),
                message: format!(
                    "{field}: {value} is not supported (it needs {needs}; dfastllm runs {field} = {})",
                    accepted[0]
                ),
            });
        }
    }
    Ok(())
}

impl Config {
    pub fn from_value(v: &Value, path: &Path) -> std::result::Result<Self, ModelError> {
        check_switches(v, path)?;
        let d_model = usize_field(v, "d_model", path)?;
        let n_heads = usize_field(v, "n_heads", path)?;
        // Upstream leaves n_kv_heads null for plain multi-head attention.
        let n_kv_heads = usize_field(v, "n_kv_heads", path).unwrap_or(n_heads);
        // Upstream's defaults: an absent embedding_size is 50304, a null one vocab_size.
        let embedding_size = match v.get("embedding_size") {
            None => 50_304,
            Some(Value::Null) => usize_field(v, "vocab_size", path)?,
            Some(_) => usize_field(v, "embedding_size", path)?,
        };
        let mlp_hidden_size = match v.get("mlp_hidden_size") {
            None | Some(Value::Null) => {
                v.get("mlp_ratio").and_then(Value::as_u64).unwrap_or(4) as usize * d_model
            }
            Some(_) => usize_field(v, "mlp_hidden_size", path)?,
        };
        check_heads(d_model, n_heads, n_kv_heads).map_err(|message| ModelError::InvalidFile {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(Self {
            d_model,
            n_layers: usize_field(v, "n_layers", path)?,
            n_heads,
            n_kv_heads,
            mlp_hidden_size,
            embedding_size,
            rope_theta: f64_field(v, "rope_theta", 10_000.0),
            rope_full_precision: v
                .get("rope_full_precision")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            rms_norm_eps: f64_field(v, "rms_norm_eps", 1e-5),
            max_sequence_length: usize_field(v, "max_sequence_length", path).unwrap_or(1024),
            // Upstream ties the LM head unless a config says otherwise (every release does).
            weight_tying: v
                .get("weight_tying")
                .and_then(Value::as_bool)
                .unwrap_or(true),
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
            if cfg.rope_full_precision {
                DType::F32
            } else {
                vb.dtype()
            },
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

    fn kv_bytes_per_token(&self) -> usize {
        self.trunk.kv_bytes_per_token(self.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real() -> Value {
        serde_json::from_str(include_str!(
            "../../../tests/fixtures/real/llada-8b-instruct/config.json"
        ))
        .unwrap()
    }

    #[test]
    fn the_real_llada_8b_config_reads_as_upstream_reads_it() {
        let c = Config::from_value(&real(), Path::new("config.json")).unwrap();
        assert!(c.rope_full_precision);
        let mut v = real();
        v["rope_full_precision"] = serde_json::json!(false);
        assert!(
            !Config::from_value(&v, Path::new("c"))
                .unwrap()
                .rope_full_precision
        );
        v.as_object_mut().unwrap().remove("rope_full_precision");
        assert!(
            Config::from_value(&v, Path::new("c"))
                .unwrap()
                .rope_full_precision,
            "upstream's default"
        );
        assert_eq!(
            (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads),
            (4096, 32, 32, 32)
        );
        assert_eq!((c.mlp_hidden_size, c.embedding_size), (12288, 126464));
        assert_eq!((c.max_sequence_length, c.weight_tying), (4096, false));
        assert_eq!(c.rope_theta, 500000.0);
    }

    #[test]
    fn every_unimplemented_switch_is_refused_by_name() {
        let flips = [
            ("block_type", serde_json::json!("sequential")),
            ("activation_type", serde_json::json!("swiglu")),
            ("layer_norm_type", serde_json::json!("default")),
            ("rope", serde_json::json!(false)),
            ("alibi", serde_json::json!(true)),
            ("attention_layer_norm", serde_json::json!(true)),
            ("include_bias", serde_json::json!(true)),
            ("include_qkv_bias", serde_json::json!(true)),
            ("scale_logits", serde_json::json!(true)),
            ("input_emb_norm", serde_json::json!(true)),
            ("layer_norm_with_affine", serde_json::json!(false)),
        ];
        for (field, value) in flips {
            let mut v = real();
            v[field] = value;
            let err = Config::from_value(&v, Path::new("config.json"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("config.json: {field}: ")), "{err}");
        }
        // Absent switches take upstream's defaults, which are not LLaDA's settings.
        let mut v = real();
        v.as_object_mut().unwrap().remove("rope");
        assert!(Config::from_value(&v, Path::new("c")).is_err());
    }

    #[test]
    fn missing_sizes_take_upstreams_defaults() {
        let mut v = real();
        let o = v.as_object_mut().unwrap();
        for k in [
            "max_sequence_length",
            "weight_tying",
            "mlp_hidden_size",
            "embedding_size",
        ] {
            o.remove(k);
        }
        let c = Config::from_value(&v, Path::new("c")).unwrap();
        assert_eq!(c.max_sequence_length, 1024);
        assert!(c.weight_tying);
        assert_eq!(c.mlp_hidden_size, 4 * 4096, "mlp_ratio x d_model");
        assert_eq!(c.embedding_size, 50304);
    }
}

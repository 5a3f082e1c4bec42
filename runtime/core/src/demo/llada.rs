//! LLaDA-8B-Instruct's layout: OLMo-style `model.transformer.*` weight names,
//! `d_model`/`n_heads` config fields, a Llama-3 chat template, `<|mdm_mask|>`.

use serde_json::{json, Value};

use super::like::SizeFields;
use super::{DemoSpec, Layout, Tokens, WeightSet};

pub struct Llada;

const CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

impl Layout for Llada {
    fn special_tokens(&self) -> &'static [&'static str] {
        &[
            "<|startoftext|>",
            "<|endoftext|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|mdm_mask|>",
        ]
    }

    fn ties_by_default(&self) -> bool {
        true
    }

    fn size_fields(&self) -> SizeFields {
        SizeFields {
            layers: "n_layers",
            hidden: "d_model",
            heads: "n_heads",
            kv_heads: Some("n_kv_heads"),
            intermediate: "mlp_hidden_size",
            vocab: &["embedding_size", "vocab_size"],
            context: "max_sequence_length",
            tied: "weight_tying",
        }
    }

    fn weights(&self, spec: &DemoSpec, tied: bool, ws: &mut WeightSet) {
        let (h, v, i, kv) = spec.dims();
        ws.embedding("model.transformer.wte", v, h);
        for l in 0..spec.layers {
            let b = format!("model.transformer.blocks.{l}");
            ws.norm(&format!("{b}.attn_norm"), h);
            ws.linear(&format!("{b}.q_proj"), h, h);
            ws.linear(&format!("{b}.k_proj"), kv, h);
            ws.linear(&format!("{b}.v_proj"), kv, h);
            ws.linear(&format!("{b}.attn_out"), h, h);
            ws.norm(&format!("{b}.ff_norm"), h);
            ws.linear(&format!("{b}.ff_proj"), i, h);
            ws.linear(&format!("{b}.up_proj"), i, h);
            ws.linear(&format!("{b}.ff_out"), h, i);
        }
        ws.norm("model.transformer.ln_f", h);
        if !tied {
            ws.linear("model.transformer.ff_out", v, h);
        }
    }

    fn config(&self, spec: &DemoSpec) -> Value {
        let eos = self.id("<|endoftext|>");
        json!({
            "activation_type": "silu",
            "alibi": false,
            "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0,
            "block_type": "llama",
            "d_model": spec.hidden,
            "embedding_size": spec.vocab,
            "eos_token_id": eos,
            "include_bias": false,
            "include_qkv_bias": false,
            "layer_norm_type": "rms",
            "mask_token_id": self.id("<|mdm_mask|>"),
            "max_sequence_length": spec.max_context,
            "mlp_hidden_size": spec.intermediate(),
            "mlp_ratio": spec.intermediate() / spec.hidden,
            "model_type": "llada",
            "n_heads": spec.heads,
            "n_kv_heads": spec.kv_heads(),
            "n_layers": spec.layers,
            "pad_token_id": eos,
            "rms_norm_eps": 1e-5,
            "rope": true,
            "rope_theta": 500000.0,
            "torch_dtype": spec.dtype.torch_name(),
            "use_cache": false,
            "vocab_size": spec.vocab,
            "weight_tying": false,
        })
    }

    fn generation_config(&self) -> Value {
        let eos = self.id("<|endoftext|>");
        json!({
            "bos_token_id": self.id("<|startoftext|>"),
            "eos_token_id": [eos, self.id("<|eot_id|>")],
            "pad_token_id": eos,
        })
    }

    fn tokens(&self) -> Tokens {
        Tokens {
            bos: "<|startoftext|>",
            eos: "<|endoftext|>",
            pad: "<|endoftext|>",
            chat_template: Some(CHAT_TEMPLATE),
        }
    }
}

//! Phi-2's layout: biases everywhere, LayerNorm, a `dense` attention output and
//! partial rotary embedding; no chat template (chat requests are refused).

use serde_json::{json, Value};

use super::{endoftext_generation_config, DemoSpec, Layout, Tokens, WeightSet};

pub struct Phi;

impl Layout for Phi {
    fn special_tokens(&self) -> &'static [&'static str] {
        &["<|endoftext|>"]
    }

    fn weights(&self, spec: &DemoSpec, tied: bool, ws: &mut WeightSet) {
        let (h, v, i, kv) = spec.dims();
        ws.embedding("model.embed_tokens", v, h);
        for l in 0..spec.layers {
            let b = format!("model.layers.{l}");
            ws.layer_norm(&format!("{b}.input_layernorm"), h);
            for (proj, out) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("dense", h)] {
                ws.linear_bias(&format!("{b}.self_attn.{proj}"), out, h);
            }
            ws.linear_bias(&format!("{b}.mlp.fc1"), i, h);
            ws.linear_bias(&format!("{b}.mlp.fc2"), h, i);
        }
        ws.layer_norm("model.final_layernorm", h);
        if !tied {
            ws.linear_bias("lm_head", v, h);
        }
    }

    fn config(&self, spec: &DemoSpec) -> Value {
        let eos = self.id("<|endoftext|>");
        json!({
            "architectures": ["PhiForCausalLM"],
            "bos_token_id": eos,
            "eos_token_id": eos,
            "hidden_act": "gelu_new",
            "hidden_size": spec.hidden,
            "intermediate_size": spec.intermediate(),
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": spec.max_context,
            "model_type": "phi",
            "num_attention_heads": spec.heads,
            "num_hidden_layers": spec.layers,
            "num_key_value_heads": spec.kv_heads(),
            "partial_rotary_factor": 0.5,
            "qk_layernorm": false,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "torch_dtype": spec.dtype.torch_name(),
            "vocab_size": spec.vocab,
        })
    }

    fn generation_config(&self) -> Value {
        endoftext_generation_config(self)
    }

    fn tokens(&self) -> Tokens {
        Tokens::endoftext_only()
    }
}

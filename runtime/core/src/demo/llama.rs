//! Llama's layout (TinyLlama-Chat's config and Zephyr chat template), and the
//! `model.layers.*` weight layout Dream and Qwen2 share with it.

use serde_json::{json, Value};

use super::{DemoSpec, Layout, Tokens, WeightSet};

pub struct Llama;

/// TinyLlama-Chat's (Zephyr's) template.
const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}";

/// How a Llama-family checkpoint varies its weights.
pub(super) struct LlamaLike {
    pub qkv_bias: bool,
    /// The LM head is the embedding (no `lm_head.weight`).
    pub tied_head: bool,
}

pub(super) fn llama_like_weights(spec: &DemoSpec, ws: &mut WeightSet, like: LlamaLike) {
    let (h, v, i, kv) = spec.dims();
    // A tied LM head scores each token by its embedding: with unit-scale embeddings the
    // residual stream keeps the input token on top and greedy decoding repeats it
    // forever, which makes a useless parity test; tied models use a smaller scale.
    let embedding_std = if like.tied_head { 0.1 } else { 1.0 };
    ws.embedding_std("model.embed_tokens", v, h, embedding_std);
    for l in 0..spec.layers {
        let b = format!("model.layers.{l}");
        ws.norm(&format!("{b}.input_layernorm"), h);
        for (proj, out) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
            ws.linear(&format!("{b}.self_attn.{proj}"), out, h);
            if like.qkv_bias {
                ws.bias(&format!("{b}.self_attn.{proj}"), out);
            }
        }
        ws.linear(&format!("{b}.self_attn.o_proj"), h, h);
        ws.norm(&format!("{b}.post_attention_layernorm"), h);
        ws.linear(&format!("{b}.mlp.gate_proj"), i, h);
        ws.linear(&format!("{b}.mlp.up_proj"), i, h);
        ws.linear(&format!("{b}.mlp.down_proj"), h, i);
    }
    ws.norm("model.norm", h);
    if !like.tied_head {
        ws.linear("lm_head", v, h);
    }
}

impl Layout for Llama {
    fn special_tokens(&self) -> &'static [&'static str] {
        &["<s>", "</s>"]
    }

    fn default_kv_heads(&self, heads: usize) -> usize {
        (heads / 2).max(1)
    }

    fn weights(&self, spec: &DemoSpec, tied: bool, ws: &mut WeightSet) {
        let like = LlamaLike {
            qkv_bias: false,
            tied_head: tied,
        };
        llama_like_weights(spec, ws, like);
    }

    fn config(&self, spec: &DemoSpec) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "bos_token_id": self.id("<s>"),
            "eos_token_id": self.id("</s>"),
            "hidden_act": "silu",
            "hidden_size": spec.hidden,
            "intermediate_size": spec.intermediate(),
            "max_position_embeddings": spec.max_context,
            "model_type": "llama",
            "num_attention_heads": spec.heads,
            "num_hidden_layers": spec.layers,
            "num_key_value_heads": spec.kv_heads(),
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "torch_dtype": spec.dtype.torch_name(),
            "vocab_size": spec.vocab,
        })
    }

    fn generation_config(&self) -> Value {
        json!({
            "bos_token_id": self.id("<s>"),
            "eos_token_id": self.id("</s>"),
        })
    }

    fn tokens(&self) -> Tokens {
        Tokens {
            bos: "<s>",
            eos: "</s>",
            pad: "</s>",
            chat_template: Some(CHAT_TEMPLATE),
        }
    }
}

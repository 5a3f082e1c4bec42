//! Dream-v0-Instruct-7B's layout: Qwen2.5's weights and ChatML template with a
//! `<|mask|>` token, `DreamModel` in config.json.

use serde_json::{json, Value};

use super::llama::{llama_like_weights, LlamaLike};
use super::qwen2::{chatml_generation_config, chatml_tokens};
use super::{DemoSpec, Layout, Tokens, WeightSet};

pub struct Dream;

impl Layout for Dream {
    fn special_tokens(&self) -> &'static [&'static str] {
        &["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
    }

    fn default_kv_heads(&self, heads: usize) -> usize {
        (heads / 2).max(1)
    }

    fn weights(&self, spec: &DemoSpec, tied: bool, ws: &mut WeightSet) {
        let like = LlamaLike {
            qkv_bias: true,
            tied_head: tied,
        };
        llama_like_weights(spec, ws, like);
    }

    fn config(&self, spec: &DemoSpec) -> Value {
        let eos = self.id("<|endoftext|>");
        json!({
            "architectures": ["DreamModel"],
            "attention_dropout": 0.0,
            "bos_token_id": eos,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": spec.hidden,
            "initializer_range": 0.02,
            "intermediate_size": spec.intermediate(),
            "mask_token_id": self.id("<|mask|>"),
            "max_position_embeddings": spec.max_context,
            "model_type": "Dream",
            "num_attention_heads": spec.heads,
            "num_hidden_layers": spec.layers,
            "num_key_value_heads": spec.kv_heads(),
            "pad_token_id": eos,
            "rms_norm_eps": 1e-6,
            "rope_scaling": null,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": false,
            "torch_dtype": spec.dtype.torch_name(),
            "use_cache": false,
            "use_sliding_window": false,
            "vocab_size": spec.vocab,
        })
    }

    fn generation_config(&self) -> Value {
        chatml_generation_config(self)
    }

    fn tokens(&self) -> Tokens {
        chatml_tokens()
    }
}

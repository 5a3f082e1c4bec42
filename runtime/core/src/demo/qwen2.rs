//! Qwen2's layout (Qwen2.5-0.5B-Instruct's): Llama weights with q/k/v biases and a tied
//! LM head, ChatML special tokens and template.

use serde_json::{json, Value};

use super::llama::{llama_like_weights, LlamaLike};
use super::{DemoSpec, Layout, Tokens, WeightSet};

pub struct Qwen2;

/// Qwen2.5's ChatML template (Dream, trained from Qwen2.5, ships it too).
pub(super) const CHATML_TEMPLATE: &str = "{%- for message in messages %}{%- if loop.first and message.role != 'system' %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";

/// ChatML checkpoints end an answer at EOS or at the end of the turn.
pub(super) fn chatml_generation_config(layout: &dyn Layout) -> Value {
    let eos = layout.id("<|endoftext|>");
    json!({
        "bos_token_id": eos,
        "eos_token_id": [eos, layout.id("<|im_end|>")],
        "pad_token_id": eos,
    })
}

pub(super) fn chatml_tokens() -> Tokens {
    Tokens {
        bos: "<|endoftext|>",
        eos: "<|im_end|>",
        pad: "<|endoftext|>",
        chat_template: Some(CHATML_TEMPLATE),
    }
}

impl Layout for Qwen2 {
    fn special_tokens(&self) -> &'static [&'static str] {
        &["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    }

    fn default_kv_heads(&self, heads: usize) -> usize {
        (heads / 2).max(1)
    }

    /// Qwen2's small releases tie the LM head to the embedding.
    fn demo_ties(&self) -> bool {
        true
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
            "architectures": ["Qwen2ForCausalLM"],
            "bos_token_id": eos,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": spec.hidden,
            "intermediate_size": spec.intermediate(),
            "max_position_embeddings": spec.max_context,
            "model_type": "qwen2",
            "num_attention_heads": spec.heads,
            "num_hidden_layers": spec.layers,
            "num_key_value_heads": spec.kv_heads(),
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": true,
            "torch_dtype": spec.dtype.torch_name(),
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

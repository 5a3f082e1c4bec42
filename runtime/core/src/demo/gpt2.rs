//! GPT-2's layout: `transformer.h.*` with `Conv1D` weights stored `[in, out]`, learned
//! positions, a tied LM head; no chat template.

use serde_json::{json, Value};

use super::like::SizeFields;
use super::{endoftext_generation_config, DemoSpec, Layout, Tokens, WeightSet};

pub struct Gpt2;

impl Layout for Gpt2 {
    fn special_tokens(&self) -> &'static [&'static str] {
        &["<|endoftext|>"]
    }

    fn demo_ties(&self) -> bool {
        true
    }

    fn ties_by_default(&self) -> bool {
        true
    }

    fn size_fields(&self) -> SizeFields {
        SizeFields {
            layers: "n_layer",
            hidden: "n_embd",
            heads: "n_head",
            kv_heads: None,
            intermediate: "n_inner",
            vocab: &["vocab_size"],
            context: "n_positions",
            tied: "tie_word_embeddings",
        }
    }

    /// GPT-2's LM head is always the embedding.
    fn weights(&self, spec: &DemoSpec, _tied: bool, ws: &mut WeightSet) {
        let (h, v, i, _) = spec.dims();
        // Tied LM head: a small embedding scale (see `LlamaLike::embedding_std`).
        ws.embedding_std("transformer.wte", v, h, 0.1);
        ws.embedding("transformer.wpe", spec.max_context, h);
        for l in 0..spec.layers {
            let b = format!("transformer.h.{l}");
            ws.layer_norm(&format!("{b}.ln_1"), h);
            ws.conv1d(&format!("{b}.attn.c_attn"), h, 3 * h);
            ws.conv1d(&format!("{b}.attn.c_proj"), h, h);
            ws.layer_norm(&format!("{b}.ln_2"), h);
            ws.conv1d(&format!("{b}.mlp.c_fc"), h, i);
            ws.conv1d(&format!("{b}.mlp.c_proj"), i, h);
        }
        ws.layer_norm("transformer.ln_f", h);
    }

    fn config(&self, spec: &DemoSpec) -> Value {
        let eos = self.id("<|endoftext|>");
        json!({
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "bos_token_id": eos,
            "eos_token_id": eos,
            "layer_norm_epsilon": 1e-5,
            "model_type": "gpt2",
            "n_embd": spec.hidden,
            "n_head": spec.heads,
            "n_inner": spec.intermediate(),
            "n_layer": spec.layers,
            "n_positions": spec.max_context,
            "scale_attn_by_inverse_layer_idx": false,
            "scale_attn_weights": true,
            "tie_word_embeddings": true,
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

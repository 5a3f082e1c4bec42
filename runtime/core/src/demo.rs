//! `dfastllm demo-model`: tiny checkpoints with random weights in the real upstream
//! layouts (config field names, weight names, tokenizer files), so every test and demo
//! exercises the same loading code as a real LLaDA, Dream, Llama, Qwen2, Phi or GPT-2
//! checkpoint without downloading one, and `transformers` loads them too. Output is a
//! pure function of the spec: same seed, same bytes.
//!
//! The vocabulary is byte-level (ids 0-255 are the bytes, so any text encodes), followed
//! by the architecture's real special tokens under their real names. Their ids are
//! renumbered to fit the tiny vocabulary; config.json carries them, as upstream does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::models::Architecture;
use crate::models::DEMO_MARKER;
use crate::tokenizer::byte_to_char;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Number format of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoDType {
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for DemoDType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!(
                "invalid dtype {other:?}: expected f32, f16 or bf16"
            )),
        }
    }
}

impl DemoDType {
    fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoSpec {
    pub arch: Architecture,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    /// Key/value heads; default: half the heads for Dream, Llama and Qwen2 (GQA like
    /// upstream), all of them otherwise.
    pub kv_heads: Option<usize>,
    /// MLP width; default 2 x hidden.
    pub intermediate: Option<usize>,
    pub vocab: usize,
    pub seed: u64,
    pub dtype: DemoDType,
    /// Number of safetensors shards (> 1 writes `model.safetensors.index.json`).
    pub shards: usize,
    pub max_context: usize,
}

impl DemoSpec {
    /// The defaults of `dfastllm demo-model`: 2 layers, hidden 64, 4 heads, vocab 320.
    pub fn tiny(arch: Architecture) -> Self {
        Self {
            arch,
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: None,
            intermediate: None,
            vocab: 320,
            seed: 0,
            dtype: DemoDType::F32,
            shards: 1,
            max_context: 1024,
        }
    }

    fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(match self.arch {
            Architecture::Dream | Architecture::Llama | Architecture::Qwen2 => {
                (self.heads / 2).max(1)
            }
            Architecture::Llada | Architecture::Phi | Architecture::Gpt2 => self.heads,
        })
    }

    fn intermediate(&self) -> usize {
        self.intermediate.unwrap_or(2 * self.hidden)
    }
}

/// Special tokens of each architecture, in id order after the 256 byte tokens.
fn special_token_names(arch: Architecture) -> &'static [&'static str] {
    match arch {
        Architecture::Llada => &[
            "<|startoftext|>",
            "<|endoftext|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|mdm_mask|>",
        ],
        Architecture::Dream => &["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"],
        Architecture::Llama => &["<s>", "</s>"],
        Architecture::Qwen2 => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        Architecture::Phi | Architecture::Gpt2 => &["<|endoftext|>"],
    }
}

fn special_id(arch: Architecture, name: &str) -> u32 {
    let index = special_token_names(arch)
        .iter()
        .position(|n| *n == name)
        .expect("special token names are listed per architecture");
    256 + index as u32
}

const LLADA_CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const DREAM_CHAT_TEMPLATE: &str = "{%- for message in messages %}{%- if loop.first and message.role != 'system' %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";

/// TinyLlama-Chat's (Zephyr's) template.
const ZEPHYR_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}";

fn build_tokenizer(arch: Architecture) -> Result<Tokenizer, DemoError> {
    let vocab: tokenizers::models::bpe::Vocab = (0..=255u8)
        .map(|b| (byte_to_char(b).to_string(), u32::from(b)))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .map_err(|e| DemoError::Invalid(format!("building the demo tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = special_token_names(arch)
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Seeded weight initialiser: every tensor is drawn from one stream, in a fixed order.
struct Init {
    rng: ChaCha8Rng,
}

impl Init {
    fn normal(&mut self) -> f32 {
        // Box-Muller; keeps the output independent of any distribution crate's version.
        let u1: f64 = self.rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = self.rng.random();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    fn tensor(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n).map(|_| mean + std * self.normal()).collect()
    }
}

struct WeightSet {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    init: Init,
}

impl WeightSet {
    fn linear(&mut self, name: &str, out: usize, inp: usize) {
        let w = self.init.tensor(out * inp, 0.0, 1.0 / (inp as f32).sqrt());
        self.tensors
            .push((format!("{name}.weight"), vec![out, inp], w));
    }

    fn bias(&mut self, name: &str, out: usize) {
        let b = self.init.tensor(out, 0.0, 0.1);
        self.tensors.push((format!("{name}.bias"), vec![out], b));
    }

    fn norm(&mut self, name: &str, size: usize) {
        let w = self.init.tensor(size, 1.0, 0.1);
        self.tensors.push((format!("{name}.weight"), vec![size], w));
    }

    fn layer_norm(&mut self, name: &str, size: usize) {
        self.norm(name, size);
        self.bias(name, size);
    }

    fn linear_bias(&mut self, name: &str, out: usize, inp: usize) {
        self.linear(name, out, inp);
        self.bias(name, out);
    }

    /// GPT-2's `Conv1D`: the weight stored `[inp, out]`, and a bias.
    fn conv1d(&mut self, name: &str, inp: usize, out: usize) {
        let w = self.init.tensor(inp * out, 0.0, 1.0 / (inp as f32).sqrt());
        self.tensors
            .push((format!("{name}.weight"), vec![inp, out], w));
        self.bias(name, out);
    }

    fn embedding(&mut self, name: &str, rows: usize, dim: usize) {
        self.embedding_std(name, rows, dim, 1.0);
    }

    fn embedding_std(&mut self, name: &str, rows: usize, dim: usize, std: f32) {
        let w = self.init.tensor(rows * dim, 0.0, std);
        self.tensors
            .push((format!("{name}.weight"), vec![rows, dim], w));
    }
}

fn tied_embedding_std(arch: Architecture) -> f32 {
    match arch {
        Architecture::Qwen2 | Architecture::Gpt2 => 0.1,
        _ => 1.0,
    }
}

fn weights(spec: &DemoSpec) -> WeightSet {
    let mut ws = WeightSet {
        tensors: Vec::new(),
        init: Init {
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
        },
    };
    let (h, v, i) = (spec.hidden, spec.vocab, spec.intermediate());
    let kv = spec.kv_heads() * (h / spec.heads);
    match spec.arch {
        Architecture::Llada => {
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
            ws.linear("model.transformer.ff_out", v, h);
        }
        Architecture::Dream | Architecture::Llama | Architecture::Qwen2 => {
            let qkv_bias = spec.arch != Architecture::Llama;
            // A tied LM head scores each token by its embedding: with unit-scale
            // embeddings the residual stream keeps the input token on top and greedy
            // decoding repeats it forever, which makes a useless parity test.
            ws.embedding_std("model.embed_tokens", v, h, tied_embedding_std(spec.arch));
            for l in 0..spec.layers {
                let b = format!("model.layers.{l}");
                ws.norm(&format!("{b}.input_layernorm"), h);
                for (proj, out) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                    ws.linear(&format!("{b}.self_attn.{proj}"), out, h);
                    if qkv_bias {
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
            // Qwen2's small releases tie the LM head to the embedding.
            if spec.arch != Architecture::Qwen2 {
                ws.linear("lm_head", v, h);
            }
        }
        Architecture::Phi => {
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
            ws.linear_bias("lm_head", v, h);
        }
        Architecture::Gpt2 => {
            ws.embedding_std("transformer.wte", v, h, tied_embedding_std(spec.arch));
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
    }
    ws
}

fn config_json(spec: &DemoSpec) -> Value {
    let arch = spec.arch;
    let note =
        "random weights written by `dfastllm demo-model`: for tests and demos, not a trained model";
    match arch {
        Architecture::Llada => {
            let eos = special_id(arch, "<|endoftext|>");
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
                "mask_token_id": special_id(arch, "<|mdm_mask|>"),
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
                DEMO_MARKER: note,
            })
        }
        Architecture::Dream => {
            let eos = special_id(arch, "<|endoftext|>");
            json!({
                "architectures": ["DreamModel"],
                "attention_dropout": 0.0,
                "bos_token_id": eos,
                "eos_token_id": eos,
                "hidden_act": "silu",
                "hidden_size": spec.hidden,
                "initializer_range": 0.02,
                "intermediate_size": spec.intermediate(),
                "mask_token_id": special_id(arch, "<|mask|>"),
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
                DEMO_MARKER: note,
            })
        }
        Architecture::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "bos_token_id": special_id(arch, "<s>"),
            "eos_token_id": special_id(arch, "</s>"),
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
            DEMO_MARKER: note,
        }),
        Architecture::Qwen2 => {
            let eos = special_id(arch, "<|endoftext|>");
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
                DEMO_MARKER: note,
            })
        }
        Architecture::Phi => {
            let eos = special_id(arch, "<|endoftext|>");
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
                DEMO_MARKER: note,
            })
        }
        Architecture::Gpt2 => {
            let eos = special_id(arch, "<|endoftext|>");
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
                DEMO_MARKER: note,
            })
        }
    }
}

fn generation_config_json(arch: Architecture) -> Value {
    match arch {
        Architecture::Llada => {
            let eos = special_id(arch, "<|endoftext|>");
            json!({
                "bos_token_id": special_id(arch, "<|startoftext|>"),
                "eos_token_id": [eos, special_id(arch, "<|eot_id|>")],
                "pad_token_id": eos,
            })
        }
        Architecture::Dream | Architecture::Qwen2 => {
            let eos = special_id(arch, "<|endoftext|>");
            json!({
                "bos_token_id": eos,
                "eos_token_id": [eos, special_id(arch, "<|im_end|>")],
                "pad_token_id": eos,
            })
        }
        Architecture::Llama => json!({
            "bos_token_id": special_id(arch, "<s>"),
            "eos_token_id": special_id(arch, "</s>"),
        }),
        Architecture::Phi | Architecture::Gpt2 => {
            let eos = special_id(arch, "<|endoftext|>");
            json!({"bos_token_id": eos, "eos_token_id": eos})
        }
    }
}

fn tokenizer_config_json(spec: &DemoSpec) -> Value {
    // Phi-2 and GPT-2 ship without a chat template; chat requests to them are refused.
    let (bos, eos, pad, template) = match spec.arch {
        Architecture::Llada => (
            "<|startoftext|>",
            "<|endoftext|>",
            "<|endoftext|>",
            Some(LLADA_CHAT_TEMPLATE),
        ),
        Architecture::Dream | Architecture::Qwen2 => (
            "<|endoftext|>",
            "<|im_end|>",
            "<|endoftext|>",
            Some(DREAM_CHAT_TEMPLATE),
        ),
        Architecture::Llama => ("<s>", "</s>", "</s>", Some(ZEPHYR_CHAT_TEMPLATE)),
        Architecture::Phi | Architecture::Gpt2 => {
            ("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", None)
        }
    };
    let mut config = json!({
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "model_max_length": spec.max_context,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(template) = template {
        config["chat_template"] = json!(template);
    }
    config
}

fn validate(spec: &DemoSpec) -> Result<(), DemoError> {
    let invalid = |m: String| Err(DemoError::Invalid(m));
    let min_vocab = 256 + special_token_names(spec.arch).len();
    if spec.vocab < min_vocab {
        return invalid(format!(
            "--vocab must be at least {min_vocab} (256 byte tokens + special tokens), got {}",
            spec.vocab
        ));
    }
    if spec.layers == 0 {
        return invalid("--layers must be at least 1".into());
    }
    if let Err(m) =
        crate::models::bidirectional::check_heads(spec.hidden, spec.heads, spec.kv_heads())
    {
        return invalid(format!("--hidden/--heads/--kv-heads: {m}"));
    }
    if spec.shards == 0 {
        return invalid("--shards must be at least 1".into());
    }
    if spec.max_context < 2 {
        return invalid("--max-context must be at least 2".into());
    }
    Ok(())
}

fn to_bytes(values: &[f32], dtype: DemoDType) -> Vec<u8> {
    match dtype {
        DemoDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DemoDType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        DemoDType::Bf16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    std::fs::write(path, bytes).map_err(|e| DemoError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), DemoError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| DemoError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    write_file(path, text.as_bytes())
}

fn write_weights(spec: &DemoSpec, out: &Path) -> Result<(), DemoError> {
    let set = weights(spec);
    let st_dtype = match spec.dtype {
        DemoDType::F32 => Dtype::F32,
        DemoDType::F16 => Dtype::F16,
        DemoDType::Bf16 => Dtype::BF16,
    };
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = set
        .tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, to_bytes(&values, spec.dtype)))
        .collect();
    let shards = spec.shards.min(encoded.len());
    let per_shard = encoded.len().div_ceil(shards);
    let mut weight_map = BTreeMap::new();
    let total_size: usize = encoded.iter().map(|(_, _, b)| b.len()).sum();
    for (index, chunk) in encoded.chunks(per_shard).enumerate() {
        let file_name = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", index + 1, shards)
        };
        let path = out.join(&file_name);
        let views = chunk
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(st_dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| DemoError::Invalid(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = Some(std::collections::HashMap::from([(
            "format".to_string(),
            "pt".to_string(),
        )]));
        let bytes = safetensors::serialize(views, metadata).map_err(|e| DemoError::Write {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_file(&path, &bytes)?;
        for (name, _, _) in chunk {
            weight_map.insert(name.clone(), file_name.clone());
        }
    }
    if shards > 1 {
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        write_json(&out.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}

/// Writes the checkpoint described by `spec` into `out` (created if missing).
pub fn write_demo_model(spec: &DemoSpec, out: &Path) -> Result<(), DemoError> {
    validate(spec)?;
    std::fs::create_dir_all(out).map_err(|e| DemoError::Write {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    write_json(&out.join("config.json"), &config_json(spec))?;
    write_json(
        &out.join("generation_config.json"),
        &generation_config_json(spec.arch),
    )?;
    write_json(
        &out.join("tokenizer_config.json"),
        &tokenizer_config_json(spec),
    )?;
    let tokenizer_path = out.join("tokenizer.json");
    build_tokenizer(spec.arch)?
        .save(&tokenizer_path, true)
        .map_err(|e| DemoError::Write {
            path: tokenizer_path.clone(),
            message: e.to_string(),
        })?;
    write_weights(spec, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_distinct_chars() {
        let chars: std::collections::HashSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(b' '), '\u{120}', "GPT-2 maps space to U+0120");
    }

    #[test]
    fn small_vocab_is_rejected_with_the_flag_name() {
        let spec = DemoSpec {
            vocab: 100,
            ..DemoSpec::tiny(Architecture::Llada)
        };
        let err = write_demo_model(&spec, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--vocab"), "{err}");
    }

    #[test]
    fn special_ids_follow_the_bytes() {
        assert_eq!(special_id(Architecture::Llada, "<|mdm_mask|>"), 261);
        assert_eq!(special_id(Architecture::Dream, "<|mask|>"), 259);
    }
}

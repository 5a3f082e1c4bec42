//! `dfastllm demo-model`: tiny checkpoints with random weights in the real upstream
//! layouts (config field names, weight names, tokenizer files), so every test and demo
//! exercises the same loading code as a real LLaDA, Dream, Llama, Qwen2, Phi or GPT-2
//! checkpoint without downloading one, and `transformers` loads them too. Output is a
//! pure function of the spec: same seed, same bytes.
//!
//! The vocabulary is byte-level (ids 0-255 are the bytes, so any text encodes), followed
//! by the architecture's real special tokens under their real names. Their ids are
//! renumbered to fit the tiny vocabulary; config.json carries them, as upstream does.
//!
//! One file per architecture holds its [`Layout`]: special tokens, weight names, config
//! files. Adding an architecture is one new file and one arm in [`layout`].

mod dream;
mod gpt2;
mod like;
mod llada;
mod llama;
mod phi;
mod qwen2;

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
pub use like::{write_like, Shrink};

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
        self.kv_heads
            .unwrap_or_else(|| layout(self.arch).default_kv_heads(self.heads))
    }

    fn intermediate(&self) -> usize {
        self.intermediate.unwrap_or(2 * self.hidden)
    }

    /// Hidden size, vocabulary, MLP width and key/value width: what weight shapes use.
    fn dims(&self) -> (usize, usize, usize, usize) {
        let kv = self.kv_heads() * (self.hidden / self.heads);
        (self.hidden, self.vocab, self.intermediate(), kv)
    }
}

/// The token strings tokenizer_config.json names.
struct Tokens {
    bos: &'static str,
    eos: &'static str,
    pad: &'static str,
    /// `None`: the checkpoint ships no chat template (chat requests are refused).
    chat_template: Option<&'static str>,
}

/// GPT-2 and Phi-2's generation_config.json: `<|endoftext|>` begins and ends.
fn endoftext_generation_config(layout: &dyn Layout) -> Value {
    let eos = layout.id("<|endoftext|>");
    json!({"bos_token_id": eos, "eos_token_id": eos})
}

impl Tokens {
    /// GPT-2 and Phi-2: `<|endoftext|>` for everything, no template.
    fn endoftext_only() -> Self {
        Self {
            bos: "<|endoftext|>",
            eos: "<|endoftext|>",
            pad: "<|endoftext|>",
            chat_template: None,
        }
    }
}

/// What one architecture's checkpoint looks like, as its upstream release writes it.
trait Layout: Sync {
    /// Special tokens, in id order after the 256 byte tokens.
    fn special_tokens(&self) -> &'static [&'static str];

    /// Key/value heads when the spec does not say (GQA where upstream uses it).
    fn default_kv_heads(&self, heads: usize) -> usize {
        heads
    }

    /// Every tensor, in a fixed order (the seeded values follow it); a `tied` LM head
    /// is the embedding and gets no tensor of its own.
    fn weights(&self, spec: &DemoSpec, tied: bool, ws: &mut WeightSet);

    /// Whether the demo checkpoint ties its LM head (as the family's small releases do).
    fn demo_ties(&self) -> bool {
        false
    }

    /// Whether upstream ties the LM head when config.json does not say.
    fn ties_by_default(&self) -> bool {
        false
    }

    /// Where config.json keeps the sizes.
    fn size_fields(&self) -> like::SizeFields {
        like::HF_SIZES
    }

    /// config.json, without the demo marker.
    fn config(&self, spec: &DemoSpec) -> Value;

    fn generation_config(&self) -> Value;

    fn tokens(&self) -> Tokens;

    /// The id of a special token: 256 plus its place in [`Layout::special_tokens`].
    fn id(&self, name: &str) -> u32 {
        let index = self
            .special_tokens()
            .iter()
            .position(|n| *n == name)
            .expect("layouts only name their own special tokens");
        256 + index as u32
    }
}

fn layout(arch: Architecture) -> &'static dyn Layout {
    match arch {
        Architecture::Llada => &llada::Llada,
        Architecture::Dream => &dream::Dream,
        Architecture::Llama => &llama::Llama,
        Architecture::Qwen2 => &qwen2::Qwen2,
        Architecture::Phi => &phi::Phi,
        Architecture::Gpt2 => &gpt2::Gpt2,
    }
}

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
    let specials: Vec<AddedToken> = layout(arch)
        .special_tokens()
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

fn weights(spec: &DemoSpec, tied: Option<bool>) -> WeightSet {
    let mut ws = WeightSet {
        tensors: Vec::new(),
        init: Init {
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
        },
    };
    let layout = layout(spec.arch);
    layout.weights(spec, tied.unwrap_or_else(|| layout.demo_ties()), &mut ws);
    ws
}

fn config_json(spec: &DemoSpec) -> Value {
    let mut config = layout(spec.arch).config(spec);
    config[DEMO_MARKER] = json!(
        "random weights written by `dfastllm demo-model`: for tests and demos, not a trained model"
    );
    config
}

fn tokenizer_config_json(spec: &DemoSpec) -> Value {
    let tokens = layout(spec.arch).tokens();
    let mut config = json!({
        "bos_token": tokens.bos,
        "eos_token": tokens.eos,
        "pad_token": tokens.pad,
        "model_max_length": spec.max_context,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(template) = tokens.chat_template {
        config["chat_template"] = json!(template);
    }
    config
}

fn validate(spec: &DemoSpec) -> Result<(), DemoError> {
    let invalid = |m: String| Err(DemoError::Invalid(m));
    let min_vocab = 256 + layout(spec.arch).special_tokens().len();
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

fn write_weights(spec: &DemoSpec, tied: Option<bool>, out: &Path) -> Result<(), DemoError> {
    let set = weights(spec, tied);
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
        &layout(spec.arch).generation_config(),
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
    write_weights(spec, None, out)
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
        assert_eq!(layout(Architecture::Llada).id("<|mdm_mask|>"), 261);
        assert_eq!(layout(Architecture::Dream).id("<|mask|>"), 259);
    }
}

//! Model architectures and checkpoint loading.
//!
//! A checkpoint is a directory in Hugging Face layout (config.json, *.safetensors,
//! tokenizer files). `load` reads `config.json`, picks the architecture from
//! `model_type`, memory-maps the weights and builds the model. Every diffusion model
//! answers the same question through [`DiffusionLm::forward`]: for each position of a
//! (left-padded, bidirectionally attended) batch, the logits of the token that belongs
//! there. Architecture quirks such as Dream's one-position logit shift stay inside the
//! model file, so the samplers never see them. Autoregressive models are one
//! [`causal::CausalModel`] assembled by their file (llama, qwen2, phi, gpt2).

pub mod bidirectional;
pub mod causal;
pub mod dream;
pub mod dtype;
pub mod generation_config;
pub mod gpt2;
mod hf;
pub mod llada;
pub mod llama;
mod loader;
pub mod phi;
pub mod qwen2;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

pub use bidirectional::{KvCache, KvCacheMode};
pub use dtype::{DTypeChoice, DTypeDecision};
pub use loader::{load_checkpoint, weight_files, ModelError, DEMO_MARKER};

/// Grid columns a cached pass recomputes to produce logits for `positions`, for a model
/// whose logits at column i come from hidden state `i - shift` (Dream: 1).
pub fn recomputed_columns(
    positions: &Range<usize>,
    width: usize,
    shift: usize,
    mode: KvCacheMode,
) -> candle_core::Result<Range<usize>> {
    if positions.start < shift || positions.end > width || positions.is_empty() {
        candle_core::bail!("logits window {positions:?} does not fit a grid of {width} columns")
    }
    let start = positions.start - shift;
    Ok(match mode {
        KvCacheMode::Dual => start..positions.end - shift,
        KvCacheMode::Prefix | KvCacheMode::None => start..width,
    })
}

/// How a model's answers are decoded; it decides which sampler a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Bidirectional: the answer starts masked and is unmasked in blocks.
    Diffusion,
    /// Causal: one token after another, with a key/value cache.
    Autoregressive,
}

/// Architectures the runtime can run, named as in `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llada,
    Dream,
    Llama,
    Qwen2,
    Phi,
    Gpt2,
}

impl Architecture {
    pub const ALL: [Architecture; 6] = [
        Architecture::Llada,
        Architecture::Dream,
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Phi,
        Architecture::Gpt2,
    ];

    /// The masked diffusion architectures.
    pub const DIFFUSION: [Architecture; 2] = [Architecture::Llada, Architecture::Dream];

    pub fn name(self) -> &'static str {
        match self {
            Self::Llada => "llada",
            Self::Dream => "dream",
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Phi => "phi",
            Self::Gpt2 => "gpt2",
        }
    }

    /// Masked diffusion (bidirectional, decoded by unmasking) rather than left to right.
    pub fn is_diffusion(self) -> bool {
        self.kind() == ModelKind::Diffusion
    }

    pub fn kind(self) -> ModelKind {
        match self {
            Self::Llada | Self::Dream => ModelKind::Diffusion,
            Self::Llama | Self::Qwen2 | Self::Phi | Self::Gpt2 => ModelKind::Autoregressive,
        }
    }

    /// Reads `model_type` (falling back to `architectures[0]`) from a parsed config.json.
    pub fn from_config(config: &Value) -> Result<Self, String> {
        let model_type = config.get("model_type").and_then(Value::as_str);
        let first_arch = config
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str);
        match (model_type, first_arch) {
            (Some(t), _) => t.parse(),
            (None, Some("LLaDAModelLM")) => Ok(Self::Llada),
            (None, Some("DreamModel")) => Ok(Self::Dream),
            (None, Some("LlamaForCausalLM")) => Ok(Self::Llama),
            (None, Some("Qwen2ForCausalLM")) => Ok(Self::Qwen2),
            (None, Some("PhiForCausalLM")) => Ok(Self::Phi),
            (None, Some("GPT2LMHeadModel")) => Ok(Self::Gpt2),
            (None, Some(other)) => Err(format!("unsupported architecture {other:?}")),
            (None, None) => Err("config.json has neither model_type nor architectures".into()),
        }
    }
}

impl FromStr for Architecture {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "llada" => Ok(Self::Llada),
            "dream" => Ok(Self::Dream),
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "phi" => Ok(Self::Phi),
            "gpt2" => Ok(Self::Gpt2),
            other => Err(format!(
                "unsupported architecture {other:?} (supported: llada, dream, llama, qwen2, phi, gpt2)"
            )),
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Token ids the samplers need, read from config.json and generation_config.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// [`NO_MASK`] for autoregressive models, which have no mask token.
    pub mask_id: u32,
    /// Any of these ends an answer (EOS, end-of-turn, ...), first one is the primary EOS.
    pub eos_ids: Vec<u32>,
    pub pad_id: u32,
}

/// The mask id of models without one: above every vocabulary, so no token matches it.
pub const NO_MASK: u32 = u32::MAX;

/// One forward pass's input: a left-padded grid of token ids.
///
/// Left padding keeps every row's answer region at the same columns, so a batch of
/// sequences that decode the same block shares one logits window. Positions count
/// real tokens only, which makes a padded row compute exactly what it would alone.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    /// `[B, T]` u32 rotary positions.
    pub positions: Tensor,
    /// `[B, 1, 1, T]` additive bias hiding padding keys; `None` when nothing is padded.
    pub attention_bias: Option<Tensor>,
    /// Padding columns at the start of each row.
    pub pad_lengths: Vec<usize>,
}

impl Batch {
    /// Left-pads `rows` with `pad_id` to the longest row.
    pub fn left_padded(
        rows: &[&[u32]],
        pad_id: u32,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in rows {
            let pad = width - row.len();
            ids.extend(std::iter::repeat_n(pad_id, pad).chain(row.iter().copied()));
            mask.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, row.len())));
        }
        Self::from_mask(&ids, &mask, rows.len(), width, device, dtype)
    }

    /// Builds a batch from explicit ids and a 0/1 attention mask (row-major `[B, T]`).
    pub fn from_mask(
        ids: &[u32],
        mask: &[u8],
        batch: usize,
        width: usize,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        if ids.len() != batch * width || mask.len() != batch * width {
            candle_core::bail!(
                "batch of {batch}x{width} needs {} ids and mask entries",
                batch * width
            )
        }
        let mut positions = Vec::with_capacity(ids.len());
        let mut pad_lengths = Vec::with_capacity(batch);
        for row in mask.chunks(width.max(1)).take(batch) {
            let mut next = 0u32;
            for &m in row {
                positions.push(next.saturating_sub(u32::from(m == 0)));
                next += u32::from(m != 0);
            }
            pad_lengths.push(row.iter().take_while(|&&m| m == 0).count());
        }
        let input_ids = Tensor::from_slice(ids, (batch, width), device)?;
        let positions = Tensor::from_slice(&positions, (batch, width), device)?;
        let attention_bias = if mask.iter().all(|&m| m != 0) {
            None
        } else {
            let bias: Vec<f32> = mask
                .iter()
                .map(|&m| if m != 0 { 0.0 } else { f32::NEG_INFINITY })
                .collect();
            Some(Tensor::from_vec(bias, (batch, 1, 1, width), device)?.to_dtype(dtype)?)
        };
        Ok(Self {
            input_ids,
            positions,
            attention_bias,
            pad_lengths,
        })
    }

    pub fn width(&self) -> usize {
        self.input_ids.dims().get(1).copied().unwrap_or(0)
    }

    /// The same batch with a causal `[B, 1, T, T]` bias: position i sees the real tokens
    /// at positions <= i. A padding position sees only itself, which keeps its (unused)
    /// row finite: an all-masked row would give NaN keys that leak into real rows.
    pub fn with_causal_bias(&self, dtype: DType) -> candle_core::Result<Self> {
        let (b, t) = self.input_ids.dims2()?;
        let mut bias = Vec::with_capacity(b * t * t);
        for &pad in &self.pad_lengths {
            for i in 0..t {
                for j in 0..t {
                    let seen = (j <= i && j >= pad) || j == i;
                    bias.push(if seen { 0.0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, t, t), self.input_ids.device())?;
        Ok(Self {
            attention_bias: Some(bias.to_dtype(dtype)?),
            ..self.clone()
        })
    }
}

/// A masked diffusion language model: bidirectional attention, logits for any range
/// of positions.
pub trait DiffusionLm: Send + Sync {
    /// Logits `[B, positions.len(), V]` (model dtype) for the token at each position in
    /// `positions` (grid columns); `None` means every column. Computing only the block
    /// being decoded skips most of the LM head, the largest matmul of small models.
    fn forward(
        &self,
        batch: &Batch,
        positions: Option<Range<usize>>,
    ) -> candle_core::Result<Tensor>;

    /// [`Self::forward`] that also returns every layer's keys and values for the grid.
    fn forward_capture(
        &self,
        batch: &Batch,
        positions: Range<usize>,
    ) -> candle_core::Result<(Tensor, KvCache)>;

    /// Logits for `positions` from a pass that recomputes only the columns `mode` needs
    /// (the block for `dual`, the block and everything after it for `prefix`), taking
    /// every other column's keys/values from `cache`, captured on a batch of the same
    /// shape. Approximate by design: the cached columns do not see the block's changes.
    fn forward_cached(
        &self,
        batch: &Batch,
        cache: &KvCache,
        positions: Range<usize>,
        mode: KvCacheMode,
    ) -> candle_core::Result<Tensor>;

    /// Rows of the LM head (may exceed the tokenizer's vocabulary, as in LLaDA).
    fn vocab_size(&self) -> usize;

    /// Longest sequence (prompt + answer) the model was trained for.
    fn max_context(&self) -> usize;

    fn device(&self) -> &Device;

    fn dtype(&self) -> DType;

    /// Bytes of keys and values one token of a cached sequence holds, every layer.
    fn kv_bytes_per_token(&self) -> usize;
}

/// The network of a loaded model: which kind decides how the engine decodes it.
pub enum Network {
    Diffusion(Box<dyn DiffusionLm>),
    Causal(Box<causal::CausalModel>),
}

impl Network {
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Diffusion(_) => ModelKind::Diffusion,
            Self::Causal(_) => ModelKind::Autoregressive,
        }
    }

    pub fn diffusion(&self) -> Option<&dyn DiffusionLm> {
        match self {
            Self::Diffusion(m) => Some(m.as_ref()),
            Self::Causal(_) => None,
        }
    }

    pub fn causal(&self) -> Option<&causal::CausalModel> {
        match self {
            Self::Causal(m) => Some(m),
            Self::Diffusion(_) => None,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Diffusion(m) => m.vocab_size(),
            Self::Causal(m) => m.vocab_size(),
        }
    }

    pub fn max_context(&self) -> usize {
        match self {
            Self::Diffusion(m) => m.max_context(),
            Self::Causal(m) => m.max_context(),
        }
    }

    /// Bytes of keys and values one token holds, every layer: what a sequence's cache
    /// costs per token of its length.
    pub fn kv_bytes_per_token(&self) -> usize {
        match self {
            Self::Diffusion(m) => m.kv_bytes_per_token(),
            Self::Causal(m) => m.kv_bytes_per_token(),
        }
    }
}

/// A model ready to run, with what the samplers and the API need to know about it.
pub struct LoadedModel {
    pub architecture: Architecture,
    pub network: Network,
    pub special: SpecialTokens,
    pub dtype: DType,
    /// Why `dtype` was chosen, for the load log line.
    pub dtype_reason: String,
    /// generation_config.json's sampling defaults.
    pub sampling_defaults: generation_config::SamplingDefaults,
    pub device: Device,
    pub dir: PathBuf,
    /// Set in config.json by `dfastllm demo-model`: the weights are random.
    pub is_demo: bool,
}

impl fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModel")
            .field("architecture", &self.architecture)
            .field("special", &self.special)
            .field("dtype", &self.dtype)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// `dir`'s config.json, its path, and the architecture it names.
fn read_config(dir: &Path) -> Result<(Value, PathBuf, Architecture), ModelError> {
    let config = loader::read_json(dir, "config.json")?;
    let config_path = dir.join("config.json");
    let architecture =
        Architecture::from_config(&config).map_err(|message| ModelError::InvalidFile {
            path: config_path.clone(),
            message,
        })?;
    Ok((config, config_path, architecture))
}

/// Loads the checkpoint in `dir` onto `device`.
pub fn load(dir: &Path, device: &Device, dtype: DTypeChoice) -> Result<LoadedModel, ModelError> {
    let (config, config_path, architecture) = read_config(dir)?;
    let files = weight_files(dir)?;
    let decision = dtype.resolve(
        dtype::declared(&config),
        dtype::stored(&files)?,
        device.is_cpu(),
    );
    let dtype = decision.dtype;
    let vb = loader::var_builder(&files, dtype, device)?;
    let model = network(architecture, &config, &config_path, dir, vb)?;
    let generation_config = loader::read_optional_json(dir, "generation_config.json")?;
    let special = loader::special_tokens(
        architecture,
        &config,
        generation_config.as_ref(),
        &config_path,
    )?;
    Ok(LoadedModel {
        architecture,
        network: model,
        special,
        dtype,
        dtype_reason: decision.reason,
        sampling_defaults: generation_config::SamplingDefaults::from_generation_config(
            generation_config.as_ref().unwrap_or(&Value::Null),
            !architecture.is_diffusion(),
        ),
        device: device.clone(),
        dir: dir.to_path_buf(),
        is_demo: config.get(DEMO_MARKER).is_some(),
    })
}

/// The network `config` describes, its weights from `vb`: the one dispatch on the
/// architecture.
fn network(
    architecture: Architecture,
    config: &Value,
    config_path: &Path,
    dir: &Path,
    vb: candle_nn::VarBuilder,
) -> Result<Network, ModelError> {
    let diffusion = |m: Box<dyn DiffusionLm>| Network::Diffusion(m);
    let causal = |m: causal::CausalModel| Network::Causal(Box::new(m));
    let model = match architecture {
        Architecture::Llada => {
            let cfg = llada::Config::from_value(config, config_path)?;
            diffusion(Box::new(
                llada::Llada::load(&cfg, vb).map_err(|e| loader::weights_error(dir, e))?,
            ))
        }
        Architecture::Dream => {
            let cfg = dream::Config::from_value(config, config_path)?;
            diffusion(Box::new(
                dream::Dream::load(&cfg, vb).map_err(|e| loader::weights_error(dir, e))?,
            ))
        }
        Architecture::Llama => causal(llama::load(config, config_path, vb)?),
        Architecture::Qwen2 => causal(qwen2::load(config, config_path, vb)?),
        Architecture::Phi => causal(phi::load(config, config_path, vb)?),
        Architecture::Gpt2 => causal(gpt2::load(config, config_path, vb)?),
    };
    Ok(model)
}

/// A weight source that holds no data: each tensor asked for is recorded (name and
/// element count) and handed out as a zero-stride view of one zero, so building a
/// network from it runs every config.json check of the architecture and counts the
/// parameters the config implies, without allocating them.
#[derive(Default, Clone)]
struct ShapesOnly {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
}

impl candle_nn::var_builder::SimpleBackend for ShapesOnly {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(name.to_string(), shape.elem_count());
        }
        candle_core::Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _: DType,
        _: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("{name}: a tensor of unknown shape cannot be planned from config.json")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Builds `dir`'s network from config.json alone: its architecture and the number of
/// parameters its weights must hold (every config check runs; nothing is allocated).
pub fn plan_from_config(dir: &Path) -> Result<(Architecture, u64), ModelError> {
    let (config, config_path, architecture) = read_config(dir)?;
    let backend = ShapesOnly::default();
    let seen = backend.seen.clone();
    let vb = candle_nn::VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    network(architecture, &config, &config_path, dir, vb)?;
    let parameters = seen
        .lock()
        .map(|s| s.values().map(|&n| n as u64).sum())
        .unwrap_or(0);
    Ok((architecture, parameters))
}

/// The special token ids `dir`'s config.json and generation_config.json give, with the
/// chat template's end-of-turn ids merged as [`load_checkpoint`] merges them.
pub fn special_tokens_of(
    dir: &Path,
    tokenizer: Option<&crate::tokenizer::TextTokenizer>,
) -> Result<SpecialTokens, ModelError> {
    let (config, config_path, architecture) = read_config(dir)?;
    let generation_config = loader::read_optional_json(dir, "generation_config.json")?;
    let mut special = loader::special_tokens(
        architecture,
        &config,
        generation_config.as_ref(),
        &config_path,
    )?;
    if let Some(tokenizer) = tokenizer {
        loader::merge_end_of_turn(&mut special, tokenizer);
    }
    Ok(special)
}

/// Whether the runtime implements what `dir`'s config.json asks for, without reading
/// any weight: the architecture, or the load error naming what is refused.
pub fn check_config(dir: &Path) -> Result<Architecture, ModelError> {
    plan_from_config(dir).map(|(a, _)| a)
}

/// Loads an autoregressive checkpoint as a bare network (the APD verifier's).
pub fn load_causal(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<causal::CausalModel, ModelError> {
    let choice = match dtype {
        DType::F16 => DTypeChoice::F16,
        DType::BF16 => DTypeChoice::Bf16,
        _ => DTypeChoice::F32,
    };
    let loaded = load(dir, device, choice)?;
    match loaded.network {
        Network::Causal(m) => Ok(*m),
        Network::Diffusion(_) => Err(ModelError::InvalidFile {
            path: dir.join("config.json"),
            message: format!(
                "{} is a diffusion model; an autoregressive one is needed here",
                loaded.architecture
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn architecture_from_model_type_or_architectures() {
        assert_eq!(
            Architecture::from_config(&json!({"model_type": "llada"})),
            Ok(Architecture::Llada)
        );
        assert_eq!(
            Architecture::from_config(&json!({"model_type": "Dream"})),
            Ok(Architecture::Dream)
        );
        assert_eq!(
            Architecture::from_config(&json!({"architectures": ["DreamModel"]})),
            Ok(Architecture::Dream)
        );
        assert!(Architecture::from_config(&json!({"model_type": "bert"}))
            .unwrap_err()
            .contains("bert"));
        assert!(Architecture::from_config(&json!({})).is_err());
    }

    #[test]
    fn left_padding_counts_positions_from_the_first_real_token() {
        let batch = Batch::left_padded(&[&[5, 6, 7], &[8]], 0, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(batch.pad_lengths, vec![0, 2]);
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![0, 0, 8]]
        );
        assert_eq!(
            batch.positions.to_vec2::<u32>().unwrap(),
            vec![vec![0, 1, 2], vec![0, 0, 0]]
        );
        let bias = batch
            .attention_bias
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(bias[..3], [0.0, 0.0, 0.0]);
        assert!(bias[3].is_infinite() && bias[4].is_infinite() && bias[5] == 0.0);
    }

    #[test]
    fn unpadded_batch_has_no_bias() {
        let batch = Batch::left_padded(&[&[1, 2], &[3, 4]], 0, &Device::Cpu, DType::F32).unwrap();
        assert!(batch.attention_bias.is_none());
        assert_eq!(batch.width(), 2);
    }
}

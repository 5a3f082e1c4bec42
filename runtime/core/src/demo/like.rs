//! `dfastllm demo-model --like DIR`: random weights with exactly the names and shapes a
//! real checkpoint's config.json implies, beside copies of its real tokenizer, template
//! and generation files: the loader meets what a real download holds. The sizes that
//! make a checkpoint big (layers, hidden width, heads, MLP width) can be shrunk; the
//! rest stays real (vocabulary, special ids, dtype fields, RoPE and norm settings).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{layout, validate, write_json, write_weights, DemoDType, DemoError, DemoSpec};
use crate::models::{Architecture, DEMO_MARKER};

/// Where an architecture's config.json keeps the sizes `--like` reads and shrinks.
pub(super) struct SizeFields {
    pub layers: &'static str,
    pub hidden: &'static str,
    pub heads: &'static str,
    pub kv_heads: Option<&'static str>,
    pub intermediate: &'static str,
    /// Rows of the embedding (the first one present).
    pub vocab: &'static [&'static str],
    pub context: &'static str,
    /// Whether the LM head is the embedding.
    pub tied: &'static str,
}

/// The Hugging Face names (Llama, Qwen2, Dream, Phi).
pub(super) const HF_SIZES: SizeFields = SizeFields {
    layers: "num_hidden_layers",
    hidden: "hidden_size",
    heads: "num_attention_heads",
    kv_heads: Some("num_key_value_heads"),
    intermediate: "intermediate_size",
    vocab: &["vocab_size"],
    context: "max_position_embeddings",
    tied: "tie_word_embeddings",
};

/// What `--like` may shrink; `None` keeps the real value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shrink {
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub intermediate: Option<usize>,
}

/// The metadata files copied beside the weights (never code: no `.py`).
const METADATA: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "tokenizer.model",
];

fn invalid(path: &Path, message: impl std::fmt::Display) -> DemoError {
    DemoError::Invalid(format!("{}: {message}", path.display()))
}

fn size(config: &Value, field: &str, path: &Path) -> Result<usize, DemoError> {
    config
        .get(field)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| invalid(path, format!("{field} is missing or not a number")))
}

fn declared_dtype(config: &Value) -> Option<DemoDType> {
    ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| config.get(*k).and_then(Value::as_str))
        .and_then(|d| d.parse().ok())
}

/// Writes into `out` a checkpoint shaped like the one in `source`.
pub fn write_like(
    source: &Path,
    shrink: &Shrink,
    seed: u64,
    dtype: Option<DemoDType>,
    shards: usize,
    out: &Path,
) -> Result<DemoSpec, DemoError> {
    let config_path = source.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| invalid(&config_path, e))?;
    let real: Value = serde_json::from_str(&text).map_err(|e| invalid(&config_path, e))?;
    let arch = Architecture::from_config(&real).map_err(|e| invalid(&config_path, e))?;
    let layout = layout(arch);
    let f = layout.size_fields();
    let p = &config_path;
    let (real_hidden, real_heads) = (size(&real, f.hidden, p)?, size(&real, f.heads, p)?);
    let real_kv = match f.kv_heads {
        Some(k) => real
            .get(k)
            .and_then(Value::as_u64)
            .map_or(real_heads, |v| v as usize),
        None => real_heads,
    };
    let real_intermediate = real
        .get(f.intermediate)
        .and_then(Value::as_u64)
        .map_or(4 * real_hidden, |v| v as usize);
    let hidden = shrink.hidden.unwrap_or(real_hidden);
    let heads = shrink.heads.unwrap_or(real_heads);
    // Shrunk widths keep the real ratios (GQA groups, MLP expansion).
    let kv_heads = shrink
        .kv_heads
        .unwrap_or_else(|| (real_kv * heads / real_heads.max(1)).max(1));
    let intermediate = shrink
        .intermediate
        .unwrap_or_else(|| (real_intermediate * hidden / real_hidden.max(1)).max(1));
    let vocab = f
        .vocab
        .iter()
        .find_map(|k| real.get(*k).and_then(Value::as_u64))
        .ok_or_else(|| invalid(p, format!("{} is missing", f.vocab.join(" or "))))?
        as usize;
    let spec = DemoSpec {
        arch,
        layers: shrink.layers.map_or_else(|| size(&real, f.layers, p), Ok)?,
        hidden,
        heads,
        kv_heads: Some(kv_heads),
        intermediate: Some(intermediate),
        vocab,
        seed,
        dtype: dtype
            .or_else(|| declared_dtype(&real))
            .unwrap_or(DemoDType::F32),
        shards,
        max_context: size(&real, f.context, p)?,
    };
    validate(&spec)?;
    let tied = real
        .get(f.tied)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| layout.ties_by_default());
    std::fs::create_dir_all(out).map_err(|e| DemoError::Write {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut config = real.clone();
    config[f.layers] = json!(spec.layers);
    config[f.hidden] = json!(hidden);
    config[f.heads] = json!(heads);
    if let Some(k) = f.kv_heads {
        config[k] = json!(kv_heads);
    }
    config[f.intermediate] = json!(intermediate);
    if config.get("head_dim").is_some() {
        config["head_dim"] = json!(hidden / heads.max(1));
    }
    // The dtype field says what the weights hold; a config that names none (LLaDA's)
    // keeps naming none, so the loader reads the weights' headers as for the real one.
    if let Some(key) = ["dtype", "torch_dtype"]
        .into_iter()
        .find(|k| real.get(*k).is_some())
    {
        config[key] = json!(spec.dtype.torch_name());
    }
    config[DEMO_MARKER] = json!(format!(
        "random weights written by `dfastllm demo-model --like`, shaped like {}: for tests and benchmarks, not a trained model",
        source.display()
    ));
    write_json(&out.join("config.json"), &config)?;
    for name in METADATA {
        let from: PathBuf = source.join(name);
        if from.exists() {
            std::fs::copy(&from, out.join(name)).map_err(|e| DemoError::Write {
                path: out.join(name),
                message: e.to_string(),
            })?;
        }
    }
    copy_extra_templates(source, out)?;
    write_weights(&spec, Some(tied), out)?;
    Ok(spec)
}

/// transformers' named templates (`additional_chat_templates/*.jinja`) come along too.
fn copy_extra_templates(source: &Path, out: &Path) -> Result<(), DemoError> {
    let from = source.join("additional_chat_templates");
    let Ok(entries) = std::fs::read_dir(&from) else {
        return Ok(());
    };
    let to = out.join("additional_chat_templates");
    let write = |path: &Path, e: std::io::Error| DemoError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&to).map_err(|e| write(&to, e))?;
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.extension().is_some_and(|x| x == "jinja") {
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, to.join(name)).map_err(|e| write(&to.join(name), e))?;
            }
        }
    }
    Ok(())
}

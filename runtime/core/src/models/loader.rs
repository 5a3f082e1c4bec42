//! Reading checkpoint files: config JSON, single or sharded safetensors, special ids.
//!
//! Every failure names the file it came from: a model directory is assembled by hand
//! often enough (copied shards, a half-finished download) that "which file" is the
//! first thing an operator needs to know.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::{Architecture, DTypeChoice, LoadedModel, SpecialTokens};
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// config.json key that marks a checkpoint as random demo weights.
pub const DEMO_MARKER: &str = "dfastllm_demo";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {0} does not exist")]
    MissingDir(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    InvalidFile { path: PathBuf, message: String },
    #[error("no weights in {0}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights(PathBuf),
    #[error("{context}: {source}")]
    Weights {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A checkpoint ready to serve: the model and its tokenizer. A chat answer ends at the
/// template's end-of-turn token as well as at EOS, whether or not generation_config.json
/// lists it, so those ids join the EOS ids here, once for every caller.
pub fn load_checkpoint(
    dir: &Path,
    device: &Device,
    dtype: DTypeChoice,
) -> Result<(LoadedModel, TextTokenizer), ModelError> {
    let mut model = super::load(dir, device, dtype)?;
    let tokenizer = TextTokenizer::load(dir)?;
    merge_end_of_turn(&mut model.special, &tokenizer);
    Ok((model, tokenizer))
}

/// The template's end-of-turn tokens join the EOS ids.
pub(crate) fn merge_end_of_turn(special: &mut SpecialTokens, tokenizer: &TextTokenizer) {
    for id in tokenizer.end_of_turn_ids() {
        if !special.eos_ids.contains(&id) && id != special.mask_id {
            special.eos_ids.push(id);
        }
    }
}

pub(crate) fn read_json(dir: &Path, name: &str) -> Result<Value, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::MissingDir(dir.to_path_buf()));
    }
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidFile {
        path,
        message: format!("invalid JSON: {e}"),
    })
}

pub(crate) fn read_optional_json(dir: &Path, name: &str) -> Result<Option<Value>, ModelError> {
    if dir.join(name).exists() {
        read_json(dir, name).map(Some)
    } else {
        Ok(None)
    }
}

/// The safetensors files of a checkpoint: the shards named by
/// `model.safetensors.index.json` when it exists, else `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_name = "model.safetensors.index.json";
    let files = if dir.join(index_name).exists() {
        let index = read_json(dir, index_name)?;
        let shards: BTreeSet<&str> = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::InvalidFile {
                path: dir.join(index_name),
                message: "missing \"weight_map\" object".into(),
            })?
            .values()
            .filter_map(Value::as_str)
            .collect();
        if shards.is_empty() {
            return Err(ModelError::InvalidFile {
                path: dir.join(index_name),
                message: "\"weight_map\" names no shard".into(),
            });
        }
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else if !dir.is_dir() {
        return Err(ModelError::MissingDir(dir.to_path_buf()));
    } else {
        return Err(ModelError::NoWeights(dir.to_path_buf()));
    };
    for file in &files {
        check_safetensors(file)?;
    }
    Ok(files)
}

/// Parses a file's safetensors header and checks every tensor lies inside the file,
/// so a truncated or corrupt shard fails here, with its name, instead of deep in candle.
fn check_safetensors(path: &Path) -> Result<(), ModelError> {
    let file = File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the mapping is read-only and dropped before returning; a concurrent writer
    // could at worst make the header check fail, never corrupt our memory.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    safetensors::SafeTensors::deserialize(&mmap).map_err(|e| ModelError::InvalidFile {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    Ok(())
}

pub(crate) fn var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    // SAFETY: memory-mapping is how multi-gigabyte checkpoints load without copying; the
    // files must not be truncated while the model is loaded, which holds for model
    // volumes (mounted read-only by the operator).
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.map_err(|source| {
        ModelError::Weights {
            context: format!(
                "mapping {}",
                files
                    .first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            source,
        }
    })
}

pub(crate) fn weights_error(dir: &Path, source: candle_core::Error) -> ModelError {
    ModelError::Weights {
        context: format!("loading weights from {}", dir.display()),
        source,
    }
}

fn ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .into_iter()
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64())
            .filter_map(|n| u32::try_from(n).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Mask, EOS and padding ids. config.json's fields win; the upstream defaults of each
/// architecture fill the gaps (real LLaDA and Dream configs carry all of them).
pub(crate) fn special_tokens(
    architecture: Architecture,
    config: &Value,
    generation_config: Option<&Value>,
    config_path: &Path,
) -> Result<SpecialTokens, ModelError> {
    let (default_mask, default_eos) = match architecture {
        Architecture::Llada => (126_336, 126_081),
        Architecture::Dream => (151_666, 151_643),
        Architecture::Llama => (super::NO_MASK, 2),
        Architecture::Qwen2 => (super::NO_MASK, 151_643),
        Architecture::Phi | Architecture::Gpt2 => (super::NO_MASK, 50_256),
    };
    let mask_id = if architecture.is_diffusion() {
        ids(config.get("mask_token_id"))
            .first()
            .copied()
            .unwrap_or(default_mask)
    } else {
        super::NO_MASK
    };
    let mut eos_ids = ids(config.get("eos_token_id"));
    if eos_ids.is_empty() {
        eos_ids.push(default_eos);
    }
    for id in ids(generation_config.and_then(|g| g.get("eos_token_id"))) {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }
    let pad_id = ids(config.get("pad_token_id"))
        .first()
        .copied()
        .unwrap_or(eos_ids[0]);
    if eos_ids.contains(&mask_id) {
        return Err(ModelError::InvalidFile {
            path: config_path.to_path_buf(),
            message: format!("mask_token_id {mask_id} is also an end-of-sequence id"),
        });
    }
    Ok(SpecialTokens {
        mask_id,
        eos_ids,
        pad_id,
    })
}

/// Reads a required unsigned integer field of config.json.
pub(crate) fn usize_field(config: &Value, key: &str, path: &Path) -> Result<usize, ModelError> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| ModelError::InvalidFile {
            path: path.to_path_buf(),
            message: format!("missing or invalid integer field {key:?}"),
        })
}

pub(crate) fn f64_field(config: &Value, key: &str, default: f64) -> f64 {
    config.get(key).and_then(Value::as_f64).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn special_tokens_merge_config_and_generation_config() {
        let cfg = json!({"mask_token_id": 7, "eos_token_id": 3, "pad_token_id": 4});
        let gen = json!({"eos_token_id": [3, 9]});
        let s = special_tokens(Architecture::Llada, &cfg, Some(&gen), Path::new("c.json")).unwrap();
        assert_eq!(
            s,
            SpecialTokens {
                mask_id: 7,
                eos_ids: vec![3, 9],
                pad_id: 4
            }
        );
    }

    #[test]
    fn special_tokens_fall_back_to_upstream_ids() {
        let s = special_tokens(Architecture::Dream, &json!({}), None, Path::new("c.json")).unwrap();
        assert_eq!(s.mask_id, 151_666);
        assert_eq!(s.eos_ids, vec![151_643]);
        assert_eq!(s.pad_id, 151_643);
    }

    #[test]
    fn mask_equal_to_eos_is_rejected() {
        let err = special_tokens(
            Architecture::Llada,
            &json!({"mask_token_id": 3, "eos_token_id": 3}),
            None,
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("c.json"));
    }

    #[test]
    fn missing_directory_and_missing_weights_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        assert!(matches!(
            weight_files(&missing),
            Err(ModelError::MissingDir(_))
        ));
        assert!(matches!(
            weight_files(tmp.path()),
            Err(ModelError::NoWeights(_))
        ));
    }

    #[test]
    fn corrupt_and_missing_shards_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("model.safetensors"),
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
        )
        .unwrap();
        let err = weight_files(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );

        std::fs::write(
            tmp.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let err = weight_files(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    }
}

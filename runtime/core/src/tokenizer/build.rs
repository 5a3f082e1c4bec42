//! Checkpoints without `tokenizer.json` (Dream, DiffuCoder, Dream-Coder; older GPT-2 and
//! Phi-2 releases): the fast tokenizer is built from `vocab.json` + `merges.txt` and the
//! added tokens, with the pre-tokenizer and normalizer of the family's slow tokenizer in
//! `transformers`, so the ids are the ones `transformers` gives for the same files.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{read_json, TokenizerError};

/// Qwen2's (and Dream's) split: contractions, letters, single digits, punctuation
/// runs, newlines, spaces (transformers' `Qwen2Tokenizer` PRETOKENIZE_REGEX).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The slow tokenizer classes whose files this can rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Byte-level BPE with NFC and Qwen2's split (Qwen2, Dream, DiffuCoder).
    Qwen2,
    /// GPT-2's byte-level BPE with its built-in split (GPT-2, CodeGen, Phi-2).
    Gpt2,
}

fn family(config: &Value, dir: &Path) -> Result<Family, TokenizerError> {
    let class = config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or("");
    match class.trim_end_matches("Fast") {
        "Qwen2Tokenizer" | "DreamTokenizer" => Ok(Family::Qwen2),
        "GPT2Tokenizer" | "CodeGenTokenizer" => Ok(Family::Gpt2),
        other => Err(TokenizerError::File {
            path: dir.join("tokenizer_config.json"),
            message: format!(
                "no tokenizer.json, and tokenizer_class {other:?} is not one dfastllm can build from vocab.json + merges.txt (Qwen2Tokenizer, DreamTokenizer, GPT2Tokenizer, CodeGenTokenizer)"
            ),
        }),
    }
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The merges, one `a b` pair per line after the `#version` header.
fn merges(dir: &Path) -> Result<Vec<Value>, TokenizerError> {
    let text = read_text(&dir.join("merges.txt"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| json!(l))
        .collect())
}

/// Special-token strings a tokenizer_config or special_tokens_map names.
fn special_names(maps: &[&Value]) -> Vec<String> {
    let mut names = Vec::new();
    for map in maps {
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "mask_token",
            "sep_token",
            "cls_token",
        ] {
            names.extend(super::token_text(map.get(key)));
        }
        if let Some(Value::Array(extra)) = map.get("additional_special_tokens") {
            names.extend(extra.iter().filter_map(|t| super::token_text(Some(t))));
        }
    }
    names
}

/// Added tokens as tokenizer.json lists them: from `added_tokens_decoder` (newer
/// tokenizer_config.json), else `added_tokens.json` plus the named special tokens the
/// vocabulary holds.
fn added_tokens(
    dir: &Path,
    config: &Value,
    vocab: &Map<String, Value>,
) -> Result<Vec<Value>, TokenizerError> {
    let entry = |id: u64, content: &str, special: bool, flags: Option<&Value>| {
        let flag = |name: &str, default: bool| {
            flags
                .and_then(|f| f.get(name))
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        json!({
            "id": id,
            "content": content,
            "single_word": flag("single_word", false),
            "lstrip": flag("lstrip", false),
            "rstrip": flag("rstrip", false),
            "normalized": flag("normalized", !special),
            "special": flag("special", special),
        })
    };
    if let Some(Value::Object(decoder)) = config.get("added_tokens_decoder") {
        let mut tokens = Vec::new();
        for (id, token) in decoder {
            let id: u64 = id.parse().map_err(|_| TokenizerError::File {
                path: dir.join("tokenizer_config.json"),
                message: format!("added_tokens_decoder key {id:?} is not a token id"),
            })?;
            let content = token.get("content").and_then(Value::as_str).unwrap_or("");
            tokens.push(entry(id, content, false, Some(token)));
        }
        return Ok(tokens);
    }
    let map_path = dir.join("special_tokens_map.json");
    let map = read_json(&map_path)?;
    let specials = special_names(&[config, &map]);
    let mut tokens: Vec<Value> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for name in &specials {
        if let Some(id) = vocab.get(name).and_then(Value::as_u64) {
            if seen.insert(id) {
                tokens.push(entry(id, name, true, None));
            }
        }
    }
    let added = read_json(&dir.join("added_tokens.json"))?;
    if let Value::Object(added) = added {
        for (content, id) in added {
            let Some(id) = id.as_u64() else { continue };
            if seen.insert(id) {
                tokens.push(entry(id, &content, specials.contains(&content), None));
            }
        }
    }
    tokens.sort_by_key(|t| t["id"].as_u64());
    Ok(tokens)
}

/// The tokenizer.json a fast tokenizer for these files would have.
pub(super) fn from_vocab_merges(
    dir: &Path,
    config: &Value,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let family = family(config, dir)?;
    let vocab_path = dir.join("vocab.json");
    let Value::Object(vocab) = read_json(&vocab_path)? else {
        return Err(TokenizerError::File {
            path: vocab_path,
            message: "expected a JSON object of token -> id".into(),
        });
    };
    let added = added_tokens(dir, config, &vocab)?;
    let byte_level = |prefix: bool, regex: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": false, "use_regex": regex});
    let add_prefix_space = config
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (normalizer, pre_tokenizer) = match family {
        Family::Qwen2 => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false, false),
            ]}),
        ),
        Family::Gpt2 => (
            Value::Null,
            json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": true}),
        ),
    };
    let file = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": byte_level(false, false),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "vocab": vocab,
            "merges": merges(dir)?,
        },
    });
    let text = file.to_string();
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| TokenizerError::File {
            path: vocab_path,
            message: format!("building the tokenizer from vocab.json + merges.txt: {e}"),
        })
}

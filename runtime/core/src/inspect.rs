//! `dfastllm inspect DIR`: what the runtime makes of a checkpoint before serving it,
//! from its files alone (weights are never loaded: sizes come from the safetensors
//! headers), so it runs on an 8B checkpoint on any laptop. Every part is reported even
//! when another fails; what the runtime would refuse is listed with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::Serialize;
use serde_json::Value;

use crate::models::dtype::{declared, read_header, stored};
use crate::models::{self, DTypeChoice, NO_MASK};
use crate::tokenizer::{ChatTemplates, TextTokenizer};

#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub dir: PathBuf,
    pub architecture: Option<String>,
    /// `diffusion` or `autoregressive`.
    pub kind: Option<String>,
    /// Elements of every stored tensor; without weights, what config.json implies.
    pub parameters: u64,
    /// `weights` (the safetensors headers) or `config.json` (no weights yet).
    pub parameters_from: String,
    /// Bytes of weights per stored format (`BF16`, `F32`, ...).
    pub weight_bytes: BTreeMap<String, u64>,
    pub weight_files: usize,
    /// `--dtype auto`'s choice on a GPU and on the CPU, with the reason.
    pub dtype_gpu: String,
    pub dtype_cpu: String,
    pub context: Option<usize>,
    pub mask_id: Option<u32>,
    /// Every id that ends an answer: EOS ids and the chat template's end-of-turn ids.
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// Where the tokenizer comes from.
    pub tokenizer: Option<String>,
    /// Where the chat template comes from; `None`: chat requests are refused.
    pub chat_template: Option<String>,
    /// generation_config.json's sampling fields, as published (requests set their own).
    pub generation_defaults: BTreeMap<String, Value>,
    pub demo_weights: bool,
    /// What the runtime refuses, each with the reason; empty when it serves the checkpoint.
    pub refused: Vec<String>,
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

const SAMPLING_FIELDS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "do_sample",
    "max_new_tokens",
    "steps",
    "alg",
    "alg_temp",
];

pub fn inspect(dir: &Path) -> Inspection {
    let mut refused = Vec::new();
    let config = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| format!("config.json: {e}"))
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| format!("config.json: {e}")));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            refused.push(e);
            Value::Null
        }
    };
    // One build of the network from config.json: the checks, and the parameter count
    // reported when there are no weights yet.
    let (architecture, config_parameters) = match models::plan_from_config(dir) {
        Ok((a, n)) => (Some(a), Some(n)),
        Err(e) => {
            refused.push(e.to_string());
            (models::Architecture::from_config(&config).ok(), None)
        }
    };
    let (mut parameters, mut weight_bytes) = (0u64, BTreeMap::new());
    let files = models::weight_files(dir).unwrap_or_else(|e| {
        refused.push(e.to_string());
        Vec::new()
    });
    for file in &files {
        match read_header(file) {
            Ok(Value::Object(tensors)) => {
                for (_, t) in tensors.iter().filter(|(n, _)| *n != "__metadata__") {
                    let elements: u64 = t["shape"]
                        .as_array()
                        .map(|s| s.iter().filter_map(Value::as_u64).product())
                        .unwrap_or(0);
                    parameters += elements;
                    let offsets = t["data_offsets"].as_array();
                    let bytes = offsets
                        .and_then(|o| Some(o.get(1)?.as_u64()? - o.first()?.as_u64()?))
                        .unwrap_or(0);
                    let dtype = t["dtype"].as_str().unwrap_or("?").to_string();
                    *weight_bytes.entry(dtype).or_insert(0) += bytes;
                }
            }
            Ok(_) => refused.push(format!("{}: the header is not an object", file.display())),
            Err(e) => refused.push(e.to_string()),
        }
    }
    let mut parameters_from = "weights".to_string();
    if files.is_empty() {
        parameters_from = match config_parameters {
            Some(n) => {
                parameters = n;
                "config.json".to_string()
            }
            None => "nowhere: config.json is refused".to_string(),
        };
    }
    let stored_dtype = stored(&files).unwrap_or(None);
    let decide = |on_cpu: bool| {
        if !on_cpu && files.is_empty() && declared(&config).is_none() {
            // LLaDA-8B's case: the weights' headers decide, once they are there.
            return "read from the weights once they are downloaded (config.json declares no dtype)".to_string();
        }
        let d = DTypeChoice::Auto.resolve(declared(&config), stored_dtype, on_cpu);
        format!("{} ({})", dtype_name(d.dtype), d.reason)
    };
    let tokenizer = match TextTokenizer::load(dir) {
        Ok(t) => Some(t),
        Err(e) => {
            refused.push(e.to_string());
            None
        }
    };
    let tokenizer_source = tokenizer.as_ref().map(|_| {
        if dir.join("tokenizer.json").exists() {
            "tokenizer.json".to_string()
        } else {
            "vocab.json + merges.txt (tokenizer.json built from them)".to_string()
        }
    });
    // Read from the files: a template is reported even when the tokenizer is refused.
    let tokenizer_config: Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let chat_template = match ChatTemplates::load(dir, &tokenizer_config) {
        Ok(Some(t)) => Some(format!("{} ({})", t.source, t.names().join(", "))),
        Ok(None) => None,
        Err(e) => {
            refused.push(e.to_string());
            None
        }
    };
    let special = models::special_tokens_of(dir, tokenizer.as_ref()).ok();
    let generation: Value = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let generation_defaults = SAMPLING_FIELDS
        .iter()
        .filter_map(|k| Some((k.to_string(), generation.get(*k)?.clone())))
        .collect();
    let context = [
        "max_sequence_length",
        "max_position_embeddings",
        "n_positions",
    ]
    .iter()
    .find_map(|k| config.get(*k).and_then(Value::as_u64))
    .map(|c| c as usize);
    refused.dedup();
    Inspection {
        dir: dir.to_path_buf(),
        architecture: architecture.map(|a| a.name().to_string()),
        kind: architecture.map(|a| {
            if a.is_diffusion() {
                "diffusion"
            } else {
                "autoregressive"
            }
            .to_string()
        }),
        parameters,
        parameters_from,
        weight_bytes,
        weight_files: files.len(),
        dtype_gpu: decide(false),
        dtype_cpu: decide(true),
        context,
        mask_id: special
            .as_ref()
            .map(|s| s.mask_id)
            .filter(|&m| m != NO_MASK),
        eos_ids: special
            .as_ref()
            .map(|s| s.eos_ids.clone())
            .unwrap_or_default(),
        pad_id: special.as_ref().map(|s| s.pad_id),
        tokenizer: tokenizer_source,
        chat_template,
        generation_defaults,
        demo_weights: config.get(models::DEMO_MARKER).is_some(),
        refused,
    }
}

impl Inspection {
    /// The report as lines of `name: value`.
    pub fn render(&self) -> String {
        let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.to_string());
        let bytes: Vec<String> = self
            .weight_bytes
            .iter()
            .map(|(d, b)| format!("{d} {:.2} GB", *b as f64 / 1e9))
            .collect();
        let mut out = vec![
            format!("checkpoint: {}", self.dir.display()),
            format!(
                "architecture: {} ({})",
                or(&self.architecture, "unknown"),
                or(&self.kind, "?")
            ),
            format!(
                "parameters: {} ({:.3} B) {}",
                self.parameters,
                self.parameters as f64 / 1e9,
                if bytes.is_empty() {
                    format!("from {} (no weights yet)", self.parameters_from)
                } else {
                    format!("in {} file(s): {}", self.weight_files, bytes.join(", "))
                }
            ),
            format!("dtype on a GPU: {}", self.dtype_gpu),
            format!("dtype on the CPU: {}", self.dtype_cpu),
            format!(
                "context: {}",
                self.context.map_or("unknown".into(), |c| c.to_string())
            ),
            format!(
                "mask id: {}",
                self.mask_id.map_or("none".into(), |m| m.to_string())
            ),
            format!("answer ends at ids: {:?}", self.eos_ids),
            format!("tokenizer: {}", or(&self.tokenizer, "none (refused below)")),
            format!(
                "chat template: {}",
                or(&self.chat_template, "none (chat requests get a 400)")
            ),
        ];
        if !self.generation_defaults.is_empty() {
            let fields: Vec<String> = self
                .generation_defaults
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push(format!(
                "generation_config.json sampling: {} (request defaults below the deployment's; --generation-config ignore drops them)",
                fields.join(" ")
            ));
        }
        if self.demo_weights {
            out.push("weights: RANDOM (dfastllm demo-model)".into());
        }
        if self.refused.is_empty() {
            out.push("refused: nothing; the runtime serves this checkpoint".into());
        } else {
            for r in &self.refused {
                out.push(format!("refused: {r}"));
            }
        }
        out.join("\n")
    }
}

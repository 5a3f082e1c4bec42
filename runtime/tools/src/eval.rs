//! `dfastllm eval`: exact-match accuracy and cost of decoding configurations on a JSONL
//! set of `{"prompt", "answer"}` lines, measured one after another in one run so the
//! rows compare side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use dfastllm_core::decoding::{
    step_batch, verifier, CommitRule, DiffusionParams, DiffusionSequence, KvCacheMode, Mor,
};
use dfastllm_core::generation::{GenerationError, Generator};
use dfastllm_core::models::causal::CausalModel;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {message}")]
    Data { path: String, message: String },
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error("{0} is autoregressive: `dfastllm eval` compares diffusion decoding strategies")]
    NotDiffusion(dfastllm_core::models::Architecture),
}

/// One line of the eval set.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Example {
    pub prompt: String,
    pub answer: String,
    /// Task family, for the per-kind breakdown.
    #[serde(default)]
    pub kind: Option<String>,
}

/// Reads a JSONL eval set; errors name the file and line.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, EvalError> {
    let err = |message: String| EvalError::Data {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(line).map_err(|e| {
            err(format!(
                "line {}: {e} (expected {{\"prompt\", \"answer\"}})",
                i + 1
            ))
        })?;
        if ex.prompt.is_empty() {
            return Err(err(format!("line {}: empty prompt", i + 1)));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(err("no examples".into()));
    }
    Ok(out)
}

/// A named decoding configuration; `params.gen_length` is the answer region.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub params: DiffusionParams,
}

/// The knobs the strategy names leave open, shared by every configuration of a run.
#[derive(Debug, Clone)]
pub struct StrategyKnobs {
    pub gen_length: usize,
    pub block_length: usize,
    pub stop_at_eos: bool,
    pub apd_threshold: f32,
    pub apd_factor: f32,
    pub apd_max_parallel: usize,
    pub mor: Mor,
    pub apd_mix: f32,
    pub apd_max_lookahead: usize,
    /// Whether an autoregressive verifier model was given (the `verifier` rule needs one).
    pub has_verifier: bool,
}

/// A strategy name that the grammar `RULE[+mor]` does not accept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    #[error("{0:?} (a combination is RULE+mor)")]
    BadCombination(String),
    #[error("unknown {0:?} (expected baseline, threshold, factor, verifier, mor, or RULE+mor)")]
    Unknown(String),
    #[error("verifier needs --apd-verifier DIR (an autoregressive model with the same tokenizer)")]
    VerifierNeedsModel,
}

/// The configurations `strategies` x `kv_caches` name, in that order (every strategy
/// under each cache mode). Names are `RULE` (baseline = one token per step, threshold,
/// factor, verifier), `mor` (baseline + MoR) or `RULE+mor`. The verifier runs without a
/// KV cache, so it yields one row however many modes are asked for.
pub fn strategy_configs(
    strategies: &[String],
    kv_caches: &[KvCacheMode],
    knobs: &StrategyKnobs,
) -> Result<Vec<Config>, StrategyError> {
    let base = DiffusionParams {
        block_length: knobs.block_length,
        stop_at_eos: knobs.stop_at_eos,
        seed: Some(0),
        ..DiffusionParams::with_defaults(knobs.gen_length)
    };
    let mut configs = Vec::new();
    for &kv_cache in kv_caches {
        for name in strategies {
            let (rule, with_mor) = match name.split_once('+') {
                Some((rule, "mor")) => (rule, true),
                Some(_) => return Err(StrategyError::BadCombination(name.clone())),
                None if name == "mor" => ("baseline", true),
                None => (name.as_str(), false),
            };
            let commit = match rule {
                "baseline" => CommitRule::Schedule,
                "threshold" => CommitRule::Threshold {
                    threshold: knobs.apd_threshold,
                    max_parallel: knobs.apd_max_parallel,
                },
                "factor" => CommitRule::Factor {
                    factor: knobs.apd_factor,
                    max_parallel: knobs.apd_max_parallel,
                },
                "verifier" => {
                    if !knobs.has_verifier {
                        return Err(StrategyError::VerifierNeedsModel);
                    }
                    if kv_cache != KvCacheMode::None {
                        continue;
                    }
                    CommitRule::Verifier {
                        mix: knobs.apd_mix,
                        max_lookahead: knobs.apd_max_lookahead,
                    }
                }
                other => return Err(StrategyError::Unknown(other.to_string())),
            };
            configs.push(Config {
                name: format!("{name}/{kv_cache}"),
                params: DiffusionParams {
                    commit,
                    mor: with_mor.then_some(knobs.mor),
                    kv_cache,
                    ..base.clone()
                },
            });
        }
    }
    Ok(configs)
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub apd: String,
    pub kv_cache: KvCacheMode,
    pub mor: bool,
    pub examples: usize,
    pub correct: usize,
    /// Exact-match accuracy in percent.
    pub accuracy: f64,
    pub mean_forward_passes: f64,
    /// Answer-region tokens decoded per forward pass.
    pub tokens_per_forward: f64,
    /// Answer-region tokens decoded per second of wall time.
    pub tokens_per_second: f64,
    pub seconds: f64,
    /// Accuracy (percent) per task kind.
    pub by_kind: BTreeMap<String, f64>,
    /// Each example's decoded answer, in input order (for side-by-side comparisons).
    pub answers: Vec<String>,
}

/// Decodes every example under each configuration, `batch` sequences at a time
/// (verifier configurations one at a time, with `verifier` as the autoregressive model).
pub fn run(
    generator: &Generator,
    examples: &[Example],
    configs: &[Config],
    batch: usize,
    verifier: Option<&CausalModel>,
) -> Result<Vec<Row>, EvalError> {
    let prompts: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| generator.tokenizer.encode(&e.prompt))
        .collect::<Result<_, _>>()
        .map_err(GenerationError::from)?;
    let model = generator
        .model
        .network
        .diffusion()
        .ok_or(EvalError::NotDiffusion(generator.model.architecture))?;
    let special = &generator.model.special;
    let mut rows = Vec::with_capacity(configs.len());
    for config in configs {
        let start = Instant::now();
        let mut answers = Vec::with_capacity(examples.len());
        let mut passes = 0usize;
        let mut decoded = 0usize;
        let uses_verifier = matches!(config.params.commit, CommitRule::Verifier { .. });
        let chunk_size = if uses_verifier { 1 } else { batch.max(1) };
        for chunk in prompts.chunks(chunk_size) {
            let mut seqs = chunk
                .iter()
                .map(|p| {
                    DiffusionSequence::new(p, config.params.clone(), special, model.max_context())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(GenerationError::from)?;
            if uses_verifier {
                let Some(ar) = verifier else {
                    return Err(EvalError::Data {
                        path: config.name.clone(),
                        message: "the verifier strategy needs a verifier model".into(),
                    });
                };
                for seq in &mut seqs {
                    verifier::generate(model, ar, seq, special.pad_id)
                        .map_err(GenerationError::from)?;
                }
            }
            while seqs.iter().any(|s| !s.is_finished()) {
                let mut refs: Vec<&mut DiffusionSequence> = seqs.iter_mut().collect();
                step_batch(model, &mut refs, special.pad_id).map_err(GenerationError::from)?;
            }
            for seq in &seqs {
                let answer = seq.answer();
                passes += answer.forward_passes;
                decoded += seq.committed_answer_tokens();
                answers.push(
                    generator
                        .tokenizer
                        .decode(&answer.token_ids)
                        .map_err(GenerationError::from)?,
                );
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let mut kinds: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut correct = 0;
        for (ex, got) in examples.iter().zip(&answers) {
            let ok = got.trim() == ex.answer.trim();
            correct += usize::from(ok);
            let k = kinds
                .entry(ex.kind.clone().unwrap_or_else(|| "all".into()))
                .or_default();
            k.0 += usize::from(ok);
            k.1 += 1;
        }
        let n = examples.len() as f64;
        rows.push(Row {
            name: config.name.clone(),
            apd: describe_apd(&config.params),
            kv_cache: config.params.kv_cache,
            mor: config.params.mor.is_some(),
            examples: examples.len(),
            correct,
            accuracy: 100.0 * correct as f64 / n,
            mean_forward_passes: passes as f64 / n,
            tokens_per_forward: decoded as f64 / passes.max(1) as f64,
            tokens_per_second: decoded as f64 / seconds.max(1e-9),
            seconds,
            by_kind: kinds
                .into_iter()
                .map(|(k, (c, t))| (k, 100.0 * c as f64 / t as f64))
                .collect(),
            answers,
        });
    }
    Ok(rows)
}

fn describe_apd(p: &DiffusionParams) -> String {
    match p.commit {
        dfastllm_core::decoding::CommitRule::Schedule => format!("steps {}", p.steps),
        dfastllm_core::decoding::CommitRule::Threshold { threshold, .. } => {
            format!("threshold {threshold}")
        }
        dfastllm_core::decoding::CommitRule::Factor { factor, .. } => format!("factor {factor}"),
        dfastllm_core::decoding::CommitRule::Verifier { mix, max_lookahead } => {
            format!("verifier mix {mix}, lookahead {max_lookahead}")
        }
    }
}

/// The rows as a Markdown table, with each row's speed relative to the first row.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| config | commit rule | kv cache | MoR | accuracy | forward passes / answer | tokens / pass | tokens / s | passes vs first | tokens/s vs first |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let base = rows.first();
    for r in rows {
        let (passes_ratio, speed_ratio) = base.map_or((1.0, 1.0), |b| {
            (
                b.mean_forward_passes / r.mean_forward_passes.max(1e-9),
                r.tokens_per_second / b.tokens_per_second.max(1e-9),
            )
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1}% ({}/{}) | {:.2} | {:.2} | {:.0} | {:.2}x fewer | {:.2}x |",
            r.name,
            r.apd,
            r.kv_cache,
            if r.mor { "on" } else { "off" },
            r.accuracy,
            r.correct,
            r.examples,
            r.mean_forward_passes,
            r.tokens_per_forward,
            r.tokens_per_second,
            passes_ratio,
            speed_ratio
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> StrategyKnobs {
        StrategyKnobs {
            gen_length: 32,
            block_length: 8,
            stop_at_eos: false,
            apd_threshold: 0.8,
            apd_factor: 2.0,
            apd_max_parallel: 4,
            mor: Mor {
                min_recursions: 0,
                max_recursions: 2,
                confidence_threshold: 0.7,
            },
            apd_mix: 0.7,
            apd_max_lookahead: 8,
            has_verifier: true,
        }
    }

    #[test]
    fn the_strategy_grammar_names_every_row() {
        let names: Vec<String> = ["baseline", "threshold+mor", "mor", "verifier"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let configs =
            strategy_configs(&names, &[KvCacheMode::None, KvCacheMode::Dual], &knobs()).unwrap();
        let got: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            got,
            [
                "baseline/none",
                "threshold+mor/none",
                "mor/none",
                "verifier/none",
                "baseline/dual",
                "threshold+mor/dual",
                "mor/dual"
            ],
            "the verifier has no KV cache: one row"
        );
        let t = &configs[1].params;
        assert_eq!(
            t.commit,
            CommitRule::Threshold {
                threshold: 0.8,
                max_parallel: 4
            }
        );
        assert!(t.mor.is_some() && configs[0].params.mor.is_none());
        assert_eq!(
            configs[2].params.commit,
            CommitRule::Schedule,
            "mor alone is baseline + MoR"
        );
        assert_eq!(configs[4].params.kv_cache, KvCacheMode::Dual);
        assert_eq!(t.block_length, 8);
        assert_eq!(t.seed, Some(0), "eval is reproducible");
    }

    #[test]
    fn bad_strategy_names_are_errors() {
        let one = |name: &str, has_verifier: bool| {
            strategy_configs(
                &[name.to_string()],
                &[KvCacheMode::None],
                &StrategyKnobs {
                    has_verifier,
                    ..knobs()
                },
            )
            .unwrap_err()
        };
        assert_eq!(one("fast", true), StrategyError::Unknown("fast".into()));
        assert_eq!(
            one("threshold+apd", true),
            StrategyError::BadCombination("threshold+apd".into())
        );
        assert_eq!(one("verifier", false), StrategyError::VerifierNeedsModel);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"a\", \"answer\": \"b\"}\n\n{\"prompt\": 1}\n",
        )
        .unwrap();
        let err = read_examples(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(read_examples(&path)
            .unwrap_err()
            .to_string()
            .contains("no examples"));
    }
}

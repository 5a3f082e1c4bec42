//! `dfastllm bench forward` and `bench generate`: timing loops over a loaded model, for
//! side-by-side comparisons with other implementations (`scripts/parity/bench_forward.sh`,
//! `scripts/bench/ar-vs-transformers.sh`). Each returns one JSON report; the median of
//! the timed runs is what compares, after warm-up runs that are not counted.

use std::time::Instant;

use candle_core::{DType, Device};
use serde_json::{json, Value};

use dfastllm_core::decoding::{autoregressive, ArParams, ArSequence, DecodeError};
use dfastllm_core::device;
use dfastllm_core::models::causal::CausalCache;
use dfastllm_core::models::{Architecture, Batch, LoadedModel, Network};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0} is a diffusion model; `dfastllm bench generate` measures autoregressive decoding (use `dfastllm eval` for diffusion)")]
    NotAutoregressive(Architecture),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{context}: {source}")]
    Tensor {
        context: &'static str,
        source: candle_core::Error,
    },
}

fn tensor(context: &'static str) -> impl FnOnce(candle_core::Error) -> BenchError {
    move |source| BenchError::Tensor { context, source }
}

/// The prompt of row `row` in benchmarks: byte-range ids, different per row.
/// `scripts/bench/ar_reference.py` builds the same ids, so both sides see one input.
pub fn bench_prompt(row: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7 + row * 13 + 3) % 250) as u32)
        .collect()
}

/// Sizes of `bench generate` (each at least 1; the CLI checks).
#[derive(Debug, Clone, Copy)]
pub struct GenerateBench {
    pub batch: usize,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub repeat: usize,
}

/// A batch of prompts decoded together through the engine's path (prefill, then one
/// token per sequence per pass with the slot KV cache), EOS ignored.
pub fn generate(
    loaded: &LoadedModel,
    device: &Device,
    b: GenerateBench,
) -> Result<Value, BenchError> {
    let Some(model) = loaded.network.causal() else {
        return Err(BenchError::NotAutoregressive(loaded.architecture));
    };
    let prompts: Vec<Vec<u32>> = (0..b.batch)
        .map(|r| bench_prompt(r, b.prompt_len))
        .collect();
    // (first pass: prefill and the first token, whole run) in seconds.
    let run = |max_tokens: usize| -> Result<(f64, f64), BenchError> {
        let params = ArParams {
            ignore_eos: true,
            ..ArParams::greedy(max_tokens)
        };
        let mut seqs = prompts
            .iter()
            .map(|p| ArSequence::new(p, params.clone(), &loaded.special, model.max_context()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cache = CausalCache::new();
        let start = Instant::now();
        let mut first = None;
        while seqs.iter().any(|s| !s.is_finished()) {
            let mut refs: Vec<&mut ArSequence> = seqs.iter_mut().collect();
            autoregressive::step_batch(model, &mut cache, &mut refs)?;
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
        }
        Ok((first.unwrap_or(0.0), start.elapsed().as_secs_f64()))
    };
    run(2.min(b.max_tokens))?;
    let mut runs = (0..b.repeat)
        .map(|_| run(b.max_tokens))
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (first, total) = runs[runs.len() / 2];
    let tokens = (b.batch * b.max_tokens) as f64;
    let decode_tokens = (b.batch * (b.max_tokens - 1)) as f64;
    Ok(json!({
        "impl": "dfastllm",
        "arch": loaded.architecture.name(),
        "device": device::describe(device),
        "dtype": format!("{:?}", loaded.dtype).to_lowercase(),
        "batch": b.batch,
        "prompt_len": b.prompt_len,
        "max_tokens": b.max_tokens,
        "repeat": b.repeat,
        "first_token_ms": first * 1000.0,
        "total_s": total,
        "tokens_per_s": tokens / total,
        "decode_tokens_per_s": if total > first { decode_tokens / (total - first) } else { 0.0 },
    }))
}

/// Logits `[rows, V]` (f32, on the host) of one full pass over `seq_len` fixed tokens.
fn fixed_logits(
    loaded: &LoadedModel,
    device: &Device,
    seq_len: usize,
) -> Result<Vec<Vec<f32>>, BenchError> {
    let row: Vec<u32> = (0..seq_len as u32).map(|i| (i * 7 + 3) % 256).collect();
    let batch = Batch::left_padded(&[&row], loaded.special.pad_id, device, loaded.dtype)
        .map_err(tensor("building the batch"))?;
    let logits = match &loaded.network {
        Network::Diffusion(m) => m.forward(&batch, None),
        Network::Causal(m) => m.forward_full(&[&row]),
    }
    .and_then(|l| l.get(0)?.to_dtype(DType::F32)?.to_vec2::<f32>())
    .map_err(tensor("forward pass"))?;
    Ok(logits)
}

/// The same fixed input through `on_device` (any device and dtype) and through
/// `reference` (the CPU in f32, which the parity fixtures tie to transformers): the
/// largest absolute logit difference, the logits' scale, and how many positions' argmax
/// agree. `dfastllm bench parity` and `scripts/gpu/check.sh` read it.
pub fn device_parity(
    on_device: &LoadedModel,
    device: &Device,
    reference: &LoadedModel,
    seq_len: usize,
) -> Result<Value, BenchError> {
    let got = fixed_logits(on_device, device, seq_len)?;
    let want = fixed_logits(reference, &Device::Cpu, seq_len)?;
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    let (mut max_abs, mut scale, mut agree) = (0f32, 0f32, 0usize);
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            max_abs = max_abs.max((a - b).abs());
            scale = scale.max(b.abs());
        }
        agree += usize::from(argmax(g) == argmax(w));
    }
    Ok(json!({
        "arch": on_device.architecture.name(),
        "device": device::describe(device),
        "dtype": format!("{:?}", on_device.dtype).to_lowercase(),
        "positions": want.len(),
        "max_abs_diff": max_abs,
        "max_abs_logit": scale,
        "argmax_agree": agree,
        "finite": got.iter().flatten().all(|v| v.is_finite()),
    }))
}

/// Sizes of `bench forward` (each at least 1; the CLI checks).
#[derive(Debug, Clone, Copy)]
pub struct ForwardBench {
    pub batch: usize,
    pub seq_len: usize,
    pub iters: usize,
}

/// Full forward passes on fixed input: two warm-up passes, then `iters` timed ones.
pub fn forward(
    loaded: &LoadedModel,
    device: &Device,
    b: ForwardBench,
) -> Result<Value, BenchError> {
    let row: Vec<u32> = (0..b.seq_len as u32).map(|i| (i * 7 + 3) % 256).collect();
    let rows: Vec<&[u32]> = (0..b.batch).map(|_| row.as_slice()).collect();
    let batch = Batch::left_padded(&rows, loaded.special.pad_id, device, loaded.dtype)
        .map_err(tensor("building the batch"))?;
    let run = || -> Result<f64, candle_core::Error> {
        let start = Instant::now();
        let logits = match &loaded.network {
            Network::Diffusion(m) => m.forward(&batch, None)?,
            Network::Causal(m) => m.forward_full(&rows)?,
        };
        // Reading one value back waits for an asynchronous device to finish.
        logits
            .flatten_all()?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    for _ in 0..2 {
        run().map_err(tensor("warm-up forward pass"))?;
    }
    let mut times = (0..b.iters)
        .map(|_| run())
        .collect::<Result<Vec<f64>, _>>()
        .map_err(tensor("forward pass"))?;
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok(json!({
        "impl": "dfastllm",
        "arch": loaded.architecture.name(),
        "device": device::describe(device),
        "batch": b.batch,
        "seq_len": b.seq_len,
        "iters": b.iters,
        "ms_mean": mean,
        "ms_min": times[0],
        "ms_p50": times[times.len() / 2],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfastllm_core::demo::{write_demo_model, DemoSpec};
    use dfastllm_core::models::{self, DTypeChoice};

    fn load(arch: Architecture) -> (tempfile::TempDir, LoadedModel) {
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(&DemoSpec::tiny(arch), dir.path()).unwrap();
        let loaded = models::load(dir.path(), &Device::Cpu, DTypeChoice::F32).unwrap();
        (dir, loaded)
    }

    #[test]
    fn bench_prompts_differ_per_row_and_stay_in_the_byte_range() {
        let a = bench_prompt(0, 16);
        let b = bench_prompt(1, 16);
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(a.iter().chain(&b).all(|&t| t < 250));
    }

    #[test]
    fn generate_reports_every_token_of_the_batch() {
        let (_dir, loaded) = load(Architecture::Llama);
        let b = GenerateBench {
            batch: 2,
            prompt_len: 4,
            max_tokens: 3,
            repeat: 1,
        };
        let report = generate(&loaded, &Device::Cpu, b).unwrap();
        assert_eq!(report["arch"], "llama");
        assert_eq!(report["batch"], 2);
        assert!(report["tokens_per_s"].as_f64().unwrap() > 0.0);
        let (_d, diffusion) = load(Architecture::Llada);
        assert!(matches!(
            generate(&diffusion, &Device::Cpu, b),
            Err(BenchError::NotAutoregressive(Architecture::Llada))
        ));
    }

    #[test]
    fn forward_times_are_ordered() {
        let (_dir, loaded) = load(Architecture::Llada);
        let b = ForwardBench {
            batch: 1,
            seq_len: 8,
            iters: 3,
        };
        let r = forward(&loaded, &Device::Cpu, b).unwrap();
        let min = r["ms_min"].as_f64().unwrap();
        assert!(min <= r["ms_p50"].as_f64().unwrap());
        assert_eq!(r["iters"], 3);
    }
}

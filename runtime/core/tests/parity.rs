//! Parity with `transformers`: the committed fixtures in `tests/fixtures/parity/<arch>`
//! hold a tiny checkpoint and the logits and greedy generations that
//! `scripts/parity/reference.py` computed from it with LlamaForCausalLM (LLaDA) and
//! Qwen2ForCausalLM (Dream) under a bidirectional mask, and with AutoModelForCausalLM
//! for the autoregressive architectures (llama, qwen2, phi, gpt2). Regenerate them with
//! `scripts/parity/regen.sh`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use dfastllm_core::decoding::{
    autoregressive, generate, ArParams, ArSequence, DiffusionParams, DiffusionSequence,
};
use dfastllm_core::models::{self, Batch, DTypeChoice};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    forward_cases: Vec<ForwardCase>,
    generate_cases: Vec<GenerateCase>,
}

#[derive(Deserialize)]
struct ForwardCase {
    name: String,
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u8>>,
    logits: Vec<Vec<Vec<f32>>>,
}

#[derive(Deserialize)]
struct GenerateCase {
    name: String,
    prompt_ids: Vec<u32>,
    gen_length: usize,
    block_length: usize,
    steps: usize,
    answer_ids: Vec<u32>,
}

fn fixture_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parity")
        .join(arch)
}

fn load_fixture(arch: &str) -> Fixture {
    let path = fixture_dir(arch).join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// Largest |ours - reference| over the real (unpadded) positions of every case.
fn check_logits(arch: &str) -> f32 {
    let fixture = load_fixture(arch);
    let model = models::load(&fixture_dir(arch), &Device::Cpu, DTypeChoice::F32).unwrap();
    let mut worst = 0f32;
    for case in &fixture.forward_cases {
        let (b, t) = (case.input_ids.len(), case.input_ids[0].len());
        let ids: Vec<u32> = case.input_ids.concat();
        let mask: Vec<u8> = case.attention_mask.concat();
        let batch = Batch::from_mask(&ids, &mask, b, t, &Device::Cpu, DType::F32).unwrap();
        let ours = model
            .network
            .diffusion()
            .unwrap()
            .forward(&batch, None)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let rows = ours.iter().zip(&case.logits).zip(&case.attention_mask);
        for ((our_row, ref_row), mask_row) in rows {
            let real = our_row
                .iter()
                .zip(ref_row)
                .zip(mask_row)
                .filter(|(_, &m)| m != 0);
            for ((a, r), _) in real {
                for (x, y) in a.iter().zip(r) {
                    worst = worst.max((x - y).abs());
                }
            }
        }
        assert!(worst < 1e-4, "{arch}/{}: max |diff| {worst}", case.name);
    }
    eprintln!("{arch}: max abs logit difference vs transformers: {worst:e}");
    worst
}

fn check_generation(arch: &str) {
    let fixture = load_fixture(arch);
    let model = models::load(&fixture_dir(arch), &Device::Cpu, DTypeChoice::F32).unwrap();
    for case in &fixture.generate_cases {
        let params = DiffusionParams {
            block_length: case.block_length,
            steps: case.steps,
            stop_at_eos: false,
            ..DiffusionParams::with_defaults(case.gen_length)
        };
        let mut seq = DiffusionSequence::new(
            &case.prompt_ids,
            params.clone(),
            &model.special,
            model.network.max_context(),
        )
        .unwrap();
        let answer = generate(
            model.network.diffusion().unwrap(),
            &mut seq,
            model.special.pad_id,
        )
        .unwrap();
        assert_eq!(answer.raw_ids, case.answer_ids, "{arch}/{}", case.name);
        assert_eq!(answer.forward_passes, case.steps);

        // Stopping at EOS gives the same answer, never more forward passes.
        let stop = DiffusionParams {
            stop_at_eos: true,
            ..params
        };
        let mut seq = DiffusionSequence::new(
            &case.prompt_ids,
            stop,
            &model.special,
            model.network.max_context(),
        )
        .unwrap();
        let early = generate(
            model.network.diffusion().unwrap(),
            &mut seq,
            model.special.pad_id,
        )
        .unwrap();
        let end = case
            .answer_ids
            .iter()
            .position(|t| model.special.eos_ids.contains(t));
        assert_eq!(
            early.token_ids,
            case.answer_ids[..end.unwrap_or(case.gen_length)],
            "{arch}/{}",
            case.name
        );
        assert!(early.forward_passes <= case.steps);
    }
}

#[test]
fn llada_logits_match_transformers() {
    check_logits("llada");
}

#[test]
fn dream_logits_match_transformers() {
    check_logits("dream");
}

#[test]
fn llada_greedy_generation_matches_reference_sampler() {
    check_generation("llada");
}

#[test]
fn dream_greedy_generation_matches_reference_sampler() {
    check_generation("dream");
}

#[derive(Deserialize)]
struct ArFixture {
    rows: Vec<ArRow>,
}

#[derive(Deserialize)]
struct ArRow {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

/// Checks an autoregressive checkpoint against its fixture: logits of every position
/// within 1e-4 from one full pass, the greedy continuation token for token through our
/// KV-cached decoding, and left-padding invariance of a batched pass.
fn check_causal(model_dir: &Path, fixture: &Path) -> f32 {
    let fixture: ArFixture =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let loaded = models::load(model_dir, &Device::Cpu, DTypeChoice::F32).unwrap();
    let model = loaded.network.causal().expect("an autoregressive model");
    let mut worst = 0f32;
    for row in &fixture.rows {
        let logits = model.forward_full(&[&row.input_ids]).unwrap();
        let ours = logits.get(0).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in ours.iter().flatten().zip(row.logits.iter().flatten()) {
            worst = worst.max((a - b).abs());
        }
        // Greedy through the incremental (KV-cached) path; transformers recomputed the
        // whole sequence for every token, and never stopped at EOS.
        let params = ArParams {
            ignore_eos: true,
            ..ArParams::greedy(row.greedy.len())
        };
        let mut seq =
            ArSequence::new(&row.input_ids, params, &loaded.special, model.max_context()).unwrap();
        let answer = autoregressive::generate(model, &mut seq).unwrap();
        assert_eq!(
            answer.token_ids,
            row.greedy,
            "{}: greedy continuation of {:?}",
            model_dir.display(),
            row.input_ids
        );
    }
    assert!(worst < 1e-4, "max |logit difference| {worst}");

    // Left padding changes nothing for the real positions.
    let (a, b) = (&fixture.rows[0].input_ids, &fixture.rows[1].input_ids);
    let both = model.forward_full(&[a, b]).unwrap();
    let alone = model.forward_full(&[b]).unwrap();
    let pad = a.len().max(b.len()) - b.len();
    let padded = both.get(1).unwrap().narrow(0, pad, b.len()).unwrap();
    let diff = common::max_diff(&padded, &alone.get(0).unwrap());
    assert!(diff < 1e-5, "padding changed the logits by {diff}");
    worst
}

/// The bundled autoregressive model (models/dfastllm-tiny-ar) against transformers'
/// LlamaForCausalLM.
#[test]
fn bundled_llama_matches_transformers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let worst = check_causal(
        &root.join("../../models/dfastllm-tiny-ar"),
        &root.join("../tests/fixtures/parity/llama-ar/expected.json"),
    );
    eprintln!("bundled llama: max |logit difference| against transformers {worst}");
}

/// Demo checkpoints of each autoregressive architecture against transformers'
/// `AutoModelForCausalLM`: 32-token greedy continuations.
#[test]
fn causal_architectures_match_transformers() {
    for arch in ["llama", "qwen2", "phi", "gpt2", "llama3", "llama-head-dim"] {
        let dir = fixture_dir(arch);
        let worst = check_causal(&dir, &dir.join("expected.json"));
        eprintln!("{arch}: max |logit difference| against transformers {worst}");
    }
}

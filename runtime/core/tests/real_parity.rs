//! Greedy parity with transformers on real checkpoint metadata: `demo-model --like` of
//! TinyLlama-1.1B-Chat, Llama-3.2-1B (rope_type llama3, head_dim, tied head), Qwen2.5
//! (q/k/v bias, tied head, its tokenizer built from vocab.json + merges.txt) and Phi-2
//! (runtime/tests/fixtures/real), shrunk, with random weights. The prompts go through
//! the published tokenizer with its BOS; the continuation runs through the serving path
//! (KV cache, logprobs). `scripts/parity/regen.sh real-tinyllama real-llama-3.2
//! real-phi-2 real-qwen2.5` records transformers' answers; the weights are rebuilt here from the
//! recorded `--like` arguments and checked by CRC-32 first, not committed.

mod common;

use candle_core::Device;
use dfastllm_core::decoding::{autoregressive, ArParams, ArSequence};
use dfastllm_core::demo::{write_like, DemoDType, Shrink};
use dfastllm_core::models::{self, DTypeChoice};
use dfastllm_core::tokenizer::TextTokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    like: Like,
    weights_crc32: u32,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Like {
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    seed: u64,
}

#[derive(Deserialize)]
struct Row {
    text: Option<String>,
    input_ids: Vec<u32>,
    greedy: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    ids: Vec<u32>,
    logits: Vec<f32>,
}

/// Below this top-1 margin the reference's pick is a near tie: the comparison stops
/// there rather than depend on the last bit of a sum.
const NEAR_TIE: f32 = 1e-4;

fn check(fixture: &str, family: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parity")
        .join(fixture);
    let text = std::fs::read_to_string(path.join("expected.json")).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    let source = common::real_download(family, &["reference.json"]);
    let out = tempfile::tempdir().unwrap();
    let l = &fixture.like;
    let shrink = Shrink {
        layers: Some(l.layers),
        hidden: Some(l.hidden),
        heads: Some(l.heads),
        kv_heads: Some(l.kv_heads),
        intermediate: Some(l.intermediate),
    };
    write_like(
        source.path(),
        &shrink,
        l.seed,
        Some(DemoDType::F32),
        1,
        out.path(),
    )
    .unwrap();
    let weights = std::fs::read(out.path().join("model.safetensors")).unwrap();
    assert_eq!(
        crc32fast::hash(&weights),
        fixture.weights_crc32,
        "the demo initialiser changed: rerun scripts/parity/regen.sh for {family}"
    );
    let loaded = models::load(out.path(), &Device::Cpu, DTypeChoice::F32).unwrap();
    let model = loaded.network.causal().expect("an autoregressive model");
    let tokenizer = TextTokenizer::load(out.path()).ok();
    for row in &fixture.rows {
        if let (Some(text), Some(tok)) = (&row.text, &tokenizer) {
            assert_eq!(
                tok.encode_plain(text).unwrap(),
                row.input_ids,
                "{family}: the prompt {text:?} with its specials"
            );
        }
        let params = ArParams {
            ignore_eos: true,
            logprobs: Some(row.steps[0].ids.len()),
            ..ArParams::greedy(row.greedy.len())
        };
        let mut seq =
            ArSequence::new(&row.input_ids, params, &loaded.special, model.max_context()).unwrap();
        let answer = autoregressive::generate(model, &mut seq).unwrap();
        let compared = row
            .steps
            .iter()
            .position(|s| s.logits[0] - s.logits[1] < NEAR_TIE)
            .unwrap_or(row.steps.len());
        assert!(
            compared >= 8,
            "{family}: the fixture's prompts tie too early"
        );
        assert_eq!(
            answer.token_ids[..compared],
            row.greedy[..compared],
            "{family}: greedy continuation of {:?}",
            row.input_ids
        );
        // The alternatives, as gaps to the best logit (log-probabilities differ from
        // logits by one constant per step).
        for (i, (ours, theirs)) in seq
            .logprobs()
            .iter()
            .zip(&row.steps)
            .take(compared)
            .enumerate()
        {
            let our_ids: Vec<u32> = ours.top.iter().map(|t| t.0).collect();
            assert_eq!(our_ids, theirs.ids, "{family}: top ids at step {i}");
            for (k, (_, lp)) in ours.top.iter().enumerate() {
                let (ours_gap, theirs_gap) =
                    (lp - ours.top[0].1, theirs.logits[k] - theirs.logits[0]);
                assert!(
                    (ours_gap - theirs_gap).abs() < 1e-3,
                    "{family}: step {i}, alternative {k}: {ours_gap} vs {theirs_gap}"
                );
            }
        }
    }
}

#[test]
fn tinyllama_metadata_decodes_greedily_as_transformers() {
    check("real-tinyllama", "tinyllama-1.1b-chat-v1.0");
}

#[test]
fn llama_3_2_metadata_decodes_greedily_as_transformers() {
    check("real-llama-3.2", "llama-3.2-1b");
}

#[test]
fn qwen2_5_metadata_decodes_greedily_as_transformers() {
    check("real-qwen2.5", "qwen2.5-0.5b-instruct");
}

#[test]
fn phi_2_metadata_decodes_greedily_as_transformers() {
    check("real-phi-2", "phi-2");
}

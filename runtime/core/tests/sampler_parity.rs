//! The autoregressive sampler against transformers' own logits processors
//! (`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`,
//! `TopPLogitsWarper`, in generate()'s order) on the random logits of
//! `tests/fixtures/parity/samplers/expected.json` (`scripts/parity/regen.sh samplers`):
//! the same support with the same probabilities, and the same greedy pick after the
//! penalty.

use std::path::Path;

use dfastllm_core::decoding::next_token::{argmax, distribution, penalize};
use dfastllm_core::decoding::ArParams;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: Option<f32>,
    logits: Vec<f32>,
    seen: Vec<u32>,
    greedy: u32,
    support: Vec<(u32, f64)>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parity/samplers/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn support_and_probabilities_equal_transformers_logits_processors() {
    let cases = fixture().cases;
    assert!(cases.len() >= 8);
    let mut penalty_changed_the_pick = false;
    for (i, c) in cases.iter().enumerate() {
        let params = ArParams {
            temperature: c.temperature,
            top_k: c.top_k,
            top_p: c.top_p,
            repetition_penalty: c.repetition_penalty,
            ..ArParams::greedy(1)
        };
        let mut logits = c.logits.clone();
        if let Some(p) = c.repetition_penalty {
            penalize(&mut logits, &c.seen, p);
            penalty_changed_the_pick |= argmax(&c.logits) != argmax(&logits);
        }
        assert_eq!(argmax(&logits), c.greedy, "case {i}: greedy pick");
        let ours = distribution(&logits, &params);
        let ids = |s: &[(u32, f64)]| s.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(ids(&ours), ids(&c.support), "case {i}: support");
        for ((_, p), (_, q)) in ours.iter().zip(&c.support) {
            assert!((p - q).abs() < 1e-5, "case {i}: probability {p} vs {q}");
        }
    }
    assert!(
        penalty_changed_the_pick,
        "the fixture must exercise a penalty that changes the greedy token"
    );
}

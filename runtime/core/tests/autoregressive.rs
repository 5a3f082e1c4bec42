//! Autoregressive decoding through the shared slot cache: sequences batched together
//! (different prompt lengths, joining and leaving mid-way) decode exactly what they
//! decode alone, for every causal architecture.

use candle_core::Device;
use dfastllm_core::decoding::autoregressive::{self, step_batch};
use dfastllm_core::decoding::{ArParams, ArSequence};
use dfastllm_core::demo::{write_demo_model, DemoSpec};
use dfastllm_core::models::causal::CausalCache;
use dfastllm_core::models::{self, Architecture, DTypeChoice, LoadedModel};

fn demo(arch: Architecture) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        max_context: 128,
        ..DemoSpec::tiny(arch)
    };
    write_demo_model(&spec, dir.path()).unwrap();
    let model = models::load(dir.path(), &Device::Cpu, DTypeChoice::F32).unwrap();
    (dir, model)
}

fn params(max_tokens: usize) -> ArParams {
    ArParams {
        ignore_eos: true,
        logprobs: Some(2),
        ..ArParams::greedy(max_tokens)
    }
}

const CAUSAL: [Architecture; 4] = [
    Architecture::Llama,
    Architecture::Qwen2,
    Architecture::Phi,
    Architecture::Gpt2,
];

#[test]
fn batched_decoding_with_joins_and_leaves_matches_decoding_alone() {
    let prompts: [(&[u32], usize); 4] = [
        (&[10, 20, 30, 40, 50, 60, 70], 6),
        (&[5], 30),
        (&[100, 101, 102], 24),
        (
            &[
                7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
            ],
            20,
        ),
    ];
    for arch in CAUSAL {
        let (_dir, m) = demo(arch);
        let model = m.network.causal().unwrap();
        let new = |i: usize| {
            let (p, n) = prompts[i];
            ArSequence::new(p, params(n), &m.special, model.max_context()).unwrap()
        };
        let alone: Vec<_> = (0..prompts.len())
            .map(|i| {
                let mut s = new(i);
                autoregressive::generate(model, &mut s).unwrap();
                s
            })
            .collect();

        // Like the engine: slot i is running[i]; finished sequences leave (their slots
        // compacted), the last two join after 3 and 9 steps.
        let mut cache = CausalCache::new();
        let mut running = vec![new(0), new(1)];
        let mut done = Vec::new();
        let mut waiting = vec![(9, 3), (3, 2)];
        for step in 0.. {
            while waiting.last().is_some_and(|&(at, _)| at == step) {
                let (_, i) = waiting.pop().unwrap();
                running.push(new(i));
            }
            if running.is_empty() && waiting.is_empty() {
                break;
            }
            let mut refs: Vec<&mut ArSequence> = running.iter_mut().collect();
            step_batch(model, &mut cache, &mut refs).unwrap();
            let keep: Vec<bool> = running.iter().map(|s| !s.is_finished()).collect();
            cache.retain(&keep).unwrap();
            let (finished, rest): (Vec<_>, Vec<_>) =
                running.into_iter().partition(|s| s.is_finished());
            running = rest;
            done.extend(finished);
        }
        assert_eq!(done.len(), prompts.len());
        for s in &done {
            let reference = alone
                .iter()
                .find(|a| a.params().max_tokens == s.params().max_tokens)
                .unwrap();
            assert_eq!(s.generated(), reference.generated(), "{arch}");
            assert_eq!(s.generated().len(), s.params().max_tokens);
            for (a, b) in s.logprobs().iter().zip(reference.logprobs()) {
                assert!(
                    (a.logprob - b.logprob).abs() < 1e-4,
                    "{arch}: {a:?} vs {b:?}"
                );
                assert_eq!(a.top.len(), 2);
            }
        }
        assert!(cache.is_empty(), "every slot was released");
    }
}

#[test]
fn incremental_logits_match_a_full_pass() {
    for arch in CAUSAL {
        let (_dir, m) = demo(arch);
        let model = m.network.causal().unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 250).collect();
        let full = model.forward_full(&[&tokens]).unwrap().get(0).unwrap();
        let mut cache = CausalCache::new();
        // A prompt of 5, then one token at a time: the cache grows past its first
        // allocation (16 tokens) twice on the way.
        model.step(&mut cache, 0, &[&tokens[..5]], false).unwrap();
        for t in 5..tokens.len() {
            let step = model.step(&mut cache, 0, &[&tokens[t..=t]], false).unwrap();
            let diff = (step.get(0).unwrap() - full.get(t).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{arch}: token {t} differs by {diff}");
        }
        assert_eq!(cache.len(0), tokens.len());
    }
}

#[test]
fn context_overflow_is_an_error_not_a_panic() {
    let (_dir, m) = demo(Architecture::Gpt2);
    let model = m.network.causal().unwrap();
    let long: Vec<u32> = vec![1; 129];
    let mut cache = CausalCache::new();
    let err = model.step(&mut cache, 0, &[&long], false).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    let err = ArSequence::new(&[1; 100], ArParams::greedy(40), &m.special, 128).unwrap_err();
    assert!(err.to_string().contains("max_tokens"), "{err}");
}

#[test]
fn a_sequence_whose_cache_was_lost_continues_with_the_same_tokens() {
    // After a failed pass the engine clears the cache; the sequence prefills its prompt
    // and answer so far and goes on as if nothing happened (greedy: token for token).
    for arch in CAUSAL {
        let (_dir, m) = demo(arch);
        let model = m.network.causal().unwrap();
        let new = || ArSequence::new(&[3, 1, 4, 1, 5], params(12), &m.special, 128).unwrap();
        let mut alone = new();
        let expected = autoregressive::generate(model, &mut alone).unwrap();
        let mut seq = new();
        let mut cache = CausalCache::new();
        for _ in 0..5 {
            step_batch(model, &mut cache, &mut [&mut seq]).unwrap();
        }
        seq.forget_cache();
        let mut cache = CausalCache::new();
        while !seq.is_finished() {
            step_batch(model, &mut cache, &mut [&mut seq]).unwrap();
        }
        assert_eq!(seq.answer().token_ids, expected.token_ids, "{arch}");
    }
}

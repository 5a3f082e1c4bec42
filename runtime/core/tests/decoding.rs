//! Decoding on real (demo) checkpoints: batching, seeds, logits windows, loading paths.

mod common;

use candle_core::{DType, Device};
use common::max_diff;
use dfastllm_core::decoding::{
    generate, step_batch, CommitRule, DiffusionParams, DiffusionSequence, KvCacheMode, Remasking,
};
use dfastllm_core::demo::{write_demo_model, DemoDType, DemoSpec};
use dfastllm_core::models::{self, Architecture, Batch, DTypeChoice, LoadedModel};

fn demo(spec: DemoSpec) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    write_demo_model(&spec, dir.path()).unwrap();
    let model = models::load(dir.path(), &Device::Cpu, DTypeChoice::F32).unwrap();
    (dir, model)
}

fn params(gen: usize, block: usize, steps: usize) -> DiffusionParams {
    DiffusionParams {
        block_length: block,
        steps,
        stop_at_eos: false,
        ..DiffusionParams::with_defaults(gen)
    }
}

#[test]
fn cached_passes_agree_with_the_full_pass_on_a_blocks_first_step() {
    for arch in Architecture::DIFFUSION {
        let (_d, m) = demo(DemoSpec::tiny(arch));
        let mask = m.special.mask_id;
        // A prompt, one decoded block and two masked blocks of 4.
        let row: Vec<u32> = [1, 2, 3, 4, 5, 6, 7, 8, 9]
            .into_iter()
            .chain([mask; 8])
            .collect();
        let batch =
            Batch::left_padded(&[&row], m.special.pad_id, &Device::Cpu, DType::F32).unwrap();
        for block in [9..13, 13..17, 5..9] {
            let full = m
                .network
                .diffusion()
                .unwrap()
                .forward(&batch, Some(block.clone()))
                .unwrap();
            let (captured, cache) = m
                .network
                .diffusion()
                .unwrap()
                .forward_capture(&batch, block.clone())
                .unwrap();
            assert!(
                max_diff(&full, &captured) < 1e-6,
                "{arch} capture {block:?}"
            );
            for mode in [KvCacheMode::Prefix, KvCacheMode::Dual] {
                let cached = m
                    .network
                    .diffusion()
                    .unwrap()
                    .forward_cached(&batch, &cache, block.clone(), mode)
                    .unwrap();
                assert!(
                    max_diff(&full, &cached) < 1e-5,
                    "{arch} {mode} {block:?}: {}",
                    max_diff(&full, &cached)
                );
            }
        }
    }
}

#[test]
fn cached_decoding_batches_sequences_of_different_lengths() {
    for arch in Architecture::DIFFUSION {
        let (_d, m) = demo(DemoSpec::tiny(arch));
        for mode in [KvCacheMode::None, KvCacheMode::Prefix, KvCacheMode::Dual] {
            let p = DiffusionParams {
                kv_cache: mode,
                commit: CommitRule::Threshold {
                    threshold: 0.9,
                    max_parallel: 4,
                },
                ..params(16, 4, 16)
            };
            // Two sequences of different lengths batched together.
            let mut a = DiffusionSequence::new(&[1, 2, 3], p.clone(), &m.special, 1024).unwrap();
            let mut b = DiffusionSequence::new(&[4, 5, 6, 7, 8], p, &m.special, 1024).unwrap();
            while !(a.is_finished() && b.is_finished()) {
                step_batch(
                    m.network.diffusion().unwrap(),
                    &mut [&mut a, &mut b],
                    m.special.pad_id,
                )
                .unwrap();
            }
            for s in [&a, &b] {
                // At most 4 per pass and at least 1: 4..=16 passes for 16 positions.
                let passes = s.forward_passes();
                assert!((4..=16).contains(&passes), "{arch} {mode}: {passes} passes");
                assert_eq!(s.answer().raw_ids.len(), 16);
            }
        }
    }
}

#[test]
fn logits_window_equals_the_full_forward() {
    for arch in Architecture::DIFFUSION {
        let (_d, m) = demo(DemoSpec::tiny(arch));
        let batch = Batch::left_padded(
            &[&[1, 2, 3, 4, 5, 6], &[7, 8, 9]],
            m.special.pad_id,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let full = m
            .network
            .diffusion()
            .unwrap()
            .forward(&batch, None)
            .unwrap();
        for window in [0..6, 0..1, 2..5, 5..6] {
            let part = m
                .network
                .diffusion()
                .unwrap()
                .forward(&batch, Some(window.clone()))
                .unwrap();
            let expected = full.narrow(1, window.start, window.len()).unwrap();
            assert!(
                max_diff(&part, &expected) < 1e-6,
                "{arch} window {window:?}"
            );
        }
    }
}

#[test]
fn padded_rows_compute_what_they_compute_alone() {
    for arch in Architecture::DIFFUSION {
        let (_d, m) = demo(DemoSpec::tiny(arch));
        let short: &[u32] = &[10, 20, 30];
        let long: &[u32] = &[1, 2, 3, 4, 5, 6, 7];
        let batch =
            Batch::left_padded(&[long, short], m.special.pad_id, &Device::Cpu, DType::F32).unwrap();
        let together = m
            .network
            .diffusion()
            .unwrap()
            .forward(&batch, None)
            .unwrap();
        let alone_batch =
            Batch::left_padded(&[short], m.special.pad_id, &Device::Cpu, DType::F32).unwrap();
        let alone = m
            .network
            .diffusion()
            .unwrap()
            .forward(&alone_batch, None)
            .unwrap();
        // Dream's first real position reads the hidden state before it (padding when
        // padded); it is always prompt, so compare the positions after it.
        let row = together.get(1).unwrap().narrow(0, 5, 2).unwrap();
        assert!(
            max_diff(&row, &alone.get(0).unwrap().narrow(0, 1, 2).unwrap()) < 1e-5,
            "{arch}"
        );
    }
}

#[test]
fn batched_decoding_gives_the_same_answers_as_one_at_a_time() {
    for arch in Architecture::DIFFUSION {
        let (_d, m) = demo(DemoSpec::tiny(arch));
        let prompts: [&[u32]; 3] = [&[72, 105], &[1, 2, 3, 4, 5, 6, 7, 8], &[50, 60, 70]];
        let configs = [params(16, 8, 16), params(8, 4, 4), params(12, 12, 6)];
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&configs)
            .map(|(p, c)| {
                let mut s = DiffusionSequence::new(p, c.clone(), &m.special, 1024).unwrap();
                generate(m.network.diffusion().unwrap(), &mut s, m.special.pad_id)
                    .unwrap()
                    .raw_ids
            })
            .collect();
        let mut seqs: Vec<DiffusionSequence> = prompts
            .iter()
            .zip(&configs)
            .map(|(p, c)| DiffusionSequence::new(p, c.clone(), &m.special, 1024).unwrap())
            .collect();
        let mut iterations = 0;
        while seqs.iter().any(|s| !s.is_finished()) {
            let mut refs: Vec<&mut DiffusionSequence> = seqs.iter_mut().collect();
            step_batch(m.network.diffusion().unwrap(), &mut refs, m.special.pad_id).unwrap();
            iterations += 1;
        }
        assert_eq!(
            iterations, 16,
            "the batch runs as long as its longest member"
        );
        let batched: Vec<Vec<u32>> = seqs.iter().map(|s| s.answer().raw_ids).collect();
        assert_eq!(batched, alone, "{arch}");
        assert_eq!(
            seqs[1].answer().forward_passes,
            4,
            "finished sequences stop counting"
        );
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let (_d, m) = demo(DemoSpec::tiny(Architecture::Llada));
    let run = |seed: u64, remasking: Remasking| {
        let p = DiffusionParams {
            temperature: 1.0,
            seed: Some(seed),
            remasking,
            ..params(32, 8, 16)
        };
        let mut s = DiffusionSequence::new(&[1, 2, 3], p, &m.special, 1024).unwrap();
        generate(m.network.diffusion().unwrap(), &mut s, m.special.pad_id)
            .unwrap()
            .raw_ids
    };
    for remasking in [
        Remasking::LowConfidence,
        Remasking::Random,
        Remasking::Entropy,
        Remasking::Margin,
    ] {
        assert_eq!(run(42, remasking), run(42, remasking), "{remasking}");
        assert_ne!(
            run(42, remasking),
            run(43, remasking),
            "{remasking}: another seed samples differently"
        );
    }
    let greedy = |remasking: Remasking| {
        let mut s = DiffusionSequence::new(
            &[1, 2, 3],
            DiffusionParams {
                remasking,
                ..params(32, 8, 16)
            },
            &m.special,
            1024,
        )
        .unwrap();
        generate(m.network.diffusion().unwrap(), &mut s, m.special.pad_id)
            .unwrap()
            .raw_ids
    };
    assert_eq!(
        greedy(Remasking::LowConfidence),
        greedy(Remasking::LowConfidence)
    );
}

#[test]
fn sharded_and_half_precision_checkpoints_load() {
    let spec = DemoSpec::tiny(Architecture::Dream);
    let (_a, single) = demo(spec.clone());
    let (dir, sharded) = demo(DemoSpec {
        shards: 3,
        ..spec.clone()
    });
    assert!(dir.path().join("model.safetensors.index.json").exists());
    assert!(dir.path().join("model-00003-of-00003.safetensors").exists());
    let batch = Batch::left_padded(&[&[5, 6, 7, 8]], 0, &Device::Cpu, DType::F32).unwrap();
    let a = single
        .network
        .diffusion()
        .unwrap()
        .forward(&batch, None)
        .unwrap();
    let b = sharded
        .network
        .diffusion()
        .unwrap()
        .forward(&batch, None)
        .unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);

    for (dtype, choice, tolerance) in [
        (DemoDType::F16, DTypeChoice::F16, 0.05),
        (DemoDType::Bf16, DTypeChoice::Bf16, 0.3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(
            &DemoSpec {
                dtype,
                ..spec.clone()
            },
            dir.path(),
        )
        .unwrap();
        // auto on the CPU upcasts to f32; an explicit half dtype runs in half.
        let auto = models::load(dir.path(), &Device::Cpu, DTypeChoice::Auto).unwrap();
        assert_eq!(auto.dtype, DType::F32);
        let half = models::load(dir.path(), &Device::Cpu, choice).unwrap();
        let batch_h = Batch::left_padded(&[&[5, 6, 7, 8]], 0, &Device::Cpu, half.dtype).unwrap();
        let h = half
            .network
            .diffusion()
            .unwrap()
            .forward(&batch_h, None)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let diff = max_diff(&a, &h);
        assert!(diff < tolerance, "{dtype:?}: {diff}");
    }
}

#[test]
fn a_missing_tensor_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_demo_model(&DemoSpec::tiny(Architecture::Llada), dir.path()).unwrap();
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["n_layers"] = 3.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = models::load(dir.path(), &Device::Cpu, DTypeChoice::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.2"), "{err}");
}

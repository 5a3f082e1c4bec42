//! `demo-model --like` on real checkpoints' metadata (runtime/tests/fixtures/real):
//! shrunk random weights in the real layout load through the same path as a real
//! download, with the real vocabulary, special ids, tokenizer and template.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use dfastllm_core::decoding::SamplingParams;
use dfastllm_core::demo::{write_like, DemoDType, Shrink};
use dfastllm_core::generation::{Generator, Prompt};
use dfastllm_core::models::{self, DTypeChoice, ModelKind};
use dfastllm_core::tokenizer::ChatMessage;

fn download(family: &str) -> tempfile::TempDir {
    common::real_download(family, &[])
}

/// `family`'s metadata, and beside it a shrunk `--like` checkpoint of it.
fn like(family: &str, dtype: Option<DemoDType>) -> (tempfile::TempDir, tempfile::TempDir) {
    let source = download(family);
    let out = tempfile::tempdir().unwrap();
    write_like(source.path(), &shrunk(), 0, dtype, 1, out.path()).unwrap();
    (source, out)
}

fn shrunk() -> Shrink {
    Shrink {
        layers: Some(1),
        hidden: Some(64),
        heads: Some(4),
        ..Shrink::default()
    }
}

fn read_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn llada_8b_shrunk_keeps_its_vocabulary_special_ids_and_undeclared_dtype() {
    let (_source, out) = like("llada-8b-instruct", Some(DemoDType::Bf16));
    let config = read_config(out.path());
    assert_eq!(
        (config["d_model"].as_u64(), config["n_layers"].as_u64()),
        (Some(64), Some(1))
    );
    assert_eq!(config["mlp_hidden_size"], 192, "12288/4096 x 64");
    assert!(config.get("torch_dtype").is_none(), "still names no dtype");
    assert_eq!(config["rope_theta"], 500000.0);
    assert!(out.path().join("tokenizer_config.json").exists());
    let loaded = models::load(out.path(), &Device::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(loaded.network.kind(), ModelKind::Diffusion);
    assert_eq!(loaded.network.vocab_size(), 126464);
    assert_eq!(loaded.special.mask_id, 126336);
    assert!(loaded.special.eos_ids.contains(&126081));
    assert_eq!(loaded.dtype, DType::F32, "CPU: {}", loaded.dtype_reason);
    let files = models::weight_files(out.path()).unwrap();
    assert_eq!(models::dtype::stored(&files).unwrap(), Some(DType::BF16));
}

#[test]
fn dream_shrunk_serves_a_chat_answer_through_its_real_tokenizer_and_template() {
    let source = download("dream-v0-instruct-7b");
    let out = tempfile::tempdir().unwrap();
    let spec = write_like(source.path(), &shrunk(), 0, None, 1, out.path()).unwrap();
    assert_eq!(spec.dtype, DemoDType::Bf16, "config.json's torch_dtype");
    assert_eq!(spec.kv_heads, Some(1), "4 of 28 heads keep a group of 1");
    assert!(
        !out.path().join("tokenizer.json").exists(),
        "Dream ships none"
    );
    let generator = Generator::load(out.path(), &Device::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(generator.model.special.mask_id, 151666);
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", "What is 2+2?")]);
    let ids = generator.prompt_ids(&prompt).unwrap();
    assert_eq!(
        &ids[..3],
        &[151644, 8948, 198],
        "<|im_start|>system\\n, as transformers"
    );
    let params = SamplingParams {
        seed: Some(1),
        ..SamplingParams::with_defaults(4)
    };
    let out = generator.generate(&prompt, &params).unwrap();
    assert!(out.token_ids.len() <= 4);
    assert!(
        (1..=4).contains(&out.forward_passes),
        "one token per step at most 4 steps"
    );
}

#[test]
fn phi2_shrunk_decodes_autoregressively_with_its_published_tokenizer() {
    let (_source, out) = like("phi-2", Some(DemoDType::F32));
    let config = read_config(out.path());
    assert_eq!(config["partial_rotary_factor"], 0.4, "kept real");
    assert_eq!(
        config["torch_dtype"], "float32",
        "the dtype field follows the weights"
    );
    let generator = Generator::load(out.path(), &Device::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(generator.model.network.kind(), ModelKind::Autoregressive);
    assert_eq!(generator.model.network.vocab_size(), 51200);
    let out = generator
        .generate(
            &Prompt::Text("Hello, world!".into()),
            &SamplingParams::with_defaults(3),
        )
        .unwrap();
    assert_eq!(
        out.prompt_token_ids,
        [15496, 11, 995, 0],
        "the published tokenizer's ids"
    );
    assert!(!out.token_ids.is_empty() && out.token_ids.len() <= 3);
}

#[test]
fn a_directory_without_config_json_is_named() {
    let empty = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = write_like(empty.path(), &shrunk(), 0, None, 1, out.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn inspect_reports_what_the_runtime_makes_of_real_metadata() {
    use dfastllm_core::inspect::inspect;
    let (_source, out) = like("llada-8b-instruct", Some(DemoDType::Bf16));
    let report = inspect(out.path());
    assert_eq!(report.architecture.as_deref(), Some("llada"));
    assert_eq!(report.kind.as_deref(), Some("diffusion"));
    // Embedding and head 126464 x 64 each, one block, two norms: from the headers.
    let block = 64 * 64 * 4 + 3 * 64 * 192 + 2 * 64;
    assert_eq!(report.parameters, 2 * 126464 * 64 + block + 64);
    assert_eq!(
        report.weight_bytes.get("BF16"),
        Some(&(2 * report.parameters))
    );
    assert!(report.dtype_gpu.starts_with("bf16"), "{}", report.dtype_gpu);
    assert!(report.dtype_cpu.starts_with("f32"), "{}", report.dtype_cpu);
    assert_eq!((report.context, report.mask_id), (Some(4096), Some(126336)));
    assert!(report.eos_ids.contains(&126081));
    assert_eq!(
        report.chat_template.as_deref(),
        Some("tokenizer_config.json (default)")
    );
    // Its tokenizer.json is not among the fixtures: refused, and said so.
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    assert!(report.refused[0].contains("tokenizer.json"));
    assert!(report.render().contains("refused: "));

    let dream = download("dream-v0-instruct-7b");
    let report = inspect(dream.path());
    assert_eq!(report.architecture.as_deref(), Some("dream"));
    assert!(
        report.refused.iter().any(|r| r.contains("no weights")),
        "{:?}",
        report.refused
    );
    assert_eq!(
        report.tokenizer.as_deref(),
        Some("vocab.json + merges.txt (tokenizer.json built from them)")
    );
    assert_eq!(
        report.generation_defaults.get("alg"),
        Some(&serde_json::json!("origin"))
    );
    assert!(
        report.eos_ids.contains(&151645),
        "<|im_end|> from the template"
    );

    let mut config: serde_json::Value = read_config(out.path());
    config["alibi"] = serde_json::json!(true);
    std::fs::write(out.path().join("config.json"), config.to_string()).unwrap();
    let report = inspect(out.path());
    assert!(
        report.refused.iter().any(|r| r.contains("alibi")),
        "{:?}",
        report.refused
    );
}

/// transformers' named templates (`additional_chat_templates/`) travel with `--like`,
/// and a request with tools renders with `tool_use`.
#[test]
fn named_templates_travel_and_tools_pick_tool_use() {
    let source = download("phi-2");
    let extra = source.path().join("additional_chat_templates");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(extra.join("tool_use.jinja"), "TOOLS {{ tools | length }}").unwrap();
    std::fs::write(
        source.path().join("chat_template.jinja"),
        "{% for m in messages %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    write_like(source.path(), &shrunk(), 0, None, 1, out.path()).unwrap();
    let tok = dfastllm_core::tokenizer::TextTokenizer::load(out.path()).unwrap();
    let names = tok.chat_templates().unwrap().names();
    assert_eq!(names, vec!["default", "tool_use"]);
    let msgs = [ChatMessage::new("user", "hi")];
    let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
    assert_eq!(
        tok.apply_chat_template_with(&msgs, false, Some(&tools), None)
            .unwrap(),
        "TOOLS 1"
    );
    assert_eq!(tok.apply_chat_template(&msgs, false).unwrap(), "hi");
}

/// LLaDA's real config says `rope_full_precision: true`: under bf16 weights the rotary
/// embedding runs in f32 (upstream upcasts q and k), which changes the logits.
#[test]
fn llada_rotates_in_f32_under_bf16_weights_as_its_config_asks() {
    let (_source, out) = like("llada-8b-instruct", Some(DemoDType::Bf16));
    let logits = |dir: &Path| {
        let m = models::load(dir, &Device::Cpu, DTypeChoice::Bf16).unwrap();
        let ids: Vec<u32> = (0..48).map(|i| 1000 + 37 * i).collect();
        let batch = models::Batch::left_padded(&[&ids], 0, &Device::Cpu, DType::BF16).unwrap();
        m.network
            .diffusion()
            .unwrap()
            .forward(&batch, None)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let full = logits(out.path());
    let mut config = read_config(out.path());
    assert_eq!(config["rope_full_precision"], true);
    config["rope_full_precision"] = serde_json::json!(false);
    std::fs::write(
        out.path().join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    assert_ne!(full, logits(out.path()), "the rotation's precision shows");
}

/// Without weights, `inspect` counts the parameters config.json implies: the same
/// number the `--like` checkpoint's headers hold, and Llama-3.2-1B's published 1.24 B.
#[test]
fn config_json_alone_gives_the_parameter_count_of_the_weights() {
    for family in [
        "llada-8b-instruct",
        "dream-v0-instruct-7b",
        "phi-2",
        "tinyllama-1.1b-chat-v1.0",
        "llama-3.2-1b",
        "qwen2.5-0.5b-instruct",
    ] {
        let (_source, out) = like(family, None);
        let from_weights = dfastllm_core::inspect::inspect(out.path());
        assert_eq!(from_weights.parameters_from, "weights");
        std::fs::remove_file(out.path().join("model.safetensors")).unwrap();
        let from_config = dfastllm_core::inspect::inspect(out.path());
        assert_eq!(from_config.parameters_from, "config.json", "{family}");
        assert_eq!(
            from_config.parameters, from_weights.parameters,
            "{family}: config.json implies what the weights hold"
        );
    }
    let llama = download("llama-3.2-1b");
    let report = dfastllm_core::inspect::inspect(llama.path());
    // 128256 x 2048 tied embedding, 16 layers of GQA (8 KV heads of 64) and an 8192 MLP.
    assert_eq!(report.parameters, 1_235_814_400);
    assert!(report
        .render()
        .contains("from config.json (no weights yet)"));
    let qwen = download("qwen2.5-0.5b-instruct");
    // Qwen2.5-0.5B's published 0.49 B: tied head, q/k/v biases.
    assert_eq!(
        dfastllm_core::inspect::inspect(qwen.path()).parameters,
        494_032_768
    );
    let llada = download("llada-8b-instruct");
    let report = dfastllm_core::inspect::inspect(llada.path());
    assert_eq!(report.parameters, 8_015_581_184);
    assert!(
        report.dtype_gpu.starts_with("read from the weights"),
        "no dtype declared: the headers decide, not an f32 guess: {}",
        report.dtype_gpu
    );
}

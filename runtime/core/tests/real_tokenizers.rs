//! Real checkpoints' tokenizer and chat-template files (runtime/tests/fixtures/real,
//! sources in its README) give the ids and prompts `transformers` gives for them, as
//! recorded by scripts/fixtures/tokenizer_reference.py in each `reference.json`.

mod common;

use common::{real_download as unpacked, real_fixture as fixture};
use dfastllm_core::tokenizer::{ChatMessage, Shielded, SpecialsInContent, TextTokenizer};
use serde_json::Value;

fn reference(family: &str) -> Value {
    let text = std::fs::read_to_string(fixture(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

/// Every recorded string encodes to transformers' ids (alone, and as a plain prompt with
/// the specials `tokenizer(text)` adds) and decodes back to its text.
fn check_encodings(tok: &TextTokenizer, reference: &Value) {
    let cases = reference["encode"].as_array().unwrap();
    assert!(cases.len() >= 30, "the reference covers ~30 strings");
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids(&case["ids"]),
            "encoding {text:?}"
        );
        assert_eq!(
            tok.encode_plain(text).unwrap(),
            ids(&case["ids_with_specials"]),
            "encoding {text:?} as a plain prompt"
        );
        let decoded = tok.decode(&ids(&case["ids"])).unwrap();
        assert_eq!(
            decoded,
            case["decoded"].as_str().unwrap(),
            "decoding {text:?}"
        );
    }
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| serde_json::from_value(m.clone()).unwrap())
        .collect::<Vec<ChatMessage>>()
}

/// Every recorded conversation renders to transformers' prompt (and, where recorded,
/// its ids).
fn check_chats(tok: &TextTokenizer, reference: &Value) {
    for case in reference["chat"].as_array().unwrap() {
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let text = tok
            .apply_chat_template(&messages(&case["messages"]), gen)
            .unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        if let Some(expected) = case.get("ids") {
            assert_eq!(tok.encode(&text).unwrap(), ids(expected), "ids of {text:?}");
            // Content read as text (no special spellings in it) changes nothing.
            let mut shielded = Shielded::default();
            let shielded_messages: Vec<ChatMessage> = messages(&case["messages"])
                .iter()
                .map(|m| ChatMessage::new(&m.role, &tok.shield(&m.content, &mut shielded)))
                .collect();
            let rendered = tok.apply_chat_template(&shielded_messages, gen).unwrap();
            assert_eq!(
                tok.encode_shielded(&rendered, &shielded).unwrap(),
                ids(expected),
                "ids of {text:?} with content read as text"
            );
        }
    }
}

/// The recorded conversations with OpenAI `tools` (the question, and the round trip with
/// the assistant's call and the tool's answer) render to transformers' prompts and ids.
fn check_tool_chat(tok: &TextTokenizer, reference: &Value) {
    let cases = reference["tool_chat"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "the question and the round trip");
    for case in cases {
        let text = tok
            .apply_chat_template_with(
                &messages(&case["messages"]),
                true,
                Some(&case["tools"]),
                None,
            )
            .unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        assert_eq!(tok.encode(&text).unwrap(), ids(&case["ids"]));
    }
}

#[test]
fn dream_without_tokenizer_json_tokenizes_and_templates_as_transformers_does() {
    let dir = unpacked("dream-v0-instruct-7b", &[]);
    assert!(
        !dir.path().join("tokenizer.json").exists(),
        "Dream ships none"
    );
    let tok = TextTokenizer::load(dir.path()).unwrap();
    let reference = reference("dream-v0-instruct-7b");
    check_encodings(&tok, &reference);
    check_chats(&tok, &reference);
    assert_eq!(tok.token_id("<|mask|>"), Some(151666));
    assert!(
        tok.end_of_turn_ids().contains(&151645),
        "<|im_end|> ends a turn"
    );
}

#[test]
fn qwen2_5_builds_from_vocab_and_merges_and_renders_chatml_and_tools_as_transformers() {
    let dir = unpacked("qwen2.5-0.5b-instruct", &[]);
    let tok = TextTokenizer::load(dir.path()).unwrap();
    let reference = reference("qwen2.5-0.5b-instruct");
    check_encodings(&tok, &reference);
    check_chats(&tok, &reference);
    check_tool_chat(&tok, &reference);
    assert!(tok.end_of_turn_ids().contains(&151645), "<|im_end|>");
}

#[test]
fn phi2_from_its_tokenizer_json_and_rebuilt_from_vocab_and_merges_agree_with_transformers() {
    let reference = reference("phi-2");
    let published = unpacked("phi-2", &[]);
    check_encodings(&TextTokenizer::load(published.path()).unwrap(), &reference);
    let rebuilt = unpacked("phi-2", &["tokenizer.json"]);
    check_encodings(&TextTokenizer::load(rebuilt.path()).unwrap(), &reference);
}

#[test]
fn tinyllama_tokenizes_as_its_published_tokenizer_json_and_plain_prompts_get_bos() {
    // The published tokenizer.json is the reference where transformers 5 (which
    // rebuilds Llama's tokenizer) disagrees: see the fixtures' README.
    let dir = unpacked("tinyllama-1.1b-chat-v1.0", &[]);
    let tok = TextTokenizer::load(dir.path()).unwrap();
    let reference = reference("tinyllama-1.1b-chat-v1.0");
    check_encodings(&tok, &reference);
    check_chats(&tok, &reference);
    for case in reference["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode_plain(text).unwrap()[0], 1, "<s> first: {text:?}");
    }
    let disagreements = reference["encode"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ids_with_specials"] != c["transformers_ids_with_specials"])
        .count();
    assert_eq!(disagreements, 2, "the README names two strings");
    assert_eq!(tok.end_of_turn_ids(), Vec::<u32>::new(), "</s> is its EOS");
}

#[test]
fn llada_chat_template_renders_as_transformers_renders_it() {
    // LLaDA's tokenizer.json is not among the fixtures: its real tokenizer_config.json
    // (template, bos/eos strings) over another vocabulary renders the same text.
    let dir = unpacked("phi-2", &[]);
    std::fs::copy(
        fixture("llada-8b-instruct").join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    let tok = TextTokenizer::load(dir.path()).unwrap();
    check_chats(&tok, &reference("llada-8b-instruct"));
}

#[test]
fn an_unknown_slow_tokenizer_class_is_refused_by_name() {
    let dir = unpacked("phi-2", &["tokenizer.json"]);
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "BertTokenizer"}"#,
    )
    .unwrap();
    let err = TextTokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_class \"BertTokenizer\""), "{err}");
    let sp = tempfile::tempdir().unwrap();
    std::fs::write(sp.path().join("tokenizer.model"), b"").unwrap();
    let err = TextTokenizer::load(sp.path()).unwrap_err().to_string();
    assert!(err.contains("sentencepiece tokenizer.model"), "{err}");
}

#[test]
fn dream_renders_openai_tools_as_transformers_does() {
    let dir = unpacked("dream-v0-instruct-7b", &[]);
    let tok = TextTokenizer::load(dir.path()).unwrap();
    let reference = reference("dream-v0-instruct-7b");
    check_tool_chat(&tok, &reference);
}

#[test]
fn typed_specials_stay_text_and_the_templates_own_stay_specials() {
    let dir = unpacked("tinyllama-1.1b-chat-v1.0", &[]);
    let tok = TextTokenizer::load(dir.path()).unwrap();
    let eos = tok.token_id("</s>").unwrap();
    let eos_count = |ids: &[u32]| ids.iter().filter(|&&i| i == eos).count();
    let typed = "Say </s> then stop";
    // Parity default: the typed spelling is the control token.
    let rendered = tok
        .apply_chat_template_with(&[ChatMessage::new("user", typed)], true, None, None)
        .unwrap();
    // The Zephyr template closes the user turn with </s> itself.
    assert_eq!(
        eos_count(&tok.encode(&rendered).unwrap()),
        2,
        "{rendered:?}"
    );

    let mut shielded = Shielded::default();
    let content = tok.shield(typed, &mut shielded);
    assert!(!content.contains("</s>"));
    let rendered = tok
        .apply_chat_template_with(&[ChatMessage::new("user", &content)], true, None, None)
        .unwrap();
    let ids = tok.encode_shielded(&rendered, &shielded).unwrap();
    assert_eq!(eos_count(&ids), 1, "only the template's own </s>");
    let text = tok.decode(&ids).unwrap();
    assert!(text.contains("Say </s> then stop"), "{text:?}");
    // A user cannot fake a placeholder either.
    let mut shielded = Shielded::default();
    let fake = tok.shield("\u{E000}0\u{E001}", &mut shielded);
    let ids = tok.encode_shielded(&fake, &shielded).unwrap();
    assert_eq!(eos_count(&ids), 0);

    // A plain prompt read as text keeps the BOS its post-processor adds.
    let ids = tok
        .encode_plain_as("a </s> b", SpecialsInContent::Text)
        .unwrap();
    assert_eq!(ids.first(), tok.token_id("<s>").as_ref());
    assert!(!ids.contains(&eos), "{ids:?}");
    assert!(tok.encode_plain("a </s> b").unwrap().contains(&eos));
}

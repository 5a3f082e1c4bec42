//! Text <-> token ids with the checkpoint's own `tokenizer.json` (or one built from its
//! `vocab.json` + `merges.txt`, [`build`]), and chat prompts rendered from its Jinja
//! chat template ([`chat`]) as `transformers`' `apply_chat_template` does, so a prompt
//! means the same here and in Python.

mod build;
pub mod chat;
mod literal;
mod templates;
pub mod tool_calls;

pub use literal::{Shielded, SpecialsInContent};
pub use templates::ChatTemplates;
pub use tool_calls::{ParsedCall, ParsedCalls, ToolCallFormat};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error(
        "this model has no chat_template in tokenizer_config.json; send a plain prompt instead"
    )]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
}

/// One chat turn, as in OpenAI's `messages`, in the form chat templates read (absent
/// fields are undefined to the template, as in transformers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls: `{id, type, function: {name, arguments}}` with the
    /// arguments as a JSON object (what templates `tojson`), as vLLM passes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// A `tool` turn's answer to which call, and the function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_templates: Option<ChatTemplates>,
    /// What the tools template teaches, read once at load ([`ToolCallFormat::detect`]).
    tool_call_format: Option<ToolCallFormat>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// tokenizer_config.json's `add_bos_token` / `add_eos_token`, where it says.
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    /// A copy of `inner` that reads special-token spellings as plain text, built the
    /// first time user content is encoded that way (`literal.rs`).
    literal: std::sync::OnceLock<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("has_chat_template", &self.chat_templates.is_some())
            .finish()
    }
}

fn byte_level_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// GPT-2's reversible byte -> printable character map used by byte-level BPE
/// vocabularies (GPT-2, Qwen2, Llama 3, the demo models).
pub fn byte_to_char(b: u8) -> char {
    if byte_level_printable(b) {
        char::from(b)
    } else {
        let rank = (0..b).filter(|&x| !byte_level_printable(x)).count() as u32;
        char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// The inverse of [`byte_to_char`].
fn char_to_byte(c: char) -> Option<u8> {
    let code = u32::from(c);
    if let Ok(b) = u8::try_from(code) {
        if byte_level_printable(b) {
            return Some(b);
        }
    }
    let rank = code.checked_sub(256)? as usize;
    (0..=255u8).filter(|&b| !byte_level_printable(b)).nth(rank)
}

/// `bos_token` and friends are either a string or an AddedToken object.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A JSON file of the checkpoint, `Null` when it is absent.
fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    if !path.exists() {
        return Ok(Value::Null);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::File {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// The checkpoint's tokenizer: `tokenizer.json` when it ships one, else rebuilt from
/// `vocab.json` + `merges.txt`.
fn load_inner(dir: &Path, config: &Value) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let path = dir.join("tokenizer.json");
    if path.exists() {
        return tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::File {
            path: path.clone(),
            message: e.to_string(),
        });
    }
    if dir.join("vocab.json").exists() && dir.join("merges.txt").exists() {
        return build::from_vocab_merges(dir, config);
    }
    let message = if dir.join("tokenizer.model").exists() {
        "file not found; the checkpoint has only a sentencepiece tokenizer.model, which dfastllm cannot read: save it once with transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) to write tokenizer.json"
    } else {
        "file not found (nor vocab.json + merges.txt to build it from)"
    };
    Err(TokenizerError::File {
        path,
        message: message.into(),
    })
}

impl TextTokenizer {
    /// Loads the tokenizer of the checkpoint in `dir` and, when present,
    /// `tokenizer_config.json` and `chat_template.jinja`.
    pub fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let inner = load_inner(dir, &config)?;
        let chat_templates = ChatTemplates::load(dir, &config)?;
        let tool_call_format = chat_templates
            .as_ref()
            .and_then(|t| t.select(true).ok())
            .and_then(ToolCallFormat::detect);
        Ok(Self {
            inner,
            chat_templates,
            tool_call_format,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
            add_bos: config.get("add_bos_token").and_then(Value::as_bool),
            add_eos: config.get("add_eos_token").and_then(Value::as_bool),
            literal: std::sync::OnceLock::new(),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (as a chat template
    /// writes them) are recognised; nothing is added around the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    /// Token ids of a plain prompt (completions, `/generate`, `generate --prompt`) as
    /// transformers' `tokenizer(text)` gives them: the post-processor's special tokens
    /// (TinyLlama's and Llama 3's BOS), and BOS/EOS where tokenizer_config.json's
    /// `add_bos_token`/`add_eos_token` ask for them and the post-processor did not add
    /// them. Chat prompts use [`Self::encode`]: their template writes the specials.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_plain_as(text, SpecialsInContent::Parse)
    }

    /// [`Self::encode_plain`], with special-token spellings in `text` read as `specials`
    /// says.
    pub fn encode_plain_as(
        &self,
        text: &str,
        specials: SpecialsInContent,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = match specials {
            SpecialsInContent::Parse => self
                .inner
                .encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TokenizerError::Tokenize(e.to_string()))?,
            SpecialsInContent::Text => self.encode_literal(text, true)?,
        };
        let id_of = |t: &Option<String>| t.as_deref().and_then(|t| self.token_id(t));
        if let (Some(true), Some(bos)) = (self.add_bos, id_of(&self.bos_token)) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        if let (Some(true), Some(eos)) = (self.add_eos, id_of(&self.eos_token)) {
            if ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    /// The bytes token `id` stands for. Decoding a lone piece of a multi-byte character
    /// gives U+FFFD, so byte-level (GPT-2 style) and byte-fallback (`<0xE4>`) pieces are
    /// read from the vocabulary instead. Special tokens keep their text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let text = self.inner.decode(&[id], false).unwrap_or_default();
        if !text.contains('\u{FFFD}') {
            return text.into_bytes();
        }
        let Some(piece) = self.inner.id_to_token(id) else {
            return text.into_bytes();
        };
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')) {
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                return vec![byte];
            }
        }
        piece
            .chars()
            .map(char_to_byte)
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| text.into_bytes())
    }

    /// A token as text for log-probability listings: its text, or OpenAI's
    /// `bytes:\xNN` form when it is not valid UTF-8 on its own.
    pub fn token_display(&self, id: u32) -> String {
        let bytes = self.token_bytes(id);
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let hex: String = e.as_bytes().iter().map(|b| format!("\\x{b:02x}")).collect();
                format!("bytes:{hex}")
            }
        }
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The spelling of token `id` (specials included), if the vocabulary has it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The first id both vocabularies hold but spell differently, as `(id, ours,
    /// theirs)`; `None` when one vocabulary extends the other (a verifier must read the
    /// model's ids as the same text, though either may add tokens of its own at the end).
    pub fn first_different_token(&self, other: &TextTokenizer) -> Option<(u32, String, String)> {
        let shared = self
            .inner
            .get_vocab_size(true)
            .min(other.inner.get_vocab_size(true)) as u32;
        (0..shared).find_map(|id| {
            let (a, b) = (self.inner.id_to_token(id), other.inner.id_to_token(id));
            (a != b).then(|| (id, a.unwrap_or_default(), b.unwrap_or_default()))
        })
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_templates.is_some()
    }

    pub fn chat_templates(&self) -> Option<&ChatTemplates> {
        self.chat_templates.as_ref()
    }

    /// How the chat template (the one requests with tools render with) teaches the
    /// model to call tools, if it does.
    pub fn tool_call_format(&self) -> Option<ToolCallFormat> {
        self.tool_call_format
    }

    /// Renders `messages` with the model's chat template, ending with the assistant
    /// header when `add_generation_prompt` is set.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.apply_chat_template_with(messages, add_generation_prompt, None, None)
    }

    /// [`Self::apply_chat_template`] with OpenAI's `tools` and RAG `documents` passed
    /// to the template (templates without tool support ignore them, as in Python).
    pub fn apply_chat_template_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&Value>,
        documents: Option<&Value>,
    ) -> Result<String, TokenizerError> {
        let template = self
            .chat_templates
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?
            .select(tools.is_some())?;
        let ctx = chat::ChatContext {
            add_generation_prompt,
            bos_token: self.bos_token.as_deref().unwrap_or_default(),
            eos_token: self.eos_token.as_deref().unwrap_or_default(),
            tools,
            documents,
        };
        chat::render(template, messages, &ctx)
    }

    /// The prompt that continues the final (assistant) message instead of starting a new
    /// turn, as transformers' `continue_final_message`: rendered without the generation
    /// prompt and cut right after that message's text, before its end-of-turn.
    pub fn continue_final_message(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Value>,
        documents: Option<&Value>,
    ) -> Result<String, TokenizerError> {
        let rendered = self.apply_chat_template_with(messages, false, tools, documents)?;
        let last = messages.last().map(|m| m.content.as_str()).unwrap_or("");
        // Templates that trim messages (Llama 3.1's) render the stripped text.
        let end = [last, last.trim()]
            .iter()
            .filter(|t| !t.is_empty())
            .find_map(|t| rendered.rfind(*t).map(|i| i + t.len()));
        match end {
            Some(end) => Ok(rendered[..end].to_string()),
            None => Err(TokenizerError::Template(
                "continue_final_message: the final message does not appear in the rendered chat template".into(),
            )),
        }
    }

    /// Ids of the end-of-turn tokens a chat template may emit, which end an answer
    /// just like EOS does: Llama 3's and LLaDA's `<|eot_id|>`, ChatML's `<|im_end|>`,
    /// `<|endoftext|>`, LLaDA-MoE's and LLaDA 2's `<|role_end|>`, and DiffuCoder's
    /// `<|dlm_pad|>`, which fills its answer region after the answer.
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        [
            "<|eot_id|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|role_end|>",
            "<|dlm_pad|>",
        ]
        .iter()
        .filter_map(|t| self.token_id(t))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{write_demo_model, DemoSpec};
    use crate::models::Architecture;

    fn demo(arch: Architecture) -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(&DemoSpec::tiny(arch), dir.path()).unwrap();
        let tok = TextTokenizer::load(dir.path()).unwrap();
        (dir, tok)
    }

    #[test]
    fn token_bytes_recover_pieces_of_multibyte_characters() {
        let (_d, tok) = demo(Architecture::Qwen2);
        let ids = tok.encode("é").unwrap();
        assert_eq!(ids, vec![0xC3, 0xA9]);
        assert_eq!(tok.token_bytes(0xC3), vec![0xC3]);
        assert_eq!(tok.token_display(0xC3), "bytes:\\xc3");
        assert_eq!(tok.token_display(u32::from(b'a')), "a");
        assert_eq!(tok.token_display(u32::from(b' ')), " ");
        assert_eq!(tok.token_display(256), "<|endoftext|>");
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
    }

    #[test]
    fn byte_level_round_trip_including_unicode() {
        let (_d, tok) = demo(Architecture::Llada);
        for text in ["hello world", "Grüße, 世界! 🎉", " leading space", ""] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        assert_eq!(
            tok.encode("ab").unwrap(),
            vec![97, 98],
            "bytes map to their own ids"
        );
    }

    #[test]
    fn llada_chat_template_matches_upstream_format() {
        let (_d, tok) = demo(Architecture::Llada);
        let text = tok
            .apply_chat_template(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", " Hi "),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let ids = tok.encode(&text).unwrap();
        assert_eq!(
            ids[0],
            tok.token_id("<|startoftext|>").unwrap(),
            "special tokens are single ids"
        );
        assert!(ids.contains(&tok.token_id("<|eot_id|>").unwrap()));
    }

    #[test]
    fn dream_chat_template_adds_default_system_prompt() {
        let (_d, tok) = demo(Architecture::Dream);
        let text = tok
            .apply_chat_template(&[ChatMessage::new("user", "2+2?")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(tok
            .end_of_turn_ids()
            .contains(&tok.token_id("<|im_end|>").unwrap()));
    }

    #[test]
    fn plain_prompts_get_the_bos_tokenizer_config_asks_for() {
        let (dir, tok) = demo(Architecture::Llama);
        assert_eq!(tok.encode_plain("hi").unwrap(), tok.encode("hi").unwrap());
        let path = dir.path().join("tokenizer_config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["add_bos_token"] = Value::Bool(true);
        std::fs::write(&path, config.to_string()).unwrap();
        let tok = TextTokenizer::load(dir.path()).unwrap();
        let bos = tok.token_id("<s>").unwrap();
        assert_eq!(tok.encode_plain("hi").unwrap(), vec![bos, 104, 105]);
        assert_eq!(
            tok.encode("hi").unwrap(),
            vec![104, 105],
            "chat prompts: the template's own"
        );
    }

    #[test]
    fn llada_moe_and_diffucoder_turn_ends_end_an_answer() {
        let (dir, _) = demo(Architecture::Llada);
        let path = dir.path().join("tokenizer.json");
        let mut file: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (id, content) in [(300, "<|role_end|>"), (301, "<|dlm_pad|>")] {
            file["added_tokens"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true
                }));
        }
        std::fs::write(&path, file.to_string()).unwrap();
        let tok = TextTokenizer::load(dir.path()).unwrap();
        let ends = tok.end_of_turn_ids();
        for token in ["<|role_end|>", "<|dlm_pad|>"] {
            let id = tok.token_id(token).unwrap();
            assert!(ends.contains(&id), "{token} {id} in {ends:?}");
        }
    }

    #[test]
    fn continue_final_message_cuts_after_the_assistants_text() {
        let (_d, tok) = demo(Architecture::Dream);
        let msgs = [
            ChatMessage::new("user", "Count to three."),
            ChatMessage::new("assistant", "One, two,"),
        ];
        let text = tok.continue_final_message(&msgs, None, None).unwrap();
        assert!(
            text.ends_with("<|im_start|>assistant\nOne, two,"),
            "{text:?}"
        );
        let empty = [
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", ""),
        ];
        assert!(tok.continue_final_message(&empty, None, None).is_err());
    }

    #[test]
    fn missing_tokenizer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = TextTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}

//! User content whose special-token spellings stay text.
//!
//! transformers and vLLM read `<|eot_id|>` typed by a user as the control token, and
//! that stays our default ([`SpecialsInContent::Parse`]) for parity. With
//! [`SpecialsInContent::Text`] the specials of a prompt are only the ones the chat
//! template writes: before rendering, every special-token spelling in a message's
//! content is swapped for a placeholder ([`TextTokenizer::shield`]); after rendering,
//! the prompt is split at the specials the template wrote and each piece, the user's
//! spellings put back, is encoded as text ([`TextTokenizer::encode_shielded`]). The ids
//! never contain a control token the user typed.

use super::{TextTokenizer, TokenizerError};

/// Opens and closes a placeholder. Private-use characters no template writes; one typed
/// by a user is shielded like a special-token spelling, so it cannot fake a placeholder.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// How special-token text in user content is read (`--special-tokens-in-content`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum SpecialsInContent {
    /// As control tokens, as transformers and vLLM do.
    #[default]
    Parse,
    /// As plain text: only the chat template writes control tokens.
    Text,
}

/// The spellings [`TextTokenizer::shield`] took out, in placeholder order.
#[derive(Debug, Default)]
pub struct Shielded {
    literals: Vec<String>,
}

impl TextTokenizer {
    /// The tokenizer that reads special-token spellings as text.
    fn literal(&self) -> &tokenizers::Tokenizer {
        self.literal.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        })
    }

    /// The spellings of the special tokens, longest first (so `<|im_end|>` is found
    /// before a shorter special that is a prefix of it).
    fn special_spellings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content)
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.push(OPEN.to_string());
        out.push(CLOSE.to_string());
        out
    }

    /// `text` with every special-token spelling replaced by a placeholder recorded in
    /// `shielded`.
    pub fn shield(&self, text: &str, shielded: &mut Shielded) -> String {
        let spellings = self.special_spellings();
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while !rest.is_empty() {
            for s in &spellings {
                if let Some(tail) = rest.strip_prefix(s.as_str()) {
                    out.push(OPEN);
                    out.push_str(&shielded.literals.len().to_string());
                    out.push(CLOSE);
                    shielded.literals.push(s.clone());
                    rest = tail;
                    continue 'scan;
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
        out
    }

    /// Token ids of a rendered prompt whose user content went through [`Self::shield`]:
    /// the template's specials recognised, the user's spellings as text. The text is
    /// split at the template's specials only, as the tokenizer itself splits a prompt,
    /// and each piece (user spellings restored in it) is encoded whole, so merges and
    /// spacing are what a tokenisation of that piece as text gives.
    pub fn encode_shielded(
        &self,
        rendered: &str,
        shielded: &Shielded,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut spellings = self.special_spellings();
        spellings.retain(|s| !s.starts_with(OPEN) && !s.starts_with(CLOSE));
        let mut ids = Vec::new();
        let mut piece = String::new();
        let mut rest = rendered;
        'scan: while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix(OPEN) {
                let close = after.find(CLOSE).ok_or_else(|| {
                    TokenizerError::Tokenize("the chat template cut a placeholder in two".into())
                })?;
                let literal = after[..close]
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| shielded.literals.get(i))
                    .ok_or_else(|| {
                        TokenizerError::Tokenize("the chat template changed a placeholder".into())
                    })?;
                piece.push_str(literal);
                rest = &after[close + CLOSE.len_utf8()..];
                continue;
            }
            for s in &spellings {
                if let Some(tail) = rest.strip_prefix(s.as_str()) {
                    if let Some(id) = self.inner.token_to_id(s) {
                        ids.extend(self.encode_literal(&piece, false)?);
                        piece.clear();
                        ids.push(id);
                        rest = tail;
                        continue 'scan;
                    }
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                piece.push(c);
            }
            rest = chars.as_str();
        }
        ids.extend(self.encode_literal(&piece, false)?);
        Ok(ids)
    }

    /// `text` with special-token spellings read as text; `add_special_tokens` adds what
    /// the post-processor adds (a plain prompt's BOS).
    pub fn encode_literal(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.literal()
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }
}

crate::named_enum!(SpecialsInContent, "special_tokens_in_content", false);

//! From settled answer tokens to the text a client sees: incremental detokenization
//! that never emits half a UTF-8 character, and stop strings that may straddle token
//! (and block) boundaries. Streaming and non-streaming responses both go through it, so
//! they always agree on the text.

use crate::tokenizer::{TextTokenizer, TokenizerError};

pub struct TextAssembler<'a> {
    tokenizer: &'a TextTokenizer,
    stops: &'a [String],
    sent: String,
    stopped: bool,
}

impl<'a> TextAssembler<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, stops: &'a [String]) -> Self {
        Self {
            tokenizer,
            stops,
            sent: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string was found; nothing more is emitted after it.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.sent
    }

    /// Takes the settled answer so far and returns the new text that is safe to emit.
    /// `last` flushes whatever was held back.
    pub fn push(&mut self, settled: &[u32], last: bool) -> Result<String, TokenizerError> {
        if self.stopped {
            return Ok(String::new());
        }
        let full = self.tokenizer.decode(settled)?;
        let (text, hit) = match self.first_stop(&full) {
            Some(at) => (&full[..at], true),
            None => (full.as_str(), false),
        };
        self.stopped = hit;
        let end = if hit || last {
            text.len()
        } else {
            self.safe_end(text)
        };
        let ready = &text[..end];
        // Byte-level decoding only ever appends; if a decoder rewrote earlier text, wait
        // for the end rather than emit something inconsistent.
        if !ready.starts_with(self.sent.as_str()) || ready.len() < self.sent.len() {
            return Ok(String::new());
        }
        let delta = ready[self.sent.len()..].to_string();
        self.sent.push_str(&delta);
        Ok(delta)
    }

    fn first_stop(&self, text: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
    }

    /// Holds back an incomplete UTF-8 character (decoded as U+FFFD) and any suffix that
    /// could be the start of a stop string.
    fn safe_end(&self, text: &str) -> usize {
        let mut end = text.trim_end_matches('\u{FFFD}').len();
        let held = self
            .stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(move |(i, _)| &stop[..i])
                    .filter(|prefix| text[..end].ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0);
        end -= held;
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{write_demo_model, DemoSpec};
    use crate::models::Architecture;

    fn tokenizer() -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        write_demo_model(&DemoSpec::tiny(Architecture::Llada), dir.path()).unwrap();
        let tok = TextTokenizer::load(dir.path()).unwrap();
        (dir, tok)
    }

    /// Feeds the ids of `text` one token at a time and collects the deltas.
    fn stream(tok: &TextTokenizer, stops: &[String], text: &str) -> (Vec<String>, String, bool) {
        let ids = tok.encode(text).unwrap();
        let mut a = TextAssembler::new(tok, stops);
        let mut deltas = Vec::new();
        for n in 1..=ids.len() {
            deltas.push(a.push(&ids[..n], false).unwrap());
        }
        deltas.push(a.push(&ids, true).unwrap());
        (deltas, a.text().to_string(), a.stopped())
    }

    #[test]
    fn never_splits_a_utf8_character() {
        let (_d, tok) = tokenizer();
        let (deltas, text, _) = stream(&tok, &[], "né 世界🎉");
        assert_eq!(text, "né 世界🎉");
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
        assert_eq!(deltas.concat(), "né 世界🎉");
    }

    #[test]
    fn stop_strings_across_token_boundaries() {
        let (_d, tok) = tokenizer();
        let stops = vec!["END".to_string()];
        let (deltas, text, stopped) = stream(&tok, &stops, "abc ENDING later");
        assert_eq!(text, "abc ");
        assert!(stopped);
        assert!(
            deltas.iter().all(|d| !d.contains('E')),
            "the held-back prefix never leaks: {deltas:?}"
        );

        // A stop-string prefix that turns out not to be one is released.
        let (_, text, stopped) = stream(&tok, &stops, "an ENtry");
        assert_eq!(text, "an ENtry");
        assert!(!stopped);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (_d, tok) = tokenizer();
        let stops = vec!["world".to_string(), "lo".to_string()];
        let (_, text, stopped) = stream(&tok, &stops, "hello world");
        assert_eq!(text, "hel");
        assert!(stopped);
    }
}

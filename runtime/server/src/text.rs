//! From settled answer tokens to the text a client sees: incremental detokenization
//! that never emits half a UTF-8 character, and stop strings that may straddle token
//! (and block) boundaries. Streaming and non-streaming responses both go through it, so
//! they always agree on the text.

use dfastllm_core::tokenizer::{TextTokenizer, TokenizerError};

pub struct TextAssembler<'a> {
    tokenizer: &'a TextTokenizer,
    stops: &'a [String],
    /// Text of the tokens decoded so far (whole characters only), emitted or not.
    decoded: String,
    /// Bytes of `decoded` already emitted.
    sent: usize,
    /// Tokens before `prefix_offset` are final text; `prefix_offset..read_offset` are
    /// decoded again with each new token, as a tokenizer may render a token differently
    /// once it sees its left neighbour (a SentencePiece leading space, the later bytes
    /// of a character).
    prefix_offset: usize,
    read_offset: usize,
    stopped: bool,
}

impl<'a> TextAssembler<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, stops: &'a [String]) -> Self {
        Self {
            tokenizer,
            stops,
            decoded: String::new(),
            sent: 0,
            prefix_offset: 0,
            read_offset: 0,
            stopped: false,
        }
    }

    /// Whether a stop string was found; nothing more is emitted after it.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.decoded[..self.sent]
    }

    /// Decodes the tokens of `settled` not seen yet: the window from `prefix_offset` is
    /// decoded with and without them, and the difference is new text once it ends on a
    /// whole character (or at once when `last`). Each token is decoded a bounded number
    /// of times, so an answer costs linear, not quadratic, decoding.
    fn decode_new(&mut self, settled: &[u32], last: bool) -> Result<(), TokenizerError> {
        if settled.len() <= self.read_offset {
            return Ok(());
        }
        let window = &settled[self.prefix_offset..];
        let before = self
            .tokenizer
            .decode(&settled[self.prefix_offset..self.read_offset])?;
        let after = self.tokenizer.decode(window)?;
        if !after.starts_with(&before) {
            // The tokenizer rewrote text it had already produced: start over from the
            // whole answer (rare; correct, just slower).
            let full = self.tokenizer.decode(settled)?;
            // Never contradict what a client already has.
            let consistent = full.starts_with(&self.decoded[..self.sent]);
            if consistent && (last || !full.ends_with('\u{FFFD}')) {
                self.decoded = full;
                self.prefix_offset = settled.len();
                self.read_offset = settled.len();
            }
            return Ok(());
        }
        if after.len() > before.len() && (last || !after.ends_with('\u{FFFD}')) {
            self.decoded.push_str(&after[before.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = settled.len();
        } else if last {
            self.prefix_offset = settled.len();
            self.read_offset = settled.len();
        }
        Ok(())
    }

    /// Takes the settled answer so far (it only ever grows) and returns the new text
    /// that is safe to emit. `last` flushes whatever was held back.
    pub fn push(&mut self, settled: &[u32], last: bool) -> Result<String, TokenizerError> {
        if self.stopped {
            return Ok(String::new());
        }
        self.decode_new(settled, last)?;
        // A stop string can start at most its length minus one before the unsent text.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !self.decoded.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.decoded[from..].find(s.as_str()).map(|at| from + at))
            .min();
        let end = match hit {
            Some(at) => {
                self.stopped = true;
                at
            }
            None if last => self.decoded.len(),
            None => self.safe_end(),
        };
        if end <= self.sent {
            if self.stopped {
                self.decoded.truncate(self.sent);
            }
            return Ok(String::new());
        }
        let delta = self.decoded[self.sent..end].to_string();
        self.sent = end;
        if self.stopped {
            self.decoded.truncate(end);
        }
        Ok(delta)
    }

    /// Holds back any suffix that could be the start of a stop string.
    fn safe_end(&self) -> usize {
        let text = self.decoded.as_str();
        let held = self
            .stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(move |(i, _)| &stop[..i])
                    .filter(|prefix| text.ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0);
        text.len() - held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfastllm_core::demo::{write_demo_model, DemoSpec};
    use dfastllm_core::models::Architecture;

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
    fn streaming_one_token_at_a_time_equals_one_push() {
        let (_d, tok) = tokenizer();
        let text = "Grüße aus Köln: 世界🎉 and an END somewhere ".repeat(5);
        for stops in [
            vec![],
            vec!["Köln: 世".to_string()],
            vec!["🎉 and".to_string()],
        ] {
            let (deltas, streamed, stopped) = stream(&tok, &stops, &text);
            let mut whole = TextAssembler::new(&tok, &stops);
            let ids = tok.encode(&text).unwrap();
            let at_once = whole.push(&ids, true).unwrap();
            assert_eq!(streamed, at_once, "stops {stops:?}");
            assert_eq!(deltas.concat(), streamed);
            assert_eq!(stopped, whole.stopped());
            assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')));
        }
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

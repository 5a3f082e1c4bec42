//! The fast-decoding knobs: how many positions a step commits (APD), whether a filled
//! block is refined again (MoR), and which keys/values a step may reuse (KV cache).
//! Pure decisions over confidences; the sequence state machine applies them.

pub use crate::models::KvCacheMode;

/// How many of a block's masked positions one step commits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum CommitRule {
    /// LLaDA's reference: a fixed number per step (`steps` split evenly over each block).
    #[default]
    Schedule,
    /// Fast-dLLM's confidence-aware decoding: every masked position whose confidence
    /// (probability of the proposed token) is at least `threshold`; the most confident
    /// one always; at most `max_parallel`.
    Threshold { threshold: f32, max_parallel: usize },
    /// Fast-dLLM's factor rule: the n-th most confident position (n from 1) is committed
    /// while its confidence is at least `1 - factor / (n + 1)`; the first always; at most
    /// `max_parallel`.
    Factor { factor: f32, max_parallel: usize },
    /// The APD paper's verifier: a small autoregressive model with the same tokenizer
    /// scores the dLLM's left-to-right draft of up to `max_lookahead` positions; the
    /// target is the product mixture `p_dLLM^mix * p_AR^(1 - mix)`, sampled with the
    /// draft's Gumbel noise, and the longest agreeing prefix is committed (plus the
    /// target's token at the first disagreement). Needs the verifier model beside the
    /// diffusion one (`decoding::WithVerifier`, `dfastllm eval --apd-verifier`).
    Verifier { mix: f32, max_lookahead: usize },
}

impl CommitRule {
    /// Whether the per-block step schedule applies (APD modes decide per step instead).
    pub fn uses_schedule(&self) -> bool {
        matches!(self, Self::Schedule)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Threshold { .. } => "threshold",
            Self::Factor { .. } => "factor",
            Self::Verifier { .. } => "verifier",
        }
    }

    /// How many of the `sorted` confidences (descending, the block's masked positions)
    /// to commit this step. `scheduled` is the reference schedule's count.
    pub fn count(&self, sorted: &[f32], scheduled: usize) -> usize {
        if sorted.is_empty() {
            return 0;
        }
        match *self {
            Self::Schedule => scheduled.min(sorted.len()),
            Self::Threshold {
                threshold,
                max_parallel,
            } => sorted
                .iter()
                .take_while(|&&c| c >= threshold)
                .count()
                .clamp(1, max_parallel.max(1)),
            Self::Factor {
                factor,
                max_parallel,
            } => sorted
                .iter()
                .enumerate()
                .take_while(|&(i, &c)| i == 0 || c >= 1.0 - factor / (i as f32 + 2.0))
                .count()
                .min(max_parallel.max(1)),
            // The verifier commits what it accepted, decided outside this rule.
            Self::Verifier { .. } => 1,
        }
    }
}

/// Mixture of recursions, our inference-time form: once a block is filled, positions
/// committed with confidence below `confidence_threshold` are re-masked and predicted
/// again with the rest of the block now visible (one forward pass per recursion, every
/// re-masked position recommitted). Every block gets `min_recursions` (re-masking at
/// least its least confident position), then more while some position stays below the
/// threshold, up to `max_recursions`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mor {
    pub min_recursions: usize,
    pub max_recursions: usize,
    pub confidence_threshold: f32,
}

impl Mor {
    /// Whether a filled block whose lowest commit confidence is `lowest` gets another
    /// recursion after `done` of them.
    pub fn recurse(&self, done: usize, lowest: f32) -> bool {
        done < self.max_recursions
            && (done < self.min_recursions || lowest < self.confidence_threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_commits_the_scheduled_count() {
        assert_eq!(CommitRule::Schedule.count(&[0.9, 0.5, 0.1], 2), 2);
        assert_eq!(CommitRule::Schedule.count(&[0.9], 2), 1);
        assert_eq!(CommitRule::Schedule.count(&[], 2), 0);
    }

    #[test]
    fn threshold_commits_the_confident_and_always_one() {
        let t = CommitRule::Threshold {
            threshold: 0.9,
            max_parallel: 16,
        };
        assert_eq!(t.count(&[0.99, 0.95, 0.9, 0.5], 1), 3);
        assert_eq!(t.count(&[0.4, 0.3], 1), 1, "the most confident always");
        let capped = CommitRule::Threshold {
            threshold: 0.5,
            max_parallel: 2,
        };
        assert_eq!(capped.count(&[0.99, 0.95, 0.9, 0.8], 1), 2);
    }

    #[test]
    fn factor_needs_more_confidence_for_each_extra_position() {
        // factor 1: 2nd needs >= 1 - 1/3, 3rd >= 1 - 1/4, 4th >= 1 - 1/5.
        let f = CommitRule::Factor {
            factor: 1.0,
            max_parallel: 16,
        };
        assert_eq!(f.count(&[0.5, 0.7, 0.76, 0.79], 1), 3);
        assert_eq!(f.count(&[0.5, 0.6], 1), 1);
        assert_eq!(f.count(&[0.99, 0.99, 0.99, 0.99], 1), 4);
    }

    #[test]
    fn mor_recurses_only_while_something_is_unsure() {
        let m = Mor {
            min_recursions: 1,
            max_recursions: 3,
            confidence_threshold: 0.7,
        };
        assert!(m.recurse(0, 0.95), "every block gets min_recursions");
        assert!(
            !m.recurse(1, 0.95),
            "a confident block stops at the minimum"
        );
        assert!(m.recurse(1, 0.5));
        assert!(m.recurse(2, 0.5));
        assert!(!m.recurse(3, 0.5), "never beyond max_recursions");
        let none = Mor {
            min_recursions: 0,
            ..m
        };
        assert!(!none.recurse(0, 0.95));
    }

    #[test]
    fn kv_cache_names_round_trip() {
        for m in [KvCacheMode::None, KvCacheMode::Prefix, KvCacheMode::Dual] {
            assert_eq!(m.to_string().parse::<KvCacheMode>(), Ok(m));
        }
        assert!("full".parse::<KvCacheMode>().unwrap_err().contains("dual"));
    }
}

//! The engine: one scheduler thread owns the model and runs iteration-level batching.
//!
//! Requests arrive through a bounded admission queue ([`EngineHandle::submit_all`]
//! queues a request's sequences together or fails fast with [`SubmitError::QueueFull`]
//! rather than letting latency grow without bound; `queue.rs`). Every iteration the scheduler admits waiting sequences up to
//! `max_concurrent_requests`, drops those whose client went away or whose deadline
//! passed, runs one step for all the rest ([`Stepper::step`]) and reports progress
//! on each sequence's event channel. Sequences join and leave between iterations.

mod breaker;
mod faults;
mod memory;
mod queue;

pub use breaker::{BreakerConfig, BreakerState};
pub use faults::{is_out_of_memory, FaultInjector, FaultKind, FaultPlan};
pub use memory::{KvBudget, MemoryCritical, MemoryGuard, MemoryGuardConfig};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::decoding::{Answer, Sequence, StepState, Stepper, TokenLogprob};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_concurrent_requests: usize,
    pub max_queue: usize,
    /// How long an idle scheduler waits for more requests before the first forward pass
    /// of a new batch; trades a little latency for larger batches under bursty load.
    pub batch_wait: Duration,
    pub breaker: BreakerConfig,
}

/// What a sequence reports to whoever submitted it.
#[derive(Debug)]
pub enum Event {
    /// The settled answer grew (the tokens before the first still-masked position, up
    /// to the first end-of-sequence token): these tokens follow the ones already sent.
    Progress {
        new_token_ids: Vec<u32>,
        /// Log-probabilities of the tokens settled since the previous event, when asked.
        new_logprobs: Vec<TokenLogprob>,
        forward_passes: usize,
        steps: usize,
    },
    Done(Box<Finished>),
    Failed(Failure),
}

#[derive(Debug)]
pub struct Finished {
    pub answer: Answer,
    pub queue_time: Duration,
    pub decode_time: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the request timed out")]
    Timeout,
    #[error("the model failed: {0}")]
    Model(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full")]
    QueueFull,
    #[error("the engine has stopped")]
    Stopped,
    /// The circuit breaker is open (the model failed pass after pass).
    #[error("the model is failing; the circuit breaker is open")]
    BreakerOpen { retry_after: Duration },
    /// GPU memory is above the guard's critical level.
    #[error("GPU memory is {used_percent}% used, above the guard's critical level")]
    MemoryCritical { used_percent: u32 },
}

/// One sequence to decode.
#[derive(Debug)]
pub struct Submission {
    pub sequence: Sequence,
    pub deadline: Option<Instant>,
    pub events: UnboundedSender<Event>,
}

struct Queued {
    submission: Submission,
    enqueued: Instant,
}

/// The cloneable front door of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    queue: Arc<queue::Queue>,
    /// When the last clone goes, the scheduler finishes what it has and returns.
    _alive: Arc<HandlesAlive>,
    metrics: Arc<Metrics>,
    breaker: Arc<breaker::Breaker>,
    memory: Arc<MemoryGuard>,
}

struct HandlesAlive(Arc<queue::Queue>);

impl Drop for HandlesAlive {
    fn drop(&mut self) {
        self.0.close_senders();
    }
}

impl EngineHandle {
    pub fn submit(&self, submission: Submission) -> Result<(), SubmitError> {
        self.submit_all(vec![submission])
    }

    /// Queues every sequence of one request, or none of them: a request is refused
    /// whole, before any of its answers starts.
    pub fn submit_all(&self, submissions: Vec<Submission>) -> Result<(), SubmitError> {
        let enqueued = Instant::now();
        // Memory first: a request refused for memory must not use up the breaker's
        // half-open probe.
        self.memory
            .admit(&self.metrics)
            .map_err(|c| SubmitError::MemoryCritical {
                used_percent: (c.ratio * 100.0).round() as u32,
            })?;
        self.breaker
            .admit(enqueued, &self.metrics)
            .map_err(|retry_after| SubmitError::BreakerOpen { retry_after })?;
        let items = submissions
            .into_iter()
            .map(|submission| Queued {
                submission,
                enqueued,
            })
            .collect();
        let (waiting, pruned) = self.queue.push_all(items)?;
        self.metrics.requests_cancelled.inc_by(pruned as u64);
        self.metrics.requests_waiting.set(waiting as i64);
        Ok(())
    }

    /// Sequences submitted but not yet admitted into the running batch.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// The most sequences the queue holds: a request with more can never be admitted.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The GPU memory guard: installed after loading, read at scrape.
    pub fn memory(&self) -> &MemoryGuard {
        &self.memory
    }
}

/// The scheduler half: run it on a thread of its own with the model.
pub struct Scheduler {
    queue: Arc<queue::Queue>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    breaker: Arc<breaker::Breaker>,
    memory: Arc<MemoryGuard>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.queue.close_receiver();
    }
}

/// A bounded admission queue and the scheduler that drains it.
pub fn engine(config: EngineConfig, metrics: Arc<Metrics>) -> (EngineHandle, Scheduler) {
    let queue = Arc::new(queue::Queue::new(config.max_queue));
    let breaker = Arc::new(breaker::Breaker::new(config.breaker, &metrics));
    let memory = Arc::new(MemoryGuard::default());
    let handle = EngineHandle {
        queue: queue.clone(),
        _alive: Arc::new(HandlesAlive(queue.clone())),
        metrics: metrics.clone(),
        breaker: breaker.clone(),
        memory: memory.clone(),
    };
    (
        handle,
        Scheduler {
            queue,
            metrics,
            config,
            breaker,
            memory,
        },
    )
}

struct Active {
    submission: Submission,
    queue_time: Duration,
    admitted: Instant,
    sent: usize,
    committed: usize,
}

/// Keeps the `active` entries `keep` accepts, and their step state (which follows the
/// batch's order).
fn retain_active(
    active: &mut Vec<Active>,
    state: &mut StepState,
    mut keep: impl FnMut(&mut Active) -> bool,
) {
    let flags: Vec<bool> = active.iter_mut().map(&mut keep).collect();
    let mut i = 0;
    active.retain(|_| {
        i += 1;
        flags[i - 1]
    });
    if flags.iter().any(|k| !k) {
        state.retain(&flags);
    }
}

/// What `seqs` reserve of the KV budget. Diffusion caches are one per sequence, of its
/// length. The autoregressive cache is one grid of slots x the longest sequence, whose
/// length grows by doubling: its sequences reserve twice the longest each.
fn reserved_bytes<'a>(seqs: impl Iterator<Item = &'a Sequence>, budget: KvBudget) -> u64 {
    let (mut diffusion, mut causal, mut longest) = (0u64, 0u64, 0usize);
    for seq in seqs {
        match seq {
            Sequence::Diffusion(_) => diffusion += budget.bytes_for(seq.max_len()),
            Sequence::Autoregressive(_) => {
                causal += 1;
                longest = longest.max(seq.max_len());
            }
        }
    }
    diffusion + causal * budget.bytes_for(2 * longest)
}

/// Successful passes at a lowered batch limit before it doubles back towards
/// `max_concurrent_requests`: memory that was short once is tried again gradually.
const PASSES_BEFORE_REGROWING: usize = 64;

/// What the scheduler holds between iterations.
struct Batch {
    active: Vec<Active>,
    state: StepState,
    /// Sequences taken out of the batch by an out-of-memory halving, progress kept;
    /// they rejoin before anything from the queue.
    parked: VecDeque<Active>,
    /// The most sequences per pass now: `max_concurrent_requests`, or less after an
    /// out-of-memory pass.
    limit: usize,
    passes_at_limit: usize,
}

impl Scheduler {
    /// Serves until every [`EngineHandle`] is dropped and the last sequence finished.
    pub fn run<M: Stepper + ?Sized>(self, model: &M) {
        let mut batch = Batch {
            active: Vec::new(),
            state: StepState::new(),
            parked: VecDeque::new(),
            limit: self.config.max_concurrent_requests.max(1),
            passes_at_limit: 0,
        };
        loop {
            if batch.active.is_empty() && batch.parked.is_empty() {
                match self.queue.pop(None) {
                    Some(q) => self.admit(q, &mut batch.active),
                    None => return,
                }
                self.gather(&mut batch);
            }
            self.admit_waiting(&mut batch);
            self.drop_abandoned(&mut batch);
            self.metrics.requests_running.set(batch.active.len() as i64);
            self.publish_kv_usage(&batch.active);
            if batch.active.is_empty() {
                continue;
            }
            self.iterate(model, &mut batch);
            self.metrics.requests_running.set(batch.active.len() as i64);
            self.publish_kv_usage(&batch.active);
        }
    }

    fn admit(&self, q: Queued, active: &mut Vec<Active>) {
        self.metrics.requests_waiting.set(self.queue.len() as i64);
        let committed = q.submission.sequence.committed_answer_tokens();
        active.push(Active {
            queue_time: q.enqueued.elapsed(),
            admitted: Instant::now(),
            submission: q.submission,
            sent: 0,
            committed,
        });
    }

    /// Waits up to `batch_wait` for more requests to join a batch that just formed.
    fn gather(&self, batch: &mut Batch) {
        let until = Instant::now() + self.config.batch_wait;
        while batch.active.len() < batch.limit {
            match self.queue.pop(Some(until)) {
                Some(q) if self.fits(&batch.active, &q.submission.sequence) => {
                    self.admit(q, &mut batch.active)
                }
                Some(q) => return self.queue.unpop(q),
                None => return,
            }
        }
    }

    fn admit_waiting(&self, batch: &mut Batch) {
        while batch.active.len() < batch.limit {
            if let Some(parked) = batch.parked.pop_front() {
                batch.active.push(parked);
                continue;
            }
            match self.queue.try_pop() {
                Some(q) if self.fits(&batch.active, &q.submission.sequence) => {
                    self.admit(q, &mut batch.active)
                }
                Some(q) => return self.queue.unpop(q),
                None => return,
            }
        }
    }

    /// Whether `seq`'s cache fits the KV budget beside `active`'s (always, without a
    /// budget; always, when nothing runs: one sequence at a time rather than none). The
    /// queue keeps its order: the first that does not fit waits, and so do those after
    /// it, so a long request is never starved by short ones.
    fn fits(&self, active: &[Active], seq: &Sequence) -> bool {
        let Some(budget) = self.memory.budget() else {
            return true;
        };
        let with_it = reserved_bytes(
            active
                .iter()
                .map(|a| &a.submission.sequence)
                .chain(std::iter::once(seq)),
            budget,
        );
        active.is_empty() || with_it <= budget.bytes
    }

    fn reserved(&self, active: &[Active], budget: KvBudget) -> u64 {
        reserved_bytes(active.iter().map(|a| &a.submission.sequence), budget)
    }

    /// `dfastllm_kv_cache_usage_ratio`: what the running sequences reserve of the budget.
    fn publish_kv_usage(&self, active: &[Active]) {
        if let Some(budget) = self.memory.budget() {
            let reserved = self.reserved(active, budget) as f64;
            let ratio = match budget.bytes {
                // Nothing was left after loading: one sequence runs, and it is over.
                0 if reserved > 0.0 => 1.0,
                0 => 0.0,
                b => reserved / b as f64,
            };
            self.metrics.kv_cache_usage_ratio.set(ratio);
        }
    }

    /// Whether `a` is still wanted; a sequence past its deadline is told so.
    fn still_wanted(&self, a: &Active, now: Instant) -> bool {
        if a.submission.events.is_closed() {
            self.metrics.requests_cancelled.inc();
            return false;
        }
        if a.submission.deadline.is_some_and(|d| now >= d) {
            let _ = a.submission.events.send(Event::Failed(Failure::Timeout));
            return false;
        }
        true
    }

    /// Frees the slots of sequences nobody waits for any more, or that ran out of time.
    fn drop_abandoned(&self, batch: &mut Batch) {
        let now = Instant::now();
        retain_active(&mut batch.active, &mut batch.state, |a| {
            self.still_wanted(a, now)
        });
        batch.parked.retain(|a| self.still_wanted(a, now));
    }

    fn iterate<M: Stepper + ?Sized>(&self, model: &M, batch: &mut Batch) {
        let Batch { active, state, .. } = batch;
        self.metrics.batch_size.observe(active.len() as f64);
        let mut seqs: Vec<&mut Sequence> = active
            .iter_mut()
            .map(|a| &mut a.submission.sequence)
            .collect();
        let result = model.step(&mut seqs, state);
        self.metrics.forward_passes.inc();
        if let Err(e) = result {
            self.failed_pass(batch, &e);
            return;
        }
        self.breaker.on_success(&self.metrics);
        if batch.limit < self.config.max_concurrent_requests {
            batch.passes_at_limit += 1;
            if batch.passes_at_limit >= PASSES_BEFORE_REGROWING {
                batch.limit = (batch.limit * 2).min(self.config.max_concurrent_requests);
                batch.passes_at_limit = 0;
            }
        }
        let Batch { active, state, .. } = batch;
        retain_active(active, state, |a| {
            let committed = a.submission.sequence.committed_answer_tokens();
            self.metrics
                .tokens_per_forward_pass
                .observe((committed - a.committed) as f64);
            a.committed = committed;
            let seq = &a.submission.sequence;
            if seq.settled_len() > a.sent {
                let settled = seq.settled_answer();
                let new_logprobs = seq.logprobs_from(a.sent);
                let new_token_ids = settled[a.sent.min(settled.len())..].to_vec();
                a.sent = settled.len();
                // A closed channel is noticed (and counted) at the next iteration.
                let _ = a.submission.events.send(Event::Progress {
                    new_token_ids,
                    new_logprobs,
                    forward_passes: seq.forward_passes(),
                    steps: seq.steps(),
                });
            }
            if !a.submission.sequence.is_finished() {
                return true;
            }
            let finished = Finished {
                answer: a.submission.sequence.answer(),
                queue_time: a.queue_time,
                decode_time: a.admitted.elapsed(),
            };
            let _ = a.submission.events.send(Event::Done(Box::new(finished)));
            false
        });
    }

    /// A pass failed. Out of memory with more than one sequence: halve the batch (the
    /// second half waits, progress kept) and retry before failing anyone. Otherwise the
    /// pass's sequences fail (503 upstream) and the breaker counts it.
    fn failed_pass(&self, batch: &mut Batch, e: &crate::decoding::DecodeError) {
        // The pass may have half written the cache: every sequence re-reads its context
        // at its next pass.
        batch.state.clear();
        for a in &mut batch.active {
            a.submission.sequence.forget_cache();
        }
        let oom = is_out_of_memory(e);
        self.metrics
            .forward_pass_failures
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: if oom { "oom" } else { "error" }.into(),
            })
            .inc();
        if oom && batch.active.len() > 1 {
            let keep = batch.active.len() / 2;
            tracing::warn!(
                batch = batch.active.len(),
                retry_with = keep,
                error = %e,
                "out of memory: retrying the pass with the batch halved"
            );
            self.metrics.oom_batch_halvings.inc();
            batch.limit = keep;
            batch.passes_at_limit = 0;
            let parked = batch.active.split_off(keep);
            // Parked sequences go back first, in their order, ahead of older parked ones.
            for a in parked.into_iter().rev() {
                batch.parked.push_front(a);
            }
            return;
        }
        tracing::error!(batch = batch.active.len(), error = %e, "forward pass failed");
        self.breaker.on_failure(Instant::now(), &self.metrics);
        for a in batch.active.drain(..) {
            let _ = a
                .submission
                .events
                .send(Event::Failed(Failure::Model(e.to_string())));
        }
    }
}

#[cfg(test)]
mod tests;

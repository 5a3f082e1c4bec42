//! The engine: one scheduler thread owns the model and runs iteration-level batching.
//!
//! Requests arrive through a bounded admission queue ([`EngineHandle::submit`] fails
//! fast with [`SubmitError::QueueFull`] rather than letting latency grow without
//! bound). Every iteration the scheduler admits waiting sequences up to
//! `max_concurrent_requests`, drops those whose client went away or whose deadline
//! passed, runs one step for all the rest ([`Stepper::step`]) and reports progress
//! on each sequence's event channel. Sequences join and leave between iterations.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
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
    tx: SyncSender<Queued>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    pub fn submit(&self, submission: Submission) -> Result<(), SubmitError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let queued = Queued {
            submission,
            enqueued: Instant::now(),
        };
        match self.tx.try_send(queued) {
            Ok(()) => {
                self.metrics
                    .requests_waiting
                    .set(self.waiting.load(Ordering::SeqCst) as i64);
                Ok(())
            }
            Err(e) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// Sequences submitted but not yet admitted into the running batch.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// The scheduler half: run it on a thread of its own with the model.
pub struct Scheduler {
    rx: Receiver<Queued>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
}

/// A bounded admission queue and the scheduler that drains it.
pub fn engine(config: EngineConfig, metrics: Arc<Metrics>) -> (EngineHandle, Scheduler) {
    let (tx, rx) = mpsc::sync_channel(config.max_queue.max(1));
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle {
        tx,
        waiting: waiting.clone(),
        metrics: metrics.clone(),
    };
    (
        handle,
        Scheduler {
            rx,
            waiting,
            metrics,
            config,
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

impl Scheduler {
    /// Serves until every [`EngineHandle`] is dropped and the last sequence finished.
    pub fn run<M: Stepper + ?Sized>(self, model: &M) {
        let mut active: Vec<Active> = Vec::new();
        let mut state = StepState::new();
        loop {
            if active.is_empty() {
                match self.rx.recv() {
                    Ok(q) => self.admit(q, &mut active),
                    Err(_) => return,
                }
                self.gather(&mut active);
            }
            self.admit_waiting(&mut active);
            self.drop_abandoned(&mut active, &mut state);
            self.metrics.requests_running.set(active.len() as i64);
            if active.is_empty() {
                continue;
            }
            self.iterate(model, &mut active, &mut state);
            self.metrics.requests_running.set(active.len() as i64);
        }
    }

    fn admit(&self, q: Queued, active: &mut Vec<Active>) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.metrics
            .requests_waiting
            .set(self.waiting.load(Ordering::SeqCst) as i64);
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
    fn gather(&self, active: &mut Vec<Active>) {
        let until = Instant::now() + self.config.batch_wait;
        while active.len() < self.config.max_concurrent_requests {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.rx.recv_timeout(left) {
                Ok(q) => self.admit(q, active),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn admit_waiting(&self, active: &mut Vec<Active>) {
        while active.len() < self.config.max_concurrent_requests {
            match self.rx.try_recv() {
                Ok(q) => self.admit(q, active),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Frees the slots of sequences nobody waits for any more, or that ran out of time.
    fn drop_abandoned(&self, active: &mut Vec<Active>, state: &mut StepState) {
        let now = Instant::now();
        retain_active(active, state, |a| {
            if a.submission.events.is_closed() {
                self.metrics.requests_cancelled.inc();
                return false;
            }
            if a.submission.deadline.is_some_and(|d| now >= d) {
                let _ = a.submission.events.send(Event::Failed(Failure::Timeout));
                return false;
            }
            true
        });
    }

    fn iterate<M: Stepper + ?Sized>(
        &self,
        model: &M,
        active: &mut Vec<Active>,
        state: &mut StepState,
    ) {
        self.metrics.batch_size.observe(active.len() as f64);
        let mut batch: Vec<&mut Sequence> = active
            .iter_mut()
            .map(|a| &mut a.submission.sequence)
            .collect();
        let result = model.step(&mut batch, state);
        self.metrics.forward_passes.inc();
        if let Err(e) = result {
            for a in active.drain(..) {
                let _ = a
                    .submission
                    .events
                    .send(Event::Failed(Failure::Model(e.to_string())));
            }
            state.clear();
            return;
        }
        retain_active(active, state, |a| {
            let committed = a.submission.sequence.committed_answer_tokens();
            self.metrics
                .tokens_per_forward_pass
                .observe((committed - a.committed) as f64);
            a.committed = committed;
            let seq = &a.submission.sequence;
            if seq.settled_len() > a.sent {
                let settled = seq.settled_answer();
                let logprobs = seq.logprobs();
                let new_logprobs = logprobs[a.sent.min(logprobs.len())..].to_vec();
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
}

#[cfg(test)]
mod tests;

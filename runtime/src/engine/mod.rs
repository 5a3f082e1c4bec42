//! The engine: one scheduler thread owns the model and runs iteration-level batching.
//!
//! Requests arrive through a bounded admission queue ([`EngineHandle::submit`] fails
//! fast with [`SubmitError::QueueFull`] rather than letting latency grow without
//! bound). Every iteration the scheduler admits waiting sequences up to
//! `max_concurrent_requests`, drops those whose client went away or whose deadline
//! passed, runs one forward pass for all the rest ([`step_batch`]) and reports progress
//! on each sequence's event channel. Sequences join and leave between iterations.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::decoding::{step_batch, Answer, DiffusionSequence};
use crate::metrics::Metrics;
use crate::models::LoadedModel;

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
    /// The settled answer grew: every answer token before the first still-masked
    /// position, up to (not including) the first end-of-sequence token.
    Progress {
        token_ids: Vec<u32>,
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
    pub sequence: DiffusionSequence,
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

impl Active {
    fn settled(&self) -> Vec<u32> {
        self.submission.sequence.settled_answer()
    }
}

impl Scheduler {
    /// Serves until every [`EngineHandle`] is dropped and the last sequence finished.
    pub fn run(self, model: &LoadedModel) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            if active.is_empty() {
                match self.rx.recv() {
                    Ok(q) => self.admit(q, &mut active),
                    Err(_) => return,
                }
                self.gather(&mut active);
            }
            self.admit_waiting(&mut active);
            self.drop_abandoned(&mut active);
            self.metrics.requests_running.set(active.len() as i64);
            if active.is_empty() {
                continue;
            }
            self.iterate(model, &mut active);
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
    fn drop_abandoned(&self, active: &mut Vec<Active>) {
        let now = Instant::now();
        active.retain(|a| {
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

    fn iterate(&self, model: &LoadedModel, active: &mut Vec<Active>) {
        self.metrics.batch_size.observe(active.len() as f64);
        let result = {
            let mut seqs: Vec<&mut DiffusionSequence> = active
                .iter_mut()
                .map(|a| &mut a.submission.sequence)
                .collect();
            step_batch(model.model.as_ref(), &mut seqs, model.special.pad_id)
        };
        self.metrics.forward_passes.inc();
        if let Err(e) = result {
            for a in active.drain(..) {
                let _ = a
                    .submission
                    .events
                    .send(Event::Failed(Failure::Model(e.to_string())));
            }
            return;
        }
        active.retain_mut(|a| {
            let committed = a.submission.sequence.committed_answer_tokens();
            self.metrics
                .tokens_per_forward_pass
                .observe((committed - a.committed) as f64);
            a.committed = committed;
            let settled = a.settled();
            if settled.len() > a.sent {
                a.sent = settled.len();
                // A closed channel is noticed (and counted) at the next iteration.
                let seq = &a.submission.sequence;
                let _ = a.submission.events.send(Event::Progress {
                    token_ids: settled,
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

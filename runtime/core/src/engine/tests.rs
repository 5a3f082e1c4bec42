//! The scheduler driven by a fake network: admission, capacity, joining and leaving
//! between iterations, cancellation, deadlines and failed steps, with no model at all.
//! Every test runs the scheduler on its own thread to the end (it returns once every
//! handle is gone and the last sequence finished), then reads the events: no timing.

use std::sync::Mutex;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;
use crate::decoding::{DecodeError, FinishReason, SamplingParams};
use crate::models::{ModelKind, SpecialTokens};

const VOCAB: usize = 8;

/// Commits token `3` to every unfinished autoregressive sequence per step, and records
/// the batch sizes it saw. At its first step it may submit one more sequence (a request
/// that arrives while a batch runs) and then drops its handle.
struct Fake {
    batches: Mutex<Vec<usize>>,
    joins: Mutex<Option<(EngineHandle, Submission)>>,
    fail_at: Option<usize>,
}

impl Fake {
    fn new() -> Self {
        Self {
            batches: Mutex::new(Vec::new()),
            joins: Mutex::new(None),
            fail_at: None,
        }
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

impl Stepper for Fake {
    fn step(&self, batch: &mut [&mut Sequence], _state: &mut StepState) -> Result<(), DecodeError> {
        let mut seen = self.batches.lock().unwrap();
        seen.push(batch.len());
        if self.fail_at == Some(seen.len()) {
            return Err(DecodeError::Internal("the fake failed".into()));
        }
        if let Some((handle, submission)) = self.joins.lock().unwrap().take() {
            handle.submit(submission).unwrap();
        }
        let mut logits = vec![0.0f32; VOCAB];
        logits[3] = 10.0;
        for seq in batch.iter_mut() {
            match &mut **seq {
                Sequence::Autoregressive(s) if !s.is_finished() => s.accept(&logits),
                Sequence::Autoregressive(_) => {}
                Sequence::Diffusion(_) => unreachable!("the fake serves autoregressive sequences"),
            }
        }
        Ok(())
    }
}

fn special() -> SpecialTokens {
    SpecialTokens {
        mask_id: crate::models::NO_MASK,
        eos_ids: vec![7],
        pad_id: 0,
    }
}

fn submission(max_tokens: usize) -> (Submission, UnboundedReceiver<Event>) {
    let params = SamplingParams::with_defaults(max_tokens);
    let seq = Sequence::new(ModelKind::Autoregressive, &[1, 2], &params, &special(), 64).unwrap();
    let (events, rx) = unbounded_channel();
    let s = Submission {
        sequence: seq,
        deadline: None,
        events,
    };
    (s, rx)
}

fn config(max_concurrent_requests: usize) -> EngineConfig {
    EngineConfig {
        max_concurrent_requests,
        max_queue: 8,
        batch_wait: Duration::ZERO,
        breaker: BreakerConfig::default(),
    }
}

/// The events a finished run left: (progress events, the final event).
fn drain(rx: &mut UnboundedReceiver<Event>) -> (usize, Option<Event>) {
    let mut progress = 0;
    let mut last = None;
    while let Ok(event) = rx.try_recv() {
        match event {
            Event::Progress { .. } => progress += 1,
            other => last = Some(other),
        }
    }
    (progress, last)
}

fn done_tokens(event: Option<Event>) -> Vec<u32> {
    match event {
        Some(Event::Done(f)) => f.answer.token_ids,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn a_request_arriving_mid_batch_joins_at_the_next_iteration_and_leaves_when_done() {
    let (handle, scheduler) = engine(config(4), Arc::new(Metrics::new()));
    let (a, mut a_rx) = submission(4);
    let (b, mut b_rx) = submission(2);
    handle.submit(a).unwrap();
    let fake = Fake::new();
    *fake.joins.lock().unwrap() = Some((handle, b));
    scheduler.run(&fake);
    assert_eq!(
        fake.batches(),
        [1, 2, 2, 1],
        "b joins after a's first step and leaves after its two tokens"
    );
    let (a_progress, a_done) = drain(&mut a_rx);
    assert_eq!(done_tokens(a_done), [3, 3, 3, 3]);
    assert_eq!(a_progress, 4, "one progress event per settled token");
    assert_eq!(done_tokens(drain(&mut b_rx).1), [3, 3]);
}

#[test]
fn admission_never_exceeds_max_concurrent_requests() {
    let (handle, scheduler) = engine(config(2), Arc::new(Metrics::new()));
    let mut rxs = Vec::new();
    for _ in 0..3 {
        let (s, rx) = submission(2);
        handle.submit(s).unwrap();
        rxs.push(rx);
    }
    drop(handle);
    let fake = Fake::new();
    scheduler.run(&fake);
    assert_eq!(
        fake.batches(),
        [2, 2, 1, 1],
        "the third waits for a free place"
    );
    for rx in &mut rxs {
        assert_eq!(done_tokens(drain(rx).1), [3, 3]);
    }
}

#[test]
fn a_full_queue_refuses_and_a_stopped_engine_says_so() {
    let (handle, scheduler) = engine(
        EngineConfig {
            max_queue: 1,
            ..config(1)
        },
        Arc::new(Metrics::new()),
    );
    let (first, _rx1) = submission(1);
    let (second, _rx2) = submission(1);
    handle.submit(first).unwrap();
    assert_eq!(handle.waiting(), 1);
    assert_eq!(handle.submit(second).unwrap_err(), SubmitError::QueueFull);
    assert_eq!(
        handle.waiting(),
        1,
        "a refused request is not counted as waiting"
    );
    drop(scheduler);
    let (third, _rx3) = submission(1);
    assert_eq!(handle.submit(third).unwrap_err(), SubmitError::Stopped);
}

#[test]
fn a_client_that_went_away_is_dropped_before_its_first_step() {
    let metrics = Arc::new(Metrics::new());
    let (handle, scheduler) = engine(config(4), metrics.clone());
    let (gone, gone_rx) = submission(3);
    let (kept, mut kept_rx) = submission(1);
    handle.submit(gone).unwrap();
    handle.submit(kept).unwrap();
    drop(gone_rx);
    drop(handle);
    let fake = Fake::new();
    scheduler.run(&fake);
    assert_eq!(
        fake.batches(),
        [1],
        "only the sequence someone waits for runs"
    );
    assert_eq!(metrics.requests_cancelled.get(), 1);
    assert_eq!(done_tokens(drain(&mut kept_rx).1), [3]);
}

#[test]
fn a_passed_deadline_fails_with_timeout_and_frees_its_place() {
    let (handle, scheduler) = engine(config(4), Arc::new(Metrics::new()));
    let (mut late, mut late_rx) = submission(3);
    late.deadline = Some(Instant::now());
    handle.submit(late).unwrap();
    drop(handle);
    let fake = Fake::new();
    scheduler.run(&fake);
    assert!(fake.batches().is_empty(), "it never reached a step");
    assert!(matches!(
        drain(&mut late_rx).1,
        Some(Event::Failed(Failure::Timeout))
    ));
}

#[test]
fn a_failed_step_fails_its_batch_and_the_engine_serves_on() {
    let (handle, scheduler) = engine(config(4), Arc::new(Metrics::new()));
    let (a, mut a_rx) = submission(3);
    let (b, mut b_rx) = submission(2);
    handle.submit(a).unwrap();
    let fake = Fake {
        fail_at: Some(2),
        ..Fake::new()
    };
    *fake.joins.lock().unwrap() = Some((handle, b));
    scheduler.run(&fake);
    match drain(&mut a_rx).1 {
        Some(Event::Failed(Failure::Model(m))) => assert!(m.contains("the fake failed"), "{m}"),
        other => panic!("expected the step's failure, got {other:?}"),
    }
    assert!(
        matches!(drain(&mut b_rx).1, Some(Event::Failed(Failure::Model(_)))),
        "every sequence of the failed batch hears of it"
    );
    assert_eq!(fake.batches(), [1, 2]);
}

#[test]
fn a_sequence_ending_at_eos_reports_stop() {
    let (handle, scheduler) = engine(config(1), Arc::new(Metrics::new()));
    let (s, mut rx) = submission(4);
    handle.submit(s).unwrap();
    drop(handle);
    struct Eos;
    impl Stepper for Eos {
        fn step(&self, batch: &mut [&mut Sequence], _: &mut StepState) -> Result<(), DecodeError> {
            let mut logits = vec![0.0f32; VOCAB];
            logits[7] = 10.0;
            for seq in batch.iter_mut() {
                if let Sequence::Autoregressive(s) = &mut **seq {
                    s.accept(&logits);
                }
            }
            Ok(())
        }
    }
    scheduler.run(&Eos);
    match drain(&mut rx).1 {
        Some(Event::Done(f)) => {
            assert_eq!(f.answer.finish_reason, FinishReason::Stop);
            assert!(f.answer.token_ids.is_empty());
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn progress_events_carry_only_the_tokens_settled_since_the_last_one() {
    let (handle, scheduler) = engine(config(1), Arc::new(Metrics::new()));
    let (s, mut rx) = submission(3);
    handle.submit(s).unwrap();
    drop(handle);
    scheduler.run(&Fake::new());
    let mut streamed = Vec::new();
    let mut done = None;
    while let Ok(event) = rx.try_recv() {
        match event {
            Event::Progress { new_token_ids, .. } => {
                assert_eq!(
                    new_token_ids.len(),
                    1,
                    "one new token per step, not the answer so far"
                );
                streamed.extend(new_token_ids);
            }
            other => done = Some(other),
        }
    }
    assert_eq!(
        streamed,
        done_tokens(done),
        "the deltas add up to the answer"
    );
}

#[test]
fn a_request_is_queued_whole_or_refused_whole() {
    let (handle, _scheduler) = engine(
        EngineConfig {
            max_queue: 3,
            ..config(1)
        },
        Arc::new(Metrics::new()),
    );
    assert_eq!(handle.capacity(), 3);
    let (a, _a) = submission(1);
    handle.submit(a).unwrap();
    let (b, _b) = submission(1);
    let (c, _c) = submission(1);
    let (d, _d) = submission(1);
    assert_eq!(
        handle.submit_all(vec![b, c, d]).unwrap_err(),
        SubmitError::QueueFull
    );
    assert_eq!(
        handle.waiting(),
        1,
        "none of the refused request's choices stay"
    );
    let (b, _b) = submission(1);
    let (c, _c) = submission(1);
    handle.submit_all(vec![b, c]).unwrap();
    assert_eq!(handle.waiting(), 3);
}

/// A client that cancels while queued gives its place back at once (it used to hold
/// it until the scheduler reached it, refusing others meanwhile).
#[test]
fn cancelled_requests_give_their_queue_places_back() {
    let metrics = Arc::new(Metrics::new());
    let (handle, _scheduler) = engine(
        EngineConfig {
            max_queue: 2,
            ..config(1)
        },
        metrics.clone(),
    );
    let (a, a_rx) = submission(1);
    let (b, _b_rx) = submission(1);
    handle.submit_all(vec![a, b]).unwrap();
    let (c, _c_rx) = submission(1);
    let (c2, _c2_rx) = submission(1);
    assert_eq!(handle.submit(c).unwrap_err(), SubmitError::QueueFull);
    drop(a_rx);
    handle.submit(c2).unwrap();
    assert_eq!(handle.waiting(), 2);
    assert_eq!(metrics.requests_cancelled.get(), 1);
}

#[test]
fn an_out_of_memory_pass_is_retried_with_half_the_batch_and_nobody_fails() {
    let metrics = Arc::new(Metrics::new());
    let (handle, scheduler) = engine(config(4), metrics.clone());
    let mut receivers = Vec::new();
    for _ in 0..4 {
        let (s, rx) = submission(3);
        handle.submit(s).unwrap();
        receivers.push(rx);
    }
    drop(handle);
    let fake = Fake::new();
    scheduler.run(&FaultInjector::new(&fake, "oom@1".parse().unwrap()));
    for rx in &mut receivers {
        assert_eq!(done_tokens(drain(rx).1), [3, 3, 3]);
    }
    // The pass of four failed before the model; two halves of two ran to the end.
    assert_eq!(fake.batches(), [2, 2, 2, 2, 2, 2]);
    let text = metrics.encode();
    assert!(
        text.contains("dfastllm_oom_batch_halvings_total 1"),
        "{text}"
    );
    assert!(
        text.contains("dfastllm_circuit_breaker_state{state=\"closed\"} 1"),
        "a halving that cured the pass is no failure: {text}"
    );
}

/// Runs the scheduler over `fake` with `plan` on a thread of its own.
fn run_faulty(scheduler: Scheduler, plan: &str) -> std::thread::JoinHandle<()> {
    let plan: FaultPlan = plan.parse().unwrap();
    std::thread::spawn(move || {
        let fake = Fake::new();
        scheduler.run(&FaultInjector::new(&fake, plan));
    })
}

fn breaker_config(failure_threshold: u32, recovery: Duration) -> EngineConfig {
    EngineConfig {
        breaker: BreakerConfig {
            failure_threshold,
            recovery,
        },
        ..config(1)
    }
}

#[test]
fn a_lone_sequence_out_of_memory_fails_and_failures_in_a_row_open_the_breaker() {
    let metrics = Arc::new(Metrics::new());
    let (handle, scheduler) = engine(
        breaker_config(2, Duration::from_secs(3600)),
        metrics.clone(),
    );
    let thread = run_faulty(scheduler, "oom@1-2");
    for failure in 1..=2 {
        let (s, mut rx) = submission(3);
        handle.submit(s).unwrap();
        match rx.blocking_recv() {
            Some(Event::Failed(Failure::Model(m))) => assert!(m.contains("OUT_OF_MEMORY"), "{m}"),
            other => panic!("expected the pass's failure, got {other:?}"),
        }
        let expected = if failure == 1 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(handle.breaker_state(), expected, "after failure {failure}");
    }
    let (s, _rx) = submission(3);
    match handle.submit(s) {
        Err(SubmitError::BreakerOpen { retry_after }) => {
            assert!(retry_after > Duration::from_secs(3500), "{retry_after:?}")
        }
        other => panic!("an open breaker refuses at once, got {other:?}"),
    }
    drop(handle);
    thread.join().unwrap();
    let text = metrics.encode();
    assert!(
        text.contains("dfastllm_forward_pass_failures_total{reason=\"oom\"} 2"),
        "{text}"
    );
}

#[test]
fn after_the_recovery_window_one_probe_decides_and_a_good_pass_closes_the_breaker() {
    let (handle, scheduler) = engine(breaker_config(1, Duration::ZERO), Arc::new(Metrics::new()));
    let thread = run_faulty(scheduler, "error@1");
    let (a, mut a_rx) = submission(3);
    handle.submit(a).unwrap();
    assert!(matches!(
        a_rx.blocking_recv(),
        Some(Event::Failed(Failure::Model(_)))
    ));
    assert_eq!(handle.breaker_state(), BreakerState::Open);
    // The window (zero here) is over: this request is the probe (that a second one
    // waits for it is the breaker's own test; here the scheduler may already be done).
    let (probe, mut probe_rx) = submission(3);
    handle.submit(probe).unwrap();
    let done = loop {
        match probe_rx.blocking_recv() {
            Some(Event::Progress { .. }) => continue,
            other => break other,
        }
    };
    assert_eq!(done_tokens(done), [3, 3, 3]);
    assert_eq!(handle.breaker_state(), BreakerState::Closed);
    drop(handle);
    thread.join().unwrap();
}

fn guarded(reading: &str, bytes_per_token: u64) -> (EngineHandle, Scheduler, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (handle, scheduler) = engine(config(4), metrics.clone());
    handle.memory().install(
        Box::new(crate::gpu::FixedProbe::parse(reading).unwrap()),
        MemoryGuardConfig::default(),
        bytes_per_token,
        &metrics,
    );
    (handle, scheduler, metrics)
}

#[test]
fn the_kv_budget_keeps_sequences_waiting_rather_than_overcommitting() {
    // 0.9 x 1000 bytes with nothing used: 900 bytes; an autoregressive sequence of 2 + 4
    // tokens at 37 bytes a token reserves twice its length in the causal grid, 444, so
    // two run at once although four places are free.
    let (handle, scheduler, metrics) = guarded("0/1000", 37);
    assert_eq!(handle.memory().budget().unwrap().bytes, 900);
    let mut rxs = Vec::new();
    for _ in 0..3 {
        let (s, rx) = submission(4);
        handle.submit(s).unwrap();
        rxs.push(rx);
    }
    drop(handle);
    let fake = Fake::new();
    scheduler.run(&fake);
    assert_eq!(fake.batches(), [2, 2, 2, 2, 1, 1, 1, 1]);
    for rx in &mut rxs {
        assert_eq!(
            done_tokens(drain(rx).1),
            [3, 3, 3, 3],
            "the third waited, then ran"
        );
    }
    assert!(metrics
        .encode()
        .contains("dfastllm_kv_cache_budget_bytes 900"));

    // A budget smaller than one sequence still runs one at a time, never none.
    let (handle, scheduler, _) = guarded("890/1000", 75);
    let (s, mut rx) = submission(4);
    handle.submit(s).unwrap();
    drop(handle);
    scheduler.run(&Fake::new());
    assert_eq!(done_tokens(drain(&mut rx).1), [3, 3, 3, 3]);
}

#[test]
fn critical_gpu_memory_refuses_admission() {
    let (handle, _scheduler, metrics) = guarded("960/1000", 1);
    let (s, _rx) = submission(2);
    assert_eq!(
        handle.submit(s).unwrap_err(),
        SubmitError::MemoryCritical { used_percent: 96 }
    );
    assert_eq!(handle.waiting(), 0, "nothing was queued");
    assert!(metrics
        .encode()
        .contains("dfastllm_gpu_memory_pressure_total{level=\"critical\"} 1"));
}

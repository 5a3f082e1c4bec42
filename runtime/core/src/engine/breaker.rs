//! The circuit breaker around the model. A forward pass that fails (CUDA out of memory
//! after halving, a kernel error, the NaN guard) fails the sequences of that pass; after
//! `failure_threshold` failed passes in a row the breaker opens and admission refuses
//! requests at once for `recovery` (a GPU that is failing every pass should not keep a
//! queue of clients waiting for it). Then one request is let through as the half-open
//! probe: a pass that succeeds closes the breaker, one that fails opens it again.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::metrics::{Metrics, StateLabels};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failed passes in a row that open the breaker; 0 turns it off.
    pub failure_threshold: u32,
    /// How long an open breaker refuses requests before the half-open probe.
    pub recovery: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery: Duration::from_secs(30),
        }
    }
}

/// What `/health` and `dfastllm_circuit_breaker_state` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// A probe was admitted at `since`; others wait for its pass.
    HalfOpen {
        since: Instant,
    },
}

struct Inner {
    state: State,
    failures_in_a_row: u32,
}

pub(super) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub(super) fn new(config: BreakerConfig, metrics: &Metrics) -> Self {
        let breaker = Self {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                failures_in_a_row: 0,
            }),
        };
        breaker.publish(metrics, BreakerState::Closed);
        breaker
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is one assignment: a panicking holder leaves a valid state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, metrics: &Metrics, now: BreakerState) {
        for s in BreakerState::ALL {
            metrics
                .circuit_breaker_state
                .get_or_create(&StateLabels {
                    state: s.name().into(),
                })
                .set(i64::from(s == now));
        }
    }

    /// Whether a request may be queued now; `Err` carries how long until it may.
    pub(super) fn admit(&self, now: Instant, metrics: &Metrics) -> Result<(), Duration> {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                inner.state = State::HalfOpen { since: now };
                drop(inner);
                self.publish(metrics, BreakerState::HalfOpen);
                Ok(())
            }
            // One probe at a time; a probe that never ran (its client left) is replaced
            // after a recovery window rather than holding the breaker half open for ever.
            State::HalfOpen { since } if now < since + self.config.recovery => {
                Err(Duration::from_secs(1))
            }
            State::HalfOpen { .. } => {
                inner.state = State::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    pub(super) fn on_success(&self, metrics: &Metrics) {
        let mut inner = self.lock();
        inner.failures_in_a_row = 0;
        if !matches!(inner.state, State::Closed) {
            inner.state = State::Closed;
            drop(inner);
            tracing::info!("circuit breaker closed: a forward pass succeeded");
            self.publish(metrics, BreakerState::Closed);
        }
    }

    pub(super) fn on_failure(&self, now: Instant, metrics: &Metrics) {
        if self.config.failure_threshold == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.failures_in_a_row += 1;
        let opens = match inner.state {
            State::HalfOpen { .. } => true,
            State::Closed => inner.failures_in_a_row >= self.config.failure_threshold,
            State::Open { .. } => false,
        };
        if opens {
            inner.state = State::Open {
                until: now + self.config.recovery,
            };
            let failures = inner.failures_in_a_row;
            drop(inner);
            tracing::warn!(
                failures_in_a_row = failures,
                recovery_seconds = self.config.recovery.as_secs_f64(),
                "circuit breaker open: refusing requests until the recovery window ends"
            );
            self.publish(metrics, BreakerState::Open);
        }
    }

    pub(super) fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_refuses_then_probes_once_and_closes() {
        let m = Metrics::new();
        let b = Breaker::new(
            BreakerConfig {
                failure_threshold: 3,
                recovery: Duration::from_secs(30),
            },
            &m,
        );
        let t0 = Instant::now();
        for _ in 0..2 {
            b.on_failure(t0, &m);
        }
        assert_eq!(b.state(), BreakerState::Closed, "two in a row stay closed");
        b.on_success(&m);
        for _ in 0..2 {
            b.on_failure(t0, &m);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        b.on_failure(t0, &m);
        assert_eq!(b.state(), BreakerState::Open);
        let wait = b.admit(t0 + Duration::from_secs(10), &m).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        // The window over: one probe is admitted, the next caller waits for it.
        let after = t0 + Duration::from_secs(31);
        assert_eq!(b.admit(after, &m), Ok(()));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit(after, &m).is_err());
        // A failed probe opens it again at once; a successful one closes it.
        b.on_failure(after, &m);
        assert_eq!(b.state(), BreakerState::Open);
        let later = after + Duration::from_secs(31);
        assert_eq!(b.admit(later, &m), Ok(()));
        b.on_success(&m);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(later, &m), Ok(()));
        assert!(m
            .encode()
            .contains("dfastllm_circuit_breaker_state{state=\"closed\"} 1"));
    }

    #[test]
    fn a_threshold_of_zero_never_opens() {
        let m = Metrics::new();
        let b = Breaker::new(
            BreakerConfig {
                failure_threshold: 0,
                recovery: Duration::from_secs(30),
            },
            &m,
        );
        for _ in 0..100 {
            b.on_failure(Instant::now(), &m);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}

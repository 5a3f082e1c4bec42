//! The admission queue between the request handlers and the scheduler thread: bounded
//! by live sequences, all-or-nothing per request (a request's choices are queued
//! together or refused together, before any answer starts), and pruned of sequences
//! whose client went away, so a cancelled request gives its places back at once
//! instead of holding them until the scheduler reaches it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Queued, SubmitError};

#[derive(Default)]
struct Inner {
    items: VecDeque<Queued>,
    /// Every handle is gone: the scheduler finishes what it has, then returns.
    senders_gone: bool,
    /// The scheduler is gone: submissions are refused.
    receiver_gone: bool,
}

pub(super) struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking holder leaves a consistent deque (every operation is one push or
        // pop): keep serving rather than poison every later request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops queued sequences nobody waits for; returns how many.
    fn prune(inner: &mut Inner) -> usize {
        let before = inner.items.len();
        inner.items.retain(|q| !q.submission.events.is_closed());
        before - inner.items.len()
    }

    /// Queues all of `items` or none. Returns the sequences now waiting and how many
    /// cancelled ones were dropped to make room.
    pub(super) fn push_all(&self, items: Vec<Queued>) -> Result<(usize, usize), SubmitError> {
        let mut inner = self.lock();
        if inner.receiver_gone {
            return Err(SubmitError::Stopped);
        }
        let pruned = Self::prune(&mut inner);
        if inner.items.len() + items.len() > self.capacity {
            return Err(SubmitError::QueueFull);
        }
        inner.items.extend(items);
        let waiting = inner.items.len();
        drop(inner);
        self.ready.notify_one();
        Ok((waiting, pruned))
    }

    /// The next sequence, waiting until `until` (forever when `None`); `None` when the
    /// time is up, or when every handle is gone and nothing is left.
    pub(super) fn pop(&self, until: Option<Instant>) -> Option<Queued> {
        let mut inner = self.lock();
        loop {
            if let Some(q) = inner.items.pop_front() {
                return Some(q);
            }
            if inner.senders_gone {
                return None;
            }
            inner = match until {
                None => self.ready.wait(inner).unwrap_or_else(|p| p.into_inner()),
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if left == Duration::ZERO {
                        return None;
                    }
                    self.ready
                        .wait_timeout(inner, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// The next sequence if one waits.
    pub(super) fn try_pop(&self) -> Option<Queued> {
        self.lock().items.pop_front()
    }

    /// Puts back at the front what [`Self::try_pop`] or [`Self::pop`] took and the
    /// scheduler could not admit yet (the cache budget is full): it keeps its place.
    pub(super) fn unpop(&self, q: Queued) {
        self.lock().items.push_front(q);
    }

    pub(super) fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub(super) fn close_senders(&self) {
        self.lock().senders_gone = true;
        self.ready.notify_all();
    }

    pub(super) fn close_receiver(&self) {
        let mut inner = self.lock();
        inner.receiver_gone = true;
        inner.items.clear();
    }
}

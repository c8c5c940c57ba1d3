//! Commit-mode completion (DESIGN 1.3): a runtime-free handle that a request waits on until the
//! shard writers have committed (or failed) every one of its batches.
//!
//! Each batch of a commit-mode request carries a [`CompletionPart`]; all parts share one state.
//! The writer resolves a part after its transaction commits or fails. The request's
//! [`CommitWaiter`] resolves when every part has: `Ok` if all committed, else the first error.
//! It can be awaited (it is a `Future` built on `std::task` alone, so any executor can poll it) or
//! waited on from a plain thread. A part dropped unresolved (a bug, or a panic that unwound past
//! it) resolves as [`CommitError::Dropped`], so a waiter can never hang on a lost batch.
//!
//! All state is under one mutex (the count of unresolved parts too), so no ordering argument is
//! needed beyond the mutex's; its primitives come from [`crate::sync`], so the loom models check
//! this code (a commit or a failure racing the waiter, the drain deadline).

use crate::sync::{Arc, Condvar, Mutex};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Why a commit-mode request was not committed. All but [`CommitError::Refused`] are retryable
/// for the client (UNAVAILABLE / 503 with a retry delay); `Refused` is INVALID_ARGUMENT / 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The database refuses these rows for good (the same rows fail the same way again): a retry
    /// cannot succeed, so the client is told not to retry.
    #[error("the database refuses these rows: {0}")]
    Refused(String),
    #[error("database write failed: {0}")]
    Database(String),
    #[error("writer panicked while writing the batch")]
    Panicked,
    #[error("server stopping: batch not committed before the drain deadline")]
    Stopped,
    #[error("batch dropped before it was committed")]
    Dropped,
}

#[derive(Debug, Default)]
struct Inner {
    /// Parts not yet resolved.
    remaining: usize,
    done: bool,
    result: Option<Result<(), CommitError>>,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct State {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl State {
    fn resolve_one(&self, result: Result<(), CommitError>) {
        let mut inner = self.inner.lock();
        if let Err(e) = result
            && !matches!(inner.result, Some(Err(_)))
        {
            inner.result = Some(Err(e));
        }
        // A part resolves once (it is consumed), so the count cannot go below zero.
        assert!(inner.remaining > 0, "a commit-mode request resolved more parts than it has");
        inner.remaining -= 1;
        if inner.remaining == 0 {
            inner.done = true;
            if inner.result.is_none() {
                inner.result = Some(Ok(()));
            }
            let waker = inner.waker.take();
            drop(inner);
            self.cv.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// Creates a waiter and `parts` parts, one for each batch of a request. With `parts == 0` the
/// waiter is resolved at once (nothing to commit).
pub fn completion(parts: usize) -> (CommitWaiter, Vec<CompletionPart>) {
    let inner = if parts == 0 {
        Inner { remaining: 0, done: true, result: Some(Ok(())), waker: None }
    } else {
        Inner { remaining: parts, ..Inner::default() }
    };
    let state = Arc::new(State { inner: Mutex::new(inner), cv: Condvar::new() });
    let v = (0..parts).map(|_| CompletionPart { state: Some(state.clone()) }).collect();
    (CommitWaiter { state }, v)
}

/// One batch's share of a commit-mode request; resolve it exactly once.
#[derive(Debug)]
pub struct CompletionPart {
    state: Option<Arc<State>>,
}

impl CompletionPart {
    /// Resolves this part. The request is answered once all of its parts are resolved.
    pub fn resolve(mut self, result: Result<(), CommitError>) {
        if let Some(s) = self.state.take() {
            s.resolve_one(result);
        }
    }
}

impl Drop for CompletionPart {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            s.resolve_one(Err(CommitError::Dropped));
        }
    }
}

/// What a commit-mode request waits on.
#[derive(Debug)]
pub struct CommitWaiter {
    state: Arc<State>,
}

impl CommitWaiter {
    /// Blocks the calling thread until every part is resolved.
    pub fn wait(self) -> Result<(), CommitError> {
        let mut inner = self.state.inner.lock();
        while !inner.done {
            inner = self.state.cv.wait(inner);
        }
        inner.result.clone().unwrap_or(Err(CommitError::Dropped))
    }

    /// Like [`CommitWaiter::wait`], giving up after `timeout` (`None` then).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<(), CommitError>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut inner = self.state.inner.lock();
        while !inner.done {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            inner = self.state.cv.wait_timeout(inner, left);
        }
        inner.result.clone()
    }

    /// True once every part is resolved.
    pub fn is_done(&self) -> bool {
        self.state.inner.lock().done
    }
}

impl Future for CommitWaiter {
    type Output = Result<(), CommitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.state.inner.lock();
        if inner.done {
            return Poll::Ready(inner.result.clone().unwrap_or(Err(CommitError::Dropped)));
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(all(test, not(otelring_loom)))]
mod tests {
    use super::*;

    #[test]
    fn resolves_ok_after_every_part() {
        let (w, parts) = completion(3);
        let mut it = parts.into_iter();
        it.next().unwrap().resolve(Ok(()));
        it.next().unwrap().resolve(Ok(()));
        assert!(!w.is_done());
        assert_eq!(w.wait_timeout(Duration::from_millis(1)), None);
        it.next().unwrap().resolve(Ok(()));
        assert_eq!(w.wait(), Ok(()));
    }

    #[test]
    fn first_error_wins_and_dropped_parts_fail() {
        let (w, parts) = completion(3);
        let mut it = parts.into_iter();
        it.next().unwrap().resolve(Err(CommitError::Panicked));
        it.next().unwrap().resolve(Ok(()));
        drop(it); // the third part is dropped unresolved
        assert_eq!(w.wait(), Err(CommitError::Panicked));
        let (w, parts) = completion(1);
        drop(parts);
        assert_eq!(w.wait(), Err(CommitError::Dropped));
    }

    #[test]
    fn zero_parts_is_already_done_and_wakes_from_another_thread() {
        let (w, _) = completion(0);
        assert_eq!(w.wait(), Ok(()));
        let (w, mut parts) = completion(1);
        let p = parts.pop().unwrap();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            p.resolve(Ok(()));
        });
        assert_eq!(w.wait(), Ok(()));
        h.join().unwrap();
    }
}

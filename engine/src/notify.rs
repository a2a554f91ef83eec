//! A single-threaded broadcast notification: tasks wait for "something changed" and re-check
//! their condition. Waiting is cancel-safe (dropping a waiter loses nothing).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every waiter on `notify_all`.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every current waiter.
    pub(crate) fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves at the next `notify_all` after this call.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            generation: self.generation.get(),
        }
    }
}

/// Future returned by [`Notify::wait`].
#[derive(Debug)]
pub(crate) struct Wait<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        // Only the last entry is checked: O(1) per poll, and a task re-polled before any
        // notification is always the last one to have registered.
        if wakers.last().is_none_or(|w| !w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Completes on its second poll: gives every other ready task one turn (deterministic under
/// the executor's FIFO run queue).
pub(crate) fn yield_once() -> YieldOnce {
    YieldOnce(false)
}

/// Future returned by [`yield_once`].
#[derive(Debug)]
pub(crate) struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

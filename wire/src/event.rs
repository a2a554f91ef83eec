//! Single-threaded wake-up primitives for one executor: a set-once [`Event`]
//! (cancellation, drain) that any number of tasks can await.
//!
//! `!Send` by design: every user lives on one glommio executor. Waiters are
//! kept in slots reused by later waiters, so repeated polling never grows
//! the list beyond the number of concurrent waiters.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A set-once event; `set` wakes every waiter, later waits finish at once.
#[derive(Debug, Default)]
pub(crate) struct Event {
    is_set: Cell<bool>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free_slots: RefCell<Vec<usize>>,
}

impl Event {
    pub(crate) fn new() -> Event {
        Event::default()
    }

    pub(crate) fn is_set(&self) -> bool {
        self.is_set.get()
    }

    /// Sets the event and wakes every waiter (idempotent).
    pub(crate) fn set(&self) {
        if self.is_set.replace(true) {
            return;
        }
        self.notify_all();
    }

    /// Wakes every current waiter without setting the event (they re-check
    /// their own condition).
    pub(crate) fn notify_all(&self) {
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Registers `waker` in `slot` (allocating a slot on first use).
    pub(crate) fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        let index = *slot.get_or_insert_with(|| match self.free_slots.borrow_mut().pop() {
            Some(index) => index,
            None => {
                waiters.push(None);
                waiters.len() - 1
            }
        });
        match &mut waiters[index] {
            Some(existing) if existing.will_wake(waker) => {}
            entry => *entry = Some(waker.clone()),
        }
    }

    /// Frees `slot` (a waiter that stops waiting).
    pub(crate) fn unregister(&self, slot: &mut Option<usize>) {
        if let Some(index) = slot.take() {
            if let Some(entry) = self.waiters.borrow_mut().get_mut(index) {
                *entry = None;
            }
            self.free_slots.borrow_mut().push(index);
        }
    }
}

/// Future resolving once the event behind `E` (an `Rc<Event>` or an
/// `&Event`) is set.
pub(crate) struct EventWait<E: Deref<Target = Event>> {
    event: E,
    slot: Option<usize>,
}

impl<E: Deref<Target = Event>> EventWait<E> {
    pub(crate) fn new(event: E) -> EventWait<E> {
        EventWait { event, slot: None }
    }

    /// Polls without consuming: Ready once the event is set.
    pub(crate) fn poll_set(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.is_set() {
            return Poll::Ready(());
        }
        self.event.register(&mut self.slot, cx.waker());
        if self.event.is_set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<E: Deref<Target = Event> + Unpin> Future for EventWait<E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_set(cx)
    }
}

impl<E: Deref<Target = Event>> Drop for EventWait<E> {
    fn drop(&mut self) {
        self.event.unregister(&mut self.slot);
    }
}

/// Resolves once `condition()` holds, re-checking whenever `event` is
/// notified (see [`Event::notify_all`]).
pub(crate) async fn wait_until(event: &Event, condition: impl Fn() -> bool) {
    struct Slot<'a> {
        event: &'a Event,
        slot: Option<usize>,
    }
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.event.unregister(&mut self.slot);
        }
    }
    let mut slot = Slot { event, slot: None };
    std::future::poll_fn(|cx| {
        if condition() {
            return Poll::Ready(());
        }
        slot.event.register(&mut slot.slot, cx.waker());
        if condition() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::task::Waker;

    #[test]
    fn set_wakes_and_slots_are_reused() {
        let event = Rc::new(Event::new());
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = EventWait::new(event.clone());
        assert!(first.poll_set(&mut cx).is_pending());
        assert!(first.poll_set(&mut cx).is_pending());
        drop(first);
        let mut second = EventWait::new(event.clone());
        assert!(second.poll_set(&mut cx).is_pending());
        assert_eq!(event.waiters.borrow().len(), 1, "slot reused");
        event.set();
        assert!(second.poll_set(&mut cx).is_ready());
    }
}

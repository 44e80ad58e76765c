//! A single-thread wake-up signal: one task waits, any code on the same executor
//! notifies. Notifications before the wait are not lost (a flag remembers them).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct LocalNotify {
    notified: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl LocalNotify {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Completes once `notify` has been called since the last completion.
    pub async fn notified(&self) {
        poll_fn(|context| {
            if self.notified.replace(false) {
                return Poll::Ready(());
            }
            *self.waiter.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        })
        .await
    }
}

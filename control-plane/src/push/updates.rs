//! A session's subscription to its object's published versions, waited on from a `select!` loop
//! without re-registering on every turn.
//!
//! `watch::Receiver::changed()` builds a new waiter each call, and a `select!` loop drops and
//! rebuilds it every time another branch (an ACK, a ping) wins. Every rebuild locks the
//! channel's waiter list, which every session of the object shares: with 1,000 sessions that is
//! a contended lock per message. Here the wait is one long-lived future, re-armed only when a
//! version arrives, so the waiter list is touched once per version per session.

use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use tokio::sync::watch::{self, error::RecvError};
use tokio_util::sync::ReusableBoxFuture;

use super::publisher::Published;

type Waiting = (Result<(), RecvError>, watch::Receiver<Published>);

/// The versions published for one object, as one session follows them.
pub struct Updates {
    /// A second receiver, for reading the newest value while the other one waits.
    latest: watch::Receiver<Published>,
    /// The wait for the next version (it owns the receiver that is marked as having seen it).
    next: ReusableBoxFuture<'static, Waiting>,
}

async fn wait(mut receiver: watch::Receiver<Published>) -> Waiting {
    let changed = receiver.changed().await;
    (changed, receiver)
}

impl Updates {
    /// Follows `receiver` from the value it holds now: [`Updates::changed`] waits for the next.
    pub fn new(mut receiver: watch::Receiver<Published>) -> Self {
        receiver.borrow_and_update();
        Self {
            latest: receiver.clone(),
            next: ReusableBoxFuture::new(wait(receiver)),
        }
    }

    /// What is published now (the newest, even before [`Updates::changed`] reports it).
    pub fn current(&self) -> Published {
        self.latest.borrow().clone()
    }

    /// The next published version (the newest, when several were published meanwhile); an error
    /// when the publisher is gone. Cancel-safe: dropping the future keeps the wait registered.
    pub async fn changed(&mut self) -> Result<Published, RecvError> {
        poll_fn(|cx| self.poll_changed(cx)).await
    }

    fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Result<Published, RecvError>> {
        let (changed, mut receiver) = ready!(self.next.poll(cx));
        let value = receiver.borrow_and_update().clone();
        self.next.set(wait(receiver));
        Poll::Ready(changed.map(|()| value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use routing_model::protocol::MissingReason;

    #[tokio::test]
    async fn reports_each_change_once_and_survives_dropped_waits() {
        let (tx, rx) = watch::channel(Published::Missing(MissingReason::NotFound));
        let mut updates = Updates::new(rx);
        // A wait dropped before anything was published (another select! branch won) loses
        // nothing.
        assert!(updates.changed().now_or_never().is_none());
        tx.send_replace(Published::Missing(MissingReason::Deleted));
        assert!(matches!(
            updates.current(),
            Published::Missing(MissingReason::Deleted)
        ));
        let next = updates.changed().await.unwrap();
        assert!(matches!(next, Published::Missing(MissingReason::Deleted)));
        // Seen once: no second report of the same version.
        assert!(updates.changed().now_or_never().is_none());
        drop(tx);
        assert!(updates.changed().await.is_err());
    }
}

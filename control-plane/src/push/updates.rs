//! A session's subscription to its object's published versions, waited on from a `select!` loop
//! without re-registering on every turn.
//!
//! `watch::Receiver::changed()` builds a new waiter each call, and a `select!` loop drops and
//! rebuilds it every time another branch (an ACK, a ping) wins. Every rebuild locks the
//! channel's waiter list, which every session of the object shares: with 1,000 sessions that is
//! a contended lock per message. A [`WatchStream`] keeps one wait for as long as it lives and
//! re-arms it only when a version arrives, so the list is touched once per version per session.
//!
//! During a staged rollout a publication holds two versions; a session sees only its own (by
//! its cohort), and a step that does not move its cohort is no change to it.

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use super::publisher::{Publication, Published};

/// The versions published for one object, as one session (in cohort `bucket`) follows them.
pub struct Updates {
    /// For reading the newest value while the stream waits.
    latest: watch::Receiver<Publication>,
    /// The publications after the one the receiver held when this was made.
    changes: WatchStream<Publication>,
    /// The session's cohort.
    bucket: u32,
    /// What the session was last told it should have.
    seen: Published,
}

impl Updates {
    /// Follows `receiver` from the value it holds now for the data plane in cohort `bucket`:
    /// [`Updates::changed`] waits for the next.
    pub fn new(receiver: watch::Receiver<Publication>, bucket: u32) -> Self {
        let seen = receiver.borrow().for_cohort(bucket);
        Self {
            latest: receiver.clone(),
            changes: WatchStream::from_changes(receiver),
            bucket,
            seen,
        }
    }

    /// What the session should have now (the newest, even before [`Updates::changed`] reports
    /// it).
    pub fn current(&self) -> Published {
        self.latest.borrow().for_cohort(self.bucket)
    }

    /// What the session should have next, once it differs from what it was last told (the
    /// newest, when several were published meanwhile); `None` when the publisher is gone.
    /// Cancel-safe: dropping the future keeps the wait registered.
    pub async fn changed(&mut self) -> Option<Published> {
        loop {
            let next = self.changes.next().await?.for_cohort(self.bucket);
            if !next.same_as(&self.seen) {
                self.seen = next.clone();
                return Some(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use routing_model::protocol::MissingReason;

    #[tokio::test]
    async fn reports_each_change_once_and_survives_dropped_waits() {
        let (tx, rx) = watch::channel(Publication::Uniform(Published::Missing(MissingReason::NotFound)));
        let mut updates = Updates::new(rx, 0);
        // A wait dropped before anything was published (another select! branch won) loses
        // nothing.
        assert!(updates.changed().now_or_never().is_none());
        tx.send_replace(Publication::Uniform(Published::Missing(MissingReason::Deleted)));
        assert!(matches!(
            updates.current(),
            Published::Missing(MissingReason::Deleted)
        ));
        let next = updates.changed().await.unwrap();
        assert!(matches!(next, Published::Missing(MissingReason::Deleted)));
        // Seen once: no second report of the same version, even when published again.
        assert!(updates.changed().now_or_never().is_none());
        tx.send_replace(Publication::Uniform(Published::Missing(MissingReason::Deleted)));
        assert!(updates.changed().now_or_never().is_none());
        drop(tx);
        assert!(updates.changed().await.is_none());
    }
}

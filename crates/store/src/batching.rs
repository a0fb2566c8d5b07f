//! How the store's background writers (smart lockout's counters, the sign-in log) gather work
//! into batches: one statement for many sign-ins costs the database far less than a statement
//! each: a statement's round trip, commit and set-up weigh more than its rows.
//!
//! A writer takes whatever queued while its last batch was written, and [`Batches`] lingers
//! up to a linger time for more before handing a batch over — but never while someone waits
//! for an item in it: a batch holding an *urgent* item (one whose caller waits for its result,
//! such as a sign-in's lockout reservation) goes at once, and takes along whatever
//! non-urgent work has gathered. Lingering made callers wait, and a sign-in parked in a
//! writer's queue is one fewer in flight elsewhere, which made every other process batch
//! its own work less (measured: docs/benchmarks.md).
//!
//! Work whose caller does not wait for it (the sign-in log, a successful sign-in's counters)
//! is counted in [`Outstanding`] until written, so that a stopping process writes it first.
//!
//! A writer keeps its database connection between batches ([`WriterConnection`]): taking one
//! from the pool and giving it back costs a round trip each (the pool checks the connection
//! both ways), more than a batch's own statement on PostgreSQL.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use sqlx::{Any, AnyPool, pool::PoolConnection};
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use crate::StoreError;

/// Batches taken from a queue, lingering for more until an urgent item is in the batch (see
/// the module's documentation).
#[derive(Debug)]
pub struct Batches<T> {
    queue: mpsc::Receiver<T>,
    most: usize,
    linger: Duration,
    urgent: fn(&T) -> bool,
}

impl<T> Batches<T> {
    /// Batches of at most `most` items from `queue`, each lingering up to `linger` for more
    /// (none urgent: see [`Batches::urgent_when`]).
    pub fn new(queue: mpsc::Receiver<T>, most: usize, linger: Duration) -> Self {
        Self {
            queue,
            most: most.max(1),
            linger,
            urgent: |_| false,
        }
    }

    /// A batch holding an item for which `urgent` is true goes without lingering.
    pub fn urgent_when(mut self, urgent: fn(&T) -> bool) -> Self {
        self.urgent = urgent;
        self
    }

    /// Waits for the next batch and moves it into `batch` (which should be empty); `false`
    /// once the queue is closed and drained.
    pub async fn next(&mut self, batch: &mut Vec<T>) -> bool {
        if self.queue.recv_many(batch, self.most).await == 0 {
            return false;
        }
        let until = Instant::now() + self.linger;
        while batch.len() < self.most && !batch.iter().any(self.urgent) {
            let room = self.most - batch.len();
            match tokio::time::timeout_at(until, self.queue.recv_many(batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        true
    }
}

/// Work handed to a background writer and not written yet, with a wake-up for whoever waits
/// until there is none (a stopping process; a reader that must see every write made so far).
#[derive(Debug, Default)]
pub struct Outstanding {
    count: AtomicUsize,
    written: Notify,
}

impl Outstanding {
    /// Hands `item` to the writer behind `queue` (waiting for room) and counts it; `Err` (the
    /// item back) if the writer has stopped. Room is taken first, then the item counted and
    /// sent at once: a caller dropped while waiting for room leaves nothing counted that will
    /// never be written.
    pub async fn send<T>(
        &self,
        queue: &mpsc::Sender<T>,
        item: T,
    ) -> Result<(), mpsc::error::SendError<T>> {
        let Ok(permit) = queue.reserve().await else {
            return Err(mpsc::error::SendError(item));
        };
        self.count.fetch_add(1, Ordering::SeqCst);
        permit.send(item);
        Ok(())
    }

    /// `n` items written (or given up on).
    pub fn written(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::SeqCst);
        self.written.notify_waiters();
    }

    /// How many are not written yet.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until no item is outstanding — items handed over while it waits count too, so
    /// under a steady stream it may only end at the timeout (meant for a stopping process, or
    /// a quiet moment); `Err` with how many are still missing once `timeout` has passed.
    pub async fn wait_for_none(&self, timeout: Duration) -> Result<(), usize> {
        let none = async {
            loop {
                let written = self.written.notified();
                tokio::pin!(written);
                written.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                written.await;
            }
        };
        tokio::time::timeout(timeout, none)
            .await
            .map_err(|_| self.count())
    }

    /// [`Outstanding::wait_for_none`] for a stopping process: `false`, and an error logged
    /// saying how many of `what` (say, "sign-in log entries") are lost, once `timeout` has
    /// passed.
    pub async fn flush(&self, timeout: Duration, what: &str) -> bool {
        match self.wait_for_none(timeout).await {
            Ok(()) => true,
            Err(missing) => {
                tracing::error!(missing, "stopping with {what} the store has not taken");
                false
            }
        }
    }
}

/// A connection a background writer keeps from one batch to the next on PostgreSQL, taken
/// from the store's pool when first needed; one per writer (it serves the pool it was first
/// taken from). After an error it is closed, not kept (it may be what failed: a database
/// restarted), and so is one whose batch never finished (its caller was dropped mid-query: it
/// may hold half an exchange). Found unused for [`WriterConnection::IDLE`] or longer when the
/// next batch comes, it goes back to the pool and the batch takes one the pool has checked;
/// an idle writer keeps it until then. Dropping it gives it back. On SQLite every batch gives
/// it back: there the pool's one connection is every writer's.
#[derive(Debug, Default)]
pub struct WriterConnection {
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    conn: PoolConnection<Any>,
    used: Instant,
    /// A batch took it and has not said how it ended.
    in_batch: bool,
}

impl WriterConnection {
    /// How long a connection is kept unused before it goes back to the pool.
    pub const IDLE: Duration = Duration::from_secs(5);

    /// The held connection, taken from `pool` if there is none (or it idled too long, or its
    /// last batch never ended). Call [`WriterConnection::done`] after the batch.
    pub(crate) async fn get(
        &mut self,
        pool: &AnyPool,
    ) -> Result<&mut PoolConnection<Any>, StoreError> {
        match &mut self.held {
            Some(held) if held.in_batch => {
                held.conn.close_on_drop();
                self.held = None;
            }
            // Back to the pool, which checks it before anyone takes it again.
            Some(held) if held.used.elapsed() >= Self::IDLE => self.held = None,
            _ => {}
        }
        let conn = match self.held.take() {
            Some(held) => held.conn,
            None => pool.acquire().await?,
        };
        let held = self.held.insert(Held {
            conn,
            used: Instant::now(),
            in_batch: true,
        });
        Ok(&mut held.conn)
    }

    /// After a batch: keeps the connection if `kept` and the batch succeeded, closes it if
    /// the batch failed, and otherwise gives it back to the pool.
    pub(crate) fn done<T, E>(&mut self, result: &Result<T, E>, kept: bool) {
        match (result, self.held.as_mut()) {
            (Ok(_), Some(held)) if kept => held.in_batch = false,
            (Ok(_), _) => self.held = None,
            (Err(_), _) => {
                if let Some(mut held) = self.held.take() {
                    held.conn.close_on_drop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_writer_lingers_for_more_up_to_its_linger_time() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 8, Duration::from_millis(50));
        tx.send(1).await.unwrap();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            sender.send(2).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            sender.send(3).await.unwrap();
        });
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(batches.next(&mut batch).await);
        assert_eq!(batch, [1, 2], "the item 60 ms later is not waited for");
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_item_goes_at_once_with_what_gathered_before_it() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 8, Duration::from_millis(5)).urgent_when(|n| *n < 0);

        // Urgent from the start: no lingering at all.
        tx.send(-1).await.unwrap();
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(batches.next(&mut batch).await);
        assert_eq!(batch, [-1]);
        assert_eq!(started.elapsed(), Duration::ZERO);
        batch.clear();

        // Work nobody waits for lingers until an urgent item arrives, which takes it along.
        tx.send(1).await.unwrap();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            sender.send(2).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            sender.send(-2).await.unwrap();
            sender.send(3).await.unwrap();
        });
        let started = Instant::now();
        assert!(batches.next(&mut batch).await);
        assert_eq!(&batch[..3], [1, 2, -2]);
        assert_eq!(started.elapsed(), Duration::from_millis(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_the_rest_waits_for_the_next() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 2, Duration::from_millis(5));
        for item in 0..3 {
            tx.send(item).await.unwrap();
        }
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(batches.next(&mut batch).await);
        assert_eq!(batch, [0, 1]);
        assert_eq!(started.elapsed(), Duration::ZERO);
        batch.clear();
        drop(tx);
        assert!(batches.next(&mut batch).await);
        assert_eq!(batch, [2]);
        batch.clear();
        assert!(!batches.next(&mut batch).await, "closed and drained");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_none_ends_when_the_last_item_is_written_or_says_how_many_are_missing() {
        let outstanding = std::sync::Arc::new(Outstanding::default());
        assert_eq!(outstanding.wait_for_none(Duration::ZERO).await, Ok(()));
        let (tx, _rx) = mpsc::channel(4);
        for item in 0..3 {
            outstanding.send(&tx, item).await.unwrap();
        }
        let writer = std::sync::Arc::clone(&outstanding);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            writer.written(2);
            tokio::time::sleep(Duration::from_millis(10)).await;
            writer.written(1);
        });
        assert_eq!(
            outstanding.wait_for_none(Duration::from_millis(15)).await,
            Err(1)
        );
        let started = Instant::now();
        assert_eq!(
            outstanding.wait_for_none(Duration::from_secs(1)).await,
            Ok(())
        );
        assert_eq!(started.elapsed(), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn nothing_is_counted_for_a_writer_that_has_stopped() {
        let outstanding = Outstanding::default();
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        assert_eq!(outstanding.send(&tx, 7).await.map_err(|e| e.0), Err(7));
        assert_eq!(outstanding.count(), 0);
    }
}

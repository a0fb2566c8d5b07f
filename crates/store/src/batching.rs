//! How the store's background writers (smart lockout's counters, the sign-in log) gather work
//! into batches: one statement for many sign-ins costs the database about what one statement
//! for one costs, and most of a statement's cost is its round trip, not its rows.
//!
//! A writer that takes only what is queued when it looks writes batches of one or two under a
//! steady load — each write is quick, so little queues behind it — and pays a round trip per
//! sign-in. [`Batches`] therefore lingers: when the writer was busy a moment ago (it finished
//! its last batch less than the linger time before new work arrived), it waits up to the
//! linger time for more before handing the batch over. An idle writer does not wait, so a
//! lone sign-in pays nothing for it.
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

/// Batches taken from a queue, lingering under load (see the module's documentation).
#[derive(Debug)]
pub struct Batches<T> {
    queue: mpsc::Receiver<T>,
    most: usize,
    linger: Duration,
    always_linger: bool,
    last_done: Option<Instant>,
}

impl<T> Batches<T> {
    /// Batches of at most `most` items from `queue`, lingering up to `linger` under load.
    pub fn new(queue: mpsc::Receiver<T>, most: usize, linger: Duration) -> Self {
        Self {
            queue,
            most: most.max(1),
            linger,
            always_linger: false,
            last_done: None,
        }
    }

    /// Lingers before every batch, busy or not (for writers off every caller's path, such as
    /// an audit log, where a moment's delay costs nobody anything).
    pub fn always_lingering(mut self) -> Self {
        self.always_linger = true;
        self
    }

    /// Waits for the next batch and moves it into `batch` (which should be empty); `false`
    /// once the queue is closed and drained. Call [`Batches::done`] when it is written.
    pub async fn next(&mut self, batch: &mut Vec<T>) -> bool {
        if self.queue.recv_many(batch, self.most).await == 0 {
            return false;
        }
        let busy = self
            .last_done
            .is_some_and(|done| done.elapsed() < self.linger);
        if (busy || self.always_linger) && !self.linger.is_zero() {
            let until = Instant::now() + self.linger;
            while batch.len() < self.most {
                let room = self.most - batch.len();
                match tokio::time::timeout_at(until, self.queue.recv_many(batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        true
    }

    /// Marks the batch last taken as written (the start of the "busy a moment ago" window).
    pub fn done(&mut self) {
        self.last_done = Some(Instant::now());
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
    /// `n` more items handed over.
    pub fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
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
/// from the store's pool when first needed. After an error it is closed, not kept (it may be
/// what failed: a database restarted), and after [`WriterConnection::IDLE`] without use it
/// goes back to the pool: the next batch takes one the pool has checked. Dropping it gives it
/// back. On SQLite every batch gives it back: there the pool's one connection is every
/// writer's.
#[derive(Debug, Default)]
pub struct WriterConnection {
    held: Option<(PoolConnection<Any>, Instant)>,
}

impl WriterConnection {
    /// How long a connection is kept unused before it goes back to the pool.
    pub const IDLE: Duration = Duration::from_secs(5);

    /// The held connection, taken from `pool` if there is none (or it idled too long).
    pub(crate) async fn get(
        &mut self,
        pool: &AnyPool,
    ) -> Result<&mut PoolConnection<Any>, StoreError> {
        if self
            .held
            .as_ref()
            .is_some_and(|(_, used)| used.elapsed() >= Self::IDLE)
        {
            // Back to the pool, which checks it before anyone takes it again.
            self.held = None;
        }
        let conn = match self.held.take() {
            Some((conn, _)) => conn,
            None => pool.acquire().await?,
        };
        let (conn, _) = self.held.insert((conn, Instant::now()));
        Ok(conn)
    }

    /// After a batch: keeps the connection if `kept` and the batch succeeded, closes it if
    /// the batch failed, and otherwise gives it back to the pool.
    pub(crate) fn done<T, E>(&mut self, result: &Result<T, E>, kept: bool) {
        match result {
            Ok(_) if kept => {}
            Ok(_) => self.held = None,
            Err(_) => {
                if let Some((mut conn, _)) = self.held.take() {
                    conn.close_on_drop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_writer_takes_what_is_there_at_once() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 8, Duration::from_millis(5));
        tx.send(1).await.unwrap();
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(batches.next(&mut batch).await);
        assert_eq!(batch, [1]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_writer_lingers_for_more_up_to_its_linger_time() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 8, Duration::from_millis(5));
        let mut batch = Vec::new();
        tx.send(0).await.unwrap();
        assert!(batches.next(&mut batch).await);
        batches.done();
        batch.clear();

        // Work arrives right after the last batch was written: the writer waits for more.
        tx.send(1).await.unwrap();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            sender.send(2).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            sender.send(3).await.unwrap();
        });
        let started = Instant::now();
        assert!(batches.next(&mut batch).await);
        assert_eq!(batch, [1, 2], "the item 10 ms later is not waited for");
        assert_eq!(started.elapsed(), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_the_rest_waits_for_the_next() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 2, Duration::from_millis(5)).always_lingering();
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
    async fn an_always_lingering_writer_waits_even_when_idle() {
        let (tx, rx) = mpsc::channel(16);
        let mut batches = Batches::new(rx, 8, Duration::from_millis(50)).always_lingering();
        tx.send(1).await.unwrap();
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            sender.send(2).await.unwrap();
        });
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(batches.next(&mut batch).await);
        assert_eq!(batch, [1, 2]);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_none_ends_when_the_last_item_is_written_or_says_how_many_are_missing() {
        let outstanding = std::sync::Arc::new(Outstanding::default());
        assert_eq!(outstanding.wait_for_none(Duration::ZERO).await, Ok(()));
        outstanding.add(3);
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
}

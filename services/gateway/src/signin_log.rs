//! The sign-in log's writer: attempts are queued and written to the store in batches (one
//! transaction, so one disk sync, for many), off the sign-in's own path. It always waits up to
//! [`LINGER`] for more entries before it writes: entries land in the store that much later,
//! and under load a transaction carries hundreds of them instead of a few.
//!
//! The queue is bounded; when it is full a sign-in waits for room rather than losing its
//! entry (an audit log that drops entries under load is no audit log). For the same reason a
//! gateway that stops writes what is queued first ([`SigninLog::flush`]).

use std::{sync::Arc, time::Duration};

use passage_store::{
    SigninEntry, Store,
    batching::{Batches, Outstanding, WriterConnection},
};
use tokio::sync::mpsc;

/// Entries queued at most.
const QUEUE: usize = 10_000;
/// Entries written in one transaction at most.
const BATCH: usize = 500;
/// How long the writer waits for more entries after the first of a batch.
const LINGER: Duration = Duration::from_millis(50);

/// A handle on the writer.
#[derive(Debug, Clone)]
pub struct SigninLog {
    queue: mpsc::Sender<SigninEntry>,
    /// Entries recorded and not yet in the store.
    unwritten: Arc<Outstanding>,
}

impl SigninLog {
    /// Starts the writer over `store`.
    pub fn start(store: Store) -> Self {
        let (queue, entries) = mpsc::channel(QUEUE);
        let unwritten = Arc::new(Outstanding::default());
        tokio::spawn(write(store, entries, Arc::clone(&unwritten)));
        Self { queue, unwritten }
    }

    /// Queues `entry` (waiting for room when the queue is full).
    pub async fn record(&self, entry: SigninEntry) {
        if self.unwritten.send(&self.queue, entry).await.is_err() {
            tracing::error!("the sign-in log writer has stopped; an attempt was not recorded");
        }
    }

    /// Waits until every entry recorded so far is in the store, or `timeout` has passed;
    /// `false` (and an error logged, with how many are missing) in the second case.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.unwritten.flush(timeout, "sign-in log entries").await
    }
}

async fn write(store: Store, entries: mpsc::Receiver<SigninEntry>, unwritten: Arc<Outstanding>) {
    let mut batches = Batches::new(entries, BATCH, LINGER);
    let mut batch = Vec::with_capacity(BATCH);
    let mut conn = WriterConnection::default();
    while batches.next(&mut batch).await {
        // A failed write is retried (the entries are kept) rather than lost.
        let mut delay = Duration::from_millis(100);
        while let Err(err) = store.log_signins(&mut conn, &batch).await {
            tracing::error!(error = %err, entries = batch.len(), "the sign-in log could not be written; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        unwritten.written(batch.len());
        batch.clear();
    }
}

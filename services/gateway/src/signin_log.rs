//! The sign-in log's writer: attempts are queued and written to the store in batches (one
//! transaction, so one disk sync, for many), off the sign-in's own path.
//!
//! The queue is bounded; when it is full a sign-in waits for room rather than losing its
//! entry (an audit log that drops entries under load is no audit log).

use std::time::Duration;

use passage_store::{SigninEntry, Store};
use tokio::sync::mpsc;

/// Entries queued at most.
const QUEUE: usize = 10_000;
/// Entries written in one transaction at most.
const BATCH: usize = 500;

/// A handle on the writer.
#[derive(Debug, Clone)]
pub struct SigninLog {
    queue: mpsc::Sender<SigninEntry>,
}

impl SigninLog {
    /// Starts the writer over `store`.
    pub fn start(store: Store) -> Self {
        let (queue, entries) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, entries));
        Self { queue }
    }

    /// Queues `entry` (waiting for room when the queue is full).
    pub async fn record(&self, entry: SigninEntry) {
        if self.queue.send(entry).await.is_err() {
            tracing::error!("the sign-in log writer has stopped; an attempt was not recorded");
        }
    }
}

async fn write(store: Store, mut entries: mpsc::Receiver<SigninEntry>) {
    let mut batch = Vec::with_capacity(BATCH);
    while entries.recv_many(&mut batch, BATCH).await > 0 {
        // A failed write is retried (the entries are kept) rather than lost.
        let mut delay = Duration::from_millis(100);
        while let Err(err) = store.log_signins(&batch).await {
            tracing::error!(error = %err, entries = batch.len(), "the sign-in log could not be written; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        batch.clear();
    }
}

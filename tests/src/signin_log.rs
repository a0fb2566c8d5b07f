//! Reading the sign-in log in tests: the gateway writes it in batches, a moment after each
//! sign-in, so a test waits for the entries it expects.

use passage_store::{SigninEntry, SigninFilter, Store};

/// The sign-in log's entries for `username`, newest first, once there are `count` (or after
/// 15 s, whatever there is: the test's own assertions then say what is missing).
pub async fn logged(store: &Store, username: &str, count: usize) -> Vec<SigninEntry> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let log = store
            .signins(&SigninFilter {
                username: Some(username.into()),
                limit: 10_000,
                ..SigninFilter::default()
            })
            .await
            .unwrap();
        if log.len() >= count || std::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

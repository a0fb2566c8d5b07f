//! What smart lockout's and the sign-in log's batched writes cost, per row, on a real
//! PostgreSQL started for the run and on SQLite: the client's CPU (this process: the store
//! code, sqlx, the driver) and, on PostgreSQL, the server's. No network, no other services:
//! where the pipeline benchmark's store phases say how much a sign-in loses, this says which
//! write it loses it to, steadily enough to compare two ways of writing.
//!
//! ```sh
//! cargo bench -p passage-tests --bench store_writes
//! ```
//!
//! `PASSAGE_BENCH_ROWS` (default 20,000) sets the rows per measurement. Results go to stdout;
//! record them in docs/benchmarks.md with the CPU model.

use std::time::{Duration, Instant};

use passage_store::{
    AttemptEnd, LockoutOp, LockoutScope, SigninEntry, Store, batching::WriterConnection,
};
use passage_tests::{bins, postgres::Postgres};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time so far.
fn own_cpu() -> Duration {
    bins::proc_stat(std::process::id())
        .map(|stat| stat.cpu)
        .unwrap_or_default()
}

fn entry(i: usize) -> SigninEntry {
    SigninEntry {
        at: 1_800_000_000 + i as i64 / 1000,
        tenant: "default".into(),
        username: format!("user{}@example.org", i % 5000),
        upn: format!("user{}@example.org", i % 5000),
        client_id: "demo-app".into(),
        client_ip: format!("10.0.{}.{}", (i / 256) % 256, i % 256),
        familiar_location: !i.is_multiple_of(3),
        outcome: "success".into(),
        error_code: String::new(),
        agent_id: "agent-0123456789abcdef".into(),
        latency_ms: 12,
        lockout: "none".into(),
        policies: String::new(),
        mfa: String::new(),
    }
}

/// A reservation and a success for each of `batch` users: what `batch` sign-ins ask of the
/// lockout writer, as two batches (one of reservations, one of successes).
fn lockout_batches(round: usize, batch: usize) -> [Vec<LockoutOp>; 2] {
    let now = 1_800_000_000 + round as i64;
    let users: Vec<String> = (0..batch)
        .map(|i| format!("user{}@example.org", (round * batch + i) % 5000))
        .collect();
    let reserve = users
        .iter()
        .map(|user| LockoutOp::Reserve {
            tenant: "default".into(),
            user_key: user.clone(),
            scope: LockoutScope::Familiar,
            now,
            until: now + 40,
        })
        .collect();
    let settle = users
        .iter()
        .map(|user| LockoutOp::Settle {
            tenant: "default".into(),
            user_key: user.clone(),
            scope: LockoutScope::Familiar,
            end: AttemptEnd::Success,
            now,
        })
        .collect();
    [reserve, settle]
}

struct Measured {
    client: Duration,
    server: Option<Duration>,
    wall: Duration,
}

async fn measure<F, Fut>(postgres: Option<&Postgres>, run: F) -> Measured
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (client, server, wall) = (
        own_cpu(),
        postgres.and_then(Postgres::cpu_time),
        Instant::now(),
    );
    run().await;
    Measured {
        client: own_cpu() - client,
        server: postgres
            .and_then(Postgres::cpu_time)
            .zip(server)
            .map(|(after, before)| after - before),
        wall: wall.elapsed(),
    }
}

fn print(what: &str, rows: usize, m: &Measured) {
    let per_row = |d: Duration| d.as_secs_f64() * 1e6 / rows as f64;
    let server = m
        .server
        .map(|s| format!(", server {:.1}", per_row(s)))
        .unwrap_or_default();
    println!(
        "{what:<44} µs per row: client {:.1}{server}; wall {:.1}",
        per_row(m.client),
        per_row(m.wall)
    );
}

async fn run(store: &Store, postgres: Option<&Postgres>, rows: usize) {
    // A connection for each writer, kept as the gateway's writers keep theirs.
    let (lockout, log) = (
        &mut WriterConnection::default(),
        &mut WriterConnection::default(),
    );
    for batch in [1, 4, 16, 64] {
        let rounds = rows / batch;
        // Warm-up: the statements prepared, the users' rows there.
        for round in 0..(5000 / batch).max(20) {
            for ops in lockout_batches(round, batch) {
                store.run_lockout_ops(lockout, &ops).await.unwrap();
            }
        }
        let batches: Vec<_> = (0..rounds).map(|r| lockout_batches(r, batch)).collect();
        let m = measure(postgres, || async {
            for pair in &batches {
                for ops in pair {
                    store.run_lockout_ops(lockout, ops).await.unwrap();
                }
            }
        })
        .await;
        print(
            &format!("lockout, reservation + success, {batch}/batch"),
            rounds * batch,
            &m,
        );
    }
    for batch in [1, 16, 100] {
        let rounds = rows / batch;
        let entries: Vec<SigninEntry> = (0..batch * 20).map(entry).collect();
        for chunk in entries.chunks(batch) {
            store.log_signins(log, chunk).await.unwrap();
        }
        let entries: Vec<SigninEntry> = (0..rounds * batch).map(entry).collect();
        let m = measure(postgres, || async {
            for chunk in entries.chunks(batch) {
                store.log_signins(log, chunk).await.unwrap();
            }
        })
        .await;
        print(&format!("sign-in log, {batch}/batch"), rounds * batch, &m);
    }
}

fn main() {
    let rows = env_or("PASSAGE_BENCH_ROWS", 20_000);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_default();
    println!("CPU: {cpu}; {rows} rows per measurement, one client task");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let postgres = Postgres::start();
        let store = Store::open(&postgres.url()).await.unwrap();
        println!("PostgreSQL:");
        run(&store, Some(&postgres), rows).await;
        if let Some(top) = postgres.top_statements(8) {
            println!("{top}");
        }
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::open(&url).await.unwrap();
        println!("SQLite:");
        run(&store, None, rows).await;
    });
}

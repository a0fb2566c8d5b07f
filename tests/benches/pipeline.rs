//! Pipeline benchmark: direct LDAP search+bind (the baseline) against full sign-ins through
//! gateway → dispatcher → agent → slapd, in one run, on one machine — first in development
//! trust (plaintext) on the baseline's slapd, then with TLS on every hop and an enrolled agent.
//!
//! ```sh
//! cargo bench -p passage-tests --bench pipeline
//! ```
//!
//! `PASSAGE_BENCH_SECONDS` (default 10) and `PASSAGE_BENCH_CONCURRENCY` (default 64) tune it.
//! It also measures user enumeration by timing (wrong password vs unknown user, the rank
//! statistic P(wrong > unknown), where 0.5 means indistinguishable).
//! Results go to stdout; record them in docs/benchmarks.md.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ldap3::{LdapConnAsync, Scope, ldap_escape};
use passage_proto::v1::{SignInRequest, gateway_client::GatewayClient};
use passage_tests::{
    Cluster, ClusterOptions, TestUser,
    cluster::CLIENT_ID,
    slapd::{ADMIN_DN, ADMIN_PASSWORD, PEOPLE_DN},
};
use tonic::transport::Channel;

const USERS: usize = 200;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Throughput and latency of one phase.
struct Report {
    name: &'static str,
    ops: usize,
    /// Operations including the warm-up (for CPU per operation).
    all_ops: usize,
    errors: usize,
    elapsed: Duration,
    /// Wall time including the warm-up (for cores kept busy).
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }

    fn print(&self) {
        println!(
            "{:<28} {:>10.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ok, {} errors in {:.1} s)",
            self.name,
            self.per_second(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64()
        );
    }
}

/// Runs `op` from `concurrency` workers for `warmup + duration`, measuring after the warm-up.
async fn drive<F, Fut>(
    name: &'static str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> Report
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let op = Arc::clone(&op);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut all_ops = 0usize;
            let mut i = worker;
            loop {
                let began = Instant::now();
                if began >= stop_at {
                    break;
                }
                let ok = op(worker, i).await;
                all_ops += 1;
                if began >= measure_from {
                    if ok {
                        latencies.push(began.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                i += concurrency;
            }
            (latencies, errors, all_ops)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut all_ops = 0;
    while let Some(result) = workers.join_next().await {
        let (mut l, e, n) = result.expect("worker");
        latencies.append(&mut l);
        errors += e;
        all_ops += n;
    }
    latencies.sort_unstable();
    Report {
        name,
        ops: latencies.len(),
        all_ops,
        errors,
        elapsed: duration,
        wall: start.elapsed(),
        latencies,
    }
}

/// CPU time of each process, to say where the time of one operation goes.
fn cpu_snapshot(cluster: &Cluster) -> Vec<(&'static str, Duration)> {
    let mut snapshot = vec![
        ("slapd", cluster.slapd.cpu_time()),
        ("gateway", cluster.gateway.process.cpu_time()),
        ("dispatcher", cluster.dispatcher.process.cpu_time()),
        ("agent", cluster.agents[0].process.cpu_time()),
        (
            "load generator",
            passage_tests::bins::cpu_time_of(std::process::id()),
        ),
    ];
    snapshot.retain(|(_, t)| t.is_some());
    snapshot
        .into_iter()
        .map(|(name, t)| (name, t.unwrap_or_default()))
        .collect()
}

fn print_cpu(
    before: &[(&'static str, Duration)],
    after: &[(&'static str, Duration)],
    report: &Report,
) {
    let parts: Vec<String> = before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| {
            let micros = (*a - *b).as_secs_f64() * 1e6 / report.all_ops.max(1) as f64;
            format!("{name} {micros:.0}")
        })
        .collect();
    println!("    CPU µs per operation: {}", parts.join(", "));
    // The CPU used from the first snapshot to the last, over the same wall time (warm-up
    // included on both sides): how many of the machine's cores the phase kept busy.
    let used: Duration = before
        .iter()
        .zip(after)
        .map(|((_, b), (_, a))| *a - *b)
        .sum();
    println!(
        "    cores kept busy: {:.2} of {}",
        used.as_secs_f64() / report.wall.as_secs_f64().max(1e-9),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn bench_users() -> Vec<TestUser> {
    (0..USERS)
        .map(|i| {
            TestUser::new(
                &format!("user{i:03}"),
                &format!("Bench-Pass-{i:03}!"),
                &["staff"],
            )
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let seconds = env_or("PASSAGE_BENCH_SECONDS", 10);
    let concurrency = env_or("PASSAGE_BENCH_CONCURRENCY", 64) as usize;
    let duration = Duration::from_secs(seconds);
    let warmup = Duration::from_secs(1);
    let users = Arc::new(bench_users());

    // Like the baseline: search + bind, no group lookup, no per-operation slapd log.
    let options = ClusterOptions {
        agents: 1,
        users: users.to_vec(),
        agent_capacity: 1024,
        slapd_stats_log: false,
        group_search: false,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options.clone()).await;
    println!(
        "Passage pipeline benchmark: {} cores, concurrency {concurrency}, {seconds} s per phase (+1 s warm-up), {USERS} users",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Baseline: what the agent itself does against slapd — search as the service account on a
    // shared connection, then bind as the user on the worker's own connection.
    let url = cluster.slapd.url();
    let (conn, mut search) = LdapConnAsync::new(&url).await.expect("connect");
    tokio::spawn(async move { conn.drive().await });
    search
        .simple_bind(ADMIN_DN, ADMIN_PASSWORD)
        .await
        .unwrap()
        .success()
        .unwrap();
    let mut binders = Vec::new();
    for _ in 0..concurrency {
        let (conn, ldap) = LdapConnAsync::new(&url).await.expect("connect");
        tokio::spawn(async move { conn.drive().await });
        binders.push(tokio::sync::Mutex::new(ldap));
    }
    let binders = Arc::new(binders);
    let cpu_before_baseline = cpu_snapshot(&cluster);
    let baseline_users = Arc::clone(&users);
    let baseline = drive(
        "direct LDAP search+bind",
        concurrency,
        warmup,
        duration,
        move |worker, i| {
            let user = baseline_users[i % USERS].clone();
            let mut search = search.clone();
            let binders = Arc::clone(&binders);
            async move {
                let filter = format!(
                    "(&(objectClass=person)(userPrincipalName={}))",
                    ldap_escape(&user.upn)
                );
                let Ok(Ok((entries, _))) = search
                    .search(
                        PEOPLE_DN,
                        Scope::Subtree,
                        &filter,
                        ["displayName", "mail", "entryUUID"],
                    )
                    .await
                    .map(|r| r.success())
                else {
                    return false;
                };
                let Some(entry) = entries.into_iter().next() else {
                    return false;
                };
                let dn = ldap3::SearchEntry::construct(entry).dn;
                let mut ldap = binders[worker].lock().await;
                matches!(
                    ldap.simple_bind(&dn, &user.password).await.map(|r| r.rc),
                    Ok(0)
                )
            }
        },
    )
    .await;

    let cpu_after_baseline = cpu_snapshot(&cluster);
    let channel = Channel::from_shared(cluster.gateway.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .expect("gateway");
    let client = GatewayClient::new(channel);
    let cpu_before_pipeline = cpu_snapshot(&cluster);
    let pipeline = sign_ins(
        "full sign-in pipeline",
        client,
        Arc::clone(&users),
        concurrency,
        warmup,
        duration,
    )
    .await;
    let cpu_after_pipeline = cpu_snapshot(&cluster);

    // User enumeration by timing, on the now idle pipeline: 100 users × 2 wrong passwords
    // against 200 unknown users, interleaved at random, one at a time.
    let enumeration =
        passage_tests::timing::measure(&cluster.gateway_client(), &users[..USERS / 2]).await;

    // Production trust: enrolled agent, mutual TLS agent → dispatcher and gateway →
    // dispatcher, TLS client → gateway, SQLite store. The first cluster stops first, so both
    // pipelines have the machine to themselves.
    drop(cluster);
    let mut secure = Cluster::start(ClusterOptions {
        agents: 0,
        enrolment: true,
        ..options
    })
    .await;
    secure.enrol_agent().await;
    let cpu_before_secure = cpu_snapshot(&secure);
    let secure_pipeline = sign_ins(
        "pipeline, TLS on every hop",
        secure.gateway_client(),
        Arc::clone(&users),
        concurrency,
        warmup,
        duration,
    )
    .await;
    let cpu_after_secure = cpu_snapshot(&secure);

    println!();
    baseline.print();
    print_cpu(&cpu_before_baseline, &cpu_after_baseline, &baseline);
    pipeline.print();
    print_cpu(&cpu_before_pipeline, &cpu_after_pipeline, &pipeline);
    secure_pipeline.print();
    print_cpu(&cpu_before_secure, &cpu_after_secure, &secure_pipeline);
    for (name, report) in [("pipeline", &pipeline), ("TLS pipeline", &secure_pipeline)] {
        println!(
            "ratio {name} / direct LDAP: {:.3}  (p50 latency ratio {:.1}x)",
            report.per_second() / baseline.per_second(),
            report.percentile(0.5).as_secs_f64() / baseline.percentile(0.5).as_secs_f64().max(1e-9)
        );
    }
    println!("user enumeration by timing: {}", enumeration.summary());
    assert_eq!(baseline.errors, 0, "direct LDAP errors");
    assert_eq!(pipeline.errors, 0, "pipeline errors");
    assert_eq!(secure_pipeline.errors, 0, "TLS pipeline errors");
}

/// Sign-ins of `users` in turn through `client`.
async fn sign_ins(
    name: &'static str,
    client: GatewayClient<Channel>,
    users: Arc<Vec<TestUser>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Report {
    drive(name, concurrency, warmup, duration, move |_, i| {
        let user = &users[i % USERS];
        let request = SignInRequest {
            username: user.upn.clone(),
            password: user.password.clone(),
            client_id: CLIENT_ID.into(),
            client_ip: String::new(),
        };
        let mut client = client.clone();
        async move { client.sign_in(request).await.is_ok() }
    })
    .await
}

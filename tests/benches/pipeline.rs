//! Pipeline benchmark: direct LDAP search+bind (the baseline, doing the agent's own LDAP work)
//! against full sign-ins through gateway → dispatcher → agent → slapd, in one run, on one
//! machine — in development trust with a version 1 (RSA) agent and then a version 2 (hybrid)
//! agent on the baseline's slapd, then with TLS on every hop and an enrolled agent. It prints
//! the sealing primitives' own costs first, and the CPU model.
//!
//! ```sh
//! cargo bench -p passage-tests --bench pipeline
//! ```
//!
//! `PASSAGE_BENCH_SECONDS` (default 10) and `PASSAGE_BENCH_CONCURRENCY` (default 64) tune it;
//! `PASSAGE_BENCH_STORE_ONLY=1` runs only the phases with and without smart lockout and the
//! sign-in log, which take turns in `PASSAGE_BENCH_ROUNDS` rounds (default 4; with
//! `PASSAGE_PG_STATEMENTS=1`, PostgreSQL's costliest statements follow the PostgreSQL pair;
//! `PASSAGE_BENCH_STORES=sqlite` or `=postgresql` measures one store's pair only);
//! `PASSAGE_BENCH_DIRECTORY_ONLY=1` only the directory phases (one of two servers down, groups
//! by search, nested groups walked) against a reference with one server.
//! On a CPU with AVX-512, `OPENSSL_ia32cap=~0x0:~0x00005842DC230000` makes aws-lc (in the
//! benchmark and in every service it starts) take the code paths of a CPU without it, such
//! as the AMD EPYC machines without AVX-512 the envelope targets were set on.
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
    slapd::{ADMIN_DN, ADMIN_PASSWORD, GROUPS_DN, PEOPLE_DN},
};
use tonic::transport::Channel;

const USERS: usize = 200;
/// The password-policy request control, which the agent sends with every user bind.
const PPOLICY_OID: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

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

/// CPU time of each process (the agent: number `agent`), to say where the time of one
/// operation goes.
fn cpu_snapshot(cluster: &Cluster, agent: usize) -> Vec<(&'static str, Duration)> {
    let mut snapshot = vec![
        ("slapd", cluster.slapd.cpu_time()),
        ("gateway", cluster.gateway.process.cpu_time()),
        ("dispatcher", cluster.dispatcher.process.cpu_time()),
        ("agent", cluster.agents[agent].process.cpu_time()),
        (
            "load generator",
            passage_tests::bins::cpu_time_of(std::process::id()),
        ),
        (
            "postgres",
            cluster.postgres.as_ref().and_then(|pg| pg.cpu_time()),
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

/// The machine's CPU model, for the record, and whether it has AVX-512 IFMA (which makes
/// RSA several times cheaper, and so narrows the gap between the envelope versions).
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_owned())
            .unwrap_or_default()
    };
    let mut ifma = if info.contains("avx512ifma") {
        "with AVX-512 IFMA".to_owned()
    } else {
        "without AVX-512 IFMA".to_owned()
    };
    // aws-lc reads this at start-up, in this process and in every service the benchmark
    // starts: with the AVX-512 bits masked it runs the code paths of a CPU without them.
    if let Ok(mask) = std::env::var("OPENSSL_ia32cap") {
        ifma.push_str(&format!(
            ", masked for aws-lc in every process by OPENSSL_ia32cap={mask}"
        ));
    }
    format!(
        "{} (family {}, model {}; {ifma})",
        field("model name"),
        field("cpu family"),
        field("model")
    )
}

/// Mean time of `op` over `n` runs on this thread, in µs.
fn per_op(n: usize, mut op: impl FnMut(usize)) -> f64 {
    let started = Instant::now();
    for i in 0..n {
        op(i);
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// What sealing and opening cost here, one core: where the pipelines' difference comes from.
fn sealing_primitives() {
    use passage_credentials::Password;
    use passage_envelope::{AgentKey, HybridKey, PayloadFields, RsaBits, SealingKey};
    let key = AgentKey::generate(RsaBits::Rsa2048)
        .unwrap()
        .with_hybrid(HybridKey::generate().unwrap());
    let v1 = SealingKey::from_der(key.public_key_der()).unwrap();
    let v2 = SealingKey::hybrid(key.hybrid().unwrap().public().as_bytes()).unwrap();
    let password = Password::new("Bench-Pass-000!".into()).unwrap();
    let fields = PayloadFields {
        username: "user000@corp.example.com",
        password: &password,
        new_password: None,
        tenant: "default",
        not_after: std::time::SystemTime::now() + Duration::from_secs(300),
    };
    let v1_sealed: Vec<_> = (0..300)
        .map(|_| v1.seal(&fields).unwrap().ciphertext)
        .collect();
    let v2_sealed: Vec<_> = (0..3000)
        .map(|_| v2.seal(&fields).unwrap().ciphertext)
        .collect();
    let rsa_open = per_op(v1_sealed.len(), |i| {
        key.open(&v1_sealed[i]).unwrap();
    });
    let hybrid_open = per_op(v2_sealed.len(), |i| {
        key.open(&v2_sealed[i]).unwrap();
    });
    let v1_seal = per_op(3000, |_| {
        v1.seal(&fields).unwrap();
    });
    let v2_seal = per_op(3000, |_| {
        v2.seal(&fields).unwrap();
    });
    println!(
        "sealing primitives, one core: open v1 (RSA-2048 OAEP) {rsa_open:.0} µs, open v2 (X25519 + ML-KEM-768) {hybrid_open:.0} µs ({:.1}x cheaper); seal v1 {v1_seal:.0} µs, seal v2 {v2_seal:.0} µs",
        rsa_open / hybrid_open
    );
}

#[tokio::main]
async fn main() {
    let seconds = env_or("PASSAGE_BENCH_SECONDS", 10);
    let concurrency = env_or("PASSAGE_BENCH_CONCURRENCY", 64) as usize;
    let duration = Duration::from_secs(seconds);
    let warmup = Duration::from_secs(1);
    let users = Arc::new(bench_users());
    println!(
        "Passage pipeline benchmark on {} ({} cores): concurrency {concurrency}, {seconds} s per phase (+1 s warm-up), {USERS} users",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    sealing_primitives();

    // Like the baseline: search + bind, no group lookup, no per-operation slapd log. The first
    // agent has no hybrid key, so passwords are sealed to it with version 1 (RSA).
    let options = ClusterOptions {
        agents: 0,
        users: users.to_vec(),
        agent_capacity: 1024,
        slapd_stats_log: false,
        group_search: false,
        ..ClusterOptions::default()
    };
    if std::env::var_os("PASSAGE_BENCH_DIRECTORY_ONLY").is_some() {
        let phases = directory_phases(&options, &users, concurrency, warmup, duration).await;
        print_directory_comparison(&phases);
        return;
    }
    // The store phases alone (lockout and the sign-in log on and off), for work on their cost.
    if std::env::var_os("PASSAGE_BENCH_STORE_ONLY").is_some() {
        let phases = store_phases(&options, &users, concurrency, warmup, duration).await;
        println!();
        for (report, before, after) in &phases {
            report.print();
            print_cpu(before, after, report);
        }
        print_store_comparison(&phases);
        return;
    }
    let mut cluster = Cluster::start(options.clone()).await;
    let config = cluster.agent_config(0);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("post_quantum_sealing = false\n{text}")).unwrap();
    cluster.start_agent(0, true).await;

    // Baseline: the agent's own LDAP work against slapd, driven harder than the pipeline so it
    // saturates the machine — searches as the service account multiplexed on 2 connections,
    // binds as the user (with the password-policy control) on a pool of 32 connections, as the
    // agent's defaults (search_connections, bind_pool_size) do.
    let url = cluster.slapd.url();
    let mut searchers = Vec::new();
    for _ in 0..2 {
        let (conn, mut ldap) = LdapConnAsync::new(&url).await.expect("connect");
        tokio::spawn(async move { conn.drive().await });
        ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD)
            .await
            .unwrap()
            .success()
            .unwrap();
        searchers.push(ldap);
    }
    let mut pool = Vec::new();
    for _ in 0..32 {
        let (conn, ldap) = LdapConnAsync::new(&url).await.expect("connect");
        tokio::spawn(async move { conn.drive().await });
        pool.push(ldap);
    }
    let searchers = Arc::new(searchers);
    let pool = Arc::new(tokio::sync::Mutex::new(pool));
    let bind_slots = Arc::new(tokio::sync::Semaphore::new(32));
    let cpu_before_baseline = cpu_snapshot(&cluster, 0);
    let baseline_users = Arc::clone(&users);
    let baseline = drive(
        "direct LDAP search+bind",
        concurrency * 2,
        warmup,
        duration,
        move |_, i| {
            let user = baseline_users[i % USERS].clone();
            let mut search = searchers[i % searchers.len()].clone();
            let (pool, bind_slots) = (Arc::clone(&pool), Arc::clone(&bind_slots));
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
                        [
                            "userPrincipalName",
                            "displayName",
                            "mail",
                            "entryUUID",
                            "cn",
                        ],
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
                let Ok(_slot) = bind_slots.acquire().await else {
                    return false;
                };
                let Some(mut ldap) = pool.lock().await.pop() else {
                    return false;
                };
                let bound = ldap
                    .with_controls(ldap3::controls::RawControl {
                        ctype: PPOLICY_OID.into(),
                        crit: false,
                        val: None,
                    })
                    .simple_bind(&dn, &user.password)
                    .await
                    .map(|r| r.rc);
                pool.lock().await.push(ldap);
                matches!(bound, Ok(0))
            }
        },
    )
    .await;
    let cpu_after_baseline = cpu_snapshot(&cluster, 0);

    let channel = Channel::from_shared(cluster.gateway.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .expect("gateway");
    let client = GatewayClient::new(channel);
    let cpu_before_v1 = cpu_snapshot(&cluster, 0);
    let v1 = sign_ins(
        "pipeline, v1 (RSA) agent",
        client.clone(),
        Arc::clone(&users),
        concurrency,
        warmup,
        duration,
    )
    .await;
    let cpu_after_v1 = cpu_snapshot(&cluster, 0);

    // The same pipeline with a version 2 (hybrid) agent in its place.
    cluster.agents[0].process.kill();
    cluster.wait_for_agents(|ids| ids.is_empty()).await;
    cluster.add_agent().await;
    let cpu_before_v2 = cpu_snapshot(&cluster, 1);
    let v2 = sign_ins(
        "pipeline, v2 (hybrid) agent",
        client,
        Arc::clone(&users),
        concurrency,
        warmup,
        duration,
    )
    .await;
    let cpu_after_v2 = cpu_snapshot(&cluster, 1);

    // User enumeration by timing, on the now idle pipeline: 100 users × 2 wrong passwords
    // against 200 unknown users, interleaved at random, one at a time.
    let enumeration =
        passage_tests::timing::measure(&cluster.gateway_client(), &users[..USERS / 2]).await;

    // Production trust: enrolled (hybrid) agent, mutual TLS, with smart lockout and the
    // sign-in log on and off, on SQLite and PostgreSQL. The first cluster stops first, and
    // each deployment has the machine to itself.
    drop(cluster);
    let secure_phases = store_phases(&options, &users, concurrency, warmup, duration).await;
    let directory = directory_phases(&options, &users, concurrency, warmup, duration).await;
    println!();
    baseline.print();
    print_cpu(&cpu_before_baseline, &cpu_after_baseline, &baseline);
    for (report, before, after) in [
        (&v1, &cpu_before_v1, &cpu_after_v1),
        (&v2, &cpu_before_v2, &cpu_after_v2),
    ]
    .into_iter()
    .chain(secure_phases.iter().map(|(r, b, a)| (r, b, a)))
    {
        report.print();
        print_cpu(before, after, report);
    }
    for report in [&v1, &v2]
        .into_iter()
        .chain(secure_phases.iter().map(|(r, _, _)| r))
    {
        println!(
            "ratio {} / direct LDAP: {:.3}  (p50 latency ratio {:.1}x)",
            report.name,
            report.per_second() / baseline.per_second(),
            report.percentile(0.5).as_secs_f64() / baseline.percentile(0.5).as_secs_f64().max(1e-9)
        );
    }
    let agent_cpu = |before: &[(&'static str, Duration)],
                     after: &[(&'static str, Duration)],
                     report: &Report| {
        before
            .iter()
            .zip(after)
            .find(|((name, _), _)| *name == "agent")
            .map_or(0.0, |((_, b), (_, a))| {
                (*a - *b).as_secs_f64() / report.all_ops.max(1) as f64
            })
    };
    println!(
        "v2 / v1: throughput {:.2}x, agent CPU per sign-in {:.2}x",
        v2.per_second() / v1.per_second(),
        agent_cpu(&cpu_before_v2, &cpu_after_v2, &v2)
            / agent_cpu(&cpu_before_v1, &cpu_after_v1, &v1).max(1e-12)
    );
    print_store_comparison(&secure_phases);
    print_directory_comparison(&directory);
    println!("user enumeration by timing: {}", enumeration.summary());
    assert_eq!(baseline.errors, 0, "direct LDAP errors");
    assert_eq!(v1.errors, 0, "v1 pipeline errors");
    assert_eq!(v2.errors, 0, "v2 pipeline errors");
    for (report, _, _) in &secure_phases {
        assert_eq!(report.errors, 0, "{} errors", report.name);
    }
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
        // Each user signs in from an address of its own, as people do (smart lockout then
        // remembers one familiar network per user).
        let request = SignInRequest {
            username: user.upn.clone(),
            password: user.password.clone(),
            client_id: CLIENT_ID.into(),
            client_ip: format!("198.18.{}.{}", (i % USERS) / 256, (i % USERS) % 256),
            offline_access: false,
        };
        let mut client = client.clone();
        async move { client.sign_in(request).await.is_ok() }
    })
    .await
}

/// One phase's report and the CPU snapshots around it.
type Phase = (
    Report,
    Vec<(&'static str, Duration)>,
    Vec<(&'static str, Duration)>,
);

/// Sign-ins through `cluster`'s gateway for one phase, with the CPU snapshots around it
/// (`agent`: the index of the agent serving it).
async fn measured_phase(
    cluster: &Cluster,
    agent: usize,
    name: &'static str,
    users: &Arc<Vec<TestUser>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Phase {
    let before = cpu_snapshot(cluster, agent);
    let report = sign_ins(
        name,
        cluster.gateway_client(),
        Arc::clone(users),
        concurrency,
        warmup,
        duration,
    )
    .await;
    (report, before, cpu_snapshot(cluster, agent))
}

/// The production-trust phases: smart lockout and the sign-in log on and off, on SQLite and
/// on PostgreSQL, each a deployment of its own. The two deployments of a store run side by
/// side and take turns (`PASSAGE_BENCH_ROUNDS` rounds, default 4, of `duration / rounds`
/// each, in the order on, off, off, on, …), so that a machine whose speed drifts during the
/// run (a neighbour's load on shared cores moves these figures by 10–20 % within minutes)
/// weighs on both alike; each round's pair is printed, then their sums. Each turn's CPU is
/// read 0.3 s after its last sign-in, so that what it left to write is counted with it.
async fn store_phases(
    options: &ClusterOptions,
    users: &Arc<Vec<TestUser>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Vec<Phase> {
    let rounds = env_or("PASSAGE_BENCH_ROUNDS", 4).max(1) as u32;
    let slice = (duration / rounds).max(Duration::from_secs(1));
    let only = std::env::var("PASSAGE_BENCH_STORES").unwrap_or_default();
    if !["", "sqlite", "postgresql"].contains(&only.to_ascii_lowercase().as_str()) {
        eprintln!("PASSAGE_BENCH_STORES={only}: expected sqlite or postgresql; measuring neither");
    }
    let mut phases = Vec::new();
    for (store, postgres) in [("SQLite", false), ("PostgreSQL", true)] {
        if !only.is_empty() && !store.eq_ignore_ascii_case(&only) {
            continue;
        }
        let names = if postgres {
            [
                "v2, TLS, PostgreSQL, lockout+log",
                "v2, TLS, PostgreSQL, no lockout/log",
            ]
        } else {
            [
                "v2, TLS, SQLite, lockout+log",
                "v2, TLS, SQLite, no lockout/log",
            ]
        };
        // Enrolled (hybrid) agent, mutual TLS agent → dispatcher and gateway → dispatcher,
        // TLS client → gateway.
        let mut clusters = Vec::new();
        for on in [true, false] {
            let mut cluster = Cluster::start(ClusterOptions {
                agents: 0,
                enrolment: true,
                postgres,
                gateway_config: if on {
                    String::new()
                } else {
                    "lockout = { enabled = false }\nsignin_log_days = 0\n".into()
                },
                ..options.clone()
            })
            .await;
            cluster.enrol_agent().await;
            clusters.push(cluster);
        }
        let mut slices: [Vec<Phase>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let cluster = &clusters[which];
                let before = cpu_snapshot(cluster, 0);
                let report = sign_ins(
                    names[which],
                    cluster.gateway_client(),
                    Arc::clone(users),
                    concurrency,
                    warmup,
                    slice,
                )
                .await;
                // What the turn left to do (the sign-in log lingers 50 ms before it writes;
                // PostgreSQL's own background writes) is its own: counted here, not run in
                // and charged to the other deployment's turn.
                tokio::time::sleep(Duration::from_millis(300)).await;
                slices[which].push((report, before, cpu_snapshot(cluster, 0)));
            }
            let (on, off) = (
                slices[0].last().expect("measured").0.per_second(),
                slices[1].last().expect("measured").0.per_second(),
            );
            println!(
                "{store}, round {}: lockout+log {on:.0}/s, without {off:.0}/s ({:.1}% lost)",
                round + 1,
                (1.0 - on / off) * 100.0
            );
        }
        for (name, cluster) in names.iter().zip(&clusters) {
            if let Some(top) = cluster
                .postgres
                .as_ref()
                .and_then(|pg| pg.top_statements(12))
            {
                println!("{name}: the statements PostgreSQL spent most time on\n{top}");
            }
        }
        let [on, off] = slices;
        phases.push(merged(on));
        phases.push(merged(off));
    }
    phases
}

/// The phases of one deployment as one: operations, latencies, wall time and each process's
/// CPU time added up.
fn merged(phases: Vec<Phase>) -> Phase {
    let mut phases = phases.into_iter();
    let (mut report, mut before, mut after) = phases.next().expect("at least one phase");
    // One snapshot pair holding the sum of every phase's CPU time.
    for ((_, b), (_, a)) in before.iter_mut().zip(after.iter_mut()) {
        *a -= *b;
        *b = Duration::ZERO;
    }
    for (next, next_before, next_after) in phases {
        report.ops += next.ops;
        report.all_ops += next.all_ops;
        report.errors += next.errors;
        report.elapsed += next.elapsed;
        report.wall += next.wall;
        report.latencies.extend(next.latencies);
        for (((_, sum), (_, b)), (_, a)) in after.iter_mut().zip(&next_before).zip(&next_after) {
            *sum += *a - *b;
        }
    }
    report.latencies.sort_unstable();
    (report, before, after)
}

/// Each store's throughput with lockout and the log against without.
fn print_store_comparison(phases: &[Phase]) {
    for pair in phases.chunks(2) {
        let (with, without) = (&pair[0].0, &pair[1].0);
        println!(
            "{} against {}: throughput {:.2}x ({:.1}% lost)",
            with.name,
            without.name,
            with.per_second() / without.per_second(),
            (1.0 - with.per_second() / without.per_second()) * 100.0
        );
    }
}

/// The directory phases, each with a fresh v2 agent on one cluster: the reference (one
/// server, no groups), the first of two servers down (killed before the phase: the agent
/// finds it refusing, marks it down and fails over), groups by search, and nested groups
/// walked three levels up (`staff` ∈ `department` ∈ `company`).
async fn directory_phases(
    options: &ClusterOptions,
    users: &Arc<Vec<TestUser>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Vec<Phase> {
    let mut cluster = Cluster::start(options.clone()).await;
    let group = |name: &str, member: &str| {
        format!(
            "dn: cn={name},{GROUPS_DN}\nchangetype: add\nobjectClass: groupOfNames\ncn: {name}\nmember: {member}\n\n"
        )
    };
    cluster.slapd.modify(&format!(
        "{}{}",
        group("department", &format!("cn=staff,{GROUPS_DN}")),
        group("company", &format!("cn=department,{GROUPS_DN}"))
    ));
    let mut replica = passage_tests::slapd::Slapd::start_with(users, false);
    let down = replica.url();
    replica.stop();
    let up = cluster.slapd.url();
    let groups = format!("group_search = {{ base_dn = \"{GROUPS_DN}\" }}\n");
    let mut phases = Vec::new();
    for (index, (name, directory_lines)) in [
        ("directory: one server (reference)", String::new()),
        ("directory: first of two servers down", String::new()),
        ("directory: groups by search", groups.clone()),
        (
            "directory: nested groups walked",
            format!("{groups}nested_groups = \"recursive\"\n"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let config = cluster.agent_config(index);
        let mut text = std::fs::read_to_string(&config).unwrap();
        if index == 1 {
            text = text.replace(
                &format!("url = \"{up}\""),
                &format!("urls = [\"{down}\", \"{up}\"]"),
            );
        }
        // [directory] is the file's last table.
        text.push_str(&directory_lines);
        std::fs::write(&config, text).unwrap();
        if index > 0 {
            cluster.agents[index - 1].process.kill();
            let gone = cluster.agents[index - 1].agent_id.clone();
            cluster.wait_for_agents(|ids| !ids.contains(&gone)).await;
        }
        cluster.start_agent(index, true).await;
        phases.push(
            measured_phase(&cluster, index, name, users, concurrency, warmup, duration).await,
        );
    }
    phases
}

/// Each directory phase's throughput against the reference (one server, no groups).
fn print_directory_comparison(phases: &[Phase]) {
    let Some((reference, _, _)) = phases.first() else {
        return;
    };
    for (report, before, after) in phases {
        report.print();
        print_cpu(before, after, report);
    }
    for (report, _, _) in &phases[1..] {
        println!(
            "{} against {}: throughput {:.2}x",
            report.name,
            reference.name,
            report.per_second() / reference.per_second()
        );
    }
    for (report, _, _) in phases {
        assert_eq!(report.errors, 0, "{} errors", report.name);
    }
}

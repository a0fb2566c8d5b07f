//! Bounded state: endless unknown domains do not grow the gateway, and slow or greedy HTTP
//! clients cannot hold its discovery/JWKS listener.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use passage_error_codes::ErrorCode;
use passage_proto::v1::SignInRequest;
use passage_tests::{Cluster, ClusterOptions, cluster::CLIENT_ID, slapd::default_users};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Signs in for `count` made-up domains, `concurrency` at a time; every answer must be "no
/// agent" (the domain names a connector group nobody serves).
async fn unknown_domains(cluster: &Cluster, from: usize, count: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next) = (cluster.gateway_client(), Arc::clone(&next));
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= from + count {
                    return;
                }
                // Long names, so an unbounded cache would show in the process's memory.
                let domain = format!("d{n:06}-{}.example", "x".repeat(180));
                let status = client
                    .clone()
                    .sign_in(SignInRequest {
                        username: format!("u@{domain}"),
                        password: "Some-Password-1!".into(),
                        client_id: CLIENT_ID.into(),
                        client_ip: String::new(),
                        offline_access: false,
                    })
                    .await
                    .expect_err("nobody serves a made-up domain");
                assert_eq!(
                    ErrorCode::of(&status),
                    Some(ErrorCode::NoAgentAvailable),
                    "{status:?}"
                );
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_unknown_domains_leave_the_gateway_bounded_and_serving() {
    let cluster = Cluster::start(ClusterOptions {
        slapd_stats_log: false,
        group_search: false,
        gateway_config: "key_cache_max_groups = 256\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let alice = default_users().remove(0);

    // Valid sign-ins all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let valid = {
        let (client, stop, ok, failed) = (
            cluster.gateway_client(),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        let alice = alice.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = client
                    .clone()
                    .sign_in(SignInRequest {
                        username: alice.upn.clone(),
                        password: alice.password.clone(),
                        client_id: CLIENT_ID.into(),
                        client_ip: String::new(),
                        offline_access: false,
                    })
                    .await;
                match result {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        eprintln!("valid sign-in failed: {status:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };

    // Warm up (connections, buffers, a full cache), then measure across 10,000 more.
    unknown_domains(&cluster, 0, 1_000, 16).await;
    let before = cluster.gateway.process.resident_bytes().expect("/proc");
    let started = Instant::now();
    unknown_domains(&cluster, 1_000, 10_000, 16).await;
    let after = cluster.gateway.process.resident_bytes().expect("/proc");
    stop.store(true, Ordering::Relaxed);
    valid.await.unwrap();

    let grown = after.saturating_sub(before);
    println!(
        "10,000 unknown domains in {:.1} s: gateway resident memory {} → {} KiB (+{} KiB); {} valid sign-ins meanwhile",
        started.elapsed().as_secs_f64(),
        before / 1024,
        after / 1024,
        grown / 1024,
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a valid sign-in failed");
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "no valid sign-in ran meanwhile"
    );
    // Unbounded, the cache would hold 11,000 groups of ~200-byte names: several MiB.
    assert!(
        grown < 2 * 1024 * 1024,
        "the gateway grew by {} KiB",
        grown / 1024
    );
}

/// Opens a connection to `addr` and sends the start of a request, never its end.
async fn slow_client(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: passage\r\n")
        .await
        .expect("write");
    stream
}

/// Waits (up to `limit`) for the server to close `stream`.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar before closing is fine; keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_clients_cannot_hold_the_jwks_listener() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_config: "http_header_read_timeout_ms = 500\nhttp_max_connections = 4\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let addr = cluster
        .gateway
        .issuer
        .trim_start_matches("http://")
        .to_owned();

    // Four slow clients take every connection slot; a fifth connection is closed at once.
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(slow_client(&addr).await);
    }
    let mut fifth = slow_client(&addr).await;
    assert!(
        closed_by_server(&mut fifth, Duration::from_secs(2)).await,
        "a connection over the limit was kept"
    );
    // The slow ones are closed once the header-read timeout passes...
    for stream in &mut slow {
        assert!(
            closed_by_server(stream, Duration::from_secs(5)).await,
            "a slow client held its connection"
        );
    }
    // ...and the listener serves again.
    passage_gateway::client::fetch_jwks(&cluster.gateway.issuer, None)
        .await
        .expect("JWKS after the slow clients were dropped");

    // A body over the limit is refused before it is read.
    let mut big = TcpStream::connect(&addr).await.expect("connect");
    big.write_all(b"POST /healthz HTTP/1.1\r\nHost: passage\r\nContent-Length: 10485760\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), big.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_address_is_throttled_while_other_addresses_are_served() {
    let cluster = Cluster::start(ClusterOptions {
        gateway_config: "throttle = { per_client_ip_per_minute = 60, per_client_ip_burst = 5 }\n"
            .into(),
        ..ClusterOptions::default()
    })
    .await;
    let alice = default_users().remove(0);
    let sign_in = |ip: String| {
        let mut client = cluster.gateway_client();
        let alice = alice.clone();
        async move {
            client
                .sign_in(SignInRequest {
                    username: alice.upn,
                    password: alice.password,
                    client_id: CLIENT_ID.into(),
                    client_ip: ip,
                    offline_access: false,
                })
                .await
        }
    };
    let mut throttled = 0;
    let started = std::time::Instant::now();
    for n in 0..20 {
        match sign_in("198.51.100.9".into()).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert_eq!(ErrorCode::of(&status), Some(ErrorCode::Throttled));
                let retry_after = status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .expect("a retry-after hint in seconds");
                assert!((1..=60).contains(&retry_after), "{retry_after}");
                throttled += 1;
            }
        }
        // Other addresses are served throughout.
        sign_in(format!("203.0.113.{n}"))
            .await
            .expect("another address");
    }
    // A burst of 5, then one a second: of 20, at most 5 plus one per second passed got through.
    let refilled = started.elapsed().as_secs_f64().ceil() as usize;
    assert!(throttled <= 15, "{throttled} throttled");
    assert!(
        throttled >= 15usize.saturating_sub(refilled),
        "{throttled} throttled in {refilled} s"
    );
}

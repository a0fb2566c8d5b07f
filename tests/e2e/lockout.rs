//! Smart lockout against a real slapd whose ppolicy locks an account after 5 failures (and
//! remembers failures until a successful bind), with a cloud threshold of 3: an attacker can
//! never lock the user out of the directory — one attempt at a time, all at once, or waiting
//! out cloud lockouts — and cannot lock them out where they work; every attempt is in the
//! sign-in log.

use ldap3::{LdapConnAsync, Scope, SearchEntry};
use passage_error_codes::ErrorCode;
use passage_proto::v1::SignInRequest;
use passage_store::Store;
use passage_tests::{
    Cluster, ClusterOptions,
    bins::run_to_end,
    cluster::CLIENT_ID,
    signin_log::logged,
    slapd::{ADMIN_DN, ADMIN_PASSWORD, default_users},
};

const HOME: &str = "203.0.113.7";
const ATTACKER: &str = "198.51.100.9";

async fn sign_in_from(
    cluster: &Cluster,
    username: &str,
    password: &str,
    ip: &str,
) -> Result<(), tonic::Status> {
    cluster
        .gateway_client()
        .sign_in(SignInRequest {
            username: username.into(),
            password: password.into(),
            client_id: CLIENT_ID.into(),
            client_ip: ip.into(),
            offline_access: false,
        })
        .await
        .map(drop)
}

/// `attempts` different wrong passwords (`prefix` and a number) for `username` from
/// [`ATTACKER`], one after another: how many answers carried each code.
async fn spray(
    cluster: &Cluster,
    username: &str,
    prefix: &str,
    attempts: usize,
) -> std::collections::HashMap<ErrorCode, usize> {
    let mut codes = std::collections::HashMap::new();
    for n in 0..attempts {
        let status = sign_in_from(cluster, username, &format!("{prefix}{n}"), ATTACKER)
            .await
            .expect_err("a wrong password");
        *codes
            .entry(ErrorCode::of(&status).expect("a Passage code"))
            .or_insert(0) += 1;
    }
    codes
}

/// `attempts` different wrong passwords for `username` from [`ATTACKER`], all at once, spread
/// over `gateways`: how many answers carried each code.
async fn burst(
    gateways: &[passage_proto::v1::gateway_client::GatewayClient<tonic::transport::Channel>],
    username: &str,
    attempts: usize,
) -> std::collections::HashMap<ErrorCode, usize> {
    let mut burst = tokio::task::JoinSet::new();
    for n in 0..attempts {
        let mut client = gateways[n % gateways.len()].clone();
        let username = username.to_owned();
        burst.spawn(async move {
            let status = client
                .sign_in(SignInRequest {
                    username,
                    password: format!("Burst-{n}"),
                    client_id: CLIENT_ID.into(),
                    client_ip: ATTACKER.into(),
                    offline_access: false,
                })
                .await
                .expect_err("a wrong password");
            ErrorCode::of(&status).expect("a Passage code")
        });
    }
    let mut codes = std::collections::HashMap::new();
    while let Some(code) = burst.join_next().await {
        *codes.entry(code.unwrap()).or_insert(0) += 1;
    }
    codes
}

/// The ppolicy state slapd keeps for `dn`: (locked, failures recorded).
async fn directory_lockout(cluster: &Cluster, dn: &str) -> (bool, usize) {
    let (conn, mut ldap) = LdapConnAsync::new(&cluster.slapd.url())
        .await
        .expect("connect");
    tokio::spawn(async move { conn.drive().await });
    ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD)
        .await
        .unwrap()
        .success()
        .unwrap();
    let (entries, _) = ldap
        .search(
            dn,
            Scope::Base,
            "(objectClass=*)",
            ["pwdAccountLockedTime", "pwdFailureTime"],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let entry = SearchEntry::construct(entries.into_iter().next().expect("the user's entry"));
    (
        entry.attrs.contains_key("pwdAccountLockedTime"),
        entry.attrs.get("pwdFailureTime").map_or(0, Vec::len),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_never_locks_the_user_out_of_the_directory_nor_where_they_work() {
    let cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: "lockout = { threshold = 3, directory_threshold = 5 }\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let alice = default_users().remove(0);

    // Alice works from HOME: that network becomes familiar.
    sign_in_from(&cluster, &alice.upn, &alice.password, HOME)
        .await
        .expect("alice at home");

    // 200 wrong passwords from elsewhere. Of the four failures slapd takes without locking,
    // an unfamiliar network gets two.
    let wrong = "Attacker-Guess-7";
    let codes = spray(&cluster, &alice.upn, wrong, 200).await;
    assert_eq!(
        codes.get(&ErrorCode::InvalidCredentials),
        Some(&2),
        "{codes:?}"
    );
    assert_eq!(codes.get(&ErrorCode::SmartLockout), Some(&198), "{codes:?}");
    // The directory saw two failures, below its own threshold of five: not locked.
    let (locked, failures) = directory_lockout(&cluster, &alice.dn()).await;
    assert!(!locked, "the directory locked alice out");
    assert_eq!(failures, 2);

    // Alice still signs in where she works, during the attacker's lockout; the right password
    // from the attacker's network is refused like a wrong one.
    sign_in_from(&cluster, &alice.upn, &alice.password, HOME)
        .await
        .expect("alice at home during the lockout");
    let status = sign_in_from(&cluster, &alice.upn, &alice.password, ATTACKER)
        .await
        .expect_err("locked out there");
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::SmartLockout));

    // Every attempt is in the sign-in log, with its code, and no password is in the store.
    let store = Store::open(&cluster.store_url()).await.unwrap();
    let log = logged(&store, &alice.upn, 203).await;
    assert_eq!(log.len(), 203);
    let count = |outcome: &str, code: &str| {
        log.iter()
            .filter(|e| e.outcome == outcome && e.error_code == code)
            .count()
    };
    assert_eq!(count("success", ""), 2);
    assert_eq!(count("failure", "PSG50126"), 2);
    assert_eq!(count("failure", "PSG50059"), 199);
    // The first sign-in from HOME made it familiar; the one during the lockout was familiar.
    let successes: Vec<bool> = log
        .iter()
        .filter(|e| e.outcome == "success")
        .map(|e| e.familiar_location)
        .collect();
    assert_eq!(successes, vec![true, false], "newest first");
    assert!(log.iter().all(|e| e.client_id == CLIENT_ID));
    assert_eq!(log.iter().filter(|e| e.lockout == "locked").count(), 1);
    let bytes = cluster.sqlite_store_bytes();
    for secret in [alice.password.as_str(), wrong] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a password in the store"
        );
    }
    // `passage signins` shows the same.
    let (ok, listing, stderr) = run_to_end(
        "passage",
        &[
            "signins",
            "--store",
            &cluster.store_url(),
            "--user",
            &alice.upn,
            "--outcome",
            "success",
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.contains("\"familiar_location\":true"), "{listing}");

    // A cloud threshold at or above the directory's is refused at start.
    let config = std::fs::read_to_string(cluster.dir().join("gateway.toml")).unwrap();
    let refused = cluster.dir().join("gateway-refused.toml");
    std::fs::write(
        &refused,
        config.replace(
            "lockout = { threshold = 3, directory_threshold = 5 }",
            "lockout = { threshold = 5, directory_threshold = 5 }",
        ),
    )
    .unwrap();
    let (ok, _, stderr) = run_to_end("passage-gateway", &["--config", refused.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("lockout.threshold") && stderr.contains("at most 4"),
        "{stderr}"
    );
}

/// Sends `password` for `username` from [`ATTACKER`] (the directory frozen by the caller) and
/// kills the agent holding it once one does: the sign-in's answer, when it comes.
async fn sign_in_then_lose_its_agent(
    cluster: &mut Cluster,
    username: &str,
    password: &str,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<passage_proto::v1::SignInResponse>, tonic::Status>,
> {
    let mut client = cluster.gateway_client();
    let request = SignInRequest {
        username: username.into(),
        password: password.into(),
        client_id: CLIENT_ID.into(),
        client_ip: ATTACKER.into(),
        offline_access: false,
    };
    let attempt = tokio::spawn(async move { client.sign_in(request).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let holder = loop {
        if let Some(key) = cluster
            .offered_keys()
            .await
            .into_iter()
            .find(|k| k.in_flight > 0)
        {
            break key.agent_id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agent took the task"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let index = cluster
        .agents
        .iter()
        .position(|a| a.agent_id == holder)
        .expect("the holder is one of ours");
    cluster.agents.remove(index).process.kill();
    attempt
}

/// Waits (up to 30 s) until `username`'s counters in the store are as `expected` says.
async fn counters_when(
    store: &Store,
    username: &str,
    what: &str,
    expected: impl Fn(&passage_store::UserCounters) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let counters = store
            .lockout_state("default", &username.to_lowercase(), None, 0)
            .await
            .unwrap()
            .counters;
        if expected(&counters) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never true: {what}: {counters:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the cloud lockout of `username` in `scope` (if any) has ended.
async fn wait_out_lockout(store: &Store, username: &str, scope: passage_store::LockoutScope) {
    counters_when(store, username, "the lockout ended", |c| {
        passage_pki::unix_now() >= c.scope(scope).locked_until
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_at_once_or_across_cloud_lockouts_never_reach_the_directorys_threshold() {
    use passage_store::LockoutScope::{Familiar, Unfamiliar};
    // Short cloud lockouts, and the threshold left to what the agent reads from slapd (5,
    // failures remembered until a successful bind).
    let cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: "lockout = { lockout_duration_s = 1, max_lockout_duration_s = 1 }\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let store = Store::open(&cluster.store_url()).await.unwrap();
    let alice = default_users().remove(0);
    sign_in_from(&cluster, &alice.upn, &alice.password, HOME)
        .await
        .expect("alice at home");

    // Fifty wrong passwords at once from elsewhere: two reach the directory.
    let codes = burst(&[cluster.gateway_client()], &alice.upn, 50).await;
    assert_eq!(
        codes.get(&ErrorCode::InvalidCredentials),
        Some(&2),
        "{codes:?}"
    );
    assert_eq!(codes.get(&ErrorCode::SmartLockout), Some(&48), "{codes:?}");
    assert_eq!(directory_lockout(&cluster, &alice.dn()).await, (false, 2));

    // The cloud lockout ends after a second, but slapd still remembers both failures: the
    // attacker's network stays closed.
    wait_out_lockout(&store, &alice.upn, Unfamiliar).await;
    let codes = spray(&cluster, &alice.upn, "After-", 20).await;
    assert_eq!(codes.get(&ErrorCode::SmartLockout), Some(&20), "{codes:?}");
    assert_eq!(directory_lockout(&cluster, &alice.dn()).await, (false, 2));

    // Alice mistypes at home: with the attacker's two, slapd may hold four, so her second
    // failure closes her scope too, one short of slapd's threshold.
    for n in 0..2 {
        let status = sign_in_from(&cluster, &alice.upn, &format!("Typo-{n}"), HOME)
            .await
            .expect_err("a typo");
        assert_eq!(ErrorCode::of(&status), Some(ErrorCode::InvalidCredentials));
    }
    let status = sign_in_from(&cluster, &alice.upn, "Typo-2", HOME)
        .await
        .expect_err("refused");
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::SmartLockout));
    assert_eq!(directory_lockout(&cluster, &alice.dn()).await, (false, 4));

    // Her own lockout is short; then her password works, and slapd forgets every failure.
    wait_out_lockout(&store, &alice.upn, Familiar).await;
    sign_in_from(&cluster, &alice.upn, &alice.password, HOME)
        .await
        .expect("alice at home after her lockout");
    assert_eq!(directory_lockout(&cluster, &alice.dn()).await, (false, 0));
    // The success's counts are written just after the answer (nothing waits for them).
    counters_when(
        &store,
        &alice.upn,
        "the success started her counts again",
        |c| (c.familiar.failures, c.unfamiliar.failures) == (0, 0),
    )
    .await;

    // Bob fails four times at home: his own lockout, after which his own count starts again.
    // slapd still holds all four, so an attacker elsewhere gets nothing through.
    let bob = default_users().remove(1);
    sign_in_from(&cluster, &bob.upn, &bob.password, HOME)
        .await
        .expect("bob at home");
    for n in 0..4 {
        let status = sign_in_from(&cluster, &bob.upn, &format!("Bob-Typo-{n}"), HOME)
            .await
            .expect_err("a typo");
        assert_eq!(ErrorCode::of(&status), Some(ErrorCode::InvalidCredentials));
    }
    assert_eq!(directory_lockout(&cluster, &bob.dn()).await, (false, 4));
    wait_out_lockout(&store, &bob.upn, Familiar).await;
    let codes = spray(&cluster, &bob.upn, "Piggyback-", 5).await;
    assert_eq!(codes.get(&ErrorCode::SmartLockout), Some(&5), "{codes:?}");
    assert_eq!(directory_lockout(&cluster, &bob.dn()).await, (false, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_wrong_password_fifty_times_counts_once_and_reaches_the_directory_once() {
    let cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: "lockout = { threshold = 3, directory_threshold = 5 }\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let bob = default_users().remove(1);
    // A phone retrying an old password all night.
    for n in 0..50 {
        let status = sign_in_from(&cluster, &bob.upn, "Bobs-Old-Password-1", ATTACKER)
            .await
            .expect_err("a wrong password");
        assert_eq!(
            ErrorCode::of(&status),
            Some(ErrorCode::InvalidCredentials),
            "attempt {n}: {status:?}"
        );
    }
    let (locked, failures) = directory_lockout(&cluster, &bob.dn()).await;
    assert!(!locked);
    assert_eq!(failures, 1, "the directory saw the wrong password once");
    let store = Store::open(&cluster.store_url()).await.unwrap();
    let log = logged(&store, &bob.upn, 50).await;
    assert_eq!(log.len(), 50);
    assert_eq!(log.iter().filter(|e| e.lockout == "counted").count(), 1);
    assert_eq!(log.iter().filter(|e| e.lockout == "repeat").count(), 49);
    // The right password still works (it is not in the agent's memory of wrong ones).
    sign_in_from(&cluster, &bob.upn, &bob.password, ATTACKER)
        .await
        .expect("bob's own password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_threshold_configured_the_directorys_own_policy_keeps_the_account_unlocked() {
    // No lockout settings at all: the cloud threshold is the default 10, above slapd's
    // ppolicy `pwdMaxFailure: 5`. The agent reads that policy and reports it; the gateway
    // lets at most 4 failures stand in the directory, 2 of them from unfamiliar networks, and
    // says so.
    let cluster = Cluster::start_enrolled(ClusterOptions {
        ..ClusterOptions::default()
    })
    .await;
    let alice = default_users().remove(0);
    let agent_log = cluster.agents[0].process.log();
    let policy_line = agent_log
        .lines()
        .find(|l| l.contains("directory lockout policy read"))
        .unwrap_or_else(|| panic!("no policy line: {agent_log}"));
    assert!(
        policy_line.split_whitespace().any(|w| w == "threshold=5"),
        "{policy_line}"
    );

    let codes = spray(&cluster, &alice.upn, "Spray-", 200).await;
    assert_eq!(
        codes.get(&ErrorCode::InvalidCredentials),
        Some(&2),
        "{codes:?}"
    );
    assert_eq!(codes.get(&ErrorCode::SmartLockout), Some(&198), "{codes:?}");
    let (locked, failures) = directory_lockout(&cluster, &alice.dn()).await;
    assert!(!locked, "the directory locked alice out");
    assert_eq!(failures, 2);
    let gateway_log = cluster.gateway.process.log();
    let lowered: Vec<&str> = gateway_log
        .lines()
        .filter(|l| l.contains("smart lockout threshold lowered"))
        .collect();
    assert_eq!(lowered.len(), 1, "warned once: {gateway_log}");
    assert!(
        lowered[0].contains("configured=10")
            && lowered[0].contains("directory_threshold=5")
            && lowered[0].contains("familiar=4")
            && lowered[0].contains("unfamiliar=2"),
        "{}",
        lowered[0]
    );
    // Alice has never signed in, so no network is familiar for her yet: her own sign-in is in
    // the attacker's scope and waits out the cloud lockout, while her directory account stays
    // usable everywhere else.
    let status = sign_in_from(&cluster, &alice.upn, &alice.password, HOME)
        .await
        .expect_err("no familiar network yet: same scope as the attacker");
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::SmartLockout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_read_the_sign_in_log_over_grpc_with_their_token_only() {
    use passage_proto::v1::{ListSignInsRequest, gateway_admin_client::GatewayAdminClient};
    let (token, hash) = passage_gateway::admin::new_token().unwrap();
    let cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: format!("admin_token_sha256 = [\"{hash}\"]\n"),
        ..ClusterOptions::default()
    })
    .await;
    let alice = default_users().remove(0);
    sign_in_from(&cluster, &alice.upn, &alice.password, HOME)
        .await
        .expect("alice");
    sign_in_from(&cluster, &alice.upn, "Not-Her-Password-1", ATTACKER)
        .await
        .expect_err("wrong password");
    let store = Store::open(&cluster.store_url()).await.unwrap();
    assert_eq!(logged(&store, &alice.upn, 2).await.len(), 2);

    let mut admin = GatewayAdminClient::new(cluster.gateway_channel());
    let ask = |token: Option<&str>, request: ListSignInsRequest| {
        let mut request = tonic::Request::new(request);
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    let everything = ListSignInsRequest {
        username: alice.upn.clone(),
        ..ListSignInsRequest::default()
    };
    // No token, someone else's token, the hash itself: refused with the admin code.
    let (_, stranger) = passage_gateway::admin::new_token().unwrap();
    for refused in [None, Some(stranger.as_str()), Some(hash.as_str())] {
        let status = admin
            .list_sign_ins(ask(refused, everything.clone()))
            .await
            .expect_err("refused");
        assert_eq!(
            ErrorCode::of(&status),
            Some(ErrorCode::AdminNotAuthorised),
            "{status:?}"
        );
    }
    // With the token: both attempts, newest first, with their codes.
    let records = admin
        .list_sign_ins(ask(Some(&token), everything.clone()))
        .await
        .expect("listed")
        .into_inner()
        .sign_ins;
    let summary: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.outcome.as_str(),
                r.error_code.as_str(),
                r.client_ip.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("failure", "PSG50126", ATTACKER), ("success", "", HOME)]
    );
    assert!(
        records
            .iter()
            .all(|r| r.tenant == "default" && r.client_id == CLIENT_ID)
    );
    assert_eq!(records[1].upn, alice.upn);
    // Filters apply; a limit over the maximum is a clear error.
    let failures = admin
        .list_sign_ins(ask(
            Some(&token),
            ListSignInsRequest {
                outcome: "failure".into(),
                ..everything.clone()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .sign_ins;
    assert_eq!(failures.len(), 1);
    let status = admin
        .list_sign_ins(ask(
            Some(&token),
            ListSignInsRequest {
                limit: 10_001,
                ..everything.clone()
            },
        ))
        .await
        .expect_err("too many");
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::InvalidRequest));

    // The CLI does the same with a token file.
    let token_file = cluster.dir().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let ca_file = cluster.services_ca_file();
    let (ok, listing, stderr) = run_to_end(
        "passage",
        &[
            "admin",
            "signins",
            "--gateway",
            &cluster.gateway.grpc_url,
            "--token-file",
            token_file.to_str().unwrap(),
            "--ca-file",
            ca_file.to_str().unwrap(),
            "--user",
            &alice.upn,
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.contains("\"error_code\":\"PSG50126\""), "{listing}");
    // The token never reaches the gateway's log.
    assert!(!cluster.gateway.process.log().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_replicas_on_one_postgresql_store_count_together() {
    use passage_proto::v1::gateway_client::GatewayClient;
    let cluster = Cluster::start_enrolled(ClusterOptions {
        postgres: true,
        gateway_config: "lockout = { threshold = 3, directory_threshold = 5 }\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let (mut replica, channel) = cluster.start_gateway_replica("gateway-replica").await;
    let replicas = [cluster.gateway_client(), GatewayClient::new(channel)];
    let bob = default_users().remove(1);
    // Wrong passwords from one address, alternating between the replicas: the second locks the
    // user out on both, whichever replica counted which failure.
    let mut codes = Vec::new();
    for n in 0..8 {
        let status = replicas[n % 2]
            .clone()
            .sign_in(SignInRequest {
                username: bob.upn.clone(),
                password: format!("Guess-{n}"),
                client_id: CLIENT_ID.into(),
                client_ip: ATTACKER.into(),
                offline_access: false,
            })
            .await
            .expect_err("a wrong password");
        codes.push(ErrorCode::of(&status).expect("a Passage code"));
    }
    assert_eq!(
        codes,
        [
            vec![ErrorCode::InvalidCredentials; 2],
            vec![ErrorCode::SmartLockout; 6]
        ]
        .concat()
    );
    let (locked, failures) = directory_lockout(&cluster, &bob.dn()).await;
    assert!(!locked);
    assert_eq!(
        failures, 2,
        "the directory saw exactly the counted failures"
    );
    // Both replicas logged their attempts into the one store.
    let store = Store::open(&cluster.store_url()).await.unwrap();
    let log = logged(&store, &bob.upn, 8).await;
    assert_eq!(log.len(), 8);
    assert_eq!(log.iter().filter(|e| e.error_code == "PSG50059").count(), 6);

    // Forty at once, split between the replicas: still two reach the directory.
    let carol = default_users().remove(0);
    let codes = burst(&replicas, &carol.upn, 40).await;
    assert_eq!(
        codes.get(&ErrorCode::InvalidCredentials),
        Some(&2),
        "two of forty concurrent attempts reached the directory: {codes:?}"
    );
    assert_eq!(codes.get(&ErrorCode::SmartLockout), Some(&38), "{codes:?}");
    let (locked, failures) = directory_lockout(&cluster, &carol.dn()).await;
    assert!(!locked);
    assert_eq!(failures, 2);

    // A replica that stops writes the attempts it answered to the log first: one more
    // through it, stopped at once, and the store holds it without waiting.
    replicas[1]
        .clone()
        .sign_in(SignInRequest {
            username: bob.upn.clone(),
            password: "Guess-last".into(),
            client_id: CLIENT_ID.into(),
            client_ip: ATTACKER.into(),
            offline_access: false,
        })
        .await
        .expect_err("still locked out");
    assert!(
        replica
            .process
            .terminate(std::time::Duration::from_secs(20)),
        "the replica stopped cleanly"
    );
    let bob_log = store
        .signins(&passage_store::SigninFilter {
            username: Some(bob.upn.clone()),
            ..passage_store::SigninFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        bob_log.len(),
        9,
        "the stopped replica's last attempt is in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_lost_after_it_had_the_password_counts_as_a_possible_bind() {
    let mut cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: "lockout = { threshold = 3, directory_threshold = 9 }\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    cluster.enrol_agent().await;
    cluster.wait_for_agents(|ids| ids.len() == 2).await;
    let alice = default_users().remove(0);

    // Freeze the directory, send one wrong password, and kill the agent holding it: the
    // dispatcher retries on the other agent, and the first bind may still reach the directory.
    cluster.slapd.pause();
    let attempt = sign_in_then_lose_its_agent(&mut cluster, &alice.upn, "Wrong-Once-1").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !cluster
        .dispatcher
        .process
        .log()
        .contains("agent stream lost mid-request")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the loss went unnoticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cluster.slapd.resume();
    let status = attempt
        .await
        .unwrap()
        .expect_err("a wrong password, answered by the survivor");
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::InvalidCredentials));

    // Two possible binds for one attempt: both counted, so the cloud's count is never below
    // the directory's.
    let store = Store::open(&cluster.store_url()).await.unwrap();
    let counters = store
        .lockout_state("default", &alice.upn.to_lowercase(), None, 0)
        .await
        .unwrap()
        .counters;
    assert_eq!(counters.unfamiliar.failures, 2);
    let (locked, failures) = directory_lockout(&cluster, &alice.dn()).await;
    assert!(!locked);
    assert!(
        (1..=2).contains(&failures),
        "the directory saw {failures} failures; the gateway counted 2"
    );
    let log = logged(&store, &alice.upn, 1).await;
    assert_eq!(log[0].lockout, "counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_its_caller_abandons_is_still_counted() {
    let cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: "lockout = { threshold = 3, directory_threshold = 5 }\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    let alice = default_users().remove(0);
    // The directory is frozen; the caller gives up after 300 ms, long before it answers.
    cluster.slapd.pause();
    let mut request = tonic::Request::new(SignInRequest {
        username: alice.upn.clone(),
        password: "Abandoned-Guess-1".into(),
        client_id: CLIENT_ID.into(),
        client_ip: ATTACKER.into(),
        offline_access: false,
    });
    request.set_timeout(std::time::Duration::from_millis(300));
    let status = cluster
        .gateway_client()
        .sign_in(request)
        .await
        .expect_err("the caller gave up");
    // tonic reports its own client-side deadline as a cancellation.
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    cluster.slapd.resume();
    // The sign-in went on without its caller: the wrong password reached slapd and is counted.
    let store = Store::open(&cluster.store_url()).await.unwrap();
    counters_when(
        &store,
        &alice.upn,
        "the abandoned attempt is counted",
        |c| c.unfamiliar.failures == 1 && c.unfamiliar.pending == 0,
    )
    .await;
    assert_eq!(directory_lockout(&cluster, &alice.dn()).await, (false, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_limit_a_lost_agents_password_goes_to_no_other() {
    let mut cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: "lockout = { threshold = 3, directory_threshold = 5 }\n".into(),
        ..ClusterOptions::default()
    })
    .await;
    cluster.enrol_agent().await;
    cluster.wait_for_agents(|ids| ids.len() == 2).await;
    let alice = default_users().remove(0);
    // One failure from elsewhere: the unfamiliar scope (2 of slapd's 5) has room for one more,
    // not for the two binds a failover would make.
    spray(&cluster, &alice.upn, "First-", 1).await;
    cluster.slapd.pause();
    let attempt = sign_in_then_lose_its_agent(&mut cluster, &alice.upn, "Second-Guess-2").await;
    let status = attempt.await.unwrap().expect_err("not retried elsewhere");
    cluster.slapd.resume();
    assert_eq!(
        ErrorCode::of(&status),
        Some(ErrorCode::AgentLost),
        "{status:?}"
    );
    assert!(
        cluster
            .dispatcher
            .process
            .log()
            .contains("not trying the other candidate (single bind)")
    );
    // The lost agent may have bound: counted, and the scope is now at its limit.
    let store = Store::open(&cluster.store_url()).await.unwrap();
    let counters = store
        .lockout_state("default", &alice.upn.to_lowercase(), None, 0)
        .await
        .unwrap()
        .counters;
    assert_eq!(counters.unfamiliar.failures, 2);
    let (locked, failures) = directory_lockout(&cluster, &alice.dn()).await;
    assert!(!locked);
    assert!(failures <= 2, "slapd saw {failures}");
}

//! The whole sign-in path with real processes: client → gateway → dispatcher → agent → slapd.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use passage_error_codes::ErrorCode;
use passage_proto::v1::SignInRequest;
use passage_tests::{
    Cluster, ClusterOptions, TestUser,
    cluster::CLIENT_ID,
    slapd::{DOMAIN, default_users},
};
use tonic::Code;

fn alice() -> passage_tests::TestUser {
    default_users().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_password_yields_a_token_that_verifies_against_the_served_jwks() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = alice();
    let response = cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("alice signs in");
    assert_eq!(response.token_type, "Bearer");
    assert!(response.expires_in > 0);

    let jwks = passage_gateway::client::fetch_jwks(&cluster.gateway.issuer, None)
        .await
        .expect("JWKS");
    for (token, typ) in [
        (&response.id_token, passage_tokens::TokenType::Id),
        (&response.access_token, passage_tokens::TokenType::Access),
    ] {
        let claims =
            passage_tokens::verify_token(token, typ, &jwks, &cluster.gateway.issuer, CLIENT_ID)
                .expect("token verifies");
        assert_eq!(claims.iss, cluster.gateway.issuer);
        assert_eq!(claims.aud, CLIENT_ID);
        assert_eq!(claims.upn, alice.upn);
        assert_eq!(claims.name, alice.display_name);
        assert_eq!(claims.email, alice.mail);
        assert_eq!(claims.tid, "default");
        assert_eq!(
            claims.groups,
            vec!["admins".to_string(), "staff".to_string()]
        );
        // entryUUID from slapd: a UUID, not the DN fallback.
        assert_eq!(
            claims.sub.len(),
            36,
            "sub should be entryUUID, got {}",
            claims.sub
        );
        assert!(claims.exp > claims.iat);
        assert!(!claims.jti.is_empty());
    }
    // A token for another audience does not verify as ours.
    assert!(
        passage_tokens::verify_id_token(
            &response.id_token,
            &jwks,
            &cluster.gateway.issuer,
            "other-app"
        )
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = alice();
    let wrong = cluster
        .sign_in(&alice.upn, "not-her-password")
        .await
        .unwrap_err();
    let unknown = cluster
        .sign_in(&format!("nobody@{DOMAIN}"), "whatever-1")
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::of(&wrong),
        Some(ErrorCode::InvalidCredentials),
        "{wrong:?}"
    );
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.code(), unknown.code());
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(ErrorCode::of(&wrong), ErrorCode::of(&unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_password_is_refused_before_any_directory_bind() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = alice();
    let status = cluster.sign_in(&alice.upn, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(ErrorCode::of(&status), Some(ErrorCode::InvalidRequest));
    assert!(
        status.message().contains("password"),
        "{}",
        status.message()
    );

    // A real sign-in afterwards proves the log is being written, then count binds.
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("alice signs in");
    assert_eq!(
        cluster.slapd.binds_as(&alice.dn()),
        1,
        "exactly the one real bind:\n{}",
        cluster.slapd.log()
    );
    assert_eq!(
        cluster.slapd.binds_as(""),
        0,
        "no anonymous bind ever reached slapd"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_fields_are_invalid_argument() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = alice();
    let mut client = cluster.gateway_client();
    let base = SignInRequest {
        username: alice.upn.clone(),
        password: alice.password.clone(),
        client_id: CLIENT_ID.into(),
        client_ip: String::new(),
        offline_access: false,
    };
    let cases = [
        SignInRequest {
            username: format!("{}@{DOMAIN}", "a".repeat(300)),
            ..base.clone()
        },
        SignInRequest {
            password: "p".repeat(2000),
            ..base.clone()
        },
        SignInRequest {
            password: "line\nbreak".into(),
            ..base.clone()
        },
        SignInRequest {
            username: "alice@".into(),
            ..base.clone()
        },
        SignInRequest {
            username: "CORP\\".into(),
            ..base.clone()
        },
        SignInRequest {
            client_id: String::new(),
            ..base.clone()
        },
        SignInRequest {
            client_ip: "not-an-ip".into(),
            ..base.clone()
        },
        SignInRequest {
            client_id: "x\u{7}".into(),
            ..base.clone()
        },
    ];
    for request in cases {
        let status = client.sign_in(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // A bare name is well formed; with no default connector group, nobody serves it.
    let bare = client
        .sign_in(SignInRequest {
            username: "alice".into(),
            ..base.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::of(&bare),
        Some(ErrorCode::UnknownDomain),
        "{bare:?}"
    );
    let unknown_client = client
        .sign_in(SignInRequest {
            client_id: "unregistered".into(),
            ..base.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::of(&unknown_client),
        Some(ErrorCode::UnknownClient)
    );
    assert_eq!(
        cluster.slapd.binds_as(&alice.dn()),
        0,
        "nothing malformed reached the directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_filter_metacharacters_never_sign_anyone_in() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = alice();
    // Unescaped, `alic*` or `*` would match alice's entry and her password would bind.
    let names = [
        format!("*@{DOMAIN}"),
        format!("alic*@{DOMAIN}"),
        format!("alice)(uid=*@{DOMAIN}"),
        format!("*)(userPrincipalName=*@{DOMAIN}"),
        format!("alice\\2a@{DOMAIN}"),
        format!("alice\\@{DOMAIN}"),
        format!("(alice@{DOMAIN}"),
    ];
    for name in &names {
        let status = cluster.sign_in(name, &alice.password).await.unwrap_err();
        assert_eq!(
            ErrorCode::of(&status),
            Some(ErrorCode::InvalidCredentials),
            "{name}: {status:?}"
        );
    }
    let nul = cluster
        .sign_in(&format!("alice\0@{DOMAIN}"), &alice.password)
        .await
        .unwrap_err();
    assert_eq!(nul.code(), Code::InvalidArgument, "{nul:?}");
    assert_eq!(
        cluster.slapd.binds_as(&alice.dn()),
        0,
        "no metacharacter name resolved to alice"
    );
    // And alice herself still signs in.
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("alice signs in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_login_id_mail_signs_in() {
    let cluster = Cluster::start(ClusterOptions {
        login_attribute: "mail".into(),
        ..ClusterOptions::default()
    })
    .await;
    let alice = alice();
    let response = cluster
        .sign_in(&alice.mail, &alice.password)
        .await
        .expect("sign-in by mail");
    let jwks = passage_gateway::client::fetch_jwks(&cluster.gateway.issuer, None)
        .await
        .unwrap();
    let claims = passage_tokens::verify_id_token(
        &response.id_token,
        &jwks,
        &cluster.gateway.issuer,
        CLIENT_ID,
    )
    .unwrap();
    assert_eq!(claims.upn, alice.upn, "the token names the user by UPN");
    assert_eq!(claims.email, alice.mail);
    // With mail as the login attribute, the UPN is not a login name.
    let by_upn = cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of(&by_upn), Some(ErrorCode::InvalidCredentials));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_connected_fails_fast_with_the_no_agent_code() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 0,
        ..ClusterOptions::default()
    })
    .await;
    let alice = alice();
    let started = Instant::now();
    let status = cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::of(&status),
        Some(ErrorCode::NoAgentAvailable),
        "{status:?}"
    );
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        started.elapsed() < cluster.options.validation_timeout,
        "answered within the deadline, took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_agents_mid_load_loses_no_sign_in() {
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 2,
        ..ClusterOptions::default()
    })
    .await;
    let alice = alice();
    let total = 200;
    let completed = Arc::new(AtomicUsize::new(0));
    let client = cluster.gateway_client();
    // At most 64 sign-ins in flight; the loop blocks on the semaphore, so by the time a third
    // have completed, the next ones are being sent while the kill happens.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    let mut victim = None;
    for _ in 0..total {
        let permit = Arc::clone(&in_flight).acquire_owned().await.unwrap();
        let mut client = client.clone();
        let done = Arc::clone(&completed);
        let request = SignInRequest {
            username: alice.upn.clone(),
            password: alice.password.clone(),
            client_id: CLIENT_ID.into(),
            client_ip: String::new(),
            offline_access: false,
        };
        tasks.spawn(async move {
            let result = client.sign_in(request).await;
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            result.map(|_| ())
        });
        if victim.is_none() && completed.load(Ordering::Relaxed) >= total / 3 {
            // Freeze the directory so both agents hold requests in flight, kill one of them,
            // then let the directory answer: the dead agent's requests must be retried on the
            // survivor, not lost.
            cluster.slapd.pause();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut agent = cluster.agents.remove(0);
            agent.process.kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
            cluster.slapd.resume();
            victim = Some(agent);
        }
    }
    // The semaphore makes the loop wait for completions, so a third complete before it ends.
    let victim = victim.expect("the agent was killed during the load");
    let mut failures = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Err(status) = result.expect("task") {
            failures.push(status);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} sign-ins failed: {:?}",
        failures.len(),
        failures.first()
    );
    let retried = cluster
        .dispatcher
        .process
        .log()
        .matches("agent stream lost mid-request")
        .count();
    assert!(
        retried > 0,
        "the killed agent had requests in flight that were retried"
    );
    // The survivor keeps serving, and the dispatcher no longer offers the dead agent.
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("sign-in after the kill");
    cluster
        .wait_for_agents(|ids| !ids.contains(&victim.agent_id) && ids.len() == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_down_is_reported_and_recovers_when_it_returns() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = alice();
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("works first");

    cluster.slapd.stop();
    let status = cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::of(&status),
        Some(ErrorCode::DirectoryUnavailable),
        "{status:?}"
    );
    assert_eq!(status.code(), Code::Unavailable);

    cluster.slapd.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cluster.sign_in(&alice.upn, &alice.password).await {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(
                    ErrorCode::of(&status),
                    Some(ErrorCode::DirectoryUnavailable),
                    "{status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("no recovery within 10 s: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_directory_said_stays_in_the_logs() {
    // A base DN that does not exist: the agent learns it from the directory, the caller only
    // that the directory is unavailable.
    let missing = "ou=nowhere,dc=corp,dc=example,dc=com";
    let cluster = Cluster::start(ClusterOptions {
        base_dn: Some(missing.into()),
        ..ClusterOptions::default()
    })
    .await;
    let alice = alice();
    let status = cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect_err("the directory cannot be searched");
    assert_eq!(
        ErrorCode::of(&status),
        Some(ErrorCode::DirectoryUnavailable)
    );
    let message = status.message().to_ascii_lowercase();
    for internal in ["ou=", "dc=", "nowhere", "agent-", "base dn", "rc="] {
        assert!(!message.contains(internal), "{internal:?} in {message:?}");
    }
    assert_eq!(
        status.message(),
        ErrorCode::DirectoryUnavailable.public_status().message()
    );
    // The operator can still see why.
    let agent_log = cluster.agents[0].process.log();
    assert!(agent_log.contains(missing), "{agent_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_and_wrong_passwords_take_the_same_time() {
    // 100 users, each tried twice with a wrong password (the directory's own lockout, at 5
    // failures, never answers), and 200 users that do not exist, interleaved at random.
    let users: Vec<TestUser> = (0..100)
        .map(|i| {
            TestUser::new(
                &format!("timing{i:03}"),
                &format!("Timing-Pass-{i:03}!"),
                &["staff"],
            )
        })
        .collect();
    let warm = TestUser::new("warmup", "Warm-Up-Pass-1!", &["staff"]);
    let cluster = Cluster::start(ClusterOptions {
        users: users.iter().cloned().chain([warm.clone()]).collect(),
        slapd_stats_log: false,
        group_search: false,
        ..ClusterOptions::default()
    })
    .await;
    // Connections up, and the agent has seen what a failed bind costs here.
    cluster
        .sign_in(&warm.upn, &warm.password)
        .await
        .expect("warm-up sign-in");
    for _ in 0..2 {
        assert!(
            cluster
                .sign_in(&warm.upn, "Wrong-Warm-Up-1!")
                .await
                .is_err()
        );
    }
    let timing = passage_tests::timing::measure(&cluster.gateway_client(), &users).await;
    println!("{}", timing.summary());
    assert_eq!(timing.wrong_password.len() + timing.unknown_user.len(), 400);
    let rank = timing.rank_statistic();
    assert!(
        (0.35..=0.65).contains(&rank),
        "timing tells unknown users from wrong passwords: {}",
        timing.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_carries_the_directory_spelling_of_the_name() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = alice();
    // userPrincipalName matches case-insensitively, as in Active Directory.
    let typed = alice.upn.to_uppercase();
    let response = cluster
        .sign_in(&typed, &alice.password)
        .await
        .expect("sign-in with another casing");
    let jwks = passage_gateway::client::fetch_jwks(&cluster.gateway.issuer, None)
        .await
        .expect("JWKS");
    let claims = passage_tokens::verify_id_token(
        &response.id_token,
        &jwks,
        &cluster.gateway.issuer,
        CLIENT_ID,
    )
    .expect("ID token");
    assert_eq!(claims.upn, alice.upn);
    assert_ne!(claims.upn, typed);
}

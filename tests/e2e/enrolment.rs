//! Enrolment and certificate trust with real processes: one-time tokens, mutual TLS on the
//! agent stream, revocation.

use std::time::{Duration, Instant};

use passage_pki::{AgentIdentity, TenantCa, agent_csr};
use passage_tests::{
    Cluster, ClusterOptions, otlp::ReceivedSpan, slapd::DOMAIN, slapd::default_users,
};

fn secure() -> ClusterOptions {
    ClusterOptions {
        agents: 0,
        enrolment: true,
        ..ClusterOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_agent_serves_sign_ins_over_mutual_tls() {
    let mut cluster = Cluster::start(secure()).await;
    let agent_id = cluster.enrol_agent().await.agent_id.clone();
    assert!(agent_id.starts_with("agent-"), "{agent_id}");
    let alice = default_users().remove(0);
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("sign-in through the enrolled agent");

    // The key and certificate are kept private in the state directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = cluster.agent_state_dir(0).join("agent-key.der");
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // The listing shows the agent connected, once the dispatcher has reported its streams.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, listing, stderr) = cluster.agent_cli(&["list"]);
        assert!(ok, "{stderr}");
        assert!(
            listing.contains(&agent_id)
                && listing.contains(DOMAIN)
                && listing.contains("v2 x25519-mlkem768"),
            "{listing}"
        );
        if listing.contains(" connected") && listing.contains("s ago") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never listed as connected:\n{listing}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_expired_unknown_and_other_tenant_tokens_are_refused() {
    let cluster = Cluster::start(secure()).await;
    let token = cluster.create_token("default", DOMAIN, "1h");
    let (ok, _, stderr) = cluster.register_agent(0, "default", &token);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cluster.register_agent(1, "default", &token);
    assert!(!ok && stderr.contains("already used"), "reused: {stderr}");

    let short = cluster.create_token("default", DOMAIN, "1s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (ok, _, stderr) = cluster.register_agent(2, "default", &short);
    assert!(!ok && stderr.contains("expired"), "expired: {stderr}");

    let (ok, _, stderr) = cluster.register_agent(3, "default", "pet_not-a-real-token");
    assert!(
        !ok && stderr.contains("unknown enrolment token"),
        "unknown: {stderr}"
    );

    let acme = cluster.create_token("acme", DOMAIN, "1h");
    let (ok, _, stderr) = cluster.register_agent(4, "default", &acme);
    assert!(
        !ok && stderr.contains("another tenant"),
        "other tenant: {stderr}"
    );
    // ...and the token is still good for its own tenant.
    let (ok, stdout, stderr) = cluster.register_agent(5, "acme", &acme);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("tenant=acme"), "{stdout}");

    // Creating a token shows how to pass it without putting it on a command line.
    let (ok, stdout, stderr) = cluster.agent_cli(&[
        "token",
        "create",
        "--tenant",
        "default",
        "--connector-group",
        DOMAIN,
        "--ttl",
        "1h",
    ]);
    assert!(ok, "{stderr}");
    assert!(!stdout.trim().is_empty());
    assert!(
        stderr.contains("PASSAGE_ENROLMENT_TOKEN=<token> passage-agent register")
            && !stderr.contains("--token"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_without_a_valid_certificate_are_refused() {
    let mut cluster = Cluster::start(secure()).await;
    // 0: never enrolled — no client certificate at all.
    let _ = cluster.register_agent(0, "default", "pet_unused-so-that-the-config-exists");
    cluster.start_agent(0, false).await;

    // 1: enrolled, then its certificate replaced by one from a self-made CA for the same key
    // and the same identity.
    let token = cluster.create_token("default", DOMAIN, "1h");
    let (ok, _, stderr) = cluster.register_agent(1, "default", &token);
    assert!(ok, "{stderr}");
    let state = cluster.agent_state_dir(1);
    let key = std::fs::read(state.join("agent-key.der")).unwrap();
    let agent_id = std::fs::read_to_string(state.join("agent-id")).unwrap();
    let rogue = TenantCa::generate("default").unwrap();
    let forged = rogue
        .issue_agent(
            passage_pki::AgentCsr::parse(&agent_csr(&key, &agent_id, None).unwrap()).unwrap(),
            &AgentIdentity {
                tenant: "default".into(),
                connector_group: DOMAIN.into(),
                agent_id: agent_id.clone(),
            },
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(state.join("agent-cert.pem"), forged.cert_pem).unwrap();
    cluster.start_agent(1, false).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cluster.listed_agents().await.is_empty(),
        "no untrusted agent is offered"
    );
    let unenrolled = cluster.agents[0].process.log();
    assert!(
        unenrolled.contains("client certificate issued at enrolment is required"),
        "{unenrolled}"
    );
    let forged_log = cluster.agents[1].process.log();
    assert!(
        forged_log.contains("stream to dispatcher ended"),
        "{forged_log}"
    );
    let alice = default_users().remove(0);
    assert!(cluster.sign_in(&alice.upn, &alice.password).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_cuts_its_stream_at_once_and_sign_ins_fail_over() {
    let mut cluster = Cluster::start(secure()).await;
    let first = cluster.enrol_agent().await.agent_id.clone();
    let second = cluster.enrol_agent().await.agent_id.clone();
    let alice = default_users().remove(0);
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("before revocation");

    let (ok, stdout, stderr) = cluster.agent_cli(&["revoke", &first]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("revoked"), "{stdout}");
    let revoked_at = Instant::now();
    cluster.wait_for_agents(|ids| !ids.contains(&first)).await;
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1500),
        "stream cut after {:?}",
        revoked_at.elapsed()
    );
    for _ in 0..20 {
        cluster
            .sign_in(&alice.upn, &alice.password)
            .await
            .expect("sign-ins go to the other agent");
    }
    // The revoked agent keeps trying and keeps being refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.listed_agents().await, vec![second.clone()]);
    let log = cluster.agents[0].process.log();
    assert!(log.contains("has been revoked"), "{log}");
    let (_, listing, hint) = cluster.agent_cli(&["list"]);
    assert!(listing.contains("revoked"), "{listing}");
    // It offers to forget the revoked agent, but not before every replica has cut it.
    assert!(
        hint.contains(&format!("passage agent forget {first}")),
        "{hint}"
    );
    let (ok, _, stderr) = cluster.agent_cli(&["forget", &first]);
    assert!(!ok && stderr.contains("revoked less than"), "{stderr}");
    let (ok, _, stderr) = cluster.agent_cli(&["forget", &second]);
    assert!(!ok && stderr.contains("not revoked"), "{stderr}");
}

/// Signs in (right, wrong and empty password) through two enrolled agents, then looks for the
/// passwords in every log, in the exported traces and in a dump of the store.
async fn no_password_is_stored_or_logged(postgres: bool) {
    let mut cluster = Cluster::start(ClusterOptions {
        postgres,
        trace_export: true,
        debug_logs: true,
        ..secure()
    })
    .await;
    let first = cluster.enrol_agent().await.agent_id.clone();
    cluster.enrol_agent().await;
    let alice = default_users().remove(0);
    let wrong = "Wrong-But-Distinctive-Pass-7";
    for _ in 0..5 {
        cluster
            .sign_in(&alice.upn, &alice.password)
            .await
            .expect("sign-in");
    }
    assert!(cluster.sign_in(&alice.upn, wrong).await.is_err());
    assert!(cluster.sign_in(&alice.upn, "").await.is_err());

    let store_bytes = match &cluster.postgres {
        Some(server) => server.dump().into_bytes(),
        // The SQLite file and its write-ahead log, as bytes.
        None => cluster.sqlite_store_bytes(),
    };
    let store_dump = String::from_utf8_lossy(&store_bytes).into_owned();
    assert!(
        store_dump.contains(&first),
        "the dump holds the store's data"
    );
    // No private key either: the tenant CA's key is encrypted with the key-encryption key. A
    // PKCS#8 EC key starts with version 0 and the ecPublicKey algorithm; a certificate's
    // public key carries the same algorithm without that prefix.
    const PKCS8_EC_PREFIX: &[u8] = &[
        0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    ];
    let hex: String = PKCS8_EC_PREFIX.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!store_dump.contains(&hex), "a PKCS#8 key in the dump (hex)");
    assert!(
        !store_bytes
            .windows(PKCS8_EC_PREFIX.len())
            .any(|w| w == PKCS8_EC_PREFIX),
        "a PKCS#8 key in the dump"
    );
    // Six sign-ins reach an agent (the empty password is refused at the gateway).
    let collector = cluster.collector.as_ref().expect("trace export is on");
    let count = |spans: &[ReceivedSpan], service: &str, name: &str| {
        spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .count()
    };
    let spans = collector
        .wait_for(Duration::from_secs(15), |spans| {
            count(spans, "passage-gateway", "sign_in") >= 6
                && count(spans, "passage-dispatcher", "dispatch") >= 6
                && count(spans, "passage-agent", "authenticate") >= 6
        })
        .await;
    assert_eq!(count(&spans, "passage-gateway", "sign_in"), 6);
    assert_eq!(count(&spans, "passage-dispatcher", "dispatch"), 6);
    assert_eq!(count(&spans, "passage-agent", "authenticate"), 6);
    let mut places = vec![
        ("store dump", store_dump.clone()),
        ("trace export", collector.dump()),
        ("gateway output", cluster.gateway.process.output()),
        ("dispatcher output", cluster.dispatcher.process.output()),
    ];
    for (index, agent) in cluster.agents.iter().enumerate() {
        places.push((
            if index == 0 {
                "agent 0 output"
            } else {
                "agent 1 output"
            },
            agent.process.output(),
        ));
    }
    // The dispatcher relays sealed answers: no DN, mail or group of the user reaches its log,
    // its spans, or the store.
    let dispatcher_spans = format!(
        "{:?}",
        spans
            .iter()
            .filter(|s| s.service == "passage-dispatcher")
            .map(|s| &s.attributes)
            .collect::<Vec<_>>()
    );
    for (place, text) in [
        ("dispatcher output", cluster.dispatcher.process.output()),
        ("dispatcher spans", dispatcher_spans),
        ("store dump", store_dump.clone()),
    ] {
        for attribute in [
            alice.dn(),
            alice.mail.clone(),
            alice.display_name.clone(),
            "admins".into(),
        ] {
            assert!(!text.contains(&attribute), "{place} holds {attribute:?}");
        }
    }
    let store_key = std::fs::read_to_string(cluster.store_key_file()).unwrap();
    for (place, text) in &places {
        for secret in [alice.password.as_str(), wrong, store_key.trim()] {
            assert!(!text.contains(secret), "{place} contains a secret");
        }
    }
    // The processes really logged at debug level.
    assert!(
        places.iter().any(|(_, text)| text.contains("DEBUG")),
        "no debug output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_logs_or_the_sqlite_store() {
    no_password_is_stored_or_logged(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_logs_or_the_postgres_store() {
    no_password_is_stored_or_logged(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrols_and_connects_through_an_http_connect_proxy() {
    let proxy = passage_tests::proxy::ConnectProxy::start().await;
    let mut cluster = Cluster::start(secure()).await;
    cluster.agent_proxy = Some(proxy.url.clone());
    cluster.enrol_agent().await;
    let alice = default_users().remove(0);
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("sign-in through the proxied agent");
    let dispatcher = cluster
        .dispatcher
        .agent_url
        .trim_start_matches("https://")
        .to_owned();
    let targets = proxy.targets();
    assert!(
        targets.len() >= 2 && targets.iter().all(|t| *t == dispatcher),
        "register and the stream both went through the proxy to {dispatcher}: {targets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_another_tenant_never_serves_this_tenant() {
    let mut cluster = Cluster::start(secure()).await;
    // acme is created after the dispatcher started: it trusts acme's agents from their
    // enrolment on, without a restart.
    let acme_agent = cluster
        .enrol_agent_for("acme", false)
        .await
        .agent_id
        .clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = cluster.agents[0].process.log();
    assert!(
        log.contains("connected to dispatcher"),
        "acme's agent is connected:\n{log}"
    );

    // Same connector group name, other tenant: the default tenant's gateway finds no agent.
    assert!(!cluster.listed_agents().await.contains(&acme_agent));
    let alice = default_users().remove(0);
    let status = cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .unwrap_err();
    assert_eq!(
        passage_error_codes::ErrorCode::of(&status),
        Some(passage_error_codes::ErrorCode::NoAgentAvailable),
        "{status:?}"
    );
    // With one of its own, the default tenant signs in again.
    cluster.enrol_agent().await;
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("default tenant's own agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_over_the_live_stream_under_load_without_a_failed_sign_in() {
    let mut cluster = Cluster::start(ClusterOptions {
        certificate_lifetime_s: Some(6),
        ..secure()
    })
    .await;
    cluster.enrol_agent().await;
    cluster.enrol_agent().await;
    let keys_before: Vec<Vec<u8>> = (0..2)
        .map(|i| std::fs::read(cluster.agent_state_dir(i).join("agent-key.der")).unwrap())
        .collect();

    // Sign in continuously, 8 at a time, for longer than a certificate lives.
    let alice = default_users().remove(0);
    let client = cluster.gateway_client();
    let stop_at = Instant::now() + Duration::from_secs(9);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = client.clone();
        let (username, password) = (alice.upn.clone(), alice.password.clone());
        workers.spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while Instant::now() < stop_at {
                let request = passage_proto::v1::SignInRequest {
                    username: username.clone(),
                    password: password.clone(),
                    client_id: passage_tests::cluster::CLIENT_ID.into(),
                    client_ip: String::new(),
                    offline_access: false,
                };
                match client.sign_in(request).await {
                    Ok(_) => ok += 1,
                    Err(status) => failed.push(status),
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(result) = workers.join_next().await {
        let (o, mut f) = result.unwrap();
        ok += o;
        failed.append(&mut f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} sign-ins failed during renewal: {:?}",
        failed.len(),
        ok + failed.len(),
        failed.first()
    );
    assert!(ok > 50, "the load ran ({ok} sign-ins)");

    // Both agents renewed, with new key pairs, one at a time, and still serve.
    for (i, before) in keys_before.iter().enumerate() {
        let log = cluster.agents[i].process.log();
        assert!(
            log.contains("certificate renewed with a new key pair"),
            "agent {i} did not renew:\n{log}"
        );
        let after = std::fs::read(cluster.agent_state_dir(i).join("agent-key.der")).unwrap();
        assert_ne!(&after, before, "agent {i} has a new key");
    }
    assert_eq!(cluster.listed_agents().await.len(), 2);
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("after renewal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_tenant_ca_issues_the_agents_certificates() {
    use passage_tests::bins::run_to_end;
    let mut cluster = Cluster::start(secure()).await;
    let store = cluster.store_url();
    let ca = TenantCa::generate("imported").unwrap();
    let dir = cluster.dir().to_path_buf();
    std::fs::write(dir.join("imported-ca.pem"), ca.cert_pem()).unwrap();
    let key_pem = rcgen::KeyPair::try_from(ca.key_der().expose())
        .unwrap()
        .serialize_pem();
    let key_path = dir.join("imported-ca-key.pem");
    std::fs::write(&key_path, &key_pem).unwrap();
    let store_key = cluster.store_key_file();
    let import_with = |tenant: &str, key: &std::path::Path, store_key: Option<&str>| {
        let mut args = vec!["tenant", "--store", &store];
        if let Some(store_key) = store_key {
            args.extend(["--store-encryption-key-file", store_key]);
        }
        let key = key.to_str().unwrap().to_owned();
        let cert = dir.join("imported-ca.pem").to_str().unwrap().to_owned();
        args.extend([
            "import-ca",
            "--tenant",
            tenant,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
        ]);
        run_to_end("passage", &args)
    };
    let import = |tenant: &str, key: &std::path::Path| import_with(tenant, key, Some(&store_key));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = dir.join("loose-key.pem");
        std::fs::write(&loose, &key_pem).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (ok, _, stderr) = import("imported", &loose);
        assert!(
            !ok && stderr.contains("chmod 600"),
            "a readable key is refused: {stderr}"
        );
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Without the store's key-encryption key, no CA key is written.
    let (ok, _, stderr) = import_with("imported", &key_path, None);
    assert!(
        !ok && stderr.contains("store_encryption_key_file"),
        "imported without the key-encryption key: {stderr}"
    );
    let (ok, _, stderr) = import("imported", &key_path);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = import("imported", &key_path);
    assert!(!ok && stderr.contains("already has a CA"), "{stderr}");

    // No restart: the running dispatcher trusts the imported tenant from its first enrolment.
    cluster.enrol_agent_for("imported", false).await;
    let issued_by =
        std::fs::read_to_string(cluster.agent_state_dir(0).join("tenant-ca.pem")).unwrap();
    assert_eq!(issued_by, ca.cert_pem());
    let (ok, printed, _) = run_to_end(
        "passage",
        &["tenant", "--store", &store, "ca", "--tenant", "imported"],
    );
    assert!(ok);
    assert_eq!(printed, ca.cert_pem());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.agents[0]
        .process
        .log()
        .contains("connected to dispatcher")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            cluster.agents[0].process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_an_expired_certificate_says_it_must_enrol_again() {
    let cluster = Cluster::start(ClusterOptions {
        certificate_lifetime_s: Some(2),
        ..secure()
    })
    .await;
    let token = cluster.create_token("default", DOMAIN, "1h");
    let (ok, _, stderr) = cluster.register_agent(0, "default", &token);
    assert!(ok, "{stderr}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let config = cluster.dir().join("agent-0.toml");
    let (ok, _, stderr) = passage_tests::bins::run_to_end(
        "passage-agent",
        &["run", "--config", config.to_str().unwrap()],
    );
    assert!(!ok, "an expired agent does not run");
    assert!(
        stderr.contains("certificate expired") && stderr.contains("passage-agent register"),
        "{stderr}"
    );
}

//! The trust model, tried as an attacker would: copied agent state after a renewal and a
//! revocation, enrolment tokens that must not be burnt, gateways acting for other tenants, and
//! configurations that would quietly drop protection.

use std::time::{Duration, Instant};

use passage_error_codes::ErrorCode;
use passage_proto::v1::{EnrolRequest, ListAgentKeysRequest, SealedPassword, ValidateRequest};
use passage_tests::{
    Cluster, ClusterOptions,
    bins::run_to_end,
    slapd::{DOMAIN, default_users},
};

fn secure() -> ClusterOptions {
    ClusterOptions {
        agents: 0,
        enrolment: true,
        ..ClusterOptions::default()
    }
}

/// Waits up to `limit` for `done`, polling every 100 ms.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
    }
}

/// The dispatcher refused the connection at the TLS handshake: the call failed in the
/// transport, and no Passage status came back (so no call was served). Depending on when the
/// client learns of it (TLS 1.3 checks the client certificate after the client's handshake
/// ends), that is a fatal alert or a closed connection.
fn assert_refused_at_the_handshake(err: &tonic::Status) {
    use std::error::Error as _;
    let transport = err
        .source()
        .is_some_and(|source| source.downcast_ref::<tonic::transport::Error>().is_some());
    assert!(transport, "not a transport failure: {err:?}");
    assert_eq!(ErrorCode::of(err), None, "{err:?}");
}

/// The public keys the dispatcher offers for the default tenant's group.
async fn offered_keys(cluster: &Cluster) -> Vec<Vec<u8>> {
    cluster
        .offered_keys()
        .await
        .into_iter()
        .map(|k| k.public_key_der)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_an_agent_taken_before_a_renewal_is_refused_and_revocation_refuses_everything() {
    let mut cluster = Cluster::start(ClusterOptions {
        // Long enough that the copies' certificates are still valid when they start (an
        // expired one is refused by the agent itself), short enough to renew within seconds.
        certificate_lifetime_s: Some(9),
        certificate_switchover_s: Some(1),
        ..secure()
    })
    .await;
    cluster.enrol_agent().await;
    let agent_id = cluster.agents[0].agent_id.clone();
    // An attacker copies the agent's state directory: key, certificate, id.
    let copy = cluster.dir().join("stolen-agent-state");
    copy_dir(&cluster.agent_state_dir(0), &copy);
    let stolen_cert = std::fs::read(copy.join("agent-cert.pem")).unwrap();

    // The agent renews (new key pair, new certificate) and goes on serving.
    until(Duration::from_secs(20), "a renewal", || {
        cluster.agents[0]
            .process
            .log()
            .contains("certificate renewed with a new key pair")
    })
    .await;
    assert_ne!(
        std::fs::read(cluster.agent_state_dir(0).join("agent-cert.pem")).unwrap(),
        stolen_cert
    );
    // A second thief copies the state now: the renewed, current key and certificate.
    let current_copy = cluster.dir().join("stolen-after-renewal");
    copy_dir(&cluster.agent_state_dir(0), &current_copy);
    let alice = default_users().remove(0);
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("the renewed agent serves");

    // The copy, started after the switch-over window, is refused: its certificate was
    // replaced. It says so plainly and does not hammer the dispatcher.
    std::fs::remove_dir_all(cluster.agent_state_dir(1)).ok();
    copy_dir(&copy, &cluster.agent_state_dir(1));
    cluster.agent_config(1);
    cluster.start_agent(1, false).await;
    until(Duration::from_secs(15), "the copy's refusal", || {
        cluster.agents[1]
            .process
            .log()
            .contains("retrying will not change that")
    })
    .await;
    let copy_log = cluster.agents[1].process.log();
    assert!(copy_log.contains("replaced by a renewal"), "{copy_log}");
    assert!(copy_log.contains("retry_in_s=600"), "{copy_log}");
    let copy_key = {
        use aws_lc_rs::{encoding::AsDer, rsa::PrivateDecryptingKey};
        let der = std::fs::read(copy.join("agent-key.der")).unwrap();
        PrivateDecryptingKey::from_pkcs8(&der)
            .unwrap()
            .public_key()
            .as_der()
            .unwrap()
            .as_ref()
            .to_vec()
    };
    assert!(!offered_keys(&cluster).await.contains(&copy_key));

    // Revocation refuses every certificate the agent ever had, the current one included.
    let (ok, _, stderr) = cluster.agent_cli(&["revoke", &agent_id]);
    assert!(ok, "{stderr}");
    cluster.wait_for_agents(|ids| ids.is_empty()).await;
    until(
        Duration::from_secs(15),
        "the revoked agent's refusal",
        || {
            cluster.agents[0]
                .process
                .log()
                .contains("retrying will not change that")
        },
    )
    .await;
    assert!(cluster.agents[0].process.log().contains("has been revoked"));
    let err = cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect_err("no agent left");
    assert_eq!(ErrorCode::of(&err), Some(ErrorCode::NoAgentAvailable));
    assert!(offered_keys(&cluster).await.is_empty());

    // The copy of the current certificate, started now, is refused as revoked: revocation
    // refuses every certificate the agent had, not only the old ones.
    copy_dir(&current_copy, &cluster.agent_state_dir(2));
    cluster.agent_config(2);
    cluster.start_agent(2, false).await;
    until(Duration::from_secs(15), "the second copy's refusal", || {
        cluster.agents[2]
            .process
            .log()
            .contains("retrying will not change that")
    })
    .await;
    assert!(cluster.agents[2].process.log().contains("has been revoked"));
    assert!(offered_keys(&cluster).await.is_empty());
    // Each refused agent said it once: it waits (600 s here) instead of reconnecting in a loop.
    for agent in &cluster.agents {
        let refusals = agent
            .process
            .log()
            .matches("retrying will not change that")
            .count();
        assert_eq!(refusals, 1, "{}", agent.process.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_csr_or_a_mismatched_group_leaves_the_token_usable() {
    let cluster = Cluster::start(secure()).await;
    let token = cluster.create_token("default", DOMAIN, "1h");
    let err = cluster
        .enrolment_client()
        .enrol(EnrolRequest {
            token: token.clone(),
            csr_der: b"not a certificate signing request".to_vec(),
            tenant: "default".into(),
            hostname: "attacker".into(),
            version: "0".into(),
            connector_group: String::new(),
        })
        .await
        .expect_err("a malformed CSR is refused");
    assert_eq!(ErrorCode::of(&err), Some(ErrorCode::InvalidRequest));

    // The agent is configured for another group than the token's: refused, saying both, and
    // the token is not spent.
    let other = cluster.create_token("default", "other.example.com", "1h");
    let (ok, _, stderr) = cluster.register_agent(0, "default", &other);
    assert!(!ok, "a group mismatch must fail register");
    assert!(
        stderr.contains("other.example.com")
            && stderr.contains(DOMAIN)
            && stderr.contains("--connector-group"),
        "{stderr}"
    );
    assert!(stderr.contains("still unused"), "{stderr}");
    let config = cluster.agent_config(1);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            &format!("connector_group = \"{DOMAIN}\""),
            "connector_group = \"other.example.com\"",
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = run_to_end(
        "passage-agent",
        &[
            "register",
            "--config",
            config.to_str().unwrap(),
            "--token",
            &other,
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("connector_group=other.example.com"),
        "{stdout}"
    );

    // The first token was not burnt by the malformed CSR either.
    let (ok, _, stderr) = cluster.register_agent(2, "default", &token);
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_acts_only_for_the_tenants_its_certificate_names() {
    let mut cluster = Cluster::start(secure()).await;
    cluster.enrol_agent().await;
    cluster.enrol_agent_for("acme", false).await;
    let acme_agent = cluster.agents[1].agent_id.clone();
    until(Duration::from_secs(15), "acme's agent to connect", || {
        cluster.agents[1]
            .process
            .log()
            .contains("connected to dispatcher")
    })
    .await;

    // The cluster's gateway certificate names only the default tenant.
    let mut api = cluster.dispatcher_api(Some("gateway-client"));
    let err = api
        .list_agent_keys(ListAgentKeysRequest {
            tenant: "acme".into(),
            connector_group: DOMAIN.into(),
        })
        .await
        .expect_err("another tenant's keys");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(ErrorCode::of(&err), Some(ErrorCode::GatewayNotPermitted));
    let err = api
        .validate(ValidateRequest {
            tenant: "acme".into(),
            connector_group: DOMAIN.into(),
            username: "alice@corp.example.com".into(),
            candidates: vec![SealedPassword {
                agent_id: acme_agent.clone(),
                ciphertext: vec![1; 300],
            }],
            trace: None,
            single_bind: false,
        })
        .await
        .expect_err("validating for another tenant");
    assert_eq!(ErrorCode::of(&err), Some(ErrorCode::GatewayNotPermitted));

    // A certificate naming acme may: the same calls pass the gate.
    cluster.issue_gateway_certificate("acme-gateway", &["acme"]);
    let keys = cluster
        .dispatcher_api(Some("acme-gateway"))
        .list_agent_keys(ListAgentKeysRequest {
            tenant: "acme".into(),
            connector_group: DOMAIN.into(),
        })
        .await
        .expect("acme's own gateway")
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].agent_id, acme_agent);
    let err = cluster
        .dispatcher_api(Some("acme-gateway"))
        .list_agent_keys(ListAgentKeysRequest {
            tenant: "default".into(),
            connector_group: DOMAIN.into(),
        })
        .await
        .expect_err("the acme gateway asking for default");
    assert_eq!(ErrorCode::of(&err), Some(ErrorCode::GatewayNotPermitted));

    // No client certificate at all: refused before any call is served.
    let err = cluster
        .dispatcher_api(None)
        .list_agent_keys(ListAgentKeysRequest {
            tenant: "default".into(),
            connector_group: DOMAIN.into(),
        })
        .await
        .expect_err("no client certificate");
    assert_refused_at_the_handshake(&err);
    // A server certificate from the same CA is no gateway certificate.
    let err = cluster
        .dispatcher_api(Some("gateway"))
        .list_agent_keys(ListAgentKeysRequest {
            tenant: "default".into(),
            connector_group: DOMAIN.into(),
        })
        .await
        .expect_err("a server certificate as client certificate");
    assert_refused_at_the_handshake(&err);

    // acme's agent never saw a task.
    assert!(
        !cluster.agents[1]
            .process
            .log()
            .contains("validation finished"),
        "{}",
        cluster.agents[1].process.log()
    );
    // The default tenant's sign-ins work throughout.
    let alice = default_users().remove(0);
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("sign-in for the gateway's own tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_that_would_drop_protection_are_refused_at_start() {
    let cluster = Cluster::start(secure()).await;
    let dir = cluster.dir();
    let config = std::fs::read_to_string(dir.join("dispatcher.toml")).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let start_dispatcher = |path: &str| {
        run_to_end(
            "passage-dispatcher",
            &[
                "--config",
                path,
                "--agent-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ],
        )
    };

    // A store, but gateways not authenticated: a password oracle for anyone on the network.
    let without_client_ca = write(
        "no-client-ca.toml",
        config
            .lines()
            .filter(|l| !l.starts_with("client_ca_file"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let (ok, _, stderr) = start_dispatcher(&without_client_ca);
    assert!(!ok && stderr.contains("client_ca_file"), "{stderr}");

    // A store, but no key-encryption key: tenant CA keys would sit in plaintext.
    let without_kek = write(
        "no-kek.toml",
        config
            .lines()
            .filter(|l| !l.starts_with("store_encryption_key_file"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let (ok, _, stderr) = start_dispatcher(&without_kek);
    assert!(
        !ok && stderr.contains("store_encryption_key_file"),
        "{stderr}"
    );

    // A gateway without a store would seal passwords to any key a dispatcher offers.
    let gateway = write(
        "gateway-no-store.toml",
        format!(
            "grpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             dispatcher_url = \"{}\"\nsigning_key_file = \"{}\"\n\
             tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
            cluster.dispatcher.api_url,
            dir.join("other-token-key.der").display(),
            dir.join("gateway.pem").display(),
            dir.join("gateway-key.pem").display(),
        ),
    );
    let (ok, _, stderr) = run_to_end("passage-gateway", &["--config", &gateway]);
    assert!(!ok && stderr.contains("store_url"), "{stderr}");
    // The running gateway said which trust mode it is in.
    assert!(
        cluster
            .gateway
            .process
            .log()
            .contains("trust mode: production"),
        "{}",
        cluster.gateway.process.log()
    );
}

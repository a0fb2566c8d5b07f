//! `passage demo`: the whole sign-in path in one process, against a built-in directory.

use std::{sync::Arc, time::Duration};

use passage_agent::AgentConfig;
use passage_credentials::Password;
use passage_directory::{DirectoryConfig, StaticConfig, static_file::hash_password};
use passage_dispatcher::DispatcherConfig;
use passage_gateway::{ClientRegistration, GatewayConfig};

/// The demo directory's domain, which is also its connector group.
const DOMAIN: &str = "demo.passage.dev";
/// The client id the demo signs in as.
const CLIENT_ID: &str = "passage-demo";
/// The sample web application's client id (a public client: PKCE).
const SAMPLE_APP_ID: &str = "sample-app";

/// Demo users: (name, password, state, display name). Printed at start; not real secrets.
const USERS: &[(&str, &str, &str, &str)] = &[
    (
        "alice",
        "correct-horse-battery-staple",
        "active",
        "Alice Example",
    ),
    ("bob", "Tr0ub4dor&3", "locked", "Bob Locked"),
    (
        "carol",
        "hunter2-but-longer",
        "password_expired",
        "Carol Expired",
    ),
];

fn users_file() -> String {
    let mut text = String::from("# Passage demo directory (generated at start).\n");
    for (name, password, state, display) in USERS {
        let hash = hash_password(
            &Password::new((*password).to_owned()).expect("demo passwords are valid"),
        );
        text.push_str(&format!(
            "\n[[users]]\nusername = \"{name}@{DOMAIN}\"\npassword_hash = \"{hash}\"\ndisplay_name = \"{display}\"\nmail = \"{name}@{DOMAIN}\"\ngroups = [\"demo-users\"]\nstate = \"{state}\"\n"
        ));
    }
    text
}

/// Runs the demo; with `signin`, signs in once as that user and returns.
pub async fn run(signin: Option<String>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let users_path = dir.path().join("users.toml");
    std::fs::write(&users_path, users_file()).map_err(|e| e.to_string())?;

    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let dispatcher = passage_dispatcher::bind(DispatcherConfig {
        agent_listen: loopback,
        api_listen: loopback,
        dispatcher_id: Some("demo-dispatcher".into()),
        insecure_plaintext: true,
        ..DispatcherConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let registry = dispatcher.registry();

    // The sample web application's address comes first: the gateway registers its redirect URI.
    let rp_listener = tokio::net::TcpListener::bind(loopback)
        .await
        .map_err(|e| format!("binding the sample application: {e}"))?;
    let rp_addr = rp_listener.local_addr().map_err(|e| e.to_string())?;
    let rp_url = format!("http://{}", crate::sample_rp::redirect_host(rp_addr));

    let mut gateway_config = GatewayConfig::development(
        format!("http://{}", dispatcher.api_addr()),
        dir.path().join("token-signing-key.der"),
    );
    gateway_config.grpc_listen = loopback;
    gateway_config.http_listen = loopback;
    // A store of its own (SQLite in the temporary directory) for the OpenID provider's codes,
    // refresh tokens and signing keys, smart lockout and the sign-in log.
    gateway_config.store_url = Some(format!(
        "sqlite://{}",
        dir.path().join("passage.db").display()
    ));
    gateway_config.clients = vec![
        ClientRegistration {
            id: CLIENT_ID.into(),
            name: "Passage demo".into(),
            ..ClientRegistration::default()
        },
        ClientRegistration {
            id: SAMPLE_APP_ID.into(),
            name: "Sample app".into(),
            redirect_uris: vec![format!("{rp_url}/callback")],
            post_logout_redirect_uris: vec![format!("{rp_url}/")],
            ..ClientRegistration::default()
        },
    ];
    let gateway = passage_gateway::bind(gateway_config)
        .await
        .map_err(|e| e.to_string())?;
    let gateway_url = format!("http://{}", gateway.grpc_addr());
    let issuer = gateway.issuer_url().to_owned();

    let agent_config = AgentConfig {
        dispatchers: vec![format!("http://{}", dispatcher.agent_addr())],
        tenant: "default".into(),
        connector_group: DOMAIN.into(),
        state_dir: dir.path().join("agent"),
        capacity: 64,
        rsa_bits: 2048,
        post_quantum_sealing: true,
        decrypt_threads: None,
        heartbeat_interval_ms: 5_000,
        dispatcher_resolve_interval_s: 30,
        dispatcher_name_servers: Vec::new(),
        replay_window_s: 300,
        tls: None,
        insecure_plaintext: true,
        proxy: None,
        health_listen: None,
        renew_check_interval_ms: 60_000,
        refused_retry_interval_s: 600,
        lockout_policy_refresh_s: 300,
        repeat_window_s: 900,
        directory: DirectoryConfig::Static(StaticConfig { path: users_path }),
    };
    let (state, validator) = passage_agent::prepare(&agent_config).map_err(|e| e.to_string())?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let dispatcher_task = tokio::spawn(dispatcher.run(stopped()));
    let gateway_task = tokio::spawn(gateway.run(stopped()));
    let rp_issuer = issuer.clone();
    let rp_task = tokio::spawn(async move {
        if let Err(err) =
            crate::sample_rp::serve(rp_listener, rp_issuer, SAMPLE_APP_ID.into()).await
        {
            eprintln!("the sample application stopped: {err}");
        }
    });
    let agent_task = tokio::spawn(passage_agent::run(
        agent_config,
        state,
        Arc::clone(&validator),
        stopped(),
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while registry.is_empty() {
        if tokio::time::Instant::now() > deadline {
            return Err("the demo agent did not connect within 15 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!("Passage demo: dispatcher, gateway and one agent are running in this process.");
    println!("  gateway gRPC   {gateway_url}   (Gateway.SignIn, health, reflection)");
    println!("  OIDC discovery {issuer}/.well-known/openid-configuration");
    println!("  JWKS           {issuer}/.well-known/jwks.json");
    println!(
        "  sample web app {rp_url}/   (open it in a browser: it signs in through Passage's page)"
    );
    println!("Demo directory ({DOMAIN}), client_id {CLIENT_ID}:");
    for (name, password, state, _) in USERS {
        let username = format!("{name}@{DOMAIN}");
        println!("  {username:<24} password {password:<30} ({state})");
    }

    let result = match signin {
        Some(user) => demo_sign_in(&gateway_url, &issuer, &user).await,
        None => {
            println!(
                "\nTry: passage signin --insecure-plaintext --gateway {gateway_url} --user alice@{DOMAIN} --client-id {CLIENT_ID} --issuer {issuer}"
            );
            println!("Serving until Ctrl-C.");
            passage_transport::shutdown_signal().await;
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    rp_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tokio::join!(dispatcher_task, gateway_task, agent_task);
    })
    .await;
    result
}

async fn demo_sign_in(gateway_url: &str, issuer: &str, user: &str) -> Result<(), String> {
    let username = if user.contains('@') {
        user.to_owned()
    } else {
        format!("{user}@{DOMAIN}")
    };
    let (_, password, _, _) = USERS
        .iter()
        .find(|(name, ..)| username.eq_ignore_ascii_case(&format!("{name}@{DOMAIN}")))
        .ok_or_else(|| format!("{username} is not a demo user"))?;
    let password = Password::new((*password).to_owned()).map_err(|e| e.to_string())?;
    println!("\nSigning in as {username} over gRPC ...");
    let gateway = crate::Gateway {
        url: gateway_url,
        ca_file: None,
        insecure_plaintext: true,
    };
    let response = crate::call_sign_in(&gateway, &username, &password, CLIENT_ID).await?;
    println!(
        "Signed in. token_type {}, expires_in {} s",
        response.token_type, response.expires_in
    );
    println!("access_token:\n{}", response.access_token);
    println!("id_token:\n{}", response.id_token);
    let claims = crate::verified_claims(issuer, None, CLIENT_ID, &response.id_token).await?;
    println!("ID token verified against {issuer}/.well-known/jwks.json; claims:\n{claims}");
    Ok(())
}

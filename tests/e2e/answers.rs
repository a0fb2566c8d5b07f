//! Answers only the agent could have made: a dispatcher that forges a success, replays an
//! earlier sign-in's answer, or swaps two concurrent sign-ins' answers gets no token issued —
//! the gateway opens each answer with the key it sealed for that agent and sign-in.

use passage_error_codes::ErrorCode;
use passage_tests::{
    Cluster, ClusterOptions,
    forging::{ForgingDispatcher, Lie},
    slapd::default_users,
};

/// A production deployment (enrolled agent, TLS on every hop, store) whose gateway calls a
/// lying dispatcher in front of the real one.
async fn cluster_behind(lie: Lie) -> (Cluster, ForgingDispatcher) {
    let mut cluster = Cluster::start_enrolled(ClusterOptions {
        ..ClusterOptions::default()
    })
    .await;
    let liar =
        ForgingDispatcher::start(&cluster.dispatcher.api_url, lie, Some(cluster.liar_tls())).await;
    cluster.restart_gateway_via(&liar.url).await;
    (cluster, liar)
}

fn assert_not_authentic(result: Result<passage_proto::v1::SignInResponse, tonic::Status>) {
    let status = result.expect_err("no token from a lying dispatcher");
    assert_eq!(
        ErrorCode::of(&status),
        Some(ErrorCode::AnswerNotAuthentic),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_success_gets_no_token() {
    let (cluster, _liar) = cluster_behind(Lie::ForgeSuccess).await;
    let alice = default_users().remove(0);
    assert_not_authentic(cluster.sign_in(&alice.upn, "not her password").await);
    assert_not_authentic(
        cluster
            .sign_in("mallory@corp.example.com", "anything")
            .await,
    );
    let log = cluster.gateway.process.log();
    assert!(
        log.contains("the dispatcher relayed an answer that is not authentic"),
        "{log}"
    );
    // The agent was never asked.
    assert!(
        !cluster.agents[0]
            .process
            .log()
            .contains("validation finished")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_answer_gets_no_token() {
    let (cluster, _liar) = cluster_behind(Lie::ReplayFirst).await;
    let users = default_users();
    let (alice, bob) = (&users[0], &users[1]);
    // The first answer is relayed truthfully: a real sign-in.
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("the truthful first answer");
    // Then alice's success is handed out again: for a wrong password, and for bob.
    assert_not_authentic(cluster.sign_in(&alice.upn, "a wrong password").await);
    assert_not_authentic(cluster.sign_in(&bob.upn, "a wrong password").await);
    assert_not_authentic(cluster.sign_in(&alice.upn, &alice.password).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_answers_get_no_token() {
    let (cluster, _liar) = cluster_behind(Lie::SwapPairs).await;
    let users = default_users();
    let (alice, bob) = (&users[0], &users[1]);
    // Bob's password is wrong: a swap would give him alice's success.
    let (for_alice, for_bob) = tokio::join!(
        cluster.sign_in(&alice.upn, &alice.password),
        cluster.sign_in(&bob.upn, "not bob's password"),
    );
    assert_not_authentic(for_alice);
    assert_not_authentic(for_bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleets_seal_each_agent_its_own_version_and_post_quantum_can_be_required() {
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 0,
        ..ClusterOptions::default()
    })
    .await;
    // Agent 0 has no hybrid key (RSA only, version 1); agent 1 has one (version 2).
    let config = cluster.agent_config(0);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("post_quantum_sealing = false\n{text}")).unwrap();
    let v1 = cluster.start_agent(0, true).await.agent_id.clone();
    let v2 = cluster.add_agent().await.agent_id.clone();
    let keys = cluster.offered_keys().await;
    let hybrid = |id: &str| {
        keys.iter()
            .find(|k| k.agent_id == id)
            .map(|k| !k.hybrid_public_key.is_empty())
            .expect("offered")
    };
    assert!(!hybrid(&v1) && hybrid(&v2));

    let served = |cluster: &Cluster, index: usize| {
        cluster.agents[index]
            .process
            .log()
            .matches("validation finished")
            .count()
    };
    let alice = default_users().remove(0);
    for _ in 0..20 {
        cluster
            .sign_in(&alice.upn, &alice.password)
            .await
            .expect("sign-in through either version");
    }
    assert!(served(&cluster, 0) > 0, "the RSA agent served nothing");
    assert!(served(&cluster, 1) > 0, "the hybrid agent served nothing");

    // Post-quantum required: only the hybrid agent is used, and the gateway names the other.
    cluster
        .restart_gateway(None, "require_post_quantum = true")
        .await;
    let before = (served(&cluster, 0), served(&cluster, 1));
    for _ in 0..10 {
        cluster
            .sign_in(&alice.upn, &alice.password)
            .await
            .expect("sign-in through the hybrid agent");
    }
    assert_eq!(served(&cluster, 0), before.0, "the RSA agent was used");
    assert_eq!(served(&cluster, 1), before.1 + 10);
    let log = cluster.gateway.process.log();
    assert!(
        log.lines()
            .any(|l| l.contains("require_post_quantum") && l.contains(&v1)),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_cannot_downgrade_or_replace_the_sealing_keys() {
    let alice = default_users().remove(0);
    for lie in [Lie::StripHybrid, Lie::SubstituteKeys] {
        let (cluster, liar) = cluster_behind(lie).await;
        // The offered keys do not match the certificates: nothing is sealed to them, so the
        // password never leaves the gateway.
        let status = cluster
            .sign_in(&alice.upn, &alice.password)
            .await
            .expect_err("no trusted key offered");
        assert_eq!(
            ErrorCode::of(&status),
            Some(ErrorCode::NoAgentAvailable),
            "{lie:?}: {status:?}"
        );
        assert_eq!(
            liar.validations(),
            0,
            "{lie:?}: a password was sealed and sent"
        );
        let log = cluster.gateway.process.log();
        assert!(
            log.contains("not sealing to an untrusted agent key"),
            "{lie:?}: {log}"
        );
    }
}

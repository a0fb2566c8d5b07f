//! One store contract, run against both backends: an embedded SQLite file and a real
//! PostgreSQL server.

use passage_credentials::Secret;
use passage_store::{
    AgentConnection, AgentRecord, Backend, EnrolmentToken, Store, StoredCa, TokenRefusal,
};
use passage_tests::postgres::Postgres;

fn agent(id: &str, tenant: &str, serial: &str) -> AgentRecord {
    AgentRecord {
        agent_id: id.into(),
        tenant: tenant.into(),
        connector_group: "corp.example.com".into(),
        hostname: "dc-agent-1".into(),
        version: "0.1.0".into(),
        cert_serial: serial.into(),
        cert_not_after: 2_000_000_000,
        public_key_der: vec![0x30, 0x82, 1, 2, 3],
        enrolled_at: 1_700_000_000,
        revoked_at: None,
    }
}

async fn store_contract(store: &Store) {
    let now = 1_800_000_000;
    store.ensure_tenant("default", now).await.unwrap();
    store.ensure_tenant("default", now + 1).await.unwrap();
    store.ensure_tenant("acme", now).await.unwrap();
    assert_eq!(
        store.tenants().await.unwrap(),
        vec!["acme".to_string(), "default".to_string()]
    );

    // Tenant CA: the first writer wins, later writers learn they lost.
    assert!(store.tenant_ca("default").await.unwrap().is_none());
    let ca = StoredCa {
        cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        key_der: Secret::new(vec![1, 2, 3, 0, 255]),
    };
    assert!(store.insert_tenant_ca("default", &ca, now).await.unwrap());
    let other = StoredCa {
        cert_pem: "other".into(),
        key_der: Secret::new(vec![9]),
    };
    assert!(
        !store
            .insert_tenant_ca("default", &other, now)
            .await
            .unwrap()
    );
    let stored = store.tenant_ca("default").await.unwrap().unwrap();
    assert_eq!(stored.cert_pem, ca.cert_pem);
    assert_eq!(stored.key_der.expose(), &[1, 2, 3, 0, 255]);

    // Enrolment tokens: single use, expiring, unknown.
    let token = EnrolmentToken {
        token_hash: "a".repeat(64),
        tenant: "default".into(),
        connector_group: "corp.example.com".into(),
        created_at: now,
        expires_at: now + 3600,
    };
    store.create_enrolment_token(&token).await.unwrap();
    let grant = store
        .redeem_enrolment_token(&token.token_hash, "default", now + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.tenant, "default");
    assert_eq!(grant.connector_group, "corp.example.com");
    assert_eq!(
        store
            .redeem_enrolment_token(&token.token_hash, "default", now + 11)
            .await
            .unwrap(),
        Err(TokenRefusal::AlreadyUsed)
    );
    let expiring = EnrolmentToken {
        token_hash: "b".repeat(64),
        expires_at: now + 5,
        ..token.clone()
    };
    store.create_enrolment_token(&expiring).await.unwrap();
    assert_eq!(
        store
            .redeem_enrolment_token(&expiring.token_hash, "default", now + 5)
            .await
            .unwrap(),
        Err(TokenRefusal::Expired)
    );
    assert_eq!(
        store
            .redeem_enrolment_token(&"c".repeat(64), "default", now)
            .await
            .unwrap(),
        Err(TokenRefusal::Unknown)
    );
    // A token of one tenant is refused to another, and stays usable for its own.
    let acme_token = EnrolmentToken {
        token_hash: "e".repeat(64),
        tenant: "acme".into(),
        ..token.clone()
    };
    store.create_enrolment_token(&acme_token).await.unwrap();
    assert_eq!(
        store
            .redeem_enrolment_token(&acme_token.token_hash, "default", now)
            .await
            .unwrap(),
        Err(TokenRefusal::WrongTenant)
    );
    assert!(
        store
            .redeem_enrolment_token(&acme_token.token_hash, "acme", now)
            .await
            .unwrap()
            .is_ok()
    );
    // Redeeming concurrently: exactly one winner.
    let racy = EnrolmentToken {
        token_hash: "d".repeat(64),
        ..token.clone()
    };
    store.create_enrolment_token(&racy).await.unwrap();
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        let hash = racy.token_hash.clone();
        attempts.spawn(async move {
            store
                .redeem_enrolment_token(&hash, "default", now + 1)
                .await
                .unwrap()
        });
    }
    let mut winners = 0;
    while let Some(result) = attempts.join_next().await {
        match result.unwrap() {
            Ok(_) => winners += 1,
            Err(refusal) => assert_eq!(refusal, TokenRefusal::AlreadyUsed),
        }
    }
    assert_eq!(winners, 1, "a token is redeemed exactly once");

    // Agents: insert, update (renewal), list by tenant, revoke.
    store
        .save_agent(&agent("agent-b", "default", "01"))
        .await
        .unwrap();
    store
        .save_agent(&agent("agent-a", "default", "02"))
        .await
        .unwrap();
    store
        .save_agent(&agent("agent-x", "acme", "03"))
        .await
        .unwrap();
    let renewed = AgentRecord {
        cert_serial: "04".into(),
        cert_not_after: 2_100_000_000,
        ..agent("agent-a", "default", "02")
    };
    store.save_agent(&renewed).await.unwrap();
    assert_eq!(store.agent("agent-a").await.unwrap().unwrap(), renewed);
    let ids: Vec<String> = store
        .agents(Some("default"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(ids, vec!["agent-a", "agent-b"]);
    assert_eq!(store.agents(None).await.unwrap().len(), 3);

    assert!(!store.is_revoked("04").await.unwrap());
    let revoked = store
        .revoke_agent("agent-a", now + 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(now + 100));
    assert!(store.is_revoked("04").await.unwrap());
    assert!(!store.is_revoked("01").await.unwrap());
    // Revoking again keeps the first time.
    let again = store
        .revoke_agent("agent-a", now + 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(now + 100));
    assert_eq!(
        store.revoked_since(now + 100).await.unwrap(),
        vec!["agent-a"]
    );
    assert!(store.revoked_since(now + 101).await.unwrap().is_empty());
    assert!(
        store
            .revoke_agent("no-such-agent", now)
            .await
            .unwrap()
            .is_none()
    );

    // Live connections: each replica replaces its own report; stale reports are filtered.
    let connection = |agent: &str, replica: &str, beat: i64| AgentConnection {
        agent_id: agent.into(),
        dispatcher_id: replica.into(),
        in_flight: 3,
        last_heartbeat: beat,
    };
    let first = [
        connection("agent-b", "replica-1", now),
        connection("agent-x", "replica-1", now - 100),
    ];
    store.report_connections("replica-1", &first).await.unwrap();
    let second = [connection("agent-b", "replica-2", now)];
    store
        .report_connections("replica-2", &second)
        .await
        .unwrap();
    assert_eq!(
        store.connections(now - 10).await.unwrap(),
        vec![
            connection("agent-b", "replica-1", now),
            connection("agent-b", "replica-2", now)
        ]
    );
    store.report_connections("replica-1", &[]).await.unwrap();
    assert_eq!(
        store.connections(now - 1000).await.unwrap(),
        second.to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_contract_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("passage.db").display());
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    store_contract(&store).await;
    drop(store);
    // Reopening migrates nothing new and keeps the data.
    let reopened = Store::open(&url).await.unwrap();
    assert_eq!(reopened.agents(None).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_contract_and_two_replicas_share_it() {
    let server = Postgres::start();
    let url = server.url();
    // Two replicas starting at once: migrations take turns (advisory lock).
    let (first, second) = tokio::join!(Store::open(&url), Store::open(&url));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.backend(), Backend::Postgres);
    store_contract(&first).await;
    // What one replica wrote, the other reads.
    assert!(second.is_revoked("04").await.unwrap());
    assert_eq!(second.agents(Some("acme")).await.unwrap().len(), 1);
    let dump = server.dump();
    assert!(
        dump.contains("enrolment_tokens"),
        "the dump covers the schema"
    );
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = Store::open("mysql://localhost/passage").await.unwrap_err();
    assert!(err.to_string().contains("unsupported store URL"), "{err}");
}

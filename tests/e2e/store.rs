//! One store contract, run against both backends: an embedded SQLite file and a real
//! PostgreSQL server.

use passage_credentials::Secret;
use passage_store::{
    AgentCertificate, AgentConnection, AgentRecord, Backend, EnrolmentToken, Forgotten,
    KeyEncryptionKey, KeyProtection, Renewal, Store, StoredCa, TokenRefusal,
};
use passage_tests::postgres::Postgres;

/// Stands in for a tenant CA's PKCS#8 key: distinctive, so a dump can be searched for it.
const CA_KEY_MARKER: &[u8] = b"0\x81\x87-tenant-ca-private-key-marker";
/// Starts every stand-in for a token signing key's PKCS#8 DER.
const SIGNING_KEY_MARKER: &[u8] = b"0\x81\x87-oidc-signing-key-marker";
/// Stands in for what the gateway records with a code or a refresh token.
const OIDC_PAYLOAD_MARKER: &[u8] = b"{\"sub\":\"oidc-payload-marker\"}";

/// A store at `url` keeping private keys encrypted, as dispatchers do in production.
async fn open_encrypted(url: &str, kek: &KeyEncryptionKey) -> Store {
    Store::open(url)
        .await
        .unwrap()
        .with_key_protection(KeyProtection::Encrypted(kek.clone()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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
        hybrid_public_key: Some(vec![7; 16]),
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
        key_der: Secret::new(CA_KEY_MARKER.to_vec()),
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
    assert_eq!(stored.key_der.expose(), CA_KEY_MARKER);

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
        .check_enrolment_token(&token.token_hash, "default", now + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.tenant, "default");
    assert_eq!(grant.connector_group, "corp.example.com");
    // Checking spends nothing; enrolling does, exactly once.
    store
        .enrol_agent(
            &token.token_hash,
            &agent("agent-b", "default", "01"),
            now + 10,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .check_enrolment_token(&token.token_hash, "default", now + 11)
            .await
            .unwrap(),
        Err(TokenRefusal::AlreadyUsed)
    );
    assert_eq!(
        store
            .enrol_agent(
                &token.token_hash,
                &agent("agent-c", "default", "05"),
                now + 11
            )
            .await
            .unwrap(),
        Err(TokenRefusal::AlreadyUsed)
    );
    assert!(
        store.agent("agent-c").await.unwrap().is_none(),
        "a refused enrolment leaves nothing"
    );
    let expiring = EnrolmentToken {
        token_hash: "b".repeat(64),
        expires_at: now + 5,
        ..token.clone()
    };
    store.create_enrolment_token(&expiring).await.unwrap();
    assert_eq!(
        store
            .enrol_agent(
                &expiring.token_hash,
                &agent("agent-c", "default", "05"),
                now + 5
            )
            .await
            .unwrap(),
        Err(TokenRefusal::Expired)
    );
    assert_eq!(
        store
            .check_enrolment_token(&"c".repeat(64), "default", now)
            .await
            .unwrap(),
        Err(TokenRefusal::Unknown)
    );
    // A token of one tenant is refused to another, and stays usable for its own; a token of
    // one group is refused for another group and stays usable.
    let acme_token = EnrolmentToken {
        token_hash: "e".repeat(64),
        tenant: "acme".into(),
        ..token.clone()
    };
    store.create_enrolment_token(&acme_token).await.unwrap();
    assert_eq!(
        store
            .enrol_agent(
                &acme_token.token_hash,
                &agent("agent-c", "default", "05"),
                now
            )
            .await
            .unwrap(),
        Err(TokenRefusal::WrongTenant)
    );
    let mut other_group = agent("agent-x", "acme", "03");
    other_group.connector_group = "elsewhere.example.com".into();
    assert_eq!(
        store
            .enrol_agent(&acme_token.token_hash, &other_group, now)
            .await
            .unwrap(),
        Err(TokenRefusal::WrongGroup)
    );
    store
        .enrol_agent(&acme_token.token_hash, &agent("agent-x", "acme", "03"), now)
        .await
        .unwrap()
        .unwrap();
    // Enrolling concurrently with one token: exactly one winner, and only its agent exists.
    let racy = EnrolmentToken {
        token_hash: "d".repeat(64),
        ..token.clone()
    };
    store.create_enrolment_token(&racy).await.unwrap();
    let mut attempts = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        let hash = racy.token_hash.clone();
        attempts.spawn(async move {
            let id = format!("racer-{n}");
            let result = store
                .enrol_agent(&hash, &agent(&id, "default", &format!("1{n}")), now + 1)
                .await
                .unwrap();
            (id, result)
        });
    }
    let mut winners = Vec::new();
    while let Some(result) = attempts.join_next().await {
        match result.unwrap() {
            (id, Ok(())) => winners.push(id),
            (_, Err(refusal)) => assert_eq!(refusal, TokenRefusal::AlreadyUsed),
        }
    }
    assert_eq!(winners.len(), 1, "a token is spent exactly once");
    let racers: Vec<String> = store
        .agents(Some("default"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.agent_id)
        .filter(|id| id.starts_with("racer-"))
        .collect();
    assert_eq!(racers, winners);

    // Renewal: the new certificate becomes current, the old one is superseded.
    let token_a = EnrolmentToken {
        token_hash: "f".repeat(64),
        ..token.clone()
    };
    store.create_enrolment_token(&token_a).await.unwrap();
    store
        .enrol_agent(&token_a.token_hash, &agent("agent-a", "default", "02"), now)
        .await
        .unwrap()
        .unwrap();
    let renewal = AgentCertificate {
        serial: "04".into(),
        not_after: 2_100_000_000,
        public_key_der: vec![0x30, 9, 9],
        hybrid_public_key: Some(vec![8; 16]),
    };
    assert_eq!(
        store
            .renew_agent("agent-a", "02", &renewal, "0.2.0", now + 50)
            .await
            .unwrap(),
        Renewal::Renewed
    );
    let renewed = store.agent("agent-a").await.unwrap().unwrap();
    assert_eq!(renewed.cert_serial, "04");
    assert_eq!(renewed.cert_not_after, 2_100_000_000);
    assert_eq!(renewed.public_key_der, vec![0x30, 9, 9]);
    assert_eq!(renewed.version, "0.2.0");
    // Until the agent connects with the new certificate, the old one stands (a lost answer
    // to the renewal strands nobody) and may renew again.
    let old = store.certificate_standing("02").await.unwrap().unwrap();
    assert_eq!(old.superseded_at, None);
    let retried = AgentCertificate {
        serial: "05".into(),
        ..renewal.clone()
    };
    assert_eq!(
        store
            .renew_agent("agent-a", "02", &retried, "0.2.0", now + 60)
            .await
            .unwrap(),
        Renewal::Renewed
    );
    // Connecting with an older certificate retires nothing; with the current one, every other.
    assert_eq!(
        store
            .activate_certificate("agent-a", "02", now + 65)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .activate_certificate("agent-a", "05", now + 70)
            .await
            .unwrap(),
        2
    );
    for serial in ["02", "04"] {
        let standing = store.certificate_standing(serial).await.unwrap().unwrap();
        assert_eq!(standing.superseded_at, Some(now + 70), "{serial}");
        assert_eq!(standing.agent_id, "agent-a");
    }
    let current = store.certificate_standing("05").await.unwrap().unwrap();
    assert_eq!(current.superseded_at, None);
    assert_eq!(current.public_key_der, vec![0x30, 9, 9]);
    assert_eq!(current.hybrid_public_key, Some(vec![8; 16]));
    assert_eq!(
        store
            .agent("agent-a")
            .await
            .unwrap()
            .unwrap()
            .hybrid_public_key,
        Some(vec![8; 16])
    );
    assert!(store.certificate_standing("99").await.unwrap().is_none());
    // A superseded certificate (a copy taken before the renewal) cannot renew.
    let stolen = AgentCertificate {
        serial: "66".into(),
        ..renewal.clone()
    };
    assert_eq!(
        store
            .renew_agent("agent-a", "02", &stolen, "0.2.0", now + 80)
            .await
            .unwrap(),
        Renewal::Superseded
    );
    assert!(store.certificate_standing("66").await.unwrap().is_none());
    assert_eq!(
        store
            .superseded_since(now + 70)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.serial)
            .collect::<Vec<_>>(),
        vec!["02", "04"]
    );
    assert!(store.superseded_since(now + 71).await.unwrap().is_empty());
    assert_eq!(
        store
            .renew_agent("no-such-agent", "02", &renewal, "0.2.0", now)
            .await
            .unwrap(),
        Renewal::Unknown
    );

    let ids: Vec<String> = store
        .agents(Some("default"))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.agent_id)
        .filter(|id| !id.starts_with("racer-"))
        .collect();
    assert_eq!(ids, vec!["agent-a", "agent-b"]);
    assert_eq!(store.agents(None).await.unwrap().len(), 4);

    // Revocation: every certificate the agent ever had stands revoked, at once.
    let revoked = store
        .revoke_agent("agent-a", now + 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(now + 100));
    for serial in ["02", "04", "05"] {
        let standing = store.certificate_standing(serial).await.unwrap().unwrap();
        assert_eq!(standing.agent_revoked_at, Some(now + 100), "{serial}");
    }
    assert_eq!(
        store
            .certificate_standing("01")
            .await
            .unwrap()
            .unwrap()
            .agent_revoked_at,
        None
    );
    // Revoking again keeps the first time; renewing a revoked agent changes nothing.
    let again = store
        .revoke_agent("agent-a", now + 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(now + 100));
    let late = AgentCertificate {
        serial: "06".into(),
        ..renewal.clone()
    };
    assert_eq!(
        store
            .renew_agent("agent-a", "05", &late, "0.3.0", now + 300)
            .await
            .unwrap(),
        Renewal::Revoked
    );
    assert!(store.certificate_standing("06").await.unwrap().is_none());
    assert_eq!(
        store.agent("agent-a").await.unwrap().unwrap().cert_serial,
        "05"
    );
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
    // Forgetting: only revoked agents; their certificates then stand nowhere.
    assert_eq!(
        store.forget_agent("agent-b", now + 10_000).await.unwrap(),
        Forgotten::NotRevoked
    );
    assert_eq!(
        store.forget_agent("nobody", now + 10_000).await.unwrap(),
        Forgotten::Unknown
    );
    let token_g = EnrolmentToken {
        token_hash: "9".repeat(64),
        ..token.clone()
    };
    store.create_enrolment_token(&token_g).await.unwrap();
    store
        .enrol_agent(
            &token_g.token_hash,
            &agent("agent-gone", "default", "07"),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    store.revoke_agent("agent-gone", now + 1).await.unwrap();
    // Not before every replica can have cut it.
    assert_eq!(
        store.forget_agent("agent-gone", now).await.unwrap(),
        Forgotten::TooRecent
    );
    assert_eq!(
        store.forget_agent("agent-gone", now + 1).await.unwrap(),
        Forgotten::Forgotten
    );
    assert!(store.agent("agent-gone").await.unwrap().is_none());
    assert!(store.certificate_standing("07").await.unwrap().is_none());

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

/// Lockout counters, familiar networks and the sign-in log, on both backends; concurrent
/// attempts from several replicas are all recorded, and one lockout results.
async fn lockout_and_signin_log(store: &Store) {
    use passage_store::{
        AttemptEnd,
        LockoutScope::{Familiar, Unfamiliar},
    };
    let now = 1_950_000_000;
    let failures = move |n: i64| AttemptEnd::Failures {
        failures: n,
        expired_before: now - 600,
        standing_expired_before: i64::MIN,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..12 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .reserve_lockout_attempt("t", "carol@x", Unfamiliar, now + n % 3, now + 30)
                .await
                .unwrap()
        });
    }
    let mut seen = Vec::new();
    while let Some(counters) = tasks.join_next().await {
        seen.push(counters.unwrap().unfamiliar.pending);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=12).collect::<Vec<_>>(),
        "every attempt recorded once"
    );
    // Each ends: failures are counted, outstanding ones go.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .settle_lockout_attempt("t", "carol@x", Unfamiliar, failures(1), now + 3)
                .await
                .unwrap()
        });
    }
    while tasks.join_next().await.is_some() {}
    let counters = store
        .lockout_state("t", "carol@x", None, 0)
        .await
        .unwrap()
        .counters;
    assert_eq!(
        (
            counters.unfamiliar.failures,
            counters.unfamiliar.pending,
            counters.unfamiliar.last_failure_at
        ),
        (12, 0, now + 3)
    );
    let (a, b) = tokio::join!(
        store.lock_out("t", "carol@x", Unfamiliar, now + 60, false, now + 3),
        store.lock_out("t", "carol@x", Unfamiliar, now + 60, false, now + 3),
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()]
            .iter()
            .filter(|l| l.is_some())
            .count(),
        1,
        "one lockout"
    );
    let counters = store
        .lockout_state("t", "carol@x", None, 0)
        .await
        .unwrap()
        .counters;
    assert_eq!(
        (
            counters.unfamiliar.failures,
            counters.unfamiliar.locked_until,
            counters.unfamiliar.lockouts
        ),
        (12, now + 60, 1),
        "held: the directory still remembers them"
    );
    assert_eq!(counters.familiar, passage_store::ScopeCounter::default());
    // Outstanding attempts past their deadline are forgotten: the next one starts at 1.
    store
        .reserve_lockout_attempt("t", "carol@x", Familiar, now + 4, now + 10)
        .await
        .unwrap();
    let later = store
        .reserve_lockout_attempt("t", "carol@x", Familiar, now + 10, now + 40)
        .await
        .unwrap();
    assert_eq!(
        (later.familiar.pending, later.familiar.pending_until),
        (1, now + 40)
    );
    // A failure whose count expired starts it again; nothing reached the directory: nothing
    // counted.
    let after = store
        .settle_lockout_attempt(
            "t",
            "carol@x",
            Unfamiliar,
            AttemptEnd::Failures {
                failures: 2,
                expired_before: now + 3,
                standing_expired_before: i64::MIN,
            },
            now + 11,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.unfamiliar.failures, 2);
    let after = store
        .settle_lockout_attempt("t", "carol@x", Unfamiliar, failures(0), now + 12)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.unfamiliar.failures, after.unfamiliar.last_failure_at),
        (2, now + 11)
    );
    // A success: counts and lockout counts start again; the lockout in force stays.
    store
        .settle_lockout_attempt("t", "carol@x", Familiar, AttemptEnd::Success, now + 12)
        .await
        .unwrap();
    let counters = store
        .lockout_state("t", "carol@x", None, 0)
        .await
        .unwrap()
        .counters;
    assert_eq!(
        (
            counters.familiar.pending,
            counters.unfamiliar.failures,
            counters.unfamiliar.lockouts,
            counters.unfamiliar.locked_until
        ),
        (0, 0, 0, now + 60),
        "a success elsewhere keeps the lock"
    );
    // A lockout that starts the count again.
    store
        .settle_lockout_attempt("t", "carol@x", Familiar, failures(3), now + 13)
        .await
        .unwrap();
    let locked = store
        .lock_out("t", "carol@x", Familiar, now + 700, true, now + 13)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            locked.familiar.failures,
            locked.familiar.locked_until,
            locked.familiar_standing
        ),
        (0, now + 700, 3),
        "the familiar count starts again; what the directory holds stands"
    );

    // A batch of many sign-ins' updates, some users twice: few statements, each user's in
    // order, each result in the order given.
    use passage_store::LockoutOp;
    let reserve = |user: &str, scope| LockoutOp::Reserve {
        tenant: "t".into(),
        user_key: user.into(),
        scope,
        now: now + 20,
        until: now + 50,
    };
    let settle = |user: &str, scope, end| LockoutOp::Settle {
        tenant: "t".into(),
        user_key: user.into(),
        scope,
        end,
        now: now + 20,
    };
    let ops = [
        reserve("erin@x", Unfamiliar),
        reserve("frank@x", Familiar),
        reserve("erin@x", Unfamiliar),
        settle("frank@x", Familiar, AttemptEnd::Success),
        settle("erin@x", Unfamiliar, failures(1)),
        reserve("gina@x", Unfamiliar),
    ];
    let results = store
        .run_lockout_ops(&mut Default::default(), &ops)
        .await
        .unwrap();
    assert_eq!(results[0].unwrap().unfamiliar.pending, 1);
    assert_eq!(results[1].unwrap().familiar.pending, 1);
    assert_eq!(
        results[2].unwrap().unfamiliar.pending,
        2,
        "erin's second, after her first"
    );
    assert_eq!(results[3], None);
    let erin = results[4].unwrap().unfamiliar;
    assert_eq!((erin.pending, erin.failures), (1, 1));
    assert_eq!(results[5].unwrap().unfamiliar.pending, 1);
    let frank = store
        .lockout_state("t", "frank@x", None, 0)
        .await
        .unwrap()
        .counters
        .familiar;
    assert_eq!(frank.pending, 0, "reserved, then settled in the same batch");

    // Users whose keys need quoting wherever a batch's rows travel as text (PostgreSQL's
    // arrays), on one connection kept from batch to batch as the gateway's writer keeps it:
    // each answer reaches its own op, and the successes settle the same rows.
    let awkward = [
        r#"quote"d@x"#,
        r"back\slash@x",
        "comma,brace}{@x",
        "NULL",
        "  spaced  @x",
        "ünïcödé@x",
        "",
    ];
    let mut held = passage_store::batching::WriterConnection::default();
    let scope_of = |n: usize| {
        if n.is_multiple_of(2) {
            Familiar
        } else {
            Unfamiliar
        }
    };
    let stored = async |user: &str| {
        let state = store.lockout_state("t", user, None, 0).await.unwrap();
        state.counters
    };
    // Each reservation outstanding until its own bound, among other users' successes in the
    // same scopes (which answer nothing): an answer given to the wrong op shows.
    let fillers: Vec<String> = (0..awkward.len()).map(|n| format!("filler{n}@x")).collect();
    let mut ops = Vec::new();
    for (n, user) in awkward.iter().enumerate() {
        ops.push(LockoutOp::Reserve {
            tenant: "t".into(),
            user_key: (*user).into(),
            scope: scope_of(n),
            now: now + 20,
            until: now + 50 + n as i64,
        });
        ops.push(settle(&fillers[n], scope_of(n), AttemptEnd::Success));
    }
    let results = store.run_lockout_ops(&mut held, &ops).await.unwrap();
    for (n, user) in awkward.iter().enumerate() {
        assert_eq!(results[2 * n + 1], None, "a success answers nothing");
        let counters = results[2 * n].expect("a reservation answers");
        let (own, other) = if n.is_multiple_of(2) {
            (counters.familiar, counters.unfamiliar)
        } else {
            (counters.unfamiliar, counters.familiar)
        };
        assert_eq!((own.pending, other.pending), (1, 0), "{user:?}");
        assert_eq!(own.pending_until, now + 50 + n as i64, "{user:?}");
        assert_eq!(
            stored(user).await,
            counters,
            "{user:?}: the answer is the user's own row"
        );
    }
    let ops: Vec<_> = awkward
        .iter()
        .enumerate()
        .map(|(n, user)| settle(user, scope_of(n), AttemptEnd::Success))
        .collect();
    let results = store.run_lockout_ops(&mut held, &ops).await.unwrap();
    assert!(
        results.iter().all(Option::is_none),
        "successes answer nothing"
    );
    for user in awkward {
        let stored = stored(user).await;
        assert_eq!(
            (stored.familiar.pending, stored.unfamiliar.pending),
            (0, 0),
            "{user:?}"
        );
    }

    // Familiar networks: bounded, most recent kept, expiring.
    for n in 0..5 {
        store
            .remember_network("t", "carol@x", &format!("10.0.{n}.0/24"), now + n, 3)
            .await
            .unwrap();
    }
    assert!(
        !store
            .is_familiar("t", "carol@x", "10.0.0.0/24", 0)
            .await
            .unwrap()
    );
    assert!(
        store
            .is_familiar("t", "carol@x", "10.0.4.0/24", 0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_familiar("t", "carol@x", "10.0.4.0/24", now + 5)
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_familiar("t", "dave@x", "10.0.4.0/24", 0)
            .await
            .unwrap()
    );
    // The one read on a sign-in's path: the counters and the network's last sighting.
    let state = store
        .lockout_state("t", "carol@x", Some("10.0.4.0/24"), 0)
        .await
        .unwrap();
    assert_eq!(state.network_last_seen, Some(now + 4));
    assert_eq!(state.counters.unfamiliar.locked_until, now + 60);
    for (network, since) in [
        (Some("10.0.4.0/24"), now + 5),
        (Some("10.0.0.0/24"), 0),
        (None, 0),
    ] {
        let state = store
            .lockout_state("t", "carol@x", network, since)
            .await
            .unwrap();
        assert_eq!(state.network_last_seen, None, "{network:?} since {since}");
        assert_eq!(state.counters.unfamiliar.locked_until, now + 60);
    }
    assert_eq!(
        store
            .lockout_state("t", "dave@x", Some("10.0.4.0/24"), 0)
            .await
            .unwrap(),
        passage_store::LockoutState::default()
    );
    // The sign-in log.
    for n in 0..4 {
        store
            .log_signin(&passage_store::SigninEntry {
                at: now + n,
                tenant: "t".into(),
                username: if n == 3 {
                    "Dave@X".into()
                } else {
                    "carol@x".into()
                },
                outcome: if n == 0 {
                    "success".into()
                } else {
                    "failure".into()
                },
                error_code: if n == 0 {
                    String::new()
                } else {
                    "PSG50126".into()
                },
                client_id: "app".into(),
                familiar_location: n == 0,
                lockout: "counted".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let all = store
        .signins(&passage_store::SigninFilter::default())
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![now + 3, now + 2, now + 1, now]
    );
    assert!(all[3].familiar_location && !all[2].familiar_location);
    let dave = store
        .signins(&passage_store::SigninFilter {
            username: Some("dave@x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dave.len(), 1);
    let failures = store
        .signins(&passage_store::SigninFilter {
            outcome: Some("failure".into()),
            since: Some(now + 2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failures.len(), 2);
    // A batch larger than one statement's rows lands whole, in order.
    let batch: Vec<passage_store::SigninEntry> = (0..250)
        .map(|n| passage_store::SigninEntry {
            at: now + 10,
            tenant: "batch".into(),
            username: format!("user{n}@x"),
            outcome: "failure".into(),
            error_code: "PSG50126".into(),
            latency_ms: n,
            ..Default::default()
        })
        .collect();
    store
        .log_signins(&mut Default::default(), &batch)
        .await
        .unwrap();
    let logged = store
        .signins(&passage_store::SigninFilter {
            tenant: Some("batch".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        logged.iter().map(|e| e.latency_ms).collect::<Vec<_>>(),
        (0..250).rev().collect::<Vec<_>>(),
        "every row, newest first"
    );
    assert_eq!(store.prune_signins(now + 2).await.unwrap(), 2);
    assert_eq!(
        store
            .signins(&passage_store::SigninFilter {
                tenant: Some("t".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        2
    );
}

/// OpenID Connect state, on both backends: one current signing key per tenant whichever
/// replicas race, rotation and pruning of keys, single-use authorization codes, refresh token
/// rotation with replay detection, revocation. `replica` is another replica on the same
/// database (or the same store).
async fn oidc_state(store: &Store, replica: &Store) {
    use passage_store::{
        CodeRedemption, NewCode, NewRefreshToken, OIDC_PRUNE_GRACE_S, RefreshRotation,
    };
    let now = 1_960_000_000;
    let key = |n: u8| {
        let mut key = SIGNING_KEY_MARKER.to_vec();
        key.push(n);
        key
    };
    fn kids(keys: &[passage_store::StoredSigningKey]) -> Vec<(String, Option<i64>, Option<i64>)> {
        keys.iter()
            .map(|k| (k.kid.clone(), k.retired_at, k.drop_after))
            .collect()
    }

    // Signing keys: replicas starting together end with one current key, theirs or another's.
    assert!(store.signing_keys("oidc").await.unwrap().is_empty());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6u8 {
        let store = if n % 2 == 0 {
            store.clone()
        } else {
            replica.clone()
        };
        tasks.spawn(async move {
            let inserted = store
                .ensure_signing_key("oidc", &format!("kid-{n}"), &key(n), now)
                .await
                .unwrap();
            (n, inserted)
        });
    }
    let mut inserted = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (n, won) = result.unwrap();
        if won {
            inserted.push(n);
        }
    }
    assert_eq!(inserted.len(), 1, "one key became current: {inserted:?}");
    let first = inserted[0];
    let first_kid = format!("kid-{first}");
    let keys = replica.signing_keys("oidc").await.unwrap();
    assert_eq!(kids(&keys), vec![(first_kid.clone(), None, None)]);
    assert_eq!(keys[0].private_pkcs8.expose(), key(first).as_slice());
    assert_eq!(keys[0].created_at, now);
    let printed = format!("{:?}", keys[0]);
    let key_bytes = format!("{:?}", &SIGNING_KEY_MARKER[..4]);
    assert!(
        printed.contains("[redacted]") && !printed.contains(key_bytes.trim_end_matches(']')),
        "Debug prints no key: {printed}"
    );
    assert!(
        !store
            .ensure_signing_key("oidc", "kid-late", &key(9), now + 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .ensure_signing_key("oidc-other", "kid-o", &key(7), now)
            .await
            .unwrap(),
        "each tenant has its own"
    );
    // Rotation: the current key retires (kept for its tokens until drop_after), the new one
    // signs; a key retired before keeps its drop_after.
    store
        .add_signing_key("oidc", "kid-next", &key(10), now + 100, now + 400)
        .await
        .unwrap();
    let keys = replica.signing_keys("oidc").await.unwrap();
    assert_eq!(
        kids(&keys),
        vec![
            ("kid-next".to_string(), None, None),
            (first_kid.clone(), Some(now + 100), Some(now + 400)),
        ]
    );
    assert_eq!(keys[0].private_pkcs8.expose(), key(10).as_slice());
    assert_eq!(keys[1].private_pkcs8.expose(), key(first).as_slice());
    assert!(
        !store
            .ensure_signing_key("oidc", "kid-late", &key(9), now + 101)
            .await
            .unwrap()
    );
    store
        .add_signing_key("oidc", "kid-third", &key(11), now + 200, now + 500)
        .await
        .unwrap();
    assert_eq!(
        kids(&store.signing_keys("oidc").await.unwrap()),
        vec![
            ("kid-third".to_string(), None, None),
            ("kid-next".to_string(), Some(now + 200), Some(now + 500)),
            (first_kid.clone(), Some(now + 100), Some(now + 400)),
        ]
    );
    // A tenant without a key gets one by rotating, too.
    store
        .add_signing_key("oidc-fresh", "kid-f", &key(12), now, now)
        .await
        .unwrap();
    assert_eq!(
        kids(&store.signing_keys("oidc-fresh").await.unwrap()),
        vec![("kid-f".to_string(), None, None)]
    );
    // Pruning: retired keys past drop_after only, never a current one.
    assert_eq!(store.prune_signing_keys(now + 399).await.unwrap(), 0);
    assert_eq!(store.prune_signing_keys(now + 400).await.unwrap(), 1);
    assert_eq!(store.prune_signing_keys(now + 100_000).await.unwrap(), 1);
    assert_eq!(
        kids(&replica.signing_keys("oidc").await.unwrap()),
        vec![("kid-third".to_string(), None, None)]
    );
    assert_eq!(store.signing_keys("oidc-other").await.unwrap().len(), 1);
    assert_eq!(store.signing_keys("oidc-fresh").await.unwrap().len(), 1);

    // Authorization codes: redeemed once, whichever replicas try at once; the others learn
    // the family the redemption created.
    let code_digest = "c0".repeat(32);
    let code = NewCode {
        digest: &code_digest,
        tenant: "oidc",
        client_id: "app",
        redirect_uri: "https://app.example.com/cb",
        expires_at: now + 60,
        payload: OIDC_PAYLOAD_MARKER,
    };
    store.create_authorization_code(&code).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6 {
        let store = if n % 2 == 0 {
            store.clone()
        } else {
            replica.clone()
        };
        let digest = code_digest.clone();
        tasks.spawn(async move {
            let redemption = store
                .redeem_authorization_code(&digest, &format!("family-{n}"), now + 10)
                .await
                .unwrap();
            (n, redemption)
        });
    }
    let mut winner = None;
    let mut replays = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (
                n,
                CodeRedemption::Redeemed {
                    client_id,
                    redirect_uri,
                    payload,
                },
            ) => {
                assert_eq!(
                    (client_id.as_str(), redirect_uri.as_str(), payload.expose()),
                    ("app", "https://app.example.com/cb", OIDC_PAYLOAD_MARKER)
                );
                assert!(winner.replace(n).is_none(), "a code redeemed twice");
            }
            (_, CodeRedemption::AlreadyUsed { family_id }) => replays.push(family_id),
            (n, other) => panic!("redemption {n}: {other:?}"),
        }
    }
    let winning_family = format!("family-{}", winner.expect("a code redeemed once"));
    assert_eq!(replays, vec![Some(winning_family.clone()); 5]);
    // A replay after the code's expiry is still recognised.
    match store
        .redeem_authorization_code(&code_digest, "family-late", now + 1000)
        .await
        .unwrap()
    {
        CodeRedemption::AlreadyUsed { family_id } => {
            assert_eq!(family_id, Some(winning_family))
        }
        other => panic!("{other:?}"),
    }
    // An expired code is unknown; the same code just before its expiry redeems.
    let expiring_digest = "c1".repeat(32);
    store
        .create_authorization_code(&NewCode {
            digest: &expiring_digest,
            ..code
        })
        .await
        .unwrap();
    assert!(matches!(
        store
            .redeem_authorization_code(&expiring_digest, "family-x", now + 60)
            .await
            .unwrap(),
        CodeRedemption::Unknown
    ));
    assert!(matches!(
        replica
            .redeem_authorization_code(&expiring_digest, "family-x", now + 59)
            .await
            .unwrap(),
        CodeRedemption::Redeemed { .. }
    ));
    assert!(matches!(
        store
            .redeem_authorization_code(&"c2".repeat(32), "family-y", now)
            .await
            .unwrap(),
        CodeRedemption::Unknown
    ));
    // One stays unused, for the dump.
    let kept_digest = "c3".repeat(32);
    store
        .create_authorization_code(&NewCode {
            digest: &kept_digest,
            expires_at: 2_100_000_000,
            ..code
        })
        .await
        .unwrap();

    // Refresh tokens: rotation carries the grant over to the new token.
    let token = NewRefreshToken {
        digest: "rt-a1",
        family_id: "family-a",
        tenant: "oidc",
        client_id: "app",
        user_key: "alice",
        expires_at: now + 1_000_000,
        payload: OIDC_PAYLOAD_MARKER,
    };
    store.create_refresh_token(&token, now).await.unwrap();
    let info = replica.refresh_token("rt-a1", now).await.unwrap().unwrap();
    assert_eq!(
        (
            info.family_id.as_str(),
            info.tenant.as_str(),
            info.client_id.as_str(),
            info.user_key.as_str(),
            info.created_at,
            info.expires_at,
            info.active
        ),
        (
            "family-a",
            "oidc",
            "app",
            "alice",
            now,
            now + 1_000_000,
            true
        )
    );
    assert_eq!(info.payload.expose(), OIDC_PAYLOAD_MARKER);
    match store
        .rotate_refresh_token("rt-a1", "rt-a2", now + 10)
        .await
        .unwrap()
    {
        RefreshRotation::Rotated {
            client_id,
            user_key,
            expires_at,
            payload,
        } => assert_eq!(
            (
                client_id.as_str(),
                user_key.as_str(),
                expires_at,
                payload.expose()
            ),
            ("app", "alice", now + 1_000_000, OIDC_PAYLOAD_MARKER)
        ),
        other => panic!("{other:?}"),
    }
    let rotated = replica
        .refresh_token("rt-a2", now + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            rotated.family_id.as_str(),
            rotated.created_at,
            rotated.expires_at,
            rotated.active
        ),
        ("family-a", now + 10, now + 1_000_000, true)
    );
    assert_eq!(rotated.payload.expose(), OIDC_PAYLOAD_MARKER);
    assert!(
        !store
            .refresh_token("rt-a1", now + 10)
            .await
            .unwrap()
            .unwrap()
            .active,
        "a rotated token is inactive"
    );
    assert!(matches!(
        replica
            .rotate_refresh_token("rt-a2", "rt-a3", now + 20)
            .await
            .unwrap(),
        RefreshRotation::Rotated { .. }
    ));
    assert!(
        store
            .refresh_token("rt-a3", now + 20)
            .await
            .unwrap()
            .unwrap()
            .active
    );
    // A rotated token presented again is a replay: the whole family is revoked, the current
    // token included.
    match replica
        .rotate_refresh_token("rt-a1", "rt-a-stolen", now + 30)
        .await
        .unwrap()
    {
        RefreshRotation::Reused {
            family_id,
            client_id,
        } => assert_eq!(
            (family_id.as_str(), client_id.as_str()),
            ("family-a", "app")
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        store
            .refresh_token("rt-a-stolen", now + 30)
            .await
            .unwrap()
            .is_none()
    );
    for digest in ["rt-a1", "rt-a2", "rt-a3"] {
        let info = store
            .refresh_token(digest, now + 30)
            .await
            .unwrap()
            .unwrap();
        assert!(!info.active, "{digest}");
    }
    for digest in ["rt-a3", "rt-a1"] {
        assert!(
            matches!(
                store
                    .rotate_refresh_token(digest, "rt-a4", now + 40)
                    .await
                    .unwrap(),
                RefreshRotation::Revoked
            ),
            "{digest}"
        );
    }
    assert_eq!(
        store
            .revoke_refresh_family("family-a", now + 50)
            .await
            .unwrap(),
        0,
        "revoked already"
    );
    // Concurrent rotations of one token, on both replicas: one rotates; the others are
    // replays, and the token the winner got is revoked with its family.
    store
        .create_refresh_token(
            &NewRefreshToken {
                digest: "rt-b1",
                family_id: "family-b",
                ..token
            },
            now,
        )
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..4 {
        let store = if n % 2 == 0 {
            store.clone()
        } else {
            replica.clone()
        };
        tasks.spawn(async move {
            let new = format!("rt-b2-{n}");
            let rotation = store
                .rotate_refresh_token("rt-b1", &new, now + 10)
                .await
                .unwrap();
            (new, rotation)
        });
    }
    let (mut rotated, mut reused) = (Vec::new(), 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (new, RefreshRotation::Rotated { .. }) => rotated.push(new),
            (_, RefreshRotation::Reused { family_id, .. }) => {
                assert_eq!(family_id, "family-b");
                reused += 1;
            }
            (_, RefreshRotation::Revoked) => {}
            (new, RefreshRotation::Unknown) => panic!("{new}: unknown"),
        }
    }
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert!(reused >= 1);
    let won = store
        .refresh_token(&rotated[0], now + 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(won.family_id, "family-b");
    assert!(!won.active, "revoked with its family");
    // Revoking a family: every token of it, rotated ones included.
    store
        .create_refresh_token(
            &NewRefreshToken {
                digest: "rt-c1",
                family_id: "family-c",
                ..token
            },
            now,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .rotate_refresh_token("rt-c1", "rt-c2", now + 10)
            .await
            .unwrap(),
        RefreshRotation::Rotated { .. }
    ));
    assert_eq!(
        replica
            .revoke_refresh_family("family-c", now + 20)
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        store
            .rotate_refresh_token("rt-c2", "rt-c3", now + 30)
            .await
            .unwrap(),
        RefreshRotation::Revoked
    ));
    // Revoking a user's tokens: at one client, then everywhere in the tenant; other users and
    // other tenants keep theirs.
    for (digest, family_id, tenant, client_id, user_key) in [
        ("rt-d1", "family-d", "oidc", "app", "alice"),
        ("rt-e1", "family-e", "oidc", "other-app", "alice"),
        ("rt-f1", "family-f", "oidc", "app", "bob"),
        ("rt-g1", "family-g", "oidc-other", "app", "alice"),
    ] {
        store
            .create_refresh_token(
                &NewRefreshToken {
                    digest,
                    family_id,
                    tenant,
                    client_id,
                    user_key,
                    ..token
                },
                now,
            )
            .await
            .unwrap();
    }
    let active = |digest: &'static str| {
        let store = store.clone();
        async move {
            store
                .refresh_token(digest, now + 30)
                .await
                .unwrap()
                .unwrap()
                .active
        }
    };
    assert_eq!(
        store
            .revoke_refresh_tokens_of("oidc", Some("app"), "alice", now + 20)
            .await
            .unwrap(),
        1
    );
    assert!(!active("rt-d1").await);
    assert!(active("rt-e1").await && active("rt-f1").await && active("rt-g1").await);
    assert_eq!(
        replica
            .revoke_refresh_tokens_of("oidc", None, "alice", now + 21)
            .await
            .unwrap(),
        1
    );
    assert!(!active("rt-e1").await);
    assert!(active("rt-f1").await && active("rt-g1").await);
    // An expired token is unknown to rotation and inactive; just before its end it rotates.
    store
        .create_refresh_token(
            &NewRefreshToken {
                digest: "rt-h1",
                family_id: "family-h",
                expires_at: now + 100,
                ..token
            },
            now,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .rotate_refresh_token("rt-h1", "rt-h2", now + 100)
            .await
            .unwrap(),
        RefreshRotation::Unknown
    ));
    assert!(
        !store
            .refresh_token("rt-h1", now + 100)
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert!(
        store
            .refresh_token("rt-h1", now + 99)
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert!(matches!(
        replica
            .rotate_refresh_token("rt-h1", "rt-h2", now + 99)
            .await
            .unwrap(),
        RefreshRotation::Rotated { .. }
    ));
    assert!(matches!(
        store
            .rotate_refresh_token("rt-none", "rt-none-2", now)
            .await
            .unwrap(),
        RefreshRotation::Unknown
    ));

    // Pruning: codes and tokens a grace period past their expiry, nothing sooner.
    assert_eq!(
        store
            .prune_oidc(now + 60 + OIDC_PRUNE_GRACE_S)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_oidc(now + 61 + OIDC_PRUNE_GRACE_S)
            .await
            .unwrap(),
        2,
        "the two codes that expired"
    );
    assert!(matches!(
        store
            .redeem_authorization_code(&code_digest, "family-z", now + 61 + OIDC_PRUNE_GRACE_S)
            .await
            .unwrap(),
        CodeRedemption::Unknown
    ));
    assert_eq!(
        store
            .prune_oidc(now + 101 + OIDC_PRUNE_GRACE_S)
            .await
            .unwrap(),
        2,
        "the expired family's two tokens"
    );
    assert!(store.refresh_token("rt-h2", now).await.unwrap().is_none());
    assert!(store.refresh_token("rt-f1", now).await.unwrap().is_some());
    assert!(matches!(
        store
            .redeem_authorization_code(&kept_digest, "family-k", now)
            .await
            .unwrap(),
        CodeRedemption::Redeemed { .. }
    ));
}

/// Renewals racing revocations, many times: whatever the interleaving, the agent ends revoked,
/// and no certificate of it stands.
async fn renewal_never_resurrects_a_revoked_agent(store: &Store) {
    let now = 1_900_000_000;
    store.ensure_tenant("race", now).await.unwrap();
    for round in 0..40 {
        let id = format!("race-{round}");
        let token = EnrolmentToken {
            token_hash: format!("{round:064}"),
            tenant: "race".into(),
            connector_group: "corp.example.com".into(),
            created_at: now,
            expires_at: now + 3600,
        };
        store.create_enrolment_token(&token).await.unwrap();
        store
            .enrol_agent(
                &token.token_hash,
                &agent(&id, "race", &format!("r{round}-0")),
                now,
            )
            .await
            .unwrap()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 1..=4u8 {
            let (store, id) = (store.clone(), id.clone());
            tasks.spawn(async move {
                let certificate = AgentCertificate {
                    serial: format!("r{round}-{n}"),
                    not_after: now + 1000,
                    public_key_der: vec![0x30, n],
                    hybrid_public_key: None,
                };
                let outcome = store
                    .renew_agent(
                        &id,
                        &format!("r{round}-0"),
                        &certificate,
                        "0.1.0",
                        now + i64::from(n),
                    )
                    .await
                    .unwrap();
                // The agent switches to what it got, as a real one does.
                if outcome == Renewal::Renewed {
                    store
                        .activate_certificate(&id, &certificate.serial, now + i64::from(n))
                        .await
                        .unwrap();
                }
                Some((n, outcome))
            });
        }
        let (store2, id2) = (store.clone(), id.clone());
        tasks.spawn(async move {
            store2.revoke_agent(&id2, now + 2).await.unwrap();
            None
        });
        let mut outcomes = Vec::new();
        while let Some(result) = tasks.join_next().await {
            outcomes.extend(result.unwrap());
        }
        let record = store.agent(&id).await.unwrap().unwrap();
        assert_eq!(record.revoked_at, Some(now + 2), "round {round}");
        // A renewal the revocation beat recorded nothing; one that won is on record (and
        // revoked with the agent).
        for (n, outcome) in outcomes {
            let standing = store
                .certificate_standing(&format!("r{round}-{n}"))
                .await
                .unwrap();
            match outcome {
                Renewal::Renewed => assert!(standing.unwrap().agent_revoked_at.is_some()),
                Renewal::Revoked | Renewal::Superseded => {
                    assert!(
                        standing.is_none(),
                        "round {round}: refused renewal {n} recorded"
                    )
                }
                Renewal::Unknown => panic!("round {round}: the agent vanished"),
            }
        }
        let after = AgentCertificate {
            serial: format!("r{round}-9"),
            not_after: now + 1000,
            public_key_der: vec![0x30],
            hybrid_public_key: None,
        };
        assert_eq!(
            store
                .renew_agent(&id, &record.cert_serial, &after, "0.1.0", now + 9)
                .await
                .unwrap(),
            Renewal::Revoked
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_contract_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("passage.db").display());
    let kek = KeyEncryptionKey::generate().unwrap();
    let store = open_encrypted(&url, &kek).await;
    assert_eq!(store.backend(), Backend::Sqlite);
    store_contract(&store).await;
    renewal_never_resurrects_a_revoked_agent(&store).await;
    lockout_and_signin_log(&store).await;
    oidc_state(&store, &store).await;
    store.close().await;
    drop(store);
    // The file holds no private key, and nothing a code or refresh token carries, in the
    // clear (though the rows are there).
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        bytes.extend(std::fs::read(entry.path()).unwrap());
    }
    let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(holds(b"kid-third") && holds(b"rt-f1"));
    for marker in [CA_KEY_MARKER, SIGNING_KEY_MARKER, OIDC_PAYLOAD_MARKER] {
        assert!(!holds(marker), "{}", String::from_utf8_lossy(marker));
    }
    // Reopening migrates nothing new and keeps the data.
    let reopened = open_encrypted(&url, &kek).await;
    assert_eq!(reopened.agents(Some("default")).await.unwrap().len(), 3);
    assert_eq!(
        reopened
            .tenant_ca("default")
            .await
            .unwrap()
            .unwrap()
            .key_der
            .expose(),
        CA_KEY_MARKER
    );
    // The file holds tenant CAs and agent records: created 0600, refused when others may read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        drop(reopened);
        let path = dir.path().join("passage.db");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Store::open(&url).await.unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_contract_and_two_replicas_share_it() {
    let server = Postgres::start();
    let url = server.url();
    // Two replicas starting at once: migrations take turns (advisory lock).
    let kek = KeyEncryptionKey::generate().unwrap();
    let (first, second) = tokio::join!(open_encrypted(&url, &kek), open_encrypted(&url, &kek));
    assert_eq!(first.backend(), Backend::Postgres);
    store_contract(&first).await;
    renewal_never_resurrects_a_revoked_agent(&first).await;
    // Two replicas count together.
    lockout_and_signin_log(&second).await;
    oidc_state(&first, &second).await;
    // What one replica wrote, the other reads.
    assert!(
        second
            .certificate_standing("04")
            .await
            .unwrap()
            .unwrap()
            .agent_revoked_at
            .is_some()
    );
    assert_eq!(second.agents(Some("acme")).await.unwrap().len(), 1);
    let dump = server.dump();
    assert!(
        dump.contains("enrolment_tokens"),
        "the dump covers the schema"
    );
    assert!(dump.contains("tenant_cas"), "the dump covers the CAs");
    assert!(
        !dump.contains(&hex(CA_KEY_MARKER)) && !dump.contains("tenant-ca-private-key-marker"),
        "no private key in the clear"
    );
    assert!(
        dump.contains("kid-third") && dump.contains("rt-f1"),
        "the dump covers the OpenID Connect rows"
    );
    for marker in [SIGNING_KEY_MARKER, OIDC_PAYLOAD_MARKER] {
        assert!(
            !dump.contains(&hex(marker)) && !dump.contains(&*String::from_utf8_lossy(marker)),
            "{} in the clear",
            String::from_utf8_lossy(marker)
        );
    }
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = Store::open("mysql://localhost/passage").await.unwrap_err();
    assert!(err.to_string().contains("unsupported store URL"), "{err}");
}

//! A sealed password cannot be replayed, moved to another username, or used after it expires
//! — even by someone who controls the dispatcher and talks to the agent directly.

use std::time::{Duration, SystemTime};

use passage_credentials::Password;
use passage_envelope::{AnswerBinding, PayloadFields, Sealed, SealingKey};
use passage_error_codes::ErrorCode;
use passage_proto::v1::{
    ListAgentKeysRequest, SealedPassword, SealedVerdict, ValidateRequest, ValidationOutcome,
    dispatcher_client::DispatcherClient,
};
use passage_tests::{Cluster, ClusterOptions, slapd::DOMAIN, slapd::default_users};
use prost::Message;
use tonic::transport::Channel;

struct Attacker {
    dispatcher: DispatcherClient<Channel>,
    agent_id: String,
    key: SealingKey,
}

impl Attacker {
    async fn new(cluster: &Cluster) -> Self {
        let channel = Channel::from_shared(cluster.dispatcher.api_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut dispatcher = DispatcherClient::new(channel);
        let keys = dispatcher
            .list_agent_keys(ListAgentKeysRequest {
                tenant: "default".into(),
                connector_group: DOMAIN.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .keys;
        let agent = keys.into_iter().next().expect("one agent");
        // The agent seals with version 2 when it has a hybrid key, as the gateway would.
        let key = if agent.hybrid_public_key.is_empty() {
            SealingKey::from_der(&agent.public_key_der).unwrap()
        } else {
            SealingKey::hybrid(&agent.hybrid_public_key).unwrap()
        };
        Self {
            dispatcher,
            key,
            agent_id: agent.agent_id,
        }
    }

    fn seal(&self, username: &str, password: &str, tenant: &str, not_after: SystemTime) -> Sealed {
        let password = Password::new(password.into()).unwrap();
        self.key
            .seal(&PayloadFields {
                username,
                password: &password,
                new_password: None,
                tenant,
                not_after,
            })
            .unwrap()
    }

    /// Relays `sealed` as the sign-in of `username` and reads the answer (the attacker sealed
    /// the password, so it holds the answer key).
    async fn validate(&self, username: &str, sealed: &Sealed) -> Result<i32, tonic::Status> {
        let response = self
            .dispatcher
            .clone()
            .validate(ValidateRequest {
                tenant: "default".into(),
                connector_group: DOMAIN.into(),
                username: username.into(),
                candidates: vec![SealedPassword {
                    agent_id: self.agent_id.clone(),
                    ciphertext: sealed.ciphertext.clone(),
                }],
                trace: None,
                single_bind: false,
            })
            .await?
            .into_inner();
        let binding = AnswerBinding {
            nonce: &sealed.nonce,
            agent_id: &response.agent_id,
            tenant: "default",
            username,
        };
        let plain = sealed
            .answer_key
            .open(&binding, &response.sealed_answer)
            .expect("the agent's answer opens");
        Ok(SealedVerdict::decode(plain.as_slice()).unwrap().outcome)
    }
}

/// The caller learns only that the agent refused; why (`kind`, an `AgentError` name) is in the
/// dispatcher's log, for operators.
fn assert_refused_for(cluster: &Cluster, status: &tonic::Status, kind: &str) {
    assert_eq!(
        ErrorCode::of(status),
        Some(ErrorCode::AgentRejected),
        "{status:?}"
    );
    assert!(!status.message().contains(kind), "{}", status.message());
    let log = cluster.dispatcher.process.log();
    assert!(
        log.lines()
            .any(|l| l.contains("the agent refused the sealed password")
                && l.contains(&format!("error={kind}"))),
        "no {kind} refusal in the dispatcher's log"
    );
}

fn soon() -> SystemTime {
    SystemTime::now() + Duration::from_secs(30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_ciphertext_cannot_be_replayed() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = default_users().remove(0);
    let attacker = Attacker::new(&cluster).await;
    let captured = attacker.seal(&alice.upn, &alice.password, "default", soon());

    let first = attacker
        .validate(&alice.upn, &captured)
        .await
        .expect("first use");
    assert_eq!(first, ValidationOutcome::Success as i32);
    let binds = cluster.slapd.binds_as(&alice.dn());

    let replay = attacker.validate(&alice.upn, &captured).await.unwrap_err();
    assert_refused_for(&cluster, &replay, "Replayed");
    assert_eq!(
        cluster.slapd.binds_as(&alice.dn()),
        binds,
        "a replay never reaches the directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_cannot_be_moved_to_another_username_tenant_or_time() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let users = default_users();
    let (alice, bob) = (&users[0], &users[1]);
    let attacker = Attacker::new(&cluster).await;

    // Alice's password sealed for alice, presented as bob's sign-in.
    let swapped = attacker.seal(&alice.upn, &alice.password, "default", soon());
    let status = attacker.validate(&bob.upn, &swapped).await.unwrap_err();
    assert_refused_for(&cluster, &status, "UsernameMismatch");

    let other_tenant = attacker.seal(&alice.upn, &alice.password, "another-tenant", soon());
    let status = attacker
        .validate(&alice.upn, &other_tenant)
        .await
        .unwrap_err();
    assert_refused_for(&cluster, &status, "WrongTenant");

    let expired = attacker.seal(
        &alice.upn,
        &alice.password,
        "default",
        SystemTime::now() - Duration::from_secs(1),
    );
    let status = attacker.validate(&alice.upn, &expired).await.unwrap_err();
    assert_refused_for(&cluster, &status, "Expired");

    let mut tampered = attacker.seal(&alice.upn, &alice.password, "default", soon());
    let last = tampered.ciphertext.len() - 1;
    tampered.ciphertext[last] ^= 1;
    let status = attacker.validate(&alice.upn, &tampered).await.unwrap_err();
    assert_refused_for(&cluster, &status, "DecryptFailed");

    for user in [alice, bob] {
        assert_eq!(
            cluster.slapd.binds_as(&user.dn()),
            0,
            "nothing refused reached the directory"
        );
    }
}

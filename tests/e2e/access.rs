//! Conditional access and MFA end to end, against a real slapd: policies that block, require
//! MFA or only report; a full TOTP sign-in with codes computed from the enrolled secret; code
//! replay, recovery codes, five wrong codes; a bad policy file refused while the old one stays
//! active; hot reload; the sign-in log; no secret or code in any log or the store.

use passage_error_codes::ErrorCode;
use passage_mfa::TotpSecret;
use passage_proto::v1::{CompleteMfaRequest, CompleteMfaResponse, SignInRequest, SignInResponse};
use passage_store::{KeyEncryptionKey, KeyProtection, Store};
use passage_tests::{
    Cluster, ClusterOptions, bins::run_to_end, cluster::CLIENT_ID, signin_log::logged,
    slapd::default_users,
};

const HOME: &str = "203.0.113.7";

/// Admins need MFA (outside nothing: everywhere); bob is blocked by a report-only policy that
/// never enforces; `legacy-app` would be blocked.
const MFA_POLICIES: &str = "\
named_networks:
  - name: offices
    trusted: true
    cidrs: [203.0.113.0/24]
policies:
  - name: mfa-for-admins
    conditions:
      groups: { include: [admins] }
    grant: require_mfa
    session: { token_lifetime_s: 600 }
  - name: trial-block-bob
    state: report_only
    conditions:
      users: { include: [bob@corp.example.com] }
    grant: block
";

async fn mfa_cluster(policies: &str, extra: &str) -> (Cluster, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("policies.yaml");
    std::fs::write(&path, policies).unwrap();
    let cluster = Cluster::start_enrolled(ClusterOptions {
        gateway_config: format!(
            "policies_file = \"{}\"\npolicies_reload_s = 1\n{extra}",
            path.display()
        ),
        gateway_store_key: true,
        debug_logs: true,
        trace_export: true,
        ..ClusterOptions::default()
    })
    .await;
    (cluster, files)
}

async fn sign_in(
    cluster: &Cluster,
    username: &str,
    password: &str,
) -> Result<SignInResponse, tonic::Status> {
    cluster
        .gateway_client()
        .sign_in(SignInRequest {
            username: username.into(),
            password: password.into(),
            client_id: CLIENT_ID.into(),
            client_ip: HOME.into(),
            offline_access: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn complete(
    cluster: &Cluster,
    challenge: &str,
    code: &str,
    client_ip: &str,
) -> Result<CompleteMfaResponse, tonic::Status> {
    cluster
        .gateway_client()
        .complete_mfa(CompleteMfaRequest {
            mfa_challenge: challenge.into(),
            code: code.into(),
            client_id: CLIENT_ID.into(),
            client_ip: client_ip.into(),
            offline_access: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn code_of(status: &tonic::Status) -> Option<ErrorCode> {
    ErrorCode::of(status)
}

/// `passage mfa ARGS...` against the cluster's store.
fn mfa(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    cluster.store_cli("mfa", args)
}

/// The store, opened with the key the TOTP secrets are sealed with.
async fn store(cluster: &Cluster) -> Store {
    Store::open(&cluster.store_url())
        .await
        .unwrap()
        .with_key_protection(KeyProtection::Encrypted(
            KeyEncryptionKey::from_file(std::path::Path::new(&cluster.store_key_file())).unwrap(),
        ))
}

/// Whether `needle` stands in `haystack` with no letter or digit right before or after it.
fn contains_word(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .enumerate()
        .any(|(at, window)| {
            window == needle
                && (at == 0 || !haystack[at - 1].is_ascii_alphanumeric())
                && haystack
                    .get(at + needle.len())
                    .is_none_or(|b| !b.is_ascii_alphanumeric())
        })
}

/// Enrols `upn` with `passage mfa enrol` and `confirm`, reading the secret the way only the
/// test can (from the store, with its key): the secret, the code that confirmed it, and the
/// recovery codes printed.
async fn enrol(cluster: &Cluster, store: &Store, upn: &str) -> (TotpSecret, String, Vec<String>) {
    let (ok, stdout, stderr) = mfa(cluster, &["enrol", "--user", upn, "--issuer", "Corp"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("otpauth://totp/Corp:"), "{stdout}");
    let enrolment = store
        .mfa_enrolment("default", &upn.to_lowercase())
        .await
        .unwrap()
        .expect("pending enrolment");
    assert!(enrolment.confirmed_at.is_none());
    let secret = TotpSecret::from_bytes(enrolment.secret.expose().to_vec()).unwrap();
    assert!(
        stdout.contains(&secret.base32()),
        "the URI carries the secret"
    );
    let first = passage_mfa::totp_code(&secret, now());
    let (ok, stdout, stderr) = mfa(cluster, &["confirm", "--user", upn, "--code", &first]);
    assert!(ok, "{stderr}");
    let recovery: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| passage_mfa::looks_like_recovery_code(l))
        .map(str::to_owned)
        .collect();
    assert_eq!(recovery.len(), 10, "{stdout}");
    (secret, first, recovery)
}

fn now() -> u64 {
    passage_pki::unix_now() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mfa_sign_in_with_replay_recovery_codes_and_wrong_codes() {
    let (cluster, _files) = mfa_cluster(MFA_POLICIES, "").await;
    let alice = default_users().remove(0);
    let bob = default_users().remove(1);

    // Not enrolled: a clear, coded answer.
    let status = sign_in(&cluster, &alice.upn, &alice.password)
        .await
        .expect_err("no authenticator yet");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaNotEnrolled));

    // The administrator enrols alice; the test computes codes from the enrolled secret.
    let store = store(&cluster).await;
    let (secret, first, recovery) = enrol(&cluster, &store, &alice.upn).await;

    // The password alone now yields a challenge, no tokens.
    let challenged = sign_in(&cluster, &alice.upn, &alice.password)
        .await
        .expect("a challenge");
    assert!(challenged.access_token.is_empty() && challenged.id_token.is_empty());
    assert!(!challenged.mfa_challenge.is_empty());
    assert_eq!(challenged.mfa_challenge_expires_in, 300);

    // A wrong code; then the confirmation code again (already used: refused); then the next
    // step's code (within the ±1 step the gateway accepts), which issues the tokens.
    let status = complete(&cluster, &challenged.mfa_challenge, "000000", HOME)
        .await
        .expect_err("wrong code");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaCodeInvalid));
    let status = complete(&cluster, &challenged.mfa_challenge, &first, HOME)
        .await
        .expect_err("a code accepted once is refused the second time");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaCodeInvalid));
    let next = passage_mfa::totp_code(&secret, now() + 30);
    // Another client address cannot use alice's challenge.
    let status = complete(&cluster, &challenged.mfa_challenge, &next, "198.51.100.9")
        .await
        .expect_err("bound to the client IP");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaChallengeInvalid));
    let tokens = complete(&cluster, &challenged.mfa_challenge, &next, HOME)
        .await
        .expect("the right code");
    assert_eq!(tokens.expires_in, 600, "the policy's token lifetime");
    let jwks = passage_gateway::client::fetch_jwks(
        &cluster.gateway.issuer,
        Some(&cluster.services_ca_file()),
    )
    .await
    .unwrap();
    let claims = passage_tokens::verify_access_token(
        &tokens.access_token,
        &jwks,
        &cluster.gateway.issuer,
        CLIENT_ID,
    )
    .unwrap();
    assert_eq!(claims.amr, ["pwd", "otp"]);
    assert_eq!(claims.acr, passage_tokens::ACR_MFA);
    assert_eq!(claims.upn, alice.upn);
    // The challenge cannot be used again.
    let status = complete(&cluster, &challenged.mfa_challenge, &next, HOME)
        .await
        .expect_err("used");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaChallengeInvalid));

    // The same code on a new challenge: replay, refused.
    let again = sign_in(&cluster, &alice.upn, &alice.password)
        .await
        .unwrap();
    let status = complete(&cluster, &again.mfa_challenge, &next, HOME)
        .await
        .expect_err("replayed code");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaCodeInvalid));
    // A recovery code works, once.
    let tokens = complete(&cluster, &again.mfa_challenge, &recovery[0], HOME)
        .await
        .expect("a recovery code");
    let claims = passage_tokens::verify_id_token(
        &tokens.id_token,
        &jwks,
        &cluster.gateway.issuer,
        CLIENT_ID,
    )
    .unwrap();
    assert_eq!(claims.amr, ["pwd", "mfa"]);
    let third = sign_in(&cluster, &alice.upn, &alice.password)
        .await
        .unwrap();
    let status = complete(&cluster, &third.mfa_challenge, &recovery[0], HOME)
        .await
        .expect_err("a recovery code works once");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaCodeInvalid));

    // Five wrong codes end the challenge (this one had one already): even a right code is
    // refused afterwards.
    for n in 0..3 {
        let status = complete(&cluster, &third.mfa_challenge, &format!("12345{n}"), HOME)
            .await
            .expect_err("wrong");
        assert_eq!(
            code_of(&status),
            Some(ErrorCode::MfaCodeInvalid),
            "wrong code {n}"
        );
    }
    let status = complete(&cluster, &third.mfa_challenge, "123459", HOME)
        .await
        .expect_err("fifth wrong code");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaChallengeEnded));
    let status = complete(
        &cluster,
        &third.mfa_challenge,
        &passage_mfa::totp_code(&secret, now() + 60),
        HOME,
    )
    .await
    .expect_err("ended");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaChallengeEnded));

    // bob is not an admin: allowed with the password alone; the report-only policy would have
    // blocked him, and says so in the log without enforcing it.
    let bob_tokens = sign_in(&cluster, &bob.upn, &bob.password)
        .await
        .expect("report-only never enforces");
    let claims = passage_tokens::verify_id_token(
        &bob_tokens.id_token,
        &jwks,
        &cluster.gateway.issuer,
        CLIENT_ID,
    )
    .unwrap();
    assert_eq!(claims.amr, ["pwd"]);
    assert_eq!(claims.acr, passage_tokens::ACR_PASSWORD);

    // The sign-in log: policies applied and what MFA did, for every attempt.
    // (The reuse of a completed challenge names no user: a used handle is not looked into.)
    let log = logged(&store, &alice.upn, 16).await;
    let mfa_words: Vec<&str> = log.iter().rev().map(|e| e.mfa.as_str()).collect();
    assert_eq!(
        mfa_words,
        [
            "not_enrolled",
            "required",
            "wrong_code",
            "wrong_code",
            "other_client",
            "otp",
            "required",
            "wrong_code",
            "recovery_code",
            "required",
            "wrong_code",
            "wrong_code",
            "wrong_code",
            "wrong_code",
            "challenge_ended",
            "challenge_ended",
        ],
        "{log:#?}"
    );
    assert!(
        log.iter()
            .all(|e| e.policies.contains("require_mfa by mfa-for-admins")),
        "{log:#?}"
    );
    let outcomes: Vec<&str> = log.iter().rev().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes[1], "interrupted");
    let bob_log = logged(&store, &bob.upn, 1).await;
    assert!(
        bob_log[0]
            .policies
            .contains("report-only: trial-block-bob would block"),
        "{:?}",
        bob_log[0].policies
    );

    // Status and reset for administrators.
    let (ok, stdout, _) = mfa(&cluster, &["status", "--user", &alice.upn]);
    assert!(
        ok && stdout.contains("confirmed") && stdout.contains("9 recovery codes left"),
        "{stdout}"
    );

    // No TOTP secret or code anywhere: logs (at debug), stdout, the exported traces (once the
    // gateway's complete_mfa spans are there), the store's files. A code is six digits, so it
    // is looked for as a whole word (a timestamp's microseconds are not).
    let collector = cluster.collector.as_ref().expect("trace export is on");
    collector
        .wait_for(std::time::Duration::from_secs(15), |spans| {
            spans
                .iter()
                .filter(|s| s.service == "passage-gateway" && s.name == "complete_mfa")
                .count()
                >= 12
        })
        .await;
    let mut outputs = cluster.gateway.process.output();
    outputs.push_str(&cluster.dispatcher.process.output());
    outputs.push_str(&collector.dump());
    let store_bytes = cluster.sqlite_store_bytes();
    for secret_text in [
        secret.base32(),
        next.clone(),
        first.clone(),
        recovery[0].clone(),
    ] {
        assert!(
            !contains_word(outputs.as_bytes(), secret_text.as_bytes()),
            "{secret_text} in a log"
        );
        assert!(
            !contains_word(&store_bytes, secret_text.as_bytes()),
            "a secret or code in the store"
        );
    }
    assert!(
        !store_bytes
            .windows(secret.expose_bytes().len())
            .any(|w| w == secret.expose_bytes()),
        "the raw TOTP secret in the store"
    );

    let (ok, _, stderr) = mfa(&cluster, &["reset", "--user", &alice.upn]);
    assert!(ok, "{stderr}");
    let (ok, stdout, _) = mfa(&cluster, &["status", "--user", &alice.upn]);
    assert!(ok && stdout.contains("no authenticator"), "{stdout}");
}

const BLOCK_BOB: &str = "\
policies:
  - name: block-bob
    conditions:
      users: { include: [bob@corp.example.com] }
    grant: block
";

/// Waits until the gateway's log says `policy_set` is active.
async fn wait_for_policy_set(cluster: &Cluster, hash: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !cluster
        .gateway
        .process
        .log()
        .lines()
        .any(|l| l.contains("conditional access policy set active") && l.contains(hash))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{hash} never became active"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_block_reload_without_restart_and_refuse_bad_files() {
    let (token, hash) = passage_gateway::admin::new_token().unwrap();
    let (cluster, files) =
        mfa_cluster(BLOCK_BOB, &format!("admin_token_sha256 = [\"{hash}\"]\n")).await;
    let path = files.path().join("policies.yaml");
    let (alice, bob) = (default_users().remove(0), default_users().remove(1));
    let status = sign_in(&cluster, &bob.upn, &bob.password)
        .await
        .expect_err("blocked");
    assert_eq!(code_of(&status), Some(ErrorCode::BlockedByPolicy));
    assert!(
        !status.message().contains("block-bob"),
        "no policy internals: {status:?}"
    );
    sign_in(&cluster, &alice.upn, &alice.password)
        .await
        .expect("alice is not blocked");

    // A file with a syntax error: refused with file, line and column; the old set stays.
    std::fs::write(
        &path,
        "policies:\n  - name: broken: yes\n    grant: block\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let refused = loop {
        if let Some(line) = cluster
            .gateway
            .process
            .log()
            .lines()
            .find(|l| l.contains("conditional access policy file refused"))
        {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bad file went unnoticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // "broken: yes" on line 2 opens a mapping where a value belongs, at column 17.
    assert!(
        refused.contains(&format!("{}:2:17:", path.display())),
        "file, line and column: {refused}"
    );
    let status = sign_in(&cluster, &bob.upn, &bob.password)
        .await
        .expect_err("the previous set stays active");
    assert_eq!(code_of(&status), Some(ErrorCode::BlockedByPolicy));

    // A valid change takes effect without a restart.
    let unblocked = "policies:\n  - name: block-legacy\n    conditions:\n      applications: { include: [legacy-app] }\n    grant: block\n";
    std::fs::write(&path, unblocked).unwrap();
    let expected = passage_policy::PolicySet::parse(unblocked, "x")
        .unwrap()
        .content_hash()
        .to_owned();
    wait_for_policy_set(&cluster, &expected).await;
    sign_in(&cluster, &bob.upn, &bob.password)
        .await
        .expect("no longer blocked");

    // What-if from the command line against a file, and through the gateway's admin API.
    let (ok, stdout, stderr) = run_to_end(
        "passage",
        &[
            "policy",
            "what-if",
            "--policies",
            path.to_str().unwrap(),
            "--user",
            &bob.upn,
            "--groups",
            "staff",
            "--app",
            "legacy-app",
            "--ip",
            "198.51.100.9",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("[applies] block-legacy"), "{stdout}");
    assert!(stdout.trim_end().ends_with("result: block"), "{stdout}");
    let token_file = files.path().join("admin-token");
    passage_credentials::secret_file::write_new(&token_file, token.as_bytes()).unwrap();
    let (ok, stdout, stderr) = run_to_end(
        "passage",
        &[
            "admin",
            "what-if",
            "--gateway",
            &cluster.gateway.grpc_url,
            "--ca-file",
            cluster.services_ca_file().to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--user",
            &bob.upn,
            "--app",
            CLIENT_ID,
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&expected), "the set in force: {stdout}");
    assert!(stdout.contains("[ -- ] block-legacy"), "{stdout}");
    assert!(stdout.trim_end().ends_with("result: allow"), "{stdout}");

    // A gateway does not start with a bad policy file, and says where it is bad.
    std::fs::write(&path, "policies:\n  - name: x\n    grant: maybe\n").unwrap();
    let config = cluster.dir().join("gateway.toml");
    let (ok, _, stderr) = run_to_end("passage-gateway", &["--config", config.to_str().unwrap()]);
    assert!(!ok, "started with a bad policy file");
    assert!(
        stderr.contains(&format!("{}:3:12:", path.display())),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_becomes_familiar_only_once_the_second_factor_is_done() {
    let policies = "\
policies:
  - name: mfa-when-unfamiliar
    conditions:
      unfamiliar_location: true
    grant: require_mfa
";
    let (cluster, _files) = mfa_cluster(policies, "").await;
    let bob = default_users().remove(1);
    let store = store(&cluster).await;
    let (secret, _, _) = enrol(&cluster, &store, &bob.upn).await;
    // The first sign-in from HOME is from an unfamiliar network: a challenge. The right
    // password alone must not make HOME familiar, or the next attempt would skip the MFA.
    let first = sign_in(&cluster, &bob.upn, &bob.password).await.unwrap();
    assert!(!first.mfa_challenge.is_empty());
    let second = sign_in(&cluster, &bob.upn, &bob.password).await.unwrap();
    assert!(
        !second.mfa_challenge.is_empty() && second.access_token.is_empty(),
        "still unfamiliar until the second factor is done"
    );
    let tokens = complete(
        &cluster,
        &second.mfa_challenge,
        &passage_mfa::totp_code(&secret, now() + 30),
        HOME,
    )
    .await
    .expect("the right code");
    assert!(!tokens.access_token.is_empty());
    // Now HOME is familiar: the password is enough there, and only there.
    let third = sign_in(&cluster, &bob.upn, &bob.password).await.unwrap();
    assert!(third.mfa_challenge.is_empty() && !third.access_token.is_empty());
    let elsewhere = cluster
        .gateway_client()
        .sign_in(SignInRequest {
            username: bob.upn.clone(),
            password: bob.password.clone(),
            client_id: CLIENT_ID.into(),
            client_ip: "198.51.100.9".into(),
            offline_access: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!elsewhere.mfa_challenge.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_across_challenges_make_mfa_wait() {
    let (cluster, _files) = mfa_cluster(MFA_POLICIES, "").await;
    let alice = default_users().remove(0);
    let store = store(&cluster).await;
    enrol(&cluster, &store, &alice.upn).await;
    // Two challenges of five wrong codes each: ten for the user.
    for round in 0..2 {
        let challenge = sign_in(&cluster, &alice.upn, &alice.password)
            .await
            .unwrap()
            .mfa_challenge;
        for n in 0..5 {
            let status = complete(&cluster, &challenge, &format!("99999{n}"), HOME)
                .await
                .expect_err("wrong");
            let expected = if n == 4 {
                ErrorCode::MfaChallengeEnded
            } else {
                ErrorCode::MfaCodeInvalid
            };
            assert_eq!(code_of(&status), Some(expected), "round {round}, code {n}");
        }
    }
    // No new challenge for now, whoever holds the password.
    let status = sign_in(&cluster, &alice.upn, &alice.password)
        .await
        .expect_err("MFA waits");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaLocked));
    let log = logged(&store, &alice.upn, 13).await;
    assert_eq!(log[0].mfa, "locked", "{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_without_an_authenticator_may_start_from_a_trusted_network_when_allowed() {
    let (cluster, _files) = mfa_cluster(
        MFA_POLICIES,
        "mfa = { allow_unenrolled_from_trusted_networks = true }\n",
    )
    .await;
    let alice = default_users().remove(0);
    // From the office (a trusted named network): the password alone, and the log says why.
    let tokens = sign_in(&cluster, &alice.upn, &alice.password)
        .await
        .expect("from a trusted network");
    assert!(tokens.mfa_challenge.is_empty() && !tokens.id_token.is_empty());
    // From anywhere else: still refused with the coded answer.
    let status = cluster
        .gateway_client()
        .sign_in(SignInRequest {
            username: alice.upn.clone(),
            password: alice.password.clone(),
            client_id: CLIENT_ID.into(),
            client_ip: "198.51.100.9".into(),
            offline_access: false,
        })
        .await
        .expect_err("not from a trusted network");
    assert_eq!(code_of(&status), Some(ErrorCode::MfaNotEnrolled));
    let store = store(&cluster).await;
    let log = logged(&store, &alice.upn, 2).await;
    let words: Vec<&str> = log.iter().rev().map(|e| e.mfa.as_str()).collect();
    assert_eq!(words, ["not_enrolled_trusted_network", "not_enrolled"]);
}

use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;

fn key() -> &'static AgentKey {
    static KEY: OnceLock<AgentKey> = OnceLock::new();
    KEY.get_or_init(|| AgentKey::generate(RsaBits::Rsa2048).unwrap())
}

fn seal_for(key: &AgentKey, username: &str, password: &str, not_after: SystemTime) -> Vec<u8> {
    let password = Password::new(password.into()).unwrap();
    SealingKey::from_der(key.public_key_der())
        .unwrap()
        .seal(&PayloadFields {
            username,
            password: &password,
            new_password: None,
            tenant: "default",
            not_after,
        })
        .unwrap()
        .ciphertext
}

fn soon() -> SystemTime {
    SystemTime::now() + Duration::from_secs(30)
}

#[test]
fn round_trip() {
    let envelope = seal_for(key(), "alice@corp.example.com", "S3cret!", soon());
    let opened = key().open(&envelope).unwrap();
    assert_eq!(opened.username, "alice@corp.example.com");
    assert_eq!(opened.password.expose(), "S3cret!");
    assert_eq!(opened.tenant, "default");
    let guard = ReplayGuard::default();
    opened
        .check(
            "alice@corp.example.com",
            "default",
            SystemTime::now(),
            &guard,
        )
        .unwrap();
}

#[test]
fn envelope_never_contains_the_password() {
    let envelope = seal_for(key(), "alice@corp.example.com", "VeryDistinctive", soon());
    assert!(
        !envelope
            .windows(b"VeryDistinctive".len())
            .any(|w| w == b"VeryDistinctive")
    );
}

#[test]
fn replay_is_refused() {
    let envelope = seal_for(key(), "alice@corp.example.com", "pw", soon());
    let guard = ReplayGuard::default();
    let now = SystemTime::now();
    let first = key().open(&envelope).unwrap();
    first
        .check("alice@corp.example.com", "default", now, &guard)
        .unwrap();
    let again = key().open(&envelope).unwrap();
    assert_eq!(
        again.check("alice@corp.example.com", "default", now, &guard),
        Err(EnvelopeError::Replayed)
    );
}

#[test]
fn swapped_username_is_refused() {
    let envelope = seal_for(key(), "alice@corp.example.com", "pw", soon());
    let opened = key().open(&envelope).unwrap();
    assert_eq!(
        opened.check(
            "bob@corp.example.com",
            "default",
            SystemTime::now(),
            &ReplayGuard::default()
        ),
        Err(EnvelopeError::UsernameMismatch)
    );
}

#[test]
fn other_tenant_is_refused() {
    let envelope = seal_for(key(), "alice@corp.example.com", "pw", soon());
    let opened = key().open(&envelope).unwrap();
    assert_eq!(
        opened.check(
            "alice@corp.example.com",
            "other",
            SystemTime::now(),
            &ReplayGuard::default()
        ),
        Err(EnvelopeError::WrongTenant)
    );
}

#[test]
fn expired_and_far_future_envelopes_are_refused() {
    let guard = ReplayGuard::new(Duration::from_secs(60), 10);
    let past = seal_for(
        key(),
        "a@b.c",
        "pw",
        SystemTime::now() - Duration::from_secs(1),
    );
    let opened = key().open(&past).unwrap();
    assert_eq!(
        opened.check("a@b.c", "default", SystemTime::now(), &guard),
        Err(EnvelopeError::Expired)
    );
    let far = seal_for(
        key(),
        "a@b.c",
        "pw",
        SystemTime::now() + Duration::from_secs(3600),
    );
    let opened = key().open(&far).unwrap();
    assert_eq!(
        opened.check("a@b.c", "default", SystemTime::now(), &guard),
        Err(EnvelopeError::Expired)
    );
}

#[test]
fn another_agents_key_cannot_open() {
    let other = AgentKey::generate(RsaBits::Rsa2048).unwrap();
    let envelope = seal_for(&other, "a@b.c", "pw", soon());
    assert_eq!(
        key().open(&envelope).unwrap_err(),
        EnvelopeError::DecryptFailed
    );
}

#[test]
fn private_key_round_trips_through_pkcs8() {
    let reloaded = AgentKey::from_pkcs8_der(key().pkcs8_der().expose()).unwrap();
    assert_eq!(reloaded.public_key_der(), key().public_key_der());
    assert!(!format!("{reloaded:?}").contains("MII"));
}

#[test]
fn replay_guard_fails_closed_when_full() {
    let guard = ReplayGuard::new(Duration::from_secs(60), 2);
    let now = SystemTime::now();
    let later = now + Duration::from_secs(30);
    guard.record([1; NONCE_LEN], later, now).unwrap();
    guard.record([2; NONCE_LEN], later, now).unwrap();
    assert_eq!(
        guard.record([3; NONCE_LEN], later, now),
        Err(EnvelopeError::Replayed)
    );
    // Once the old entries expire there is room again.
    let after = later + Duration::from_secs(1);
    guard
        .record([3; NONCE_LEN], after + Duration::from_secs(5), after)
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tampered_envelopes_never_open(index in 0usize..400, flip in 1u8..=255) {
        let mut envelope = seal_for(key(), "alice@corp.example.com", "pw", soon());
        let index = index % envelope.len();
        envelope[index] ^= flip;
        prop_assert!(key().open(&envelope).is_err());
    }

    #[test]
    fn garbage_never_opens(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(key().open(&bytes).is_err());
    }

    /// Past the header checks: version 1 and the key's own wrapped-key length, then anything.
    #[test]
    fn well_framed_garbage_never_opens(body in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut envelope = vec![VERSION, 0x01, 0x00];
        envelope.extend(body);
        prop_assert!(key().open(&envelope).is_err());
    }
}

fn hybrid_key() -> &'static AgentKey {
    static KEY: OnceLock<AgentKey> = OnceLock::new();
    KEY.get_or_init(|| {
        AgentKey::generate(RsaBits::Rsa2048)
            .unwrap()
            .with_hybrid(HybridKey::generate().unwrap())
    })
}

fn fields<'a>(username: &'a str, password: &'a Password) -> PayloadFields<'a> {
    PayloadFields {
        username,
        password,
        new_password: None,
        tenant: "default",
        not_after: soon(),
    }
}

#[test]
fn version_2_round_trips_and_derives_the_same_answer_key() {
    let agent = hybrid_key();
    let public = agent.hybrid().unwrap().public().as_bytes().to_vec();
    let sealing = SealingKey::hybrid(&public).unwrap();
    assert_eq!(sealing.version(), 2);
    let password = Password::new("Hybrid-S3cret!".into()).unwrap();
    let sealed = sealing
        .seal(&fields("alice@corp.example.com", &password))
        .unwrap();
    assert_eq!(sealed.ciphertext[0], 2);
    assert!(
        !sealed
            .ciphertext
            .windows(b"Hybrid-S3cret!".len())
            .any(|w| w == b"Hybrid-S3cret!")
    );
    let opened = agent.open(&sealed.ciphertext).unwrap();
    assert_eq!(opened.password.expose(), "Hybrid-S3cret!");
    assert_eq!(opened.nonce, sealed.nonce);
    let binding = AnswerBinding {
        nonce: &opened.nonce,
        agent_id: "agent-1",
        tenant: "default",
        username: "alice@corp.example.com",
    };
    let answer = opened.answer_key.seal(&binding, b"SUCCESS alice").unwrap();
    assert_eq!(
        sealed.answer_key.open(&binding, &answer).unwrap(),
        b"SUCCESS alice"
    );
    // The same agent still opens version 1, and an agent without a hybrid key refuses v2.
    let v1 = SealingKey::from_der(agent.public_key_der())
        .unwrap()
        .seal(&fields("alice@corp.example.com", &password))
        .unwrap();
    assert_eq!(
        agent.open(&v1.ciphertext).unwrap().password.expose(),
        "Hybrid-S3cret!"
    );
    assert_eq!(
        key().open(&sealed.ciphertext).unwrap_err(),
        EnvelopeError::DecryptFailed
    );
}

#[test]
fn an_answer_opens_only_for_its_own_sign_in() {
    let password = Password::new("pw".into()).unwrap();
    let seal = || {
        SealingKey::from_der(key().public_key_der())
            .unwrap()
            .seal(&fields("alice@corp.example.com", &password))
            .unwrap()
    };
    let (first, second) = (seal(), seal());
    let opened = key().open(&first.ciphertext).unwrap();
    let binding = AnswerBinding {
        nonce: &first.nonce,
        agent_id: "agent-1",
        tenant: "default",
        username: "alice@corp.example.com",
    };
    let answer = opened.answer_key.seal(&binding, b"verdict").unwrap();
    assert_eq!(
        first.answer_key.open(&binding, &answer).unwrap(),
        b"verdict"
    );
    // Another sign-in's key (a replayed or swapped answer) does not open it...
    assert_eq!(
        second.answer_key.open(&binding, &answer).unwrap_err(),
        EnvelopeError::BadAnswer
    );
    // ...nor does another binding: another agent, tenant, username or nonce.
    for other in [
        AnswerBinding {
            agent_id: "agent-2",
            ..binding
        },
        AnswerBinding {
            tenant: "acme",
            ..binding
        },
        AnswerBinding {
            username: "bob@corp.example.com",
            ..binding
        },
        AnswerBinding {
            nonce: &second.nonce,
            ..binding
        },
    ] {
        assert!(first.answer_key.open(&other, &answer).is_err());
    }
    let mut tampered = answer.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(first.answer_key.open(&binding, &tampered).is_err());
    assert!(first.answer_key.open(&binding, &answer[..10]).is_err());
    assert_eq!(format!("{:?}", first.answer_key), "AnswerKey([redacted])");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Past the version 2 header: anything after it is refused, never a panic.
    #[test]
    fn version_2_garbage_never_opens(body in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let mut envelope = vec![2u8];
        envelope.extend(body);
        prop_assert!(hybrid_key().open(&envelope).is_err());
    }

    #[test]
    fn tampered_version_2_envelopes_never_open(index in 0usize..2000, flip in 1u8..=255) {
        let password = Password::new("pw".into()).unwrap();
        let public = hybrid_key().hybrid().unwrap().public().as_bytes().to_vec();
        let mut envelope = SealingKey::hybrid(&public)
            .unwrap()
            .seal(&fields("alice@corp.example.com", &password))
            .unwrap()
            .ciphertext;
        let index = index % envelope.len();
        envelope[index] ^= flip;
        prop_assert!(hybrid_key().open(&envelope).is_err());
    }

    #[test]
    fn answers_never_open_from_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let password = Password::new("pw".into()).unwrap();
        let sealed = SealingKey::from_der(key().public_key_der())
            .unwrap()
            .seal(&fields("alice@corp.example.com", &password))
            .unwrap();
        let binding = AnswerBinding {
            nonce: &sealed.nonce,
            agent_id: "a",
            tenant: "default",
            username: "alice@corp.example.com",
        };
        prop_assert!(sealed.answer_key.open(&binding, &bytes).is_err());
    }
}

#[test]
fn a_new_password_travels_sealed_with_the_old_one() {
    let key = key();
    let old = Password::new("Old-Pass-1!".into()).unwrap();
    let new = Password::new("New-Pass-2!".into()).unwrap();
    let sealed = SealingKey::from_der(key.public_key_der())
        .unwrap()
        .seal(&PayloadFields {
            new_password: Some(&new),
            ..fields("alice@corp.example.com", &old)
        })
        .unwrap();
    assert!(
        !sealed.ciphertext.windows(11).any(|w| w == b"New-Pass-2!"),
        "not in the clear"
    );
    let opened = key.open(&sealed.ciphertext).unwrap();
    assert_eq!(opened.password.expose(), "Old-Pass-1!");
    assert_eq!(opened.new_password.unwrap().expose(), "New-Pass-2!");
    let plain = key
        .open(
            &SealingKey::from_der(key.public_key_der())
                .unwrap()
                .seal(&fields("alice@corp.example.com", &old))
                .unwrap()
                .ciphertext,
        )
        .unwrap();
    assert!(plain.new_password.is_none(), "a sign-in carries none");
}

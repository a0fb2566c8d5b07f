//! The hostile-input suite: over a thousand generated inputs against a running cluster with
//! TLS on every hop — LDAP filter and DN metacharacters, NUL and control characters, invisible
//! Unicode, over-long and empty fields, malformed client ids and IPs, random and truncated
//! ciphertexts, tampered envelopes, requests for another tenant.
//!
//! Zero successes; every answer a documented Passage code; no process panics or dies; and the
//! directory never receives a bind as any real user (no input names one).

use std::{collections::BTreeMap, time::SystemTime};

use passage_credentials::Password;
use passage_envelope::{PayloadFields, SealingKey};
use passage_error_codes::ErrorCode;
use passage_proto::v1::{
    ListAgentKeysRequest, SealedPassword, SignInRequest, ValidateRequest,
    dispatcher_client::DispatcherClient,
};
use passage_tests::{
    Cluster, ClusterOptions,
    cluster::CLIENT_ID,
    slapd::{ADMIN_DN, DOMAIN, default_users},
};
use tonic::transport::Channel;

/// A small deterministic generator (xorshift), so a failure names inputs that can be replayed.
struct Inputs(u64);

impl Inputs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// A string of `len` characters drawn from `alphabet`.
    fn string(&mut self, alphabet: &[char], len: usize) -> String {
        (0..len).map(|_| *self.pick(alphabet)).collect()
    }
}

/// What every answer must be: a refusal carrying a documented code.
#[derive(Default)]
struct Tally {
    by_class: BTreeMap<&'static str, usize>,
    codes: BTreeMap<&'static str, usize>,
    successes: Vec<String>,
    undocumented: Vec<String>,
}

impl Tally {
    fn record<T>(&mut self, class: &'static str, input: &str, result: Result<T, tonic::Status>) {
        *self.by_class.entry(class).or_default() += 1;
        match result {
            Ok(_) => self.successes.push(format!("{class}: {input:?}")),
            Err(status) => match ErrorCode::of(&status) {
                Some(code) if ErrorCode::ALL.contains(&code) => {
                    *self.codes.entry(code.as_str()).or_default() += 1;
                }
                _ => self
                    .undocumented
                    .push(format!("{class}: {input:?} -> {status:?}")),
            },
        }
    }

    fn total(&self) -> usize {
        self.by_class.values().sum()
    }
}

fn sign_in(username: String, password: String, client_id: &str, client_ip: &str) -> SignInRequest {
    SignInRequest {
        username,
        password,
        client_id: client_id.into(),
        client_ip: client_ip.into(),
        offline_access: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_inputs_sign_nobody_in_and_crash_nothing() {
    let mut cluster = Cluster::start_enrolled(ClusterOptions {
        ..ClusterOptions::default()
    })
    .await;
    cluster.enrol_agent_for("acme", false).await;
    let users = default_users();
    let alice = &users[0];
    let gateway = cluster.gateway_client();
    let mut inputs = Inputs(0x5eed_1234_abcd_0042);
    let mut tally = Tally::default();

    let with_password =
        |username: &str| sign_in(username.to_owned(), alice.password.clone(), CLIENT_ID, "");

    // 1. LDAP filter and DN metacharacters, with a real user's password: the escaped filter
    //    matches nobody, so every one is "invalid credentials".
    let meta = [
        '*', '(', ')', '\\', ',', '=', '+', '<', '>', '#', ';', '"', '|', '&', '!', '~', 'a', 'l',
        'i', 'c', 'e', '0',
    ];
    let shapes = [
        "*",
        "alice*",
        "*)(uid=*",
        "alice)(|(uid=*",
        "*)(objectClass=*",
        "admin*)((|userPassword=*",
        "uid=alice,ou=people",
        "alice\\2a",
        "\\00",
        ")(cn=*))(|(cn=*",
    ];
    for n in 0..250 {
        let local = if n < shapes.len() {
            shapes[n].to_owned()
        } else {
            let len = 1 + inputs.below(24);
            inputs.string(&meta, len)
        };
        let username = format!("{local}@{DOMAIN}");
        let result = gateway.clone().sign_in(with_password(&username)).await;
        tally.record("LDAP metacharacters", &username, result);
    }

    // 2. NUL and control characters, in each field.
    let controls: Vec<char> = (0u32..0x20)
        .chain([0x7f])
        .filter_map(char::from_u32)
        .collect();
    for n in 0..160 {
        let c = *inputs.pick(&controls);
        let field = n % 4;
        let mut request = sign_in(alice.upn.clone(), alice.password.clone(), CLIENT_ID, "");
        match field {
            0 => request.username = format!("ali{c}ce@{DOMAIN}"),
            1 => request.password = format!("{}{c}", alice.password),
            2 => request.client_id = format!("{CLIENT_ID}{c}"),
            _ => request.client_ip = format!("203.0.113.{c}7"),
        }
        let shown = format!("field {field} with U+{:04X}", c as u32);
        let result = gateway.clone().sign_in(request).await;
        tally.record("NUL and control characters", &shown, result);
    }

    // 3. Invisible and bidirectional-control characters, and surrounding spaces, in usernames.
    let invisible = [
        '\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202e}',
        '\u{2066}', '\u{2069}', '\u{feff}', '\u{00ad}', '\u{2028}', '\u{2029}', '\u{2060}',
    ];
    for n in 0..140 {
        let c = *inputs.pick(&invisible);
        let username = match n % 4 {
            0 => format!("{c}alice@{DOMAIN}"),
            1 => format!("ali{c}ce@{DOMAIN}"),
            2 => format!("alice@corp{c}.example.com"),
            _ => format!(" alice@{DOMAIN}{}", if n % 8 == 3 { " " } else { "" }),
        };
        let result = gateway.clone().sign_in(with_password(&username)).await;
        tally.record("invisible Unicode and spaces", &username, result);
    }

    // 4. Over-long and empty fields.
    for n in 0..120 {
        let mut request = sign_in(alice.upn.clone(), alice.password.clone(), CLIENT_ID, "");
        let long = |len: usize| "x".repeat(len);
        match n % 6 {
            0 => request.username = format!("{}@{DOMAIN}", long(257 + n)),
            1 => request.password = long(1025 + n),
            2 => request.client_id = long(257 + n),
            3 => request.username = String::new(),
            4 => request.password = String::new(),
            _ => request.client_id = String::new(),
        }
        let shown = format!("case {}", n % 6);
        let result = gateway.clone().sign_in(request).await;
        tally.record("over-long and empty fields", &shown, result);
    }

    // 5. Malformed client ids and client IPs.
    let ips = [
        "300.1.1.1",
        "1.2.3",
        "::g",
        "localhost",
        "203.0.113.7/24",
        "1.1.1.1:80",
        "[::1]",
        "-1",
        "0x7f000001",
        "1.2.3.4.5",
    ];
    for n in 0..120 {
        let mut request = sign_in(alice.upn.clone(), alice.password.clone(), CLIENT_ID, "");
        let shown = if n % 2 == 0 {
            request.client_id = format!("not-registered-{}", inputs.next());
            request.client_id.clone()
        } else {
            request.client_ip = (*inputs.pick(&ips)).to_owned();
            request.client_ip.clone()
        };
        let result = gateway.clone().sign_in(request).await;
        tally.record("malformed client ids and IPs", &shown, result);
    }

    // The dispatcher's API, as a gateway of the default tenant would call it.
    let mut dispatcher: DispatcherClient<Channel> = cluster.dispatcher_api(Some("gateway-client"));
    let keys = cluster.offered_keys().await;
    assert_eq!(keys.len(), 1, "the default tenant's agent is offered");
    let agent = keys[0].clone();
    let validate = |username: &str, ciphertext: Vec<u8>| ValidateRequest {
        tenant: "default".into(),
        connector_group: DOMAIN.into(),
        username: username.into(),
        candidates: vec![SealedPassword {
            agent_id: agent.agent_id.clone(),
            ciphertext,
        }],
        trace: None,
        single_bind: false,
    };

    // 6. Random and truncated ciphertexts.
    let sealing = if agent.hybrid_public_key.is_empty() {
        SealingKey::from_der(&agent.public_key_der)
    } else {
        SealingKey::hybrid(&agent.hybrid_public_key)
    }
    .expect("the agent's key");
    let password = Password::new(alice.password.clone()).unwrap();
    let seal = || {
        sealing
            .seal(&PayloadFields {
                username: &alice.upn,
                password: &password,
                new_password: None,
                tenant: "default",
                not_after: SystemTime::now() + std::time::Duration::from_secs(30),
            })
            .unwrap()
            .ciphertext
    };
    for n in 0..150 {
        let ciphertext = if n % 2 == 0 {
            let len = inputs.below(5000);
            inputs.bytes(len)
        } else {
            let whole = seal();
            let cut = inputs.below(whole.len());
            whole[..cut].to_vec()
        };
        let shown = format!("{} bytes", ciphertext.len());
        let result = dispatcher.validate(validate(&alice.upn, ciphertext)).await;
        tally.record("random and truncated ciphertexts", &shown, result);
    }

    // 7. Tampered envelopes: one byte flipped anywhere in a fresh, valid one.
    for _ in 0..120 {
        let mut envelope = seal();
        let at = inputs.below(envelope.len());
        envelope[at] ^= 1 + inputs.below(255) as u8;
        let shown = format!("byte {at} flipped");
        let result = dispatcher.validate(validate(&alice.upn, envelope)).await;
        tally.record("tampered envelopes", &shown, result);
    }

    // 8. Requests for another tenant, with this gateway's certificate.
    for n in 0..60 {
        let shown = format!("request {n}");
        if n % 2 == 0 {
            let result = dispatcher
                .list_agent_keys(ListAgentKeysRequest {
                    tenant: "acme".into(),
                    connector_group: DOMAIN.into(),
                })
                .await;
            tally.record("another tenant", &shown, result);
        } else {
            let mut request = validate(&alice.upn, seal());
            request.tenant = "acme".into();
            let result = dispatcher.validate(request).await;
            tally.record("another tenant", &shown, result);
        }
    }

    println!("hostile inputs by class:");
    for (class, count) in &tally.by_class {
        println!("  {count:>5}  {class}");
    }
    println!(
        "  {:>5}  in all; answers by code: {:?}",
        tally.total(),
        tally.codes
    );
    assert!(tally.total() >= 1000, "only {} inputs", tally.total());
    assert!(
        tally.successes.is_empty(),
        "successes: {:#?}",
        tally.successes
    );
    assert!(
        tally.undocumented.is_empty(),
        "answers without a documented code: {:#?}",
        tally.undocumented
    );

    // No bind as any real user: no input named one exactly.
    let real: Vec<String> = users.iter().map(|u| u.dn()).collect();
    let bound: Vec<String> = cluster
        .slapd
        .bound_dns()
        .into_iter()
        .filter(|dn| dn != ADMIN_DN)
        .collect();
    let as_real: Vec<&String> = bound.iter().filter(|dn| real.contains(dn)).collect();
    assert!(as_real.is_empty(), "binds as real users: {as_real:?}");

    // Everything still runs and still serves (dropping the cluster checks for panics).
    for (name, process) in [
        ("gateway", &mut cluster.gateway.process),
        ("dispatcher", &mut cluster.dispatcher.process),
    ] {
        assert!(process.is_running(), "the {name} died");
    }
    for agent in &mut cluster.agents {
        assert!(agent.process.is_running(), "agent {} died", agent.agent_id);
    }
    cluster
        .sign_in(&alice.upn, &alice.password)
        .await
        .expect("a real sign-in after the hostile ones");
}

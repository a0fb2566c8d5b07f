//! The LDAP backend against a real OpenLDAP `slapd` (ppolicy overlay), without the services:
//! group naming and nesting, several servers with failover, every account state the overlay
//! can produce.

use passage_credentials::Password;
use passage_directory::{
    Directory, LdapConfig, LdapDirectory, UserInfo, Verdict,
    groups::{GroupClaim, NestedGroups},
    ldap::GroupSearch,
};
use passage_tests::slapd::{ADMIN_DN, ADMIN_PASSWORD, GROUPS_DN, PEOPLE_DN, Slapd, TestUser};

/// A configuration for `slapd`: the people OU, the administrator as service account, groups
/// by search.
fn config(url: &str) -> LdapConfig {
    LdapConfig {
        allow_plaintext: true,
        bind_dn: Some(ADMIN_DN.into()),
        bind_password: Some(ADMIN_PASSWORD.into()),
        group_search: Some(GroupSearch {
            base_dn: GROUPS_DN.into(),
            filter: "(objectClass=groupOfNames)".into(),
            member_attribute: "member".into(),
            name_attribute: "cn".into(),
        }),
        ..LdapConfig::new(url, PEOPLE_DN)
    }
}

async fn sign_in(directory: &LdapDirectory, user: &TestUser) -> UserInfo {
    let password = Password::new(user.password.clone()).unwrap();
    match directory.authenticate(&user.upn, &password).await {
        Ok(Verdict::Success(info)) => info,
        other => panic!("{} should sign in: {other:?}", user.upn),
    }
}

fn sorted(values: &[&str]) -> Vec<String> {
    let mut values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_are_named_by_a_real_dn_parser_and_nesting_is_followed_once() {
    let dana = TestUser::new("dana", "Dana-Pass-4!", &["eng"]);
    let slapd = Slapd::start(std::slice::from_ref(&dana));
    // A groupOfNames entry `cn=<cn>,<parent>` (the cn as stored; the DN escapes it).
    let group = |dn: &str, members: &[&str]| {
        let cn = passage_directory::dn::first_rdn_value(dn).unwrap();
        let mut ldif = format!("dn: {dn}\nchangetype: add\nobjectClass: groupOfNames\ncn: {cn}\n");
        for member in members {
            ldif.push_str(&format!("member: {member}\n"));
        }
        ldif + "\n"
    };
    let eng = format!("cn=eng,{GROUPS_DN}");
    let platform = format!("cn=platform,{GROUPS_DN}");
    let loop_a = format!("cn=loop-a,{GROUPS_DN}");
    let loop_b = format!("cn=loop-b,{GROUPS_DN}");
    let sandbox_eng = format!("cn=eng,ou=sandbox,{GROUPS_DN}");
    slapd.modify(&[
        // Three levels: dana ∈ eng ∈ platform ∈ everyone.
        group(&platform, &[&eng]),
        group(&format!("cn=everyone,{GROUPS_DN}"), &[&platform]),
        // A cycle: dana ∈ loop-a ∈ loop-b ∈ loop-a.
        group(&loop_a, &[&dana.dn(), &eng]),
        group(&loop_b, &[&loop_a]),
        format!("dn: {loop_a}\nchangetype: modify\nadd: member\nmember: {loop_b}\n\n"),
        // A comma in a name, escaped in the DN.
        group(&format!("cn=Ops\\, EU,{GROUPS_DN}"), &[&dana.dn()]),
        // The same name in another OU.
        format!("dn: ou=sandbox,{GROUPS_DN}\nchangetype: add\nobjectClass: organizationalUnit\nou: sandbox\n\n"),
        group(&sandbox_eng, &[&dana.dn()]),
    ]
    .concat());

    let direct = LdapDirectory::new(config(&slapd.url())).unwrap();
    assert_eq!(
        sign_in(&direct, &dana).await.groups,
        sorted(&["Ops, EU", "eng", "loop-a"]),
        "direct memberships; the escaped comma unescaped; the two eng groups collide by name"
    );

    let nested = LdapDirectory::new(LdapConfig {
        nested_groups: NestedGroups::Recursive,
        ..config(&slapd.url())
    })
    .unwrap();
    assert_eq!(
        sign_in(&nested, &dana).await.groups,
        sorted(&["Ops, EU", "eng", "everyone", "loop-a", "loop-b", "platform"]),
        "three levels followed, the cycle visited once"
    );

    let shallow = LdapDirectory::new(LdapConfig {
        nested_groups: NestedGroups::Recursive,
        max_group_depth: 2,
        ..config(&slapd.url())
    })
    .unwrap();
    assert_eq!(
        sign_in(&shallow, &dana).await.groups,
        sorted(&["Ops, EU", "eng", "loop-a", "loop-b", "platform"]),
        "two levels only: everyone is the third"
    );

    let by_dn = LdapDirectory::new(LdapConfig {
        nested_groups: NestedGroups::Recursive,
        group_claim: GroupClaim::Dn,
        ..config(&slapd.url())
    })
    .unwrap();
    let groups = sign_in(&by_dn, &dana).await.groups;
    assert!(
        groups.contains(&eng) && groups.contains(&sandbox_eng),
        "DNs keep same-named groups apart: {groups:?}"
    );
    assert_eq!(groups.len(), 7, "{groups:?}");

    // Nesting without a group search has nothing to walk: refused at start.
    let err = LdapDirectory::new(LdapConfig {
        nested_groups: NestedGroups::Recursive,
        group_search: None,
        ..config(&slapd.url())
    })
    .unwrap_err();
    assert!(err.to_string().contains("group_search"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_server_is_failed_over_under_load_and_probed_back() {
    let users: Vec<TestUser> = (0..20)
        .map(|i| TestUser::new(&format!("user{i}"), &format!("Pass-{i}-word!"), &["staff"]))
        .collect();
    // Two replicas holding the same data.
    let mut first = Slapd::start(&users);
    let mut second = Slapd::start(&users);
    let directory = std::sync::Arc::new(
        LdapDirectory::new(LdapConfig {
            url: String::new(),
            urls: vec![first.url(), second.url()],
            probe_interval_ms: 100,
            timeout_ms: 10_000,
            ..config("")
        })
        .unwrap(),
    );
    assert_eq!(directory.health().servers_up, 2);
    // Warm up: the first server serves while it is up.
    sign_in(&directory, &users[0]).await;
    let binds_before = second.binds_as(&users[0].dn());
    assert_eq!(
        binds_before, 0,
        "the second server is not used while the first answers"
    );

    // The first server hangs, 200 sign-ins start against it, then it dies.
    first.pause();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sign_ins: Vec<_> = (0..200)
        .map(|i| {
            let directory = std::sync::Arc::clone(&directory);
            let user = users[i % users.len()].clone();
            let started = std::sync::Arc::clone(&started);
            tokio::spawn(async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let password = Password::new(user.password.clone()).unwrap();
                directory.authenticate(&user.upn, &password).await
            })
        })
        .collect();
    all_started(&started, 200).await;
    first.stop();
    let mut failed = Vec::new();
    for sign_in in sign_ins {
        match sign_in.await.unwrap() {
            Ok(Verdict::Success(_)) => {}
            other => failed.push(format!("{other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let health = directory.health();
    assert_eq!((health.servers_up, health.servers_total), (1, 2));

    // It comes back: the probe marks it up, and it serves first again.
    first.start_again();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while directory.health().servers_up < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe did not see it return"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let on_second = second.binds_as(&users[1].dn());
    sign_in(&directory, &users[1]).await;
    assert_eq!(
        second.binds_as(&users[1].dn()),
        on_second,
        "the first server serves again"
    );

    // Both down: the directory is unreachable, and says so.
    first.stop();
    second.stop();
    let password = Password::new(users[2].password.clone()).unwrap();
    let err = directory
        .authenticate(&users[2].upn, &password)
        .await
        .unwrap_err();
    assert!(
        matches!(err, passage_directory::DirectoryError::Unreachable(_)),
        "{err:?}"
    );
    assert_eq!(directory.health().servers_up, 0);
}

/// Servers found in DNS the way Windows finds domain controllers: the site's SRV records
/// first, then the domain's; a record change is followed without a restart; no record at
/// all is a clear "unreachable", reported in the health.
#[tokio::test(flavor = "multi_thread")]
async fn servers_are_found_in_dns_srv_records_site_first_and_followed() {
    use passage_directory::discovery::{DnsSrv, Scheme};
    use passage_tests::dns::{DnsServer, Srv};

    let users: Vec<TestUser> = (0..3)
        .map(|i| TestUser::new(&format!("user{i}"), &format!("Pass-{i}-word!"), &["staff"]))
        .collect();
    // Two replicas holding the same data: one in the agent's site, one elsewhere.
    let elsewhere = Slapd::start(&users);
    let mut in_site = Slapd::start(&users);
    let dns = DnsServer::start().await;
    // The servers are named `localhost` (the system resolves it), outside the AD domain's DNS
    // name: accepted because target_domains says so.
    let site_record = "_ldap._tcp.paris._sites.corp.test.";
    let domain_record = "_ldap._tcp.corp.test.";
    let url = |slapd: &Slapd| format!("ldap://localhost:{}", slapd.port());
    dns.set(site_record, vec![Srv::new("localhost", in_site.port())]);
    dns.set(
        domain_record,
        vec![
            Srv::new("localhost", elsewhere.port()),
            // Outside the domain: a forged answer must not choose the server.
            Srv::new("evil.example", in_site.port()),
            Srv {
                priority: 10,
                ..Srv::new("localhost", in_site.port())
            },
        ],
    );
    let config = LdapConfig {
        url: String::new(),
        dns_srv: Some(DnsSrv {
            domain: "corp.test".into(),
            target_domains: vec!["localhost".into()],
            site: Some("Paris".into()),
            scheme: Scheme::Ldap,
            ldaps_port: 636,
            name_servers: vec![dns.addr().to_string()],
            refresh_interval_s: 1,
        }),
        probe_interval_ms: 100,
        ..config("")
    };
    let directory = LdapDirectory::new(config.clone()).unwrap();
    let health = directory.health();
    assert_eq!(
        (health.servers_up, health.servers_total),
        (0, 0),
        "nothing is looked up before the first operation"
    );

    sign_in(&directory, &users[0]).await;
    assert_eq!(dns.questions(), [site_record, domain_record]);
    assert!(
        directory
            .describe()
            .contains(&format!("[{} {}]", url(&in_site), url(&elsewhere))),
        "the site's server first, each once: {}",
        directory.describe()
    );
    assert_eq!(in_site.binds_as(&users[0].dn()), 1);
    assert_eq!(elsewhere.binds_as(&users[0].dn()), 0);
    let health = directory.health();
    assert_eq!((health.servers_up, health.servers_total), (2, 2));

    // The site's server dies: the next one in DNS order serves.
    in_site.stop();
    sign_in(&directory, &users[1]).await;
    assert_eq!(elsewhere.binds_as(&users[1].dn()), 1);
    let health = directory.health();
    assert_eq!((health.servers_up, health.servers_total), (1, 2));

    // It is retired from DNS: within the refresh interval the list follows.
    dns.set(site_record, Vec::new());
    dns.set(domain_record, vec![Srv::new("localhost", elsewhere.port())]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while directory.health().servers_total != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the retired server is still listed: {}",
            directory.describe()
        );
        // Lookups are started by operations, in the background.
        sign_in(&directory, &users[2]).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        directory
            .describe()
            .contains(&format!("[{}]", url(&elsewhere))),
        "{}",
        directory.describe()
    );
    assert_eq!(directory.health().servers_up, 1);

    // No record at all: a new agent cannot find its directory, and says why.
    dns.set(domain_record, Vec::new());
    let lost = LdapDirectory::new(config).unwrap();
    let password = Password::new(users[0].password.clone()).unwrap();
    match lost.authenticate(&users[0].upn, &password).await {
        Err(passage_directory::DirectoryError::Unreachable(why)) => assert!(
            why.contains("DNS SRV lookup found no directory server") && why.contains(domain_record),
            "{why}"
        ),
        other => panic!("expected unreachable, got {other:?}"),
    }
    let health = lost.health();
    assert_eq!((health.servers_up, health.servers_total), (0, 1));
}

/// An agent whose directory cannot be reached says so in its heartbeat; the gateway and the
/// dispatcher then send the sign-ins to the agent whose directory answers.
#[tokio::test(flavor = "multi_thread")]
async fn agents_whose_directory_is_down_are_passed_over() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ldap://{}", listener.local_addr().unwrap())
    };
    let cluster = passage_tests::Cluster::start(passage_tests::ClusterOptions {
        agents: 2,
        agent_overrides: vec![passage_tests::cluster::AgentOverride {
            ldap_urls: vec![dead],
            ..Default::default()
        }],
        ..passage_tests::ClusterOptions::default()
    })
    .await;
    let lonely = cluster.agents[0].agent_id.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let keys = cluster.offered_keys().await;
        let down: Vec<_> = keys
            .iter()
            .filter(|k| k.directory_unreachable)
            .map(|k| k.agent_id.clone())
            .collect();
        if down == [lonely.clone()] && keys.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dispatcher never learnt that {lonely}'s directory is down: {down:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let alice = &passage_tests::slapd::default_users()[0];
    for _ in 0..40 {
        cluster
            .sign_in(&alice.upn, &alice.password)
            .await
            .expect("the agent whose directory answers serves");
    }
    let log = cluster.agents[0].process.output();
    assert!(
        !log.contains("directory could not answer"),
        "no sign-in was sent to the agent whose directory is down:\n{log}"
    );
}

/// LDAPS and StartTLS against a slapd with a certificate of a private CA: trusted through
/// `ca_file` or a pinned fingerprint; a server outside them is refused before any password is
/// sent.
#[tokio::test(flavor = "multi_thread")]
async fn ldaps_and_starttls_trust_the_configured_ca_or_pin() {
    let ca = passage_pki::ServicesCa::generate().unwrap();
    let server = ca
        .issue_server(
            "slapd",
            &["127.0.0.1".to_owned()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let key = String::from_utf8(server.key_pem.expose().to_vec()).unwrap();
    let alice = passage_tests::slapd::default_users()[0].clone();
    let slapd = Slapd::start_tls(std::slice::from_ref(&alice), &server.cert_pem, &key);
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let other_ca_file = files.path().join("other-ca.pem");
    std::fs::write(
        &other_ca_file,
        passage_pki::ServicesCa::generate().unwrap().cert_pem(),
    )
    .unwrap();
    // Upper case with colons, as `openssl x509 -fingerprint -sha256` prints it.
    let pin = passage_tests::slapd::certificate_pin(&server.cert_pem)
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":");

    let tls = |url: String, starttls: bool| LdapConfig {
        starttls,
        allow_plaintext: false,
        ..config(&url)
    };
    let works = |config: LdapConfig| {
        let alice = alice.clone();
        async move { sign_in(&LdapDirectory::new(config).unwrap(), &alice).await }
    };
    let refused = |config: LdapConfig| {
        let alice = alice.clone();
        let binds = slapd.binds_as(&alice.dn());
        let slapd = &slapd;
        async move {
            let password = Password::new(alice.password.clone()).unwrap();
            let answer = LdapDirectory::new(config)
                .unwrap()
                .authenticate(&alice.upn, &password)
                .await;
            assert!(
                matches!(&answer, Err(passage_directory::DirectoryError::Unreachable(why)) if why.to_lowercase().contains("certificate")),
                "{answer:?}"
            );
            assert_eq!(slapd.binds_as(&alice.dn()), binds, "no password was sent");
        }
    };

    // The private CA: LDAPS and StartTLS.
    works(LdapConfig {
        ca_file: Some(ca_file.clone()),
        ..tls(slapd.ldaps_url(), false)
    })
    .await;
    works(LdapConfig {
        ca_file: Some(ca_file.clone()),
        ..tls(slapd.url(), true)
    })
    .await;
    // The pin alone (a self-signed certificate's way), and the pin with the CA.
    works(LdapConfig {
        pinned_certificates_sha256: vec![pin.clone()],
        ..tls(slapd.ldaps_url(), false)
    })
    .await;
    works(LdapConfig {
        ca_file: Some(ca_file.clone()),
        pinned_certificates_sha256: vec![pin.to_lowercase().replace(':', "")],
        ..tls(slapd.url(), true)
    })
    .await;
    // Another CA, the system's roots, a wrong pin (even with the right CA): refused.
    refused(LdapConfig {
        ca_file: Some(other_ca_file),
        ..tls(slapd.ldaps_url(), false)
    })
    .await;
    refused(tls(slapd.ldaps_url(), false)).await;
    refused(LdapConfig {
        ca_file: Some(ca_file),
        pinned_certificates_sha256: vec!["00".repeat(32)],
        ..tls(slapd.ldaps_url(), false)
    })
    .await;
}

/// Two forests (two slapd with their own suffixes), an agent in each connector group: users
/// of each sign in by UPN (a wildcard for a subdomain), by `DOMAIN\user` and — for the default
/// group — by bare name; no request of one forest reaches the other's directory, and a domain
/// no group serves is refused before any agent is asked.
#[tokio::test(flavor = "multi_thread")]
async fn each_forest_signs_in_through_its_own_agents_only() {
    use passage_tests::{
        Cluster, ClusterOptions,
        cluster::AgentOverride,
        slapd::{Forest, default_users},
    };
    let fabrikam = Forest::for_domain("fabrikam.example");
    let frank = TestUser::in_forest(&fabrikam, "frank", "Frank-Pass-5!", &["sales"]);
    let mut fiona = TestUser::in_forest(&fabrikam, "fiona", "Fiona-Pass-6!", &["sales"]);
    fiona.upn = "fiona@paris.fabrikam.example".into();
    let fabrikam_slapd = Slapd::start_forest(&fabrikam, &[frank.clone(), fiona.clone()]);
    let cluster = Cluster::start(ClusterOptions {
        agents: 2,
        agent_overrides: vec![
            AgentOverride::default(),
            AgentOverride {
                ldap_urls: vec![fabrikam_slapd.url()],
                forest: Some(fabrikam.clone()),
                connector_group: Some("fabrikam".into()),
            },
        ],
        gateway_config: "connector_groups = [\
            { name = \"corp.example.com\", domains = [\"corp.example.com\"], netbios_names = [\"CORP\"] }, \
            { name = \"fabrikam\", domains = [\"fabrikam.example\", \"*.fabrikam.example\"], netbios_names = [\"FABRIKAM\"] }]\n\
            default_connector_group = \"corp.example.com\"\n"
            .into(),
        ..ClusterOptions::default()
    })
    .await;
    let alice = &default_users()[0];
    let claims = |token: &str| {
        jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token).unwrap()
    };
    for (typed, user) in [
        (alice.upn.clone(), alice),
        ("corp\\alice".to_owned(), alice),
        ("alice".to_owned(), alice),
        (frank.upn.clone(), &frank),
        ("FABRIKAM\\frank".to_owned(), &frank),
        (fiona.upn.clone(), &fiona),
    ] {
        let tokens = cluster
            .sign_in(&typed, &user.password)
            .await
            .unwrap_or_else(|status| panic!("{typed} should sign in: {status:?}"));
        let claims = claims(&tokens.id_token);
        assert_eq!(claims["upn"], user.upn, "the directory's UPN for {typed}");
        assert_eq!(
            claims["preferred_username"], typed,
            "and the name signed in with"
        );
    }
    // Nothing of one forest reached the other's directory.
    assert!(!cluster.slapd.log().contains("frank") && !cluster.slapd.log().contains("fiona"));
    assert!(!fabrikam_slapd.log().contains("alice"));

    // Nobody serves these: refused before any agent is asked.
    for typed in [
        "carol@contoso.example",
        "LAB\\carol",
        "carol@fabrikam.example.org",
    ] {
        let status = cluster.sign_in(typed, "Whatever-1!").await.unwrap_err();
        assert_eq!(
            passage_error_codes::ErrorCode::of(&status),
            Some(passage_error_codes::ErrorCode::UnknownDomain),
            "{typed}: {status:?}"
        );
    }
    assert!(!cluster.slapd.log().contains("carol") && !fabrikam_slapd.log().contains("carol"));
}

/// Waits until `count` tasks have counted themselves in `started`.
async fn all_started(started: &std::sync::atomic::AtomicUsize, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while started.load(std::sync::atomic::Ordering::SeqCst) < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the sign-ins did not start"
        );
        tokio::task::yield_now().await;
    }
}

/// Adds a password policy `cn=<name>,ou=policies` with `attributes` (LDIF lines) and puts
/// `users` under it.
fn policy(slapd: &Slapd, name: &str, attributes: &str, users: &[&TestUser]) {
    let dn = format!("cn={name},ou=policies,{}", passage_tests::slapd::BASE_DN);
    let mut ldif = format!(
        "dn: {dn}\nchangetype: add\nobjectClass: pwdPolicy\nobjectClass: person\ncn: {name}\nsn: {name}\n\
         pwdAttribute: userPassword\n{attributes}\n"
    );
    for user in users {
        ldif.push_str(&format!(
            "dn: {}\nchangetype: modify\nreplace: pwdPolicySubentry\npwdPolicySubentry: {dn}\n\n",
            user.dn()
        ));
    }
    slapd.modify(&ldif);
}

/// Every account state the ppolicy overlay can produce, produced for real and told apart —
/// and none of them told to someone with a wrong password, except a lockout (the directory
/// says "locked" whatever the password).
#[tokio::test(flavor = "multi_thread")]
async fn every_ppolicy_state_is_produced_for_real_and_told_apart() {
    let user = |uid: &str| TestUser::new(uid, &format!("{uid}-Pass-7!"), &["staff"]);
    let (ann, ben, cat, dan, eve, fay) = (
        user("ann"),
        user("ben"),
        user("cat"),
        user("dan"),
        user("eve"),
        user("fay"),
    );
    let slapd = Slapd::start(&[
        ann.clone(),
        ben.clone(),
        cat.clone(),
        dan.clone(),
        eve.clone(),
        fay.clone(),
    ]);
    // ben's password is long expired; cat's was reset by an administrator and must change;
    // dan's expires in 30 days and the policy warns 30 days ahead.
    policy(
        &slapd,
        "short",
        "pwdMaxAge: 60\npwdGraceAuthNLimit: 0\n",
        &[&ben],
    );
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdChangedTime\npwdChangedTime: 20000101000000Z\n",
        ben.dn()
    ));
    policy(&slapd, "reset", "pwdMustChange: TRUE\n", &[&cat]);
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdReset\npwdReset: TRUE\n",
        cat.dn()
    ));
    policy(
        &slapd,
        "warned",
        "pwdMaxAge: 2592000\npwdExpireWarning: 2592001\n",
        &[&dan],
    );
    // An administrator sets dan's password again: the overlay records when.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userPassword\nuserPassword: {}\n",
        dan.dn(),
        dan.password
    ));
    // eve is disabled by the organisation's attribute.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: employeeType\nemployeeType: disabled\n",
        eve.dn()
    ));
    let directory = LdapDirectory::new(LdapConfig {
        account_disabled_filter: Some("(employeeType=disabled)".into()),
        ..config(&slapd.url())
    })
    .unwrap();
    let try_as = |user: &TestUser, password: &str| {
        let password = Password::new(password.to_owned()).unwrap();
        let login = user.upn.clone();
        let directory = &directory;
        async move { directory.authenticate(&login, &password).await.unwrap() }
    };

    // ann fails five times (the default policy's pwdMaxFailure): locked, even with the
    // right password.
    for _ in 0..5 {
        assert_eq!(
            try_as(&ann, "wrong-Pass-1!").await,
            Verdict::InvalidCredentials
        );
    }
    assert_eq!(try_as(&ann, &ann.password).await, Verdict::AccountLocked);
    assert_eq!(try_as(&ben, &ben.password).await, Verdict::PasswordExpired);
    assert_eq!(
        try_as(&cat, &cat.password).await,
        Verdict::PasswordMustChange
    );
    assert_eq!(try_as(&eve, &eve.password).await, Verdict::AccountDisabled);
    match try_as(&dan, &dan.password).await {
        Verdict::Success(info) => {
            let left = info.password_expires_in_s.expect("the warning");
            assert!(
                (2_591_000..=2_592_000).contains(&left),
                "about 30 days: {left}"
            );
        }
        other => panic!("dan signs in, warned: {other:?}"),
    }
    match try_as(&fay, &fay.password).await {
        Verdict::Success(info) => assert_eq!(info.password_expires_in_s, None),
        other => panic!("fay signs in: {other:?}"),
    }
    // With a wrong password, no state is told.
    for user in [&ben, &cat, &dan, &eve, &fay] {
        assert_eq!(
            try_as(user, "wrong-Pass-1!").await,
            Verdict::InvalidCredentials,
            "{}",
            user.uid
        );
    }
    let nobody = TestUser::new("nobody", "whatever-Pass-1!", &[]);
    assert_eq!(
        try_as(&nobody, &nobody.password).await,
        Verdict::InvalidCredentials
    );
}

/// The directory's "expires soon" reaches the application: `pwd_exp` in the ID token.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_about_to_expire_is_told_in_the_id_token() {
    let cluster = passage_tests::Cluster::start(passage_tests::ClusterOptions::default()).await;
    let [alice, bob] = &passage_tests::slapd::default_users()[..] else {
        unreachable!("two default users")
    };
    policy(
        &cluster.slapd,
        "warned",
        "pwdMaxAge: 2592000\npwdExpireWarning: 2592001\n",
        &[bob],
    );
    cluster.slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userPassword\nuserPassword: {}\n",
        bob.dn(),
        bob.password
    ));
    let claims = |token: &str| {
        jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token).unwrap()
    };
    let warned = cluster.sign_in(&bob.upn, &bob.password).await.unwrap();
    let pwd_exp = claims(&warned.id_token)["pwd_exp"]
        .as_u64()
        .expect("pwd_exp");
    assert!((2_591_000..=2_592_000).contains(&pwd_exp), "{pwd_exp}");
    assert!(claims(&warned.access_token).get("pwd_exp").is_none());
    let plain = cluster.sign_in(&alice.upn, &alice.password).await.unwrap();
    assert!(claims(&plain.id_token).get("pwd_exp").is_none());
}

/// The whole pipeline: an agent with two replicas (same data); the first hangs, 200 sign-ins
/// start through the gateway, then it dies — every valid user still signs in.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_dies_under_200_concurrent_sign_ins_and_none_fails() {
    use passage_tests::{Cluster, ClusterOptions, cluster::AgentOverride};
    let users: Vec<TestUser> = (0..20)
        .map(|i| TestUser::new(&format!("user{i}"), &format!("Pass-{i}-word!"), &["staff"]))
        .collect();
    let mut first = Slapd::start(&users);
    let second = Slapd::start(&users);
    let cluster = Cluster::start(ClusterOptions {
        users: users.clone(),
        agent_overrides: vec![AgentOverride {
            ldap_urls: vec![first.url(), second.url()],
            ..AgentOverride::default()
        }],
        // Room for all 200 at once: beyond its capacity an agent sheds load (PSG80001) by
        // design, whatever its directory does; this test is about the directory.
        agent_capacity: 256,
        ..ClusterOptions::default()
    })
    .await;
    cluster
        .sign_in(&users[0].upn, &users[0].password)
        .await
        .expect("warm-up");
    first.pause();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sign_ins: Vec<_> = (0..200)
        .map(|i| {
            let mut client = cluster.gateway_client();
            let user = users[i % users.len()].clone();
            let started = std::sync::Arc::clone(&started);
            tokio::spawn(async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                client
                    .sign_in(passage_proto::v1::SignInRequest {
                        username: user.upn.clone(),
                        password: user.password.clone(),
                        client_id: passage_tests::cluster::CLIENT_ID.into(),
                        client_ip: String::new(),
                        offline_access: false,
                    })
                    .await
            })
        })
        .collect();
    all_started(&started, 200).await;
    first.stop();
    let mut failed = Vec::new();
    for sign_in in sign_ins {
        if let Err(status) = sign_in.await.unwrap() {
            failed.push(status);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        second.binds_as(&users[1].dn()) > 0,
        "the second replica served"
    );
}

/// Password writeback on OpenLDAP: a must-change account and an expired one (with grace
/// logins) change their password by Password Modify, bound as themselves, under the
/// directory's own rules; a too-short or reused password is refused with its reason; the old
/// password stops working.
#[tokio::test(flavor = "multi_thread")]
async fn passwords_change_under_the_directorys_own_rules() {
    use passage_directory::password_change::{ChangeOutcome, Rejection};
    let gina = TestUser::new("gina", "Gina-Pass-8!", &["staff"]);
    let hank = TestUser::new("hank", "Hank-Pass-9!", &["staff"]);
    let slapd = Slapd::start(&[gina.clone(), hank.clone()]);
    policy(
        &slapd,
        "quality",
        "pwdMustChange: TRUE\npwdCheckQuality: 2\npwdMinLength: 12\npwdInHistory: 3\n",
        &[&gina],
    );
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdReset\npwdReset: TRUE\n",
        gina.dn()
    ));
    policy(
        &slapd,
        "graced",
        "pwdMaxAge: 60\npwdGraceAuthNLimit: 3\npwdCheckQuality: 2\npwdMinLength: 12\n",
        &[&hank],
    );
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdChangedTime\npwdChangedTime: 20000101000000Z\n",
        hank.dn()
    ));
    let directory = LdapDirectory::new(config(&slapd.url())).unwrap();
    let password = |text: &str| Password::new(text.to_owned()).unwrap();
    let sign_in_as = |user: &TestUser, text: &str| {
        let (login, secret) = (user.upn.clone(), password(text));
        let directory = &directory;
        async move { directory.authenticate(&login, &secret).await.unwrap() }
    };
    let change = |user: &TestUser, old: &str, new: &str| {
        let (login, old, new) = (user.upn.clone(), password(old), password(new));
        let directory = &directory;
        async move { directory.change_password(&login, &old, &new).await.unwrap() }
    };

    assert_eq!(
        sign_in_as(&gina, &gina.password).await,
        Verdict::PasswordMustChange
    );
    assert_eq!(
        change(&gina, &gina.password, "Short-1!").await,
        ChangeOutcome::Rejected(Rejection::TooShort)
    );
    assert_eq!(
        change(&gina, "Not-Her-Password-1!", "A-Long-New-Pass-1!").await,
        ChangeOutcome::Refused(Verdict::InvalidCredentials)
    );
    match change(&gina, &gina.password, "A-Long-New-Pass-1!").await {
        ChangeOutcome::Changed(info) => assert_eq!(info.upn, gina.upn),
        other => panic!("gina's change: {other:?}"),
    }
    assert!(matches!(
        sign_in_as(&gina, "A-Long-New-Pass-1!").await,
        Verdict::Success(_)
    ));
    assert_eq!(
        sign_in_as(&gina, &gina.password).await,
        Verdict::InvalidCredentials,
        "the old password no longer works"
    );
    assert_eq!(
        change(&gina, "A-Long-New-Pass-1!", &gina.password).await,
        ChangeOutcome::Rejected(Rejection::InHistory),
        "nor can it come back"
    );

    // Expired, with grace logins: the sign-in says expired (it spends one), the change uses
    // another, and the new password signs in.
    assert_eq!(
        sign_in_as(&hank, &hank.password).await,
        Verdict::PasswordExpired
    );
    match change(&hank, &hank.password, "Hanks-New-Pass-2!").await {
        ChangeOutcome::Changed(_) => {}
        other => panic!("hank's change: {other:?}"),
    }
    assert!(matches!(
        sign_in_as(&hank, "Hanks-New-Pass-2!").await,
        Verdict::Success(_)
    ));
}

/// `Gateway.ChangePassword` end to end on OpenLDAP: a must-change user is told so at sign-in,
/// changes the password through the gateway (both passwords sealed to the agent), gets tokens,
/// and signs in with the new one; a too-short password is refused with its reason; neither
/// password appears in any log at debug level. Without writeback the change is refused with
/// Entra's sentence.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_changes_an_expired_password_through_the_gateway() {
    use passage_error_codes::ErrorCode;
    use passage_proto::v1::ChangePasswordRequest;
    use passage_tests::{Cluster, ClusterOptions, cluster::CLIENT_ID, slapd::default_users};
    let cluster = Cluster::start(ClusterOptions {
        gateway_config: "password_writeback = true\n".into(),
        debug_logs: true,
        ..ClusterOptions::default()
    })
    .await;
    let [alice, bob] = &default_users()[..] else {
        unreachable!("two default users")
    };
    policy(
        &cluster.slapd,
        "reset",
        "pwdMustChange: TRUE\npwdCheckQuality: 2\npwdMinLength: 12\n",
        &[bob],
    );
    cluster.slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdReset\npwdReset: TRUE\n",
        bob.dn()
    ));
    let must_change = cluster.sign_in(&bob.upn, &bob.password).await.unwrap_err();
    assert_eq!(
        ErrorCode::of(&must_change),
        Some(ErrorCode::PasswordMustChange)
    );
    assert!(
        must_change.message().contains("Gateway.ChangePassword"),
        "with writeback on, the answer tells the client to change it: {must_change:?}"
    );

    let change = |old: &str, new: &str| {
        let mut client = cluster.gateway_client();
        let request = ChangePasswordRequest {
            username: bob.upn.clone(),
            old_password: old.into(),
            new_password: new.into(),
            client_id: CLIENT_ID.into(),
            client_ip: String::new(),
            offline_access: false,
        };
        async move {
            client
                .change_password(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    let short = change(&bob.password, "Short-1!").await.unwrap_err();
    assert_eq!(ErrorCode::of(&short), Some(ErrorCode::PasswordRejected));
    assert!(short.message().contains("shorter"), "{short:?}");
    let wrong = change("Not-Bobs-Pass-1!", "Bobs-New-Password-1!")
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of(&wrong), Some(ErrorCode::InvalidCredentials));
    let changed = change(&bob.password, "Bobs-New-Password-1!").await.unwrap();
    let claims =
        jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(&changed.id_token)
            .unwrap();
    assert_eq!(claims["upn"], bob.upn);
    cluster
        .sign_in(&bob.upn, "Bobs-New-Password-1!")
        .await
        .expect("the new password signs in");
    let old = cluster.sign_in(&bob.upn, &bob.password).await.unwrap_err();
    assert_eq!(ErrorCode::of(&old), Some(ErrorCode::InvalidCredentials));
    for process in [&cluster.gateway.process, &cluster.dispatcher.process] {
        let output = process.output();
        assert!(!output.contains("Bobs-New-Password-1!") && !output.contains(&bob.password));
    }
    for agent in &cluster.agents {
        let output = agent.process.output();
        assert!(!output.contains("Bobs-New-Password-1!") && !output.contains(&bob.password));
    }

    // A gateway without writeback refuses, before anything reaches an agent.
    let off = Cluster::start(ClusterOptions::default()).await;
    let mut client = off.gateway_client();
    let refused = client
        .change_password(ChangePasswordRequest {
            username: alice.upn.clone(),
            old_password: alice.password.clone(),
            new_password: "Alices-New-Password-1!".into(),
            client_id: CLIENT_ID.into(),
            client_ip: String::new(),
            offline_access: false,
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of(&refused), Some(ErrorCode::WritebackDisabled));
    assert!(
        refused
            .message()
            .contains("Your organization doesn't allow you to update your password on this site"),
        "{refused:?}"
    );
    assert_eq!(
        off.slapd.binds_as(&alice.dn()),
        0,
        "nothing reached the directory"
    );
}

/// The browser sign-in page offers the change form when the password must change and
/// writeback is on: the new password twice (a mismatch is said), then back to the
/// application with a code — the password never in a URL.
#[tokio::test(flavor = "multi_thread")]
async fn the_sign_in_page_changes_a_password_that_must_change() {
    use passage_tests::{
        Cluster, ClusterOptions,
        slapd::default_users,
        web::{FormBrowser, query},
    };
    let redirect = "http://localhost:9/callback";
    let cluster = Cluster::start(ClusterOptions {
        development_store: true,
        gateway_config: "password_writeback = true\n".into(),
        gateway_clients: format!(
            "\n[[clients]]\nid = \"web-app\"\nname = \"Web app\"\nredirect_uris = [\"{redirect}\"]\n"
        ),
        ..ClusterOptions::default()
    })
    .await;
    let bob = &default_users()[1];
    policy(&cluster.slapd, "reset", "pwdMustChange: TRUE\n", &[bob]);
    cluster.slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdReset\npwdReset: TRUE\n",
        bob.dn()
    ));
    let issuer = cluster.gateway.issuer.clone();
    // RFC 7636's example verifier and its S256 challenge.
    let authorize = format!(
        "{issuer}/authorize?response_type=code&client_id=web-app&redirect_uri={redirect}\
         &scope=openid&state=s1&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM\
         &code_challenge_method=S256"
    );
    let mut browser = FormBrowser::default();
    let page = browser.get(&authorize).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let mut fields = page.hidden_inputs();
    fields.push(("username".into(), bob.upn.clone()));
    fields.push(("password".into(), bob.password.clone()));
    let change = browser
        .post_form(&format!("{issuer}/authorize"), &fields)
        .await;
    assert!(
        change.body.contains("id=\"new_password\""),
        "{}",
        change.body
    );

    let post = |old: &str, new: &str, confirm: &str, page: &passage_tests::web::Page| {
        let mut fields = page.hidden_inputs();
        fields.push(("old_password".into(), old.into()));
        fields.push(("new_password".into(), new.into()));
        fields.push(("confirm_password".into(), confirm.into()));
        fields
    };
    let differ = browser
        .post_form(
            &format!("{issuer}/password"),
            &post(
                &bob.password,
                "Bobs-New-Pass-3!",
                "Bobs-New-Pass-4!",
                &change,
            ),
        )
        .await;
    assert!(
        differ.body.contains("do not match") && differ.body.contains("id=\"new_password\""),
        "{}",
        differ.body
    );
    let done = browser
        .post_form(
            &format!("{issuer}/password"),
            &post(
                &bob.password,
                "Bobs-New-Pass-3!",
                "Bobs-New-Pass-3!",
                &differ,
            ),
        )
        .await;
    let location = done.location().expect("back to the application").to_owned();
    assert!(location.starts_with(redirect), "{location}");
    let answer = query(&location);
    assert_eq!(answer.get("state").map(String::as_str), Some("s1"));
    assert!(answer.contains_key("code"));
    assert!(!location.contains("Bobs-New-Pass-3!") && !location.contains(&bob.password));
    cluster
        .sign_in(&bob.upn, "Bobs-New-Pass-3!")
        .await
        .expect("the new password signs in");
}

//! The LDAP backend against a real Active Directory domain controller (Samba 4, provisioned by
//! the harness): every account state AD reports, `DOMAIN\user` names, several matches refused,
//! the domain's lockout policy read, and nested groups through `LDAP_MATCHING_RULE_IN_CHAIN`.
//!
//! Needs the Debian packages `samba`, `ldap-utils` and `iproute2`, and root (Samba serves on a
//! loopback address of its own); the README's test command installs them.

use passage_credentials::Password;
use passage_directory::{
    Directory, LdapConfig, LdapDirectory, Verdict,
    groups::{GroupClaim, NestedGroups},
    ldap::GroupSearch,
};
use passage_tests::samba::{self, SambaDc};

/// The agent's configuration for `dc`: LDAPS trusting the DC's self-signed certificate by its
/// pin, the Administrator as service account, groups by search from the domain's root.
fn config(dc: &SambaDc) -> LdapConfig {
    LdapConfig {
        pinned_certificates_sha256: vec![passage_tests::slapd::certificate_pin(
            &dc.certificate_pem(),
        )],
        bind_dn: Some(samba::ADMIN_UPN.into()),
        bind_password: Some(samba::ADMIN_PASSWORD.into()),
        id_attribute: "objectGUID".into(),
        group_search: Some(GroupSearch {
            base_dn: samba::BASE_DN.into(),
            filter: "(objectClass=group)".into(),
            member_attribute: "member".into(),
            name_attribute: "cn".into(),
        }),
        ..LdapConfig::new(dc.url(), samba::BASE_DN)
    }
}

async fn answer(directory: &LdapDirectory, login: &str, password: &str) -> Verdict {
    let password = Password::new(password.to_owned()).unwrap();
    directory.authenticate(login, &password).await.unwrap()
}

/// What the domain controller itself answers a bind (the agent folds some codes together).
async fn bind_text(dc: &SambaDc, login: &str, password: &str) -> String {
    let settings = ldap3::LdapConnSettings::new().set_no_tls_verify(true);
    let (conn, mut ldap) = ldap3::LdapConnAsync::with_settings(settings, &dc.url())
        .await
        .unwrap();
    ldap3::drive!(conn);
    let result = ldap.simple_bind(login, password).await.unwrap();
    let _ = ldap.unbind().await;
    result.text
}

fn upn(name: &str) -> String {
    format!("{name}@{}", samba::DOMAIN)
}

fn sorted(values: &[&str]) -> Vec<String> {
    let mut values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread")]
async fn active_directory_states_names_and_groups() {
    let dc = SambaDc::start();
    let password = |name: &str| format!("{name}-Pass-1!");
    for name in ["alice", "bob", "carol", "dave", "erin", "gina", "hank"] {
        dc.tool(&["user", "create", name, &password(name)]);
    }
    for name in ["frank", "fred"] {
        dc.tool(&[
            "user",
            "create",
            name,
            &password(name),
            "--mail-address=shared@corp.example.com",
        ]);
    }
    dc.tool(&["user", "disable", "bob"]);
    dc.tool(&["user", "setexpiry", "carol", "--days=0"]);
    dc.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: pwdLastSet\npwdLastSet: 0\n",
        SambaDc::user_dn("dave")
    ));
    // gina may never log on (logonHours: 21 bytes, every hour of the week off); hank only
    // from a workstation that is not the domain controller.
    dc.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: logonHours\nlogonHours:: {}\n",
        SambaDc::user_dn("gina"),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    ));
    dc.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userWorkstations\nuserWorkstations: KIOSK7\n",
        SambaDc::user_dn("hank")
    ));
    dc.tool(&[
        "domain",
        "passwordsettings",
        "set",
        "--account-lockout-threshold=3",
        "--account-lockout-duration=5",
        "--reset-account-lockout-after=5",
    ]);
    let directory = LdapDirectory::new(config(&dc)).unwrap();

    // Every state, told only to someone with the right password (52e otherwise) — but the
    // lockout, which AD reports whatever the password.
    match answer(&directory, &upn("alice"), &password("alice")).await {
        Verdict::Success(info) => {
            assert_eq!(info.upn, upn("alice"));
            assert_eq!(
                info.object_id.len(),
                32,
                "objectGUID, hex: {}",
                info.object_id
            );
        }
        other => panic!("alice signs in: {other:?}"),
    }
    for (name, state) in [
        ("bob", Verdict::AccountDisabled),
        ("carol", Verdict::AccountExpired),
        ("dave", Verdict::PasswordMustChange),
        ("gina", Verdict::AccountDisabled),
        ("hank", Verdict::AccountDisabled),
    ] {
        assert_eq!(
            answer(&directory, &upn(name), &password(name)).await,
            state,
            "{name}"
        );
        assert_eq!(
            answer(&directory, &upn(name), "Wrong-Pass-1!").await,
            Verdict::InvalidCredentials,
            "{name} with a wrong password"
        );
    }
    // 530 and 531 are told apart by AD itself, and read as disabled by the agent.
    for (name, code) in [("gina", "data 530,"), ("hank", "data 531,")] {
        let text = bind_text(&dc, &upn(name), &password(name)).await;
        assert!(text.contains(code), "{name}: {text}");
    }
    assert_eq!(
        answer(&directory, &upn("nobody"), "Wrong-Pass-1!").await,
        Verdict::InvalidCredentials
    );
    for _ in 0..3 {
        assert_eq!(
            answer(&directory, &upn("erin"), "Wrong-Pass-1!").await,
            Verdict::InvalidCredentials
        );
    }
    assert_eq!(
        answer(&directory, &upn("erin"), &password("erin")).await,
        Verdict::AccountLocked
    );
    // The domain's own lockout policy, read as the agent reports it.
    let policy = directory.lockout_policy().await.unwrap().expect("a policy");
    assert_eq!(policy.threshold, 3);

    // A down-level name, looked up by sAMAccountName.
    assert!(matches!(
        answer(&directory, "corp\\alice", &password("alice")).await,
        Verdict::Success(_)
    ));
    // Two entries match the login: refused, whatever the password.
    let by_mail = LdapDirectory::new(LdapConfig {
        login_attribute: "mail".into(),
        ..config(&dc)
    })
    .unwrap();
    assert_eq!(
        answer(&by_mail, "shared@corp.example.com", &password("frank")).await,
        Verdict::InvalidCredentials
    );

    // Groups: alice ∈ eng ∈ platform ∈ everyone-ad, and "Ops, EU" (a comma in the name).
    for group in ["eng", "platform", "everyone-ad"] {
        dc.tool(&["group", "add", group]);
    }
    dc.tool(&["group", "addmembers", "eng", "alice"]);
    // (samba-tool cannot escape the comma; its sAMAccountName differs from its cn.)
    dc.modify(&format!(
        "dn: CN=Ops\\, EU,{users}\nchangetype: add\nobjectClass: group\nsAMAccountName: Ops-EU\n\
         member: {alice}\n",
        users = samba::USERS_DN,
        alice = SambaDc::user_dn("alice"),
    ));
    dc.tool(&["group", "addmembers", "platform", "eng"]);
    dc.tool(&["group", "addmembers", "everyone-ad", "platform"]);
    let groups_with = |config: LdapConfig| async {
        match answer(
            &LdapDirectory::new(config).unwrap(),
            &upn("alice"),
            &password("alice"),
        )
        .await
        {
            Verdict::Success(info) => info.groups,
            other => panic!("alice signs in: {other:?}"),
        }
    };
    assert_eq!(
        groups_with(config(&dc)).await,
        sorted(&["Ops, EU", "eng"]),
        "direct memberships by search"
    );
    assert_eq!(
        groups_with(LdapConfig {
            nested_groups: NestedGroups::MatchingRuleInChain,
            ..config(&dc)
        })
        .await,
        sorted(&["Ops, EU", "eng", "everyone-ad", "platform"]),
        "the server follows the nesting"
    );
    assert_eq!(
        groups_with(LdapConfig {
            nested_groups: NestedGroups::MatchingRuleInChain,
            group_claim: GroupClaim::SamAccountName,
            ..config(&dc)
        })
        .await,
        sorted(&["Ops-EU", "eng", "everyone-ad", "platform"]),
        "sAMAccountName names them"
    );
    assert_eq!(
        groups_with(LdapConfig {
            group_search: None,
            group_attribute: Some("memberOf".into()),
            ..config(&dc)
        })
        .await,
        sorted(&["Ops, EU", "eng"]),
        "memberOf values, parsed as DNs (the escaped comma kept)"
    );

    // Password writeback: dave must change his password (773); AD checks the old one itself
    // and its own policy for the new one (0000052D: too short for the domain's minimum).
    let writeback = LdapDirectory::new(LdapConfig {
        password_change: passage_directory::password_change::PasswordChange::ActiveDirectory,
        ..config(&dc)
    })
    .unwrap();
    let change = |old: &str, new: &str| {
        let (old, new) = (
            Password::new(old.to_owned()).unwrap(),
            Password::new(new.to_owned()).unwrap(),
        );
        let writeback = &writeback;
        async move {
            writeback
                .change_password(&upn("dave"), &old, &new)
                .await
                .unwrap()
        }
    };
    use passage_directory::password_change::{ChangeOutcome, Rejection};
    assert_eq!(
        change(&password("dave"), "a1!").await,
        ChangeOutcome::Rejected(Rejection::Policy)
    );
    assert_eq!(
        change("Wrong-Pass-1!", "Daves-New-Pass-2!").await,
        ChangeOutcome::Refused(Verdict::InvalidCredentials)
    );
    match change(&password("dave"), "Daves-New-Pass-2!").await {
        ChangeOutcome::Changed(info) => assert_eq!(info.upn, upn("dave")),
        other => panic!("dave's change: {other:?}"),
    }
    assert!(matches!(
        answer(&directory, &upn("dave"), "Daves-New-Pass-2!").await,
        Verdict::Success(_)
    ));
    assert_eq!(
        answer(&directory, &upn("dave"), &password("dave")).await,
        Verdict::InvalidCredentials,
        "the old password no longer works"
    );
}

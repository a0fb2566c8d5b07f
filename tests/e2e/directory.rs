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
        let mut ldif =
            format!("dn: {dn}\nchangetype: add\nobjectClass: groupOfNames\ncn: {cn}\n");
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

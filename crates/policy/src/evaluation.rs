//! Evaluating the policies for one sign-in, and explaining the result: a short summary for
//! the sign-in log and a full what-if report for administrators.

use std::net::IpAddr;
use std::time::Duration;

use crate::model::{
    ClientType, Entry, Grant, NameTarget, NamedNetwork, NetworkTarget, Policy, PolicyState,
    Selection,
};

/// What the gateway knows about a sign-in once the directory said the password is right.
#[derive(Debug, Clone, Copy)]
pub struct SignInFacts<'a> {
    /// The user principal name signed in with (compared case-insensitively).
    pub user: &'a str,
    /// The user's groups, as the directory answered them (compared case-insensitively).
    pub groups: &'a [String],
    /// The client id of the application signed in to.
    pub application: &'a str,
    /// The client's address, when known; an IPv4-mapped IPv6 address counts as IPv4.
    pub client_ip: Option<IpAddr>,
    /// Whether the address is in no network the user signed in from before.
    pub unfamiliar_location: bool,
    /// How the client reached the gateway.
    pub client_type: ClientType,
}

/// The decision for one sign-in, and how it came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// What is enforced: the greatest grant of the enabled policies that apply; `Allow` when
    /// none applies.
    pub grant: Grant,
    /// The smallest token lifetime among the enabled policies that apply (`None`: none asks
    /// for one; the gateway's default holds).
    pub token_lifetime: Option<Duration>,
    /// The enabled policies that apply with exactly `grant`, in file order; empty when no
    /// enabled policy applies (the default allow).
    pub deciding_policies: Vec<String>,
    /// The report-only policies that apply, with what they would have done.
    pub report_only: Vec<(String, Grant)>,
    /// Every policy, in file order.
    pub results: Vec<PolicyResult>,
}

/// How one policy came out for one sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// The policy's name.
    pub name: String,
    /// Its state; a disabled policy is not evaluated.
    pub state: PolicyState,
    /// Whether all its conditions match (never for a disabled policy).
    pub applies: bool,
    /// What it does (or would do, report-only) when it applies.
    pub grant: Grant,
    /// One line per condition evaluated, saying how it matched or why not.
    pub reasons: Vec<String>,
}

impl Evaluation {
    /// One line for the sign-in log: the grant, the policies that decided it and what
    /// report-only policies would have done. Policy names only, so no user name or address
    /// ends up in the log through it.
    pub fn summary(&self) -> String {
        let mut summary = if self.deciding_policies.is_empty() {
            format!("{} (no enabled policy applies)", self.grant)
        } else {
            format!("{} by {}", self.grant, self.deciding_policies.join(", "))
        };
        if !self.report_only.is_empty() {
            let would = self
                .report_only
                .iter()
                .map(|(name, grant)| format!("{name} would {}", grant.verb()))
                .collect::<Vec<_>>();
            summary.push_str("; report-only: ");
            summary.push_str(&would.join(", "));
        }
        summary
    }

    /// The what-if report: one block per policy in file order (whether it applies, its state
    /// and grant, then its reasons indented), and the result.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        if self.results.is_empty() {
            out.push_str("no policies\n");
        }
        for result in &self.results {
            let marker = if result.applies {
                "[applies]"
            } else {
                "[ -- ]"
            };
            out.push_str(&format!(
                "{marker} {} ({}): {}",
                result.name, result.state, result.grant
            ));
            if result.applies && result.state == PolicyState::ReportOnly {
                out.push_str(" (report only, not enforced)");
            }
            out.push('\n');
            for reason in &result.reasons {
                out.push_str("    ");
                out.push_str(reason);
                out.push('\n');
            }
        }
        out.push_str(&format!("result: {}", self.grant));
        if let Some(lifetime) = self.token_lifetime {
            out.push_str(&format!(" (token lifetime {} s)", lifetime.as_secs()));
        }
        out
    }
}

/// The facts in the form compared: names case-folded once, the address canonical.
struct Facts<'a> {
    /// As given.
    given: SignInFacts<'a>,
    /// The user, case-folded.
    user: String,
    /// The groups, case-folded.
    groups: Vec<String>,
    /// The address, IPv4-mapped IPv6 turned into IPv4.
    ip: Option<IpAddr>,
}

impl<'a> Facts<'a> {
    fn of(given: &SignInFacts<'a>) -> Facts<'a> {
        Facts {
            given: *given,
            user: given.user.to_lowercase(),
            groups: given
                .groups
                .iter()
                .map(|group| group.to_lowercase())
                .collect(),
            ip: given.client_ip.map(|ip| ip.to_canonical()),
        }
    }
}

/// Evaluates every policy for one sign-in and combines the enabled ones that apply.
pub(crate) fn evaluate(
    networks: &[NamedNetwork],
    policies: &[Policy],
    sign_in: &SignInFacts<'_>,
) -> Evaluation {
    let facts = Facts::of(sign_in);
    let results: Vec<PolicyResult> = policies
        .iter()
        .map(|policy| assess(policy, networks, &facts))
        .collect();
    let applying = |state: PolicyState| {
        policies
            .iter()
            .zip(&results)
            .filter(move |&(policy, result)| policy.state == state && result.applies)
            .map(|(policy, _)| policy)
    };
    let enforced: Vec<&Policy> = applying(PolicyState::Enabled).collect();
    let grant = enforced
        .iter()
        .map(|policy| policy.grant)
        .max()
        .unwrap_or(Grant::Allow);
    let deciding_policies = enforced
        .iter()
        .filter(|policy| policy.grant == grant)
        .map(|policy| policy.name.clone())
        .collect();
    let token_lifetime = enforced
        .iter()
        .filter_map(|policy| policy.token_lifetime)
        .min();
    let report_only = applying(PolicyState::ReportOnly)
        .map(|policy| (policy.name.clone(), policy.grant))
        .collect();
    Evaluation {
        grant,
        token_lifetime,
        deciding_policies,
        report_only,
        results,
    }
}

/// How a list condition came out; an exclusion is looked for first because it wins.
enum Outcome {
    /// An exclude entry matched (described).
    Excluded(String),
    /// An include entry matched (described).
    Included(String),
    /// No include list, and no exclude entry matched.
    IncludedByDefault,
    /// Neither list matched.
    NotIncluded,
}

impl Outcome {
    fn matches(&self) -> bool {
        matches!(self, Outcome::Included(_) | Outcome::IncludedByDefault)
    }
}

/// Matches a selection; `describe` says how an entry matches the sign-in, or `None`.
fn select<T>(selection: &Selection<T>, describe: impl Fn(&Entry<T>) -> Option<String>) -> Outcome {
    if let Some(by) = selection.exclude.iter().find_map(&describe) {
        return Outcome::Excluded(by);
    }
    match &selection.include {
        None => Outcome::IncludedByDefault,
        Some(include) => include
            .iter()
            .find_map(&describe)
            .map_or(Outcome::NotIncluded, Outcome::Included),
    }
}

/// The conditions checked so far: whether all matched, and the reasons.
struct Checklist {
    applies: bool,
    reasons: Vec<String>,
}

impl Checklist {
    fn check(&mut self, matched: bool, reason: String) {
        self.applies &= matched;
        self.reasons.push(reason);
    }

    /// Records a user, group or application condition, whose reasons read alike.
    fn check_names(
        &mut self,
        condition: &str,
        outcome: Outcome,
        not_included: impl FnOnce() -> String,
    ) {
        let reason = match &outcome {
            Outcome::Excluded(by) => format!("{condition}: excluded by {by}"),
            Outcome::Included(by) => format!("{condition}: included by {by}"),
            Outcome::IncludedByDefault => {
                format!("{condition}: included (no include list), not excluded")
            }
            Outcome::NotIncluded => format!("{condition}: {}", not_included()),
        };
        self.check(outcome.matches(), reason);
    }
}

/// Describes a name entry that matches: the entry as written, quoted.
fn quoted<T>(entry: &Entry<T>) -> String {
    format!("\"{}\"", entry.written)
}

/// Evaluates one policy. Every condition is evaluated, even after one failed, so that the
/// explanation is complete.
fn assess(policy: &Policy, networks: &[NamedNetwork], facts: &Facts<'_>) -> PolicyResult {
    let mut checklist = Checklist {
        applies: true,
        reasons: Vec::new(),
    };
    if policy.state == PolicyState::Disabled {
        checklist.check(false, "state: disabled, not evaluated".to_owned());
        return result(policy, checklist);
    }
    let conditions = &policy.conditions;

    if let Some(users) = &conditions.users {
        let outcome = select(users, |entry| match &entry.target {
            NameTarget::All => Some(quoted(entry)),
            NameTarget::Named(user) => (*user == facts.user).then(|| quoted(entry)),
        });
        checklist.check_names("users", outcome, || {
            format!("{} not in [{}]", facts.given.user, users.include_list())
        });
    }

    if let Some(groups) = &conditions.groups {
        let outcome = select(groups, |entry| match &entry.target {
            NameTarget::All => Some(quoted(entry)),
            NameTarget::Named(group) => facts
                .groups
                .iter()
                .any(|member_of| member_of == group)
                .then(|| quoted(entry)),
        });
        checklist.check_names("groups", outcome, || {
            format!("no group in [{}]", groups.include_list())
        });
    }

    if let Some(applications) = &conditions.applications {
        let outcome = select(applications, |entry| match &entry.target {
            NameTarget::All => Some(quoted(entry)),
            NameTarget::Named(application) => {
                (application == facts.given.application).then(|| quoted(entry))
            }
        });
        checklist.check_names("applications", outcome, || {
            format!(
                "{} not in [{}]",
                facts.given.application,
                applications.include_list()
            )
        });
    }

    if let Some(selection) = &conditions.networks {
        let (matched, reason) = match facts.ip {
            // In no named network: only `any` (or no include list) includes it, and nothing
            // excludes it.
            None => {
                let included = selection.include.as_ref().is_none_or(|include| {
                    include
                        .iter()
                        .any(|entry| entry.target == NetworkTarget::Any)
                });
                let outcome = if included { "included" } else { "not included" };
                (
                    included,
                    format!("networks: no client IP; matches only \"any\" ({outcome})"),
                )
            }
            Some(ip) => {
                let outcome = select(selection, |entry| match entry.target {
                    NetworkTarget::Any => Some(format!("{ip} matches \"any\"")),
                    NetworkTarget::Trusted => networks
                        .iter()
                        .find(|network| network.trusted && network.contains(ip))
                        .map(|network| format!("{ip} is in trusted network \"{}\"", network.name)),
                    NetworkTarget::Named(index) => {
                        let network = &networks[index];
                        network
                            .contains(ip)
                            .then(|| format!("{ip} is in network \"{}\"", network.name))
                    }
                });
                let reason = match &outcome {
                    Outcome::Excluded(how) => format!("networks: {how} (excluded)"),
                    Outcome::Included(how) => format!("networks: {how} (included)"),
                    Outcome::IncludedByDefault => {
                        format!("networks: {ip} included (no include list), not excluded")
                    }
                    Outcome::NotIncluded => format!(
                        "networks: {ip} is in none of [{}]",
                        selection.include_list()
                    ),
                };
                (outcome.matches(), reason)
            }
        };
        checklist.check(matched, reason);
    }

    if let Some(wanted) = conditions.unfamiliar_location {
        let unfamiliar = facts.given.unfamiliar_location;
        let from = if unfamiliar {
            "an unfamiliar"
        } else {
            "a familiar"
        };
        let matched = wanted == unfamiliar;
        let verdict = if matched { "matches" } else { "does not match" };
        checklist.check(
            matched,
            format!("unfamiliar_location: the sign-in is from {from} network ({verdict})"),
        );
    }

    if let Some(client_types) = &conditions.client_types {
        let client_type = facts.given.client_type;
        let matched = client_types.contains(&client_type);
        let list = client_types
            .iter()
            .map(|client_type| client_type.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let relation = if matched { "in" } else { "not in" };
        checklist.check(
            matched,
            format!("client_types: {client_type} {relation} [{list}]"),
        );
    }

    if checklist.reasons.is_empty() {
        checklist.check(
            true,
            "conditions: none, applies to every sign-in".to_owned(),
        );
    }
    result(policy, checklist)
}

/// A policy's result from its checklist.
fn result(policy: &Policy, checklist: Checklist) -> PolicyResult {
    PolicyResult {
        name: policy.name.clone(),
        state: policy.state,
        applies: checklist.applies,
        grant: policy.grant,
        reasons: checklist.reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicySet;

    /// Named networks and policies covering every condition and state.
    const FIXTURE: &str = r#"
named_networks:
  - name: offices
    trusted: true
    cidrs: [203.0.113.0/24, "2001:db8:1::/48"]
  - name: known-bad
    cidrs: [198.51.100.0/24]
  - name: lab
    cidrs: ["192.0.2.128/25"]
policies:
  - name: block-known-bad
    conditions:
      users: { exclude: [breakglass@corp.example.com] }
      networks: { include: [known-bad] }
    grant: block
  - name: admins-mfa
    conditions:
      groups: { include: [Admins], exclude: [contractors] }
    grant: require_mfa
    session: { token_lifetime_s: 3600 }
  - name: mfa-unfamiliar-outside-offices
    conditions:
      users: { include: [all], exclude: [breakglass@corp.example.com] }
      applications: { include: [all], exclude: [kiosk] }
      networks: { include: [any], exclude: [trusted] }
      unfamiliar_location: true
    grant: require_mfa
    session: { token_lifetime_s: 1800 }
  - name: short-sessions-outside-offices
    conditions:
      networks: { exclude: [trusted] }
    grant: allow
    session: { token_lifetime_s: 900 }
  - name: report-block-legacy
    state: report_only
    conditions:
      applications: { include: [legacy-app] }
    grant: block
    session: { token_lifetime_s: 60 }
  - name: portal-browser-mfa
    conditions:
      applications: { include: [portal] }
      client_types: [browser]
    grant: require_mfa
  - name: lab-familiar-allow
    conditions:
      networks: { include: [lab] }
      unfamiliar_location: false
    grant: allow
    session: { token_lifetime_s: 7200 }
  - name: block-everything
    state: disabled
    grant: block
"#;

    /// A sign-in and what the fixture must make of it.
    #[derive(Clone, Copy)]
    struct Case {
        name: &'static str,
        user: &'static str,
        groups: &'static [&'static str],
        application: &'static str,
        ip: Option<&'static str>,
        unfamiliar: bool,
        client_type: ClientType,
        grant: Grant,
        deciding: &'static [&'static str],
        report_only: &'static [(&'static str, Grant)],
        token_lifetime_s: Option<u64>,
        /// Lines the what-if report must contain: the reasons that decide the case.
        reasons: &'static [&'static str],
    }

    /// An ordinary user in the office, to which no policy applies.
    const OFFICE: Case = Case {
        name: "",
        user: "alice@corp.example.com",
        groups: &[],
        application: "mail",
        ip: Some("203.0.113.9"),
        unfamiliar: false,
        client_type: ClientType::Grpc,
        grant: Grant::Allow,
        deciding: &[],
        report_only: &[],
        token_lifetime_s: None,
        reasons: &[],
    };

    const SHORT: &[&str] = &["short-sessions-outside-offices"];
    const UNFAMILIAR: &[&str] = &["mfa-unfamiliar-outside-offices"];

    #[test]
    fn the_documented_precedence_holds() {
        use Grant::*;
        let table: &[Case] = &[
            Case {
                name: "default allow: no policy applies in the office",
                reasons: &[
                    r#"networks: 203.0.113.9 is in trusted network "offices" (excluded)"#,
                    "networks: 203.0.113.9 is in none of [known-bad]",
                ],
                ..OFFICE
            },
            Case {
                name: "admins need MFA; group names are case-insensitive",
                groups: &["admins"],
                grant: RequireMfa,
                deciding: &["admins-mfa"],
                token_lifetime_s: Some(3600),
                reasons: &[r#"groups: included by "Admins""#],
                ..OFFICE
            },
            Case {
                name: "a group exclusion beats the inclusion",
                groups: &["ADMINS", "Contractors"],
                reasons: &[r#"groups: excluded by "contractors""#],
                ..OFFICE
            },
            Case {
                name: "block beats require_mfa beats allow; the smallest lifetime wins",
                groups: &["admins"],
                ip: Some("198.51.100.7"),
                unfamiliar: true,
                grant: Block,
                deciding: &["block-known-bad"],
                token_lifetime_s: Some(900),
                reasons: &[
                    r#"networks: 198.51.100.7 is in network "known-bad" (included)"#,
                    "[applies] admins-mfa (enabled): require_mfa",
                    "[applies] short-sessions-outside-offices (enabled): allow",
                ],
                ..OFFICE
            },
            Case {
                name: "a user exclusion beats the inclusion, case-insensitively",
                user: "BreakGlass@Corp.Example.com",
                ip: Some("198.51.100.7"),
                unfamiliar: true,
                deciding: SHORT,
                token_lifetime_s: Some(900),
                reasons: &[r#"users: excluded by "breakglass@corp.example.com""#],
                ..OFFICE
            },
            Case {
                name: "require_mfa beats allow: unfamiliar location outside the offices",
                ip: Some("192.0.2.10"),
                unfamiliar: true,
                grant: RequireMfa,
                deciding: UNFAMILIAR,
                token_lifetime_s: Some(900),
                reasons: &[
                    "unfamiliar_location: the sign-in is from an unfamiliar network (matches)",
                    r#"networks: 192.0.2.10 matches "any" (included)"#,
                ],
                ..OFFICE
            },
            Case {
                name: "two enabled policies decide together",
                groups: &["admins"],
                ip: Some("192.0.2.10"),
                unfamiliar: true,
                grant: RequireMfa,
                deciding: &["admins-mfa", "mfa-unfamiliar-outside-offices"],
                token_lifetime_s: Some(900),
                reasons: &[r#"groups: included by "Admins""#],
                ..OFFICE
            },
            Case {
                name: "a familiar location outside the offices needs no MFA",
                ip: Some("192.0.2.10"),
                deciding: SHORT,
                token_lifetime_s: Some(900),
                reasons: &[
                    "unfamiliar_location: the sign-in is from a familiar network (does not match)",
                ],
                ..OFFICE
            },
            Case {
                name: "an application exclusion beats the inclusion",
                application: "kiosk",
                ip: Some("192.0.2.10"),
                unfamiliar: true,
                deciding: SHORT,
                token_lifetime_s: Some(900),
                reasons: &[r#"applications: excluded by "kiosk""#],
                ..OFFICE
            },
            Case {
                name: "an IPv6 address in the offices is trusted",
                ip: Some("2001:db8:1::42"),
                unfamiliar: true,
                reasons: &[
                    r#"networks: 2001:db8:1::42 is in trusted network "offices" (excluded)"#,
                ],
                ..OFFICE
            },
            Case {
                name: "an IPv6 address outside the offices' prefix is not",
                ip: Some("2001:db8:2::1"),
                unfamiliar: true,
                grant: RequireMfa,
                deciding: UNFAMILIAR,
                token_lifetime_s: Some(900),
                reasons: &[r#"networks: 2001:db8:2::1 matches "any" (included)"#],
                ..OFFICE
            },
            Case {
                name: "an IPv4-mapped IPv6 address is its IPv4 address: the offices",
                ip: Some("::ffff:203.0.113.9"),
                unfamiliar: true,
                reasons: &[r#"networks: 203.0.113.9 is in trusted network "offices" (excluded)"#],
                ..OFFICE
            },
            Case {
                name: "an IPv4-mapped IPv6 address is its IPv4 address: known-bad",
                ip: Some("::ffff:198.51.100.7"),
                grant: Block,
                deciding: &["block-known-bad"],
                token_lifetime_s: Some(900),
                reasons: &[r#"networks: 198.51.100.7 is in network "known-bad" (included)"#],
                ..OFFICE
            },
            Case {
                name: "without a client IP only `any` (or no include list) matches",
                ip: None,
                unfamiliar: true,
                grant: RequireMfa,
                deciding: UNFAMILIAR,
                token_lifetime_s: Some(900),
                reasons: &[
                    r#"networks: no client IP; matches only "any" (included)"#,
                    r#"networks: no client IP; matches only "any" (not included)"#,
                ],
                ..OFFICE
            },
            Case {
                name: "report-only is reported, never enforced, and sets no lifetime",
                application: "legacy-app",
                report_only: &[("report-block-legacy", Block)],
                reasons: &[
                    r#"applications: included by "legacy-app""#,
                    "[applies] report-block-legacy (report_only): block (report only, not enforced)",
                ],
                ..OFFICE
            },
            Case {
                name: "a browser sign-in to the portal needs MFA",
                application: "portal",
                client_type: ClientType::Browser,
                grant: RequireMfa,
                deciding: &["portal-browser-mfa"],
                reasons: &[
                    r#"applications: included by "portal""#,
                    "client_types: browser in [browser]",
                ],
                ..OFFICE
            },
            Case {
                name: "a gRPC sign-in to the portal does not",
                application: "portal",
                reasons: &["client_types: grpc not in [browser]"],
                ..OFFICE
            },
            Case {
                name: "a disabled policy is listed, not evaluated",
                reasons: &[
                    "[ -- ] block-everything (disabled): block\n    state: disabled, not evaluated",
                ],
                ..OFFICE
            },
            Case {
                name: "unfamiliar_location false matches familiar networks; smallest lifetime",
                ip: Some("192.0.2.200"),
                deciding: &["short-sessions-outside-offices", "lab-familiar-allow"],
                token_lifetime_s: Some(900),
                reasons: &[
                    r#"networks: 192.0.2.200 is in network "lab" (included)"#,
                    "unfamiliar_location: the sign-in is from a familiar network (matches)",
                ],
                ..OFFICE
            },
            Case {
                name: "unfamiliar_location false does not match an unfamiliar network",
                ip: Some("192.0.2.200"),
                unfamiliar: true,
                grant: RequireMfa,
                deciding: UNFAMILIAR,
                token_lifetime_s: Some(900),
                reasons: &[
                    "unfamiliar_location: the sign-in is from an unfamiliar network (does not match)",
                ],
                ..OFFICE
            },
        ];

        let set = PolicySet::parse(FIXTURE, "fixture.yaml").unwrap();
        assert_eq!(set.policy_count(), 8);
        for case in table {
            let groups: Vec<String> = case.groups.iter().map(|group| group.to_string()).collect();
            let facts = SignInFacts {
                user: case.user,
                groups: &groups,
                application: case.application,
                client_ip: case.ip.map(|ip| ip.parse().unwrap()),
                unfamiliar_location: case.unfamiliar,
                client_type: case.client_type,
            };
            let evaluation = set.evaluate(&facts);
            let explain = evaluation.explain();
            let name = case.name;
            assert_eq!(evaluation.grant, case.grant, "{name}\n{explain}");
            assert_eq!(
                evaluation.deciding_policies, case.deciding,
                "{name}\n{explain}"
            );
            let report_only: Vec<(String, Grant)> = case
                .report_only
                .iter()
                .map(|&(policy, grant)| (policy.to_owned(), grant))
                .collect();
            assert_eq!(evaluation.report_only, report_only, "{name}\n{explain}");
            assert_eq!(
                evaluation.token_lifetime,
                case.token_lifetime_s.map(Duration::from_secs),
                "{name}\n{explain}"
            );

            // The what-if report shows why, and ends with the result.
            for reason in case.reasons {
                assert!(
                    explain.contains(*reason),
                    "{name}: no {reason:?} in\n{explain}"
                );
            }
            let result = match case.token_lifetime_s {
                Some(seconds) => format!("result: {} (token lifetime {seconds} s)", case.grant),
                None => format!("result: {}", case.grant),
            };
            assert!(explain.ends_with(&result), "{name}\n{explain}");
            assert_eq!(evaluation.results.len(), 8, "{name}");
            assert!(!evaluation.results[7].applies, "{name}");

            // The sign-in log line names policies only.
            let summary = evaluation.summary();
            assert!(!summary.contains('@'), "{name}: {summary}");
            if let Some(ip) = case.ip {
                assert!(!summary.contains(ip), "{name}: {summary}");
            }
        }
    }

    /// A smaller set whose what-if report is checked line for line.
    const SMALL: &str = r#"
named_networks:
  - name: offices
    trusted: true
    cidrs: [203.0.113.0/24]
policies:
  - name: require-mfa-outside-offices
    conditions:
      users: { include: [all], exclude: [breakglass@corp.example.com] }
      networks: { include: [any], exclude: [trusted] }
    grant: require_mfa
    session: { token_lifetime_s: 3600 }
  - name: block-legacy
    state: report_only
    conditions:
      applications: { include: [legacy] }
      client_types: [grpc]
    grant: block
  - name: admins-only
    conditions:
      groups: { include: [admins] }
      unfamiliar_location: true
    grant: block
  - name: retired
    state: disabled
    grant: allow
"#;

    #[test]
    fn what_if_and_summary_read_as_documented() {
        let set = PolicySet::parse(SMALL, "small.yaml").unwrap();
        let staff = vec!["staff".to_owned()];
        let evaluation = set.evaluate(&SignInFacts {
            user: "alice@corp.example.com",
            groups: &staff,
            application: "legacy",
            client_ip: Some("192.0.2.1".parse().unwrap()),
            unfamiliar_location: false,
            client_type: ClientType::Grpc,
        });
        let expected = [
            "[applies] require-mfa-outside-offices (enabled): require_mfa",
            r#"    users: included by "all""#,
            r#"    networks: 192.0.2.1 matches "any" (included)"#,
            "[applies] block-legacy (report_only): block (report only, not enforced)",
            r#"    applications: included by "legacy""#,
            "    client_types: grpc in [grpc]",
            "[ -- ] admins-only (enabled): block",
            "    groups: no group in [admins]",
            "    unfamiliar_location: the sign-in is from a familiar network (does not match)",
            "[ -- ] retired (disabled): allow",
            "    state: disabled, not evaluated",
            "result: require_mfa (token lifetime 3600 s)",
        ]
        .join("\n");
        assert_eq!(evaluation.explain(), expected);
        assert_eq!(
            evaluation.summary(),
            "require_mfa by require-mfa-outside-offices; report-only: block-legacy would block"
        );

        // Every condition is evaluated even after one failed, so the report is complete.
        let evaluation = set.evaluate(&SignInFacts {
            user: "BREAKGLASS@corp.example.com",
            groups: &[],
            application: "portal",
            client_ip: None,
            unfamiliar_location: true,
            client_type: ClientType::Browser,
        });
        assert_eq!(evaluation.grant, Grant::Allow);
        assert_eq!(
            evaluation.results[0].reasons,
            [
                r#"users: excluded by "breakglass@corp.example.com""#,
                r#"networks: no client IP; matches only "any" (included)"#,
            ]
        );
        assert!(!evaluation.results[0].applies);
        assert_eq!(
            evaluation.results[1].reasons,
            [
                "applications: portal not in [legacy]",
                "client_types: browser not in [grpc]",
            ]
        );
        assert_eq!(
            evaluation.results[2].reasons,
            [
                "groups: no group in [admins]",
                "unfamiliar_location: the sign-in is from an unfamiliar network (matches)",
            ]
        );
        assert!(evaluation.explain().ends_with("\nresult: allow"));
        assert_eq!(evaluation.summary(), "allow (no enabled policy applies)");
    }

    #[test]
    fn a_policy_without_conditions_applies_to_every_sign_in() {
        let set = PolicySet::parse(
            "policies:\n  - name: everyone\n    grant: require_mfa\n",
            "all.yaml",
        )
        .unwrap();
        let evaluation = set.evaluate(&SignInFacts {
            user: "alice@corp.example.com",
            groups: &[],
            application: "portal",
            client_ip: None,
            unfamiliar_location: false,
            client_type: ClientType::Grpc,
        });
        assert_eq!(evaluation.grant, Grant::RequireMfa);
        assert_eq!(
            evaluation.results[0].reasons,
            ["conditions: none, applies to every sign-in"]
        );
    }
}

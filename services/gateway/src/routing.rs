//! Which connector group serves a username: its domain after `@` (exactly, or by a `*.suffix`
//! wildcard), its NetBIOS domain (`CORP\user`), or — for a bare `user` — the default group.
//!
//! An exact domain wins over wildcards, and the longest wildcard over shorter ones: with
//! `corp.example.com` → `hq` and `*.example.com` → `rest`, `corp.example.com` goes to `hq`
//! and `lab.example.com` to `rest`. `*.emea.example.com` matches `paris.emea.example.com` and
//! `a.b.emea.example.com`, not `emea.example.com` itself (list both when both are used).
//! A name no route serves is refused (`PSG50034`) before any agent is asked.
//!
//! Without any `[[connector_groups]]` (development), the domain itself names the group.

use std::collections::HashMap;

use passage_credentials::{NameForm, Username};

use crate::ConnectorGroupRoute;

/// A routing table that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// A domain entry is malformed.
    #[error("connector group {group:?}: domain {domain:?} {why}")]
    BadDomain {
        /// The group.
        group: String,
        /// The entry.
        domain: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Two groups claim the same domain or NetBIOS name.
    #[error("{what} {name:?} is routed to both {first:?} and {second:?}")]
    Twice {
        /// "domain" or "NetBIOS name".
        what: &'static str,
        /// The name.
        name: String,
        /// One group.
        first: String,
        /// The other.
        second: String,
    },
    /// A NetBIOS name is malformed.
    #[error(
        "connector group {group:?}: NetBIOS name {name:?} must be 1 to 15 characters, without dots, spaces or backslashes"
    )]
    BadNetbios {
        /// The group.
        group: String,
        /// The name.
        name: String,
    },
}

/// No route serves the name; says what was looked for (for logs and the error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrouted(pub String);

/// The routing table.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    exact: HashMap<String, String>,
    /// (suffix with its leading dot, group), longest suffix first.
    wildcards: Vec<(String, String)>,
    netbios: HashMap<String, String>,
    default: Option<String>,
    /// No routes configured: the domain names the group.
    open: bool,
}

impl Routes {
    /// Checks and indexes `routes`; `default` serves bare names.
    pub fn new(
        routes: &[ConnectorGroupRoute],
        default: Option<&str>,
    ) -> Result<Self, RoutingError> {
        let mut table = Routes {
            open: routes.is_empty() && default.is_none(),
            default: default.map(str::to_owned),
            ..Routes::default()
        };
        for route in routes {
            for domain in &route.domains {
                let bad = |why| RoutingError::BadDomain {
                    group: route.name.clone(),
                    domain: domain.clone(),
                    why,
                };
                let lower = domain.to_lowercase();
                let (wildcard, name) = match lower.strip_prefix("*.") {
                    Some(rest) => (true, rest.to_owned()),
                    None => (false, lower.clone()),
                };
                if name.is_empty() || name.contains('*') || name.contains('@') {
                    return Err(bad("must be a domain, or *. followed by one"));
                }
                if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
                    return Err(bad("has an empty label"));
                }
                let key = if wildcard { format!(".{name}") } else { name };
                if wildcard {
                    if let Some((_, first)) = table.wildcards.iter().find(|(s, _)| *s == key) {
                        return Err(twice("domain", domain, first, &route.name));
                    }
                    table.wildcards.push((key, route.name.clone()));
                } else if let Some(first) = table.exact.insert(key.clone(), route.name.clone())
                    && first != route.name
                {
                    return Err(twice("domain", domain, &first, &route.name));
                }
            }
            for name in &route.netbios_names {
                let valid = !name.is_empty()
                    && name.chars().count() <= 15
                    && !name.contains(['.', ' ', '\\', '@', '*']);
                if !valid {
                    return Err(RoutingError::BadNetbios {
                        group: route.name.clone(),
                        name: name.clone(),
                    });
                }
                if let Some(first) = table
                    .netbios
                    .insert(name.to_uppercase(), route.name.clone())
                    && first != route.name
                {
                    return Err(twice("NetBIOS name", name, &first, &route.name));
                }
            }
        }
        table
            .wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(table)
    }

    /// How many name forms reach one account of `group`, as smart lockout counts them
    /// ([`lockout_name`]): its UPN, and its short name when `DOMAIN\\user` or a bare `user`
    /// reaches the group. Smart lockout shares the directory's room among them
    /// ([`passage_lockout::Limits::shared_by`]).
    pub fn name_forms(&self, group: &str) -> u32 {
        let short_names =
            self.netbios.values().any(|g| g == group) || self.default.as_deref() == Some(group);
        1 + u32::from(short_names)
    }

    /// The group serving `username`.
    pub fn group_for(&self, username: &Username) -> Result<String, Unrouted> {
        match username.form() {
            NameForm::Upn { domain } => {
                if self.open {
                    return Ok(domain);
                }
                if let Some(group) = self.exact.get(&domain) {
                    return Ok(group.clone());
                }
                let dotted = format!(".{domain}");
                self.wildcards
                    .iter()
                    .find(|(suffix, _)| dotted.ends_with(suffix.as_str()) && dotted != *suffix)
                    .map(|(_, group)| group.clone())
                    .ok_or(Unrouted(domain))
            }
            NameForm::DownLevel { netbios, .. } => self
                .netbios
                .get(&netbios)
                .cloned()
                .ok_or(Unrouted(format!("{netbios}\\"))),
            NameForm::Bare => self
                .default
                .clone()
                .ok_or(Unrouted("(a name without a domain)".into())),
        }
    }
}

/// The name smart lockout counts `username` under once routed to `group`: a UPN as typed; a
/// `DOMAIN\\user` or bare `user` as `<group>\\<user>` — the agent looks both up by the same
/// short-name attribute in the group's directory, whatever NetBIOS name was typed, so they are
/// one account and one count.
pub fn lockout_name(username: &Username, group: &str) -> String {
    match username.form() {
        NameForm::Upn { .. } => username.as_str().to_owned(),
        NameForm::DownLevel { account, .. } => format!("{group}\\{account}"),
        NameForm::Bare => format!("{group}\\{}", username.as_str()),
    }
}

fn twice(what: &'static str, name: &str, first: &str, second: &str) -> RoutingError {
    RoutingError::Twice {
        what,
        name: name.to_owned(),
        first: first.to_owned(),
        second: second.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, domains: &[&str], netbios: &[&str]) -> ConnectorGroupRoute {
        ConnectorGroupRoute {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            netbios_names: netbios.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn group(routes: &Routes, name: &str) -> Result<String, Unrouted> {
        routes.group_for(&Username::parse(name).unwrap())
    }

    #[test]
    fn exact_domains_then_the_longest_wildcard() {
        let routes = Routes::new(
            &[
                route("hq", &["corp.example.com"], &["CORP"]),
                route("rest", &["*.example.com"], &[]),
                route(
                    "emea",
                    &["*.EMEA.example.com", "emea.example.com"],
                    &["emea"],
                ),
            ],
            Some("hq"),
        )
        .unwrap();
        assert_eq!(group(&routes, "a@Corp.Example.com").unwrap(), "hq");
        assert_eq!(group(&routes, "a@lab.example.com").unwrap(), "rest");
        assert_eq!(group(&routes, "a@paris.emea.example.com").unwrap(), "emea");
        assert_eq!(
            group(&routes, "a@x.paris.emea.example.com").unwrap(),
            "emea"
        );
        assert_eq!(group(&routes, "a@emea.example.com").unwrap(), "emea");
        assert_eq!(
            group(&routes, "a@example.com"),
            Err(Unrouted("example.com".into())),
            "a wildcard does not match its own suffix"
        );
        assert_eq!(
            group(&routes, "a@notexample.com"),
            Err(Unrouted("notexample.com".into())),
            "a wildcard matches whole labels"
        );
        assert_eq!(group(&routes, "corp\\alice").unwrap(), "hq");
        assert_eq!(group(&routes, "Emea\\bob").unwrap(), "emea");
        assert_eq!(group(&routes, "LAB\\bob"), Err(Unrouted("LAB\\".into())));
        assert_eq!(group(&routes, "alice").unwrap(), "hq", "bare: the default");
        assert_eq!(routes.name_forms("hq"), 2);
        assert_eq!(routes.name_forms("emea"), 2);
        assert_eq!(routes.name_forms("rest"), 1);
        // Every short form of one account counts as one name, whatever NetBIOS name was typed.
        let key = |name: &str| lockout_name(&Username::parse(name).unwrap(), "hq");
        assert_eq!(key("CORP\\alice"), key("corpeu\\alice"));
        assert_eq!(key("CORP\\alice"), key("alice"));
        assert_ne!(key("CORP\\alice"), key("alice@corp.example.com"));
    }

    #[test]
    fn without_a_default_bare_names_are_unrouted() {
        let routes = Routes::new(&[route("hq", &["corp.example.com"], &[])], None).unwrap();
        assert!(group(&routes, "alice").is_err());
        // No routes at all (development): the domain names the group.
        let open = Routes::new(&[], None).unwrap();
        assert_eq!(
            group(&open, "a@Corp.Example.com").unwrap(),
            "corp.example.com"
        );
        assert!(group(&open, "CORP\\a").is_err());
    }

    #[test]
    fn bad_tables_are_refused() {
        for (routes, needle) in [
            (vec![route("a", &["*"], &[])], "must be a domain"),
            (vec![route("a", &["a.*.com"], &[])], "must be a domain"),
            (vec![route("a", &["corp..com"], &[])], "empty label"),
            (
                vec![route("a", &["x.com"], &[]), route("b", &["X.com"], &[])],
                "routed to both",
            ),
            (
                vec![route("a", &["*.x.com"], &[]), route("b", &["*.x.com"], &[])],
                "routed to both",
            ),
            (vec![route("a", &[], &["CORP.EU"])], "NetBIOS"),
            (vec![route("a", &[], &["ABCDEFGHIJKLMNOP"])], "NetBIOS"),
            (
                vec![route("a", &[], &["CORP"]), route("b", &[], &["corp"])],
                "routed to both",
            ),
        ] {
            let err = Routes::new(&routes, None).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}

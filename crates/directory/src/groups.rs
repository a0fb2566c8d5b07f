//! Which groups a user is in, and how they are named in the token.
//!
//! * [`GroupClaim`]: a group's name (the `cn`; readable, but two groups of one name in
//!   different OUs — `CN=Domain Admins,CN=Users` and `CN=Domain Admins,OU=Sandbox` — collide),
//!   its DN (unique), or its `sAMAccountName` (unique within an AD domain).
//! * [`NestedGroups`]: direct memberships only, AD's `LDAP_MATCHING_RULE_IN_CHAIN` (the
//!   server walks the nesting), or a breadth-first walk done here for servers without it
//!   (OpenLDAP), bounded in depth and stopped at groups already seen (cycles).
//!
//! This module holds the decisions (filters, naming, the walk's bookkeeping); the LDAP backend
//! runs the searches.

use std::collections::HashSet;

use ldap3::ldap_escape;
use serde::Deserialize;

use crate::dn;

/// AD's matching rule that follows nested membership (`member:1.2.840.113556.1.4.1941:=`).
pub const MATCHING_RULE_IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

/// Most member values in one `(|...)` search of the recursive walk.
pub const MEMBERS_PER_SEARCH: usize = 50;

/// How a group appears in the token's `groups` claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupClaim {
    /// The group's name: `group_search.name_attribute` (default `cn`), or for `memberOf`
    /// values the first RDN's value, unescaped (RFC 4514). Names can collide across OUs.
    #[default]
    Name,
    /// The group's full DN, as the server spells it: unique.
    Dn,
    /// The group's `sAMAccountName` (Active Directory): unique within a domain.
    SamAccountName,
}

impl GroupClaim {
    /// The attribute to read from group entries for this claim, if any.
    pub fn attribute(self, name_attribute: &str) -> Option<&str> {
        match self {
            GroupClaim::Name => Some(name_attribute),
            GroupClaim::Dn => None,
            GroupClaim::SamAccountName => Some("sAMAccountName"),
        }
    }

    /// The claim value of a group whose DN is `group_dn` (a `memberOf` value), when it can be
    /// told from the DN alone (name and DN forms); `None` for `sAMAccountName`, which must be
    /// read from the group's entry.
    pub fn from_dn(self, group_dn: &str) -> Option<String> {
        match self {
            GroupClaim::Name => dn::first_rdn_value(group_dn),
            GroupClaim::Dn => Some(group_dn.to_owned()),
            GroupClaim::SamAccountName => None,
        }
    }
}

/// Whether and how nested group memberships are followed (needs `group_search`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NestedGroups {
    /// Direct memberships only.
    #[default]
    Off,
    /// Active Directory: one search with `LDAP_MATCHING_RULE_IN_CHAIN`; the server follows the
    /// nesting (and its cycles).
    MatchingRuleInChain,
    /// Any server: a breadth-first walk up the member attribute, at most `max_group_depth`
    /// levels, each group visited once.
    Recursive,
}

/// `(&<filter>(<member>=<dn>))`, or with the in-chain rule, `(&<filter>(<member>:1.2.840.113556.1.4.1941:=<dn>))`.
pub fn member_filter(
    filter: &str,
    member_attribute: &str,
    member_dn: &str,
    in_chain: bool,
) -> String {
    let rule = if in_chain {
        format!(":{MATCHING_RULE_IN_CHAIN}:")
    } else {
        String::new()
    };
    format!(
        "(&{filter}({member_attribute}{rule}={}))",
        ldap_escape(member_dn)
    )
}

/// `(&<filter>(|(<member>=<dn1>)(<member>=<dn2>)...))`: the groups holding any of `member_dns`.
pub fn any_member_filter(filter: &str, member_attribute: &str, member_dns: &[String]) -> String {
    let alternatives: String = member_dns
        .iter()
        .map(|dn| format!("({member_attribute}={})", ldap_escape(dn.as_str())))
        .collect();
    format!("(&{filter}(|{alternatives}))")
}

/// The bookkeeping of the recursive walk: which groups were seen (by normalised DN, so two
/// spellings of one DN are one group), which are to be looked up next, how deep it went.
#[derive(Debug)]
pub struct Walk {
    seen: HashSet<String>,
    frontier: Vec<String>,
    depth: u32,
    max_depth: u32,
}

impl Walk {
    /// A walk up from `member_dn` (the user), at most `max_depth` levels of groups.
    pub fn new(member_dn: &str, max_depth: u32) -> Self {
        let mut seen = HashSet::new();
        seen.insert(dn::normalise(member_dn).unwrap_or_else(|| member_dn.to_lowercase()));
        Self {
            seen,
            frontier: vec![member_dn.to_owned()],
            depth: 0,
            max_depth,
        }
    }

    /// The DNs whose groups the next level looks up, taken out of the walk; empty when it is
    /// over (nothing new at the last level, or `max_depth` reached).
    pub fn next_level(&mut self) -> Vec<String> {
        if self.depth >= self.max_depth {
            return Vec::new();
        }
        self.depth += 1;
        std::mem::take(&mut self.frontier)
    }

    /// A group found at the current level: `true` the first time (it belongs to the answer and
    /// its own groups are looked up next), `false` when already seen (a cycle, or two paths).
    pub fn found(&mut self, group_dn: &str) -> bool {
        let key = dn::normalise(group_dn).unwrap_or_else(|| group_dn.to_lowercase());
        if self.seen.insert(key) {
            self.frontier.push(group_dn.to_owned());
            true
        } else {
            false
        }
    }

    /// Whether groups were left unvisited because the walk hit `max_depth`.
    pub fn truncated(&self) -> bool {
        self.depth >= self.max_depth && !self.frontier.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_escape_the_dn_and_use_the_in_chain_rule() {
        assert_eq!(
            member_filter("(objectClass=group)", "member", "CN=A\\, B,DC=corp", true),
            "(&(objectClass=group)(member:1.2.840.113556.1.4.1941:=CN=A\\5c, B,DC=corp))"
        );
        assert_eq!(
            member_filter(
                "(objectClass=groupOfNames)",
                "member",
                "uid=x(y),dc=corp",
                false
            ),
            "(&(objectClass=groupOfNames)(member=uid=x\\28y\\29,dc=corp))"
        );
        assert_eq!(
            any_member_filter(
                "(cn=*)",
                "member",
                &["cn=a,dc=x".into(), "cn=b*,dc=x".into()]
            ),
            "(&(cn=*)(|(member=cn=a,dc=x)(member=cn=b\\2a,dc=x)))"
        );
    }

    #[test]
    fn claims_from_a_dn() {
        let dn = "CN=Ops\\, EU,OU=Groups,DC=corp";
        assert_eq!(GroupClaim::Name.from_dn(dn).as_deref(), Some("Ops, EU"));
        assert_eq!(GroupClaim::Dn.from_dn(dn).as_deref(), Some(dn));
        assert_eq!(GroupClaim::SamAccountName.from_dn(dn), None);
        assert_eq!(GroupClaim::Name.attribute("cn"), Some("cn"));
        assert_eq!(GroupClaim::Dn.attribute("cn"), None);
        assert_eq!(
            GroupClaim::SamAccountName.attribute("cn"),
            Some("sAMAccountName")
        );
    }

    #[test]
    fn the_walk_stops_at_cycles_and_at_its_depth() {
        // user -> a -> b -> a (a cycle) ; b -> c
        let mut walk = Walk::new("uid=u,dc=corp", 8);
        assert_eq!(walk.next_level(), vec!["uid=u,dc=corp".to_owned()]);
        assert!(walk.found("cn=a,dc=corp"));
        assert_eq!(walk.next_level(), vec!["cn=a,dc=corp".to_owned()]);
        assert!(walk.found("CN=B, DC=corp"));
        assert_eq!(walk.next_level(), vec!["CN=B, DC=corp".to_owned()]);
        assert!(
            !walk.found("CN=A,DC=CORP"),
            "a is seen: the cycle ends here"
        );
        assert!(walk.found("cn=c,dc=corp"));
        assert_eq!(walk.next_level(), vec!["cn=c,dc=corp".to_owned()]);
        assert!(walk.next_level().is_empty(), "nothing new: over");
        assert!(!walk.truncated());

        let mut shallow = Walk::new("uid=u,dc=corp", 1);
        assert_eq!(shallow.next_level().len(), 1);
        assert!(shallow.found("cn=a,dc=corp"));
        assert!(shallow.next_level().is_empty(), "depth 1 reached");
        assert!(shallow.truncated());
    }
}

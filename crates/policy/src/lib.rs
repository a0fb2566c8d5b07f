//! Conditional access, as Entra ID does it: once the directory said the password is right, a
//! tenant's policies decide whether the sign-in goes through, needs a second factor, or is
//! blocked, and how long its tokens live. Pure: no I/O but reading the file in
//! [`PolicySet::load`], no clock, no store; table-tested.
//!
//! # The policy file
//!
//! One YAML file per tenant:
//!
//! ```yaml
//! named_networks:
//!   - name: offices
//!     trusted: true                       # included by the keyword `trusted`
//!     cidrs: [203.0.113.0/24, "2001:db8:1::/48"]
//!   - name: known-bad
//!     cidrs: [198.51.100.0/24]
//! policies:
//!   - name: require-mfa-outside-offices
//!     state: enabled                      # enabled (default) | report_only | disabled
//!     conditions:
//!       users: { include: [all], exclude: [breakglass@corp.example.com] }
//!       groups: { include: [admins] }
//!       applications: { include: [all], exclude: [] }
//!       networks: { include: [any], exclude: [trusted] }
//!       unfamiliar_location: true
//!       client_types: [grpc, browser]
//!     grant: require_mfa                  # block | require_mfa | allow
//!     session: { token_lifetime_s: 3600 }
//! ```
//!
//! * `users`: user principal names, case-insensitive, or `all`.
//! * `groups`: group names as the directory answered them, case-insensitive, or `all`.
//! * `applications`: OIDC client ids, exact, or `all`.
//! * `networks`: named networks, `trusted` (every network with `trusted: true`) or `any`
//!   (include only: every address, and a sign-in without one).
//! * `unfamiliar_location`: `true` matches only sign-ins from a network the user never signed
//!   in from (as smart lockout judges it), `false` only sign-ins from a familiar one.
//! * `client_types`: `grpc` (the Gateway API), `browser` (the OIDC pages); left out: both.
//! * `session.token_lifetime_s`: the lifetime of the tokens issued, in seconds.
//!
//! # Precedence
//!
//! 1. A condition left out matches every sign-in; so does an include list left out.
//! 2. Within a condition, an exclusion beats an inclusion.
//! 3. A policy applies when **all** its conditions match.
//! 4. Among the `enabled` policies that apply, `block` beats `require_mfa` beats `allow`
//!    ([`Grant`]'s order). When no enabled policy applies the sign-in is allowed, without MFA.
//! 5. `report_only` policies are evaluated and reported with what they would have done
//!    ([`Evaluation::report_only`]) but never change the decision; `disabled` ones are listed
//!    as not evaluated.
//! 6. The token lifetime is the smallest `token_lifetime_s` among the enabled policies that
//!    apply; `None` when none asks for one (the gateway's default holds).
//!
//! The order of the policies in the file changes nothing but the order of the report.
//!
//! # Networks
//!
//! Ranges are `addr/prefix` (a bare address is one host; host bits are cleared, with a
//! warning). An IPv4 address matches IPv4 ranges only, and an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, as a dual-stack listener reports IPv4 clients) counts as IPv4. A sign-in
//! without a client IP is in no named network: `include: [any]` matches it, `include: [trusted]`
//! does not, and `exclude: [trusted]` does not exclude it.
//!
//! # Validation
//!
//! Unknown fields anywhere are refused, and a syntax error names the file, line and column.
//! After parsing, each of these is refused with a message naming the policy or network:
//! duplicate names, a reference to an unknown named network, a malformed range, an empty
//! `include` list or `client_types` list (it would match nothing; leave it out to match
//! everything), excluding `all` or `any` (say `state: disabled`), a `token_lifetime_s` of 0.
//!
//! # Reports
//!
//! [`Evaluation::summary`] is one line for the sign-in log (policy names only, never a user or
//! an address); [`Evaluation::explain`] is the what-if report, every policy with one reason per
//! condition, all conditions evaluated even after one failed.
//!
//! ```
//! use passage_policy::{ClientType, Grant, PolicySet, SignInFacts};
//!
//! let policies = PolicySet::parse(
//!     "policies:\n  - name: mfa-everywhere\n    grant: require_mfa\n",
//!     "example.yaml",
//! )?;
//! let evaluation = policies.evaluate(&SignInFacts {
//!     user: "alice@corp.example.com",
//!     groups: &[],
//!     application: "portal",
//!     client_ip: None,
//!     unfamiliar_location: false,
//!     client_type: ClientType::Browser,
//! });
//! assert_eq!(evaluation.grant, Grant::RequireMfa);
//! assert_eq!(evaluation.summary(), "require_mfa by mfa-everywhere");
//! # Ok::<(), passage_policy::PolicyError>(())
//! ```

mod cidr;
mod evaluation;
mod model;

use std::net::IpAddr;
use std::path::Path;

pub use cidr::{Cidr, CidrError};
pub use evaluation::{Evaluation, PolicyResult, SignInFacts};
pub use model::{ClientType, Grant, PolicyState};
use model::{NamedNetwork, Policy, PolicyFile};

/// A tenant's policies, parsed and validated.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// The named networks, in file order.
    networks: Vec<NamedNetwork>,
    /// The policies, in file order.
    policies: Vec<Policy>,
    /// See [`PolicySet::content_hash`].
    content_hash: String,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not valid YAML, or not the policy model (an unknown field, a wrong type or value).
    #[error("{origin}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// 1-based; 0 when the parser gave no position.
        line: usize,
        /// 1-based; 0 when the parser gave no position.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A policy breaks a rule of the model.
    #[error("{origin}: policy \"{policy}\": {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// The policy's name.
        policy: String,
        /// What is wrong.
        message: String,
    },
    /// A named network breaks a rule of the model.
    #[error("{origin}: network \"{network}\": {message}")]
    InvalidNetwork {
        /// The file.
        origin: String,
        /// The network's name.
        network: String,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read.
    #[error("{origin}: cannot read the policy file: {source}")]
    Read {
        /// The file.
        origin: String,
        /// Why not.
        source: std::io::Error,
    },
}

impl PolicySet {
    /// No policies: every sign-in is allowed, without MFA.
    pub fn empty() -> Self {
        PolicySet {
            networks: Vec::new(),
            policies: Vec::new(),
            content_hash: content_hash(""),
        }
    }

    /// Parses and validates a policy file's text; `origin` (the file name) prefixes messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            serde_yaml_ng::from_str(text).map_err(|error| syntax_error(origin, &error))?;
        let (networks, policies) = model::compile(file, origin)?;
        Ok(PolicySet {
            networks,
            policies,
            content_hash: content_hash(text),
        })
    }

    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            origin: origin.clone(),
            source,
        })?;
        let set = Self::parse(&text, &origin)?;
        tracing::debug!(
            origin = origin.as_str(),
            policies = set.policy_count(),
            content_hash = set.content_hash(),
            "policy file loaded"
        );
        Ok(set)
    }

    /// `sha256:` and the first 16 hex digits of the SHA-256 of the file's text: which version
    /// of the file decided a sign-in, for logs and `passage policy` (no integrity check).
    /// [`PolicySet::empty`] has the hash of the empty text.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// How many policies there are, whatever their state.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Evaluates every policy for one sign-in (see the crate documentation for the precedence).
    pub fn evaluate(&self, sign_in: &SignInFacts<'_>) -> Evaluation {
        evaluation::evaluate(&self.networks, &self.policies, sign_in)
    }

    /// Whether an enabled policy can require MFA: the gateway then needs the MFA store and
    /// its key before it starts.
    pub fn can_require_mfa(&self) -> bool {
        self.policies
            .iter()
            .any(|policy| policy.state == PolicyState::Enabled && policy.grant == Grant::RequireMfa)
    }

    /// Whether `ip` is in a named network marked `trusted` (an IPv4-mapped IPv6 address counts
    /// as IPv4), for decisions outside the policies such as letting users without an
    /// authenticator in from the office.
    pub fn is_trusted_network(&self, ip: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|network| network.trusted && network.contains(ip))
    }
}

impl Default for PolicySet {
    /// [`PolicySet::empty`].
    fn default() -> Self {
        PolicySet::empty()
    }
}

/// A syntax error with its position; the parser's own " at line L column C" is dropped from
/// the message, since the prefix already says it.
fn syntax_error(origin: &str, error: &serde_yaml_ng::Error) -> PolicyError {
    let (line, column) = error
        .location()
        .map_or((0, 0), |location| (location.line(), location.column()));
    let mut message = error.to_string();
    let position = format!(" at line {line} column {column}");
    if let Some(at) = message.find(position.as_str()) {
        message.replace_range(at..at + position.len(), "");
    }
    PolicyError::Syntax {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

/// See [`PolicySet::content_hash`].
fn content_hash(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut hash = String::with_capacity("sha256:".len() + 16);
    hash.push_str("sha256:");
    // Eight bytes tell versions of one tenant's file apart; the log line stays short.
    for &byte in &digest.as_ref()[..8] {
        hash.push(char::from(HEX[usize::from(byte >> 4)]));
        hash.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hash
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn refusal(text: &str) -> PolicyError {
        PolicySet::parse(text, "policies.yaml").unwrap_err()
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column() {
        // Line 3, column 17: the second `:` of `grant: block: now`.
        let error = refusal("policies:\n  - name: broken\n    grant: block: now\n");
        match &error {
            PolicyError::Syntax {
                origin,
                line,
                column,
                ..
            } => assert_eq!((origin.as_str(), *line, *column), ("policies.yaml", 3, 17)),
            other => panic!("not a syntax error: {other}"),
        }
        assert_eq!(
            error.to_string(),
            "policies.yaml:3:17: mapping values are not allowed in this context"
        );
    }

    #[test]
    fn unknown_fields_and_values_are_refused_where_they_are() {
        // (text, expected position, message fragment)
        let table: &[(&str, (usize, usize), &str)] = &[
            (
                "policies:\n  - name: typo\n    grant: block\n    condition: {}\n",
                (4, 5),
                "unknown field `condition`",
            ),
            ("polices: []\n", (1, 1), "unknown field `polices`"),
            (
                "policies:\n  - name: typo\n    conditions:\n      users: { include: [all], exlude: [x] }\n    grant: block\n",
                (4, 32),
                "unknown field `exlude`",
            ),
            (
                "named_networks:\n  - name: offices\n    trusted: true\n    cidr: [203.0.113.0/24]\n",
                (4, 5),
                "unknown field `cidr`",
            ),
            (
                "policies:\n  - name: maybe\n    grant: sometimes\n",
                (3, 12),
                "unknown variant `sometimes`",
            ),
            (
                "policies:\n  - name: typo\n    state: on\n    grant: block\n",
                (3, 12),
                "unknown variant `on`",
            ),
        ];
        for &(text, position, fragment) in table {
            match refusal(text) {
                PolicyError::Syntax {
                    line,
                    column,
                    message,
                    ..
                } => {
                    assert_eq!((line, column), position, "{text}");
                    assert!(message.contains(fragment), "{message}");
                }
                other => panic!("not a syntax error for {text:?}: {other}"),
            }
        }
    }

    #[test]
    fn model_rules_are_refused_naming_the_policy_or_network() {
        let table: &[(&str, &str)] = &[
            (
                "policies:\n  - name: p\n    conditions:\n      networks: { include: [nowhere] }\n    grant: block\n",
                r#"policies.yaml: policy "p": networks: unknown named network "nowhere""#,
            ),
            (
                "policies:\n  - name: twice\n    grant: allow\n  - name: twice\n    grant: block\n",
                r#"policies.yaml: policy "twice": duplicate policy name (policy names must be unique)"#,
            ),
            (
                "named_networks:\n  - name: bad\n    cidrs: [999.0.0.0/8]\n",
                r#"policies.yaml: network "bad": cidrs: "999.0.0.0/8": "999.0.0.0" is not an IP address"#,
            ),
            (
                "named_networks:\n  - name: wide\n    cidrs: [\"10.0.0.0/33\"]\n",
                r#"policies.yaml: network "wide": cidrs: "10.0.0.0/33": prefix /33 is longer than the address (32 bits)"#,
            ),
            (
                "named_networks:\n  - name: empty\n    cidrs: []\n",
                r#"policies.yaml: network "empty": cidrs is empty; a network without address ranges matches nothing"#,
            ),
            (
                "named_networks:\n  - name: trusted\n    cidrs: [10.0.0.0/8]\n",
                r#"policies.yaml: network "trusted": "any" and "trusted" are keywords of the networks condition, not names"#,
            ),
            (
                "named_networks:\n  - name: offices\n    cidrs: [10.0.0.0/8]\n  - name: offices\n    cidrs: [10.1.0.0/16]\n",
                r#"policies.yaml: network "offices": duplicate network name (network names must be unique)"#,
            ),
            (
                "policies:\n  - name: p\n    conditions:\n      users: { include: [] }\n    grant: block\n",
                r#"policies.yaml: policy "p": users: include is empty and would match no sign-in; leave it out to match all"#,
            ),
            (
                "policies:\n  - name: p\n    conditions:\n      networks: { exclude: [any] }\n    grant: block\n",
                r#"policies.yaml: policy "p": networks: exclude [any] would match no sign-in; use state: disabled"#,
            ),
            (
                "policies:\n  - name: p\n    conditions:\n      client_types: []\n    grant: block\n",
                r#"policies.yaml: policy "p": client_types is empty and would match no sign-in; leave it out to match all"#,
            ),
            (
                "policies:\n  - name: p\n    grant: allow\n    session: { token_lifetime_s: 0 }\n",
                r#"policies.yaml: policy "p": session: token_lifetime_s must be at least 1 second"#,
            ),
            (
                "policies:\n  - name: \"\"\n    grant: allow\n",
                r#"policies.yaml: policy "": a policy needs a name"#,
            ),
        ];
        for &(text, expected) in table {
            assert_eq!(refusal(text).to_string(), expected, "{text}");
        }
        assert!(matches!(
            refusal(table[0].0),
            PolicyError::Invalid { ref policy, .. } if policy == "p"
        ));
        assert!(matches!(
            refusal(table[2].0),
            PolicyError::InvalidNetwork { ref network, .. } if network == "bad"
        ));
    }

    #[test]
    fn content_hash_is_stable_and_follows_the_text() {
        // SHA-256 of the empty text begins e3b0c442 98fc1c14.
        assert_eq!(PolicySet::empty().content_hash(), "sha256:e3b0c44298fc1c14");
        let blank = PolicySet::parse("", "empty.yaml").unwrap();
        assert_eq!(blank.content_hash(), PolicySet::empty().content_hash());
        assert_eq!(blank.policy_count(), 0);

        let text = "policies:\n  - name: p\n    grant: require_mfa\n";
        let one = PolicySet::parse(text, "a.yaml").unwrap();
        let again = PolicySet::parse(text, "b.yaml").unwrap();
        let commented = PolicySet::parse(&format!("# reviewed\n{text}"), "a.yaml").unwrap();
        assert_eq!(one.content_hash(), again.content_hash());
        assert_ne!(one.content_hash(), commented.content_hash());
        assert_ne!(one.content_hash(), blank.content_hash());
        assert_eq!(one.content_hash().len(), "sha256:".len() + 16);
        assert!(
            one.content_hash()["sha256:".len()..]
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        );
    }

    #[test]
    fn no_policies_allow_everything() {
        let groups = vec!["admins".to_owned()];
        let evaluation = PolicySet::empty().evaluate(&SignInFacts {
            user: "alice@corp.example.com",
            groups: &groups,
            application: "portal",
            client_ip: Some("198.51.100.7".parse().unwrap()),
            unfamiliar_location: true,
            client_type: ClientType::Grpc,
        });
        assert_eq!(evaluation.grant, Grant::Allow);
        assert_eq!(evaluation.token_lifetime, None);
        assert!(evaluation.deciding_policies.is_empty());
        assert!(evaluation.results.is_empty());
        assert_eq!(evaluation.summary(), "allow (no enabled policy applies)");
        assert_eq!(evaluation.explain(), "no policies\nresult: allow");
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenant.yaml");
        std::fs::write(&path, "policies:\n  - name: p\n    grant: block\n").unwrap();
        let set = PolicySet::load(&path).unwrap();
        assert_eq!(set.policy_count(), 1);
        assert_eq!(
            set.content_hash(),
            PolicySet::parse("policies:\n  - name: p\n    grant: block\n", "x")
                .unwrap()
                .content_hash()
        );

        std::fs::write(
            &path,
            "policies:\n  - name: broken\n    grant: block: now\n",
        )
        .unwrap();
        let error = PolicySet::load(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}:3:17: ", path.display())),
            "{error}"
        );

        let missing = dir.path().join("missing.yaml");
        match PolicySet::load(&missing) {
            Err(PolicyError::Read { origin, source }) => {
                assert_eq!(origin, missing.display().to_string());
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    /// The operators' worked example parses and does what its comments say.
    #[test]
    fn the_documented_example_file_works() {
        let set = PolicySet::parse(
            include_str!("../../../docs/examples/policies.yaml"),
            "docs/examples/policies.yaml",
        )
        .unwrap();
        assert_eq!(set.policy_count(), 6);
        assert!(set.can_require_mfa());
        assert!(set.is_trusted_network("203.0.113.9".parse().unwrap()));
        assert!(set.is_trusted_network("::ffff:203.0.113.9".parse().unwrap()));
        assert!(set.is_trusted_network("2001:db8:1::1".parse().unwrap()));
        assert!(!set.is_trusted_network("198.51.100.7".parse().unwrap()));
        assert!(!PolicySet::empty().can_require_mfa());

        // An administrator at home, on a network never seen before: MFA, short tokens.
        let admins = vec!["Admins".to_owned()];
        let evaluation = set.evaluate(&SignInFacts {
            user: "alice@corp.example.com",
            groups: &admins,
            application: "portal",
            client_ip: Some("192.0.2.10".parse::<IpAddr>().unwrap()),
            unfamiliar_location: true,
            client_type: ClientType::Browser,
        });
        assert_eq!(
            evaluation.grant,
            Grant::RequireMfa,
            "{}",
            evaluation.explain()
        );
        assert_eq!(
            evaluation.deciding_policies,
            [
                "require-mfa-for-admins",
                "require-mfa-from-unfamiliar-locations-outside-offices"
            ]
        );
        assert_eq!(evaluation.token_lifetime, Some(Duration::from_secs(3600)));
        assert!(evaluation.report_only.is_empty());

        // The break-glass account from the known-bad network, to the legacy reporting app:
        // neither blocked nor asked for MFA, but the report-only block shows up.
        let evaluation = set.evaluate(&SignInFacts {
            user: "breakglass@corp.example.com",
            groups: &[],
            application: "legacy-reporting",
            client_ip: Some("198.51.100.7".parse::<IpAddr>().unwrap()),
            unfamiliar_location: true,
            client_type: ClientType::Grpc,
        });
        assert_eq!(evaluation.grant, Grant::Allow, "{}", evaluation.explain());
        assert_eq!(
            evaluation.deciding_policies,
            ["shorter-tokens-outside-offices"]
        );
        assert_eq!(
            evaluation.report_only,
            [("block-legacy-reporting".to_owned(), Grant::Block)]
        );
        assert_eq!(evaluation.token_lifetime, Some(Duration::from_secs(3600)));
        assert!(
            evaluation
                .explain()
                .contains(r#"users: excluded by "breakglass@corp.example.com""#)
        );
    }
}

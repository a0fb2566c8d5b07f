//! The policy file as written (serde types; their doc comments are the file's reference) and
//! its validated, compiled form that evaluation reads.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::PolicyError;
use crate::cidr::Cidr;

/// What a policy does to the sign-ins it applies to. The order is the precedence: `Block`
/// beats `RequireMfa` beats `Allow`, so the enforced grant is the greatest that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Let the sign-in through without a second factor (`allow`).
    Allow,
    /// Let it through only after a second factor (`require_mfa`).
    RequireMfa,
    /// Refuse it although the password was right (`block`).
    Block,
}

impl Grant {
    /// The name used in the policy file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Allow => "allow",
            Grant::RequireMfa => "require_mfa",
            Grant::Block => "block",
        }
    }

    /// What a policy with this grant does, as a verb for "would …".
    pub fn verb(self) -> &'static str {
        match self {
            Grant::Allow => "allow",
            Grant::RequireMfa => "require MFA",
            Grant::Block => "block",
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a policy is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyState {
    /// Evaluated and enforced (`enabled`, the default).
    #[default]
    Enabled,
    /// Evaluated and reported with what it would have done, never enforced (`report_only`):
    /// try a policy on real traffic before enabling it.
    ReportOnly,
    /// Not evaluated at all (`disabled`).
    Disabled,
}

impl PolicyState {
    /// The name used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyState::Enabled => "enabled",
            PolicyState::ReportOnly => "report_only",
            PolicyState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for PolicyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the client reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    /// An application calling the gRPC Gateway API (`grpc`).
    Grpc,
    /// A person in a browser, through the OIDC pages (`browser`).
    Browser,
}

impl ClientType {
    /// The name used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Grpc => "grpc",
            ClientType::Browser => "browser",
        }
    }
}

impl fmt::Display for ClientType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The keyword matching every user, group or application.
const ALL: &str = "all";
/// The keyword matching every network, and a sign-in without a client IP.
const ANY: &str = "any";
/// The keyword matching every network marked `trusted: true`.
const TRUSTED: &str = "trusted";

/// A tenant's policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// Address ranges that policies name in their `networks` condition.
    #[serde(default)]
    pub named_networks: Vec<NetworkSpec>,
    /// The policies, evaluated all of them and reported in this order (the order does not
    /// change the decision).
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// A named network.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkSpec {
    /// Its name, unique; `any` and `trusted` are keywords and cannot be names.
    pub name: String,
    /// Whether the keyword `trusted` includes it (offices, VPN egress).
    #[serde(default)]
    pub trusted: bool,
    /// `addr/prefix` ranges, IPv4 or IPv6 (a bare address is one host; host bits are cleared).
    pub cidrs: Vec<String>,
}

/// One policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    /// Its name, unique in the file; reports and the sign-in log use it.
    pub name: String,
    /// `enabled` (default), `report_only` or `disabled`.
    #[serde(default)]
    pub state: PolicyState,
    /// When it applies: all of these must match; one left out matches everything.
    #[serde(default)]
    pub conditions: ConditionsSpec,
    /// What it does when it applies: `block`, `require_mfa` or `allow`.
    pub grant: Grant,
    /// Session controls when it applies (and is enabled).
    #[serde(default)]
    pub session: Option<SessionSpec>,
}

/// The conditions of a policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConditionsSpec {
    /// User principal names, case-insensitive, or `all`.
    #[serde(default)]
    pub users: Option<SelectionSpec>,
    /// Group names as the directory reports them, case-insensitive, or `all`.
    #[serde(default)]
    pub groups: Option<SelectionSpec>,
    /// OIDC client ids, exact, or `all`.
    #[serde(default)]
    pub applications: Option<SelectionSpec>,
    /// Named networks, `trusted` (every trusted one) or `any` (include only).
    #[serde(default)]
    pub networks: Option<SelectionSpec>,
    /// `true`: only sign-ins from a network the user never signed in from; `false`: only
    /// sign-ins from a familiar one.
    #[serde(default)]
    pub unfamiliar_location: Option<bool>,
    /// `grpc`, `browser`; left out: both.
    #[serde(default)]
    pub client_types: Option<Vec<ClientType>>,
}

/// An include list and an exclude list; an exclusion beats an inclusion.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelectionSpec {
    /// What the condition matches; left out: everything. Never empty.
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// What it never matches, even when included.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Session controls.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionSpec {
    /// Lifetime of the tokens issued, in seconds (at least 1); the smallest among the enabled
    /// policies that apply wins.
    #[serde(default)]
    pub token_lifetime_s: Option<u64>,
}

/// A named network, validated.
#[derive(Debug, Clone)]
pub(crate) struct NamedNetwork {
    /// Its name.
    pub name: String,
    /// Whether `trusted` includes it.
    pub trusted: bool,
    /// Its ranges.
    pub cidrs: Vec<Cidr>,
}

impl NamedNetwork {
    /// Whether `ip` is in one of its ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|cidr| cidr.contains(ip))
    }
}

/// What a user, group or application entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameTarget {
    /// Everything (`all`).
    All,
    /// This name, in the form compared (case-folded for users and groups).
    Named(String),
}

/// What a network entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetworkTarget {
    /// Every address, and a sign-in without one (`any`).
    Any,
    /// Every address in a trusted network (`trusted`).
    Trusted,
    /// Every address in the named network at this index.
    Named(usize),
}

/// One entry of a list, as written (for explanations) and as matched.
#[derive(Debug, Clone)]
pub(crate) struct Entry<T> {
    /// The entry as the file spells it.
    pub written: String,
    /// What it matches.
    pub target: T,
}

/// An include list (`None`: everything) and an exclude list, validated.
#[derive(Debug, Clone)]
pub(crate) struct Selection<T> {
    /// What is included; never empty.
    pub include: Option<Vec<Entry<T>>>,
    /// What is excluded.
    pub exclude: Vec<Entry<T>>,
}

impl<T> Selection<T> {
    /// The include list as written, comma-separated.
    pub fn include_list(&self) -> String {
        self.include
            .iter()
            .flatten()
            .map(|entry| entry.written.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The conditions of a policy, validated; `None`: left out, matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditions {
    /// Users.
    pub users: Option<Selection<NameTarget>>,
    /// Groups.
    pub groups: Option<Selection<NameTarget>>,
    /// Applications.
    pub applications: Option<Selection<NameTarget>>,
    /// Networks.
    pub networks: Option<Selection<NetworkTarget>>,
    /// Whether the location must be unfamiliar (`true`) or familiar (`false`).
    pub unfamiliar_location: Option<bool>,
    /// The client types matched; never empty.
    pub client_types: Option<Vec<ClientType>>,
}

/// A policy, validated.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Its name, unique.
    pub name: String,
    /// Whether it is enforced.
    pub state: PolicyState,
    /// When it applies.
    pub conditions: Conditions,
    /// What it does then.
    pub grant: Grant,
    /// The token lifetime it asks for.
    pub token_lifetime: Option<Duration>,
}

/// Validates a parsed file into named networks and policies; errors name the network or the
/// policy at fault.
pub(crate) fn compile(
    file: PolicyFile,
    origin: &str,
) -> Result<(Vec<NamedNetwork>, Vec<Policy>), PolicyError> {
    let networks = file
        .named_networks
        .into_iter()
        .map(|spec| compile_network(spec, origin))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    for network in &networks {
        if !seen.insert(network.name.as_str()) {
            return Err(network_error(
                origin,
                &network.name,
                "duplicate network name (network names must be unique)",
            ));
        }
    }

    let mut policies: Vec<Policy> = Vec::with_capacity(file.policies.len());
    for spec in file.policies {
        let policy = compile_policy(spec, &networks, origin)?;
        if policies.iter().any(|other| other.name == policy.name) {
            return Err(policy_error(
                origin,
                &policy.name,
                "duplicate policy name (policy names must be unique)",
            ));
        }
        policies.push(policy);
    }
    Ok((networks, policies))
}

/// Validates one named network.
fn compile_network(spec: NetworkSpec, origin: &str) -> Result<NamedNetwork, PolicyError> {
    if spec.name.trim().is_empty() {
        return Err(network_error(origin, &spec.name, "a network needs a name"));
    }
    if spec.name == ANY || spec.name == TRUSTED {
        return Err(network_error(
            origin,
            &spec.name,
            "\"any\" and \"trusted\" are keywords of the networks condition, not names",
        ));
    }
    if spec.cidrs.is_empty() {
        return Err(network_error(
            origin,
            &spec.name,
            "cidrs is empty; a network without address ranges matches nothing",
        ));
    }
    let mut cidrs = Vec::with_capacity(spec.cidrs.len());
    for text in &spec.cidrs {
        let (cidr, masked) = Cidr::parse(text).map_err(|error| {
            network_error(origin, &spec.name, &format!("cidrs: \"{text}\": {error}"))
        })?;
        if masked {
            // Accepted as routers accept it, but the author may have meant a single host.
            tracing::warn!(
                origin = origin,
                network = spec.name.as_str(),
                cidr = text.as_str(),
                "policy network range has host bits set; they are ignored"
            );
        }
        cidrs.push(cidr);
    }
    Ok(NamedNetwork {
        name: spec.name,
        trusted: spec.trusted,
        cidrs,
    })
}

/// Validates one policy against the named networks.
fn compile_policy(
    spec: PolicySpec,
    named_networks: &[NamedNetwork],
    origin: &str,
) -> Result<Policy, PolicyError> {
    let name = spec.name;
    if name.trim().is_empty() {
        return Err(policy_error(origin, &name, "a policy needs a name"));
    }
    let fail = |message: String| policy_error(origin, &name, &message);
    let conditions = spec.conditions;

    // Users and groups are compared case-folded: directories treat them so.
    let folded = |written: &str| {
        if written.eq_ignore_ascii_case(ALL) {
            NameTarget::All
        } else {
            NameTarget::Named(written.to_lowercase())
        }
    };
    // Client ids are opaque: exact.
    let exact = |written: &str| {
        if written == ALL {
            NameTarget::All
        } else {
            NameTarget::Named(written.to_owned())
        }
    };
    let users = compile_selection("users", conditions.users, ALL, |written| {
        Ok(folded(written))
    })
    .map_err(&fail)?;
    let groups = compile_selection("groups", conditions.groups, ALL, |written| {
        Ok(folded(written))
    })
    .map_err(&fail)?;
    let applications = compile_selection("applications", conditions.applications, ALL, |written| {
        Ok(exact(written))
    })
    .map_err(&fail)?;
    let network_target = |written: &str| match written {
        ANY => Ok(NetworkTarget::Any),
        TRUSTED => Ok(NetworkTarget::Trusted),
        named => named_networks
            .iter()
            .position(|network| network.name == named)
            .map(NetworkTarget::Named)
            .ok_or_else(|| format!("networks: unknown named network \"{named}\"")),
    };
    let networks =
        compile_selection("networks", conditions.networks, ANY, network_target).map_err(&fail)?;

    if conditions.client_types.as_ref().is_some_and(Vec::is_empty) {
        return Err(fail(
            "client_types is empty and would match no sign-in; leave it out to match all"
                .to_owned(),
        ));
    }
    let token_lifetime = match spec.session.and_then(|session| session.token_lifetime_s) {
        Some(0) => {
            return Err(fail(
                "session: token_lifetime_s must be at least 1 second".to_owned(),
            ));
        }
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None => None,
    };

    Ok(Policy {
        state: spec.state,
        conditions: Conditions {
            users,
            groups,
            applications,
            networks,
            unfamiliar_location: conditions.unfamiliar_location,
            client_types: conditions.client_types,
        },
        grant: spec.grant,
        token_lifetime,
        name,
    })
}

/// Validates one include/exclude condition: an include list, when given, is not empty, and
/// the everything-keyword (`all`, `any`) is not excluded (that would turn the policy off;
/// `state: disabled` says so plainly). `target` resolves one entry or says why it cannot.
fn compile_selection<T>(
    condition: &str,
    spec: Option<SelectionSpec>,
    everything: &str,
    target: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Selection<T>>, String> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let entries = |list: Vec<String>| -> Result<Vec<Entry<T>>, String> {
        list.into_iter()
            .map(|written| -> Result<Entry<T>, String> {
                Ok(Entry {
                    target: target(written.as_str())?,
                    written,
                })
            })
            .collect()
    };
    if spec.include.as_ref().is_some_and(Vec::is_empty) {
        return Err(format!(
            "{condition}: include is empty and would match no sign-in; leave it out to match all"
        ));
    }
    if spec
        .exclude
        .iter()
        .any(|written| written.eq_ignore_ascii_case(everything))
    {
        return Err(format!(
            "{condition}: exclude [{everything}] would match no sign-in; use state: disabled"
        ));
    }
    let include = spec.include.map(&entries).transpose()?;
    let exclude = entries(spec.exclude)?;
    Ok(Some(Selection { include, exclude }))
}

/// An error about the policy `policy`.
fn policy_error(origin: &str, policy: &str, message: &str) -> PolicyError {
    PolicyError::Invalid {
        origin: origin.to_owned(),
        policy: policy.to_owned(),
        message: message.to_owned(),
    }
}

/// An error about the named network `network`.
fn network_error(origin: &str, network: &str, message: &str) -> PolicyError {
    PolicyError::InvalidNetwork {
        origin: origin.to_owned(),
        network: network.to_owned(),
        message: message.to_owned(),
    }
}

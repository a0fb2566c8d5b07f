//! Finding a connector's directory servers in DNS, the way Windows' domain controller locator
//! does: the SRV records `_ldap._tcp.<site>._sites.<domain>` (the site's domain controllers,
//! when a site is set) and `_ldap._tcp.<domain>` (all of them).
//!
//! The records are ordered as RFC 2782 says — lowest priority first, and within one priority a
//! random order drawn by weight, so agents spread over equally preferred servers — the site's
//! servers before the rest of the domain's. Each record becomes a URL (`ldaps://<target>:636`
//! by default; the records name the LDAP port, 389) handed to the failover in
//! [`crate::servers`]. The lookup runs before the first operation and again every
//! `refresh_interval_s` in the background; a failed refresh keeps the servers found before.
//!
//! ```toml
//! [directory]
//! kind = "ldap"
//! base_dn = "DC=corp,DC=example,DC=com"
//!
//! [directory.dns_srv]
//! domain = "corp.example.com"
//! site = "Paris"
//! ```

use std::time::Duration;

use hickory_resolver::{TokioResolver, proto::rr::RData};
use serde::Deserialize;

use crate::DirectoryError;

/// Where to look for the directory's servers in DNS (`[directory.dns_srv]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSrv {
    /// The DNS domain whose `_ldap._tcp.<domain>` records list the servers (Active Directory
    /// registers every domain controller there), e.g. `corp.example.com`.
    pub domain: String,
    /// An Active Directory site: its domain controllers (`_ldap._tcp.<site>._sites.<domain>`)
    /// are tried first, the rest of the domain's after them.
    #[serde(default)]
    pub site: Option<String>,
    /// How the servers found are reached: `ldaps` (default, on `ldaps_port`) or `ldap` (on the
    /// port the records give; needs `starttls = true`, or `allow_plaintext`).
    #[serde(default)]
    pub scheme: Scheme,
    /// The LDAPS port of the servers found (the records give the LDAP port). Default 636.
    #[serde(default = "default_ldaps_port")]
    pub ldaps_port: u16,
    /// Name servers to ask (`192.0.2.53` or `192.0.2.53:5353`), when the agent's own
    /// resolver (`/etc/resolv.conf`) is not the directory's DNS.
    #[serde(default)]
    pub name_servers: Vec<String>,
    /// The DNS domains the servers found may be in (default: `domain` alone). A record naming
    /// a host elsewhere is ignored with a warning: DNS answers are not authenticated, and a
    /// forged one must not choose the server every password goes to. Add a domain here when
    /// the domain controllers' host names live outside the AD domain's DNS name (a disjoint
    /// namespace).
    #[serde(default)]
    pub target_domains: Vec<String>,
    /// How often the records are looked up again, in seconds (default 300): a domain
    /// controller added or retired is followed without a restart.
    #[serde(default = "default_refresh_interval_s")]
    pub refresh_interval_s: u64,
}

/// The scheme of URLs made from SRV records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// LDAP over TLS, on [`DnsSrv::ldaps_port`].
    #[default]
    Ldaps,
    /// LDAP on the record's port (StartTLS, or plaintext where allowed).
    Ldap,
}

fn default_ldaps_port() -> u16 {
    636
}
fn default_refresh_interval_s() -> u64 {
    300
}

impl DnsSrv {
    /// The record names asked, in order of preference.
    pub fn record_names(&self) -> Vec<String> {
        let domain = self.domain.trim_end_matches('.');
        let all = format!("_ldap._tcp.{domain}.");
        match &self.site {
            Some(site) => vec![format!("_ldap._tcp.{site}._sites.{domain}."), all],
            None => vec![all],
        }
    }

    /// How often to look again.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_secs(self.refresh_interval_s.max(1))
    }

    /// The domains targets may be in: `target_domains`, or `domain` alone.
    pub fn target_domains(&self) -> impl Iterator<Item = &str> {
        let configured = self.target_domains.iter().map(String::as_str);
        let domain = self
            .target_domains
            .is_empty()
            .then_some(self.domain.as_str());
        configured.chain(domain)
    }
}

/// One SRV record's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative share among targets of the same priority.
    pub weight: u16,
    /// The port the record names.
    pub port: u16,
    /// The host, without the root's trailing dot.
    pub target: String,
}

/// Orders `targets` as RFC 2782 asks: by priority, and within a priority by repeatedly drawing
/// one of the remaining targets with a probability proportional to its weight (targets of
/// weight 0 have a small chance too). `random(n)` returns a number in `0..=n`.
pub fn order_targets(
    mut targets: Vec<SrvTarget>,
    random: &mut impl FnMut(u32) -> u32,
) -> Vec<SrvTarget> {
    targets.sort_by_key(|t| t.priority);
    let mut ordered = Vec::with_capacity(targets.len());
    while !targets.is_empty() {
        let priority = targets[0].priority;
        let end = targets.partition_point(|t| t.priority == priority);
        let mut same: Vec<SrvTarget> = targets.drain(..end).collect();
        // Weight 0 first, as the RFC's selection asks, so they are drawn only when the running
        // sum allows it.
        same.sort_by_key(|t| t.weight != 0);
        while !same.is_empty() {
            let total: u32 = same.iter().map(|t| u32::from(t.weight)).sum();
            let draw = random(total).min(total);
            let mut running = 0;
            let index = same
                .iter()
                .position(|t| {
                    running += u32::from(t.weight);
                    running >= draw
                })
                .unwrap_or(0);
            ordered.push(same.remove(index));
        }
    }
    ordered
}

/// Looks the servers up in DNS.
pub(crate) struct Discovery {
    config: DnsSrv,
    starttls: bool,
    resolver: TokioResolver,
}

impl Discovery {
    /// A resolver for `config` (the system's, or the configured name servers). Reads
    /// `/etc/resolv.conf`; sends nothing yet.
    pub fn new(config: DnsSrv, starttls: bool) -> Result<Self, DirectoryError> {
        if config.domain.trim_end_matches('.').is_empty() {
            return Err(DirectoryError::Misconfigured(
                "dns_srv.domain is empty".into(),
            ));
        }
        if config.scheme == Scheme::Ldaps && starttls {
            return Err(DirectoryError::Misconfigured(
                "starttls goes with dns_srv.scheme = \"ldap\" (ldaps is TLS from the start)".into(),
            ));
        }
        let resolver =
            passage_transport::replicas::resolver(&config.name_servers, "dns_srv.name_servers")
                .map_err(|err| DirectoryError::Misconfigured(err.to_string()))?;
        Ok(Self {
            config,
            starttls,
            resolver,
        })
    }

    /// What is looked up, for logs.
    pub fn describe(&self) -> String {
        format!("dns-srv {}", self.config.record_names().join(" then "))
    }

    /// How often to look again.
    pub fn refresh_interval(&self) -> Duration {
        self.config.refresh_interval()
    }

    /// The servers' URLs, in order of preference; an error when no record names any.
    pub async fn lookup(&self) -> Result<Vec<String>, DirectoryError> {
        let mut urls: Vec<String> = Vec::new();
        let mut errors = Vec::new();
        for name in self.config.record_names() {
            match self.resolver.srv_lookup(name.as_str()).await {
                Ok(lookup) => {
                    let targets = lookup
                        .answers()
                        .iter()
                        .filter_map(|record| match &record.data {
                            RData::SRV(srv) => Some(SrvTarget {
                                priority: srv.priority,
                                weight: srv.weight,
                                port: srv.port,
                                target: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                            }),
                            _ => None,
                        })
                        // A lone "." target says the service is decidedly not offered there.
                        .filter(|t| !t.target.is_empty())
                        // An answer naming a host outside the domain is refused: DNS is not
                        // authenticated, and whoever forges it must not be able to send the
                        // agent (and every password) to a server of their choosing.
                        .filter(|t| {
                            let inside = self.config.target_domains().any(|domain| within_domain(&t.target, domain));
                            if !inside {
                                tracing::warn!(record = %name, target = %t.target, domain = %self.config.domain, "DNS SRV target outside the accepted domains (dns_srv.target_domains): ignored");
                            }
                            inside
                        })
                        .collect::<Vec<_>>();
                    for target in order_targets(targets, &mut random_up_to) {
                        let url = self.url(&target);
                        if !urls.contains(&url) {
                            urls.push(url);
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(record = %name, error = %err, "DNS SRV lookup found nothing");
                    errors.push(format!("{name}: {err}"));
                }
            }
        }
        match urls.is_empty() {
            true => Err(DirectoryError::Unreachable(format!(
                "DNS SRV lookup found no directory server ({})",
                if errors.is_empty() {
                    "no usable record".to_owned()
                } else {
                    errors.join("; ")
                }
            ))),
            false => Ok(urls),
        }
    }

    fn url(&self, target: &SrvTarget) -> String {
        let host = match target.target.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]", target.target),
            Err(_) => target.target.clone(),
        };
        match self.config.scheme {
            Scheme::Ldaps => format!("ldaps://{host}:{}", self.config.ldaps_port),
            Scheme::Ldap => format!("ldap://{host}:{}", target.port),
        }
    }

    /// Whether URLs made from records are plaintext LDAP without StartTLS.
    pub fn plaintext(&self) -> bool {
        self.config.scheme == Scheme::Ldap && !self.starttls
    }
}

/// Whether `host` is `domain` or a name under it (case-insensitive, whole labels), and only
/// made of letters, digits, hyphens and dots.
pub fn within_domain(host: &str, domain: &str) -> bool {
    let (host, domain) = (
        host.trim_end_matches('.').to_ascii_lowercase(),
        domain.trim_end_matches('.').to_ascii_lowercase(),
    );
    let plain = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    plain && (host == domain || host.ends_with(&format!(".{domain}")))
}

/// A random number in `0..=n` from the system's generator.
fn random_up_to(n: u32) -> u32 {
    let mut bytes = [0u8; 4];
    // The system generator does not fail on supported platforms; a failure orders by weight.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return n;
    }
    match n {
        u32::MAX => u32::from_le_bytes(bytes),
        n => u32::from_le_bytes(bytes) % (n + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(priority: u16, weight: u16, name: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port: 389,
            target: name.into(),
        }
    }

    fn names(targets: &[SrvTarget]) -> Vec<&str> {
        targets.iter().map(|t| t.target.as_str()).collect()
    }

    #[test]
    fn lower_priority_comes_first_whatever_the_draw() {
        let targets = vec![
            target(20, 100, "backup"),
            target(10, 0, "a"),
            target(10, 0, "b"),
        ];
        for draw in [0, 1, u32::MAX] {
            let ordered = order_targets(targets.clone(), &mut |n| draw.min(n));
            assert_eq!(ordered.last().unwrap().target, "backup");
            assert_eq!(ordered.len(), 3);
        }
    }

    #[test]
    fn weights_share_the_first_place_in_proportion() {
        // Weights 1 and 3: the draw is uniform over 0..=4; "heavy" is first for draws 2..=4
        // and "light" for 0..=1 (a draw of 0 picks the first, as the RFC's running sum does).
        let targets = vec![target(0, 1, "light"), target(0, 3, "heavy")];
        let mut firsts = std::collections::HashMap::new();
        for draw in 0..=4 {
            let ordered = order_targets(targets.clone(), &mut |n| draw.min(n));
            *firsts.entry(ordered[0].target.clone()).or_insert(0) += 1;
            assert_eq!(ordered.len(), 2);
        }
        assert_eq!(firsts["light"], 2);
        assert_eq!(firsts["heavy"], 3);
    }

    #[test]
    fn equal_weights_spread_with_the_system_generator() {
        // Active Directory registers every domain controller with priority 0, weight 100:
        // agents must not all pick the same one.
        let targets: Vec<_> = ["dc1", "dc2", "dc3"]
            .iter()
            .map(|n| target(0, 100, n))
            .collect();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            firsts.insert(
                order_targets(targets.clone(), &mut random_up_to)[0]
                    .target
                    .clone(),
            );
        }
        assert_eq!(firsts.len(), 3, "every server is drawn first sometimes");
    }

    #[test]
    fn only_hosts_of_the_domain_are_used() {
        assert!(within_domain("dc1.corp.example.com", "corp.example.com"));
        assert!(within_domain("DC1.Corp.Example.com.", "corp.example.com."));
        assert!(within_domain("corp.example.com", "corp.example.com"));
        assert!(!within_domain("evil.example", "corp.example.com"));
        assert!(!within_domain(
            "dc1.notcorp.example.com",
            "corp.example.com"
        ));
        assert!(!within_domain(
            "x/y@dc1.corp.example.com",
            "corp.example.com"
        ));
    }

    #[test]
    fn zero_weights_are_still_ordered() {
        let ordered = order_targets(
            vec![target(0, 0, "a"), target(0, 0, "b"), target(0, 0, "c")],
            &mut |_| 0,
        );
        assert_eq!(names(&ordered), ["a", "b", "c"]);
    }

    #[test]
    fn record_names_put_the_site_first() {
        let mut config: DnsSrv = toml::from_str("domain = \"corp.example.com.\"").unwrap();
        assert_eq!(config.record_names(), ["_ldap._tcp.corp.example.com."]);
        config.site = Some("Paris".into());
        assert_eq!(
            config.record_names(),
            [
                "_ldap._tcp.Paris._sites.corp.example.com.",
                "_ldap._tcp.corp.example.com."
            ]
        );
        assert_eq!(config.scheme, Scheme::Ldaps);
        assert_eq!(config.ldaps_port, 636);
    }

    #[test]
    fn bad_settings_are_refused() {
        let config = |text: &str| toml::from_str::<DnsSrv>(text).unwrap();
        let err = |result: Result<Discovery, DirectoryError>| match result {
            Err(DirectoryError::Misconfigured(why)) => why,
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        };
        assert!(
            err(Discovery::new(
                config("domain = \"x\"\nname_servers = [\"dns.example\"]"),
                false
            ))
            .contains("not an IP address")
        );
        assert!(err(Discovery::new(config("domain = \"x\""), true)).contains("starttls"));
        assert!(err(Discovery::new(config("domain = \".\""), false)).contains("empty"));
    }
}

//! LDAP / Active Directory backend: search as a service account, then bind as the user.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use ldap3::{Ldap, Scope, SearchEntry, controls::RawControl, ldap_escape};
use passage_credentials::{Password, Secret};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::{
    ChangeFuture, Directory, DirectoryError, DirectoryHealth, LockoutPolicy, PolicyFuture,
    UserInfo, Verdict, VerdictFuture,
    discovery::{Discovery, DnsSrv},
    groups::{self, GroupClaim, NestedGroups, Walk},
    lockout_policy,
    password_change::{self, ChangeOutcome, PasswordChange},
    servers::{Connector, Server, Servers, failure, is_connection_error},
};

/// OID of the password-policy request/response control (draft-behera-ldap-password-policy).
const PPOLICY_OID: &str = "1.3.6.1.4.1.42.2.27.8.5.1";

/// How the agent talks to an LDAP or Active Directory server.
///
/// ```toml
/// [directory]
/// kind = "ldap"
/// url = "ldaps://dc1.corp.example.com"
/// base_dn = "DC=corp,DC=example,DC=com"
/// bind_dn = "CN=passage,OU=Service Accounts,DC=corp,DC=example,DC=com"
/// bind_password_file = "/etc/passage/ldap-bind-password"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// Server URL: `ldap://host:389` or `ldaps://host:636`. Set one of `url`, `urls` and
    /// `dns_srv`.
    #[serde(default)]
    pub url: String,
    /// Several servers holding the same data (domain controllers, replicas), tried in this
    /// order: the first one up serves; an unreachable one is skipped until a background probe
    /// finds it answering again.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Find the servers in DNS instead (`_ldap._tcp.<domain>` SRV records, the site's first):
    /// see [`DnsSrv`].
    #[serde(default)]
    pub dns_srv: Option<DnsSrv>,
    /// How often a server marked down is probed, in milliseconds.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// Upgrade `ldap://` with StartTLS before any bind.
    #[serde(default)]
    pub starttls: bool,
    /// Accept any server certificate. Testing only: it lets anyone in the middle read passwords.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// CA certificates (PEM) that server certificates must lead to (LDAPS and StartTLS);
    /// default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprints of the accepted server certificates (64 hex digits, colons
    /// allowed). With `ca_file`, a server needs both; without it, the pin alone (a domain
    /// controller's self-signed certificate).
    #[serde(default)]
    pub pinned_certificates_sha256: Vec<String>,
    /// Allow `ldap://` without StartTLS: every user's password then crosses the corporate
    /// network in clear. Refused unless set (and warned about at start when set).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Where user searches start.
    pub base_dn: String,
    /// Service account that searches for users; anonymous search when absent.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// The service account's password, inline. Prefer `bind_password_file`.
    #[serde(default)]
    pub bind_password: Option<String>,
    /// File holding the service account's password (trailing newline ignored).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Attribute users sign in with: `userPrincipalName` (default), or an alternate login ID
    /// such as `mail` or `uid`.
    #[serde(default = "default_login_attribute")]
    pub login_attribute: String,
    /// Attribute searched for down-level names (`CORP\alice`: the part after the backslash)
    /// and bare names (`alice`): `sAMAccountName` (default, Active Directory), `uid` on
    /// OpenLDAP. The gateway routes such names by NetBIOS domain or to its default group.
    #[serde(default = "default_short_name_attribute")]
    pub short_name_attribute: String,
    /// How passwords are changed (writeback): `password_modify` (default: RFC 3062, bound as
    /// the user, so the directory's own password policy applies) or `active_directory`
    /// (`unicodePwd`, over LDAPS).
    #[serde(default)]
    pub password_change: PasswordChange,
    /// A filter that marks an account disabled (OpenLDAP has no such state of its own), e.g.
    /// `(employeeType=disabled)` or `(nsAccountLock=TRUE)`: checked on the user's entry after
    /// the password proved right, so a disabled account is never revealed to someone who
    /// does not know its password. Active Directory reports disabled accounts itself.
    #[serde(default)]
    pub account_disabled_filter: Option<String>,
    /// Extra filter every user must match, ANDed with the login attribute.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Attribute reported as the user's UPN (defaults to `userPrincipalName`, falling back to
    /// the login name as typed).
    #[serde(default = "default_upn_attribute")]
    pub upn_attribute: String,
    /// Attribute with the display name (falls back to `cn`).
    #[serde(default = "default_display_name_attribute")]
    pub display_name_attribute: String,
    /// Attribute with the e-mail address.
    #[serde(default = "default_mail_attribute")]
    pub mail_attribute: String,
    /// Attribute with a stable unique id (`entryUUID` on OpenLDAP, `objectGUID` on AD).
    #[serde(default = "default_id_attribute")]
    pub id_attribute: String,
    /// Attribute on the user listing group DNs (`memberOf`): direct memberships.
    #[serde(default)]
    pub group_attribute: Option<String>,
    /// Search for groups whose member attribute holds the user's DN (for servers without
    /// `memberOf`, and for nested groups).
    #[serde(default)]
    pub group_search: Option<GroupSearch>,
    /// How groups appear in the token: `name` (default: the `cn`, or `group_search`'s
    /// `name_attribute`; names of groups in different OUs can collide), `dn` (unique), or
    /// `sam_account_name` (AD, unique within the domain).
    #[serde(default)]
    pub group_claim: GroupClaim,
    /// Nested groups: `off` (default, direct memberships), `matching_rule_in_chain` (Active
    /// Directory follows the nesting itself), or `recursive` (any server: Passage walks up
    /// the member attribute, `max_group_depth` levels, each group once). Both need
    /// `group_search`.
    #[serde(default)]
    pub nested_groups: NestedGroups,
    /// How many levels of nesting `recursive` follows (default 8); deeper groups are left out
    /// with a warning.
    #[serde(default = "default_max_group_depth")]
    pub max_group_depth: u32,
    /// Connect and per-operation timeout, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Connections kept for user binds (each carries one bind at a time).
    #[serde(default = "default_bind_pool_size")]
    pub bind_pool_size: usize,
    /// Connections kept for searches (each multiplexes many searches).
    #[serde(default = "default_search_connections")]
    pub search_connections: usize,
    /// Where the directory's lockout policies are looked for (ppolicy `pwdPolicy` entries, AD's
    /// domain object and fine-grained password settings). Default: AD's
    /// `defaultNamingContext`, else the naming context holding `base_dn`, else `base_dn`.
    #[serde(default)]
    pub lockout_policy_base_dn: Option<String>,
}

/// Group lookup by search.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSearch {
    /// Where group searches start.
    pub base_dn: String,
    /// Group object filter, ANDed with `(member_attribute=<user DN>)`.
    #[serde(default = "default_group_filter")]
    pub filter: String,
    /// Attribute of the group holding member DNs.
    #[serde(default = "default_member_attribute")]
    pub member_attribute: String,
    /// Attribute with the group's name.
    #[serde(default = "default_group_name_attribute")]
    pub name_attribute: String,
}

fn default_login_attribute() -> String {
    "userPrincipalName".into()
}
fn default_short_name_attribute() -> String {
    "sAMAccountName".into()
}
fn default_user_filter() -> String {
    "(objectClass=person)".into()
}
fn default_upn_attribute() -> String {
    "userPrincipalName".into()
}
fn default_display_name_attribute() -> String {
    "displayName".into()
}
fn default_mail_attribute() -> String {
    "mail".into()
}
fn default_id_attribute() -> String {
    "entryUUID".into()
}
fn default_group_filter() -> String {
    "(|(objectClass=groupOfNames)(objectClass=group))".into()
}
fn default_member_attribute() -> String {
    "member".into()
}
fn default_group_name_attribute() -> String {
    "cn".into()
}
fn default_probe_interval_ms() -> u64 {
    5_000
}
fn default_max_group_depth() -> u32 {
    8
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_bind_pool_size() -> usize {
    32
}
fn default_search_connections() -> usize {
    2
}

impl LdapConfig {
    /// A configuration with every optional knob at its default.
    pub fn new(url: impl Into<String>, base_dn: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            urls: Vec::new(),
            dns_srv: None,
            probe_interval_ms: default_probe_interval_ms(),
            starttls: false,
            insecure_skip_tls_verify: false,
            ca_file: None,
            pinned_certificates_sha256: Vec::new(),
            allow_plaintext: false,
            base_dn: base_dn.into(),
            bind_dn: None,
            bind_password: None,
            bind_password_file: None,
            login_attribute: default_login_attribute(),
            short_name_attribute: default_short_name_attribute(),
            account_disabled_filter: None,
            password_change: PasswordChange::default(),
            user_filter: default_user_filter(),
            upn_attribute: default_upn_attribute(),
            display_name_attribute: default_display_name_attribute(),
            mail_attribute: default_mail_attribute(),
            id_attribute: default_id_attribute(),
            group_attribute: None,
            group_search: None,
            group_claim: GroupClaim::default(),
            nested_groups: NestedGroups::default(),
            max_group_depth: default_max_group_depth(),
            timeout_ms: default_timeout_ms(),
            bind_pool_size: default_bind_pool_size(),
            search_connections: default_search_connections(),
            lockout_policy_base_dn: None,
        }
    }
}

impl LdapConfig {
    /// The attribute and value a login name is looked up by: `user@domain` by
    /// `login_attribute`; `DOMAIN\user` (the part after the backslash) and a bare `user` by
    /// `short_name_attribute`.
    pub fn lookup<'a>(&'a self, login: &'a str) -> (&'a str, &'a str) {
        if login.contains('@') {
            return (&self.login_attribute, login);
        }
        match login.split_once('\\') {
            Some((_, account)) => (&self.short_name_attribute, account),
            None => (&self.short_name_attribute, login),
        }
    }

    /// The servers configured: `urls`, or `url` alone (none when they are found in DNS);
    /// exactly one of `url`, `urls` and `dns_srv` must be set.
    pub fn server_urls(&self) -> Result<Vec<String>, DirectoryError> {
        match (self.url.is_empty(), self.urls.is_empty(), &self.dns_srv) {
            (false, true, None) => Ok(vec![self.url.clone()]),
            (true, false, None) => Ok(self.urls.clone()),
            (true, true, Some(_)) => Ok(Vec::new()),
            (true, true, None) => Err(DirectoryError::Misconfigured(
                "set url (one server), urls (several) or dns_srv (found in DNS)".into(),
            )),
            _ => Err(DirectoryError::Misconfigured(
                "set one of url, urls and dns_srv".into(),
            )),
        }
    }
}

/// The search filter for `login`: `(&<user_filter>(<attribute>=<login, RFC 4515-escaped>))`.
pub fn user_search_filter(user_filter: &str, attribute: &str, login: &str) -> String {
    format!("(&{user_filter}({attribute}={}))", ldap_escape(login))
}

/// An LDAP directory with pooled connections.
pub struct LdapDirectory {
    config: LdapConfig,
    timeout: Duration,
    servers: Arc<Servers>,
    bind_permits: Semaphore,
    /// How long recent binds with a wrong password took: an unknown user waits a duration
    /// drawn from these, so "no such user" takes as long as "wrong password" — the same
    /// distribution, not a typical bind's average (user enumeration by timing).
    failed_binds: FailedBindTimes,
    attributes: Vec<String>,
}

impl LdapDirectory {
    /// Validates `config` and reads the bind password file; connects lazily.
    pub fn new(config: LdapConfig) -> Result<Self, DirectoryError> {
        let urls = config.server_urls()?;
        for url in &urls {
            if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
                return Err(DirectoryError::Misconfigured(format!(
                    "url must start with ldap:// or ldaps://, got {url:?}"
                )));
            }
            if url.starts_with("ldap://") && !config.starttls {
                if !config.allow_plaintext {
                    return Err(DirectoryError::Misconfigured(format!(
                        "{url} is plaintext LDAP: every password would cross the network in clear. Use \
                         ldaps://, or starttls = true, or set allow_plaintext = true to accept that"
                    )));
                }
                tracing::warn!(url = %url, "plaintext LDAP without StartTLS: passwords cross the network in clear (allow_plaintext = true)");
            }
        }
        let discovery = config
            .dns_srv
            .clone()
            .map(|dns_srv| Discovery::new(dns_srv, config.starttls))
            .transpose()?;
        if let Some(discovery) = &discovery
            && discovery.plaintext()
            && !config.allow_plaintext
        {
            return Err(DirectoryError::Misconfigured(
                "dns_srv.scheme = \"ldap\" without starttls is plaintext LDAP: every password would \
                 cross the network in clear. Use scheme = \"ldaps\" (the default), or starttls = \
                 true, or set allow_plaintext = true to accept that"
                    .into(),
            ));
        }
        // A typo in a filter shows at start, not as a failed sign-in later.
        let filters = [
            ("user_filter", Some(&config.user_filter)),
            (
                "account_disabled_filter",
                config.account_disabled_filter.as_ref(),
            ),
            (
                "group_search.filter",
                config.group_search.as_ref().map(|g| &g.filter),
            ),
        ];
        for (name, filter) in filters {
            if let Some(filter) = filter
                && ldap3::parse_filter(filter).is_err()
            {
                return Err(DirectoryError::Misconfigured(format!(
                    "{name} {filter:?} is not an LDAP filter (RFC 4515)"
                )));
            }
        }
        if config.nested_groups != NestedGroups::Off && config.group_search.is_none() {
            return Err(DirectoryError::Misconfigured(
                "nested_groups needs group_search (the groups' base DN, filter and member attribute)"
                    .into(),
            ));
        }
        if config.nested_groups == NestedGroups::Recursive && config.max_group_depth == 0 {
            return Err(DirectoryError::Misconfigured(
                "max_group_depth must be at least 1".into(),
            ));
        }
        if config.bind_pool_size == 0 || config.search_connections == 0 {
            return Err(DirectoryError::Misconfigured(
                "bind_pool_size and search_connections must be at least 1".into(),
            ));
        }
        let bind_password = match (&config.bind_password, &config.bind_password_file) {
            (Some(_), Some(_)) => {
                return Err(DirectoryError::Misconfigured(
                    "set bind_password or bind_password_file, not both".into(),
                ));
            }
            (Some(inline), None) => Some(Secret::new(inline.clone().into_bytes())),
            (None, Some(path)) => {
                // The same rule as key files: whoever can read it can search the directory.
                let secret = passage_credentials::secret_file::read(path).map_err(|err| {
                    DirectoryError::Misconfigured(format!("bind_password_file: {err}"))
                })?;
                let text = String::from_utf8_lossy(secret.expose());
                Some(Secret::new(
                    text.trim_end_matches(['\r', '\n']).as_bytes().to_vec(),
                ))
            }
            (None, None) => None,
        };
        let attributes = [
            &config.upn_attribute,
            &config.display_name_attribute,
            &config.mail_attribute,
            &config.id_attribute,
            &config.login_attribute,
        ]
        .into_iter()
        .chain(config.group_attribute.as_ref())
        .cloned()
        .chain(["cn".to_owned()])
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
        let timeout = Duration::from_millis(config.timeout_ms);
        let pins = config
            .pinned_certificates_sha256
            .iter()
            .map(|pin| passage_transport::client_tls::parse_pin(pin))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DirectoryError::Misconfigured(e.to_string()))?;
        let tls = match (
            config.insecure_skip_tls_verify,
            &config.ca_file,
            pins.is_empty(),
        ) {
            (true, None, true) => {
                tracing::warn!(
                    ?urls,
                    "insecure_skip_tls_verify: any server certificate is accepted, so anyone in the middle can read every password (testing only)"
                );
                None
            }
            (true, _, _) => {
                return Err(DirectoryError::Misconfigured(
                    "insecure_skip_tls_verify cannot go with ca_file or pinned certificates".into(),
                ));
            }
            (false, ca_file, _) => Some(
                passage_transport::client_tls::client_config(ca_file.as_deref(), &pins)
                    .map_err(|e| DirectoryError::Misconfigured(e.to_string()))?,
            ),
        };
        let connector = Connector {
            timeout,
            starttls: config.starttls,
            no_tls_verify: config.insecure_skip_tls_verify,
            tls,
            bind_dn: config.bind_dn.clone(),
            bind_password,
        };
        Ok(Self {
            timeout,
            servers: Arc::new(Servers::new(
                &urls,
                discovery,
                config.search_connections,
                connector,
                Duration::from_millis(config.probe_interval_ms.max(10)),
            )),
            bind_permits: Semaphore::new(config.bind_pool_size),
            failed_binds: FailedBindTimes::default(),
            attributes,
            config,
        })
    }

    /// Runs `op` on the first server up, and on the next ones while they turn out
    /// unreachable (each is then marked down and probed in the background).
    async fn on_any_server<T, F, Fut>(&self, op: F) -> Result<T, DirectoryError>
    where
        F: Fn(Arc<Server>) -> Fut,
        Fut: std::future::Future<Output = Result<T, DirectoryError>>,
    {
        let mut last = String::new();
        for server in self.servers.in_order().await? {
            match op(Arc::clone(&server)).await {
                Err(DirectoryError::Unreachable(why)) => {
                    self.servers.failed(&server, &why);
                    last = why;
                }
                answer => return answer,
            }
        }
        Err(DirectoryError::Unreachable(format!(
            "no directory server could be reached (last: {last})"
        )))
    }

    /// A search connection bound as the service account: the slot's cached one, or (when
    /// `fresh`, or none is cached) a new one that replaces it.
    async fn search_connection(
        &self,
        server: &Server,
        slot: usize,
        fresh: bool,
    ) -> Result<Ldap, DirectoryError> {
        let mut cached = server.search_slots[slot].lock().await;
        if !fresh && let Some(ldap) = cached.as_ref() {
            return Ok(ldap.clone());
        }
        let connector = &self.servers.connector;
        let mut ldap = connector.connect(&server.url).await?;
        connector.service_bind(&mut ldap).await?;
        *cached = Some(ldap.clone());
        Ok(ldap)
    }

    /// Runs one search on a pooled connection, retrying once on a fresh connection when the
    /// pooled one turns out dead (a server restart since its last use says nothing about now).
    async fn search(
        &self,
        server: &Server,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[String],
    ) -> Result<(Vec<ldap3::ResultEntry>, ldap3::LdapResult), DirectoryError> {
        let slot = server.next_search.fetch_add(1, Ordering::Relaxed) % server.search_slots.len();
        let mut fresh = false;
        loop {
            let mut ldap = self.search_connection(server, slot, fresh).await?;
            match ldap
                .with_timeout(self.timeout)
                .search(base, scope, filter, attributes)
                .await
            {
                Ok(result) => {
                    return result.non_error().map_err(|err| failure("search", &err));
                }
                Err(err) if !fresh && is_connection_error(&err) => fresh = true,
                Err(err) => {
                    *server.search_slots[slot].lock().await = None;
                    return Err(failure("search", &err));
                }
            }
        }
    }

    /// Where lockout policies live: AD's `defaultNamingContext`, else the naming context that
    /// holds `base_dn` (policies often sit beside the users, not under them), else `base_dn`.
    async fn policy_base(&self, server: &Server) -> Result<String, DirectoryError> {
        let attributes = [
            "defaultNamingContext".to_owned(),
            "namingContexts".to_owned(),
        ];
        let (entries, _) = self
            .search(server, "", Scope::Base, "(objectClass=*)", &attributes)
            .await?;
        let Some(root) = entries.into_iter().next().map(SearchEntry::construct) else {
            return Ok(self.config.base_dn.clone());
        };
        let values = |name: &str| -> Vec<String> {
            root.attrs
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, values)| values.clone())
                .unwrap_or_default()
        };
        if let Some(default) = values("defaultNamingContext").into_iter().next() {
            return Ok(default);
        }
        let base = self.config.base_dn.to_ascii_lowercase();
        Ok(values("namingContexts")
            .into_iter()
            .filter(|context| !context.is_empty() && base.ends_with(&context.to_ascii_lowercase()))
            .max_by_key(String::len)
            .unwrap_or_else(|| self.config.base_dn.clone()))
    }

    /// Finds the one entry whose login attribute equals `login`.
    async fn search_user(
        &self,
        server: &Server,
        login: &str,
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        let (attribute, value) = self.config.lookup(login);
        let filter = user_search_filter(&self.config.user_filter, attribute, value);
        let (entries, status) = self
            .search(
                server,
                &self.config.base_dn,
                Scope::Subtree,
                &filter,
                &self.attributes,
            )
            .await?;
        match status.rc {
            0 => {}
            32 => {
                return Err(DirectoryError::Misconfigured(format!(
                    "base DN {:?} does not exist",
                    self.config.base_dn
                )));
            }
            rc => {
                return Err(DirectoryError::Unavailable(format!(
                    "search answered rc={rc}: {}",
                    status.text
                )));
            }
        }
        let mut entries = entries.into_iter();
        match (entries.next(), entries.next()) {
            (Some(entry), None) => Ok(Some(SearchEntry::construct(entry))),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => {
                tracing::warn!(
                    %attribute,
                    "login matches more than one directory entry; refusing"
                );
                Ok(None)
            }
        }
    }

    /// Binds as `dn` on a pooled connection and maps the answer.
    async fn user_bind(
        &self,
        server: &Server,
        dn: &str,
        password: &Password,
    ) -> Result<BindAnswer, DirectoryError> {
        let _permit = self
            .bind_permits
            .acquire()
            .await
            .map_err(|_| DirectoryError::Unavailable("directory is shutting down".into()))?;
        for attempt in 0..2 {
            let pooled = if attempt == 0 {
                server
                    .idle_binds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop()
            } else {
                None
            };
            let mut ldap = match pooled {
                Some(ldap) => ldap,
                None => self.servers.connector.connect(&server.url).await?,
            };
            let result = ldap
                .with_timeout(self.timeout)
                .with_controls(ppolicy_request())
                .simple_bind(dn, password.expose())
                .await;
            match result {
                Ok(result) => {
                    let answer = BindAnswer::from_result(&result);
                    if !matches!(answer, BindAnswer::ServerError(_)) {
                        server
                            .idle_binds
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(ldap);
                    }
                    return Ok(answer);
                }
                Err(err) if attempt == 0 && is_connection_error(&err) => continue,
                Err(err) => return Err(failure("bind", &err)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// What an unknown user costs: as long as a wrong password's bind, drawn from the recent
    /// ones. Before any was seen, a real bind that must fail (a DN that does not exist) does
    /// the same kind of work.
    async fn wait_like_a_failed_bind(&self, server: &Server, password: &Password) {
        match self.failed_binds.sample() {
            Some(wait) => {
                // tokio's timer rounds up to whole milliseconds, a bias as large as the
                // difference this hides; a blocking thread's sleep is precise, but handing the
                // wait to that thread and back costs time too, so that cost (measured, and
                // followed as it changes) is taken off the sleep.
                let sleep = wait.saturating_sub(self.failed_binds.handoff());
                let started = std::time::Instant::now();
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(sleep)).await;
                self.failed_binds
                    .record_handoff(started.elapsed().saturating_sub(sleep));
            }
            None => {
                let decoy = format!("cn=passage-no-such-user,{}", self.config.base_dn);
                let _ = self.user_bind(server, &decoy, password).await;
            }
        }
    }

    /// The user's groups as the token names them: `memberOf` values (direct), and groups
    /// found by search (direct, in chain, or walked level by level).
    async fn groups_of(
        &self,
        server: &Server,
        entry: &SearchEntry,
    ) -> Result<Vec<String>, DirectoryError> {
        let claim = self.config.group_claim;
        let mut groups = Vec::new();
        if let Some(dns) = self
            .config
            .group_attribute
            .as_ref()
            .and_then(|attr| entry.attrs.get(attr))
        {
            for group_dn in dns {
                match claim.from_dn(group_dn) {
                    Some(value) => groups.push(value),
                    None => groups.extend(self.claim_of_group(server, group_dn).await?),
                }
            }
        }
        if let Some(search) = &self.config.group_search {
            let mut attributes: Vec<String> = claim
                .attribute(&search.name_attribute)
                .map(|a| vec![a.to_owned()])
                .unwrap_or_default();
            if attributes.is_empty() {
                attributes.push("1.1".into()); // no attributes: the DN is the answer
            }
            match self.config.nested_groups {
                NestedGroups::Off | NestedGroups::MatchingRuleInChain => {
                    let in_chain = self.config.nested_groups == NestedGroups::MatchingRuleInChain;
                    let filter = groups::member_filter(
                        &search.filter,
                        &search.member_attribute,
                        &entry.dn,
                        in_chain,
                    );
                    for group in self
                        .group_entries(server, &search.base_dn, &filter, &attributes)
                        .await?
                    {
                        groups.extend(self.claim_of_entry(&group));
                    }
                }
                NestedGroups::Recursive => {
                    let mut walk = Walk::new(&entry.dn, self.config.max_group_depth);
                    loop {
                        let level = walk.next_level();
                        if level.is_empty() {
                            break;
                        }
                        for members in level.chunks(groups::MEMBERS_PER_SEARCH) {
                            let filter = groups::any_member_filter(
                                &search.filter,
                                &search.member_attribute,
                                members,
                            );
                            for group in self
                                .group_entries(server, &search.base_dn, &filter, &attributes)
                                .await?
                            {
                                if walk.found(&group.dn) {
                                    groups.extend(self.claim_of_entry(&group));
                                }
                            }
                        }
                    }
                    if walk.truncated() {
                        tracing::warn!(
                            max_group_depth = self.config.max_group_depth,
                            "groups nest max_group_depth deep: any deeper ones are left out of the token"
                        );
                    }
                }
            }
        }
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    /// The group entries `filter` finds under `base`, with `attributes`.
    async fn group_entries(
        &self,
        server: &Server,
        base: &str,
        filter: &str,
        attributes: &[String],
    ) -> Result<Vec<SearchEntry>, DirectoryError> {
        let (entries, status) = self
            .search(server, base, Scope::Subtree, filter, attributes)
            .await?;
        if status.rc != 0 {
            return Err(DirectoryError::Unavailable(format!(
                "group search answered rc={}: {}",
                status.rc, status.text
            )));
        }
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    /// A group entry's claim value: its DN, or the claim's attribute.
    fn claim_of_entry(&self, group: &SearchEntry) -> Option<String> {
        let name_attribute = self
            .config
            .group_search
            .as_ref()
            .map_or("cn", |search| search.name_attribute.as_str());
        match self.config.group_claim.attribute(name_attribute) {
            None => Some(group.dn.clone()),
            Some(attribute) => group
                .attrs
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(attribute))
                .and_then(|(_, values)| values.first().cloned()),
        }
    }

    /// The claim value of the group at `group_dn`, read from its entry.
    async fn claim_of_group(
        &self,
        server: &Server,
        group_dn: &str,
    ) -> Result<Option<String>, DirectoryError> {
        let attribute = self
            .config
            .group_claim
            .attribute("cn")
            .unwrap_or("cn")
            .to_owned();
        // A group the service account may not read (or one deleted since) is left out of the
        // token rather than failing the sign-in.
        let entries = match self
            .search(
                server,
                group_dn,
                Scope::Base,
                "(objectClass=*)",
                &[attribute],
            )
            .await
        {
            Ok((entries, _)) => entries,
            Err(DirectoryError::Unavailable(why)) => {
                tracing::warn!(%why, "a group of the user cannot be read; left out of the token");
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        Ok(entries
            .into_iter()
            .next()
            .map(SearchEntry::construct)
            .and_then(|group| self.claim_of_entry(&group)))
    }

    /// Search, bind and groups for `login` on `server`.
    async fn authenticate_on(
        &self,
        server: &Server,
        login: &str,
        password: &Password,
    ) -> Result<Verdict, DirectoryError> {
        let Some(entry) = self.search_user(server, login).await? else {
            self.wait_like_a_failed_bind(server, password).await;
            return Ok(Verdict::InvalidCredentials);
        };
        let started = std::time::Instant::now();
        let answer = self.user_bind(server, &entry.dn, password).await?;
        if answer == BindAnswer::Refused(Verdict::InvalidCredentials) {
            self.failed_binds.record(started.elapsed());
        }
        let password_expires_in_s = match answer {
            BindAnswer::Success(expires) => expires,
            BindAnswer::Refused(verdict) => return Ok(verdict),
            BindAnswer::ServerError(text) => return Err(DirectoryError::Unavailable(text)),
        };
        // Disabled by the attribute of the organisation's choice: told only now that the
        // password is known to be right, so the answer does not reveal the account.
        if let Some(filter) = &self.config.account_disabled_filter {
            let (disabled, _) = self
                .search(server, &entry.dn, Scope::Base, filter, &["1.1".to_owned()])
                .await?;
            if !disabled.is_empty() {
                return Ok(Verdict::AccountDisabled);
            }
        }
        let groups = self.groups_of(server, &entry).await?;
        let first = |attr: &str| {
            entry
                .attrs
                .get(attr)
                .and_then(|values| values.first().cloned())
                .or_else(|| {
                    entry
                        .bin_attrs
                        .get(attr)
                        .and_then(|values| values.first())
                        .map(|bytes| bytes.iter().map(|b| format!("{b:02x}")).collect())
                })
        };
        Ok(Verdict::Success(UserInfo {
            // The directory's spelling, never the casing the user typed: the UPN
            // attribute, else the login attribute's stored value.
            // Never a short name as typed (`CORP\\bob`, `bob`): one account would become as
            // many identities as it has spellings.
            upn: first(&self.config.upn_attribute)
                .or_else(|| first(&self.config.login_attribute))
                .or_else(|| first(&self.config.short_name_attribute))
                .unwrap_or_else(|| login.to_owned()),
            display_name: first(&self.config.display_name_attribute)
                .or_else(|| first("cn"))
                .unwrap_or_default(),
            mail: first(&self.config.mail_attribute).unwrap_or_default(),
            object_id: first(&self.config.id_attribute).unwrap_or_default(),
            dn: entry.dn.clone(),
            groups,
            password_expires_in_s,
        }))
    }

    /// Changes `login`'s password on `server` from `old` to `new`, then signs in with `new`.
    async fn change_on(
        &self,
        server: &Server,
        login: &str,
        old: &Password,
        new: &Password,
    ) -> Result<ChangeOutcome, DirectoryError> {
        let Some(entry) = self.search_user(server, login).await? else {
            self.wait_like_a_failed_bind(server, old).await;
            return Ok(ChangeOutcome::Refused(Verdict::InvalidCredentials));
        };
        let connector = &self.servers.connector;
        let answer = match self.config.password_change {
            PasswordChange::PasswordModify => {
                // Bound as the user: a must-change session or a grace login may change it.
                let mut ldap = connector.connect(&server.url).await?;
                let bound = ldap
                    .with_timeout(self.timeout)
                    .with_controls(ppolicy_request())
                    .simple_bind(&entry.dn, old.expose())
                    .await
                    .map_err(|err| failure("bind", &err))?;
                if bound.rc != 0 {
                    let _ = ldap.unbind().await;
                    return match BindAnswer::from_result(&bound) {
                        BindAnswer::Refused(verdict) => Ok(ChangeOutcome::Refused(verdict)),
                        BindAnswer::ServerError(text) => Err(DirectoryError::Unavailable(text)),
                        BindAnswer::Success(_) => unreachable!("rc is not 0"),
                    };
                }
                let changed = ldap
                    .with_timeout(self.timeout)
                    .with_controls(ppolicy_request())
                    .extended(ldap3::exop::PasswordModify {
                        user_id: None,
                        old_pass: Some(old.expose()),
                        new_pass: Some(new.expose()),
                    })
                    .await
                    .map_err(|err| failure("password modify", &err))?
                    .1;
                let _ = ldap.unbind().await;
                changed
            }
            PasswordChange::ActiveDirectory => {
                use std::collections::HashSet;
                let mut ldap = self.search_connection(server, 0, false).await?;
                ldap.with_timeout(self.timeout)
                    .modify(
                        &entry.dn,
                        vec![
                            ldap3::Mod::Delete(
                                b"unicodePwd".to_vec(),
                                HashSet::from([password_change::unicode_pwd(old.expose())]),
                            ),
                            ldap3::Mod::Add(
                                b"unicodePwd".to_vec(),
                                HashSet::from([password_change::unicode_pwd(new.expose())]),
                            ),
                        ],
                    )
                    .await
                    .map_err(|err| failure("password change", &err))?
            }
        };
        let rejection = ppolicy_response(&answer)
            .and_then(ppolicy_error)
            .and_then(password_change::ppolicy_rejection);
        match (answer.rc, rejection) {
            (0, _) => {}
            (_, Some(rejection)) => return Ok(ChangeOutcome::Rejected(rejection)),
            // constraintViolation: AD says which (its error number leads the text): 0000052D,
            // the new password breaks the policy; 00000056, the old one is wrong.
            (19, None) => {
                return Ok(match password_change::ad_change_error(&answer.text) {
                    Some(outcome) => outcome,
                    None => ChangeOutcome::Rejected(password_change::Rejection::Policy),
                });
            }
            (49, None) => {
                return Ok(ChangeOutcome::Refused(
                    ad_sub_code(&answer.text).unwrap_or(Verdict::InvalidCredentials),
                ));
            }
            (53, None) if self.config.password_change == PasswordChange::ActiveDirectory => {
                return Err(DirectoryError::Misconfigured(format!(
                    "Active Directory refused the password change ({}): it needs LDAPS",
                    answer.text
                )));
            }
            (rc, None) => {
                return Err(DirectoryError::Unavailable(format!(
                    "password change answered rc={rc}: {}",
                    answer.text
                )));
            }
        }
        tracing::info!("password changed in the directory");
        Ok(match self.authenticate_on(server, login, new).await? {
            Verdict::Success(info) => ChangeOutcome::Changed(info),
            verdict => ChangeOutcome::Refused(verdict),
        })
    }

    /// The lockout policies readable on `server`.
    async fn lockout_policy_on(
        &self,
        server: &Server,
    ) -> Result<Option<LockoutPolicy>, DirectoryError> {
        let base = match &self.config.lockout_policy_base_dn {
            Some(base) => base.clone(),
            None => self.policy_base(server).await?,
        };
        let attributes: Vec<String> = lockout_policy::POLICY_ATTRIBUTES
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        let (entries, status) = self
            .search(
                server,
                &base,
                Scope::Subtree,
                lockout_policy::POLICY_FILTER,
                &attributes,
            )
            .await?;
        // `search` has turned every other result code into an error: a policy that cannot
        // be read keeps the last value read (see the agent).
        debug_assert!(matches!(status.rc, 0 | 10), "rc {}", status.rc);
        let entries: Vec<SearchEntry> = entries.into_iter().map(SearchEntry::construct).collect();
        Ok(lockout_policy::from_entries(
            entries.iter().map(|e| &e.attrs),
        ))
    }
}

impl Directory for LdapDirectory {
    fn authenticate<'a>(&'a self, login: &'a str, password: &'a Password) -> VerdictFuture<'a> {
        Box::pin(async move {
            // Password's type forbids empty values; re-check here because an empty simple bind
            // is an anonymous bind that many servers accept.
            if password.expose().is_empty() {
                return Ok(Verdict::InvalidCredentials);
            }
            self.on_any_server(|server| async move {
                self.authenticate_on(&server, login, password).await
            })
            .await
        })
    }

    fn change_password<'a>(
        &'a self,
        login: &'a str,
        old: &'a Password,
        new: &'a Password,
    ) -> ChangeFuture<'a> {
        Box::pin(async move {
            self.on_any_server(
                |server| async move { self.change_on(&server, login, old, new).await },
            )
            .await
        })
    }

    fn has_lockout_policy(&self) -> bool {
        true
    }

    fn lockout_policy(&self) -> PolicyFuture<'_> {
        Box::pin(async move {
            self.on_any_server(|server| async move { self.lockout_policy_on(&server).await })
                .await
        })
    }

    fn health(&self) -> DirectoryHealth {
        let (up, total) = self.servers.health();
        DirectoryHealth {
            servers_up: up,
            servers_total: total,
            failovers: self.servers.failovers(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "ldap {} base={} login_attribute={}",
            self.servers.describe(),
            self.config.base_dn,
            self.config.login_attribute
        )
    }
}

/// What a user bind said.
#[derive(Debug, PartialEq, Eq)]
enum BindAnswer {
    /// The password is right; with the seconds until it expires when the server warned.
    Success(Option<u64>),
    Refused(Verdict),
    ServerError(String),
}

impl BindAnswer {
    fn from_result(result: &ldap3::LdapResult) -> Self {
        let control = ppolicy_response(result);
        let ppolicy = control.and_then(ppolicy_error);
        match result.rc {
            0 => match ppolicy {
                // OpenLDAP with pwdMustChange lets the bind succeed but flags it.
                Some(2) => BindAnswer::Refused(Verdict::PasswordMustChange),
                // A grace login of an expired password: expired, to be changed (the change
                // itself binds with one of the grace logins left).
                _ if control.and_then(ppolicy_grace_logins_left).is_some() => {
                    BindAnswer::Refused(Verdict::PasswordExpired)
                }
                _ => BindAnswer::Success(control.and_then(ppolicy_time_before_expiration)),
            },
            49 => BindAnswer::Refused(
                ad_sub_code(&result.text)
                    .or_else(|| ppolicy.and_then(ppolicy_verdict))
                    .unwrap_or(Verdict::InvalidCredentials),
            ),
            // inappropriateAuthentication / unwillingToPerform: the server will not accept
            // this bind (e.g. empty or disallowed credentials) — an answer, never a success.
            48 | 53 => BindAnswer::Refused(Verdict::InvalidCredentials),
            rc => BindAnswer::ServerError(format!("bind answered rc={rc}: {}", result.text)),
        }
    }
}

/// Maps Active Directory's `data XXX` sub-code in a bind error to a verdict.
pub fn ad_sub_code(text: &str) -> Option<Verdict> {
    let code = text.split("data ").nth(1)?.split([',', ' ']).next()?;
    Some(match code.to_ascii_lowercase().as_str() {
        "52e" | "525" => Verdict::InvalidCredentials,
        "530" | "531" | "533" => Verdict::AccountDisabled,
        "532" => Verdict::PasswordExpired,
        "701" => Verdict::AccountExpired,
        "773" => Verdict::PasswordMustChange,
        "775" => Verdict::AccountLocked,
        _ => return None,
    })
}

fn ppolicy_verdict(error: u8) -> Option<Verdict> {
    match error {
        0 => Some(Verdict::PasswordExpired),
        1 => Some(Verdict::AccountLocked),
        2 => Some(Verdict::PasswordMustChange),
        _ => None,
    }
}

/// The `error` field of a ppolicy response control value:
/// `SEQUENCE { warning [0] ... OPTIONAL, error [1] ENUMERATED OPTIONAL }`.
pub fn ppolicy_error(value: &[u8]) -> Option<u8> {
    ppolicy_field(value, 0x81)?.last().copied()
}

/// The content of the field tagged `wanted` in a ppolicy response control value (a SEQUENCE).
fn ppolicy_field(value: &[u8], wanted: u8) -> Option<&[u8]> {
    let (tag, body, _) = der_element(value)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = body;
    while !rest.is_empty() {
        let (tag, content, next) = der_element(rest)?;
        if tag == wanted {
            return Some(content);
        }
        rest = next;
    }
    None
}

/// The password-policy request control, sent with binds and password changes.
fn ppolicy_request() -> RawControl {
    RawControl {
        ctype: PPOLICY_OID.into(),
        crit: false,
        val: None,
    }
}

/// The value of a result's password-policy response control, if it has one.
fn ppolicy_response(result: &ldap3::LdapResult) -> Option<&[u8]> {
    result
        .ctrls
        .iter()
        .find(|c| c.1.ctype == PPOLICY_OID)
        .and_then(|c| c.1.val.as_deref())
}

/// The `warning` field's `timeBeforeExpiration` of a ppolicy response control value:
/// `SEQUENCE { warning [0] CHOICE { timeBeforeExpiration [0] INTEGER, graceAuthNsRemaining
/// [1] INTEGER } OPTIONAL, ... }`, in seconds.
pub fn ppolicy_time_before_expiration(value: &[u8]) -> Option<u64> {
    ppolicy_warning(value, 0x80)
}

/// The `warning` field's `graceAuthNsRemaining` of a ppolicy response control value: the bind
/// succeeded only by a grace login of an expired password.
pub fn ppolicy_grace_logins_left(value: &[u8]) -> Option<u64> {
    ppolicy_warning(value, 0x81)
}

/// The `warning` CHOICE `wanted` (0x80 timeBeforeExpiration, 0x81 graceAuthNsRemaining).
fn ppolicy_warning(value: &[u8], wanted: u8) -> Option<u64> {
    let (choice, seconds, _) = der_element(ppolicy_field(value, 0xa0)?)?;
    if choice != wanted || seconds.is_empty() || seconds.len() > 8 {
        return None;
    }
    Some(
        seconds
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    )
}

/// Splits one DER element (short or long definite length) into tag, content and the rest.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The durations of the most recent failed binds, to draw an unknown user's wait from.
#[derive(Debug, Default)]
struct FailedBindTimes {
    ring: Mutex<(Vec<Duration>, usize)>,
    /// Moving average of what a wait costs beyond its sleep (thread hand-off, timer slack),
    /// in nanoseconds.
    handoff_ns: std::sync::atomic::AtomicU64,
}

impl FailedBindTimes {
    /// How many recent samples are kept: enough to follow the directory's load, few enough
    /// to follow it quickly.
    const KEPT: usize = 256;

    fn record(&self, took: Duration) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let (samples, next) = &mut *ring;
        if samples.len() < Self::KEPT {
            samples.push(took);
        } else {
            samples[*next] = took;
        }
        *next = (*next + 1) % Self::KEPT;
    }

    /// What a wait costs beyond its sleep, as recently measured.
    fn handoff(&self) -> Duration {
        Duration::from_nanos(self.handoff_ns.load(Ordering::Relaxed))
    }

    /// Follows the hand-off cost (exponential moving average, weight 1/8).
    fn record_handoff(&self, took: Duration) {
        let sample = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let previous = self.handoff_ns.load(Ordering::Relaxed);
        let next = if previous == 0 {
            sample
        } else {
            previous - previous / 8 + sample / 8
        };
        self.handoff_ns.store(next, Ordering::Relaxed);
    }

    /// A uniformly random one of the recent samples, if any.
    fn sample(&self) -> Option<Duration> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let samples = &ring.0;
        if samples.is_empty() {
            return None;
        }
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).ok()?;
        Some(samples[(u64::from_le_bytes(bytes) % samples.len() as u64) as usize])
    }
}

impl std::fmt::Debug for LdapDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapDirectory")
            .field("servers", &self.servers.describe())
            .field("bind_password", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plaintext_ldap_needs_starttls_or_an_explicit_allowance() {
        let plain = LdapConfig::new("ldap://dc1.corp.example.com", "dc=corp");
        let err = LdapDirectory::new(plain.clone()).unwrap_err();
        assert!(err.to_string().contains("allow_plaintext"), "{err}");
        LdapDirectory::new(LdapConfig {
            starttls: true,
            ..plain.clone()
        })
        .unwrap();
        LdapDirectory::new(LdapConfig {
            allow_plaintext: true,
            ..plain.clone()
        })
        .unwrap();
        LdapDirectory::new(LdapConfig::new("ldaps://dc1.corp.example.com", "dc=corp")).unwrap();
    }

    #[test]
    fn servers_come_from_exactly_one_of_url_urls_and_dns_srv() {
        let parse = |text: &str| {
            let config: crate::DirectoryConfig =
                toml::from_str(&format!("kind = \"ldap\"\nbase_dn = \"dc=corp\"\n{text}")).unwrap();
            match config {
                crate::DirectoryConfig::Ldap(config) => LdapDirectory::new(*config),
                crate::DirectoryConfig::Static(_) => unreachable!(),
            }
        };
        // DNS discovery alone: built without a lookup (and without a runtime).
        let found = parse("[dns_srv]\ndomain = \"corp.example.com\"\nsite = \"Paris\"").unwrap();
        assert!(
            found
                .describe()
                .contains("_ldap._tcp.Paris._sites.corp.example.com."),
            "{}",
            found.describe()
        );
        assert_eq!(
            found.health(),
            DirectoryHealth {
                servers_up: 0,
                servers_total: 0,
                failovers: 0
            }
        );
        for both in [
            "url = \"ldaps://dc1\"\n[dns_srv]\ndomain = \"corp.example.com\"",
            "urls = [\"ldaps://dc1\"]\n[dns_srv]\ndomain = \"corp.example.com\"",
            "url = \"ldaps://dc1\"\nurls = [\"ldaps://dc2\"]",
        ] {
            let err = parse(both).unwrap_err().to_string();
            assert!(err.contains("set one of url, urls and dns_srv"), "{err}");
        }
        let err = parse("").unwrap_err().to_string();
        assert!(err.contains("dns_srv (found in DNS)"), "{err}");
        // Records made into ldap:// URLs are plaintext unless StartTLS or allowed.
        let err = parse("[dns_srv]\ndomain = \"corp.example.com\"\nscheme = \"ldap\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_plaintext"), "{err}");
        parse("starttls = true\n[dns_srv]\ndomain = \"corp.example.com\"\nscheme = \"ldap\"")
            .unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_bind_password_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bind-password");
        std::fs::write(&path, "service-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = LdapConfig {
            bind_dn: Some("cn=passage,dc=corp".into()),
            bind_password_file: Some(path.clone()),
            ..LdapConfig::new("ldaps://dc1.corp.example.com", "dc=corp")
        };
        let err = LdapDirectory::new(config.clone()).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let directory = LdapDirectory::new(config).unwrap();
        assert_eq!(
            directory
                .servers
                .connector
                .bind_password
                .as_ref()
                .unwrap()
                .expose(),
            b"service-secret"
        );
    }

    #[test]
    fn name_forms_are_looked_up_by_their_attribute() {
        let config = LdapConfig {
            login_attribute: "mail".into(),
            short_name_attribute: "uid".into(),
            ..LdapConfig::new("ldaps://dc1", "dc=corp")
        };
        assert_eq!(
            config.lookup("a@corp.example.com"),
            ("mail", "a@corp.example.com")
        );
        assert_eq!(config.lookup("CORP\\alice"), ("uid", "alice"));
        assert_eq!(config.lookup("alice"), ("uid", "alice"));
        assert_eq!(
            config.lookup("a\\b@corp.example.com"),
            ("mail", "a\\b@corp.example.com"),
            "an @ makes a UPN, as the gateway reads it"
        );
    }

    #[test]
    fn filter_escapes_metacharacters() {
        assert_eq!(
            user_search_filter("(objectClass=person)", "uid", "a*)(uid=*)\\\0"),
            "(&(objectClass=person)(uid=a\\2a\\29\\28uid=\\2a\\29\\5c\\00))"
        );
    }

    #[test]
    fn ad_sub_codes_map_to_verdicts() {
        let text = |code: &str| {
            format!(
                "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data {code}, v1db1"
            )
        };
        assert_eq!(ad_sub_code(&text("52e")), Some(Verdict::InvalidCredentials));
        assert_eq!(ad_sub_code(&text("775")), Some(Verdict::AccountLocked));
        assert_eq!(ad_sub_code(&text("533")), Some(Verdict::AccountDisabled));
        assert_eq!(ad_sub_code(&text("701")), Some(Verdict::AccountExpired));
        assert_eq!(ad_sub_code(&text("532")), Some(Verdict::PasswordExpired));
        assert_eq!(ad_sub_code(&text("773")), Some(Verdict::PasswordMustChange));
        assert_eq!(ad_sub_code("Invalid credentials"), None);
    }

    #[test]
    fn ppolicy_control_values_parse() {
        // SEQUENCE { error [1] accountLocked(1) }
        assert_eq!(ppolicy_error(&[0x30, 0x03, 0x81, 0x01, 0x01]), Some(1));
        // SEQUENCE { warning [0] { graceAuthNsRemaining [1] 2 }, error [1] passwordExpired(0) }
        assert_eq!(
            ppolicy_error(&[0x30, 0x08, 0xa0, 0x03, 0x81, 0x01, 0x02, 0x81, 0x01, 0x00]),
            Some(0)
        );
        // SEQUENCE { warning only }
        assert_eq!(
            ppolicy_error(&[0x30, 0x05, 0xa0, 0x03, 0x80, 0x01, 0x05]),
            None
        );
        // SEQUENCE { warning [0] { timeBeforeExpiration [0] 86400 } }
        assert_eq!(
            ppolicy_time_before_expiration(&[0x30, 0x07, 0xa0, 0x05, 0x80, 0x03, 0x01, 0x51, 0x80]),
            Some(86_400)
        );
        // A grace-login warning is not an expiry time; an error alone has none.
        assert_eq!(
            ppolicy_time_before_expiration(&[0x30, 0x05, 0xa0, 0x03, 0x81, 0x01, 0x02]),
            None
        );
        assert_eq!(
            ppolicy_time_before_expiration(&[0x30, 0x03, 0x81, 0x01, 0x01]),
            None
        );
        assert_eq!(
            ppolicy_time_before_expiration(&[0x30, 0x04, 0xa0, 0x02, 0x80]),
            None
        );
        assert_eq!(ppolicy_error(&[0x30, 0x05, 0x81]), None);
    }

    #[test]
    fn unknown_users_wait_a_recent_failed_binds_time() {
        let times = FailedBindTimes::default();
        assert_eq!(times.sample(), None);
        for ms in 1..=10 {
            times.record(Duration::from_millis(ms));
        }
        let mut seen = HashSet::new();
        for _ in 0..2_000 {
            let sample = times.sample().unwrap();
            assert!(sample >= Duration::from_millis(1) && sample <= Duration::from_millis(10));
            seen.insert(sample);
        }
        assert_eq!(seen.len(), 10, "every recent sample is drawn");
        // Only the most recent are kept.
        for _ in 0..FailedBindTimes::KEPT {
            times.record(Duration::from_millis(50));
        }
        assert_eq!(times.sample(), Some(Duration::from_millis(50)));
        // The hand-off cost follows what is measured.
        assert_eq!(times.handoff(), Duration::ZERO);
        times.record_handoff(Duration::from_micros(80));
        assert_eq!(times.handoff(), Duration::from_micros(80));
        for _ in 0..100 {
            times.record_handoff(Duration::from_micros(160));
        }
        assert!(times.handoff() > Duration::from_micros(150));
    }

    proptest! {
        #[test]
        fn escaped_filters_have_balanced_structure(login in "\\PC{0,64}") {
            let filter = user_search_filter("(objectClass=person)", "uid", &login);
            // The escaped value contributes no parentheses or wildcards of its own.
            let value = &filter["(&(objectClass=person)(uid=".len()..filter.len() - 2];
            prop_assert!(!value.contains(['(', ')', '*', '\0']));
            prop_assert!(ldap3::parse_filter(&filter).is_ok());
        }

        #[test]
        fn der_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ppolicy_error(&bytes);
        }
    }
}

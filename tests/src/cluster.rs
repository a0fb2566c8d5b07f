//! A whole Passage deployment for one test: slapd, a dispatcher, a gateway and agents, each
//! a real process with its own config file in a temp dir.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use passage_proto::v1::{
    AgentKey, ListAgentKeysRequest, SignInRequest, SignInResponse,
    agent_enrolment_client::AgentEnrolmentClient, dispatcher_client::DispatcherClient,
    gateway_client::GatewayClient,
};
use tonic::{
    Status,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::{
    bins::{Process, run_to_end},
    otlp::Collector,
    postgres::Postgres,
    slapd::{self, ADMIN_PASSWORD, DOMAIN, PEOPLE_DN, Slapd, TestUser},
};

/// The client id tests sign in as.
pub const CLIENT_ID: &str = "e2e-app";
/// The services CA certificate in a secure cluster's directory.
pub const SERVICES_CA_FILE: &str = "services-ca.pem";
/// The store's key-encryption key in a secure cluster's directory.
pub const STORE_KEY_FILE: &str = "store.key";

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Agents to start.
    pub agents: usize,
    /// The agents' login attribute (default: `userPrincipalName`).
    pub login_attribute: String,
    /// Seeded users.
    pub users: Vec<TestUser>,
    /// Agent capacity.
    pub agent_capacity: u32,
    /// The gateway's dispatcher-call deadline.
    pub validation_timeout: Duration,
    /// Log every slapd operation (needed by [`Slapd::binds_as`]).
    pub slapd_stats_log: bool,
    /// Have agents look groups up with a search (one more LDAP search per sign-in).
    pub group_search: bool,
    /// Production trust: the dispatcher's agent listener speaks TLS, agents enrol with a
    /// one-time token and connect with their certificate (a SQLite store in the temp dir).
    /// Agents are then started with [`Cluster::enrol_agent`] rather than `agents`.
    pub enrolment: bool,
    /// With `enrolment`, keep the shared store in a private PostgreSQL instead of SQLite.
    pub postgres: bool,
    /// With `enrolment`, the lifetime of agent certificates in seconds (agents then check
    /// for renewal every 300 ms and a group's renewals are spaced by one second).
    pub certificate_lifetime_s: Option<u64>,
    /// With `enrolment`, how long a certificate replaced by a renewal stays trusted, in seconds
    /// (dispatcher and gateway; default: theirs).
    pub certificate_switchover_s: Option<u64>,
    /// Extra lines for the gateway's configuration file.
    pub gateway_config: String,
    /// The agents' search base (default: the people OU of the test directory).
    pub base_dn: Option<String>,
    /// Start every process at `debug` log level (leak checks: whatever a process could print,
    /// it prints).
    pub debug_logs: bool,
    /// Start a private OTLP receiver ([`Cluster::collector`]) and have every process export
    /// its spans to it.
    pub trace_export: bool,
    /// Give the gateway the store's key-encryption key (for MFA), with `enrolment`.
    pub gateway_store_key: bool,
    /// Without `enrolment`: still give the gateway a store (SQLite in the temp dir) for its
    /// shared state — the OpenID provider, lockout, the sign-in log — in development trust.
    pub development_store: bool,
    /// Extra `[[clients]]` tables at the end of the gateway's configuration file.
    pub gateway_clients: String,
    /// Per agent (by index), what differs from the default agent: another directory, forest
    /// or connector group.
    pub agent_overrides: Vec<AgentOverride>,
    /// Reach the dispatcher by a name that stands for several replicas (the first one on
    /// 127.0.0.1 is the cluster's; start others with [`Cluster::start_dispatcher_replica`]).
    pub dispatcher_replicas: Option<DispatcherReplicas>,
}

/// The host name dispatcher replicas share in DNS ([`ClusterOptions::dispatcher_replicas`]),
/// which their certificates name.
pub const DISPATCHERS_NAME: &str = "dispatchers.passage.test";

/// Dispatcher replicas behind one name: every replica listens on the same two ports, each on
/// its own loopback address; agents and the gateway resolve [`DISPATCHERS_NAME`] with
/// `name_server` (a [`crate::dns::DnsServer`]) every second.
#[derive(Debug, Clone)]
pub struct DispatcherReplicas {
    /// The test DNS server.
    pub name_server: String,
    /// Where agents connect, on every replica.
    pub agent_port: u16,
    /// Where gateways call, on every replica.
    pub api_port: u16,
}

/// How one agent differs from the cluster's default agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOverride {
    /// Directory servers instead of the test slapd.
    pub ldap_urls: Vec<String>,
    /// Another forest (search base, groups, service account) than the test slapd's.
    pub forest: Option<crate::slapd::Forest>,
    /// Another connector group than the test domain.
    pub connector_group: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            agents: 1,
            login_attribute: "userPrincipalName".into(),
            users: slapd::default_users(),
            agent_capacity: 128,
            validation_timeout: Duration::from_secs(5),
            slapd_stats_log: true,
            group_search: true,
            enrolment: false,
            postgres: false,
            certificate_lifetime_s: None,
            certificate_switchover_s: None,
            debug_logs: false,
            base_dn: None,
            gateway_config: String::new(),
            trace_export: false,
            gateway_store_key: false,
            development_store: false,
            gateway_clients: String::new(),
            agent_overrides: Vec::new(),
            dispatcher_replicas: None,
        }
    }
}

/// The dispatcher process.
pub struct DispatcherProcess {
    /// The process.
    pub process: Process,
    /// `http://` URL agents dial.
    pub agent_url: String,
    /// `http://` URL gateways call.
    pub api_url: String,
    /// Where its Prometheus metrics are scraped.
    pub metrics_url: String,
}

impl DispatcherProcess {
    fn start(
        agent_listen: &str,
        api_listen: &str,
        config: Option<&std::path::Path>,
        env: &[(String, String)],
        log: &std::path::Path,
        filter: &str,
    ) -> Self {
        let mut args = vec![
            "--agent-listen",
            agent_listen,
            "--api-listen",
            api_listen,
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        match config {
            Some(config) => args.extend(["--config", config.to_str().expect("utf-8 path")]),
            None => args.push("--insecure-plaintext"),
        }
        let process = Process::start_with_log("passage-dispatcher", &args, env, log, filter);
        let scheme = if config.is_some() { "https" } else { "http" };
        Self {
            agent_url: format!("{scheme}://{}", process.ready_value("agents")),
            api_url: format!("{scheme}://{}", process.ready_value("api")),
            metrics_url: format!("http://{}/metrics", process.ready_value("metrics")),
            process,
        }
    }
}

/// The gateway process.
pub struct GatewayProcess {
    /// The process.
    pub process: Process,
    /// `http://` gRPC URL.
    pub grpc_url: String,
    /// Issuer (and HTTP base) URL.
    pub issuer: String,
    /// Where its Prometheus metrics are scraped.
    pub metrics_url: String,
}

/// One agent process.
pub struct AgentProcess {
    /// The process.
    pub process: Process,
    /// Its id.
    pub agent_id: String,
}

/// Everything for one test.
pub struct Cluster {
    /// Options it was started with.
    pub options: ClusterOptions,
    /// The directory.
    pub slapd: Slapd,
    /// The dispatcher.
    pub dispatcher: DispatcherProcess,
    /// The gateway.
    pub gateway: GatewayProcess,
    /// Agents, in start order.
    pub agents: Vec<AgentProcess>,
    dir: tempfile::TempDir,
    gateway_client: GatewayClient<Channel>,
    gateway_channel: Channel,
    store_url: String,
    /// The PostgreSQL server holding the store, when `postgres`.
    pub postgres: Option<Postgres>,
    /// An HTTP CONNECT proxy that agents configured from now on go through.
    pub agent_proxy: Option<String>,
    /// The OTLP receiver the processes export to, when `trace_export`.
    pub collector: Option<Collector>,
    /// Environment every process is started with.
    process_env: Vec<(String, String)>,
}

async fn channel(url: &str, tls: Option<&ClientTlsConfig>) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut endpoint = Channel::from_shared(url.to_owned()).expect("valid URL");
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).expect("TLS config");
    }
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => panic!("connecting to {url}: {err}"),
        }
    }
}

/// TLS client settings trusting the cluster's test service CA, optionally presenting the
/// gateway's client certificate.
fn service_tls(dir: &std::path::Path, client_certificate: bool) -> ClientTlsConfig {
    let read = |name: &str| std::fs::read(dir.join(name)).expect("TLS material");
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(SERVICES_CA_FILE)));
    if client_certificate {
        tls = tls.identity(Identity::from_pem(
            read("gateway-client.pem"),
            read("gateway-client-key.pem"),
        ));
    }
    tls
}

impl Cluster {
    /// A production deployment: `options` with enrolment (TLS on every hop, a store) and one
    /// enrolled agent, connected.
    pub async fn start_enrolled(options: ClusterOptions) -> Self {
        let mut cluster = Self::start(ClusterOptions {
            agents: 0,
            enrolment: true,
            ..options
        })
        .await;
        cluster.enrol_agent().await;
        cluster
    }

    /// Starts slapd, dispatcher, gateway and `options.agents` agents, and waits until the
    /// agents are registered.
    pub async fn start(options: ClusterOptions) -> Self {
        let dir = tempfile::tempdir().expect("cluster temp dir");
        let slapd = Slapd::start_with(&options.users, options.slapd_stats_log);
        let collector = match options.trace_export {
            true => Some(Collector::start().await),
            false => None,
        };
        let process_env = collector
            .as_ref()
            .map(Collector::process_env)
            .unwrap_or_default();

        let postgres = (options.enrolment && options.postgres).then(Postgres::start);
        let store_url = match &postgres {
            Some(server) => server.url(),
            None => format!("sqlite://{}", dir.path().join("passage.db").display()),
        };
        let dispatcher_config = options
            .enrolment
            .then(|| write_secure_dispatcher_config(dir.path(), &store_url, &options));
        let (agent_listen, api_listen) = match &options.dispatcher_replicas {
            Some(replicas) => (
                format!("127.0.0.1:{}", replicas.agent_port),
                format!("127.0.0.1:{}", replicas.api_port),
            ),
            None => ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned()),
        };
        let dispatcher = DispatcherProcess::start(
            &agent_listen,
            &api_listen,
            dispatcher_config.as_deref(),
            &process_env,
            &dir.path().join("dispatcher.log"),
            &log_filter(&options),
        );

        let gateway_config = dir.path().join("gateway.toml");
        std::fs::write(
            &gateway_config,
            format!(
                "grpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
                 dispatcher_url = \"{}\"\n{replicas}signing_key_file = \"{}\"\n\
                 validation_timeout_ms = {}\ninsecure_plaintext = {insecure}\n\
                 key_cache_ttl_ms = 500\n{switchover}{extra}\n{store}\n[[clients]]\nid = \"{CLIENT_ID}\"\nname = \"end-to-end tests\"\n",
                match &options.dispatcher_replicas {
                    Some(replicas) => format!(
                        "{}://{DISPATCHERS_NAME}:{}",
                        if options.enrolment { "https" } else { "http" },
                        replicas.api_port,
                    ),
                    None => dispatcher.api_url.clone(),
                },
                dir.path().join("token-key.der").display(),
                options.validation_timeout.as_millis(),
                insecure = !options.enrolment,
                switchover = switchover(&options),
                replicas = match &options.dispatcher_replicas {
                    Some(replicas) => format!(
                        "dispatcher_name_servers = [\"{}\"]\ndispatcher_resolve_interval_s = 1\n",
                        replicas.name_server
                    ),
                    None => String::new(),
                },
                // Tests drive thousands of sign-ins from one address: no rate limits unless
                // the test sets its own.
                extra = if options.gateway_config.contains("throttle") {
                    options.gateway_config.clone()
                } else {
                    format!(
                        "{}throttle = {{ per_client_ip_per_minute = 0, per_tenant_per_second = 0 }}\n",
                        options.gateway_config
                    )
                },
                store = if options.enrolment {
                    let file = |name: &str| dir.path().join(name).display().to_string();
                    let key = if options.gateway_store_key {
                        format!("store_encryption_key_file = \"{}\"\n", file(STORE_KEY_FILE))
                    } else {
                        String::new()
                    };
                    key + &format!(
                        "store_url = \"{store_url}\"\n\
                         tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n\
                         dispatcher_tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}\n",
                        file("gateway.pem"),
                        file("gateway-key.pem"),
                        file(SERVICES_CA_FILE),
                        file("gateway-client.pem"),
                        file("gateway-client-key.pem"),
                    )
                } else if options.development_store {
                    format!("store_url = \"{store_url}\"\n")
                } else {
                    String::new()
                },
            ) + &options.gateway_clients,
        )
        .expect("gateway.toml");
        let gateway = Process::start_with_log(
            "passage-gateway",
            &[
                "--config",
                gateway_config.to_str().expect("utf-8 path"),
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            &process_env,
            &dir.path().join("gateway.log"),
            &log_filter(&options),
        );
        let scheme = if options.enrolment { "https" } else { "http" };
        let gateway = GatewayProcess {
            grpc_url: format!("{scheme}://{}", gateway.ready_value("grpc")),
            issuer: gateway.ready_value("issuer"),
            metrics_url: format!("http://{}/metrics", gateway.ready_value("metrics")),
            process: gateway,
        };
        let client_tls = options.enrolment.then(|| service_tls(dir.path(), false));
        let gateway_channel = channel(&gateway.grpc_url, client_tls.as_ref()).await;
        let gateway_client = GatewayClient::new(gateway_channel.clone());

        let mut cluster = Self {
            options,
            slapd,
            dispatcher,
            gateway,
            agents: Vec::new(),
            dir,
            gateway_client,
            gateway_channel,
            store_url,
            postgres,
            agent_proxy: None,
            collector,
            process_env,
        };
        for _ in 0..cluster.options.agents {
            cluster.add_agent().await;
        }
        cluster
    }

    /// Writes agent `index`'s configuration (state in [`Cluster::agent_state_dir`]) and
    /// returns its path.
    pub fn agent_config(&self, index: usize) -> PathBuf {
        let path = self.dir.path().join(format!("agent-{index}.toml"));
        let over = self
            .options
            .agent_overrides
            .get(index)
            .cloned()
            .unwrap_or_default();
        let forest = over
            .forest
            .clone()
            .unwrap_or_else(crate::slapd::Forest::corp);
        std::fs::write(
            &path,
            format!(
                "dispatchers = [\"{dispatcher}\"]\n{replicas}connector_group = \"{group}\"\n\
                 state_dir = \"{state}\"\ncapacity = {capacity}\nheartbeat_interval_ms = 1000\n\
                 insecure_plaintext = true\n{renew}{proxy}{tls}\n\
                 [directory]\nkind = \"ldap\"\n{servers}\nallow_plaintext = true\n\
                 base_dn = \"{base_dn}\"\n\
                 bind_dn = \"{admin}\"\nbind_password = \"{ADMIN_PASSWORD}\"\n\
                 login_attribute = \"{login}\"\nshort_name_attribute = \"uid\"\ntimeout_ms = 2000\n{groups}",
                dispatcher = match &self.options.dispatcher_replicas {
                    Some(replicas) => format!(
                        "{}://{DISPATCHERS_NAME}:{}",
                        if self.options.enrolment { "https" } else { "http" },
                        replicas.agent_port
                    ),
                    None => self.dispatcher.agent_url.clone(),
                },
                replicas = match &self.options.dispatcher_replicas {
                    Some(replicas) => format!(
                        "dispatcher_name_servers = [\"{}\"]\ndispatcher_resolve_interval_s = 1\n",
                        replicas.name_server
                    ),
                    None => String::new(),
                },
                state = self.dir.path().join(format!("agent-{index}")).display(),
                capacity = self.options.agent_capacity,
                renew = if self.options.certificate_lifetime_s.is_some() {
                    "renew_check_interval_ms = 300\n"
                } else {
                    ""
                },
                proxy = self
                    .agent_proxy
                    .as_ref()
                    .map(|p| format!("proxy = \"{p}\"\n"))
                    .unwrap_or_default(),
                tls = if self.options.enrolment {
                    format!(
                        "tls = {{ ca_file = \"{}\" }}\n",
                        self.dir.path().join(SERVICES_CA_FILE).display()
                    )
                } else {
                    String::new()
                },
                servers = match &over.ldap_urls {
                    urls if !urls.is_empty() => format!(
                        "urls = [{}]\nprobe_interval_ms = 200",
                        urls.iter()
                            .map(|u| format!("\"{u}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => format!("url = \"{}\"", self.slapd.url()),
                },
                base_dn = match &over.forest {
                    Some(forest) => forest.people_dn(),
                    None => self.options.base_dn.clone().unwrap_or(PEOPLE_DN.to_owned()),
                },
                admin = forest.admin_dn(),
                group = over.connector_group.as_deref().unwrap_or(DOMAIN),
                login = self.options.login_attribute,
                groups = if self.options.group_search {
                    format!("group_search = {{ base_dn = \"{}\" }}\n", forest.groups_dn())
                } else {
                    String::new()
                },
            ),
        )
        .expect("agent.toml");
        path
    }

    /// A client of the dispatcher's gateway API over TLS, presenting the client certificate
    /// `<dir>/<client>.pem` (with `<client>-key.pem`) if given. Connects lazily, so a refused
    /// handshake shows as the first call's error.
    pub fn dispatcher_api(&self, client: Option<&str>) -> DispatcherClient<Channel> {
        let read = |name: &str| std::fs::read(self.dir.path().join(name)).expect("TLS material");
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(SERVICES_CA_FILE)));
        if let Some(client) = client {
            tls = tls.identity(Identity::from_pem(
                read(&format!("{client}.pem")),
                read(&format!("{client}-key.pem")),
            ));
        }
        let endpoint = Channel::from_shared(self.dispatcher.api_url.clone())
            .expect("valid URL")
            .tls_config(tls)
            .expect("TLS config");
        DispatcherClient::new(endpoint.connect_lazy())
    }

    /// A client of the dispatcher's agent listener (enrolment), trusting the services CA.
    pub fn enrolment_client(&self) -> AgentEnrolmentClient<Channel> {
        let ca = std::fs::read(self.dir.path().join(SERVICES_CA_FILE)).expect("services CA");
        let endpoint = Channel::from_shared(self.dispatcher.agent_url.clone())
            .expect("valid URL")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .expect("TLS config");
        AgentEnrolmentClient::new(endpoint.connect_lazy())
    }

    /// `passage gateway certificate issue` for `name` and `tenants`, written as
    /// `<dir>/<name>.pem` and `<name>-key.pem`.
    pub fn issue_gateway_certificate(&self, name: &str, tenants: &[&str]) {
        let dir = self.dir.path().display().to_string();
        let mut args = vec![
            "gateway",
            "certificate",
            "issue",
            "--dir",
            &dir,
            "--name",
            name,
        ];
        for tenant in tenants {
            args.extend(["--tenant", tenant]);
        }
        let (ok, _, stderr) = run_to_end("passage", &args);
        assert!(ok, "gateway certificate issue: {stderr}");
    }

    /// Replaces the gateway with one that calls `dispatcher_url` instead of the cluster's
    /// dispatcher (everything else configured the same), e.g. a dispatcher that lies.
    pub async fn restart_gateway_via(&mut self, dispatcher_url: &str) {
        self.restart_gateway(Some(dispatcher_url), "").await;
    }

    /// Replaces the gateway with one configured the same but for `extra` lines, calling
    /// `dispatcher_url` if given.
    pub async fn restart_gateway(&mut self, dispatcher_url: Option<&str>, extra: &str) {
        let (gateway, channel) = self
            .spawn_gateway("gateway-via", dispatcher_url, extra)
            .await;
        self.gateway = gateway;
        self.gateway_client = GatewayClient::new(channel.clone());
        self.gateway_channel = channel;
    }

    /// Another gateway replica beside the running one, configured the same (same store, same
    /// dispatcher), named `name` for its files; and a channel to it.
    pub async fn start_gateway_replica(&self, name: &str) -> (GatewayProcess, Channel) {
        self.spawn_gateway(name, None, "").await
    }

    async fn spawn_gateway(
        &self,
        name: &str,
        dispatcher_url: Option<&str>,
        extra: &str,
    ) -> (GatewayProcess, Channel) {
        let original =
            std::fs::read_to_string(self.dir.path().join("gateway.toml")).expect("gateway.toml");
        let config: String = std::iter::once(extra.to_owned())
            .chain(original.lines().map(|line| match dispatcher_url {
                Some(url) if line.starts_with("dispatcher_url") => {
                    format!("dispatcher_url = \"{url}\"")
                }
                _ => line.to_owned(),
            }))
            .collect::<Vec<_>>()
            .join("\n");
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("gateway config");
        let process = Process::start_with_log(
            "passage-gateway",
            &[
                "--config",
                path.to_str().expect("utf-8 path"),
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            &self.process_env,
            &self.dir.path().join(format!("{name}.log")),
            &log_filter(&self.options),
        );
        let scheme = if self.options.enrolment {
            "https"
        } else {
            "http"
        };
        let gateway = GatewayProcess {
            grpc_url: format!("{scheme}://{}", process.ready_value("grpc")),
            issuer: process.ready_value("issuer"),
            metrics_url: format!("http://{}/metrics", process.ready_value("metrics")),
            process,
        };
        let tls = self
            .options
            .enrolment
            .then(|| service_tls(self.dir.path(), false));
        let channel = channel(&gateway.grpc_url, tls.as_ref()).await;
        (gateway, channel)
    }

    /// TLS material for a lying dispatcher in front of this enrolment cluster's: the
    /// dispatcher's own server certificate, the gateway's client certificate.
    pub fn liar_tls(&self) -> crate::forging::LiarTls {
        let read = |name: &str| std::fs::read(self.dir.path().join(name)).expect("TLS material");
        crate::forging::LiarTls {
            ca: read(SERVICES_CA_FILE),
            server: (read("dispatcher.pem"), read("dispatcher-key.pem")),
            client: (read("gateway-client.pem"), read("gateway-client-key.pem")),
        }
    }

    /// The bytes of an enrolment cluster's SQLite store (the database file and its journal),
    /// for checks that something is not in it.
    pub fn sqlite_store_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(self.dir.path())
            .expect("cluster dir")
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("passage.db")
            {
                bytes.extend(std::fs::read(entry.path()).expect("store file"));
            }
        }
        bytes
    }

    /// The key-encryption key file of an enrolment cluster's store.
    pub fn store_key_file(&self) -> String {
        self.dir.path().join(STORE_KEY_FILE).display().to_string()
    }

    /// The store URL of an enrolment cluster.
    pub fn store_url(&self) -> String {
        self.store_url.clone()
    }

    /// `passage agent token create` for `tenant`'s `group`, valid `ttl` (e.g. "1h").
    pub fn create_token(&self, tenant: &str, group: &str, ttl: &str) -> String {
        let (ok, stdout, stderr) = run_to_end(
            "passage",
            &[
                "agent",
                "token",
                "create",
                "--store",
                &self.store_url(),
                "--store-encryption-key-file",
                &self.store_key_file(),
                "--tenant",
                tenant,
                "--connector-group",
                group,
                "--ttl",
                ttl,
            ],
        );
        assert!(ok, "token create failed: {stderr}");
        stdout.trim().to_owned()
    }

    /// `passage agent ARGS...` against this cluster's store: (success, stdout, stderr).
    pub fn agent_cli(&self, args: &[&str]) -> (bool, String, String) {
        self.store_cli("agent", args)
    }

    /// `passage COMMAND ARGS...` against this cluster's store, with its key-encryption key:
    /// (success, stdout, stderr).
    pub fn store_cli(&self, command: &str, args: &[&str]) -> (bool, String, String) {
        let store = self.store_url();
        let key = self.store_key_file();
        let mut all = vec![
            command,
            "--store",
            store.as_str(),
            "--store-encryption-key-file",
            key.as_str(),
        ];
        all.extend_from_slice(args);
        run_to_end("passage", &all)
    }

    /// Writes agent `index`'s configuration (for `tenant`) and runs `passage-agent register`
    /// with `token`: (success, stdout, stderr).
    pub fn register_agent(
        &self,
        index: usize,
        tenant: &str,
        token: &str,
    ) -> (bool, String, String) {
        let config = self.agent_config(index);
        if tenant != "default" {
            let text = std::fs::read_to_string(&config).expect("agent config");
            std::fs::write(&config, format!("tenant = \"{tenant}\"\n{text}"))
                .expect("agent config");
        }
        run_to_end(
            "passage-agent",
            &[
                "register",
                "--config",
                config.to_str().expect("utf-8 path"),
                "--token",
                token,
            ],
        )
    }

    /// Creates a token, registers agent number `agents.len()` with it, starts it, and waits
    /// until the dispatcher lists it.
    pub async fn enrol_agent(&mut self) -> &AgentProcess {
        self.enrol_agent_for("default", true).await
    }

    /// Like [`Cluster::enrol_agent`] for `tenant`; with `wait`, until the dispatcher lists it
    /// for the default tenant (only sensible for that tenant).
    pub async fn enrol_agent_for(&mut self, tenant: &str, wait: bool) -> &AgentProcess {
        let token = self.create_token(tenant, DOMAIN, "1h");
        let index = self.agents.len();
        let (ok, _, stderr) = self.register_agent(index, tenant, &token);
        assert!(ok, "register failed: {stderr}");
        self.start_agent(index, wait).await
    }

    /// The state directory of agent `index`.
    pub fn agent_state_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{index}"))
    }

    /// Starts agent `index` from its existing configuration; with `wait`, until listed.
    pub async fn start_agent(&mut self, index: usize, wait: bool) -> &AgentProcess {
        let config = self.dir.path().join(format!("agent-{index}.toml"));
        let process = Process::start_with_log(
            "passage-agent",
            &["run", "--config", config.to_str().expect("utf-8 path")],
            &self.process_env,
            &self.dir.path().join(format!("agent-{index}.log")),
            &log_filter(&self.options),
        );
        let agent_id = process.ready_value("agent_id");
        let group = self
            .options
            .agent_overrides
            .get(index)
            .and_then(|over| over.connector_group.clone())
            .unwrap_or_else(|| DOMAIN.to_owned());
        if wait {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !self
                .offered_keys_of(&group)
                .await
                .iter()
                .any(|key| key.agent_id == agent_id)
            {
                assert!(
                    Instant::now() < deadline,
                    "agent {agent_id} not listed in {group}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.agents.push(AgentProcess { process, agent_id });
        self.agents.last().expect("just pushed")
    }

    /// Starts one more agent (development trust: no enrolment) and waits until the dispatcher
    /// lists it.
    pub async fn add_agent(&mut self) -> &AgentProcess {
        let index = self.agents.len();
        self.agent_config(index);
        self.start_agent(index, true).await
    }

    /// Stops the dispatcher with SIGTERM (true when it drained and exited cleanly within
    /// `grace`) and starts a new one on the same ports.
    pub fn restart_dispatcher(&mut self, grace: Duration) -> bool {
        let clean = self.dispatcher.process.terminate(grace);
        let address = |url: &str| url.split("://").nth(1).unwrap_or_default().to_owned();
        let (agent, api) = (
            address(&self.dispatcher.agent_url),
            address(&self.dispatcher.api_url),
        );
        let config = self
            .options
            .enrolment
            .then(|| self.dir.path().join("dispatcher.toml"));
        self.dispatcher = DispatcherProcess::start(
            &agent,
            &api,
            config.as_deref(),
            &self.process_env,
            &self.dir.path().join("dispatcher-2.log"),
            &log_filter(&self.options),
        );
        clean
    }

    /// Another dispatcher replica on `ip` (a loopback address such as 127.0.0.2), on the ports
    /// of [`ClusterOptions::dispatcher_replicas`], configured as the cluster's.
    pub fn start_dispatcher_replica(&self, ip: &str) -> DispatcherProcess {
        let replicas = self
            .options
            .dispatcher_replicas
            .as_ref()
            .expect("dispatcher_replicas is set");
        let config = self
            .options
            .enrolment
            .then(|| self.dir.path().join("dispatcher.toml"));
        DispatcherProcess::start(
            &format!("{ip}:{}", replicas.agent_port),
            &format!("{ip}:{}", replicas.api_port),
            config.as_deref(),
            &self.process_env,
            &self.dir.path().join(format!("dispatcher-{ip}.log")),
            &log_filter(&self.options),
        )
    }

    /// What the dispatcher's gateway-facing gRPC health says of `service` ("" for the server
    /// as a whole).
    pub async fn dispatcher_health(&self, service: &str) -> i32 {
        let tls = self
            .options
            .enrolment
            .then(|| service_tls(self.dir.path(), true));
        tonic_health::pb::health_client::HealthClient::new(
            channel(&self.dispatcher.api_url, tls.as_ref()).await,
        )
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
    }

    /// The agent keys the dispatcher currently offers the default tenant's group.
    pub async fn offered_keys(&self) -> Vec<AgentKey> {
        self.offered_keys_of(DOMAIN).await
    }

    /// The agent keys the dispatcher currently offers the default tenant's `group`.
    pub async fn offered_keys_of(&self, group: &str) -> Vec<AgentKey> {
        let tls = self
            .options
            .enrolment
            .then(|| service_tls(self.dir.path(), true));
        let mut client =
            DispatcherClient::new(channel(&self.dispatcher.api_url, tls.as_ref()).await);
        client
            .list_agent_keys(ListAgentKeysRequest {
                tenant: "default".into(),
                connector_group: group.into(),
            })
            .await
            .expect("ListAgentKeys")
            .into_inner()
            .keys
    }

    /// The agent ids the dispatcher currently offers.
    pub async fn listed_agents(&self) -> Vec<String> {
        self.offered_keys()
            .await
            .into_iter()
            .map(|k| k.agent_id)
            .collect()
    }

    /// Waits (up to 15 s) until the listed agent ids satisfy `ready`.
    pub async fn wait_for_agents(&self, ready: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ids = self.listed_agents().await;
            if ready(&ids) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents not ready; dispatcher lists {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Calls `Gateway.SignIn` as the test client.
    pub async fn sign_in(&self, username: &str, password: &str) -> Result<SignInResponse, Status> {
        self.gateway_client
            .clone()
            .sign_in(SignInRequest {
                username: username.into(),
                password: password.into(),
                client_id: CLIENT_ID.into(),
                client_ip: "203.0.113.7".into(),
                offline_access: false,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A gateway client for custom requests.
    pub fn gateway_client(&self) -> GatewayClient<Channel> {
        self.gateway_client.clone()
    }

    /// A channel to the gateway's gRPC listener (for its other services).
    pub fn gateway_channel(&self) -> Channel {
        self.gateway_channel.clone()
    }

    /// The services CA certificate file (what verifies the dispatcher and gateway listeners
    /// with `enrolment`).
    pub fn services_ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join(SERVICES_CA_FILE)
    }

    /// Where this cluster keeps its files (configs, logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn log_filter(options: &ClusterOptions) -> String {
    if options.debug_logs {
        "debug".into()
    } else {
        crate::bins::default_log_filter()
    }
}

fn switchover(options: &ClusterOptions) -> String {
    options
        .certificate_switchover_s
        .map(|s| format!("certificate_switchover_s = {s}\n"))
        .unwrap_or_default()
}

/// Makes the TLS material for every hop the way `docs/certificates.md` tells operators to —
/// with `passage pki init`, `passage pki server` and `passage gateway certificate issue` — and
/// the store's key-encryption key with `passage store key create`; then writes a dispatcher
/// configuration using them and `store_url`.
fn write_secure_dispatcher_config(
    dir: &std::path::Path,
    store_url: &str,
    options: &ClusterOptions,
) -> PathBuf {
    let path = |name: &str| dir.join(name).display().to_string();
    let passage = |args: &[&str]| {
        let (ok, _, stderr) = run_to_end("passage", args);
        assert!(ok, "passage {args:?}: {stderr}");
    };
    let dir_arg = path("");
    passage(&["pki", "init", "--dir", &dir_arg]);
    for name in ["dispatcher", "gateway"] {
        passage(&[
            "pki",
            "server",
            "--dir",
            &dir_arg,
            "--name",
            name,
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
            "--san",
            DISPATCHERS_NAME,
        ]);
    }
    passage(&[
        "gateway",
        "certificate",
        "issue",
        "--dir",
        &dir_arg,
        "--name",
        "e2e-gateway",
        "--tenant",
        "default",
        "--out",
        &path("gateway-client"),
    ]);
    passage(&["store", "key", "create", "--out", &path(STORE_KEY_FILE)]);
    let config = dir.join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "store_url = \"{store_url}\"\nheartbeat_interval_ms = 1000\n\
             store_encryption_key_file = \"{store_key}\"\n{lifetime}\n\
             [agent_tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\n\
             [api_tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nclient_ca_file = \"{ca}\"\n",
            lifetime = options
                .certificate_lifetime_s
                .map(|s| format!("agent_certificate_lifetime_s = {s}\nrenewal_spacing_ms = 1000\n"))
                .unwrap_or_default()
                + &switchover(options),
            store_key = path(STORE_KEY_FILE),
            cert = path("dispatcher.pem"),
            key = path("dispatcher-key.pem"),
            ca = path(SERVICES_CA_FILE)
        ),
    )
    .expect("dispatcher.toml");
    config
}

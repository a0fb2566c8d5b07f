//! The Passage agent: runs inside the corporate network and only ever dials *out*.
//!
//! * [`state`]: the agent's id and RSA key pair, kept in its state directory (key mode 0600).
//! * [`validator`]: opens a sealed password on a bounded blocking pool, checks it is meant for
//!   this request (username, tenant, expiry, replay), asks the directory, maps the answer.
//! * [`tunnel`]: one long-lived `AgentTunnel.Connect` stream per dispatcher address, with
//!   hello, heartbeats, concurrent tasks bounded by capacity, drain, and jittered reconnects.

pub mod enrolment;
pub mod repeats;
pub mod state;
pub mod tunnel;
pub mod validator;

use std::{path::PathBuf, sync::Arc, time::Duration};

use passage_directory::DirectoryConfig;
use passage_envelope::RsaBits;
use passage_transport::ClientTls;
use serde::Deserialize;

pub use tunnel::run;
pub use validator::Validator;

/// Agent configuration (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Dispatcher URLs; the agent keeps one stream to each (`https://host:8443`).
    pub dispatchers: Vec<String>,
    /// Tenant this agent serves.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Connector group (one per forest/domain), e.g. `corp.example.com`.
    pub connector_group: String,
    /// Where the agent keeps its id and private key.
    pub state_dir: PathBuf,
    /// Concurrent validations accepted (all streams together).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// RSA key size for a newly generated key: 2048, 3072 or 4096.
    #[serde(default = "default_rsa_bits")]
    pub rsa_bits: u32,
    /// Seal passwords to this agent with envelope version 2 (hybrid X25519 + ML-KEM-768,
    /// post-quantum): the agent keeps a hybrid key pair beside its RSA key and has it
    /// certified at enrolment and renewal. Without, version 1 (RSA-OAEP) only.
    #[serde(default = "default_true")]
    pub post_quantum_sealing: bool,
    /// Threads that may decrypt at once (default: the number of CPUs).
    #[serde(default)]
    pub decrypt_threads: Option<usize>,
    /// How often each dispatcher URL's host name is resolved again, in seconds: the agent keeps
    /// one stream to every address it resolves to (each replica behind a Kubernetes headless
    /// Service), opening streams to new replicas and closing those to vanished ones. Not with
    /// a proxy (the proxy resolves), nor for an IP address.
    #[serde(default = "default_dispatcher_resolve_interval_s")]
    pub dispatcher_resolve_interval_s: u64,
    /// Name servers for the dispatchers' names (`ip` or `ip:port`); default the system's
    /// resolver (`/etc/resolv.conf`, `/etc/hosts`).
    #[serde(default)]
    pub dispatcher_name_servers: Vec<String>,
    /// Heartbeat interval in milliseconds, until the dispatcher's welcome says otherwise.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Longest validity window accepted for a sealed password, in seconds (bounds replay memory).
    #[serde(default = "default_replay_window_s")]
    pub replay_window_s: u64,
    /// TLS towards the dispatchers (CA pin, client certificate).
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Allow `http://` dispatcher URLs. Development only.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// How often the certificate's age is checked, in milliseconds; it is renewed over the live
    /// stream once two-thirds of its lifetime have passed.
    #[serde(default = "default_renew_check_ms")]
    pub renew_check_interval_ms: u64,
    /// How long a wrong password is remembered (as a keyed hash, in memory) so that trying it
    /// again neither asks the directory nor counts towards smart lockout, in seconds. At least
    /// the gateways' `lockout.window_s`.
    #[serde(default = "default_repeat_window_s")]
    pub repeat_window_s: u64,
    /// After a refusal retrying cannot cure (revoked, certificate replaced, never enrolled),
    /// how long to wait before asking again, in seconds. The agent says plainly that it must be
    /// enrolled again instead of reconnecting in a loop.
    #[serde(default = "default_refused_retry_interval_s")]
    pub refused_retry_interval_s: u64,
    /// How often the directory's own lockout policy is read again (reported to the gateways,
    /// which keep smart lockout below it), in seconds.
    #[serde(default = "default_lockout_policy_refresh_s")]
    pub lockout_policy_refresh_s: u64,
    /// HTTP CONNECT proxy to reach the dispatchers through (`http://proxy:3128`). Without it,
    /// `HTTPS_PROXY` / `NO_PROXY` from the environment apply (never to loopback addresses).
    #[serde(default)]
    pub proxy: Option<String>,
    /// A local HTTP health endpoint for the agent host's own monitoring: `GET /healthz`
    /// answers 200 while at least one dispatcher stream is connected, 503 otherwise, with a
    /// JSON body (agent id, streams connected of configured). Off by default; plaintext, so
    /// keep it on a loopback address (`127.0.0.1:9100`).
    #[serde(default)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// The directory passwords are checked against.
    pub directory: DirectoryConfig,
}

fn default_true() -> bool {
    true
}
fn default_tenant() -> String {
    "default".into()
}
fn default_capacity() -> u32 {
    64
}
fn default_rsa_bits() -> u32 {
    2048
}
fn default_dispatcher_resolve_interval_s() -> u64 {
    30
}
fn default_heartbeat_ms() -> u64 {
    5_000
}
fn default_renew_check_ms() -> u64 {
    60_000
}
fn default_replay_window_s() -> u64 {
    300
}
fn default_repeat_window_s() -> u64 {
    900
}
fn default_refused_retry_interval_s() -> u64 {
    600
}
fn default_lockout_policy_refresh_s() -> u64 {
    300
}

/// Agent start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The state directory could not be read or written.
    #[error("state directory: {0}")]
    State(String),
    /// Enrolment failed.
    #[error("enrolment failed: {0}")]
    Enrolment(String),
}

impl AgentConfig {
    /// The RSA key size to generate.
    pub fn rsa_bits(&self) -> Result<RsaBits, AgentError> {
        match self.rsa_bits {
            2048 => Ok(RsaBits::Rsa2048),
            3072 => Ok(RsaBits::Rsa3072),
            4096 => Ok(RsaBits::Rsa4096),
            other => Err(AgentError::Config(format!(
                "rsa_bits must be 2048, 3072 or 4096, not {other}"
            ))),
        }
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.dispatchers.is_empty() {
            return Err(AgentError::Config(
                "at least one dispatcher URL is required".into(),
            ));
        }
        if self.connector_group.is_empty() || self.tenant.is_empty() {
            return Err(AgentError::Config(
                "tenant and connector_group must not be empty".into(),
            ));
        }
        if self.capacity == 0 || self.capacity > 4096 {
            return Err(AgentError::Config("capacity must be 1 to 4096".into()));
        }
        passage_transport::replicas::resolver(
            &self.dispatcher_name_servers,
            "dispatcher_name_servers",
        )
        .map_err(|e| AgentError::Config(e.to_string()))?;
        if self.lockout_policy_refresh_s == 0 {
            return Err(AgentError::Config(
                "lockout_policy_refresh_s must be at least 1".into(),
            ));
        }
        self.rsa_bits()?;
        Ok(())
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

/// Connects to the dispatcher at `url` — at the replica `addr` when given, the certificate
/// still checked for the URL's name — presenting `identity`, through the proxy if one applies.
pub async fn dial(
    config: &AgentConfig,
    url: &str,
    addr: Option<std::net::IpAddr>,
    identity: Option<&passage_transport::ClientIdentity>,
) -> Result<tonic::transport::Channel, String> {
    // Configured name servers resolve every dialled name, the enrolment's included.
    let addr = match (addr, config.dispatcher_name_servers.is_empty()) {
        (None, false) => {
            match passage_transport::replicas::replicated_host(url, config.proxy.as_deref()) {
                Some(host) => {
                    let resolver = passage_transport::replicas::resolver(
                        &config.dispatcher_name_servers,
                        "dispatcher_name_servers",
                    )
                    .map_err(|e| e.to_string())?;
                    passage_transport::replicas::addresses(&resolver, &host)
                        .await
                        .map_err(|e| e.to_string())?
                        .first()
                        .copied()
                }
                None => None,
            }
        }
        (addr, _) => addr,
    };
    let endpoint = passage_transport::replicas::endpoint_at(
        url,
        addr,
        config.tls.as_ref(),
        identity,
        config.insecure_plaintext,
    )
    .map_err(|e| e.to_string())?;
    match passage_transport::proxy::proxy_for(url, config.proxy.as_deref()) {
        Some(proxy) => passage_transport::proxy::connect_via(&endpoint, &proxy)
            .await
            .map_err(|e| format!("connect via {proxy}: {e}")),
        None => endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e}")),
    }
}

/// Builds everything the agent needs from its configuration: state, key, directory, validator.
pub fn prepare(config: &AgentConfig) -> Result<(state::AgentState, Arc<Validator>), AgentError> {
    config.validate()?;
    let state = state::AgentState::load_or_create(
        &config.state_dir,
        config.rsa_bits()?,
        config.post_quantum_sealing,
    )?;
    if let Some((_, certified)) = &state.certificate {
        let now = passage_pki::unix_now();
        // Whole seconds: `now == not_after` may already be past it, so count it as expired.
        if now >= certified.not_after {
            return Err(AgentError::State(format!(
                "the agent certificate expired (Unix time {}); enrol again: passage-agent register --token <new token>",
                certified.not_after
            )));
        }
    }
    let directory = config
        .directory
        .build()
        .map_err(|err| AgentError::Config(err.to_string()))?;
    tracing::info!(agent_id = %state.agent_id, directory = %directory.describe(), "agent prepared");
    let validator = Validator::new(
        Arc::clone(&state.key),
        Arc::from(directory),
        state.agent_id.clone(),
        config.tenant.clone(),
        config
            .decrypt_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        Duration::from_secs(config.replay_window_s),
        Duration::from_secs(config.repeat_window_s),
    );
    Ok((state, Arc::new(validator)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_examples_parse_and_validate() {
        for text in [
            include_str!("../../docs/examples/agent.toml"),
            include_str!("../../docs/examples/agent-static.toml"),
        ] {
            let config: AgentConfig = toml::from_str(text).expect("example parses");
            config.validate().expect("example is valid");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = format!(
            "capacty = 3\n{}",
            include_str!("../../docs/examples/agent-static.toml")
        );
        assert!(toml::from_str::<AgentConfig>(&text).is_err());
    }
}

//! `passage-agent register`: trade a one-time token for a certificate.

use passage_pki::agent_csr;
use passage_proto::v1::{EnrolRequest, agent_enrolment_client::AgentEnrolmentClient};

use crate::{AgentConfig, AgentError, state::AgentState};

/// What enrolment produced.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The agent id the dispatcher assigned.
    pub agent_id: String,
    /// Tenant.
    pub tenant: String,
    /// Connector group.
    pub connector_group: String,
}

/// Enrols with the dispatcher at `url` (default: the first configured one) using `token`,
/// storing the certificate in the state directory. The key pair is the agent's existing one
/// (made on first use): the certified key is the key passwords are sealed to.
pub async fn register(
    config: &AgentConfig,
    url: Option<&str>,
    token: &str,
) -> Result<Enrolled, AgentError> {
    let url = url
        .or_else(|| config.dispatchers.first().map(String::as_str))
        .ok_or_else(|| AgentError::Config("no dispatcher URL".into()))?;
    let state = AgentState::load_or_create(
        &config.state_dir,
        config.rsa_bits()?,
        config.post_quantum_sealing,
    )?;
    let csr = agent_csr(
        state.key.pkcs8_der().expose(),
        &state.agent_id,
        state.key.hybrid().map(|h| h.public().as_bytes()),
    )
    .map_err(|e| AgentError::Config(e.to_string()))?;
    // Server-authenticated TLS only: the agent has no certificate yet.
    let channel = crate::dial(config, url, None, None)
        .await
        .map_err(|e| AgentError::Enrolment(format!("{url}: {e}")))?;
    let response = AgentEnrolmentClient::new(channel)
        .enrol(EnrolRequest {
            token: token.to_owned(),
            csr_der: csr,
            tenant: config.tenant.clone(),
            hostname: crate::tunnel::hostname(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            connector_group: config.connector_group.clone(),
        })
        .await
        .map_err(|status| AgentError::Enrolment(status.message().to_owned()))?
        .into_inner();
    // A dispatcher that predates the group check may have enrolled the agent into the token's
    // group regardless: refuse to keep a certificate that every sign-in would then miss.
    if response.connector_group != config.connector_group {
        return Err(AgentError::Enrolment(format!(
            "the token enrolled this agent into connector group {:?} but its configuration names {:?}; \
             set connector_group = \"{}\" in the configuration or enrol with a token created with \
             --connector-group {}",
            response.connector_group,
            config.connector_group,
            response.connector_group,
            config.connector_group
        )));
    }
    AgentState::save_enrolment(
        &config.state_dir,
        &response.agent_id,
        &response.certificate_pem,
        &response.ca_pem,
    )?;
    Ok(Enrolled {
        agent_id: response.agent_id,
        tenant: response.tenant,
        connector_group: response.connector_group,
    })
}

//! Enrolment: one-time tokens, tenant CAs, and `AgentEnrolment.Enrol`.

use std::{sync::Arc, time::Duration};

use aws_lc_rs::{
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use passage_error_codes::ErrorCode;
use passage_pki::{AgentCsr, AgentIdentity, TenantCa, check_name};
use passage_proto::v1::{EnrolRequest, EnrolResponse, agent_enrolment_server::AgentEnrolment};
use passage_store::{AgentRecord, EnrolmentToken, Store, StoreError, StoredCa, TokenRefusal};
use tonic::{Request, Response, Status};

use crate::tunnel::AgentTrust;

/// Prefix of enrolment tokens, so they are recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "pet_";

pub use passage_pki::unix_now;

/// The hash under which a token is stored (tokens carry 256 random bits, so SHA-256 suffices).
pub fn token_hash(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a one-time enrolment token for an agent of `tenant`'s `connector_group`, valid for
/// `ttl`. Only its hash is stored; the token itself is returned once, to be shown once.
pub async fn create_token(
    store: &Store,
    tenant: &str,
    connector_group: &str,
    ttl: Duration,
) -> Result<String, Status> {
    check_name("tenant", tenant).map_err(|e| ErrorCode::InvalidRequest.status(e))?;
    check_name("connector_group", connector_group)
        .map_err(|e| ErrorCode::InvalidRequest.status(e))?;
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ErrorCode::Internal.status("no random source"))?;
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let now = unix_now();
    store.ensure_tenant(tenant, now).await.map_err(internal)?;
    store
        .create_enrolment_token(&EnrolmentToken {
            token_hash: token_hash(&token),
            tenant: tenant.into(),
            connector_group: connector_group.into(),
            created_at: now,
            expires_at: now + ttl.as_secs() as i64,
        })
        .await
        .map_err(internal)?;
    Ok(token)
}

/// A store failure: the detail (which may be an operator's configuration mistake, such as a
/// missing key-encryption key) is logged; the caller learns only that it failed.
fn internal(err: StoreError) -> Status {
    tracing::error!(error = %err, "store failure");
    ErrorCode::Internal.public_status()
}

/// The tenant's CA from the store, created (once, across replicas) if missing.
pub async fn tenant_ca(store: &Store, tenant: &str) -> Result<TenantCa, Status> {
    let now = unix_now();
    store.ensure_tenant(tenant, now).await.map_err(internal)?;
    if let Some(stored) = store.tenant_ca(tenant).await.map_err(internal)? {
        return TenantCa::from_parts(tenant, &stored.cert_pem, &stored.key_der).map_err(|err| {
            tracing::error!(%tenant, error = %err, "the stored tenant CA is unusable");
            ErrorCode::Internal.public_status()
        });
    }
    let ca = TenantCa::generate(tenant).map_err(|e| ErrorCode::Internal.status(e))?;
    let stored = StoredCa {
        cert_pem: ca.cert_pem().to_owned(),
        key_der: ca.key_der(),
    };
    if store
        .insert_tenant_ca(tenant, &stored, now)
        .await
        .map_err(internal)?
    {
        tracing::info!(%tenant, "created the tenant CA");
        return Ok(ca);
    }
    // Another replica created it first: use theirs.
    let stored = store
        .tenant_ca(tenant)
        .await
        .map_err(internal)?
        .ok_or_else(|| ErrorCode::Internal.status("tenant CA vanished"))?;
    TenantCa::from_parts(tenant, &stored.cert_pem, &stored.key_der)
        .map_err(|e| ErrorCode::Internal.status(e))
}

/// Makes sure `tenant` has a CA (creating it, once across replicas, if missing) without
/// reading its key when it exists: what `passage agent token create` needs.
pub async fn ensure_tenant_ca(store: &Store, tenant: &str) -> Result<(), Status> {
    store
        .ensure_tenant(tenant, unix_now())
        .await
        .map_err(internal)?;
    if store
        .tenant_ca_certificate(tenant)
        .await
        .map_err(internal)?
        .is_some()
    {
        return Ok(());
    }
    tenant_ca(store, tenant).await.map(drop)
}

/// The `AgentEnrolment` service.
pub struct EnrolmentService {
    store: Store,
    certificate_lifetime: Duration,
    trust: Option<Arc<AgentTrust>>,
}

impl EnrolmentService {
    /// Enrols into `store`, issuing certificates valid for `certificate_lifetime`. With
    /// `trust`, this replica trusts a new tenant's agents as soon as it enrols the first.
    pub fn new(
        store: Store,
        certificate_lifetime: Duration,
        trust: Option<Arc<AgentTrust>>,
    ) -> Self {
        Self {
            store,
            certificate_lifetime,
            trust,
        }
    }
}

fn refused(message: impl std::fmt::Display) -> Status {
    ErrorCode::EnrolmentRefused.status(message)
}

#[tonic::async_trait]
impl AgentEnrolment for EnrolmentService {
    async fn enrol(
        &self,
        request: Request<EnrolRequest>,
    ) -> Result<Response<EnrolResponse>, Status> {
        let request = request.into_inner();
        if request.token.is_empty() || request.token.len() > 128 {
            return Err(refused("the enrolment token is missing or malformed"));
        }
        if request.csr_der.is_empty() || request.csr_der.len() > 16 * 1024 {
            return Err(ErrorCode::InvalidRequest.status("csr_der must be 1 byte to 16 KiB"));
        }
        check_name("tenant", &request.tenant).map_err(|e| ErrorCode::InvalidRequest.status(e))?;
        if request.hostname.len() > 256 || request.version.len() > 64 {
            return Err(ErrorCode::InvalidRequest.status("hostname or version too long"));
        }
        if !request.connector_group.is_empty() {
            check_name("connector_group", &request.connector_group)
                .map_err(|e| ErrorCode::InvalidRequest.status(e))?;
        }
        // A malformed CSR is refused before the token is looked at: it must not cost the token.
        let csr =
            AgentCsr::parse(&request.csr_der).map_err(|e| ErrorCode::InvalidRequest.status(e))?;
        let now = unix_now();
        let token_hash = token_hash(&request.token);
        let refuse = |refusal: TokenRefusal, hostname: &str| {
            tracing::warn!(tenant = %request.tenant, %hostname, %refusal, "enrolment refused");
            refused(match refusal {
                TokenRefusal::Unknown => "unknown enrolment token",
                TokenRefusal::AlreadyUsed => {
                    "the enrolment token was already used; create a new one"
                }
                TokenRefusal::Expired => "the enrolment token has expired; create a new one",
                TokenRefusal::WrongTenant => "the enrolment token belongs to another tenant",
                TokenRefusal::WrongGroup => "the enrolment token is for another connector group",
            })
        };
        let grant = match self
            .store
            .check_enrolment_token(&token_hash, &request.tenant, now)
            .await
            .map_err(internal)?
        {
            Ok(grant) => grant,
            Err(refusal) => return Err(refuse(refusal, &request.hostname)),
        };
        if !request.connector_group.is_empty() && request.connector_group != grant.connector_group {
            tracing::warn!(
                token_group = %grant.connector_group,
                configured_group = %request.connector_group,
                "enrolment refused: the token is for another connector group"
            );
            return Err(refused(format!(
                "the token enrols into connector group {:?} but the agent is configured for {:?}; \
                 create a token with --connector-group {} or set connector_group = \"{}\" in the \
                 agent's configuration (the token is still unused)",
                grant.connector_group,
                request.connector_group,
                request.connector_group,
                grant.connector_group
            )));
        }
        let ca = tenant_ca(&self.store, &grant.tenant).await?;
        let mut id = [0u8; 8];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| ErrorCode::Internal.status("no random source"))?;
        let identity = AgentIdentity {
            tenant: grant.tenant.clone(),
            connector_group: grant.connector_group.clone(),
            agent_id: format!(
                "agent-{}",
                id.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        };
        let issued = ca
            .issue_agent(csr, &identity, self.certificate_lifetime)
            .map_err(|e| ErrorCode::InvalidRequest.status(e))?;
        // Spending the token and recording the agent is one transaction: the token is spent
        // only when a certificate was issued for it, and of racing enrolments one wins (the
        // certificates of the others are never recorded, so never trusted).
        let record = AgentRecord {
            agent_id: identity.agent_id.clone(),
            tenant: identity.tenant.clone(),
            connector_group: identity.connector_group.clone(),
            hostname: request.hostname.clone(),
            version: request.version,
            cert_serial: issued.certified.serial.clone(),
            cert_not_after: issued.certified.not_after,
            public_key_der: issued.certified.public_key_der.clone(),
            hybrid_public_key: issued.certified.hybrid_public_key.clone(),
            enrolled_at: now,
            revoked_at: None,
        };
        if let Err(refusal) = self
            .store
            .enrol_agent(&token_hash, &record, now)
            .await
            .map_err(internal)?
        {
            return Err(refuse(refusal, &request.hostname));
        }
        tracing::info!(
            agent_id = %identity.agent_id,
            tenant = %identity.tenant,
            connector_group = %identity.connector_group,
            serial = %issued.certified.serial,
            "agent enrolled"
        );
        let ca_pem = ca.cert_pem().to_owned();
        if let Some(trust) = &self.trust
            && !trust.knows(&identity.tenant)
            && let Err(err) = trust.learn(&identity.tenant, ca)
        {
            // Other replicas, and this one's next poll, still pick the tenant up.
            tracing::error!(tenant = %identity.tenant, error = %err, "could not trust the new tenant's CA");
        }
        Ok(Response::new(EnrolResponse {
            agent_id: identity.agent_id,
            tenant: identity.tenant,
            connector_group: identity.connector_group,
            certificate_pem: issued.cert_pem,
            ca_pem,
        }))
    }
}

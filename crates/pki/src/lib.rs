//! Certificates: one CA per tenant, agent certificates issued from CSRs at enrolment, and the
//! identity a certificate proves.
//!
//! An agent certificate names its agent in a URI subject alternative name,
//! `spiffe://passage/tenant/<tenant>/group/<connector group>/agent/<agent id>`, and certifies
//! the agent's RSA key — the same key passwords are sealed to. Identity is always read from a
//! verified certificate, never from what an agent says about itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use passage_credentials::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

pub mod services;
pub mod trust;

pub use services::{GatewayIdentity, IssuedKeyPair, ServicesCa};
pub use trust::{AgentClaim, AgentVerifier, Distrust, TrustError};

/// The URI prefix of agent identities.
pub const IDENTITY_PREFIX: &str = "spiffe://passage/tenant/";
/// The URI prefix under which an agent certificate certifies the agent's hybrid sealing key
/// (envelope version 2): `urn:passage:sealing-key:x25519-mlkem768:<base64url of pk_M | pk_X>`.
/// A subject alternative name rather than a private extension: rcgen carries SANs through a
/// CSR, and the tenant CA signs it like the identity URI.
pub const SEALING_KEY_PREFIX: &str = "urn:passage:sealing-key:x25519-mlkem768:";
/// Length of a hybrid sealing key (ML-KEM-768 encapsulation key and X25519 public key).
pub const SEALING_KEY_LEN: usize = 1216;

/// The SAN URI certifying `key`.
fn sealing_key_uri(key: &[u8]) -> String {
    format!(
        "{SEALING_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    )
}

/// The hybrid sealing key a SAN URI certifies, if it is one and well-formed.
fn parse_sealing_key_uri(uri: &str) -> Option<Vec<u8>> {
    let encoded = uri.strip_prefix(SEALING_KEY_PREFIX)?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    (key.len() == SEALING_KEY_LEN).then_some(key)
}

/// Certificate errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// A name is not usable in an identity.
    #[error("{field} must be 1 to 128 characters of A-Z a-z 0-9 . _ -")]
    BadName {
        /// Which name.
        field: &'static str,
    },
    /// The CSR is malformed or its signature does not verify.
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    /// A certificate could not be parsed or carries no Passage identity.
    #[error("certificate refused: {0}")]
    BadCertificate(String),
    /// Generating or signing failed.
    #[error("certificate authority: {0}")]
    Ca(String),
}

/// Checks a tenant, group or agent id for use in an identity URI.
pub fn check_name(field: &'static str, value: &str) -> Result<(), PkiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName { field })
    }
}

/// Who an agent certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// Tenant.
    pub tenant: String,
    /// Connector group.
    pub connector_group: String,
    /// Agent id.
    pub agent_id: String,
}

impl AgentIdentity {
    /// The identity URI.
    pub fn uri(&self) -> String {
        format!(
            "{IDENTITY_PREFIX}{}/group/{}/agent/{}",
            self.tenant, self.connector_group, self.agent_id
        )
    }

    fn parse_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(IDENTITY_PREFIX)?;
        let mut parts = rest.split('/');
        let (tenant, group_kw, group, agent_kw, agent, end) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next(),
        );
        if group_kw != "group" || agent_kw != "agent" || end.is_some() {
            return None;
        }
        let identity = Self {
            tenant: tenant.into(),
            connector_group: group.into(),
            agent_id: agent.into(),
        };
        identity.check().ok()?;
        Some(identity)
    }

    fn check(&self) -> Result<(), PkiError> {
        check_name("tenant", &self.tenant)?;
        check_name("connector_group", &self.connector_group)?;
        check_name("agent_id", &self.agent_id)
    }
}

/// What a certificate says, after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedAgent {
    /// The identity in its URI SAN.
    pub identity: AgentIdentity,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The certified public key (SubjectPublicKeyInfo DER): the TLS identity and the version 1
    /// sealing key.
    pub public_key_der: Vec<u8>,
    /// The certified hybrid sealing key (`pk_M | pk_X`, version 2), if the agent has one.
    pub hybrid_public_key: Option<Vec<u8>>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
}

impl CertifiedAgent {
    /// Parses an agent certificate (DER). This does not verify who signed it: TLS (or
    /// [`TenantCa::verify`]) does that.
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let uris: Vec<&str> = cert
            .extensions()
            .iter()
            .filter_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        let identity = uris
            .iter()
            .find_map(|uri| AgentIdentity::parse_uri(uri))
            .ok_or_else(|| {
                PkiError::BadCertificate("no Passage agent identity in the certificate".into())
            })?;
        let hybrid_public_key = match uris
            .iter()
            .filter(|uri| uri.starts_with(SEALING_KEY_PREFIX))
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] => None,
            [uri] => Some(parse_sealing_key_uri(uri).ok_or_else(|| {
                PkiError::BadCertificate("malformed sealing key in the certificate".into())
            })?),
            _ => {
                return Err(PkiError::BadCertificate(
                    "more than one sealing key in the certificate".into(),
                ));
            }
        };
        Ok(Self {
            identity,
            hybrid_public_key,
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            public_key_der: cert.public_key().raw.to_vec(),
            not_after: cert.validity().not_after.timestamp(),
            not_before: cert.validity().not_before.timestamp(),
        })
    }
}

/// A certificate issued to an agent.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// What it certifies.
    pub certified: CertifiedAgent,
}

/// A tenant CA's certificate alone: verifies agent certificates without holding the CA key
/// (what the gateway uses).
#[derive(Debug, Clone)]
pub struct CaCertificate {
    tenant: String,
    cert_der: Vec<u8>,
}

impl CaCertificate {
    /// The CA certificate of `tenant`, from PEM.
    pub fn from_pem(tenant: &str, cert_pem: &str) -> Result<Self, PkiError> {
        let cert_der =
            pem_to_der(cert_pem).ok_or_else(|| PkiError::Ca("CA certificate is not PEM".into()))?;
        X509Certificate::from_der(&cert_der).map_err(|e| PkiError::Ca(e.to_string()))?;
        Ok(Self {
            tenant: tenant.into(),
            cert_der,
        })
    }

    /// Verifies that `der` was issued by this CA, is valid at `now` and names this tenant.
    pub fn verify(&self, der: &[u8], now: SystemTime) -> Result<CertifiedAgent, PkiError> {
        let (_, ca) =
            X509Certificate::from_der(&self.cert_der).map_err(|e| PkiError::Ca(e.to_string()))?;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| PkiError::BadCertificate("not issued by the tenant CA".into()))?;
        let certified = CertifiedAgent::parse(der)?;
        let now = unix(now);
        if now < certified.not_before || now > certified.not_after {
            return Err(PkiError::BadCertificate(
                "outside its validity period".into(),
            ));
        }
        if certified.identity.tenant != self.tenant {
            return Err(PkiError::BadCertificate(
                "identity of another tenant".into(),
            ));
        }
        Ok(certified)
    }
}

/// A certificate signing request from an agent, parsed and with its signature verified: the
/// requester holds the key it names. Parse it before spending anything on the request (an
/// enrolment token), so a malformed CSR costs nothing.
pub struct AgentCsr {
    params: CertificateSigningRequestParams,
    hybrid_public_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for AgentCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCsr")
    }
}

impl AgentCsr {
    /// Parses `der` and verifies its signature; the key must be RSA (it is also the key
    /// passwords are sealed to).
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&der.to_vec().into())
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        if !is_rsa(&csr.public_key.subject_public_key_info()) {
            return Err(PkiError::BadCsr("the agent key must be RSA".into()));
        }
        // The only thing taken from the CSR besides its key: the hybrid sealing key, which the
        // CSR's signature binds to the RSA key's holder.
        let mut hybrid_public_key = None;
        for san in &csr.params.subject_alt_names {
            if let SanType::URI(uri) = san
                && uri.as_str().starts_with(SEALING_KEY_PREFIX)
            {
                let key = parse_sealing_key_uri(uri.as_str()).ok_or_else(|| {
                    PkiError::BadCsr(format!(
                        "the sealing key must be {SEALING_KEY_LEN} bytes, base64url"
                    ))
                })?;
                if hybrid_public_key.replace(key).is_some() {
                    return Err(PkiError::BadCsr("more than one sealing key".into()));
                }
            }
        }
        Ok(Self {
            params: csr,
            hybrid_public_key,
        })
    }

    /// The hybrid sealing key the CSR asks to certify, if any.
    pub fn hybrid_public_key(&self) -> Option<&[u8]> {
        self.hybrid_public_key.as_deref()
    }
}

/// A tenant's certificate authority.
pub struct TenantCa {
    tenant: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for TenantCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCa")
            .field("tenant", &self.tenant)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// `t` in Unix seconds (0 before the epoch): the time unit of certificates and of the store.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    unix(SystemTime::now())
}

fn offset(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(unix(t)).map_err(|e| PkiError::Ca(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Ca("no random source".into()))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never shorter than 16 bytes
    Ok(SerialNumber::from_slice(&bytes))
}

impl TenantCa {
    /// Creates a new CA (ECDSA P-256, valid ten years) for `tenant`.
    pub fn generate(tenant: &str) -> Result<Self, PkiError> {
        check_name("tenant", tenant)?;
        let (key, cert) = self_signed_ca(&format!("Passage tenant CA {tenant}"))?;
        Ok(Self {
            tenant: tenant.into(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads a CA from its certificate (PEM) and PKCS#8 key (DER).
    pub fn from_parts(tenant: &str, cert_pem: &str, key_der: &Secret) -> Result<Self, PkiError> {
        let key = KeyPair::try_from(key_der.expose())
            .map_err(|e| PkiError::Ca(format!("CA key: {e}")))?;
        let der =
            pem_to_der(cert_pem).ok_or_else(|| PkiError::Ca("CA certificate is not PEM".into()))?;
        Ok(Self {
            tenant: tenant.into(),
            cert_pem: cert_pem.into(),
            cert_der: der,
            key,
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 DER, for the store.
    pub fn key_der(&self) -> Secret {
        Secret::new(self.key.serialize_der())
    }

    /// Issues a client certificate for `identity` to the key in `csr` (whose signature proved
    /// the requester holds it). Nothing else in the CSR is trusted.
    pub fn issue_agent(
        &self,
        csr: AgentCsr,
        identity: &AgentIdentity,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        identity.check()?;
        if identity.tenant != self.tenant {
            return Err(PkiError::Ca("identity of another tenant".into()));
        }
        let hybrid = csr.hybrid_public_key;
        let mut csr = csr.params;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, identity.tenant.clone());
        name.push(
            DnType::OrganizationalUnitName,
            identity.connector_group.clone(),
        );
        name.push(DnType::CommonName, identity.agent_id.clone());
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(
            identity
                .uri()
                .try_into()
                .map_err(|_| PkiError::Ca("identity URI".into()))?,
        )];
        if let Some(key) = &hybrid {
            params.subject_alt_names.push(SanType::URI(
                sealing_key_uri(key)
                    .try_into()
                    .map_err(|_| PkiError::Ca("sealing key URI".into()))?,
            ));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        // Backdated for clock skew, but by at most a tenth of the lifetime, so renewal at
        // two-thirds of the validity period stays meaningful for short lifetimes.
        params.not_before = offset(now - (lifetime / 10).min(Duration::from_secs(300)))?;
        params.not_after = offset(now + lifetime)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key)
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let certified = CertifiedAgent::parse(cert.der())?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            certified,
        })
    }

    /// Verifies that `der` was issued by this CA and is valid at `now`, and parses it.
    pub fn verify(&self, der: &[u8], now: SystemTime) -> Result<CertifiedAgent, PkiError> {
        self.certificate().verify(der, now)
    }

    /// The CA's certificate alone.
    pub fn certificate(&self) -> CaCertificate {
        CaCertificate {
            tenant: self.tenant.clone(),
            cert_der: self.cert_der.clone(),
        }
    }
}

/// A new self-signed CA (ECDSA P-256, valid ten years) that issues end-entity certificates only.
fn self_signed_ca(common_name: &str) -> Result<(KeyPair, rcgen::Certificate), PkiError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::Ca(e.to_string()))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| PkiError::Ca(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Passage");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = offset(now - Duration::from_secs(300))?;
    params.not_after = offset(now + Duration::from_secs(10 * 365 * 24 * 3600))?;
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(&key)
        .map_err(|e| PkiError::Ca(e.to_string()))?;
    Ok((key, cert))
}

fn is_rsa(spki_or_key: &[u8]) -> bool {
    // rsaEncryption OID 1.2.840.113549.1.1.1
    const RSA_OID: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    spki_or_key.windows(RSA_OID.len()).any(|w| w == RSA_OID)
}

/// The DER of the first PEM block in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

/// A CSR for an agent's RSA key (PKCS#8 DER), signed by that key, asking also to certify its
/// hybrid sealing key when it has one.
pub fn agent_csr(
    key_pkcs8_der: &[u8],
    agent_id: &str,
    hybrid_public_key: Option<&[u8]>,
) -> Result<Vec<u8>, PkiError> {
    let key =
        KeyPair::from_pkcs8_der_and_sign_algo(&key_pkcs8_der.to_vec().into(), &PKCS_RSA_SHA256)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, agent_id);
    params.distinguished_name = name;
    if let Some(key) = hybrid_public_key {
        if key.len() != SEALING_KEY_LEN {
            return Err(PkiError::BadCsr(format!(
                "the sealing key must be {SEALING_KEY_LEN} bytes"
            )));
        }
        params.subject_alt_names = vec![SanType::URI(
            sealing_key_uri(key)
                .try_into()
                .map_err(|_| PkiError::BadCsr("sealing key URI".into()))?,
        )];
    }
    let csr = params
        .serialize_request(&key)
        .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::{
        encoding::AsDer,
        rsa::{KeySize, PrivateDecryptingKey},
    };

    fn rsa_key() -> Vec<u8> {
        PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .unwrap()
            .as_der()
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn identity(tenant: &str) -> AgentIdentity {
        AgentIdentity {
            tenant: tenant.into(),
            connector_group: "corp.example.com".into(),
            agent_id: "agent-01".into(),
        }
    }

    #[test]
    fn issued_certificate_carries_the_identity_and_the_csr_key() {
        let ca = TenantCa::generate("default").unwrap();
        let key = rsa_key();
        let csr = agent_csr(&key, "whatever-the-agent-says", None).unwrap();
        let issued = ca
            .issue_agent(
                AgentCsr::parse(&csr).unwrap(),
                &identity("default"),
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = pem_to_der(&issued.cert_pem).unwrap();
        let verified = ca.verify(&der, SystemTime::now()).unwrap();
        assert_eq!(verified.identity, identity("default"));
        assert_eq!(verified, issued.certified);
        // The certified key is the CSR's key.
        let public = PrivateDecryptingKey::from_pkcs8(&key)
            .unwrap()
            .public_key()
            .as_der()
            .unwrap()
            .as_ref()
            .to_vec();
        assert_eq!(verified.public_key_der, public);
        assert!(verified.not_after - verified.not_before >= 3600);
        assert_eq!(verified.serial.len(), 32);
    }

    #[test]
    fn the_certificate_certifies_the_hybrid_sealing_key_the_csr_names() {
        let ca = TenantCa::generate("default").unwrap();
        let hybrid: Vec<u8> = (0..SEALING_KEY_LEN).map(|i| i as u8).collect();
        let csr = agent_csr(&rsa_key(), "a", Some(&hybrid)).unwrap();
        let parsed = AgentCsr::parse(&csr).unwrap();
        assert_eq!(parsed.hybrid_public_key(), Some(hybrid.as_slice()));
        let issued = ca
            .issue_agent(parsed, &identity("default"), Duration::from_secs(3600))
            .unwrap();
        assert_eq!(
            issued.certified.hybrid_public_key.as_deref(),
            Some(hybrid.as_slice())
        );
        let verified = ca
            .verify(&pem_to_der(&issued.cert_pem).unwrap(), SystemTime::now())
            .unwrap();
        assert_eq!(verified.hybrid_public_key, Some(hybrid.clone()));
        assert_eq!(verified.identity, identity("default"));
        // Without one, none; a malformed one is refused.
        let plain = ca
            .issue_agent(
                AgentCsr::parse(&agent_csr(&rsa_key(), "a", None).unwrap()).unwrap(),
                &identity("default"),
                Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(plain.certified.hybrid_public_key, None);
        assert!(agent_csr(&rsa_key(), "a", Some(&hybrid[..100])).is_err());
        assert!(parse_sealing_key_uri(&format!("{SEALING_KEY_PREFIX}AAAA")).is_none());
    }

    #[test]
    fn another_ca_or_an_expired_certificate_does_not_verify() {
        let ca = TenantCa::generate("default").unwrap();
        let other = TenantCa::generate("default").unwrap();
        let csr = agent_csr(&rsa_key(), "a", None).unwrap();
        let issued = ca
            .issue_agent(
                AgentCsr::parse(&csr).unwrap(),
                &identity("default"),
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = pem_to_der(&issued.cert_pem).unwrap();
        assert!(other.verify(&der, SystemTime::now()).is_err());
        assert!(
            ca.verify(&der, SystemTime::now() + Duration::from_secs(7200))
                .is_err()
        );
    }

    #[test]
    fn ca_round_trips_through_its_parts_and_refuses_other_tenants() {
        let ca = TenantCa::generate("acme").unwrap();
        let reloaded = TenantCa::from_parts("acme", ca.cert_pem(), &ca.key_der()).unwrap();
        let csr = agent_csr(&rsa_key(), "a", None).unwrap();
        assert!(
            reloaded
                .issue_agent(
                    AgentCsr::parse(&csr).unwrap(),
                    &identity("default"),
                    Duration::from_secs(60)
                )
                .is_err()
        );
        let issued = reloaded
            .issue_agent(
                AgentCsr::parse(&csr).unwrap(),
                &identity("acme"),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            ca.verify(&pem_to_der(&issued.cert_pem).unwrap(), SystemTime::now())
                .is_ok()
        );
        assert!(!format!("{ca:?}").contains("BEGIN"));
    }

    #[test]
    fn garbage_csrs_and_bad_names_are_refused() {
        let ca = TenantCa::generate("default").unwrap();
        assert!(matches!(
            AgentCsr::parse(b"not a csr"),
            Err(PkiError::BadCsr(_))
        ));
        let mut bad = identity("default");
        bad.agent_id = "../etc".into();
        let csr = agent_csr(&rsa_key(), "a", None).unwrap();
        assert!(matches!(
            ca.issue_agent(
                AgentCsr::parse(&csr).unwrap(),
                &bad,
                Duration::from_secs(60)
            ),
            Err(PkiError::BadName { .. })
        ));
        assert!(
            AgentIdentity::parse_uri("spiffe://passage/tenant/a/group/b/agent/c/extra").is_none()
        );
        assert!(AgentIdentity::parse_uri("spiffe://passage/tenant/a/group/b/agent/c").is_some());
    }
}

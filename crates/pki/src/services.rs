//! The services CA: certificates for Passage's own listeners and for gateways.
//!
//! Tenant CAs certify agents; the services CA certifies the cloud side:
//!
//! * **server certificates** for the dispatcher's listeners and the gateway (`serverAuth`, with
//!   the DNS names and IP addresses clients dial as subject alternative names);
//! * **gateway certificates**, the client certificates gateways present to the dispatcher's
//!   API (`clientAuth`). A gateway certificate names the tenants the gateway may act for, one
//!   URI SAN each: `spiffe://passage/gateway/<name>/tenant/<tenant>`. The dispatcher refuses a
//!   request for any other tenant.
//!
//! The operator keeps the services CA's key offline or in a secret store; `passage pki`
//! creates it and issues from it (see `docs/certificates.md`).

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use passage_credentials::Secret;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::{PkiError, check_name, offset, random_serial, self_signed_ca};

/// The URI prefix of gateway identities.
pub const GATEWAY_IDENTITY_PREFIX: &str = "spiffe://passage/gateway/";

/// A certificate and its new private key.
pub struct IssuedKeyPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM: write it with mode 0600.
    pub key_pem: Secret,
}

impl std::fmt::Debug for IssuedKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKeyPair")
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// What a gateway certificate says its holder may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayIdentity {
    /// The gateway's name.
    pub name: String,
    /// The tenants it may act for.
    pub tenants: Vec<String>,
}

impl GatewayIdentity {
    /// The URIs naming this gateway, one per tenant.
    pub fn uris(&self) -> Vec<String> {
        self.tenants
            .iter()
            .map(|tenant| format!("{GATEWAY_IDENTITY_PREFIX}{}/tenant/{tenant}", self.name))
            .collect()
    }

    /// Reads the identity from a certificate (DER) whose chain TLS has already verified
    /// against the services CA. A certificate without gateway URIs, or naming two gateways,
    /// is refused.
    pub fn from_certificate(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let mut name: Option<String> = None;
        let mut tenants = Vec::new();
        for ext in cert.extensions() {
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                continue;
            };
            for general in &san.general_names {
                let GeneralName::URI(uri) = general else {
                    continue;
                };
                let Some((gateway, tenant)) = parse_gateway_uri(uri) else {
                    continue;
                };
                if name.as_ref().is_some_and(|n| *n != gateway) {
                    return Err(PkiError::BadCertificate(
                        "the certificate names more than one gateway".into(),
                    ));
                }
                name = Some(gateway);
                tenants.push(tenant);
            }
        }
        let name = name.ok_or_else(|| {
            PkiError::BadCertificate(
                "not a gateway certificate (no spiffe://passage/gateway/ URI); issue one with \
                 `passage gateway certificate issue`"
                    .into(),
            )
        })?;
        tenants.sort();
        tenants.dedup();
        Ok(Self { name, tenants })
    }

    /// Whether the gateway may act for `tenant`.
    pub fn may_act_for(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == tenant)
    }
}

fn parse_gateway_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(GATEWAY_IDENTITY_PREFIX)?;
    let mut parts = rest.split('/');
    let (name, keyword, tenant, end) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    if keyword != "tenant" || end.is_some() {
        return None;
    }
    check_name("gateway", name).ok()?;
    check_name("tenant", tenant).ok()?;
    Some((name.to_owned(), tenant.to_owned()))
}

/// The services CA.
pub struct ServicesCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for ServicesCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicesCa")
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ServicesCa {
    /// Creates a new services CA (ECDSA P-256, valid ten years).
    pub fn generate() -> Result<Self, PkiError> {
        let (key, cert) = self_signed_ca("Passage services CA")?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads the CA from its certificate and its PKCS#8 key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &Secret) -> Result<Self, PkiError> {
        let key_text = std::str::from_utf8(key_pem.expose())
            .map_err(|_| PkiError::Ca("the CA key is not PEM".into()))?;
        let key = KeyPair::from_pem(key_text).map_err(|e| PkiError::Ca(format!("CA key: {e}")))?;
        let cert_der = crate::pem_to_der(cert_pem)
            .ok_or_else(|| PkiError::Ca("the CA certificate is not PEM".into()))?;
        X509Certificate::from_der(&cert_der).map_err(|e| PkiError::Ca(e.to_string()))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key,
        })
    }

    /// The CA certificate, PEM: what clients pin and what the dispatcher's API trusts for
    /// gateway certificates (`api_tls.client_ca_file`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PKCS#8 PEM.
    pub fn key_pem(&self) -> Secret {
        Secret::new(self.key.serialize_pem().into_bytes())
    }

    /// A server certificate for `names` (DNS names or IP addresses, as clients dial them).
    pub fn issue_server(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<IssuedKeyPair, PkiError> {
        if names.is_empty() {
            return Err(PkiError::Ca(
                "a server certificate needs at least one DNS name or IP address".into(),
            ));
        }
        let mut sans = Vec::new();
        for name in names {
            sans.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| PkiError::Ca(format!("{name:?} is not a DNS name")))?,
                ),
            });
        }
        self.issue(
            common_name,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            lifetime,
        )
    }

    /// A gateway certificate for `identity` (client authentication towards the dispatcher).
    pub fn issue_gateway(
        &self,
        identity: &GatewayIdentity,
        lifetime: Duration,
    ) -> Result<IssuedKeyPair, PkiError> {
        check_name("gateway", &identity.name)?;
        if identity.tenants.is_empty() {
            return Err(PkiError::Ca(
                "a gateway certificate names at least one tenant".into(),
            ));
        }
        for tenant in &identity.tenants {
            check_name("tenant", tenant)?;
        }
        let sans = identity
            .uris()
            .into_iter()
            .map(|uri| {
                uri.try_into()
                    .map(SanType::URI)
                    .map_err(|_| PkiError::Ca("gateway identity URI".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.issue(
            &format!("gateway {}", identity.name),
            sans,
            ExtendedKeyUsagePurpose::ClientAuth,
            lifetime,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        lifetime: Duration,
    ) -> Result<IssuedKeyPair, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Passage");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(300))?;
        params.not_after = offset(now + lifetime)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key)
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        Ok(IssuedKeyPair {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem().into_bytes()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_certificates_name_their_tenants() {
        let ca = ServicesCa::generate().unwrap();
        let identity = GatewayIdentity {
            name: "gw-1".into(),
            tenants: vec!["acme".into(), "default".into()],
        };
        let issued = ca
            .issue_gateway(&identity, Duration::from_secs(3600))
            .unwrap();
        let der = crate::pem_to_der(&issued.cert_pem).unwrap();
        let read = GatewayIdentity::from_certificate(&der).unwrap();
        assert_eq!(read, identity);
        assert!(read.may_act_for("acme"));
        assert!(!read.may_act_for("other"));
        assert!(!format!("{issued:?}").contains("PRIVATE"));

        // A server certificate is no gateway certificate.
        let server = ca
            .issue_server(
                "dispatcher",
                &["dispatcher.example.com".into(), "127.0.0.1".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        assert!(
            GatewayIdentity::from_certificate(&crate::pem_to_der(&server.cert_pem).unwrap())
                .is_err()
        );
    }

    #[test]
    fn the_ca_round_trips_through_pem_and_refuses_bad_requests() {
        let ca = ServicesCa::generate().unwrap();
        let again = ServicesCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert!(
            again
                .issue_server("x", &[], Duration::from_secs(60))
                .is_err()
        );
        assert!(
            again
                .issue_gateway(
                    &GatewayIdentity {
                        name: "gw".into(),
                        tenants: vec![],
                    },
                    Duration::from_secs(60)
                )
                .is_err()
        );
        assert!(
            again
                .issue_gateway(
                    &GatewayIdentity {
                        name: "gw/../x".into(),
                        tenants: vec!["default".into()],
                    },
                    Duration::from_secs(60)
                )
                .is_err()
        );
        assert!(parse_gateway_uri("spiffe://passage/gateway/gw/tenant/a/extra").is_none());
        assert_eq!(
            parse_gateway_uri("spiffe://passage/gateway/gw/tenant/a"),
            Some(("gw".into(), "a".into()))
        );
    }
}

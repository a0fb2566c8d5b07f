//! The one trust decision: is this agent certificate trusted for its tenant, right now?
//!
//! The dispatcher asks it when an agent connects; the gateway asks it before sealing a password
//! to a key the dispatcher offers. Both get the same answer because both call
//! [`AgentVerifier::verify`]:
//!
//! 1. the certificate chains to the tenant's CA, is within its validity period and names that
//!    tenant ([`CaCertificate::verify`]);
//! 2. the store recorded it, for the key it certifies, as issued to the agent it names (a
//!    certificate the store never recorded — made with a stolen CA key, even reusing a real
//!    serial, or issued and then lost in a race with a revocation — is refused);
//! 3. its agent is not revoked: revoking an agent refuses *every* certificate it ever had;
//! 4. no renewal superseded it longer ago than the switch-over window, so a copy of a key and
//!    certificate taken before a renewal stops working shortly after the renewal.
//!
//! [`decide`] is steps 2–4 as a pure function, table-tested below.

use std::time::{Duration, SystemTime};

use passage_store::{CertificateStanding, Store, StoreError};

use crate::{CaCertificate, CertifiedAgent, PkiError};

/// Why an agent certificate is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Distrust {
    /// Not issued by the tenant CA, outside its validity period, or another tenant's.
    #[error("{0}")]
    NotVerified(PkiError),
    /// The store never recorded this certificate.
    #[error("certificate {serial} was never issued to a Passage agent")]
    UnknownCertificate {
        /// Its serial.
        serial: String,
    },
    /// The certificate's agent has been revoked.
    #[error("agent {agent_id} has been revoked")]
    Revoked {
        /// The agent.
        agent_id: String,
    },
    /// A renewal replaced this certificate longer ago than the switch-over window.
    #[error("this certificate of agent {agent_id} was replaced by a renewal")]
    Superseded {
        /// The agent.
        agent_id: String,
    },
    /// What was claimed (hello, offered key) is not what the certificate certifies.
    #[error("{0}")]
    ClaimMismatch(String),
}

impl Distrust {
    /// Whether retrying cannot help: the agent must be enrolled again.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Distrust::UnknownCertificate { .. }
                | Distrust::Revoked { .. }
                | Distrust::Superseded { .. }
        )
    }
}

/// A trust check that could not decide, or decided against.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Not trusted.
    #[error(transparent)]
    Distrust(#[from] Distrust),
    /// The store could not be read: nothing is trusted until it can.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Steps 2–4 of the decision for a certificate already verified against its tenant's CA:
/// `standing` is what the store says about its serial, `now` Unix seconds.
pub fn decide(
    certified: &CertifiedAgent,
    standing: Option<&CertificateStanding>,
    now: i64,
    switchover: Duration,
) -> Result<(), Distrust> {
    let unknown = || Distrust::UnknownCertificate {
        serial: certified.serial.clone(),
    };
    let standing = standing.ok_or_else(unknown)?;
    let identity = &certified.identity;
    // Serials are not secret: a certificate made with a stolen CA key may reuse one. The key
    // recorded at issue is what the serial stands for.
    if standing.agent_id != identity.agent_id
        || standing.tenant != identity.tenant
        || standing.public_key_der != certified.public_key_der
        || standing.hybrid_public_key != certified.hybrid_public_key
    {
        return Err(unknown());
    }
    if standing.agent_revoked_at.is_some() {
        return Err(Distrust::Revoked {
            agent_id: identity.agent_id.clone(),
        });
    }
    if let Some(superseded_at) = standing.superseded_at
        && now >= superseded_at.saturating_add(switchover.as_secs() as i64)
    {
        return Err(Distrust::Superseded {
            agent_id: identity.agent_id.clone(),
        });
    }
    Ok(())
}

/// What an agent (in its hello) or a dispatcher (offering a key) says about an agent.
#[derive(Debug, Clone, Copy)]
pub struct AgentClaim<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Connector group.
    pub connector_group: &'a str,
    /// Agent id.
    pub agent_id: &'a str,
    /// The key version 1 envelopes are sealed to (SPKI DER).
    pub public_key_der: &'a [u8],
    /// The hybrid key version 2 envelopes are sealed to; empty if none is claimed.
    pub hybrid_public_key: &'a [u8],
}

impl CertifiedAgent {
    /// Refuses a claim that is not exactly what this certificate certifies: a dispatcher cannot
    /// pair a genuine certificate with a key of its choosing, nor an agent pose as another.
    pub fn check_claim(&self, claim: &AgentClaim<'_>) -> Result<(), Distrust> {
        let id = &self.identity;
        if claim.tenant != id.tenant
            || claim.connector_group != id.connector_group
            || claim.agent_id != id.agent_id
        {
            return Err(Distrust::ClaimMismatch(format!(
                "claimed {}/{}/{} but the certificate is for {}/{}/{}",
                claim.tenant,
                claim.connector_group,
                claim.agent_id,
                id.tenant,
                id.connector_group,
                id.agent_id
            )));
        }
        if claim.public_key_der != self.public_key_der {
            return Err(Distrust::ClaimMismatch(
                "the key offered is not the certified key".into(),
            ));
        }
        if claim.hybrid_public_key != self.hybrid_public_key.as_deref().unwrap_or_default() {
            return Err(Distrust::ClaimMismatch(
                "the sealing key offered is not the certified one".into(),
            ));
        }
        Ok(())
    }
}

/// Decides trust in agent certificates against the tenant CA and the store.
#[derive(Debug, Clone)]
pub struct AgentVerifier {
    store: Store,
    switchover: Duration,
}

impl AgentVerifier {
    /// Verifies against `store`; a certificate replaced by a renewal stays trusted for
    /// `switchover` (agents reconnect with the new one at once; this covers the moments in
    /// between).
    pub fn new(store: Store, switchover: Duration) -> Self {
        Self { store, switchover }
    }

    /// The store it reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The switch-over window for superseded certificates.
    pub fn switchover(&self) -> Duration {
        self.switchover
    }

    /// The whole decision for the certificate `der` of an agent of `ca`'s tenant at `now`.
    pub async fn verify(
        &self,
        ca: &CaCertificate,
        der: &[u8],
        now: SystemTime,
    ) -> Result<CertifiedAgent, TrustError> {
        let certified = ca.verify(der, now).map_err(Distrust::NotVerified)?;
        let standing = self.store.certificate_standing(&certified.serial).await?;
        decide(
            &certified,
            standing.as_ref(),
            crate::unix(now),
            self.switchover,
        )?;
        Ok(certified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentIdentity;

    fn certified() -> CertifiedAgent {
        CertifiedAgent {
            identity: AgentIdentity {
                tenant: "default".into(),
                connector_group: "corp".into(),
                agent_id: "agent-1".into(),
            },
            serial: "0a".into(),
            public_key_der: vec![1, 2, 3],
            hybrid_public_key: Some(vec![4, 5, 6]),
            not_after: 2_000_000_000,
            not_before: 1_000_000_000,
        }
    }

    fn standing() -> CertificateStanding {
        CertificateStanding {
            agent_id: "agent-1".into(),
            tenant: "default".into(),
            issued_at: 1_000_000_000,
            public_key_der: vec![1, 2, 3],
            hybrid_public_key: Some(vec![4, 5, 6]),
            superseded_at: None,
            agent_revoked_at: None,
        }
    }

    #[test]
    fn the_decision_table() {
        let now = 1_500_000_000;
        let window = Duration::from_secs(60);
        let cert = certified();
        let cases: Vec<(&str, Option<CertificateStanding>, Result<(), Distrust>)> = vec![
            ("current certificate", Some(standing()), Ok(())),
            (
                "never recorded",
                None,
                Err(Distrust::UnknownCertificate {
                    serial: "0a".into(),
                }),
            ),
            (
                "recorded for another agent",
                Some(CertificateStanding {
                    agent_id: "agent-2".into(),
                    ..standing()
                }),
                Err(Distrust::UnknownCertificate {
                    serial: "0a".into(),
                }),
            ),
            (
                "recorded for another tenant",
                Some(CertificateStanding {
                    tenant: "acme".into(),
                    ..standing()
                }),
                Err(Distrust::UnknownCertificate {
                    serial: "0a".into(),
                }),
            ),
            (
                "a recorded serial on another key (forged with the CA key)",
                Some(CertificateStanding {
                    public_key_der: vec![6, 6, 6],
                    ..standing()
                }),
                Err(Distrust::UnknownCertificate {
                    serial: "0a".into(),
                }),
            ),
            (
                "a recorded serial with another sealing key (forged with the CA key)",
                Some(CertificateStanding {
                    hybrid_public_key: Some(vec![6, 6, 6]),
                    ..standing()
                }),
                Err(Distrust::UnknownCertificate {
                    serial: "0a".into(),
                }),
            ),
            (
                "agent revoked",
                Some(CertificateStanding {
                    agent_revoked_at: Some(now - 1),
                    ..standing()
                }),
                Err(Distrust::Revoked {
                    agent_id: "agent-1".into(),
                }),
            ),
            (
                "agent revoked, certificate superseded too",
                Some(CertificateStanding {
                    agent_revoked_at: Some(now - 1),
                    superseded_at: Some(now - 1),
                    ..standing()
                }),
                Err(Distrust::Revoked {
                    agent_id: "agent-1".into(),
                }),
            ),
            (
                "superseded within the window",
                Some(CertificateStanding {
                    superseded_at: Some(now - 59),
                    ..standing()
                }),
                Ok(()),
            ),
            (
                "superseded exactly a window ago",
                Some(CertificateStanding {
                    superseded_at: Some(now - 60),
                    ..standing()
                }),
                Err(Distrust::Superseded {
                    agent_id: "agent-1".into(),
                }),
            ),
            (
                "superseded long ago",
                Some(CertificateStanding {
                    superseded_at: Some(now - 86_400),
                    ..standing()
                }),
                Err(Distrust::Superseded {
                    agent_id: "agent-1".into(),
                }),
            ),
        ];
        for (name, standing, expected) in cases {
            assert_eq!(
                decide(&cert, standing.as_ref(), now, window),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn final_refusals_are_the_ones_retrying_cannot_cure() {
        assert!(
            Distrust::Revoked {
                agent_id: "a".into()
            }
            .is_final()
        );
        assert!(
            Distrust::Superseded {
                agent_id: "a".into()
            }
            .is_final()
        );
        assert!(Distrust::UnknownCertificate { serial: "a".into() }.is_final());
        assert!(!Distrust::ClaimMismatch("x".into()).is_final());
        assert!(!Distrust::NotVerified(PkiError::BadCertificate("x".into())).is_final());
    }

    #[test]
    fn claims_must_match_the_certificate_exactly() {
        let cert = certified();
        let claim = AgentClaim {
            tenant: "default",
            connector_group: "corp",
            agent_id: "agent-1",
            public_key_der: &[1, 2, 3],
            hybrid_public_key: &[4, 5, 6],
        };
        cert.check_claim(&claim).unwrap();
        for wrong in [
            AgentClaim {
                tenant: "acme",
                ..claim
            },
            AgentClaim {
                connector_group: "other",
                ..claim
            },
            AgentClaim {
                agent_id: "agent-2",
                ..claim
            },
            AgentClaim {
                public_key_der: &[9],
                ..claim
            },
            AgentClaim {
                hybrid_public_key: &[9],
                ..claim
            },
            AgentClaim {
                hybrid_public_key: &[],
                ..claim
            },
        ] {
            assert!(matches!(
                cert.check_claim(&wrong),
                Err(Distrust::ClaimMismatch(_))
            ));
        }
    }
}

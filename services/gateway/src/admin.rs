//! `GatewayAdmin`: what administrators ask a gateway (the sign-in log, what-if questions to
//! the conditional-access policies in force), behind an administrator token.
//!
//! A token is `psg_admin_` and 32 random bytes in hex, made by `passage admin token`. The
//! gateway's configuration holds only the SHA-256 of each valid token (`admin_token_sha256`),
//! so a leaked configuration file grants nothing; a presented token is hashed and compared in
//! constant time. With no hash configured, every administrative call is refused.

use aws_lc_rs::{
    constant_time::verify_slices_are_equal,
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use passage_error_codes::ErrorCode;
use passage_proto::v1::{
    ListSignInsRequest, ListSignInsResponse, SignInRecord, WhatIfRequest, WhatIfResponse,
    gateway_admin_server::GatewayAdmin,
};
use passage_store::{SigninFilter, Store};
use tonic::{Request, Response, Status};

/// What every administrator token starts with (so it is recognisable in a secret scanner).
pub const TOKEN_PREFIX: &str = "psg_admin_";

/// The most sign-ins one call returns.
pub const MAX_SIGN_INS: u32 = 10_000;

/// A bad `admin_token_sha256` entry.
#[derive(Debug, thiserror::Error)]
#[error("admin_token_sha256 entries must be 64 hex digits (the output of `passage admin token`)")]
pub struct BadTokenHash;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The SHA-256 of `token`, in hex (what the gateway's configuration holds).
pub fn token_hash(token: &str) -> String {
    hex(digest(&SHA256, token.as_bytes()).as_ref())
}

/// A new administrator token and its hash.
pub fn new_token() -> Result<(String, String), aws_lc_rs::error::Unspecified> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes)?;
    let token = format!("{TOKEN_PREFIX}{}", hex(&bytes));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The hashes of the administrator tokens a gateway accepts.
pub struct AdminTokens {
    hashes: Vec<Vec<u8>>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} accepted)", self.hashes.len())
    }
}

impl AdminTokens {
    /// From the configuration's hex hashes.
    pub fn from_hex(hashes: &[String]) -> Result<Self, BadTokenHash> {
        let hashes = hashes
            .iter()
            .map(|h| {
                unhex(h.trim())
                    .filter(|b| b.len() == 32)
                    .ok_or(BadTokenHash)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { hashes })
    }

    /// Whether `token` is one of the accepted ones (every hash is compared, in constant time).
    pub fn accepts(&self, token: &str) -> bool {
        let presented = digest(&SHA256, token.as_bytes());
        self.hashes.iter().fold(false, |found, hash| {
            verify_slices_are_equal(presented.as_ref(), hash).is_ok() | found
        })
    }

    /// Checks the request's `authorization: Bearer <token>`.
    pub fn authorise<T>(&self, request: &Request<T>) -> Result<(), Status> {
        // The caller learns only that it is not authorised; the log says why.
        let refused = |why: &str| {
            tracing::warn!(reason = why, "administrative call refused");
            ErrorCode::AdminNotAuthorised.status(
                "send authorization: Bearer <token> with a valid administrator token (passage admin token)",
            )
        };
        if self.hashes.is_empty() {
            return Err(refused(
                "no administrator token is configured (admin_token_sha256)",
            ));
        }
        let Some(value) = request.metadata().get("authorization") else {
            return Err(refused("no administrator token"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| refused("the authorization header is not a bearer token"))?;
        if self.accepts(token.trim()) {
            Ok(())
        } else {
            Err(refused("the administrator token is not valid"))
        }
    }
}

/// The `GatewayAdmin` service of one tenant's gateway.
pub struct AdminService {
    tokens: AdminTokens,
    tenant: String,
    /// The sign-in log's store (none without a store).
    store: Option<Store>,
    /// The conditional-access policies in force, for what-if questions.
    policies: std::sync::Arc<crate::access::Policies>,
}

impl AdminService {
    /// Administration of `tenant`'s sign-ins in `store` and of the `policies` in force, for
    /// holders of `tokens`.
    pub fn new(
        tokens: AdminTokens,
        tenant: String,
        store: Option<Store>,
        policies: std::sync::Arc<crate::access::Policies>,
    ) -> Self {
        Self {
            tokens,
            tenant,
            store,
            policies,
        }
    }
}

#[tonic::async_trait]
impl GatewayAdmin for AdminService {
    async fn what_if(
        &self,
        request: Request<WhatIfRequest>,
    ) -> Result<Response<WhatIfResponse>, Status> {
        self.tokens.authorise(&request)?;
        let request = request.into_inner();
        let client_ip =
            match request.client_ip.as_str() {
                "" => None,
                text => Some(text.parse().map_err(|_| {
                    ErrorCode::InvalidRequest.status("client_ip is not an IP address")
                })?),
            };
        let client_type = match request.client_type.as_str() {
            "" | "grpc" => passage_policy::ClientType::Grpc,
            "browser" => passage_policy::ClientType::Browser,
            _ => {
                return Err(ErrorCode::InvalidRequest.status("client_type must be grpc or browser"));
            }
        };
        let policies = self.policies.current();
        // The same evaluation as a real sign-in's.
        let evaluation = policies.evaluate(&passage_policy::SignInFacts {
            user: &request.user,
            groups: &request.groups,
            application: &request.application,
            client_ip,
            unfamiliar_location: request.unfamiliar_location,
            client_type,
        });
        Ok(Response::new(WhatIfResponse {
            grant: evaluation.grant.as_str().to_owned(),
            explanation: evaluation.explain(),
            policy_set: policies.content_hash().to_owned(),
            token_lifetime_s: evaluation
                .token_lifetime
                .map_or(0, |l| l.as_secs().min(u64::from(u32::MAX)) as u32),
        }))
    }

    async fn list_sign_ins(
        &self,
        request: Request<ListSignInsRequest>,
    ) -> Result<Response<ListSignInsResponse>, Status> {
        self.tokens.authorise(&request)?;
        let request = request.into_inner();
        if request.limit > MAX_SIGN_INS {
            return Err(
                ErrorCode::InvalidRequest.status(format!("limit must be at most {MAX_SIGN_INS}"))
            );
        }
        if !request.outcome.is_empty() && !matches!(request.outcome.as_str(), "success" | "failure")
        {
            return Err(ErrorCode::InvalidRequest.status("outcome must be success or failure"));
        }
        let Some(store) = &self.store else {
            return Err(ErrorCode::InvalidRequest
                .status("this gateway keeps no sign-in log (no store, or signin_log_days = 0)"));
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = SigninFilter {
            // A gateway serves one tenant; its administrators see that tenant's log only.
            tenant: Some(self.tenant.clone()),
            username: non_empty(request.username),
            client_id: non_empty(request.client_id),
            outcome: non_empty(request.outcome),
            since: (request.since_unix != 0).then_some(request.since_unix),
            until: (request.until_unix != 0).then_some(request.until_unix),
            limit: i64::from(if request.limit == 0 {
                100
            } else {
                request.limit
            }),
        };
        let entries = store.signins(&filter).await.map_err(|err| {
            tracing::error!(error = %err, "sign-in log query failed");
            ErrorCode::Internal.public_status()
        })?;
        let sign_ins = entries
            .into_iter()
            .map(|e| SignInRecord {
                at_unix: e.at,
                tenant: e.tenant,
                username: e.username,
                upn: e.upn,
                client_id: e.client_id,
                client_ip: e.client_ip,
                familiar_location: e.familiar_location,
                outcome: e.outcome,
                error_code: e.error_code,
                agent_id: e.agent_id,
                latency_ms: e.latency_ms,
                lockout: e.lockout,
                policies: e.policies,
                mfa: e.mfa,
            })
            .collect();
        Ok(Response::new(ListSignInsResponse { sign_ins }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_against_their_hashes_only() {
        let (token, hash) = new_token().unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash, token_hash(&token));
        let (other, other_hash) = new_token().unwrap();
        let tokens = AdminTokens::from_hex(&[other_hash, hash.to_uppercase()]).unwrap();
        assert!(tokens.accepts(&token));
        assert!(tokens.accepts(&other));
        assert!(!tokens.accepts(&format!("{token}x")));
        assert!(!tokens.accepts(""));
        assert!(!format!("{tokens:?}").contains(&hash));
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(31)] {
            assert!(AdminTokens::from_hex(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_need_a_bearer_token() {
        let (token, hash) = new_token().unwrap();
        let tokens = AdminTokens::from_hex(&[hash]).unwrap();
        let with = |value: &str| {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
            request
        };
        tokens.authorise(&with(&format!("Bearer {token}"))).unwrap();
        for refused in [
            tokens.authorise(&Request::new(())),
            tokens.authorise(&with(&token)),
            tokens.authorise(&with("Bearer psg_admin_00")),
            AdminTokens::from_hex(&[])
                .unwrap()
                .authorise(&with(&format!("Bearer {token}"))),
        ] {
            let status = refused.unwrap_err();
            assert_eq!(ErrorCode::of(&status), Some(ErrorCode::AdminNotAuthorised));
            assert!(!status.message().contains(&token));
        }
    }
}

//! `passage signins`: the sign-in log.

use clap::Args;
use passage_proto::v1::{ListSignInsRequest, gateway_admin_client::GatewayAdminClient};
use passage_store::{SigninEntry, SigninFilter, Store};

/// Filters for `passage signins`.
#[derive(Args)]
pub struct SigninsArgs {
    /// Only this tenant's sign-ins.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this username's (as typed, any casing).
    #[arg(long)]
    user: Option<String>,
    /// Only this application's (client id).
    #[arg(long)]
    app: Option<String>,
    /// Only `success` or only `failure`.
    #[arg(long, value_parser = ["success", "failure"])]
    outcome: Option<String>,
    /// Only the last this many seconds.
    #[arg(long)]
    since_s: Option<i64>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists sign-ins from `store`.
pub async fn run(store: &Store, args: SigninsArgs) -> Result<(), String> {
    let now = passage_dispatcher::enrolment::unix_now();
    let json = args.json;
    let filter = SigninFilter {
        tenant: args.tenant,
        username: args.user,
        client_id: args.app,
        outcome: args.outcome,
        since: args.since_s.map(|s| now - s),
        until: None,
        limit: args.limit,
    };
    let entries = store.signins(&filter).await.map_err(|e| e.to_string())?;
    print(entries, json);
    Ok(())
}

/// Lists sign-ins through a gateway's `GatewayAdmin.ListSignIns`, with an administrator token.
pub async fn run_remote(
    gateway: &crate::Gateway<'_>,
    token: &str,
    args: SigninsArgs,
) -> Result<(), String> {
    if args.tenant.is_some() {
        return Err("--tenant does not apply: a gateway lists its own tenant's sign-ins".into());
    }
    let now = passage_dispatcher::enrolment::unix_now();
    let mut request = tonic::Request::new(ListSignInsRequest {
        username: args.user.unwrap_or_default(),
        client_id: args.app.unwrap_or_default(),
        outcome: args.outcome.unwrap_or_default(),
        since_unix: args.since_s.map_or(0, |s| now - s),
        until_unix: 0,
        limit: u32::try_from(args.limit).map_err(|_| "--limit must be 0 to 10000")?,
    });
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| "the token file does not hold a token")?;
    request.metadata_mut().insert("authorization", bearer);
    let channel = gateway.channel().await?;
    // 10,000 entries with long names are more than tonic's default 4 MiB.
    let records = GatewayAdminClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .list_sign_ins(request)
        .await
        .map_err(|status| format!("listing sign-ins failed: {}", status.message()))?
        .into_inner()
        .sign_ins;
    let entries = records
        .into_iter()
        .map(|r| SigninEntry {
            at: r.at_unix,
            tenant: r.tenant,
            username: r.username,
            upn: r.upn,
            client_id: r.client_id,
            client_ip: r.client_ip,
            familiar_location: r.familiar_location,
            outcome: r.outcome,
            error_code: r.error_code,
            agent_id: r.agent_id,
            latency_ms: r.latency_ms,
            lockout: r.lockout,
            policies: r.policies,
            mfa: r.mfa,
        })
        .collect();
    print(entries, args.json);
    Ok(())
}

fn print(entries: Vec<SigninEntry>, json: bool) {
    if json {
        for e in entries {
            let line = serde_json::json!({
                "at": e.at,
                "tenant": e.tenant,
                "username": e.username,
                "upn": e.upn,
                "client_id": e.client_id,
                "client_ip": e.client_ip,
                "familiar_location": e.familiar_location,
                "outcome": e.outcome,
                "error_code": e.error_code,
                "agent_id": e.agent_id,
                "latency_ms": e.latency_ms,
                "lockout": e.lockout,
                "policies": e.policies,
                "mfa": e.mfa,
            });
            println!("{line}");
        }
        return;
    }
    println!(
        "{:<11} {:<10} {:<32} {:<16} {:<16} {:<9} {:<8} {:<9} {:<8} {:<14} {:>7}  POLICIES",
        "AT",
        "TENANT",
        "USERNAME",
        "APP",
        "CLIENT IP",
        "LOCATION",
        "OUTCOME",
        "CODE",
        "LOCKOUT",
        "MFA",
        "MS"
    );
    for e in entries {
        println!(
            "{:<11} {:<10} {:<32} {:<16} {:<16} {:<9} {:<8} {:<9} {:<8} {:<14} {:>7}  {}",
            e.at,
            e.tenant,
            e.username,
            e.client_id,
            if e.client_ip.is_empty() {
                "-"
            } else {
                &e.client_ip
            },
            if e.familiar_location {
                "familiar"
            } else {
                "new"
            },
            e.outcome,
            if e.error_code.is_empty() {
                "-"
            } else {
                &e.error_code
            },
            e.lockout,
            if e.mfa.is_empty() { "-" } else { &e.mfa },
            e.latency_ms,
            if e.policies.is_empty() {
                "-"
            } else {
                &e.policies
            }
        );
    }
}

//! `passage signins`: the sign-in log.

use clap::Args;
use passage_store::{SigninFilter, Store};

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
    if args.json {
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
            });
            println!("{line}");
        }
        return Ok(());
    }
    println!(
        "{:<11} {:<10} {:<32} {:<16} {:<16} {:<9} {:<8} {:<9} {:<8} {:>7}",
        "AT",
        "TENANT",
        "USERNAME",
        "APP",
        "CLIENT IP",
        "LOCATION",
        "OUTCOME",
        "CODE",
        "LOCKOUT",
        "MS"
    );
    for e in entries {
        println!(
            "{:<11} {:<10} {:<32} {:<16} {:<16} {:<9} {:<8} {:<9} {:<8} {:>7}",
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
            e.latency_ms
        );
    }
    Ok(())
}

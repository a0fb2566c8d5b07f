//! `passage agent ...`: enrolment tokens, the agent list, revocation.

use std::time::Duration;

use clap::Subcommand;
use passage_store::Store;

/// Agent operations.
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Enrolment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List enrolled agents.
    List {
        /// Only this tenant's agents.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke an agent: every certificate it ever had is refused at once, its streams are cut
    /// within a second and it cannot reconnect.
    Revoke {
        /// The agent id (from `passage agent list`).
        agent_id: String,
    },
    /// Forget a revoked agent: delete its records so `passage agent list` no longer shows it
    /// (its certificates stay refused).
    Forget {
        /// The agent id (from `passage agent list`).
        agent_id: String,
    },
}

/// Enrolment token operations.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a one-time enrolment token and print it (it is stored only as a hash).
    Create {
        /// Tenant the agent will serve.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Connector group the agent will serve (e.g. corp.example.com).
        #[arg(long)]
        connector_group: String,
        /// How long the token stays valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

/// How long after its revocation an agent may be forgotten.
const FORGET_AFTER_S: i64 = 300;

/// Parses `90s`, `30m`, `1h`, `7d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and s, m, h or d"))?;
    let seconds = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    if seconds == 0 || seconds > 30 * 86_400 {
        return Err("the ttl must be between 1 s and 30 d".into());
    }
    Ok(Duration::from_secs(seconds))
}

fn when(unix: i64) -> String {
    let now = passage_dispatcher::enrolment::unix_now();
    let delta = unix - now;
    let (n, unit) = match delta.abs() {
        s if s < 120 => (s, "s"),
        s if s < 7200 => (s / 60, "min"),
        s if s < 172_800 => (s / 3600, "h"),
        s => (s / 86_400, "d"),
    };
    // A heartbeat reported this very second is "0 s ago", not "in 0 s".
    if delta > 0 {
        format!("in {n} {unit}")
    } else {
        format!("{n} {unit} ago")
    }
}

/// Runs an agent command against the store at `store_url`.
pub async fn run(store: &Store, command: AgentCommand) -> Result<(), String> {
    match command {
        AgentCommand::Token {
            command:
                TokenCommand::Create {
                    tenant,
                    connector_group,
                    ttl,
                },
        } => {
            // The tenant CA exists before any agent enrols, so dispatchers started from now on
            // trust this tenant's agents.
            passage_dispatcher::enrolment::ensure_tenant_ca(store, &tenant)
                .await
                .map_err(|s| s.message().to_owned())?;
            let token =
                passage_dispatcher::enrolment::create_token(store, &tenant, &connector_group, ttl)
                    .await
                    .map_err(|s| s.message().to_owned())?;
            println!("{token}");
            eprintln!(
                "one-time enrolment token for tenant {tenant}, connector group {connector_group}, valid for {} s; \
                 on the agent host (the environment keeps it out of the process list): \
                 PASSAGE_ENROLMENT_TOKEN=<token> passage-agent register --config agent.toml",
                ttl.as_secs()
            );
        }
        AgentCommand::List { tenant } => {
            let agents = store
                .agents(tenant.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            // Dispatchers report their streams every heartbeat; older reports are stale.
            let now = passage_dispatcher::enrolment::unix_now();
            let connections = store
                .connections(now - 30)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{:<24} {:<10} {:<20} {:<16} {:<8} {:<18} {:<14} {:<20} {:>9} {:<14} STATUS",
                "AGENT",
                "TENANT",
                "CONNECTOR GROUP",
                "HOST",
                "VERSION",
                "SEALING",
                "CERT EXPIRES",
                "REPLICAS",
                "IN-FLIGHT",
                "LAST SEEN"
            );
            let revoked: Vec<String> = agents
                .iter()
                .filter(|a| a.revoked_at.is_some())
                .map(|a| a.agent_id.clone())
                .collect();
            for agent in agents {
                let live: Vec<_> = connections
                    .iter()
                    .filter(|c| c.agent_id == agent.agent_id)
                    .collect();
                let replicas = live
                    .iter()
                    .map(|c| c.dispatcher_id.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let in_flight: i64 = live.iter().map(|c| c.in_flight).sum();
                let last_seen = live
                    .iter()
                    .map(|c| c.last_heartbeat)
                    .max()
                    .map_or("-".into(), when);
                let status = match agent.revoked_at {
                    Some(at) => format!("revoked {}", when(at)),
                    None if live.is_empty() => "disconnected".into(),
                    None => "connected".into(),
                };
                println!(
                    "{:<24} {:<10} {:<20} {:<16} {:<8} {:<18} {:<14} {:<20} {:>9} {:<14} {}",
                    agent.agent_id,
                    agent.tenant,
                    agent.connector_group,
                    agent.hostname,
                    agent.version,
                    // What gateways seal passwords to this agent with.
                    if agent.hybrid_public_key.is_some() {
                        "v2 x25519-mlkem768"
                    } else {
                        "v1 rsa-oaep"
                    },
                    when(agent.cert_not_after),
                    if replicas.is_empty() { "-" } else { &replicas },
                    in_flight,
                    last_seen,
                    status
                );
            }
            if !revoked.is_empty() {
                eprintln!(
                    "{} revoked agent(s) can be forgotten: {}",
                    revoked.len(),
                    revoked
                        .iter()
                        .map(|id| format!("passage agent forget {id}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
        }
        AgentCommand::Forget { agent_id } => {
            // Every replica has read the revocation and cut the agent's streams by then.
            let revoked_by = passage_dispatcher::enrolment::unix_now() - FORGET_AFTER_S;
            match store
                .forget_agent(&agent_id, revoked_by)
                .await
                .map_err(|e| e.to_string())?
            {
                passage_store::Forgotten::Forgotten => println!("forgot {agent_id}"),
                passage_store::Forgotten::TooRecent => {
                    return Err(format!(
                        "{agent_id} was revoked less than {FORGET_AFTER_S} s ago; forget it later, once every dispatcher has cut it"
                    ));
                }
                passage_store::Forgotten::NotRevoked => {
                    return Err(format!(
                        "{agent_id} is not revoked; revoke it first (passage agent revoke {agent_id})"
                    ));
                }
                passage_store::Forgotten::Unknown => return Err(format!("no agent {agent_id}")),
            }
        }
        AgentCommand::Revoke { agent_id } => {
            let now = passage_dispatcher::enrolment::unix_now();
            match store
                .revoke_agent(&agent_id, now)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(agent) => println!(
                    "revoked {} and every certificate it was issued; dispatchers cut its streams within a second",
                    agent.agent_id
                ),
                None => return Err(format!("no agent {agent_id}")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("90d").is_err());
    }
}

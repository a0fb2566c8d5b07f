//! `passage-agent`: the on-premises agent.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use passage_agent::AgentConfig;

/// The Passage agent: validates sign-ins against your directory over outbound streams.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the dispatchers and serve validations until stopped.
    Run {
        /// TOML configuration file (see the README's configuration reference).
        #[arg(long, env = "PASSAGE_AGENT_CONFIG")]
        config: PathBuf,
        /// Allow `http://` dispatcher URLs. Development only.
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Enrol with a dispatcher using a one-time token (`passage agent token create`).
    Register {
        /// TOML configuration file.
        #[arg(long, env = "PASSAGE_AGENT_CONFIG")]
        config: PathBuf,
        /// The enrolment token (or PASSAGE_ENROLMENT_TOKEN, which keeps it out of `ps`).
        #[arg(long, env = "PASSAGE_ENROLMENT_TOKEN", hide_env_values = true)]
        token: String,
        /// Dispatcher URL (default: the first in the configuration).
        #[arg(long)]
        dispatcher: Option<String>,
        /// Allow an `http://` dispatcher URL. Development only.
        #[arg(long)]
        insecure_plaintext: bool,
    },
}

fn load_config(path: &PathBuf, insecure_plaintext: bool) -> Result<AgentConfig, String> {
    let mut config: AgentConfig = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    config.insecure_plaintext |= insecure_plaintext;
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry =
        match passage_telemetry::init("passage-agent", env!("CARGO_PKG_VERSION"), "info") {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("passage-agent: {err}");
                return ExitCode::FAILURE;
            }
        };
    match Args::parse().command {
        Command::Run {
            config,
            insecure_plaintext,
        } => run(&config, insecure_plaintext).await,
        Command::Register {
            config,
            token,
            dispatcher,
            insecure_plaintext,
        } => register(&config, &token, dispatcher.as_deref(), insecure_plaintext).await,
    }
    .unwrap_or_else(|err| {
        eprintln!("passage-agent: {err}");
        ExitCode::FAILURE
    })
}

async fn run(config: &PathBuf, insecure_plaintext: bool) -> Result<ExitCode, String> {
    let config = load_config(config, insecure_plaintext)?;
    let (state, validator) = passage_agent::prepare(&config).map_err(|e| e.to_string())?;
    println!("passage-agent started agent_id={}", state.agent_id);
    passage_agent::run(
        config,
        state,
        validator,
        passage_transport::shutdown_signal(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}

async fn register(
    config: &PathBuf,
    token: &str,
    dispatcher: Option<&str>,
    insecure_plaintext: bool,
) -> Result<ExitCode, String> {
    let config = load_config(config, insecure_plaintext)?;
    let enrolled = passage_agent::enrolment::register(&config, dispatcher, token)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "passage-agent enrolled agent_id={} tenant={} connector_group={}",
        enrolled.agent_id, enrolled.tenant, enrolled.connector_group
    );
    Ok(ExitCode::SUCCESS)
}

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
}

#[tokio::main]
async fn main() -> ExitCode {
    passage_telemetry::init_logging("info");
    let Command::Run {
        config,
        insecure_plaintext,
    } = Args::parse().command;
    let mut parsed: AgentConfig = match std::fs::read_to_string(&config)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("passage-agent: {}: {err}", config.display());
            return ExitCode::FAILURE;
        }
    };
    parsed.insecure_plaintext |= insecure_plaintext;
    let (state, validator) = match passage_agent::prepare(&parsed) {
        Ok(prepared) => prepared,
        Err(err) => {
            eprintln!("passage-agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("passage-agent started agent_id={}", state.agent_id);
    passage_agent::run(
        parsed,
        state,
        validator,
        passage_transport::shutdown_signal(),
    )
    .await;
    ExitCode::SUCCESS
}

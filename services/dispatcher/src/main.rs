//! `passage-dispatcher`: serves agent streams and the gateway-facing relay.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use passage_dispatcher::DispatcherConfig;

/// The Passage dispatcher.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, env = "PASSAGE_DISPATCHER_CONFIG")]
    config: Option<PathBuf>,
    /// Where agents connect (overrides the file).
    #[arg(long)]
    agent_listen: Option<SocketAddr>,
    /// Where gateways call (overrides the file).
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Where Prometheus scrapes `/metrics` (overrides the file's `metrics_listen`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve plaintext gRPC where no TLS is configured. Development only.
    #[arg(long)]
    insecure_plaintext: bool,
    /// The shared store URL (overrides the file's `store_url`).
    #[arg(long, env = "PASSAGE_STORE_URL")]
    store: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry =
        match passage_telemetry::init("passage-dispatcher", env!("CARGO_PKG_VERSION"), "info") {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("passage-dispatcher: {err}");
                return ExitCode::FAILURE;
            }
        };
    let args = Args::parse();
    let mut config: DispatcherConfig = match &args.config {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(config) => config,
            Err(err) => {
                eprintln!("passage-dispatcher: {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => DispatcherConfig::default(),
    };
    if let Some(addr) = args.agent_listen {
        config.agent_listen = addr;
    }
    if let Some(addr) = args.api_listen {
        config.api_listen = addr;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    config.insecure_plaintext |= args.insecure_plaintext;
    if let Some(store) = args.store {
        config.store_url = Some(store);
    }

    let bound = match passage_dispatcher::bind(config).await {
        Ok(bound) => bound,
        Err(err) => {
            eprintln!("passage-dispatcher: {err}");
            return ExitCode::FAILURE;
        }
    };
    // One machine-readable line on stdout: harnesses and operators learn the bound ports.
    println!(
        "passage-dispatcher listening agents={} api={}{}",
        bound.agent_addr(),
        bound.api_addr(),
        bound
            .metrics_addr()
            .map(|addr| format!(" metrics={addr}"))
            .unwrap_or_default()
    );
    match bound.run(passage_transport::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("passage-dispatcher: {err}");
            ExitCode::FAILURE
        }
    }
}

//! `passage-gateway`: the public sign-in API.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use passage_gateway::GatewayConfig;

/// The Passage gateway.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, env = "PASSAGE_GATEWAY_CONFIG")]
    config: PathBuf,
    /// gRPC listen address (overrides the file).
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP listen address (overrides the file).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Where Prometheus scrapes `/metrics` (overrides the file's `metrics_listen`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve plaintext gRPC and dial `http://` dispatchers. Development only.
    #[arg(long)]
    insecure_plaintext: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry =
        match passage_telemetry::init("passage-gateway", env!("CARGO_PKG_VERSION"), "info") {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("passage-gateway: {err}");
                return ExitCode::FAILURE;
            }
        };
    let args = Args::parse();
    let mut config: GatewayConfig = match std::fs::read_to_string(&args.config)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(err) => {
            eprintln!("passage-gateway: {}: {err}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.grpc_listen {
        config.grpc_listen = addr;
    }
    if let Some(addr) = args.http_listen {
        config.http_listen = addr;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    config.insecure_plaintext |= args.insecure_plaintext;
    let bound = match passage_gateway::bind(config).await {
        Ok(bound) => bound,
        Err(err) => {
            eprintln!("passage-gateway: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "passage-gateway listening grpc={} http={} issuer={}{}",
        bound.grpc_addr(),
        bound.http_addr(),
        bound.issuer_url(),
        bound
            .metrics_addr()
            .map(|addr| format!(" metrics={addr}"))
            .unwrap_or_default()
    );
    match bound.run(passage_transport::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("passage-gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

//! `passage`: the command people type.
//!
//! * `passage demo [--signin USER]` — dispatcher, gateway and one agent in one process against
//!   a built-in demo directory; with `--signin`, one real sign-in over gRPC, the token and its
//!   verified claims, then exit.
//! * `passage signin --gateway URL --user U` — sign in against a running gateway; the password
//!   comes from a prompt or standard input, never from the command line.
//! * `passage hash-password` — an Argon2id hash for a static directory file.
//! * `passage pki`, `passage gateway certificate` — the services CA and the certificates of
//!   the listeners and gateways.
//! * `passage tenant`, `passage agent` — tenant CAs, enrolment tokens, agents.
//! * `passage mfa`, `passage policy what-if` — TOTP enrolment, conditional access.
//! * `passage keys`, `passage tokens revoke`, `passage client secret` — token signing keys,
//!   refresh tokens, OIDC client secrets.

mod agents;
mod demo;
mod mfa;
mod oidc;
mod pki;
mod policy;
mod sample_rp;
mod signins;
mod store;
mod tenants;

use std::{io::BufRead, io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use passage_credentials::Password;
use passage_error_codes::ErrorCode;
use passage_proto::v1::{SignInRequest, gateway_client::GatewayClient};

/// Passage: pass-through authentication against your own directory.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run dispatcher, gateway and an agent in one process against a built-in demo directory.
    Demo {
        /// Sign in as this demo user, print the token and its verified claims, and exit.
        #[arg(long, value_name = "USER")]
        signin: Option<String>,
    },
    /// Sign in against a running gateway and print the tokens. The password is read from a
    /// prompt, or from the first line of standard input when that is not a terminal — never
    /// from the command line; when a policy asks for a second factor, the code comes the same
    /// way (the next line).
    Signin {
        /// Gateway gRPC URL, e.g. https://login.example.com:9443.
        #[arg(long)]
        gateway: String,
        /// user@domain.
        #[arg(long)]
        user: String,
        /// The application signing in (the tokens' audience).
        #[arg(long, default_value = "passage-cli")]
        client_id: String,
        /// Issuer URL; when given, the tokens are verified against its JWKS and the claims printed.
        #[arg(long)]
        issuer: Option<String>,
        /// Allow an http:// gateway URL. Development only.
        #[arg(long)]
        insecure_plaintext: bool,
        /// CA certificate (PEM) to verify the gateway with, instead of the system's roots.
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Print an Argon2id hash of a password read from a prompt or standard input.
    HashPassword,
    /// Tenant operations: the tenant CA.
    Tenant {
        #[command(flatten)]
        store: store::StoreArgs,
        #[command(subcommand)]
        command: tenants::TenantCommand,
    },
    /// The sign-in log: every attempt, newest first (reads the store directly).
    Signins {
        #[command(flatten)]
        store: store::StoreArgs,
        #[command(flatten)]
        filter: signins::SigninsArgs,
    },
    /// Administration through a gateway's `GatewayAdmin` API.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The store's key-encryption key.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// The services CA: certificates for the dispatcher's and the gateway's listeners.
    Pki {
        #[command(subcommand)]
        command: pki::PkiCommand,
    },
    /// Gateway operations: the gateway's client certificate towards the dispatcher.
    Gateway {
        #[command(subcommand)]
        command: pki::GatewayCommand,
    },
    /// Agent operations: enrolment tokens, listing, revocation.
    Agent {
        #[command(flatten)]
        store: store::StoreArgs,
        #[command(subcommand)]
        command: agents::AgentCommand,
    },
    /// MFA administration: TOTP enrolment, status, reset (reads and writes the store; needs
    /// the key-encryption key TOTP secrets are sealed with).
    Mfa {
        #[command(flatten)]
        store: store::StoreArgs,
        #[command(subcommand)]
        command: mfa::MfaCommand,
    },
    /// Token signing keys, shared by every gateway replica through the store (sealed with
    /// the key-encryption key): rotate, list.
    Keys {
        #[command(flatten)]
        store: store::StoreArgs,
        #[command(subcommand)]
        command: oidc::KeysCommand,
    },
    /// Refresh tokens in the store: revoke a user's.
    Tokens {
        #[command(flatten)]
        store: store::StoreArgs,
        #[command(subcommand)]
        command: oidc::TokensCommand,
    },
    /// OpenID Connect client registrations: a new client secret and its hash.
    Client {
        #[command(subcommand)]
        command: oidc::ClientCommand,
    },
    /// A tiny web application that signs in through Passage's browser flow (the demo serves
    /// one): register `http://localhost:PORT/callback` as a redirect URI of a public client.
    SampleRp {
        /// The gateway's issuer URL.
        #[arg(long)]
        issuer: String,
        /// Its client id (a public client).
        #[arg(long)]
        client_id: String,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Conditional access: what the policies decide for a sign-in, and why.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Evaluate a policy file for one sign-in, as the gateway would after a right password.
    WhatIf {
        /// The policy file (YAML).
        #[arg(long)]
        policies: std::path::PathBuf,
        #[command(flatten)]
        sign_in: policy::WhatIfArgs,
    },
}

/// Where an administrative command finds the gateway and its administrator token.
#[derive(clap::Args)]
struct AdminArgs {
    /// Gateway gRPC URL.
    #[arg(long)]
    gateway: String,
    /// File holding the administrator token.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Allow an http:// gateway URL. Development only.
    #[arg(long)]
    insecure_plaintext: bool,
    /// CA certificate (PEM) to verify the gateway with, instead of the system's roots.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
}

impl AdminArgs {
    /// The gateway to call, and the administrator token (from a file only its owner reads).
    fn target(&self) -> Result<(Gateway<'_>, String), String> {
        let token = read_admin_token(&self.token_file)?;
        Ok((
            Gateway {
                url: &self.gateway,
                ca_file: self.ca_file.as_deref(),
                insecure_plaintext: self.insecure_plaintext,
            },
            token,
        ))
    }
}

// Parsed once per run: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AdminCommand {
    /// Make an administrator token: prints the token (shown once) and the line for the
    /// gateway's configuration, which holds only its SHA-256.
    Token,
    /// The sign-in log, through the gateway (needs an administrator token).
    Signins {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        filter: signins::SigninsArgs,
    },
    /// What the policies a gateway has in force decide for a sign-in (needs an administrator
    /// token).
    WhatIf {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        sign_in: policy::WhatIfArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Args::parse().command {
        Command::Demo { signin } => {
            match passage_telemetry::init("passage-demo", env!("CARGO_PKG_VERSION"), "warn") {
                // Kept until the demo ends, so its last spans are flushed.
                Ok(_telemetry) => demo::run(signin).await,
                Err(err) => Err(err.to_string()),
            }
        }
        Command::Signin {
            gateway,
            user,
            client_id,
            issuer,
            insecure_plaintext,
            ca_file,
        } => {
            passage_telemetry::init_logging("warn");
            let target = Gateway {
                url: &gateway,
                ca_file: ca_file.as_deref(),
                insecure_plaintext,
            };
            signin(&target, &user, &client_id, issuer.as_deref()).await
        }
        Command::Tenant { store, command } => {
            passage_telemetry::init_logging("warn");
            match store.open().await {
                Ok(store) => tenants::run(&store, command).await,
                Err(err) => Err(err),
            }
        }
        Command::Store { command } => store::run(command),
        Command::Signins { store, filter } => {
            passage_telemetry::init_logging("warn");
            match store.open().await {
                Ok(store) => signins::run(&store, filter).await,
                Err(err) => Err(err),
            }
        }
        Command::Admin {
            command: AdminCommand::Token,
        } => passage_gateway::admin::new_token()
            .map(|(token, hash)| {
                println!("administrator token (shown once; keep it secret):\n{token}\n");
                println!("gateway configuration:\nadmin_token_sha256 = [\"{hash}\"]");
            })
            .map_err(|_| "no random source".to_owned()),
        Command::Admin {
            command: AdminCommand::Signins { admin, filter },
        } => {
            passage_telemetry::init_logging("warn");
            match admin.target() {
                Ok((target, token)) => signins::run_remote(&target, &token, filter).await,
                Err(err) => Err(err),
            }
        }
        Command::Admin {
            command: AdminCommand::WhatIf { admin, sign_in },
        } => {
            passage_telemetry::init_logging("warn");
            match admin.target() {
                Ok((target, token)) => policy::what_if_remote(&target, &token, &sign_in).await,
                Err(err) => Err(err),
            }
        }
        Command::Mfa { store, command } => {
            passage_telemetry::init_logging("warn");
            match store.open().await {
                Ok(store) => mfa::run(&store, command).await,
                Err(err) => Err(err),
            }
        }
        Command::Keys { store, command } => {
            passage_telemetry::init_logging("warn");
            match store.open().await {
                Ok(store) => oidc::run_keys(&store, command).await,
                Err(err) => Err(err),
            }
        }
        Command::SampleRp {
            issuer,
            client_id,
            listen,
        } => {
            passage_telemetry::init_logging("warn");
            match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => {
                    if let Ok(addr) = listener.local_addr() {
                        // One line, as the services print theirs: what to open.
                        println!("sample-app url=http://{}/", sample_rp::redirect_host(addr));
                    }
                    sample_rp::serve(listener, issuer, client_id).await
                }
                Err(err) => Err(format!("{listen}: {err}")),
            }
        }
        Command::Tokens { store, command } => {
            passage_telemetry::init_logging("warn");
            match store.open().await {
                Ok(store) => oidc::run_tokens(&store, command).await,
                Err(err) => Err(err),
            }
        }
        Command::Client { command } => {
            passage_telemetry::init_logging("warn");
            oidc::run_client(command)
        }
        Command::Policy {
            command: PolicyCommand::WhatIf { policies, sign_in },
        } => {
            passage_telemetry::init_logging("warn");
            policy::what_if_file(&policies, &sign_in)
        }
        Command::Pki { command } => {
            passage_telemetry::init_logging("warn");
            pki::run(command)
        }
        Command::Gateway { command } => {
            passage_telemetry::init_logging("warn");
            pki::run_gateway(command)
        }
        Command::Agent { store, command } => {
            passage_telemetry::init_logging("warn");
            match store.open().await {
                Ok(store) => agents::run(&store, command).await,
                Err(err) => Err(err),
            }
        }
        Command::HashPassword => read_password("Password: ").map(|password| {
            println!(
                "{}",
                passage_directory::static_file::hash_password(&password)
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("passage: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Reads an administrator token from a file only its owner may read.
fn read_admin_token(path: &std::path::Path) -> Result<String, String> {
    passage_credentials::secret_file::check_permissions(path).map_err(|e| e.to_string())?;
    std::fs::read_to_string(path).map_err(|err| format!("reading {}: {err}", path.display()))
}

/// Reads one line (a code) from a prompt or standard input.
fn read_line(prompt: &str) -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading: {e}"))?;
    Ok(line.trim().to_owned())
}

/// Reads a password without echo from the terminal, or one line from standard input.
fn read_password(prompt: &str) -> Result<Password, String> {
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).map_err(|e| format!("reading the password: {e}"))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    Password::new(text).map_err(|e| e.to_string())
}

/// Where the gateway is and how to trust it.
pub(crate) struct Gateway<'a> {
    /// gRPC URL.
    pub url: &'a str,
    /// CA to verify it with (system roots otherwise).
    pub ca_file: Option<&'a std::path::Path>,
    /// Allow plaintext.
    pub insecure_plaintext: bool,
}

impl Gateway<'_> {
    /// A channel to the gateway.
    pub(crate) async fn channel(&self) -> Result<tonic::transport::Channel, String> {
        let tls = passage_transport::ClientTls {
            ca_file: self.ca_file.map(std::path::Path::to_path_buf),
            ..Default::default()
        };
        passage_transport::endpoint(self.url, Some(&tls), self.insecure_plaintext)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| {
                format!(
                    "connecting to {}: {}",
                    self.url,
                    passage_transport::describe_error(&e)
                )
            })
    }
}

/// Calls `Gateway.SignIn` and returns the response or a printable error with its code.
pub(crate) async fn call_sign_in(
    gateway: &Gateway<'_>,
    username: &str,
    password: &Password,
    client_id: &str,
) -> Result<passage_proto::v1::SignInResponse, String> {
    let channel = gateway.channel().await?;
    GatewayClient::new(channel)
        .sign_in(SignInRequest {
            username: username.to_owned(),
            password: password.expose().to_owned(),
            client_id: client_id.to_owned(),
            client_ip: String::new(),
            offline_access: false,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| {
            // Passage errors lead with their code (PSG...); others get the gRPC code.
            match ErrorCode::of(&status) {
                Some(_) => format!("sign-in failed: {}", status.message()),
                None => format!("sign-in failed ({:?}): {}", status.code(), status.message()),
            }
        })
}

/// Fetches the issuer's JWKS and verifies `token`, returning its claims as pretty JSON.
pub(crate) async fn verified_claims(
    issuer: &str,
    ca_file: Option<&std::path::Path>,
    client_id: &str,
    token: &str,
) -> Result<String, String> {
    let jwks = passage_gateway::client::fetch_jwks(issuer, ca_file).await?;
    let claims = passage_tokens::verify_id_token(token, &jwks, issuer, client_id)
        .map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&claims).map_err(|e| e.to_string())
}

async fn signin(
    gateway: &Gateway<'_>,
    user: &str,
    client_id: &str,
    issuer: Option<&str>,
) -> Result<(), String> {
    // Reach the gateway before asking for a password nobody can use.
    gateway.channel().await?;
    let password = read_password(&format!("Password for {user}: "))?;
    let mut response = call_sign_in(gateway, user, &password, client_id).await?;
    if !response.mfa_challenge.is_empty() {
        // A policy asks for a second factor: the code comes from the next line.
        let code = read_line("Code from your authenticator app (or a recovery code): ")?;
        let tokens = GatewayClient::new(gateway.channel().await?)
            .complete_mfa(passage_proto::v1::CompleteMfaRequest {
                mfa_challenge: response.mfa_challenge,
                code,
                client_id: client_id.to_owned(),
                client_ip: String::new(),
                offline_access: false,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("sign-in failed: {}", status.message()))?;
        response = passage_proto::v1::SignInResponse {
            access_token: tokens.access_token,
            id_token: tokens.id_token,
            token_type: tokens.token_type,
            expires_in: tokens.expires_in,
            ..Default::default()
        };
    }
    println!("access_token: {}", response.access_token);
    println!("id_token:     {}", response.id_token);
    println!("expires_in:   {} s", response.expires_in);
    if let Some(issuer) = issuer {
        let claims =
            verified_claims(issuer, gateway.ca_file, client_id, &response.id_token).await?;
        println!("verified claims:\n{claims}");
    }
    Ok(())
}

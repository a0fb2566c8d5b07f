//! `passage pki ...` and `passage gateway certificate ...`: the services CA and the
//! certificates of Passage's own listeners and gateways (see `docs/certificates.md`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Subcommand;
use passage_credentials::secret_file;
use passage_pki::{GatewayIdentity, IssuedKeyPair, ServicesCa};

/// File name of the services CA certificate in its directory.
pub const CA_CERT_FILE: &str = "services-ca.pem";
/// File name of the services CA key in its directory (mode 0600).
pub const CA_KEY_FILE: &str = "services-ca-key.pem";

/// Services CA operations.
#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create the services CA in DIR (services-ca.pem, and services-ca-key.pem with mode 0600).
    /// Refused if DIR already holds one.
    Init {
        /// Where the CA's files go.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a server certificate for a dispatcher or gateway listener.
    Server {
        /// The directory holding the services CA.
        #[arg(long)]
        dir: PathBuf,
        /// A name for the certificate (its common name and default file names), e.g. dispatcher.
        #[arg(long)]
        name: String,
        /// A DNS name or IP address clients dial; repeat for each (e.g. --san
        /// dispatcher.passage.svc --san 10.0.0.5).
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// Lifetime in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Output prefix: writes PREFIX.pem and PREFIX-key.pem (default: DIR/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Gateway certificate operations.
#[derive(Subcommand)]
pub enum GatewayCommand {
    /// Gateway client certificates towards the dispatcher.
    Certificate {
        #[command(subcommand)]
        command: GatewayCertificateCommand,
    },
}

/// `passage gateway certificate ...`.
#[derive(Subcommand)]
pub enum GatewayCertificateCommand {
    /// Issue a gateway's client certificate naming the tenants it may act for.
    Issue {
        /// The directory holding the services CA.
        #[arg(long)]
        dir: PathBuf,
        /// The gateway's name, e.g. gateway-eu.
        #[arg(long)]
        name: String,
        /// A tenant this gateway may act for; repeat for each.
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        /// Lifetime in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Output prefix: writes PREFIX.pem and PREFIX-key.pem (default: DIR/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn load_ca(dir: &Path) -> Result<ServicesCa, String> {
    let cert_path = dir.join(CA_CERT_FILE);
    let cert = std::fs::read_to_string(&cert_path).map_err(|e| {
        format!(
            "{}: {e} (create the services CA with `passage pki init --dir {}`)",
            cert_path.display(),
            dir.display()
        )
    })?;
    let key = secret_file::read(&dir.join(CA_KEY_FILE)).map_err(|e| e.to_string())?;
    ServicesCa::from_pem(&cert, &key).map_err(|e| e.to_string())
}

fn write_pair(prefix: &Path, issued: &IssuedKeyPair) -> Result<(PathBuf, PathBuf), String> {
    let cert = prefix.with_file_name(format!("{}.pem", file_name(prefix)));
    let key = prefix.with_file_name(format!("{}-key.pem", file_name(prefix)));
    for path in [&cert, &key] {
        if path.exists() {
            return Err(format!(
                "{} exists; remove it or choose another --out",
                path.display()
            ));
        }
    }
    secret_file::write_new(&key, issued.key_pem.expose())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    std::fs::write(&cert, &issued.cert_pem).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok((cert, key))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn days(n: u64) -> Result<Duration, String> {
    if n == 0 || n > 3650 {
        return Err("--days must be 1 to 3650".into());
    }
    Ok(Duration::from_secs(n * 86_400))
}

/// Runs a `passage pki` command.
pub fn run(command: PkiCommand) -> Result<(), String> {
    match command {
        PkiCommand::Init { dir } => {
            let cert_path = dir.join(CA_CERT_FILE);
            if cert_path.exists() {
                return Err(format!(
                    "{} exists: a services CA is never replaced by accident",
                    cert_path.display()
                ));
            }
            let ca = ServicesCa::generate().map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            secret_file::write_new(&dir.join(CA_KEY_FILE), ca.key_pem().expose())
                .map_err(|e| format!("{}: {e}", dir.join(CA_KEY_FILE).display()))?;
            std::fs::write(&cert_path, ca.cert_pem())
                .map_err(|e| format!("{}: {e}", cert_path.display()))?;
            println!("{}", cert_path.display());
            eprintln!(
                "created the services CA; keep {} secret (mode 0600). Clients pin {}; the \
                 dispatcher's api_tls.client_ca_file trusts gateway certificates from it",
                dir.join(CA_KEY_FILE).display(),
                cert_path.display()
            );
        }
        PkiCommand::Server {
            dir,
            name,
            sans,
            days: d,
            out,
        } => {
            let ca = load_ca(&dir)?;
            let issued = ca
                .issue_server(&name, &sans, days(d)?)
                .map_err(|e| e.to_string())?;
            let (cert, key) = write_pair(&out.unwrap_or_else(|| dir.join(&name)), &issued)?;
            println!("{} {}", cert.display(), key.display());
        }
    }
    Ok(())
}

/// Runs a `passage gateway` command.
pub fn run_gateway(command: GatewayCommand) -> Result<(), String> {
    let GatewayCommand::Certificate {
        command:
            GatewayCertificateCommand::Issue {
                dir,
                name,
                tenants,
                days: d,
                out,
            },
    } = command;
    let ca = load_ca(&dir)?;
    let identity = GatewayIdentity {
        name: name.clone(),
        tenants,
    };
    let issued = ca
        .issue_gateway(&identity, days(d)?)
        .map_err(|e| e.to_string())?;
    let (cert, key) = write_pair(&out.unwrap_or_else(|| dir.join(&name)), &issued)?;
    println!("{} {}", cert.display(), key.display());
    eprintln!(
        "gateway {name} may act for tenant(s) {}: set dispatcher_tls.cert_file / key_file to these files",
        identity.tenants.join(", ")
    );
    Ok(())
}

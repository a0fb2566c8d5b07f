//! `passage tenant ...`: the tenant CA.

use std::path::PathBuf;

use clap::Subcommand;
use passage_credentials::{Secret, secret_file};
use passage_pki::{TenantCa, pem_to_der};
use passage_store::{Store, StoredCa};

/// Tenant operations.
#[derive(Subcommand)]
pub enum TenantCommand {
    /// Print the tenant CA's certificate (PEM), creating the CA if it does not exist yet.
    Ca {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Import an existing CA (certificate and PKCS#8 key, PEM) as the tenant's CA, instead of
    /// letting Passage create one. Refused if the tenant already has a CA.
    ImportCa {
        /// The tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// CA certificate, PEM.
        #[arg(long)]
        cert_file: PathBuf,
        /// CA private key, PKCS#8 PEM; must not be readable by group or others.
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// Runs a tenant command against the store at `store_url`.
pub async fn run(store: &Store, command: TenantCommand) -> Result<(), String> {
    match command {
        TenantCommand::Ca { tenant } => {
            passage_dispatcher::enrolment::ensure_tenant_ca(store, &tenant)
                .await
                .map_err(|s| s.message().to_owned())?;
            let pem = store
                .tenant_ca_certificate(&tenant)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the tenant CA vanished")?;
            print!("{pem}");
        }
        TenantCommand::ImportCa {
            tenant,
            cert_file,
            key_file,
        } => {
            let cert_pem = std::fs::read_to_string(&cert_file)
                .map_err(|e| format!("{}: {e}", cert_file.display()))?;
            let key_pem = secret_file::read(&key_file).map_err(|e| e.to_string())?;
            let key_der = pem_to_der(&String::from_utf8_lossy(key_pem.expose()))
                .map(Secret::new)
                .ok_or_else(|| format!("{}: not a PEM private key", key_file.display()))?;
            // Check the pair is usable before storing it.
            let ca =
                TenantCa::from_parts(&tenant, &cert_pem, &key_der).map_err(|e| e.to_string())?;
            let now = passage_dispatcher::enrolment::unix_now();
            store
                .ensure_tenant(&tenant, now)
                .await
                .map_err(|e| e.to_string())?;
            let stored = StoredCa {
                cert_pem: ca.cert_pem().to_owned(),
                key_der,
            };
            if !store
                .insert_tenant_ca(&tenant, &stored, now)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "tenant {tenant} already has a CA; it is not replaced"
                ));
            }
            println!(
                "imported the CA of tenant {tenant}; dispatchers trust its agents within their tenant_poll_ms"
            );
        }
    }
    Ok(())
}

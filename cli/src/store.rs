//! `passage store ...` and opening the store for the operator commands.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use passage_credentials::secret_file;
use passage_store::{KeyEncryptionKey, KeyProtection, Store};

/// Store operations.
#[derive(Subcommand)]
pub enum StoreCommand {
    /// The key-encryption key that tenant CA keys are encrypted with in the store.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// `passage store key ...`.
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a new key-encryption key in FILE (mode 0600, never over an existing file); give
    /// it to every dispatcher as `store_encryption_key_file` (a file or Kubernetes secret).
    Create {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a `passage store` command.
pub fn run(command: StoreCommand) -> Result<(), String> {
    let StoreCommand::Key {
        command: KeyCommand::Create { out },
    } = command;
    let key = KeyEncryptionKey::generate().map_err(|e| e.to_string())?;
    secret_file::write_new(&out, key.to_text().expose())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{} fingerprint={}", out.display(), key.fingerprint());
    Ok(())
}

/// Where the operator commands find the store.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// The shared store (the dispatchers' `store_url`).
    #[arg(long, env = "PASSAGE_STORE_URL", global = true)]
    store: Option<String>,
    /// The dispatchers' `store_encryption_key_file`: needed to create or import a tenant CA.
    #[arg(long, env = "PASSAGE_STORE_ENCRYPTION_KEY_FILE", global = true)]
    store_encryption_key_file: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens the store; with a key file, private keys are read and written encrypted with it,
    /// as the dispatchers do.
    pub async fn open(&self) -> Result<Store, String> {
        open(
            self.store.as_deref(),
            self.store_encryption_key_file.as_deref(),
        )
        .await
    }
}

async fn open(url: Option<&str>, key_file: Option<&Path>) -> Result<Store, String> {
    let url =
        url.ok_or("--store URL (or PASSAGE_STORE_URL) is required: the dispatchers' store_url")?;
    let protection = match key_file {
        Some(path) => {
            KeyProtection::Encrypted(KeyEncryptionKey::from_file(path).map_err(|e| e.to_string())?)
        }
        None => KeyProtection::Unconfigured,
    };
    Ok(Store::open(url)
        .await
        .map_err(|e| e.to_string())?
        .with_key_protection(protection))
}

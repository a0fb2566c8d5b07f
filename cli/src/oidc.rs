//! `passage keys ...` (the token signing keys every gateway replica shares) and `passage
//! client secret` (a new client secret and the hash a gateway's configuration keeps).

use clap::Subcommand;
use passage_store::Store;
use passage_tokens::SigningKey;

/// Token signing keys.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Add a new signing key: every gateway signs with it as soon as it reads the keys again
    /// (`[oidc] signing_keys_reload_s`); the previous key stays published in the JWKS until
    /// every token it signed has expired (or `--keep-old-s`, if longer), then is dropped.
    Rotate {
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// How long the previous key stays published at least, in seconds. Gateways keep it
        /// published anyway until every token it signed has expired (their `token_lifetime_s`
        /// plus `signing_keys_reload_s` after the rotation); this can only lengthen that.
        #[arg(long, default_value_t = 0)]
        keep_old_s: u64,
    },
    /// The keys: which one signs, which are retired and when they leave the JWKS.
    List {
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

/// Refresh tokens.
#[derive(Subcommand)]
pub enum TokensCommand {
    /// Revoke a user's refresh tokens (a lost laptop, a leaver, a suspected theft): their
    /// applications must sign them in again. Access tokens already issued stay valid until
    /// they expire (`token_lifetime_s`).
    Revoke {
        /// The user's userPrincipalName.
        #[arg(long)]
        user: String,
        /// Only the refresh tokens of this application.
        #[arg(long)]
        client_id: Option<String>,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

/// Runs a `passage tokens` command.
pub async fn run_tokens(store: &Store, command: TokensCommand) -> Result<(), String> {
    let TokensCommand::Revoke {
        user,
        client_id,
        tenant,
    } = command;
    let revoked = store
        .revoke_refresh_tokens_of(
            &tenant,
            client_id.as_deref(),
            &user.trim().to_lowercase(),
            passage_pki::unix_now(),
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("revoked {revoked} refresh token(s) of {user}");
    Ok(())
}

/// Client registrations.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// A new random client secret, and its Argon2id hash for the gateway's
    /// `[[clients]] secret_hash`. The secret is printed once, for the application's settings;
    /// Passage keeps only the hash.
    Secret,
}

/// Runs a `passage keys` command.
pub async fn run_keys(store: &Store, command: KeysCommand) -> Result<(), String> {
    let now = passage_pki::unix_now();
    match command {
        KeysCommand::Rotate { tenant, keep_old_s } => {
            let key = SigningKey::generate().map_err(|e| e.to_string())?;
            let drop_after = now + i64::try_from(keep_old_s).map_err(|e| e.to_string())?;
            store
                .add_signing_key(&tenant, key.kid(), key.pkcs8().expose(), now, drop_after)
                .await
                .map_err(|e| e.to_string())?;
            let kept = if keep_old_s > 0 {
                format!(" or until Unix time {drop_after}, whichever is later")
            } else {
                String::new()
            };
            println!(
                "new signing key {} (tenant {tenant}): every gateway signs with it within its [oidc] signing_keys_reload_s; \
                 the previous key stays in the JWKS until the tokens it signed have expired (each gateway's token_lifetime_s + signing_keys_reload_s){kept}",
                key.kid()
            );
            Ok(())
        }
        KeysCommand::List { tenant } => {
            let keys = store
                .signing_keys(&tenant)
                .await
                .map_err(|e| e.to_string())?;
            if keys.is_empty() {
                println!(
                    "no signing keys for tenant {tenant} (a gateway creates one when it starts)"
                );
            }
            let mut signing_seen = false;
            for stored in keys {
                let key = SigningKey::from_pkcs8_der(stored.private_pkcs8.expose())
                    .map_err(|e| e.to_string())?;
                // A retired key stays published until its tokens have expired: the gateways
                // know their token lifetime, so the list says from when that counts.
                let state = match (stored.retired_at, stored.drop_after) {
                    (None, _) if !signing_seen => {
                        signing_seen = true;
                        "signing".to_owned()
                    }
                    (None, _) => "published".to_owned(),
                    (Some(retired_at), drop_after) => format!(
                        "retired at {retired_at}: published until its tokens expire (gateways' token_lifetime_s + signing_keys_reload_s later){}",
                        drop_after
                            .filter(|&d| d > now)
                            .map(|d| format!(", and at least until {d}"))
                            .unwrap_or_default()
                    ),
                };
                println!("{}  created {}  {state}", key.kid(), stored.created_at);
            }
            Ok(())
        }
    }
}

/// Runs a `passage client` command.
pub fn run_client(command: ClientCommand) -> Result<(), String> {
    match command {
        ClientCommand::Secret => {
            let secret = passage_oidc::client::generate_secret();
            let hash = passage_oidc::client::hash_secret(&secret).map_err(|e| e.to_string())?;
            println!("client_secret = {secret}");
            println!("secret_hash = \"{hash}\"");
            Ok(())
        }
    }
}

//! `passage mfa ...`: TOTP enrolment, its status and reset, for administrators (against the
//! store, with the key-encryption key the TOTP secrets are sealed with).

use clap::Subcommand;
use passage_mfa::TotpSecret;
use passage_store::Store;

/// MFA administration.
#[derive(Subcommand)]
pub enum MfaCommand {
    /// Begin a TOTP enrolment: prints the otpauth:// URI and a QR code for the user's
    /// authenticator app; `passage mfa confirm` with the app's first code completes it.
    Enrol {
        /// The user's userPrincipalName (as the directory has it).
        #[arg(long)]
        user: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The name shown in the authenticator app (the gateways' `mfa.issuer`).
        #[arg(long, default_value = "Passage")]
        issuer: String,
    },
    /// Confirm an enrolment with the first code the authenticator app shows; prints ten
    /// single-use recovery codes (shown once).
    Confirm {
        /// The user's userPrincipalName.
        #[arg(long)]
        user: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The six-digit code the app shows now.
        #[arg(long)]
        code: String,
    },
    /// Whether the user has an authenticator, since when, and how many recovery codes are left.
    Status {
        /// The user's userPrincipalName.
        #[arg(long)]
        user: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Remove the user's authenticator and recovery codes (a lost phone): they enrol again.
    Reset {
        /// The user's userPrincipalName.
        #[arg(long)]
        user: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

/// The store's key for a user: the userPrincipalName, case-folded (as the gateway keys it).
fn user_key(user: &str) -> String {
    user.trim().to_lowercase()
}

fn now() -> i64 {
    passage_pki::unix_now()
}

/// Runs a `passage mfa` command.
pub async fn run(store: &Store, command: MfaCommand) -> Result<(), String> {
    match command {
        MfaCommand::Enrol {
            user,
            tenant,
            issuer,
        } => {
            let enrolment = passage_mfa::enrol(&issuer, user.trim()).map_err(|e| e.to_string())?;
            let begun = store
                .mfa_begin_enrolment(
                    &tenant,
                    &user_key(&user),
                    enrolment.secret.expose_bytes(),
                    now(),
                )
                .await
                .map_err(|e| e.to_string())?;
            if !begun {
                return Err(format!(
                    "{user} already has an authenticator; `passage mfa reset --user {user}` first"
                ));
            }
            println!("Scan this with the authenticator app, or enter the URI:\n");
            println!("{}", enrolment.qr_text);
            println!("{}\n", enrolment.otpauth_uri);
            println!(
                "Then confirm with the code the app shows:\n  passage mfa confirm --user {user} --code <code>"
            );
            Ok(())
        }
        MfaCommand::Confirm { user, tenant, code } => {
            let key = user_key(&user);
            let enrolment = store
                .mfa_enrolment(&tenant, &key)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("{user} has no enrolment; begin with `passage mfa enrol`")
                })?;
            if enrolment.confirmed_at.is_some() {
                return Err(format!("{user}'s authenticator is already confirmed"));
            }
            let secret = TotpSecret::from_bytes(enrolment.secret.expose().to_vec())
                .map_err(|e| e.to_string())?;
            let step = passage_mfa::verify_totp(&secret, &code, now().max(0) as u64)
                .ok_or("that code is not valid now; check the app's clock and try the next code")?;
            let codes = passage_mfa::recovery_codes();
            let hashes = codes
                .iter()
                .map(|c| passage_mfa::hash_recovery_code(c.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            if !store
                .mfa_confirm_enrolment(&tenant, &key, step as i64, &hashes, now())
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!("{user}'s enrolment changed meanwhile; begin again"));
            }
            println!(
                "{user}: authenticator confirmed. Recovery codes (each works once; shown only now):"
            );
            for code in &codes {
                println!("  {code}");
            }
            Ok(())
        }
        MfaCommand::Status { user, tenant } => {
            match store
                .mfa_enrolment(&tenant, &user_key(&user))
                .await
                .map_err(|e| e.to_string())?
            {
                None => println!("{user}: no authenticator"),
                Some(enrolment) => match enrolment.confirmed_at {
                    None => println!(
                        "{user}: enrolment begun at {} (Unix time), not confirmed yet",
                        enrolment.created_at
                    ),
                    Some(at) => println!(
                        "{user}: authenticator confirmed at {at} (Unix time); {} recovery codes left",
                        enrolment.recovery_codes_left
                    ),
                },
            }
            Ok(())
        }
        MfaCommand::Reset { user, tenant } => {
            if store
                .mfa_reset(&tenant, &user_key(&user))
                .await
                .map_err(|e| e.to_string())?
            {
                println!("{user}: authenticator and recovery codes removed");
                Ok(())
            } else {
                Err(format!("{user} has no authenticator"))
            }
        }
    }
}

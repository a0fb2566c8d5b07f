//! A directory kept in a TOML file: users with Argon2id hashes and an account state.
//!
//! ```toml
//! [[users]]
//! username = "alice@demo.passage.dev"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."   # `passage hash-password`
//! display_name = "Alice Example"
//! mail = "alice@demo.passage.dev"
//! groups = ["staff"]
//! state = "active"        # locked | disabled | expired | password_expired | must_change
//! ```

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use passage_credentials::Password;
use serde::Deserialize;

use crate::{Directory, DirectoryError, UserInfo, Verdict, VerdictFuture};

/// Where the static user file lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Path of the TOML user file.
    pub path: PathBuf,
}

/// The account state of a static user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserState {
    /// Usable.
    #[default]
    Active,
    /// Locked out.
    Locked,
    /// Disabled.
    Disabled,
    /// The account has expired.
    Expired,
    /// The password has expired.
    PasswordExpired,
    /// The password must be changed before use.
    MustChange,
}

/// One user of the static directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    /// Sign-in name (matched case-insensitively).
    pub username: String,
    /// PHC-format Argon2id hash.
    pub password_hash: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// E-mail address.
    #[serde(default)]
    pub mail: String,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Account state.
    #[serde(default)]
    pub state: UserState,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    #[serde(default)]
    users: Vec<StaticUser>,
}

/// Hashes `password` with Argon2id (default parameters) for a static user file.
pub fn hash_password(password: &Password) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        // Hashing with default parameters and a fresh salt cannot fail.
        .expect("argon2 hashing with default parameters")
        .to_string()
}

/// Users from a file, verified with Argon2id on the blocking pool.
pub struct StaticDirectory {
    users: Arc<HashMap<String, StaticUser>>,
    /// Verified for unknown users so that they take as long as known ones.
    decoy_hash: Arc<String>,
}

impl StaticDirectory {
    /// Reads the file named by `config`.
    pub fn from_config(config: &StaticConfig) -> Result<Self, DirectoryError> {
        let text = std::fs::read_to_string(&config.path).map_err(|err| {
            DirectoryError::Misconfigured(format!("reading {}: {err}", config.path.display()))
        })?;
        let file: UserFile = toml::from_str(&text).map_err(|err| {
            DirectoryError::Misconfigured(format!("parsing {}: {err}", config.path.display()))
        })?;
        Self::from_users(file.users)
    }

    /// Builds a directory from users in memory.
    pub fn from_users(users: Vec<StaticUser>) -> Result<Self, DirectoryError> {
        let mut map = HashMap::new();
        for user in users {
            PasswordHash::new(&user.password_hash).map_err(|err| {
                DirectoryError::Misconfigured(format!("password_hash of {}: {err}", user.username))
            })?;
            let key = user.username.to_lowercase();
            if map.insert(key, user).is_some() {
                return Err(DirectoryError::Misconfigured("duplicate username".into()));
            }
        }
        let decoy = Password::new("decoy password for unknown users".into())
            .map_err(|err| DirectoryError::Misconfigured(err.to_string()))?;
        Ok(Self {
            users: Arc::new(map),
            decoy_hash: Arc::new(hash_password(&decoy)),
        })
    }
}

impl Directory for StaticDirectory {
    fn authenticate<'a>(&'a self, login: &'a str, password: &'a Password) -> VerdictFuture<'a> {
        let users = Arc::clone(&self.users);
        let decoy = Arc::clone(&self.decoy_hash);
        let login = login.to_lowercase();
        let password = password.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let user = users.get(&login);
                let hash_text = user.map_or(decoy.as_str(), |u| u.password_hash.as_str());
                let hash = PasswordHash::new(hash_text)
                    .map_err(|err| DirectoryError::Misconfigured(err.to_string()))?;
                let matches = Argon2::default()
                    .verify_password(password.expose().as_bytes(), &hash)
                    .is_ok();
                let Some(user) = user.filter(|_| matches) else {
                    return Ok(Verdict::InvalidCredentials);
                };
                // The state is revealed only to someone who knows the password.
                Ok(match user.state {
                    UserState::Active => Verdict::Success(UserInfo {
                        dn: format!("static:{}", user.username),
                        object_id: String::new(),
                        upn: user.username.clone(),
                        display_name: user.display_name.clone(),
                        mail: user.mail.clone(),
                        groups: user.groups.clone(),
                        password_expires_in_s: None,
                    }),
                    UserState::Locked => Verdict::AccountLocked,
                    UserState::Disabled => Verdict::AccountDisabled,
                    UserState::Expired => Verdict::AccountExpired,
                    UserState::PasswordExpired => Verdict::PasswordExpired,
                    UserState::MustChange => Verdict::PasswordMustChange,
                })
            })
            .await
            .map_err(|err| DirectoryError::Unavailable(format!("verifier task failed: {err}")))?
        })
    }

    fn describe(&self) -> String {
        format!("static ({} users)", self.users.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, state: UserState) -> StaticUser {
        StaticUser {
            username: name.into(),
            password_hash: hash_password(&Password::new(password.into()).unwrap()),
            display_name: format!("{name} display"),
            mail: name.into(),
            groups: vec!["staff".into()],
            state,
        }
    }

    #[tokio::test]
    async fn verdicts_follow_password_and_state() {
        let dir = StaticDirectory::from_users(vec![
            user("alice@x.test", "right", UserState::Active),
            user("lock@x.test", "right", UserState::Locked),
            user("exp@x.test", "right", UserState::PasswordExpired),
        ])
        .unwrap();
        let pw = |p: &str| Password::new(p.into()).unwrap();
        let Verdict::Success(info) = dir
            .authenticate("Alice@X.test", &pw("right"))
            .await
            .unwrap()
        else {
            panic!("alice should sign in");
        };
        assert_eq!(info.upn, "alice@x.test");
        assert_eq!(info.groups, vec!["staff".to_string()]);
        assert_eq!(
            dir.authenticate("alice@x.test", &pw("wrong"))
                .await
                .unwrap(),
            Verdict::InvalidCredentials
        );
        assert_eq!(
            dir.authenticate("nobody@x.test", &pw("right"))
                .await
                .unwrap(),
            Verdict::InvalidCredentials
        );
        assert_eq!(
            dir.authenticate("lock@x.test", &pw("right")).await.unwrap(),
            Verdict::AccountLocked
        );
        // A wrong password never reveals the account state.
        assert_eq!(
            dir.authenticate("lock@x.test", &pw("wrong")).await.unwrap(),
            Verdict::InvalidCredentials
        );
        assert_eq!(
            dir.authenticate("exp@x.test", &pw("right")).await.unwrap(),
            Verdict::PasswordExpired
        );
    }

    #[test]
    fn bad_hash_is_a_configuration_error() {
        let mut bad = user("a@x.test", "pw", UserState::Active);
        bad.password_hash = "plaintext".into();
        assert!(matches!(
            StaticDirectory::from_users(vec![bad]),
            Err(DirectoryError::Misconfigured(_))
        ));
    }
}

//! All durable and shared state behind one interface.
//!
//! [`Store::open`] takes a URL: `sqlite://path/passage.db` (the default: an embedded file, no
//! server) or `postgres://user@host/db` (several replicas share one database). Both run the
//! same queries through sqlx's `Any` driver; only the schema files differ (column types), and
//! both are migrated, versioned, on open. The same test suite runs against both.
//!
//! What lives here: tenants and their CAs, enrolment tokens (only their hashes), agents and
//! their certificates, revocations, smart lockout counters and familiar networks
//! ([`lockout`]), the sign-in log, MFA enrolments and challenges ([`mfa`]), and the OpenID
//! Connect provider's signing keys, authorization codes and refresh tokens ([`oidc`]). Never a
//! password, and never an enrolment token, a code or a refresh token itself.

pub mod batching;
pub mod key_encryption;
pub mod lockout;
pub mod mfa;
pub mod oidc;

use std::borrow::Cow;

pub use key_encryption::{KeyEncryptionError, KeyEncryptionKey, is_sealed};
pub use lockout::{AttemptEnd, LockoutOp, LockoutScope, LockoutState, ScopeCounter, UserCounters};
pub use mfa::{ChallengeState, MfaChallenge, MfaEnrolment};
pub use oidc::{
    CodeRedemption, NewCode, NewRefreshToken, OIDC_PRUNE_GRACE_S, RefreshRotation,
    RefreshTokenInfo, StoredSigningKey,
};

use batching::WriterConnection;
use passage_credentials::Secret;
use sqlx::{
    AnyPool, Row,
    any::AnyPoolOptions,
    migrate::{Migration, MigrationType, Migrator},
};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported backend.
    #[error("unsupported store URL scheme {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    /// The database server could not be reached (the cause, never the URL: it may hold a
    /// password).
    #[error(
        "store: cannot reach the database: {0} (check that the server runs, that the host and \
         port in store_url are right, and that it accepts this client)"
    )]
    Unreachable(String),
    /// A migration failed.
    #[error("store migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The SQLite file could not be created, or others may read it.
    #[error("store file: {0}")]
    File(std::io::Error),
    /// A private key could not be encrypted or decrypted.
    #[error(transparent)]
    KeyEncryption(#[from] KeyEncryptionError),
    /// A private key is stored in plaintext although the store's keys are encrypted.
    #[error(
        "the CA key of tenant {0} is stored in plaintext; start a dispatcher with \
         store_encryption_key_file to encrypt it, or find out who wrote it"
    )]
    PlaintextKey(String),
    /// A batch of lockout updates failed (each sign-in in it gets this).
    #[error("lockout update: {0}")]
    Batch(String),
    /// A secret (an MFA secret, a challenge) is stored in plaintext although the store's
    /// secrets are encrypted.
    #[error("a secret is stored in plaintext although the store's secrets are encrypted")]
    PlaintextSecret,
    /// A private key was to be written or read without the key-encryption key.
    #[error(
        "the store keeps private keys encrypted: set store_encryption_key_file (create one with \
         `passage store key create --out FILE`); only a development dispatcher (--insecure-plaintext) keeps them in plaintext"
    )]
    NoKeyEncryptionKey,
}

/// Why an enrolment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token (or of another tenant: tokens are looked up by hash only).
    #[error("unknown enrolment token")]
    Unknown,
    /// The token was used before.
    #[error("enrolment token already used")]
    AlreadyUsed,
    /// The token has expired.
    #[error("enrolment token expired")]
    Expired,
    /// The token belongs to another tenant (it stays usable for its own tenant).
    #[error("enrolment token belongs to another tenant")]
    WrongTenant,
    /// The token enrols into another connector group than the one asked for (it stays
    /// usable).
    #[error("enrolment token is for another connector group")]
    WrongGroup,
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A tenant's certificate authority.
#[derive(Debug, Clone)]
pub struct StoredCa {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA private key, PKCS#8 DER.
    pub key_der: Secret,
}

/// A pending enrolment token, by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentToken {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Tenant the agent will belong to.
    pub tenant: String,
    /// Connector group the agent will serve.
    pub connector_group: String,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Expires, Unix seconds.
    pub expires_at: i64,
}

/// What a redeemed token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// Tenant.
    pub tenant: String,
    /// Connector group.
    pub connector_group: String,
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Agent id.
    pub agent_id: String,
    /// Tenant.
    pub tenant: String,
    /// Connector group.
    pub connector_group: String,
    /// Host name at enrolment.
    pub hostname: String,
    /// Software version at enrolment.
    pub version: String,
    /// Serial of its current certificate, hex.
    pub cert_serial: String,
    /// Its certificate's expiry, Unix seconds.
    pub cert_not_after: i64,
    /// Its certified public key (SPKI DER).
    pub public_key_der: Vec<u8>,
    /// Its certified hybrid sealing key (envelope version 2), if it has one.
    pub hybrid_public_key: Option<Vec<u8>>,
    /// Enrolled, Unix seconds.
    pub enrolled_at: i64,
    /// Revoked, Unix seconds.
    pub revoked_at: Option<i64>,
}

/// The schema, version by version; a released migration never changes.
fn migrations(backend: Backend) -> Vec<Migration> {
    let files: [(i64, &str, &'static str, &'static str); 8] = [
        (
            1,
            "tenants, agents, enrolment",
            include_str!("../migrations/sqlite/0001_tenants_agents_enrolment.sql"),
            include_str!("../migrations/postgres/0001_tenants_agents_enrolment.sql"),
        ),
        (
            2,
            "live agent connections",
            include_str!("../migrations/sqlite/0002_agent_connections.sql"),
            include_str!("../migrations/postgres/0002_agent_connections.sql"),
        ),
        (
            3,
            "certificate history, final revocation",
            include_str!("../migrations/sqlite/0003_certificate_history.sql"),
            include_str!("../migrations/postgres/0003_certificate_history.sql"),
        ),
        (
            4,
            "smart lockout, familiar networks, sign-in log",
            include_str!("../migrations/sqlite/0004_lockout_signin_log.sql"),
            include_str!("../migrations/postgres/0004_lockout_signin_log.sql"),
        ),
        (
            5,
            "smart lockout: one row per user, both scopes",
            include_str!("../migrations/sqlite/0005_lockout_per_user.sql"),
            include_str!("../migrations/postgres/0005_lockout_per_user.sql"),
        ),
        (
            6,
            "MFA enrolments, recovery codes and challenges; policies and MFA in the sign-in log",
            include_str!("../migrations/sqlite/0006_mfa_conditional_access.sql"),
            include_str!("../migrations/postgres/0006_mfa_conditional_access.sql"),
        ),
        (
            7,
            "OpenID Connect: signing keys, authorization codes, refresh tokens",
            include_str!("../migrations/sqlite/0007_oidc.sql"),
            include_str!("../migrations/postgres/0007_oidc.sql"),
        ),
        (
            8,
            "the sign-in log lighter to write: no AUTOINCREMENT, one index by time",
            include_str!("../migrations/sqlite/0008_signin_log_lighter.sql"),
            include_str!("../migrations/postgres/0008_signin_log_lighter.sql"),
        ),
    ];
    files
        .into_iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            )
        })
        .collect()
}

/// One agent stream at one dispatcher replica, as last reported by that replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConnection {
    /// Agent id.
    pub agent_id: String,
    /// The dispatcher replica holding the stream.
    pub dispatcher_id: String,
    /// Validations outstanding on it.
    pub in_flight: i64,
    /// When the replica last heard from the agent, Unix seconds.
    pub last_heartbeat: i64,
}

/// A certificate just issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCertificate {
    /// Serial, hex.
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// The certified public key (SPKI DER).
    pub public_key_der: Vec<u8>,
    /// The certified hybrid sealing key, if any.
    pub hybrid_public_key: Option<Vec<u8>>,
}

/// What became of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The new certificate is the agent's current one.
    Renewed,
    /// The agent is revoked: nothing changed.
    Revoked,
    /// The certificate asking was replaced by a renewal: only the current one may renew.
    Superseded,
    /// No such agent.
    Unknown,
}

/// What the store says about one certificate, for the trust decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStanding {
    /// The agent it was issued to.
    pub agent_id: String,
    /// That agent's tenant.
    pub tenant: String,
    /// Issued, Unix seconds.
    pub issued_at: i64,
    /// The key it certifies (SPKI DER), as recorded when it was issued.
    pub public_key_der: Vec<u8>,
    /// The hybrid sealing key it certifies, as recorded when it was issued.
    pub hybrid_public_key: Option<Vec<u8>>,
    /// When a renewal replaced it, Unix seconds.
    pub superseded_at: Option<i64>,
    /// When its agent was revoked, Unix seconds.
    pub agent_revoked_at: Option<i64>,
}

/// A certificate that a renewal replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupersededCertificate {
    /// Its agent.
    pub agent_id: String,
    /// Its serial.
    pub serial: String,
    /// When it was replaced, Unix seconds.
    pub superseded_at: i64,
}

/// What [`Store::forget_agent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// The records are gone.
    Forgotten,
    /// The agent is not revoked: revoke it first.
    NotRevoked,
    /// Revoked too recently: replicas may not have cut its streams yet.
    TooRecent,
    /// No such agent.
    Unknown,
}

/// How the store treats the private keys it holds (tenant CA keys).
#[derive(Clone, Debug, Default)]
pub enum KeyProtection {
    /// Not decided: reading or writing a private key is refused.
    #[default]
    Unconfigured,
    /// Encrypted at rest with this key-encryption key (production).
    Encrypted(KeyEncryptionKey),
    /// Stored as they are (development only: a dump of the store holds the keys).
    Plaintext,
}

/// One sign-in attempt, as the sign-in log keeps it. Never a password, a hash of one, or a
/// code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SigninEntry {
    /// When, Unix seconds.
    pub at: i64,
    /// Tenant.
    pub tenant: String,
    /// The username as typed (normalised to NFC).
    pub username: String,
    /// The directory's UPN, when the directory answered with one.
    pub upn: String,
    /// The application.
    pub client_id: String,
    /// The client IP the application reported (empty if none).
    pub client_ip: String,
    /// Whether the client's network was familiar for the user.
    pub familiar_location: bool,
    /// `success`, `failure`, or `interrupted` (the password was right and a second factor is
    /// asked for: the answer to the challenge is an entry of its own).
    pub outcome: String,
    /// The Passage error code, empty on success.
    pub error_code: String,
    /// The agent that answered, if any.
    pub agent_id: String,
    /// How long the sign-in took, in milliseconds.
    pub latency_ms: i64,
    /// The lockout state: `none`, `counted`, `repeat` (a repeated wrong password, not
    /// counted), `locked` (this attempt locked the user out) or `refused` (it was refused
    /// because the user is locked out).
    pub lockout: String,
    /// What conditional access decided and which policies decided it (report-only ones
    /// included, marked); empty when no policy was evaluated.
    pub policies: String,
    /// What the second factor did: empty (not asked), `required` (a challenge was issued),
    /// `otp`, `recovery_code`, `wrong_code`, `challenge_ended`, `locked` (too many wrong codes
    /// lately), `other_client`, `invalid_challenge`, `not_enrolled`,
    /// `not_enrolled_trusted_network`.
    pub mfa: String,
}

/// Which sign-ins to list.
#[derive(Debug, Clone, Default)]
pub struct SigninFilter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only this username's (as typed, case-insensitive).
    pub username: Option<String>,
    /// Only this application's.
    pub client_id: Option<String>,
    /// Only `success` or only `failure`.
    pub outcome: Option<String>,
    /// At or after, Unix seconds.
    pub since: Option<i64>,
    /// Before, Unix seconds.
    pub until: Option<i64>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// SQLite connections for reads (the writer is one more).
const SQLITE_READERS: u32 = 4;

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where the hot reads go: on SQLite, connections of their own beside the one writer; on
    /// PostgreSQL, the same pool.
    reads: AnyPool,
    /// Where soft state is written on every sign-in's path (smart lockout's counters): on
    /// PostgreSQL, connections that do not wait for each commit to reach the disk
    /// (`synchronous_commit = off`: a server crash may forget the last moments of counts,
    /// never corrupt them); on SQLite, the one writer.
    volatile: AnyPool,
    backend: Backend,
    keys: KeyProtection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

const AGENT_COLUMNS: &str = "agent_id, tenant_id, connector_group, hostname, version, cert_serial, \
                             cert_not_after, public_key_der, hybrid_public_key, enrolled_at, revoked_at";

fn agent_from_row(row: &sqlx::any::AnyRow) -> Result<AgentRecord, sqlx::Error> {
    Ok(AgentRecord {
        agent_id: row.try_get("agent_id")?,
        tenant: row.try_get("tenant_id")?,
        connector_group: row.try_get("connector_group")?,
        hostname: row.try_get("hostname")?,
        version: row.try_get("version")?,
        cert_serial: row.try_get("cert_serial")?,
        cert_not_after: row.try_get("cert_not_after")?,
        public_key_der: row.try_get("public_key_der")?,
        hybrid_public_key: row.try_get("hybrid_public_key")?,
        enrolled_at: row.try_get("enrolled_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Opens (creating if needed) the store at `url` and migrates it to the current version.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            // Only the scheme: the rest may hold a password.
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::UnsupportedUrl(scheme.to_owned()));
        };
        if backend == Backend::Sqlite {
            secure_sqlite_file(url).map_err(StoreError::File)?;
        }
        let url = match backend {
            // Create the file on first open.
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        if backend == Backend::Postgres {
            // One connection first: a pool that cannot connect says only "pool timed out",
            // a connection says why (refused, name not resolved, authentication failed).
            use sqlx::Connection;
            let conn = sqlx::AnyConnection::connect(&url).await.map_err(|err| {
                let mut cause = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(inner) = source {
                    let part = inner.to_string();
                    if !cause.contains(&part) {
                        cause.push_str(": ");
                        cause.push_str(&part);
                    }
                    source = inner.source();
                }
                StoreError::Unreachable(cause)
            })?;
            let _ = conn.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // SQLite serialises writers anyway; one connection avoids SQLITE_BUSY.
                Backend::Sqlite => 1,
                Backend::Postgres => 8,
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // With write-ahead logging (below), NORMAL syncs at checkpoints rather
                        // than at every commit: a power loss may forget the last commits, and
                        // never corrupts the file (SQLite's own advice for WAL).
                        sqlx::Executor::execute(conn, "PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let mut migrator = Migrator::with_migrations(migrations(backend));
        // SQLite has no advisory locks; PostgreSQL replicas starting together take turns.
        migrator.locking = backend == Backend::Postgres;
        migrator.run(&pool).await?;
        let reads = match backend {
            Backend::Sqlite => {
                // Write-ahead logging lets readers run beside the one writer, so the read on
                // every sign-in's path does not queue behind the sign-in log's batches. Kept
                // in the file. SQLite answers with the mode in force: without WAL (a memory
                // database, or another process holding the file right now) reader
                // connections would contend with the writer, so reads share its connection.
                let mode: Option<String> = sqlx::query_scalar("PRAGMA journal_mode=WAL")
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
                if mode
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case("wal"))
                {
                    AnyPoolOptions::new()
                        .max_connections(SQLITE_READERS)
                        .connect(&url)
                        .await?
                } else {
                    tracing::debug!(
                        ?mode,
                        "SQLite store: no write-ahead log; reads share the writer's connection"
                    );
                    pool.clone()
                }
            }
            Backend::Postgres => pool.clone(),
        };
        let volatile = match backend {
            Backend::Sqlite => pool.clone(),
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::Executor::execute(conn, "SET synchronous_commit = off").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
        };
        Ok(Self {
            pool,
            reads,
            volatile,
            backend,
            keys: KeyProtection::Unconfigured,
        })
    }

    /// Closes every connection (on SQLite, the last one folds the write-ahead log into the
    /// file).
    pub async fn close(&self) {
        self.reads.close().await;
        self.volatile.close().await;
        self.pool.close().await;
    }

    /// Sets how private keys are kept. With a key-encryption key, call
    /// [`Store::encrypt_plaintext_keys`] once at start to encrypt rows written before.
    pub fn with_key_protection(mut self, keys: KeyProtection) -> Self {
        self.keys = keys;
        self
    }

    /// Encrypts every private key still stored in plaintext (written before a key-encryption
    /// key was configured) and returns how many were.
    pub async fn encrypt_plaintext_keys(&self) -> Result<usize, StoreError> {
        let KeyProtection::Encrypted(kek) = &self.keys else {
            return Err(StoreError::NoKeyEncryptionKey);
        };
        let rows = sqlx::query("SELECT tenant_id, key_der FROM tenant_cas")
            .fetch_all(&self.pool)
            .await?;
        let mut encrypted = 0;
        for row in rows {
            let tenant: String = row.try_get("tenant_id")?;
            let stored: Vec<u8> = row.try_get("key_der")?;
            if is_sealed(&stored) {
                continue;
            }
            let sealed = kek.seal(&stored, &ca_key_context(&tenant))?;
            // Only if nobody else encrypted it meanwhile.
            let result = sqlx::query(
                "UPDATE tenant_cas SET key_der = $1 WHERE tenant_id = $2 AND key_der = $3",
            )
            .bind(sealed)
            .bind(&tenant)
            .bind(stored)
            .execute(&self.pool)
            .await?;
            encrypted += result.rows_affected() as usize;
        }
        Ok(encrypted)
    }

    fn seal_key(&self, tenant: &str, key: &Secret) -> Result<Vec<u8>, StoreError> {
        self.seal_secret(key.expose(), &ca_key_context(tenant))
    }

    /// Seals a secret for a row with the key-encryption key (bound to `context`, so it opens
    /// only there), or keeps it as it is in a development store.
    pub(crate) fn seal_secret(&self, secret: &[u8], context: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.keys {
            KeyProtection::Encrypted(kek) => Ok(kek.seal(secret, context)?),
            KeyProtection::Plaintext => Ok(secret.to_vec()),
            KeyProtection::Unconfigured => Err(StoreError::NoKeyEncryptionKey),
        }
    }

    /// Opens what [`Store::seal_secret`] sealed for `context`.
    pub(crate) fn open_secret(
        &self,
        stored: Vec<u8>,
        context: &[u8],
    ) -> Result<Secret, StoreError> {
        match (&self.keys, is_sealed(&stored)) {
            (KeyProtection::Encrypted(kek), true) => Ok(kek.open(&stored, context)?),
            (KeyProtection::Plaintext, false) => Ok(Secret::new(stored)),
            (KeyProtection::Encrypted(_), false) => Err(StoreError::PlaintextSecret),
            (KeyProtection::Plaintext | KeyProtection::Unconfigured, true)
            | (KeyProtection::Unconfigured, false) => Err(StoreError::NoKeyEncryptionKey),
        }
    }

    fn open_key(&self, tenant: &str, stored: Vec<u8>) -> Result<Secret, StoreError> {
        match (&self.keys, is_sealed(&stored)) {
            (KeyProtection::Encrypted(kek), true) => {
                Ok(kek.open(&stored, &ca_key_context(tenant))?)
            }
            // Dispatchers encrypt plaintext keys at start: one found later was written by
            // someone without the key-encryption key, perhaps to plant a key of their own.
            (KeyProtection::Encrypted(_), false) => {
                Err(StoreError::PlaintextKey(tenant.to_owned()))
            }
            (KeyProtection::Plaintext, false) => Ok(Secret::new(stored)),
            (KeyProtection::Plaintext | KeyProtection::Unconfigured, true)
            | (KeyProtection::Unconfigured, false) => Err(StoreError::NoKeyEncryptionKey),
        }
    }

    /// Whether the database answers a query (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Creates `tenant` unless it exists.
    pub async fn ensure_tenant(&self, tenant: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(tenant)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tenant ids.
    pub async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }

    /// The tenant's CA, if created.
    pub async fn tenant_ca(&self, tenant: &str) -> Result<Option<StoredCa>, StoreError> {
        let row = sqlx::query("SELECT cert_pem, key_der FROM tenant_cas WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| -> Result<StoredCa, StoreError> {
            Ok(StoredCa {
                cert_pem: row.try_get("cert_pem")?,
                key_der: self.open_key(tenant, row.try_get("key_der")?)?,
            })
        })
        .transpose()
    }

    /// The tenant CA's certificate only (PEM), for verifiers that must not hold the key.
    pub async fn tenant_ca_certificate(&self, tenant: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT cert_pem FROM tenant_cas WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("cert_pem")).transpose()?)
    }

    /// Stores the tenant's CA unless one exists; false when another replica stored one first
    /// (read it with [`Store::tenant_ca`] and use that).
    pub async fn insert_tenant_ca(
        &self,
        tenant: &str,
        ca: &StoredCa,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO tenant_cas (tenant_id, cert_pem, key_der, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(&ca.cert_pem)
        .bind(self.seal_key(tenant, &ca.key_der)?)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Records a new enrolment token (by hash).
    pub async fn create_enrolment_token(&self, token: &EnrolmentToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrolment_tokens (token_hash, tenant_id, connector_group, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.token_hash)
        .bind(&token.tenant)
        .bind(&token.connector_group)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enrols an agent: spends the enrolment token with `token_hash` for the agent's tenant and
    /// records the agent and its first certificate, all or nothing. A refused token leaves
    /// nothing behind; of concurrent enrolments with one token exactly one succeeds.
    pub async fn enrol_agent(
        &self,
        token_hash: &str,
        agent: &AgentRecord,
        now: i64,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let spent = sqlx::query(
            "UPDATE enrolment_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND tenant_id = $3 AND connector_group = $4 \
             AND used_at IS NULL AND expires_at > $5",
        )
        .bind(now)
        .bind(token_hash)
        .bind(&agent.tenant)
        .bind(&agent.connector_group)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            drop(tx);
            return Ok(Err(
                match self
                    .check_enrolment_token(token_hash, &agent.tenant, now)
                    .await?
                {
                    // The token is fine for another group: the caller asked for the wrong one.
                    Ok(_) => TokenRefusal::WrongGroup,
                    Err(refusal) => refusal,
                },
            ));
        }
        sqlx::query(
            "INSERT INTO agents (agent_id, tenant_id, connector_group, hostname, version, cert_serial, \
             cert_not_after, public_key_der, hybrid_public_key, enrolled_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
        )
        .bind(&agent.agent_id)
        .bind(&agent.tenant)
        .bind(&agent.connector_group)
        .bind(&agent.hostname)
        .bind(&agent.version)
        .bind(&agent.cert_serial)
        .bind(agent.cert_not_after)
        .bind(agent.public_key_der.clone())
        .bind(agent.hybrid_public_key.clone())
        .bind(agent.enrolled_at)
        .execute(&mut *tx)
        .await?;
        let certificate = AgentCertificate {
            serial: agent.cert_serial.clone(),
            not_after: agent.cert_not_after,
            public_key_der: agent.public_key_der.clone(),
            hybrid_public_key: agent.hybrid_public_key.clone(),
        };
        insert_certificate(&mut tx, &agent.agent_id, &agent.tenant, &certificate, now).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// What the token with `token_hash` would grant `tenant` at `now`, without spending it.
    pub async fn check_enrolment_token(
        &self,
        token_hash: &str,
        tenant: &str,
        now: i64,
    ) -> Result<Result<TokenGrant, TokenRefusal>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant_id, connector_group, used_at, expires_at FROM enrolment_tokens \
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let token_tenant: String = row.try_get("tenant_id")?;
        Ok(if token_tenant != tenant {
            Err(TokenRefusal::WrongTenant)
        } else if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            Err(TokenRefusal::AlreadyUsed)
        } else if row.try_get::<i64, _>("expires_at")? <= now {
            Err(TokenRefusal::Expired)
        } else {
            Ok(TokenGrant {
                tenant: token_tenant,
                connector_group: row.try_get("connector_group")?,
            })
        })
    }

    /// Records a renewal requested over a stream authenticated with the certificate
    /// `presented`: `certificate` becomes the agent's current certificate. The certificates it
    /// replaces stay trusted until the agent first connects with the new one
    /// ([`Store::activate_certificate`]), so a renewal whose answer is lost strands nobody.
    ///
    /// Only a certificate no renewal has superseded may renew (a copy of an old one cannot take
    /// the agent over), and a revoked agent stays revoked and is not renewed, however the
    /// renewal and the revocation interleave.
    pub async fn renew_agent(
        &self,
        agent_id: &str,
        presented: &str,
        certificate: &AgentCertificate,
        version: &str,
        now: i64,
    ) -> Result<Renewal, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row lock taken here orders this renewal against any revocation of the agent.
        let row = sqlx::query(
            "UPDATE agents SET cert_serial = $1, cert_not_after = $2, public_key_der = $3, version = $4, \
             hybrid_public_key = $7 \
             WHERE agent_id = $5 AND revoked_at IS NULL AND EXISTS ( \
                 SELECT 1 FROM agent_certificates c \
                 WHERE c.serial = $6 AND c.agent_id = $5 AND c.superseded_at IS NULL) \
             RETURNING tenant_id",
        )
        .bind(&certificate.serial)
        .bind(certificate.not_after)
        .bind(certificate.public_key_der.clone())
        .bind(version)
        .bind(agent_id)
        .bind(presented)
        .bind(certificate.hybrid_public_key.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            return Ok(match self.agent(agent_id).await? {
                Some(agent) if agent.revoked_at.is_some() => Renewal::Revoked,
                Some(_) => Renewal::Superseded,
                None => Renewal::Unknown,
            });
        };
        let tenant: String = row.try_get("tenant_id")?;
        insert_certificate(&mut tx, agent_id, &tenant, certificate, now).await?;
        tx.commit().await?;
        Ok(Renewal::Renewed)
    }

    /// The agent connected with `serial`: when that is its current certificate, every other
    /// one still standing is superseded at `now` (trusted for the switch-over window, then
    /// refused). Returns how many were.
    pub async fn activate_certificate(
        &self,
        agent_id: &str,
        serial: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE agent_certificates SET superseded_at = $1 \
             WHERE agent_id = $2 AND serial <> $3 AND superseded_at IS NULL \
             AND EXISTS (SELECT 1 FROM agents a WHERE a.agent_id = $2 AND a.cert_serial = $3)",
        )
        .bind(now)
        .bind(agent_id)
        .bind(serial)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// What the store knows about the certificate with `serial`: whose it is, whether a renewal
    /// superseded it, whether its agent is revoked. `None` for a certificate never recorded.
    pub async fn certificate_standing(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateStanding>, StoreError> {
        let row = sqlx::query(
            "SELECT c.agent_id, c.tenant_id, c.issued_at, c.public_key_der, c.hybrid_public_key, \
             c.superseded_at, a.revoked_at \
             FROM agent_certificates c JOIN agents a ON a.agent_id = c.agent_id \
             WHERE c.serial = $1",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(CertificateStanding {
                agent_id: row.try_get("agent_id")?,
                tenant: row.try_get("tenant_id")?,
                issued_at: row.try_get("issued_at")?,
                public_key_der: row.try_get("public_key_der")?,
                hybrid_public_key: row.try_get("hybrid_public_key")?,
                superseded_at: row.try_get("superseded_at")?,
                agent_revoked_at: row.try_get("revoked_at")?,
            })
        })
        .transpose()
    }

    /// Certificates superseded by a renewal at or after `since` (Unix seconds), for replicas
    /// cutting streams that still use one after the switch-over window.
    pub async fn superseded_since(
        &self,
        since: i64,
    ) -> Result<Vec<SupersededCertificate>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_id, serial, superseded_at FROM agent_certificates \
             WHERE superseded_at IS NOT NULL AND superseded_at >= $1 ORDER BY superseded_at",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SupersededCertificate {
                    agent_id: row.try_get("agent_id")?,
                    serial: row.try_get("serial")?,
                    superseded_at: row.try_get("superseded_at")?,
                })
            })
            .collect()
    }

    /// Deletes the records of an agent revoked at or before `revoked_by` (Unix seconds): long
    /// enough ago that every replica has read the revocation and cut its streams. Its
    /// certificates are then unknown, so still refused.
    pub async fn forget_agent(
        &self,
        agent_id: &str,
        revoked_by: i64,
    ) -> Result<Forgotten, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT revoked_at FROM agents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&mut *tx)
            .await?;
        match row
            .map(|r| r.try_get::<Option<i64>, _>("revoked_at"))
            .transpose()?
        {
            None => return Ok(Forgotten::Unknown),
            Some(None) => return Ok(Forgotten::NotRevoked),
            Some(Some(at)) if at > revoked_by => return Ok(Forgotten::TooRecent),
            Some(Some(_)) => {}
        }
        for sql in [
            "DELETE FROM agent_connections WHERE agent_id = $1",
            "DELETE FROM agent_certificates WHERE agent_id = $1",
            "DELETE FROM agents WHERE agent_id = $1",
        ] {
            sqlx::query(sql).bind(agent_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Forgotten::Forgotten)
    }

    /// One agent.
    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(agent_from_row).transpose()?)
    }

    /// Every agent, or a tenant's, by id.
    pub async fn agents(&self, tenant: Option<&str>) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = match tenant {
            Some(tenant) => {
                let sql = format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 ORDER BY agent_id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY agent_id");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(agent_from_row).collect::<Result<_, _>>()?)
    }

    /// Ids of the agents revoked at or after `since` (Unix seconds), for replicas cutting
    /// revoked agents' streams without reading every agent.
    pub async fn revoked_since(&self, since: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_id FROM agents WHERE revoked_at IS NOT NULL AND revoked_at >= $1 \
             ORDER BY agent_id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get("agent_id"))
            .collect::<Result<_, _>>()?)
    }

    /// Revokes the agent, and with it every certificate ever issued to it; `None` if there is
    /// no such agent. Revoking again keeps the first time: revocation is final (a trigger in
    /// both backends refuses any statement that would clear it).
    pub async fn revoke_agent(
        &self,
        agent_id: &str,
        now: i64,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, $1) WHERE agent_id = $2 RETURNING {AGENT_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(agent_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(agent) = row.as_ref().map(agent_from_row).transpose()? else {
            return Ok(None);
        };
        // The audit record of every certificate the agent ever had; trust itself is decided by
        // the agent's revoked_at (see certificate_standing).
        sqlx::query(
            "INSERT INTO revoked_certificates (serial, tenant_id, agent_id, revoked_at) \
             SELECT serial, tenant_id, agent_id, $1 FROM agent_certificates WHERE agent_id = $2 \
             ON CONFLICT (serial) DO NOTHING",
        )
        .bind(now)
        .bind(&agent.agent_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(agent))
    }

    /// Replaces what `dispatcher_id` reports about its agent streams.
    pub async fn report_connections(
        &self,
        dispatcher_id: &str,
        connections: &[AgentConnection],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM agent_connections WHERE dispatcher_id = $1")
            .bind(dispatcher_id)
            .execute(&mut *tx)
            .await?;
        for c in connections {
            sqlx::query(
                "INSERT INTO agent_connections (agent_id, dispatcher_id, in_flight, last_heartbeat) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&c.agent_id)
            .bind(dispatcher_id)
            .bind(c.in_flight)
            .bind(c.last_heartbeat)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Live connections reported with a heartbeat at or after `since`, by agent and replica.
    pub async fn connections(&self, since: i64) -> Result<Vec<AgentConnection>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_id, dispatcher_id, in_flight, last_heartbeat FROM agent_connections \
             WHERE last_heartbeat >= $1 ORDER BY agent_id, dispatcher_id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AgentConnection {
                    agent_id: row.try_get("agent_id")?,
                    dispatcher_id: row.try_get("dispatcher_id")?,
                    in_flight: row.try_get("in_flight")?,
                    last_heartbeat: row.try_get("last_heartbeat")?,
                })
            })
            .collect()
    }
}

impl Store {
    /// Records sign-in attempts on the writer's connection `held`, with one multi-row
    /// statement per [`SIGNIN_ROWS_PER_STATEMENT`] entries, all in one transaction (one disk
    /// sync for many).
    pub async fn log_signins(
        &self,
        held: &mut WriterConnection,
        entries: &[SigninEntry],
    ) -> Result<(), StoreError> {
        self.on_writer_connection(held, &self.pool, async |conn| {
            if entries.len() <= SIGNIN_ROWS_PER_STATEMENT {
                // One statement is a transaction of its own.
                return insert_signins(conn, self.backend, entries).await;
            }
            let mut tx = sqlx::Connection::begin(conn).await?;
            for chunk in entries.chunks(SIGNIN_ROWS_PER_STATEMENT) {
                insert_signins(&mut tx, self.backend, chunk).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Runs `work` on a background writer's connection `held`, taken from `pool` when it holds
    /// none, and then keeps it (PostgreSQL), gives it back (SQLite, whose pool's one connection
    /// is everyone's) or, after an error, closes it ([`WriterConnection`]).
    async fn on_writer_connection<T>(
        &self,
        held: &mut WriterConnection,
        pool: &AnyPool,
        work: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = match held.get(pool).await {
            Ok(conn) => work(conn).await,
            Err(err) => Err(err),
        };
        held.done(&result, self.backend == Backend::Postgres);
        result
    }

    /// Records one sign-in attempt.
    pub async fn log_signin(&self, entry: &SigninEntry) -> Result<(), StoreError> {
        self.log_signins(
            &mut WriterConnection::default(),
            std::slice::from_ref(entry),
        )
        .await
    }

    /// Sign-ins matching `filter`, newest first.
    pub async fn signins(&self, filter: &SigninFilter) -> Result<Vec<SigninEntry>, StoreError> {
        // Every filter is a bound parameter; an unset one matches everything.
        let rows = sqlx::query(
            "SELECT at, tenant_id, username, upn, client_id, client_ip, familiar_location, \
             outcome, error_code, agent_id, latency_ms, lockout, policies, mfa FROM signin_log \
             WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR LOWER(username) = LOWER($2)) \
             AND ($3 = '' OR client_id = $3) AND ($4 = '' OR outcome = $4) \
             AND at >= $5 AND at < $6 ORDER BY at DESC, id DESC LIMIT $7",
        )
        .bind(filter.tenant.clone().unwrap_or_default())
        .bind(filter.username.clone().unwrap_or_default())
        .bind(filter.client_id.clone().unwrap_or_default())
        .bind(filter.outcome.clone().unwrap_or_default())
        .bind(filter.since.unwrap_or(i64::MIN))
        .bind(filter.until.unwrap_or(i64::MAX))
        .bind(if filter.limit > 0 { filter.limit } else { 1000 })
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SigninEntry {
                    at: row.try_get("at")?,
                    tenant: row.try_get("tenant_id")?,
                    username: row.try_get("username")?,
                    upn: row.try_get("upn")?,
                    client_id: row.try_get("client_id")?,
                    client_ip: row.try_get("client_ip")?,
                    familiar_location: row.try_get::<i64, _>("familiar_location")? != 0,
                    outcome: row.try_get("outcome")?,
                    error_code: row.try_get("error_code")?,
                    agent_id: row.try_get("agent_id")?,
                    latency_ms: row.try_get("latency_ms")?,
                    lockout: row.try_get("lockout")?,
                    policies: row.try_get("policies")?,
                    mfa: row.try_get("mfa")?,
                })
            })
            .collect()
    }

    /// Deletes sign-ins older than `before` (Unix seconds); returns how many.
    pub async fn prune_signins(&self, before: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM signin_log WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

/// Rows per sign-in log `INSERT` (14 parameters each: well under SQLite's and PostgreSQL's
/// parameter limits).
pub const SIGNIN_ROWS_PER_STATEMENT: usize = 100;

async fn insert_signins(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    entries: &[SigninEntry],
) -> Result<(), StoreError> {
    // Audited: the text holds only the fixed columns and placeholders; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(signins_statement(
        backend,
        entries.len(),
    )));
    for entry in entries {
        query = query
            .bind(entry.at)
            .bind(&entry.tenant)
            .bind(&entry.username)
            .bind(&entry.upn)
            .bind(&entry.client_id)
            .bind(&entry.client_ip)
            .bind(i64::from(entry.familiar_location))
            .bind(&entry.outcome)
            .bind(&entry.error_code)
            .bind(&entry.agent_id)
            .bind(entry.latency_ms)
            .bind(&entry.lockout)
            .bind(&entry.policies)
            .bind(&entry.mfa);
    }
    query.execute(conn).await?;
    Ok(())
}

/// The text of [`insert_signins`]'s statement for `rows` entries, built once per backend and
/// number of rows.
fn signins_statement(backend: Backend, rows: usize) -> std::sync::Arc<str> {
    use std::fmt::Write as _;

    const COLUMNS: usize = 14;
    static TEXTS: StatementTexts<(Backend, usize)> = StatementTexts::new();
    TEXTS.get((backend, rows), || {
        let mut sql = String::from(
            "INSERT INTO signin_log (at, tenant_id, username, upn, client_id, client_ip, \
             familiar_location, outcome, error_code, agent_id, latency_ms, lockout, policies, \
             mfa) VALUES ",
        );
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..COLUMNS {
                if column > 0 {
                    sql.push_str(", ");
                }
                // SQLite looks a numbered parameter's name up by a linear scan, and sqlx asks
                // for every parameter's name: with 1,400 of them that is most of the
                // statement's cost. Anonymous parameters (bound in order, as here) have no
                // name to scan for.
                match backend {
                    Backend::Sqlite => sql.push('?'),
                    Backend::Postgres => {
                        let _ = write!(sql, "${}", row * COLUMNS + column + 1);
                    }
                }
            }
            sql.push(')');
        }
        sql
    })
}

/// Statement texts built once each, by key: a multi-row statement's text for each number of
/// rows (bounded by the statement's most rows), built on first use and shared after.
pub(crate) struct StatementTexts<K> {
    texts: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<K, std::sync::Arc<str>>>>,
}

impl<K: std::hash::Hash + Eq> StatementTexts<K> {
    /// None built yet.
    pub(crate) const fn new() -> Self {
        Self {
            texts: std::sync::LazyLock::new(std::sync::Mutex::default),
        }
    }

    /// The text for `key`, built by `build` the first time.
    pub(crate) fn get(&self, key: K, build: impl FnOnce() -> String) -> std::sync::Arc<str> {
        let mut texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        std::sync::Arc::clone(texts.entry(key).or_insert_with(|| build().into()))
    }
}

/// The associated data a tenant CA key is sealed with: it opens only in its own row.
fn ca_key_context(tenant: &str) -> Vec<u8> {
    format!("tenant_cas.key_der:{tenant}").into_bytes()
}

/// Creates the SQLite file of `url` with mode 0600 if it is missing, and refuses one that group
/// or others may read: it holds tenant CAs and every agent's record. SQLite gives its journal
/// and write-ahead log the database file's mode.
fn secure_sqlite_file(url: &str) -> std::io::Result<()> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return Ok(()); // in memory
    }
    let path = std::path::Path::new(path);
    if !path.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("creating {}: {err}", path.display()),
                ));
            }
        }
    }
    passage_credentials::secret_file::check_permissions(path)
}

async fn insert_certificate(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    agent_id: &str,
    tenant: &str,
    certificate: &AgentCertificate,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_certificates \
         (serial, agent_id, tenant_id, issued_at, not_after, public_key_der, hybrid_public_key, \
          superseded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
    )
    .bind(&certificate.serial)
    .bind(agent_id)
    .bind(tenant)
    .bind(now)
    .bind(certificate.not_after)
    .bind(certificate.public_key_der.clone())
    .bind(certificate.hybrid_public_key.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite(dir: &tempfile::TempDir) -> (Store, String) {
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        (Store::open(&url).await.unwrap(), url)
    }

    #[tokio::test]
    async fn no_statement_can_clear_or_move_a_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = sqlite(&dir).await;
        store.ensure_tenant("default", 1).await.unwrap();
        store
            .create_enrolment_token(&EnrolmentToken {
                token_hash: "t".into(),
                tenant: "default".into(),
                connector_group: "corp".into(),
                created_at: 1,
                expires_at: 100,
            })
            .await
            .unwrap();
        let agent = AgentRecord {
            agent_id: "a".into(),
            tenant: "default".into(),
            connector_group: "corp".into(),
            hostname: "h".into(),
            version: "v".into(),
            cert_serial: "01".into(),
            cert_not_after: 100,
            public_key_der: vec![0x30],
            hybrid_public_key: None,
            enrolled_at: 1,
            revoked_at: None,
        };
        store.enrol_agent("t", &agent, 2).await.unwrap().unwrap();
        store.revoke_agent("a", 5).await.unwrap().unwrap();
        for sql in [
            "UPDATE agents SET revoked_at = NULL WHERE agent_id = 'a'",
            "UPDATE agents SET revoked_at = 9 WHERE agent_id = 'a'",
        ] {
            let err = sqlx::query(sql).execute(&store.pool).await.unwrap_err();
            assert!(err.to_string().contains("revocation is final"), "{err}");
        }
        assert_eq!(store.agent("a").await.unwrap().unwrap().revoked_at, Some(5));
    }

    #[tokio::test]
    async fn upgrading_restores_revocations_a_racing_renewal_had_undone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        sqlx::any::install_default_drivers();
        // A store of version 2, where a renewal wrote revoked_at back to NULL after the agent
        // was revoked: only the revocation list still says so.
        let pool = AnyPoolOptions::new().connect(&url).await.unwrap();
        let mut old = Migrator::with_migrations(migrations(Backend::Sqlite)[..2].to_vec());
        old.locking = false;
        old.run(&pool).await.unwrap();
        for sql in [
            "INSERT INTO tenants (id, created_at) VALUES ('default', 1)",
            "INSERT INTO agents (agent_id, tenant_id, connector_group, hostname, version, cert_serial, \
             cert_not_after, public_key_der, enrolled_at, revoked_at) \
             VALUES ('resurrected', 'default', 'corp', 'h', 'v', '02', 100, x'30', 1, NULL)",
            "INSERT INTO agents (agent_id, tenant_id, connector_group, hostname, version, cert_serial, \
             cert_not_after, public_key_der, enrolled_at, revoked_at) \
             VALUES ('fine', 'default', 'corp', 'h', 'v', '03', 100, x'30', 1, NULL)",
            "INSERT INTO revoked_certificates (serial, tenant_id, agent_id, revoked_at) \
             VALUES ('01', 'default', 'resurrected', 7)",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        pool.close().await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join("old.db");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let store = Store::open(&format!("sqlite://{}", dir.path().join("old.db").display()))
            .await
            .unwrap();
        assert_eq!(
            store
                .agent("resurrected")
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(7)
        );
        assert_eq!(store.agent("fine").await.unwrap().unwrap().revoked_at, None);
        // Their current certificates are recorded, with the key they certify.
        let standing = store.certificate_standing("03").await.unwrap().unwrap();
        assert_eq!(standing.public_key_der, vec![0x30]);
        assert!(
            store
                .certificate_standing("02")
                .await
                .unwrap()
                .unwrap()
                .agent_revoked_at
                .is_some()
        );
    }

    #[tokio::test]
    async fn ca_keys_are_encrypted_at_rest_and_old_rows_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let (store, url) = sqlite(&dir).await;
        let key = Secret::new(b"0\x81\x87 pkcs8 key bytes".to_vec());
        let ca = |key: &Secret| StoredCa {
            cert_pem: "cert".into(),
            key_der: key.clone(),
        };
        store.ensure_tenant("old", 1).await.unwrap();
        store.ensure_tenant("new", 1).await.unwrap();
        // Without a decision about keys, none is written or read.
        assert!(matches!(
            store.insert_tenant_ca("old", &ca(&key), 1).await,
            Err(StoreError::NoKeyEncryptionKey)
        ));
        // Development: plaintext.
        let plain = store.clone().with_key_protection(KeyProtection::Plaintext);
        assert!(plain.insert_tenant_ca("old", &ca(&key), 1).await.unwrap());
        let raw = |store: &Store, tenant: &'static str| {
            let pool = store.pool.clone();
            async move {
                let row = sqlx::query("SELECT key_der FROM tenant_cas WHERE tenant_id = $1")
                    .bind(tenant)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                row.try_get::<Vec<u8>, _>("key_der").unwrap()
            }
        };
        assert_eq!(raw(&store, "old").await, key.expose());

        // Production: a key-encryption key; the old row is encrypted at start.
        let kek = KeyEncryptionKey::generate().unwrap();
        let sealed = Store::open(&url)
            .await
            .unwrap()
            .with_key_protection(KeyProtection::Encrypted(kek.clone()));
        assert_eq!(sealed.encrypt_plaintext_keys().await.unwrap(), 1);
        assert_eq!(sealed.encrypt_plaintext_keys().await.unwrap(), 0);
        assert!(sealed.insert_tenant_ca("new", &ca(&key), 1).await.unwrap());
        for tenant in ["old", "new"] {
            let stored = raw(&sealed, tenant).await;
            assert!(is_sealed(&stored), "{tenant}");
            assert!(
                !stored.windows(8).any(|w| w == &key.expose()[..8]),
                "{tenant}: plaintext in the row"
            );
            assert_eq!(
                sealed
                    .tenant_ca(tenant)
                    .await
                    .unwrap()
                    .unwrap()
                    .key_der
                    .expose(),
                key.expose()
            );
        }
        // A plaintext key planted later (by someone without the key) is refused, not used.
        plain.ensure_tenant("planted", 1).await.unwrap();
        assert!(
            plain
                .insert_tenant_ca("planted", &ca(&key), 1)
                .await
                .unwrap()
        );
        let planted = sealed.tenant_ca("planted").await;
        assert!(
            matches!(planted, Err(StoreError::PlaintextKey(_))),
            "{planted:?}"
        );
        // Without the key, or with another, encrypted rows do not open.
        assert!(matches!(
            plain.tenant_ca("new").await,
            Err(StoreError::NoKeyEncryptionKey)
        ));
        let other = store.with_key_protection(KeyProtection::Encrypted(
            KeyEncryptionKey::generate().unwrap(),
        ));
        assert!(matches!(
            other.tenant_ca("new").await,
            Err(StoreError::KeyEncryption(_))
        ));
    }
}

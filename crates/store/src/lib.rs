//! All durable and shared state behind one interface.
//!
//! [`Store::open`] takes a URL: `sqlite://path/passage.db` (the default: an embedded file, no
//! server) or `postgres://user@host/db` (several replicas share one database). Both run the
//! same queries through sqlx's `Any` driver; only the schema files differ (column types), and
//! both are migrated, versioned, on open. The same test suite runs against both.
//!
//! What lives here: tenants and their CAs, enrolment tokens (only their hashes), agents and
//! their certificates, revocations. Never a password, and never an enrolment token itself.

use std::borrow::Cow;

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
    #[error("unsupported store URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("store migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
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
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Enrolled, Unix seconds.
    pub enrolled_at: i64,
    /// Revoked, Unix seconds.
    pub revoked_at: Option<i64>,
}

/// The schema, version by version; a released migration never changes.
fn migrations(backend: Backend) -> Vec<Migration> {
    let files: [(i64, &str, &'static str, &'static str); 2] = [
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

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

const AGENT_COLUMNS: &str = "agent_id, tenant_id, connector_group, hostname, version, cert_serial, \
                             cert_not_after, public_key_der, enrolled_at, revoked_at";

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
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let url = match backend {
            // Create the file on first open.
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // SQLite serialises writers anyway; one connection avoids SQLITE_BUSY.
                Backend::Sqlite => 1,
                Backend::Postgres => 8,
            })
            .connect(&url)
            .await?;
        let mut migrator = Migrator::with_migrations(migrations(backend));
        // SQLite has no advisory locks; PostgreSQL replicas starting together take turns.
        migrator.locking = backend == Backend::Postgres;
        migrator.run(&pool).await?;
        Ok(Self { pool, backend })
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
        row.map(|row| {
            Ok(StoredCa {
                cert_pem: row.try_get("cert_pem")?,
                key_der: Secret::new(row.try_get("key_der")?),
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
        .bind(ca.key_der.expose().to_vec())
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

    /// Uses the token with `token_hash` for `tenant` once: the first caller before expiry gets
    /// the grant, everyone else a refusal saying why. Atomic across replicas.
    pub async fn redeem_enrolment_token(
        &self,
        token_hash: &str,
        tenant: &str,
        now: i64,
    ) -> Result<Result<TokenGrant, TokenRefusal>, StoreError> {
        let redeemed = sqlx::query(
            "UPDATE enrolment_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND tenant_id = $3 AND used_at IS NULL AND expires_at > $4 \
             RETURNING tenant_id, connector_group",
        )
        .bind(now)
        .bind(token_hash)
        .bind(tenant)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = redeemed {
            return Ok(Ok(TokenGrant {
                tenant: row.try_get("tenant_id")?,
                connector_group: row.try_get("connector_group")?,
            }));
        }
        let row =
            sqlx::query("SELECT tenant_id, used_at FROM enrolment_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        Ok(Err(if row.try_get::<String, _>("tenant_id")? != tenant {
            TokenRefusal::WrongTenant
        } else if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            TokenRefusal::AlreadyUsed
        } else {
            TokenRefusal::Expired
        }))
    }

    /// Inserts or replaces an agent's record (enrolment, renewal).
    pub async fn save_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (agent_id, tenant_id, connector_group, hostname, version, cert_serial, \
             cert_not_after, public_key_der, enrolled_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (agent_id) DO UPDATE SET tenant_id = excluded.tenant_id, \
             connector_group = excluded.connector_group, hostname = excluded.hostname, \
             version = excluded.version, cert_serial = excluded.cert_serial, \
             cert_not_after = excluded.cert_not_after, public_key_der = excluded.public_key_der, \
             revoked_at = excluded.revoked_at",
        )
        .bind(&agent.agent_id)
        .bind(&agent.tenant)
        .bind(&agent.connector_group)
        .bind(&agent.hostname)
        .bind(&agent.version)
        .bind(&agent.cert_serial)
        .bind(agent.cert_not_after)
        .bind(agent.public_key_der.clone())
        .bind(agent.enrolled_at)
        .bind(agent.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    /// Revokes the agent and its current certificate; `None` if there is no such agent.
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
        sqlx::query(
            "INSERT INTO revoked_certificates (serial, tenant_id, agent_id, revoked_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (serial) DO NOTHING",
        )
        .bind(&agent.cert_serial)
        .bind(&agent.tenant)
        .bind(&agent.agent_id)
        .bind(now)
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

    /// Whether the certificate with `serial` was revoked.
    pub async fn is_revoked(&self, serial: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT serial FROM revoked_certificates WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

//! Smart lockout's shared state: one row per user holding both location scopes' counters (so
//! a decision spanning both is one atomic update), and the networks each user signed in from.
//! The decisions themselves live in `passage-lockout`; these are its atomic steps.

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use sqlx::Row;

use crate::{Backend, StatementTexts, Store, StoreError, batching::WriterConnection};

/// Where a sign-in comes from, for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockoutScope {
    /// A network the user signed in from successfully before.
    Familiar,
    /// Anywhere else, or no client IP reported.
    Unfamiliar,
}

impl LockoutScope {
    /// The scope's name in the sign-in log.
    pub fn as_str(self) -> &'static str {
        match self {
            LockoutScope::Familiar => "familiar",
            LockoutScope::Unfamiliar => "unfamiliar",
        }
    }

    /// The other scope.
    pub fn other(self) -> Self {
        match self {
            LockoutScope::Familiar => LockoutScope::Unfamiliar,
            LockoutScope::Unfamiliar => LockoutScope::Familiar,
        }
    }
}

/// One scope's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeCounter {
    /// Failures counted.
    pub failures: i64,
    /// When the last one was counted, Unix seconds.
    pub last_failure_at: i64,
    /// Attempts sent towards the directory and not answered yet.
    pub pending: i64,
    /// Until when those may be outstanding at most, Unix seconds (after that they are
    /// forgotten: the gateway that sent them is gone).
    pub pending_until: i64,
    /// Locked out until, Unix seconds (0: never).
    pub locked_until: i64,
    /// Lockouts since the last success (each lasts longer).
    pub lockouts: i64,
}

/// Both scopes' counters of one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserCounters {
    /// From familiar networks.
    pub familiar: ScopeCounter,
    /// From anywhere else.
    pub unfamiliar: ScopeCounter,
    /// Familiar failures the directory may still hold (not started again by a familiar
    /// lockout, unlike `familiar.failures`), since `familiar.last_failure_at`.
    pub familiar_standing: i64,
}

impl UserCounters {
    /// The counter of `scope`.
    pub fn scope(&self, scope: LockoutScope) -> &ScopeCounter {
        match scope {
            LockoutScope::Familiar => &self.familiar,
            LockoutScope::Unfamiliar => &self.unfamiliar,
        }
    }
}

/// What the store knows about one user for smart lockout, read in one query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockoutState {
    /// The user's counters (all zero when the user has none).
    pub counters: UserCounters,
    /// When the asked-for network was last seen for the user, if at or after the bound.
    pub network_last_seen: Option<i64>,
}

/// How an outstanding attempt ends, for [`Store::settle_lockout_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The password was right: every failure and lockout count starts again (a lockout in
    /// force elsewhere stays).
    Success,
    /// `failures` failed binds are counted (0: nothing reached the directory); a count whose
    /// last failure was at or before `expired_before` starts again (the familiar standing
    /// count: at or before `standing_expired_before`, the directory's memory).
    Failures {
        /// How many.
        failures: i64,
        /// The count's expiry bound.
        expired_before: i64,
        /// The familiar standing count's expiry bound.
        standing_expired_before: i64,
    },
}

/// One update of a user's lockout row, for [`Store::run_lockout_ops`].
#[derive(Debug, Clone)]
pub enum LockoutOp {
    /// As [`Store::reserve_lockout_attempt`]: returns the counters.
    Reserve {
        /// Tenant.
        tenant: String,
        /// The user's key.
        user_key: String,
        /// The attempt's scope.
        scope: LockoutScope,
        /// Now, Unix seconds.
        now: i64,
        /// Outstanding until at most.
        until: i64,
    },
    /// As [`Store::settle_lockout_attempt`]: returns the counters after failures.
    Settle {
        /// Tenant.
        tenant: String,
        /// The user's key.
        user_key: String,
        /// The attempt's scope.
        scope: LockoutScope,
        /// How it ended.
        end: AttemptEnd,
        /// Now, Unix seconds.
        now: i64,
    },
    /// As [`Store::lock_out`]: returns the counters when it locked.
    LockOut {
        /// Tenant.
        tenant: String,
        /// The user's key.
        user_key: String,
        /// The scope locked.
        scope: LockoutScope,
        /// Locked until.
        until: i64,
        /// Whether the count starts again.
        restart: bool,
        /// Now, Unix seconds.
        now: i64,
    },
}

impl LockoutOp {
    /// The row it touches.
    pub fn user(&self) -> (&str, &str) {
        match self {
            LockoutOp::Reserve {
                tenant, user_key, ..
            }
            | LockoutOp::Settle {
                tenant, user_key, ..
            }
            | LockoutOp::LockOut {
                tenant, user_key, ..
            } => (tenant, user_key),
        }
    }
}

/// Runs one update on `conn` (a connection, or a transaction).
async fn run_op(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    op: &LockoutOp,
) -> Result<Option<UserCounters>, StoreError> {
    match op {
        // Reservations and successes share the multi-row statement of a batch, one row here.
        LockoutOp::Reserve { scope, .. } => {
            let mut result = [None];
            upsert_many(
                conn,
                backend,
                *scope,
                std::slice::from_ref(op),
                &[0],
                &mut result,
            )
            .await?;
            Ok(result[0])
        }
        LockoutOp::Settle {
            scope,
            end: AttemptEnd::Success,
            ..
        } => {
            let ops = std::slice::from_ref(op);
            upsert_many(conn, backend, *scope, ops, &[0], &mut [None]).await?;
            Ok(None)
        }
        LockoutOp::Settle {
            tenant,
            user_key,
            scope,
            end:
                AttemptEnd::Failures {
                    failures,
                    expired_before,
                    standing_expired_before,
                },
            now,
        } => {
            let statement = statements(*scope).failures.as_str();
            let mut query = sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(tenant)
                .bind(user_key)
                .bind(now)
                .bind(failures)
                .bind(expired_before);
            if *scope == LockoutScope::Familiar {
                query = query.bind(standing_expired_before);
            }
            let row = query.fetch_one(&mut *conn).await?;
            counters_from_row(&row).map(Some)
        }
        LockoutOp::LockOut {
            tenant,
            user_key,
            scope,
            until,
            restart,
            now,
        } => {
            let row = sqlx::query(sqlx::AssertSqlSafe(statements(*scope).lock_out.as_str()))
                .bind(tenant)
                .bind(user_key)
                .bind(until)
                .bind(i64::from(*restart))
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?;
            row.map(|row| counters_from_row(&row)).transpose()
        }
    }
}

/// Most users in one statement (on SQLite, 4 parameters each).
const MAX_ROWS_PER_STATEMENT: usize = 256;

/// The reservations and successes `indexes` of `ops` (all in `scope`, each of another user, in
/// the order of their users) in one upsert; the counters after each reservation go to
/// `results`.
///
/// A row's inserted `{scope}_pending` tells the two apart, and is what a user without a row
/// starts with either way: 1 for a reservation (one attempt outstanding), 0 for a success
/// (none). A success also clears both scopes' failures and lockouts. One statement whose
/// rows are in user order takes its row locks in that order, so replicas writing batches
/// that share users wait for each other and never deadlock.
///
/// On PostgreSQL the rows travel as four arrays, so that every batch runs the same prepared
/// statement whatever its size, and only reservations' counters come back, each with its
/// row's position (a success's serve nobody). SQLite, which has no arrays, gets a statement
/// with a row of parameters per user, and answers for every row, by user.
async fn upsert_many(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    scope: LockoutScope,
    ops: &[LockoutOp],
    indexes: &[usize],
    results: &mut [Option<UserCounters>],
) -> Result<(), StoreError> {
    let now = indexes
        .iter()
        .map(|&i| match &ops[i] {
            LockoutOp::Reserve { now, .. }
            | LockoutOp::Settle { now, .. }
            | LockoutOp::LockOut { now, .. } => *now,
        })
        .max()
        .unwrap_or(0);
    let rows_of = |index: usize| {
        let (tenant, user_key) = ops[index].user();
        let (pending, until) = match &ops[index] {
            LockoutOp::Reserve { until, .. } => (1_i64, *until),
            _ => (0, 0),
        };
        (tenant, user_key, pending, until)
    };
    match backend {
        Backend::Postgres => {
            let mut arrays = [const { String::new() }; 4];
            for (position, &index) in indexes.iter().enumerate() {
                let (tenant, user_key, pending, until) = rows_of(index);
                let separator = if position == 0 { "" } else { "," };
                for array in &mut arrays {
                    array.push_str(separator);
                }
                push_array_text(&mut arrays[0], tenant);
                push_array_text(&mut arrays[1], user_key);
                let _ = write!(arrays[2], "{pending}");
                let _ = write!(arrays[3], "{until}");
            }
            let mut query =
                sqlx::query(sqlx::AssertSqlSafe(statements(scope).upsert.as_str())).bind(now);
            for array in arrays {
                query = query.bind(format!("{{{array}}}"));
            }
            for row in query.fetch_all(&mut *conn).await? {
                let position: i64 = row.try_get(0)?;
                let index = usize::try_from(position)
                    .ok()
                    .and_then(|position| indexes.get(position.checked_sub(1)?))
                    .ok_or(StoreError::Batch(format!(
                        "lockout upsert answered for row {position} of {}",
                        indexes.len()
                    )))?;
                results[*index] = Some(counters_from_row_at(&row, 1)?);
            }
        }
        Backend::Sqlite => {
            // Audited: the text holds only fixed column names (of the two scopes) and
            // numbered placeholders; every value is bound.
            let sql = sqlite_upsert_statement(scope, indexes.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for &index in indexes {
                let (tenant, user_key, pending, until) = rows_of(index);
                query = query
                    .bind(tenant.to_owned())
                    .bind(user_key.to_owned())
                    .bind(pending)
                    .bind(until);
            }
            for row in query.fetch_all(&mut *conn).await? {
                let tenant: String = row.try_get(0)?;
                let user_key: String = row.try_get(1)?;
                if let Some(&index) = indexes.iter().find(|&&i| {
                    matches!(ops[i], LockoutOp::Reserve { .. })
                        && ops[i].user() == (tenant.as_str(), user_key.as_str())
                }) {
                    results[index] = Some(counters_from_row_at(&row, 2)?);
                }
            }
        }
    }
    Ok(())
}

/// Appends `value` to a PostgreSQL array literal as one quoted element (backslash and double
/// quote escaped: the literal syntax's whole quoting rule).
fn push_array_text(array: &mut String, value: &str) {
    array.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            array.push('\\');
        }
        array.push(c);
    }
    array.push('"');
}

/// The SQLite text of [`upsert_many`]'s statement for `rows` users, built once per scope and
/// number of rows.
fn sqlite_upsert_statement(scope: LockoutScope, rows: usize) -> Arc<str> {
    static TEXTS: StatementTexts<(LockoutScope, usize)> = StatementTexts::new();
    TEXTS.get((scope, rows), || {
        let mut sql = format!(
            "INSERT INTO lockout_users ({}) VALUES ",
            upsert_columns(scope)
        );
        for row in 0..rows {
            let first = 2 + row * 4;
            if row > 0 {
                sql.push_str(", ");
            }
            let _ = write!(
                sql,
                "(${first}, ${}, ${}, ${}, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
                first + 1,
                first + 2,
                first + 3
            );
        }
        let _ = write!(
            sql,
            " {} RETURNING tenant_id, user_key, {COUNTER_COLUMNS}",
            on_conflict(scope)
        );
        sql
    })
}

/// The columns an upsert in `scope` inserts: the user, its four values, zeros.
fn upsert_columns(scope: LockoutScope) -> String {
    let (name, other) = (scope.as_str(), scope.other().as_str());
    format!(
        "tenant_id, user_key, {name}_pending, {name}_pending_until, \
         {name}_failures, {name}_last_failure_at, {name}_locked_until, {name}_lockouts, \
         {other}_failures, {other}_last_failure_at, {other}_pending, {other}_pending_until, \
         {other}_locked_until, {other}_lockouts"
    )
}

/// What an upsert in `scope` does to a user's existing row (`$1`: now).
fn on_conflict(scope: LockoutScope) -> String {
    let name = scope.as_str();
    let reserving = format!("excluded.{name}_pending = 1");
    let succeeded = format!("excluded.{name}_pending = 0");
    let cleared = |column: &str| {
        format!("{column} = CASE WHEN {succeeded} THEN 0 ELSE lockout_users.{column} END")
    };
    format!(
        "ON CONFLICT (tenant_id, user_key) DO UPDATE SET \
         {name}_pending = CASE WHEN {reserving} THEN \
             CASE WHEN lockout_users.{name}_pending_until <= $1 THEN 1 \
             ELSE lockout_users.{name}_pending + 1 END \
         ELSE \
             CASE WHEN lockout_users.{name}_pending > 0 AND lockout_users.{name}_pending_until > $1 \
             THEN lockout_users.{name}_pending - 1 ELSE 0 END \
         END, \
         {name}_pending_until = CASE WHEN {reserving} AND excluded.{name}_pending_until > \
         lockout_users.{name}_pending_until THEN excluded.{name}_pending_until \
         ELSE lockout_users.{name}_pending_until END, \
         {}, {}, {}, {}, {}",
        cleared("familiar_failures"),
        cleared("unfamiliar_failures"),
        cleared("familiar_lockouts"),
        cleared("unfamiliar_lockouts"),
        cleared("familiar_standing"),
    )
}

const COUNTER_COLUMNS: &str = "familiar_failures, familiar_last_failure_at, familiar_pending, \
     familiar_pending_until, familiar_locked_until, familiar_lockouts, unfamiliar_failures, \
     unfamiliar_last_failure_at, unfamiliar_pending, unfamiliar_pending_until, \
     unfamiliar_locked_until, unfamiliar_lockouts, familiar_standing";

/// The statements that touch one scope's columns, one text per scope (column names cannot be
/// bound parameters; these come only from the two fixed scope names).
struct ScopeStatements {
    failures: String,
    lock_out: String,
    /// [`upsert_many`]'s on PostgreSQL: the rows as arrays of tenants, users, pending
    /// values and their bounds (`$2` to `$5`, array literals in text), answering for
    /// reservations with their rows' positions (from 1).
    upsert: String,
}

impl ScopeStatements {
    fn new(scope: LockoutScope) -> Self {
        let returned = COUNTER_COLUMNS
            .split(", ")
            .map(|column| format!("u.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let upsert = format!(
            "WITH v AS (SELECT * FROM unnest($2::TEXT::TEXT[], $3::TEXT::TEXT[], \
             $4::TEXT::BIGINT[], $5::TEXT::BIGINT[]) WITH ORDINALITY \
             AS v (tenant_id, user_key, pending, until, position)), \
             u AS (INSERT INTO lockout_users ({}) \
             SELECT tenant_id, user_key, pending, until, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 \
             FROM v ORDER BY position {} RETURNING tenant_id, user_key, {COUNTER_COLUMNS}) \
             SELECT v.position, {returned} FROM u JOIN v \
             ON v.tenant_id = u.tenant_id AND v.user_key = u.user_key WHERE v.pending = 1",
            upsert_columns(scope),
            on_conflict(scope),
        );
        // The familiar standing count follows the familiar failures, with its own expiry ($6).
        let standing = match scope {
            LockoutScope::Familiar => {
                "familiar_standing = CASE WHEN familiar_last_failure_at <= $6 THEN $4 \
                 ELSE familiar_standing + $4 END, "
            }
            LockoutScope::Unfamiliar => "",
        };
        let scope = scope.as_str();
        // One outstanding attempt fewer (never below zero; forgotten ones are gone already).
        let done = format!(
            "{scope}_pending = CASE WHEN {scope}_pending > 0 AND {scope}_pending_until > $3 \
             THEN {scope}_pending - 1 ELSE 0 END"
        );
        Self {
            failures: format!(
                "UPDATE lockout_users SET {done}, {standing}\
                 {scope}_failures = CASE WHEN {scope}_last_failure_at <= $5 THEN $4 \
                 ELSE {scope}_failures + $4 END, \
                 {scope}_last_failure_at = CASE WHEN $4 > 0 THEN $3 ELSE {scope}_last_failure_at END \
                 WHERE tenant_id = $1 AND user_key = $2 RETURNING {COUNTER_COLUMNS}"
            ),
            lock_out: format!(
                "UPDATE lockout_users SET {scope}_locked_until = $3, \
                 {scope}_lockouts = {scope}_lockouts + 1, \
                 {scope}_failures = CASE WHEN $4 = 1 THEN 0 ELSE {scope}_failures END \
                 WHERE tenant_id = $1 AND user_key = $2 AND {scope}_locked_until <= $5 \
                 RETURNING {COUNTER_COLUMNS}"
            ),
            upsert,
        }
    }
}

fn statements(scope: LockoutScope) -> &'static ScopeStatements {
    static FAMILIAR: std::sync::LazyLock<ScopeStatements> =
        std::sync::LazyLock::new(|| ScopeStatements::new(LockoutScope::Familiar));
    static UNFAMILIAR: std::sync::LazyLock<ScopeStatements> =
        std::sync::LazyLock::new(|| ScopeStatements::new(LockoutScope::Unfamiliar));
    match scope {
        LockoutScope::Familiar => &FAMILIAR,
        LockoutScope::Unfamiliar => &UNFAMILIAR,
    }
}

/// The counters of a row whose first columns are [`COUNTER_COLUMNS`], in that order.
fn counters_from_row(row: &sqlx::any::AnyRow) -> Result<UserCounters, StoreError> {
    counters_from_row_at(row, 0)
}

/// The counters of a row whose columns from `at` on are [`COUNTER_COLUMNS`], in that order.
fn counters_from_row_at(row: &sqlx::any::AnyRow, at: usize) -> Result<UserCounters, StoreError> {
    let scope = |first: usize| -> Result<ScopeCounter, StoreError> {
        let first = at + first;
        Ok(ScopeCounter {
            failures: row.try_get(first)?,
            last_failure_at: row.try_get(first + 1)?,
            pending: row.try_get(first + 2)?,
            pending_until: row.try_get(first + 3)?,
            locked_until: row.try_get(first + 4)?,
            lockouts: row.try_get(first + 5)?,
        })
    };
    Ok(UserCounters {
        familiar: scope(0)?,
        unfamiliar: scope(6)?,
        familiar_standing: row.try_get(at + 12)?,
    })
}

impl Store {
    /// The user's counters and when `network` was last seen for them (if at or after
    /// `since`), in one round trip: the read on every sign-in's path.
    pub async fn lockout_state(
        &self,
        tenant: &str,
        user_key: &str,
        network: Option<&str>,
        since: i64,
    ) -> Result<LockoutState, StoreError> {
        // One row whatever exists: the user's counters and the network, each possibly absent.
        let row = sqlx::query(
            "SELECT u.familiar_failures, u.familiar_last_failure_at, u.familiar_pending, \
             u.familiar_pending_until, u.familiar_locked_until, u.familiar_lockouts, \
             u.unfamiliar_failures, u.unfamiliar_last_failure_at, u.unfamiliar_pending, \
             u.unfamiliar_pending_until, u.unfamiliar_locked_until, u.unfamiliar_lockouts, \
             u.familiar_standing, n.last_seen AS network_last_seen \
             FROM (SELECT 1 AS one) AS k \
             LEFT JOIN lockout_users u ON u.tenant_id = $1 AND u.user_key = $2 \
             LEFT JOIN familiar_networks n ON n.tenant_id = $1 AND n.user_key = $2 \
             AND n.network = $3 AND n.last_seen >= $4",
        )
        .bind(tenant)
        .bind(user_key)
        // No network: an empty one, which no row has.
        .bind(network.unwrap_or_default())
        .bind(since)
        .fetch_one(&self.reads)
        .await?;
        let has_counters = row.try_get::<Option<i64>, _>(0)?.is_some();
        Ok(LockoutState {
            counters: if has_counters {
                counters_from_row(&row)?
            } else {
                UserCounters::default()
            },
            network_last_seen: row.try_get("network_last_seen")?,
        })
    }

    /// Records an attempt in `scope` as outstanding before it goes towards the directory (so
    /// concurrent attempts cannot all pass a check made before any of them was counted),
    /// atomically across replicas; it may stay outstanding until `until` at most. Returns both
    /// scopes' counters as they are now, this attempt included.
    pub async fn reserve_lockout_attempt(
        &self,
        tenant: &str,
        user_key: &str,
        scope: LockoutScope,
        now: i64,
        until: i64,
    ) -> Result<UserCounters, StoreError> {
        let op = LockoutOp::Reserve {
            tenant: tenant.to_owned(),
            user_key: user_key.to_owned(),
            scope,
            now,
            until,
        };
        let mut conn = self.volatile.acquire().await?;
        Ok(run_op(&mut conn, self.backend, &op)
            .await?
            .unwrap_or_default())
    }

    /// Ends an attempt recorded by [`Store::reserve_lockout_attempt`] as `end` says. Returns
    /// the counters as they are now after failures (`None` after a success).
    pub async fn settle_lockout_attempt(
        &self,
        tenant: &str,
        user_key: &str,
        scope: LockoutScope,
        end: AttemptEnd,
        now: i64,
    ) -> Result<Option<UserCounters>, StoreError> {
        let op = LockoutOp::Settle {
            tenant: tenant.to_owned(),
            user_key: user_key.to_owned(),
            scope,
            end,
            now,
        };
        let mut conn = self.volatile.acquire().await?;
        run_op(&mut conn, self.backend, &op).await
    }

    /// Locks the user out in `scope` until `until`, unless already locked out there at `now`
    /// (another replica did it a moment ago: then `None`). With `restart`, the scope's count
    /// starts again.
    pub async fn lock_out(
        &self,
        tenant: &str,
        user_key: &str,
        scope: LockoutScope,
        until: i64,
        restart: bool,
        now: i64,
    ) -> Result<Option<UserCounters>, StoreError> {
        let op = LockoutOp::LockOut {
            tenant: tenant.to_owned(),
            user_key: user_key.to_owned(),
            scope,
            until,
            restart,
            now,
        };
        let mut conn = self.volatile.acquire().await?;
        run_op(&mut conn, self.backend, &op).await
    }

    /// Runs many lockout updates (of many sign-ins) with few statements, on the writer's
    /// connection `held`: the reservations and successes of each scope in one multi-row
    /// upsert, the rest (failures, lockouts: rare) one by one. A user with several updates in
    /// the batch has them run in the order given, one round each. Rows are always taken in the
    /// order of their users, so replicas doing the same never wait on each other in a cycle.
    /// Returns each update's result in the order given.
    pub async fn run_lockout_ops(
        &self,
        held: &mut WriterConnection,
        ops: &[LockoutOp],
    ) -> Result<Vec<Option<UserCounters>>, StoreError> {
        self.on_writer_connection(held, &self.volatile, async |conn| {
            self.run_lockout_ops_on(conn, ops).await
        })
        .await
    }

    async fn run_lockout_ops_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        ops: &[LockoutOp],
    ) -> Result<Vec<Option<UserCounters>>, StoreError> {
        let mut results = vec![None; ops.len()];
        // Rounds in which each user appears at most once.
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        let mut next_round: HashMap<(&str, &str), usize> = HashMap::new();
        for (index, op) in ops.iter().enumerate() {
            let round = next_round.entry(op.user()).or_insert(0);
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            rounds[*round].push(index);
            *round += 1;
        }
        for mut round in rounds {
            round.sort_by(|&a, &b| ops[a].user().cmp(&ops[b].user()));
            for scope in [LockoutScope::Familiar, LockoutScope::Unfamiliar] {
                let upserts: Vec<usize> = round
                    .iter()
                    .copied()
                    .filter(|&i| match &ops[i] {
                        LockoutOp::Reserve { scope: s, .. }
                        | LockoutOp::Settle {
                            scope: s,
                            end: AttemptEnd::Success,
                            ..
                        } => *s == scope,
                        _ => false,
                    })
                    .collect();
                for chunk in upserts.chunks(MAX_ROWS_PER_STATEMENT) {
                    upsert_many(conn, self.backend, scope, ops, chunk, &mut results).await?;
                }
            }
            for &index in &round {
                match &ops[index] {
                    LockoutOp::Reserve { .. }
                    | LockoutOp::Settle {
                        end: AttemptEnd::Success,
                        ..
                    } => {}
                    other => results[index] = run_op(conn, self.backend, other).await?,
                }
            }
        }
        Ok(results)
    }

    /// Remembers `network` as familiar for `user_key`, keeping the `keep` most recent.
    pub async fn remember_network(
        &self,
        tenant: &str,
        user_key: &str,
        network: &str,
        now: i64,
        keep: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO familiar_networks (tenant_id, user_key, network, last_seen) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_key, network) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(network)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM familiar_networks WHERE tenant_id = $1 AND user_key = $2 \
             AND network NOT IN (SELECT network FROM familiar_networks \
                 WHERE tenant_id = $1 AND user_key = $2 ORDER BY last_seen DESC LIMIT $3)",
        )
        .bind(tenant)
        .bind(user_key)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `network` is familiar for `user_key` (seen at or after `since`).
    pub async fn is_familiar(
        &self,
        tenant: &str,
        user_key: &str,
        network: &str,
        since: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .lockout_state(tenant, user_key, Some(network), since)
            .await?
            .network_last_seen
            .is_some())
    }
}

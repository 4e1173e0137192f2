//! Durable storage of keys, reports, values, task updates, audit rows and security events.
//!
//! Invariants, whatever the backend:
//! - Uniqueness lives in database constraints: `(unit_id, report_id)` and `(key_id, seq)` are
//!   unique in `reports`, so two aggregator replicas on one PostgreSQL can never store a report
//!   twice, and nothing in memory has to agree for that to hold.
//! - [`Store::ingest`] returns only after the reports are committed and synced; an outcome
//!   handed back is a promise that survives a crash.
//! - A current value changes only to one with a greater `(revision, issued_at_ms, seq)`, and
//!   every change writes an audit row in the same transaction.
//!
//! Ingest is set-based (see [`decide`]): each backend reads what a group touches, decides in
//! memory, and writes each table in one statement with its own typed driver. The other SQL is
//! shared by both backends through sqlx's `Any` driver (`$n` placeholders work on both); the
//! schema lives in per-backend migrations under `aggregator/migrations/`.

mod alerts;
pub mod archive;
pub mod copy;
mod decide;
mod group;
mod postgres;
mod presence;
mod queries;
mod sqlite;
mod statements;
mod types;

pub use crate::progress::input::{Outage, StatementRow, TaskRow, ValueRow};
pub use alerts::{AlertChanges, AlertRow, WantedAlert};
pub use postgres::PgStore;
pub use presence::{AgentRow, Heartbeat, gaps};
pub use sqlite::SqliteStore;
pub use statements::{NewStatement, StatementOutcome};
pub use types::*;

use duban_proto::KeyId;
use sqlx::AnyPool;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From the SQLite backend's writer and its whole reads of the current values, which go
    /// through `rusqlite` (the other SQL goes through sqlx).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("key {0} is already registered")]
    KeyExists(KeyId),
    #[error("the store's writer has stopped")]
    WriterGone,
    /// Another call of the same group commit failed for this reason (not for this call's rows).
    #[error("the transaction this call was stored in failed: {0}")]
    GroupFailed(String),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error(
        "no database at {0}: give the right --database-url (or DUBAN_DATABASE_URL, or database_url in --config); `duban-aggregator serve` creates it"
    )]
    Missing(String),
    #[error("{0}")]
    Schema(String),
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("this store was opened read-only")]
    ReadOnly,
    #[error(
        "the database file {path} is damaged ({detail}); nothing is read from it or written to it. Keep the file, restore the last backup, or recover what can be read into a new file: docs/OPERATIONS.md, \"A damaged database\""
    )]
    Damaged { path: String, detail: String },
}

/// Checks, without changing anything, that the database's schema is the one this program
/// writes: every migration applied, none unknown.
pub(crate) async fn check_schema(
    pool: &AnyPool,
    migrator: &sqlx::migrate::Migrator,
    url: &str,
) -> Result<(), StoreError> {
    let applied: Vec<i64> = match sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    {
        Ok(applied) => applied,
        Err(sqlx::Error::Database(_)) => {
            return Err(StoreError::Schema(format!(
                "{} is not a duban database (it has no schema); `duban-aggregator serve` creates one",
                redact(url)
            )));
        }
        Err(other) => return Err(other.into()),
    };
    let known: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
        return Err(StoreError::Schema(format!(
            "{} has schema version {newer}, which this program does not know: it was written by a newer duban",
            redact(url)
        )));
    }
    if applied.len() < known.len() {
        return Err(StoreError::Schema(format!(
            "{} has schema version {}, this program needs {}: start `duban-aggregator serve` once with this version (it migrates), then run this command again",
            redact(url),
            applied.last().copied().unwrap_or(0),
            known.last().copied().unwrap_or(0)
        )));
    }
    Ok(())
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The operations the aggregator needs from storage, in the store's own terms. Implemented by
/// [`SqliteStore`], [`PgStore`] and the run-time choice between them, [`AnyStore`], all through
/// sqlx's `Any` driver (see [`backend`]); another backend implements this trait directly.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// Stores new reports atomically per call and classifies each; one outcome per report, in
    /// order. Returns only once committed and synced.
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError>;
    /// Makes the open alerts equal `wanted`: new ones fire (starts_at = now), missing ones
    /// resolve (ends_at = now), the rest keep their start.
    async fn sync_alerts(
        &self,
        plan_id: &str,
        wanted: Vec<WantedAlert>,
        now_ms: i64,
    ) -> Result<AlertChanges, StoreError>;
    /// Whether this process is the one that may send to sinks that cannot deduplicate
    /// (webhooks). Always true on SQLite; on PostgreSQL, the holder of an advisory lock.
    async fn is_notifier(&self) -> Result<bool, StoreError>;

    async fn add_key(&self, key: NewKey) -> Result<(), StoreError>;
    /// Marks a key revoked from `at_ms` on. False when no such key exists.
    async fn revoke_key(&self, key_id: KeyId, at_ms: i64) -> Result<bool, StoreError>;
    /// [`Store::add_key`] with its [`AdminAction`] recorded in the same transaction.
    async fn add_key_recorded(&self, key: NewKey, action: &AdminAction) -> Result<(), StoreError>;
    /// [`Store::revoke_key`] with its [`AdminAction`] recorded in the same transaction.
    async fn revoke_key_recorded(
        &self,
        key_id: KeyId,
        at_ms: i64,
        action: &AdminAction,
    ) -> Result<bool, StoreError>;
    /// Every recorded administrative change, oldest first.
    async fn admin_actions(&self) -> Result<Vec<AdminAction>, StoreError>;
    async fn keys(&self, unit_id: Option<&str>) -> Result<Vec<KeyRow>, StoreError>;
    async fn reports(&self, filter: &ReportFilter) -> Result<Vec<ReportRow>, StoreError>;
    /// A plan's current values (of one indicator, or all), one per key, in key order: by
    /// indicator, period and unit, each by its bytes, whatever the database's collation.
    async fn current_values(
        &self,
        plan_id: &str,
        indicator_id: Option<&str>,
    ) -> Result<Vec<ValueRow>, StoreError>;
    async fn current_tasks(&self, plan_id: &str) -> Result<Vec<TaskRow>, StoreError>;
    /// The current values and task updates written by reports stored after `report_pk`, in
    /// no particular order: what changed since a [`WriteMarker`] whose `reports` it was.
    async fn changed_after(
        &self,
        plan_id: &str,
        report_pk: i64,
    ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError>;
    /// Whether a row committed later always has a greater id than every row committed before
    /// it (one writer at a time: SQLite). On PostgreSQL, replicas take ids concurrently and a
    /// transaction may commit after another that took a greater id.
    fn ids_follow_commits(&self) -> bool;
    async fn audit(&self, plan_id: &str) -> Result<Vec<AuditRow>, StoreError>;
    /// Every value and task update stored, with the report that carried it, in report order.
    async fn stored_items(&self, plan_id: &str) -> Result<Vec<StoredItem>, StoreError>;
    async fn envelope(
        &self,
        unit_id: &str,
        report_id: &[u8],
    ) -> Result<Option<StoredEnvelope>, StoreError>;
    async fn security_events(&self) -> Result<Vec<SecurityEvent>, StoreError>;
    /// Open alerts, and those resolved at or after `resolved_since_ms`.
    async fn alerts(
        &self,
        plan_id: &str,
        resolved_since_ms: i64,
    ) -> Result<Vec<AlertRow>, StoreError>;
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
    /// What changes whenever a current value, task update or statement is written (the
    /// highest audit row, statement and report stored): progress computed at one marker holds
    /// until the marker moves or the clock does, and what changed since is
    /// [`Store::changed_after`] its `reports`.
    async fn write_marker(&self) -> Result<WriteMarker, StoreError>;
    /// Records an agent's heartbeat (a verified Hello).
    async fn record_heartbeat(&self, beat: &Heartbeat) -> Result<(), StoreError>;
    /// Every agent that has said Hello, with its last heartbeat.
    async fn agents(&self) -> Result<Vec<AgentRow>, StoreError>;
    /// The highest seq stored under a key (0 when none).
    async fn key_max_seq(&self, key_id: &[u8]) -> Result<i64, StoreError>;
    /// The highest revision stored per period for a unit.
    async fn unit_revisions(
        &self,
        plan_id: &str,
        unit_id: &str,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    /// Marks the serving process `run_id` alive at `at_ms`; beats further apart than
    /// `slack_ms` leave an outage between them.
    async fn beat(&self, run_id: &str, at_ms: i64, slack_ms: i64) -> Result<(), StoreError>;
    /// When the centre was not serving, between its first start and `now_ms`.
    async fn outages(&self, now_ms: i64) -> Result<Vec<Outage>, StoreError>;
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets `key` unless it is set; returns the value that holds.
    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError>;
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// The plan ids that stored reports belong to.
    async fn stored_plan_ids(&self) -> Result<Vec<String>, StoreError>;
    /// Stores a verified, authorised statement; says whether it was new, a resend or a replay.
    async fn add_statement(&self, statement: &NewStatement)
    -> Result<StatementOutcome, StoreError>;
    /// The statements of a plan received at or before `until_ms`, oldest first.
    async fn statements(
        &self,
        plan_id: &str,
        until_ms: i64,
    ) -> Result<Vec<StatementRow>, StoreError>;
    /// The highest statement seq stored under a key (0 when none).
    async fn statement_max_seq(&self, key_id: &[u8]) -> Result<i64, StoreError>;
    /// The current values and task updates as they stood at `as_of_ms`: only what had been
    /// received by then, reconciled as ingest reconciles.
    async fn received_by(
        &self,
        plan_id: &str,
        as_of_ms: i64,
    ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError>;
}

/// The sqlx backends: a pool for reads and key administration, and the operations each does its
/// own way; every other [`Store`] operation is the same SQL on both.
mod backend {
    use super::*;

    #[allow(async_fn_in_trait)]
    pub trait SqlBackend {
        /// SQLite: the readers; PostgreSQL: the one pool.
        fn read_pool(&self) -> &AnyPool;
        /// Stores new reports atomically per call and classifies each; one outcome per report, in
        /// order. Returns only once committed and synced.
        async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError>;
        /// Makes the open alerts equal `wanted`: new ones fire (starts_at = now), missing ones
        /// resolve (ends_at = now), the rest keep their start.
        async fn sync_alerts(
            &self,
            plan_id: &str,
            wanted: Vec<WantedAlert>,
            now_ms: i64,
        ) -> Result<AlertChanges, StoreError>;
        /// Whether this process is the one that may send to sinks that cannot deduplicate
        /// (webhooks). Always true on SQLite; on PostgreSQL, the holder of an advisory lock.
        async fn is_notifier(&self) -> Result<bool, StoreError>;
        /// A cheap round trip, for readiness.
        async fn ping(&self) -> Result<(), StoreError> {
            queries::ping(self.read_pool()).await
        }
        /// See [`Store::ids_follow_commits`](super::Store::ids_follow_commits).
        fn ids_follow_commits(&self) -> bool;
        /// See [`Store::current_values`](super::Store::current_values): millions of rows
        /// on a large plan, so each backend reads them its own fastest way.
        async fn read_current_values(
            &self,
            plan_id: &str,
            indicator_id: Option<&str>,
        ) -> Result<Vec<ValueRow>, StoreError>;
        /// See [`Store::changed_after`](super::Store::changed_after): a few rows among
        /// millions, found by index lookups ([`queries::CHANGED_VALUES`]), which each backend
        /// has planned its own way.
        async fn changed_after(
            &self,
            plan_id: &str,
            report_pk: i64,
        ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError>;
    }
}

pub(crate) use backend::SqlBackend;

impl<B: SqlBackend> Store for B {
    /// Stores new reports atomically per call and classifies each; one outcome per report, in
    /// order. Returns only once committed and synced.
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError> {
        SqlBackend::ingest(self, reports).await
    }
    /// Makes the open alerts equal `wanted`: new ones fire (starts_at = now), missing ones
    /// resolve (ends_at = now), the rest keep their start.
    async fn sync_alerts(
        &self,
        plan_id: &str,
        wanted: Vec<WantedAlert>,
        now_ms: i64,
    ) -> Result<AlertChanges, StoreError> {
        SqlBackend::sync_alerts(self, plan_id, wanted, now_ms).await
    }
    /// Whether this process is the one that may send to sinks that cannot deduplicate
    /// (webhooks). Always true on SQLite; on PostgreSQL, the holder of an advisory lock.
    async fn is_notifier(&self) -> Result<bool, StoreError> {
        SqlBackend::is_notifier(self).await
    }

    async fn add_key(&self, key: NewKey) -> Result<(), StoreError> {
        queries::add_key(self.read_pool(), &key, None).await
    }
    /// Marks a key revoked from `at_ms` on. False when no such key exists.
    async fn revoke_key(&self, key_id: KeyId, at_ms: i64) -> Result<bool, StoreError> {
        queries::revoke_key(self.read_pool(), key_id, at_ms, None).await
    }
    async fn add_key_recorded(&self, key: NewKey, action: &AdminAction) -> Result<(), StoreError> {
        queries::add_key(self.read_pool(), &key, Some(action)).await
    }
    async fn revoke_key_recorded(
        &self,
        key_id: KeyId,
        at_ms: i64,
        action: &AdminAction,
    ) -> Result<bool, StoreError> {
        queries::revoke_key(self.read_pool(), key_id, at_ms, Some(action)).await
    }
    async fn admin_actions(&self) -> Result<Vec<AdminAction>, StoreError> {
        queries::admin_actions(self.read_pool()).await
    }
    async fn keys(&self, unit_id: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        queries::keys(self.read_pool(), unit_id).await
    }
    async fn reports(&self, filter: &ReportFilter) -> Result<Vec<ReportRow>, StoreError> {
        queries::reports(self.read_pool(), filter).await
    }
    async fn current_values(
        &self,
        plan_id: &str,
        indicator_id: Option<&str>,
    ) -> Result<Vec<ValueRow>, StoreError> {
        SqlBackend::read_current_values(self, plan_id, indicator_id).await
    }
    async fn current_tasks(&self, plan_id: &str) -> Result<Vec<TaskRow>, StoreError> {
        queries::current_tasks(self.read_pool(), plan_id).await
    }
    async fn changed_after(
        &self,
        plan_id: &str,
        report_pk: i64,
    ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError> {
        SqlBackend::changed_after(self, plan_id, report_pk).await
    }
    fn ids_follow_commits(&self) -> bool {
        SqlBackend::ids_follow_commits(self)
    }
    async fn audit(&self, plan_id: &str) -> Result<Vec<AuditRow>, StoreError> {
        queries::audit(self.read_pool(), plan_id).await
    }
    /// Every value and task update stored, with the report that carried it, in report order.
    async fn stored_items(&self, plan_id: &str) -> Result<Vec<StoredItem>, StoreError> {
        queries::stored_items(self.read_pool(), plan_id).await
    }
    async fn envelope(
        &self,
        unit_id: &str,
        report_id: &[u8],
    ) -> Result<Option<StoredEnvelope>, StoreError> {
        queries::envelope(self.read_pool(), unit_id, report_id).await
    }
    async fn security_events(&self) -> Result<Vec<SecurityEvent>, StoreError> {
        queries::security_events(self.read_pool()).await
    }
    async fn write_marker(&self) -> Result<WriteMarker, StoreError> {
        queries::write_marker(self.read_pool()).await
    }
    /// Open alerts, and those resolved at or after `resolved_since_ms`.
    async fn alerts(
        &self,
        plan_id: &str,
        resolved_since_ms: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        alerts::alerts(self.read_pool(), plan_id, resolved_since_ms).await
    }
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError> {
        SqlBackend::ping(self).await
    }
    /// Records an agent's heartbeat (a verified Hello).
    async fn record_heartbeat(&self, beat: &Heartbeat) -> Result<(), StoreError> {
        presence::record_heartbeat(self.read_pool(), beat).await
    }
    /// Every agent that has said Hello, with its last heartbeat.
    async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        presence::agents(self.read_pool()).await
    }
    /// The highest seq stored under a key (0 when none).
    async fn key_max_seq(&self, key_id: &[u8]) -> Result<i64, StoreError> {
        presence::key_max_seq(self.read_pool(), key_id).await
    }
    /// The highest revision stored per period for a unit.
    async fn unit_revisions(
        &self,
        plan_id: &str,
        unit_id: &str,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        presence::unit_revisions(self.read_pool(), plan_id, unit_id).await
    }
    /// Marks the serving process `run_id` alive at `at_ms`; beats further apart than
    /// `slack_ms` leave an outage between them.
    async fn beat(&self, run_id: &str, at_ms: i64, slack_ms: i64) -> Result<(), StoreError> {
        presence::beat(self.read_pool(), run_id, at_ms, slack_ms).await
    }
    /// When the centre was not serving, between its first start and `now_ms`.
    async fn outages(&self, now_ms: i64) -> Result<Vec<Outage>, StoreError> {
        presence::outages(self.read_pool(), now_ms).await
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        presence::setting(self.read_pool(), key).await
    }
    /// Sets `key` unless it is set; returns the value that holds.
    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        presence::setting_or_insert(self.read_pool(), key, value).await
    }
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        presence::set_setting(self.read_pool(), key, value).await
    }
    /// The plan ids that stored reports belong to.
    async fn stored_plan_ids(&self) -> Result<Vec<String>, StoreError> {
        presence::stored_plan_ids(self.read_pool()).await
    }
    async fn add_statement(
        &self,
        statement: &NewStatement,
    ) -> Result<StatementOutcome, StoreError> {
        statements::add_statement(self.read_pool(), statement).await
    }
    async fn statements(
        &self,
        plan_id: &str,
        until_ms: i64,
    ) -> Result<Vec<StatementRow>, StoreError> {
        statements::statements(self.read_pool(), plan_id, until_ms).await
    }
    async fn statement_max_seq(&self, key_id: &[u8]) -> Result<i64, StoreError> {
        statements::statement_max_seq(self.read_pool(), key_id).await
    }
    async fn received_by(
        &self,
        plan_id: &str,
        as_of_ms: i64,
    ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError> {
        queries::received_by(self.read_pool(), plan_id, as_of_ms).await
    }
}

/// What the progress engine needs at `now_ms`: the current values and task updates, and
/// the centre's outages.
pub async fn snapshot(
    store: &AnyStore,
    plan: &crate::plan::Plan,
    now_ms: i64,
) -> Result<crate::progress::Snapshot, StoreError> {
    snapshot_with_statements_until(store, plan, now_ms, now_ms).await
}

/// [`snapshot`], with the statements received by `statements_until_ms` (a snapshot reused at
/// later instants holds them all: progress counts those received by its own now).
pub async fn snapshot_with_statements_until(
    store: &AnyStore,
    plan: &crate::plan::Plan,
    now_ms: i64,
    statements_until_ms: i64,
) -> Result<crate::progress::Snapshot, StoreError> {
    Ok(crate::progress::Snapshot::in_key_order(
        store.current_values(&plan.id, None).await?,
        store.current_tasks(&plan.id).await?,
        store.outages(now_ms).await?,
        store.statements(&plan.id, statements_until_ms).await?,
    ))
}

/// The state as it stood at `as_of_ms`: only the values, task updates and statements received
/// by then (a true history, where [`snapshot`] reads what is stored now).
pub async fn snapshot_as_of(
    store: &AnyStore,
    plan: &crate::plan::Plan,
    as_of_ms: i64,
) -> Result<crate::progress::Snapshot, StoreError> {
    let (values, tasks) = store.received_by(&plan.id, as_of_ms).await?;
    Ok(crate::progress::Snapshot {
        values,
        tasks,
        outages: store.outages(as_of_ms).await?,
        statements: store.statements(&plan.id, as_of_ms).await?,
        order: Default::default(),
    })
}

/// Progress as it stood at `as_of_ms` (see [`snapshot_as_of`]).
pub async fn progress_as_of(
    store: &AnyStore,
    plan: &crate::plan::Plan,
    as_of_ms: i64,
) -> Result<crate::progress::Progress, StoreError> {
    Ok(crate::progress::compute(
        plan,
        &snapshot_as_of(store, plan, as_of_ms).await?,
        as_of_ms,
    ))
}

/// Progress at `now_ms` from what `store` holds.
pub async fn progress_at(
    store: &AnyStore,
    plan: &crate::plan::Plan,
    now_ms: i64,
) -> Result<crate::progress::Progress, StoreError> {
    Ok(crate::progress::compute(
        plan,
        &snapshot(store, plan, now_ms).await?,
        now_ms,
    ))
}

/// The backend chosen at run time from the database URL.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnyStore::Sqlite(_) => "AnyStore::Sqlite",
            AnyStore::Postgres(_) => "AnyStore::Postgres",
        })
    }
}

impl AnyStore {
    /// Opens (creating a SQLite file and its directory if missing) and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(AnyStore::Sqlite(SqliteStore::open(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(PgStore::open(url).await?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// Opens an existing database for reading only: nothing is created or migrated, a missing
    /// database is an error, and so is a schema this program does not write.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(AnyStore::Sqlite(SqliteStore::open_read_only(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(PgStore::open_read_only(url).await?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyStore::Sqlite(s) => SqlBackend::$method(s, $($arg),*).await,
            AnyStore::Postgres(s) => SqlBackend::$method(s, $($arg),*).await,
        }
    };
}

impl SqlBackend for AnyStore {
    fn read_pool(&self) -> &AnyPool {
        match self {
            AnyStore::Sqlite(s) => s.read_pool(),
            AnyStore::Postgres(s) => s.read_pool(),
        }
    }
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError> {
        delegate!(self, ingest(reports))
    }
    async fn sync_alerts(
        &self,
        plan_id: &str,
        wanted: Vec<WantedAlert>,
        now_ms: i64,
    ) -> Result<AlertChanges, StoreError> {
        delegate!(self, sync_alerts(plan_id, wanted, now_ms))
    }
    async fn is_notifier(&self) -> Result<bool, StoreError> {
        delegate!(self, is_notifier())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, ping())
    }
    async fn read_current_values(
        &self,
        plan_id: &str,
        indicator_id: Option<&str>,
    ) -> Result<Vec<ValueRow>, StoreError> {
        delegate!(self, read_current_values(plan_id, indicator_id))
    }
    async fn changed_after(
        &self,
        plan_id: &str,
        report_pk: i64,
    ) -> Result<(Vec<ValueRow>, Vec<TaskRow>), StoreError> {
        delegate!(self, changed_after(plan_id, report_pk))
    }
    fn ids_follow_commits(&self) -> bool {
        matches!(self, AnyStore::Sqlite(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact("postgres://duban:s3cret@db.example:5432/duban"),
            "postgres://duban:***@db.example:5432/duban"
        );
        assert_eq!(
            redact("postgres://duban@db.example/duban"),
            "postgres://duban@db.example/duban"
        );
        assert_eq!(redact("sqlite://./x.db"), "sqlite://./x.db");
    }
}

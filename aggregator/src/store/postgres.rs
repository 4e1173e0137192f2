//! PostgreSQL backend for scale-out: several aggregator replicas share one database, and the
//! unique constraints there decide what is stored. Each ingest call is one transaction: every
//! table it touches read in one statement, [`decide`] in memory, every table written in one
//! statement (`UNNEST` of typed arrays, through a typed `PgPool`; see `group_sql`).

mod group_sql;

use sqlx::any::AnyPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AnyPool, Connection, PgPool, Row};

use super::decide::decide;
use super::types::*;
use super::{AlertChanges, SqlBackend, StoreError, WantedAlert};

/// Advisory lock keys are derived from the schema, so that deployments (and test schemas)
/// sharing one database do not contend; replicas of one deployment share a schema.
const NOTIFIER_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtext(current_schema() || ':duban-notifier'))";
const ALERT_SYNC_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':duban-alert-sync'))";

#[derive(Clone)]
pub struct PgStore {
    pool: AnyPool,
    /// The ingest path's typed pool (array binds for `UNNEST`).
    writers: PgPool,
    /// A connection of its own that holds the notifier advisory lock once taken.
    notifier: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Any>>>>,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, 16).await
    }

    pub async fn open_with(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = connect(url, max_connections).await?;
        let mut conn = pool.acquire().await?;
        sqlx::migrate!("migrations/postgres")
            .run(&mut *conn)
            .await?;
        drop(conn);
        let writers = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(PgStore {
            pool,
            writers,
            notifier: Default::default(),
        })
    }

    /// Connects without migrating, after checking that the schema is this program's.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let pool = connect(url, 4).await?;
        super::check_schema(&pool, &sqlx::migrate!("migrations/postgres"), url).await?;
        // Lazy: a read-only handle never ingests, so it never connects.
        let writers = PgPoolOptions::new().max_connections(1).connect_lazy(url)?;
        Ok(PgStore {
            pool,
            writers,
            notifier: Default::default(),
        })
    }
}

/// A pool, after one direct connection has shown the server answers: a wrong host, port,
/// database or user fails at once with the server's own words, instead of a pool timeout.
async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let first = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect(url)).await;
    let connect_error = |message: String| StoreError::Connect {
        url: super::redact(url),
        message,
    };
    match first {
        Err(_) => {
            return Err(connect_error(format!(
                "no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(sqlx::Error::Database(e))) => return Err(connect_error(e.message().to_owned())),
        Ok(Err(sqlx::Error::Io(e))) => return Err(connect_error(e.to_string())),
        Ok(Err(other)) => return Err(connect_error(other.to_string())),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    Ok(AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await?)
}

/// How long the first connection at start may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a call waits for a connection once serving: with the server down or restarting,
/// calls are answered UNAVAILABLE after this (and agents retry), not held until the caller's
/// own deadline (found by the fault harness's postgres-restart scenario: held 10 s, agents with
/// a shorter timeout saw only their own deadline).
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl PgStore {
    async fn ingest_once(&self, reports: &[NewReport]) -> Result<Vec<StoreOutcome>, StoreError> {
        let mut tx = self.writers.begin().await?;
        let group: Vec<&NewReport> = reports.iter().collect();
        let mut known = group_sql::read_known(&mut tx, &group).await?;
        let mut pks = group_sql::reserve_pks(&mut tx, group.len())
            .await?
            .into_iter();
        let decided = decide(group.iter().copied(), &mut known, || {
            pks.next().expect("one report_pk reserved per report")
        });
        group_sql::write(&mut tx, &decided).await?;
        tx.commit().await?;
        Ok(decided.outcomes)
    }
}

impl SqlBackend for PgStore {
    fn read_pool(&self) -> &AnyPool {
        &self.pool
    }
    /// Sequences hand out ids before commit, to replicas writing at once.
    fn ids_follow_commits(&self) -> bool {
        false
    }
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        // Two replicas can race on the same current-value row (a unique violation) or lock
        // rows in opposite orders (a deadlock); the transaction is then retried whole, and the
        // constraints classify what the other replica committed meanwhile.
        let mut attempt = 0;
        loop {
            match self.ingest_once(&reports).await {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if attempt < 3
                        && matches!(e.code().as_deref(), Some("23505" | "40P01" | "40001")) =>
                {
                    attempt += 1;
                    tracing::debug!(code = ?e.code(), attempt, "retrying an ingest transaction that raced another replica");
                }
                other => return other,
            }
        }
    }
    async fn sync_alerts(
        &self,
        plan_id: &str,
        wanted: Vec<WantedAlert>,
        now_ms: i64,
    ) -> Result<AlertChanges, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        // One replica at a time rewrites alert state; the others wait their turn.
        sqlx::query(ALERT_SYNC_LOCK).execute(&mut *tx).await?;
        let changes = super::alerts::sync(&mut tx, plan_id, &wanted, now_ms).await?;
        tx.commit().await?;
        Ok(changes)
    }
    async fn is_notifier(&self) -> Result<bool, StoreError> {
        let mut held = self.notifier.lock().await;
        if let Some(conn) = held.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut **conn).await.is_ok() {
                return Ok(true);
            }
            *held = None; // the connection died, and the lock with it
        }
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query(NOTIFIER_LOCK)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        if got {
            *held = Some(conn);
        }
        Ok(got)
    }
}

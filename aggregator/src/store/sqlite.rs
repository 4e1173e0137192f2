//! SQLite backend: one writer with group commit, a small pool of readers.
//!
//! The database is in WAL mode with `synchronous=FULL`, so a commit is on disk when it returns.
//! Every ingest goes to a single writer task over a channel. The writer takes whatever has queued
//! up (up to [`MAX_GROUP`] calls), runs them in one `BEGIN IMMEDIATE` transaction and commits
//! once: concurrent callers share one fsync. If the group fails, each call is retried alone so
//! that one bad call cannot fail its neighbours. Callers are answered only after the commit.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Executor};
use tokio::sync::{mpsc, oneshot};

use super::SqlBackend;
use super::reconcile::{SQLITE, ingest_one};
use super::types::*;
use super::{AlertChanges, StoreError, WantedAlert, queries};

/// The most ingest calls committed together.
const MAX_GROUP: usize = 128;

type Reply = oneshot::Sender<Result<Vec<StoreOutcome>, StoreError>>;

struct Job {
    reports: Vec<NewReport>,
    reply: Reply,
}

#[derive(Clone)]
pub struct SqliteStore {
    /// `None` when opened read-only.
    writer: Option<mpsc::Sender<Job>>,
    readers: AnyPool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (or `sqlite:PATH`), creating the file and its directory if
    /// missing, and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let path = path_of(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create directory {}: {e}", dir.display()).into(),
                ))
            })?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = connect(&url).await?;
        conn.execute("PRAGMA journal_mode = WAL").await?;
        sqlx::migrate!("migrations/sqlite").run(&mut conn).await?;
        let readers = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| Box::pin(async move { pragmas(conn).await }))
            .connect(&url)
            .await?;
        let (writer, jobs) = mpsc::channel(1024);
        tokio::spawn(write_loop(conn, jobs));
        Ok(SqliteStore {
            writer: Some(writer),
            readers,
            path,
        })
    }

    /// Opens an existing database file read-only (`mode=ro`): nothing is created or migrated.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let path = path_of(url)?;
        if !path.is_file() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let url = format!("sqlite://{}?mode=ro", path.display());
        let readers = AnyPoolOptions::new()
            .max_connections(2)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        super::check_schema(&readers, &sqlx::migrate!("migrations/sqlite"), &url).await?;
        Ok(SqliteStore {
            writer: None,
            readers,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn path_of(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    Ok(PathBuf::from(path))
}

async fn pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(
        "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON",
    )
    .await?;
    Ok(())
}

async fn connect(url: &str) -> Result<AnyConnection, StoreError> {
    let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
    let mut conn = options.connect().await?;
    pragmas(&mut conn).await?;
    Ok(conn)
}

async fn write_loop(mut conn: AnyConnection, mut jobs: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while jobs.recv_many(&mut group, MAX_GROUP).await > 0 {
        match commit_group(&mut conn, &group).await {
            Ok(outcomes) => {
                for (job, outcome) in group.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::warn!(%error, calls = group.len(), "group commit failed; retrying each call alone");
                for job in group.drain(..) {
                    let result = commit_group(&mut conn, std::slice::from_ref(&job)).await;
                    let _ = job
                        .reply
                        .send(result.map(|mut v| v.pop().unwrap_or_default()));
                }
            }
        }
    }
}

async fn commit_group(
    conn: &mut AnyConnection,
    group: &[Job],
) -> Result<Vec<Vec<StoreOutcome>>, StoreError> {
    conn.execute("BEGIN IMMEDIATE").await?;
    let mut outcomes = Vec::with_capacity(group.len());
    for job in group {
        let mut results = Vec::with_capacity(job.reports.len());
        for report in &job.reports {
            match ingest_one(conn, &SQLITE, report).await {
                Ok(outcome) => results.push(outcome),
                Err(error) => {
                    let _ = conn.execute("ROLLBACK").await;
                    return Err(error);
                }
            }
        }
        outcomes.push(results);
    }
    if let Err(error) = conn.execute("COMMIT").await {
        let _ = conn.execute("ROLLBACK").await;
        return Err(error.into());
    }
    Ok(outcomes)
}

impl SqlBackend for SqliteStore {
    fn read_pool(&self) -> &AnyPool {
        &self.readers
    }
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or(StoreError::ReadOnly)?
            .send(Job { reports, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
    async fn sync_alerts(
        &self,
        plan_id: &str,
        wanted: Vec<WantedAlert>,
        now_ms: i64,
    ) -> Result<AlertChanges, StoreError> {
        // Alert state is small and written rarely: its own IMMEDIATE transaction on a reader
        // connection, waiting on the writer through busy_timeout.
        let mut conn = self.readers.acquire().await?;
        conn.execute("BEGIN IMMEDIATE").await?;
        match super::alerts::sync(&mut conn, plan_id, &wanted, now_ms).await {
            Ok(changes) => {
                conn.execute("COMMIT").await?;
                Ok(changes)
            }
            Err(error) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(error)
            }
        }
    }
    async fn is_notifier(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.as_ref().is_some_and(|w| w.is_closed()) {
            return Err(StoreError::WriterGone);
        }
        queries::ping(&self.readers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file() {
        assert_eq!(
            path_of("sqlite://./duban-data/duban.db").unwrap(),
            PathBuf::from("./duban-data/duban.db")
        );
        assert_eq!(
            path_of("sqlite:///var/lib/duban/duban.db?mode=rwc").unwrap(),
            PathBuf::from("/var/lib/duban/duban.db")
        );
        assert!(path_of("sqlite::memory:").is_err());
        assert!(path_of("mysql://x").is_err());
    }
}

//! PostgreSQL backend for scale-out: several aggregator replicas share one database, and the
//! unique constraints there decide what is stored. Each ingest call is one transaction.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection};

use super::reconcile::{POSTGRES, ingest_one};
use super::types::*;
use super::{Store, StoreError, queries};
use duban_proto::KeyId;

#[derive(Clone)]
pub struct PgStore {
    pool: AnyPool,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, 16).await
    }

    pub async fn open_with(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await?;
        let mut conn = pool.acquire().await?;
        sqlx::migrate!("migrations/postgres")
            .run(&mut *conn)
            .await?;
        drop(conn);
        Ok(PgStore { pool })
    }
}

impl Store for PgStore {
    async fn ingest(&self, reports: Vec<NewReport>) -> Result<Vec<StoreOutcome>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let mut outcomes = Vec::with_capacity(reports.len());
        for report in &reports {
            outcomes.push(ingest_one(&mut tx, &POSTGRES, report).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
    async fn add_key(&self, key: NewKey) -> Result<(), StoreError> {
        queries::add_key(&self.pool, &key).await
    }
    async fn revoke_key(&self, key_id: KeyId, at_ms: i64) -> Result<bool, StoreError> {
        queries::revoke_key(&self.pool, key_id, at_ms).await
    }
    async fn keys(&self, unit_id: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        queries::keys(&self.pool, unit_id).await
    }
    async fn reports(&self, filter: &ReportFilter) -> Result<Vec<ReportRow>, StoreError> {
        queries::reports(&self.pool, filter).await
    }
    async fn current_values(
        &self,
        plan_id: &str,
        indicator_id: Option<&str>,
    ) -> Result<Vec<ValueRow>, StoreError> {
        queries::current_values(&self.pool, plan_id, indicator_id).await
    }
    async fn current_tasks(&self, plan_id: &str) -> Result<Vec<TaskRow>, StoreError> {
        queries::current_tasks(&self.pool, plan_id).await
    }
    async fn audit(&self, plan_id: &str) -> Result<Vec<AuditRow>, StoreError> {
        queries::audit(&self.pool, plan_id).await
    }
    async fn envelope(
        &self,
        unit_id: &str,
        report_id: &[u8],
    ) -> Result<Option<StoredEnvelope>, StoreError> {
        queries::envelope(&self.pool, unit_id, report_id).await
    }
    async fn security_events(&self) -> Result<Vec<SecurityEvent>, StoreError> {
        queries::security_events(&self.pool).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        queries::ping(&self.pool).await
    }
}

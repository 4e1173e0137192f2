//! Shared by the aggregator's integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

/// The PostgreSQL server for tests, from `DUBAN_TEST_POSTGRES_URL`. Without it the caller skips,
/// saying so; under CI (`CI=true`) a missing URL is a failure, because CI must run these tests.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("DUBAN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: CI=true but DUBAN_TEST_POSTGRES_URL is not set; the PostgreSQL tests must run in CI"
            );
            eprintln!(
                "SKIPPED {test}: DUBAN_TEST_POSTGRES_URL is not set, so there is no PostgreSQL to test against"
            );
            None
        }
    }
}

/// A fresh schema on the test server, dropped when this value is dropped. `url` connects with
/// that schema as the search path, so every test has a database of its own.
pub struct PgSchema {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgSchema {
    pub async fn create(base_url: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "duban_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(base_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-c%20search_path%3D{name}");
        PgSchema {
            url,
            admin_url: base_url.to_owned(),
            name,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop on a thread of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

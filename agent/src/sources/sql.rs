//! A query against a local database (SQLite, PostgreSQL, MySQL/MariaDB) through sqlx's `Any`
//! driver. Columns are found by name (the `fields` mapping); numbers may come back as floats,
//! integers or text (cast DECIMAL columns to DOUBLE in the query).

use sqlx::any::AnyRow;
use sqlx::{Column, Connection, Row};

use super::{Cell, Item, SourceError, item_from_row};
use crate::config::{Fields, Items};

fn cell(row: &AnyRow, name: &str) -> Option<Cell> {
    let index = row.columns().iter().position(|c| c.name() == name)?;
    if let Ok(Some(v)) = row.try_get::<Option<f64>, _>(index) {
        return Some(Cell::Number(v));
    }
    if let Ok(Some(v)) = row.try_get::<Option<i64>, _>(index) {
        return Some(Cell::Number(v as f64));
    }
    if let Ok(Some(v)) = row.try_get::<Option<i32>, _>(index) {
        return Some(Cell::Number(f64::from(v)));
    }
    if let Ok(Some(v)) = row.try_get::<Option<String>, _>(index) {
        return Some(Cell::Text(v));
    }
    None
}

pub async fn query(
    url: &str,
    query: &str,
    items: Items,
    fields: &Fields,
) -> Result<Vec<Item>, SourceError> {
    // The drivers this build has (the `source-postgres` and `source-mysql` features). The only
    // error is "already installed", by an earlier query, with the same list.
    let _ = sqlx::any::install_drivers(&[
        sqlx::sqlite::any::DRIVER,
        #[cfg(feature = "source-postgres")]
        sqlx::postgres::any::DRIVER,
        #[cfg(feature = "source-mysql")]
        sqlx::mysql::any::DRIVER,
    ]);
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .map_err(|e| SourceError::Sql(format!("cannot connect: {e}")))?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(query.to_owned()))
        .fetch_all(&mut conn)
        .await
        .map_err(|e| SourceError::Sql(e.to_string()))?;
    let _ = conn.close().await;
    rows.iter()
        .enumerate()
        .map(|(n, row)| {
            item_from_row(items, fields, |name| cell(row, name)).map_err(|message| {
                SourceError::Row {
                    location: format!("query row {}", n + 1),
                    message,
                }
            })
        })
        .collect()
}

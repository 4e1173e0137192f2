//! CSV (with a header row) and JSON (an array of objects) files.

use std::collections::HashMap;
use std::path::Path;

use super::{Cell, Item, SourceError, item_from_row};
use crate::config::{Fields, Items};

async fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    tokio::fs::read(path).await.map_err(|e| SourceError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

pub async fn read_csv(
    path: &Path,
    items: Items,
    fields: &Fields,
) -> Result<Vec<Item>, SourceError> {
    let bytes = read(path).await?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(bytes.as_slice());
    let row_error = |line: u64, message: String| SourceError::Row {
        location: format!("{}:{line}", path.display()),
        message,
    };
    let headers: HashMap<String, usize> = reader
        .headers()
        .map_err(|e| row_error(1, e.to_string()))?
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim_start_matches('\u{feff}').to_owned(), i))
        .collect();
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record
            .map_err(|e| row_error(e.position().map(|p| p.line()).unwrap_or(0), e.to_string()))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(|cell| cell.is_empty()) {
            continue;
        }
        let item = item_from_row(items, fields, |name| {
            headers
                .get(name)
                .and_then(|&i| record.get(i))
                .filter(|v| !v.is_empty())
                .map(|v| Cell::Text(v.to_owned()))
        })
        .map_err(|m| row_error(line, m))?;
        out.push(item);
    }
    Ok(out)
}

pub async fn read_json(
    path: &Path,
    items: Items,
    fields: &Fields,
) -> Result<Vec<Item>, SourceError> {
    let bytes = read(path).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| SourceError::Row {
            location: format!("{}:{}", path.display(), e.line()),
            message: e.to_string(),
        })?;
    let rows = value.as_array().ok_or_else(|| SourceError::Row {
        location: path.display().to_string(),
        message: "expected a JSON array of objects".into(),
    })?;
    rows.iter()
        .enumerate()
        .map(|(n, row)| {
            object_item(row, items, fields).map_err(|message| SourceError::Row {
                location: format!("{}[{n}]", path.display()),
                message,
            })
        })
        .collect()
}

/// One JSON object as an item (also used for the command source's JSON lines).
pub fn object_item(row: &serde_json::Value, items: Items, fields: &Fields) -> Result<Item, String> {
    let object = row.as_object().ok_or("expected a JSON object")?;
    item_from_row(items, fields, |name| match object.get(name) {
        Some(serde_json::Value::Number(n)) => n.as_f64().map(Cell::Number),
        Some(serde_json::Value::String(s)) => Some(Cell::Text(s.clone())),
        _ => None,
    })
}

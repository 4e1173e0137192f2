//! CSV (with a header row) and JSON (an array of objects) files, in UTF-8 (with or without a
//! byte-order mark) or, with `encoding = "gbk"`, as Excel on Chinese Windows writes them.

use std::collections::HashMap;
use std::path::Path;

use super::{Cell, Item, SourceError, item_from_row};
use crate::config::{Encoding, Fields, Items};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads a file as text in `encoding`. A file that is not valid in it is an error that says
/// where, and what the encoding probably is.
pub async fn read_text(path: &Path, encoding: Encoding) -> Result<String, SourceError> {
    let bytes = tokio::fs::read(path).await.map_err(|e| SourceError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    decode(bytes, encoding).map_err(|message| SourceError::Read {
        path: path.display().to_string(),
        message,
    })
}

fn decode(bytes: Vec<u8>, encoding: Encoding) -> Result<String, String> {
    let gb18030 = |bytes: &[u8]| {
        encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|text| text.into_owned())
    };
    match encoding {
        Encoding::Utf8 => {
            let body = bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes);
            match std::str::from_utf8(body) {
                Ok(text) => Ok(text.to_owned()),
                Err(error) => {
                    let at = error.valid_up_to();
                    let line = body[..at].iter().filter(|b| **b == b'\n').count() + 1;
                    let guess = if gb18030(body).is_some() {
                        "it is probably GBK, as Excel on Chinese Windows saves CSV: set encoding = \"gbk\" in this [[source]]"
                    } else {
                        "save it as UTF-8, or set encoding = \"gbk\" or \"gb18030\" in this [[source]] if it is one of those"
                    };
                    Err(format!("not valid UTF-8 (line {line}, byte {at}); {guess}"))
                }
            }
        }
        Encoding::Gbk | Encoding::Gb18030 => {
            if bytes.starts_with(UTF8_BOM) {
                return Err(format!(
                    "starts with a UTF-8 byte-order mark, so it is UTF-8, not {}: remove encoding from this [[source]]",
                    encoding.name()
                ));
            }
            gb18030(&bytes).ok_or_else(|| {
                let utf8 = std::str::from_utf8(&bytes).is_ok();
                format!(
                    "not valid {}{}",
                    encoding.name(),
                    if utf8 {
                        "; it is valid UTF-8: remove encoding from this [[source]]"
                    } else {
                        ""
                    }
                )
            })
        }
    }
}

pub async fn read_csv(
    path: &Path,
    encoding: Encoding,
    items: Items,
    fields: &Fields,
) -> Result<Vec<Item>, SourceError> {
    let text = read_text(path, encoding).await?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
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
    encoding: Encoding,
    items: Items,
    fields: &Fields,
) -> Result<Vec<Item>, SourceError> {
    let text = read_text(path, encoding).await?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| SourceError::Row {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// "指标,期间,数值\n专利,2018Q1,5\n" as Excel on Chinese Windows saves it (GBK).
    fn gbk_csv() -> Vec<u8> {
        let (bytes, _, unmappable) = encoding_rs::GBK.encode("指标,期间,数值\n专利,2018Q1,5\n");
        assert!(!unmappable);
        bytes.into_owned()
    }

    #[test]
    fn gbk_is_decoded_when_asked_and_named_when_not() {
        let text = decode(gbk_csv(), Encoding::Gbk).unwrap();
        assert_eq!(text, "指标,期间,数值\n专利,2018Q1,5\n");
        assert_eq!(decode(gbk_csv(), Encoding::Gb18030).unwrap(), text);
        let error = decode(gbk_csv(), Encoding::Utf8).unwrap_err();
        assert!(
            error.starts_with("not valid UTF-8 (line 1, byte ")
                && error.contains("it is probably GBK")
                && error.contains("encoding = \"gbk\""),
            "{error}"
        );
    }

    #[test]
    fn utf8_with_or_without_a_byte_order_mark_reads_the_same() {
        let plain = "指标,期间\n".as_bytes().to_vec();
        let mut bom = UTF8_BOM.to_vec();
        bom.extend_from_slice(&plain);
        assert_eq!(decode(bom.clone(), Encoding::Utf8).unwrap(), "指标,期间\n");
        assert_eq!(decode(plain, Encoding::Utf8).unwrap(), "指标,期间\n");
        let error = decode(bom, Encoding::Gbk).unwrap_err();
        assert!(error.contains("UTF-8 byte-order mark"), "{error}");
    }
}

//! A program that prints one JSON object per line. It runs with a timeout; a non-zero exit, a
//! timeout or a bad line is a collection error, never a crash, and the child is killed on
//! timeout.

use std::process::Stdio;
use std::time::Duration;

use super::files::object_item;
use super::{Item, SourceError};
use crate::config::{Fields, Items};

pub async fn run(
    argv: &[String],
    timeout: Duration,
    items: Items,
    fields: &Fields,
) -> Result<Vec<Item>, SourceError> {
    let program = argv[0].clone();
    let error = |message: String| SourceError::Command {
        program: program.clone(),
        message,
    };
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| error(format!("could not start: {e}")))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(result) => result.map_err(|e| error(format!("failed: {e}")))?,
        Err(_) => return Err(error(format!("timed out after {timeout:?} and was killed"))),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(error(format!(
            "exited with {}: {}",
            output.status,
            stderr.trim().chars().take(500).collect::<String>()
        )));
    }
    let stdout = String::from_utf8(output.stdout)
        .map_err(|_| error("printed output that is not UTF-8".into()))?;
    let mut out = Vec::new();
    for (n, line) in stdout.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| SourceError::Row {
                location: format!("{program} output line {}", n + 1),
                message: e.to_string(),
            })?;
        out.push(
            object_item(&value, items, fields).map_err(|message| SourceError::Row {
                location: format!("{program} output line {}", n + 1),
                message,
            })?,
        );
    }
    Ok(out)
}

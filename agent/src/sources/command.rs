//! A program that prints one JSON object per line. It runs with a timeout; a non-zero exit, a
//! timeout or a bad line is a collection error, never a crash. The program runs in a process
//! group of its own, and at the timeout the whole group is killed: a script's own children (a
//! `curl`, a `psql`) do not outlive it.

use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;

use super::files::object_item;
use super::{Item, SourceError};
use crate::config::{Fields, Items};

struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

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
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| error(format!("could not start: {e}")))?;
    let group = child.id().and_then(|id| Pid::from_raw(id as i32));
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let finished = {
        let run = async {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let (status, _, _) = tokio::try_join!(
                child.wait(),
                out.read_to_end(&mut stdout),
                err.read_to_end(&mut stderr)
            )?;
            Ok::<_, std::io::Error>(Output {
                status,
                stdout,
                stderr,
            })
        };
        tokio::time::timeout(timeout, run).await
    };
    let output = match finished {
        Ok(result) => result.map_err(|e| error(format!("failed: {e}")))?,
        Err(_) => {
            if let Some(group) = group {
                // ESRCH: the group is already gone; nothing is left to kill.
                let _ = kill_process_group(group, Signal::KILL);
            }
            let _ = child.kill().await;
            return Err(error(format!(
                "timed out after {timeout:?}; it was killed with every process it started"
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The state letter of a process in /proc, or `None` once it is gone.
    fn state(pid: &str) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
    }

    #[tokio::test]
    async fn at_the_timeout_the_program_and_what_it_started_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let argv = vec!["sh".to_owned(), "-c".to_owned(), script];
        let started = std::time::Instant::now();
        let result = run(
            &argv,
            Duration::from_millis(500),
            Items::Values,
            &Fields::default(),
        )
        .await;
        let Err(SourceError::Command { message, .. }) = result else {
            panic!("expected a timeout error, got {result:?}");
        };
        assert!(message.contains("timed out"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(60));
        let grandchild = std::fs::read_to_string(&pidfile).unwrap();
        let grandchild = grandchild.trim();
        // SIGKILL is delivered asynchronously; a killed process is gone or a zombie at once
        // after delivery.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match state(grandchild) {
                None | Some('Z') | Some('X') => break,
                Some(other) => assert!(
                    std::time::Instant::now() < deadline,
                    "the program's child {grandchild} is still alive (state {other}) after the timeout"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn output_and_exit_status_are_read_in_full() {
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "echo '{\"indicator\": \"pct-applications\", \"period\": \"2018Q1\", \"value\": 3}'"
                .to_owned(),
        ];
        let items = run(
            &argv,
            Duration::from_secs(30),
            Items::Values,
            &Fields::default(),
        )
        .await
        .unwrap();
        assert_eq!(items.len(), 1);
        let failing = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "echo oops >&2; exit 3".to_owned(),
        ];
        let Err(SourceError::Command { message, .. }) = run(
            &failing,
            Duration::from_secs(30),
            Items::Values,
            &Fields::default(),
        )
        .await
        else {
            panic!("a failing program is an error");
        };
        assert!(message.contains("oops"), "{message}");
    }
}

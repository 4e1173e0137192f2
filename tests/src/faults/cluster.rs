//! A private PostgreSQL cluster in a temporary directory (`initdb`, `pg_ctl`), on a port of its
//! own, that a scenario may stop and start without touching the machine's own server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian puts the server programs (`/usr/lib/postgresql/<version>/bin`), the newest
/// first; `None` when there are none.
pub fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// A cluster made with `initdb`, stopped (with `-m immediate`) and removed when dropped.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Cluster {
    /// Makes and starts a cluster with trust authentication on 127.0.0.1. PostgreSQL refuses
    /// to run as root, so under root the cluster runs as the `postgres` user (which owns the
    /// directory).
    pub fn start(bin: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let cluster = Cluster {
            bin: bin.to_owned(),
            data,
            _dir: dir,
            port,
        };
        if is_root() {
            chown_postgres(cluster._dir.path())?;
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "--encoding=UTF8",
            ],
        )?;
        cluster.start_server()?;
        cluster.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "faults",
            ],
        )?;
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/faults", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self._dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                self._dir.path().join("server.log").to_str().unwrap(),
                "-w",
                "start",
            ],
        )
    }

    /// Stops the server: `fast` disconnects clients and shuts down cleanly; `immediate` is a
    /// crash (recovery at the next start).
    pub fn stop_server(&self, mode: &str) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        command.args(args).current_dir(self._dir.path());
        super::succeed(&mut command, &format!("{program} {}", args.join(" ")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop_server("immediate");
    }
}

fn is_root() -> bool {
    // Our own uid, read through /proc: no libc dependency for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn chown_postgres(dir: &Path) -> Result<(), String> {
    super::succeed(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir),
        &format!("chown postgres {}", dir.display()),
    )
}

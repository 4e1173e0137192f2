//! deploy/debian: the two packages, built by `deploy/debian/build` from this build's programs,
//! installed with apt into a minimal Debian made by debootstrap, as a district admin would:
//! files, the system users, permissions, the units verified by `systemd-analyze`, the programs
//! run from their installed paths as their service users, an upgrade to a higher version that
//! keeps the edited configuration and the data, a remove that keeps the data, and a purge that
//! deletes it. Needs root (chroot) and debootstrap; elsewhere a printed skip, never under CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use duban_e2e::{binary, require_program};

const TEST: &str = "debian packages";

/// Where debootstrap fetches from; `DUBAN_TEST_DEBIAN_MIRROR` overrides it.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn output(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `command`, fails the test unless it succeeds, and returns stdout and stderr together.
fn must(command: &mut Command) -> String {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    text(&out)
}

/// A minimal Debian root with systemd, the suite of this machine's, made with debootstrap.
struct Root {
    path: PathBuf,
}

impl Root {
    fn make(path: PathBuf, cache: &Path) -> Root {
        let os = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
        let suite = os
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .expect("VERSION_CODENAME in /etc/os-release")
            .trim_matches('"')
            .to_owned();
        let mirror =
            std::env::var("DUBAN_TEST_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
        std::fs::create_dir_all(cache).unwrap();
        // systemd (and procps, for kill) as on any server that runs the units.
        eprintln!("debootstrap --variant=minbase --include=systemd,procps {suite} from {mirror}");
        let started = std::time::Instant::now();
        must(
            Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg("--include=systemd,procps")
                .arg(format!("--cache-dir={}", cache.display()))
                .arg(&suite)
                .arg(&path)
                .arg(&mirror),
        );
        eprintln!("debootstrap: {:.0?}", started.elapsed());
        Root { path }
    }

    /// `chroot ROOT args…` as root.
    fn run(&self, args: &[&str]) -> Output {
        output(
            Command::new("chroot")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .arg(&self.path)
                .args(args),
        )
    }

    /// `chroot ROOT args…` as root; must succeed.
    fn must(&self, args: &[&str]) -> String {
        must(
            Command::new("chroot")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .arg(&self.path)
                .args(args),
        )
    }

    /// `chroot --userspec=USER:USER ROOT args…`; must succeed.
    fn must_as(&self, user: &str, args: &[&str]) -> String {
        must(
            Command::new("chroot")
                .arg(format!("--userspec={user}:{user}"))
                .arg(&self.path)
                .args(args),
        )
    }

    /// `stat -c '%a %U %G'` of a path inside the root, by the root's own users.
    fn mode(&self, path: &str) -> String {
        self.must(&["stat", "-c", "%a %U %G", path])
            .trim()
            .to_owned()
    }

    fn exists(&self, path: &str) -> bool {
        self.at(path).exists()
    }

    fn at(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.at(path)).unwrap_or_else(|e| panic!("{path} in the root: {e}"))
    }

    /// `apt-get install` of the packages (copied into the root's /tmp), as README.md's
    /// `apt install ./duban-agent_*.deb`; returns what apt and the maintainer scripts printed.
    fn install(&self, debs: &[PathBuf]) -> String {
        let mut args: Vec<String> = ["apt-get", "install", "-y", "--no-install-recommends"]
            .map(String::from)
            .to_vec();
        for deb in debs {
            let name = deb.file_name().unwrap().to_str().unwrap();
            std::fs::copy(deb, self.at("/tmp").join(name)).unwrap();
            args.push(format!("/tmp/{name}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.must(&args)
    }

    fn status(&self, package: &str) -> String {
        let out = self.run(&["dpkg-query", "-W", "-f", "${Status} ${Version}", package]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `deploy/debian/build` of the programs of this build, with `version` (or the default).
fn build_packages(out: &Path, version: Option<&str>) -> Vec<PathBuf> {
    let bin_dir = binary("duban-agent").parent().unwrap().to_owned();
    assert!(binary("duban-aggregator").exists());
    let mut command = Command::new("bash");
    // The debug build's programs are large: gzip -1 packs them in seconds, xz in a minute.
    command
        .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip")
        .env("DPKG_DEB_COMPRESSOR_LEVEL", "1")
        .arg(repo().join("deploy/debian/build"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out);
    if let Some(version) = version {
        command.args(["--version", version]);
    }
    let printed = must(&mut command);
    let debs: Vec<PathBuf> = printed.lines().map(PathBuf::from).collect();
    assert_eq!(debs.len(), 2, "two packages: {printed}");
    for (deb, name) in debs.iter().zip(["duban-agent_", "duban-aggregator_"]) {
        let file = deb.file_name().unwrap().to_str().unwrap();
        assert!(file.starts_with(name) && file.ends_with(".deb"), "{file}");
        assert!(deb.exists(), "{}", deb.display());
    }
    debs
}

fn field(deb: &Path, name: &str) -> String {
    must(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_owned()
}

fn is_root() -> bool {
    let out = output(Command::new("id").arg("-u"));
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn the_packages_install_upgrade_remove_and_purge_in_a_minimal_debian() {
    if !is_root() {
        duban_testkit::skip(TEST, "chroot and debootstrap need root (uid 0)");
        return;
    }
    if !(require_program("debootstrap", "debootstrap")
        && require_program("systemd-analyze", "systemd"))
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let first = build_packages(&work.path().join("first"), None);
    let version = field(&first[0], "Version");
    let higher = format!("{version}+1");
    let second = build_packages(&work.path().join("second"), Some(&higher));
    must(Command::new("dpkg").args(["--compare-versions", &higher, "gt", &version]));
    for deb in &first {
        let listing = must(Command::new("dpkg-deb").arg("--contents").arg(deb));
        eprintln!("{}:\n{listing}", deb.display());
        assert_eq!(field(deb, "Version"), version);
    }

    let root = Root::make(
        work.path().join("root"),
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("debootstrap-cache"),
    );

    // Install: the programs, the units, users, directories and configuration.
    let installed = root.install(&first);
    eprintln!("{installed}");
    for (package, daemon) in [("duban-agent", "run"), ("duban-aggregator", "serve")] {
        assert!(
            installed.contains(&format!("{package} is installed but not started")),
            "{installed}"
        );
        assert_eq!(
            root.status(package),
            format!("install ok installed {version}")
        );
        assert_eq!(root.mode(&format!("/usr/bin/{package}")), "755 root root");
        assert_eq!(
            root.mode(&format!("/lib/systemd/system/{package}.service")),
            "644 root root"
        );
        assert!(root.exists(&format!("/usr/share/doc/{package}/copyright")));
        let help = root.read(&format!("/usr/share/doc/{package}/help.txt"));
        assert!(
            help.contains(&format!("$ {package} {daemon} --help")),
            "help.txt of {package} has each subcommand's --help:\n{help}"
        );
    }
    for (user, state, config) in [
        (
            "duban-agent",
            "/var/lib/duban-agent",
            "/etc/duban/agent.toml",
        ),
        ("duban", "/var/lib/duban", "/etc/duban/aggregator.toml"),
    ] {
        let entry = root.must(&["getent", "passwd", user]);
        let fields: Vec<&str> = entry.trim().split(':').collect();
        let uid: u32 = fields[2].parse().unwrap();
        assert!(uid < 1000, "{user} is a system user: {entry}");
        assert_eq!(fields[5], state, "{entry}");
        assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
        assert_eq!(root.mode(state), format!("700 {user} {user}"));
        assert_eq!(root.mode(config), format!("640 root {user}"));
    }
    let conffiles = root.must(&["dpkg-query", "-W", "-f", "${Conffiles}\n", "duban-agent"]);
    assert!(conffiles.contains("/etc/duban/agent.toml"), "{conffiles}");
    assert_eq!(
        root.read("/etc/duban/agent.toml"),
        std::fs::read_to_string(repo().join("deploy/examples/agent.toml")).unwrap()
    );

    // The units, verified against the installed root (their programs, users and paths).
    let verified = must(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.path.display()))
            .args([
                "/lib/systemd/system/duban-agent.service",
                "/lib/systemd/system/duban-aggregator.service",
            ]),
    );
    assert!(
        !verified.contains("duban"),
        "systemd-analyze verify complains:\n{verified}"
    );

    // The programs from their installed paths: the plan, the aggregator's schema as its own
    // user, and an agent set up as docs/AGENT.md says (key, certificates, configuration).
    root.must(&["duban-aggregator", "plan", "check"]);
    root.must(&[
        "duban-aggregator",
        "plan",
        "check",
        "/usr/share/duban/plans/qingdao-2017.toml",
    ]);
    root.must_as(
        "duban",
        &[
            "duban-aggregator",
            "migrate",
            "--config",
            "/etc/duban/aggregator.toml",
        ],
    );
    assert!(root.exists("/var/lib/duban/duban.db"));
    root.must(&[
        "duban-aggregator",
        "dev-ca",
        "--out",
        "/etc/duban/tls",
        "--units",
        "laoshan",
    ]);
    root.must(&["duban-agent", "keygen", "--out", "/etc/duban"]);
    for key in ["/etc/duban/signing.key", "/etc/duban/tls/units/laoshan.key"] {
        root.must(&["chgrp", "duban-agent", key]);
        root.must(&["chmod", "0640", key]);
    }
    std::fs::create_dir_all(root.at("/srv/exports")).unwrap();
    std::fs::write(
        root.at("/srv/exports/pct.csv"),
        "indicator,period,value\npct-applications,2018Q1,210\n",
    )
    .unwrap();
    let edited = "# Edited by the district's admin.\n\
        unit = \"laoshan\"\nplan = \"qingdao-ip-2017\"\nprivate_key = \"signing.key\"\n\n\
        [aggregator]\nendpoints = [\"https://127.0.0.1:7700\"]\nca = \"tls/ca.crt\"\n\
        cert = \"tls/units/laoshan.crt\"\nkey = \"tls/units/laoshan.key\"\n\n\
        [outbox]\npath = \"/var/lib/duban-agent/outbox.db\"\n\n\
        [[source]]\nname = \"pct\"\nkind = \"csv\"\npath = \"/srv/exports/pct.csv\"\nevery = \"1h\"\n";
    std::fs::write(root.at("/etc/duban/agent.toml"), edited).unwrap();
    let checked = root.must_as(
        "duban-agent",
        &[
            "duban-agent",
            "check",
            "--offline",
            "--config",
            "/etc/duban/agent.toml",
        ],
    );
    assert!(checked.contains("valid"), "{checked}");
    let collected = root.must_as(
        "duban-agent",
        &[
            "duban-agent",
            "collect",
            "--once",
            "--send-for",
            "1s",
            "--config",
            "/etc/duban/agent.toml",
        ],
    );
    eprintln!("{collected}");
    assert!(root.exists("/var/lib/duban-agent/outbox.db"));
    let outbox = std::fs::read(root.at("/var/lib/duban-agent/outbox.db")).unwrap();
    let database = std::fs::read(root.at("/var/lib/duban/duban.db")).unwrap();

    // Upgrade to a higher version: the edit, the permissions and the data stay.
    let upgraded = root.install(&second);
    eprintln!("{upgraded}");
    for package in ["duban-agent", "duban-aggregator"] {
        assert_eq!(
            root.status(package),
            format!("install ok installed {higher}")
        );
        assert!(
            !upgraded.contains(&format!("{package} is installed but not started")),
            "an upgrade is not a first install:\n{upgraded}"
        );
    }
    assert_eq!(root.read("/etc/duban/agent.toml"), edited);
    assert_eq!(root.mode("/etc/duban/agent.toml"), "640 root duban-agent");
    assert_eq!(root.mode("/etc/duban/aggregator.toml"), "640 root duban");
    assert_eq!(
        std::fs::read(root.at("/var/lib/duban-agent/outbox.db")).unwrap(),
        outbox
    );
    root.must_as(
        "duban-agent",
        &[
            "duban-agent",
            "check",
            "--offline",
            "--config",
            "/etc/duban/agent.toml",
        ],
    );

    // Remove: the programs go, the data and the configuration stay, and the output says so.
    let removed = root.must(&["apt-get", "remove", "-y", "duban-agent", "duban-aggregator"]);
    eprintln!("{removed}");
    for (package, state) in [
        ("duban-agent", "/var/lib/duban-agent"),
        ("duban-aggregator", "/var/lib/duban"),
    ] {
        assert!(
            removed.contains(&format!("{package} removed. Kept: its data in {state}")),
            "{removed}"
        );
        assert!(!root.exists(&format!("/usr/bin/{package}")));
        assert!(
            root.status(package)
                .starts_with("deinstall ok config-files")
        );
    }
    assert_eq!(
        std::fs::read(root.at("/var/lib/duban-agent/outbox.db")).unwrap(),
        outbox
    );
    assert_eq!(
        std::fs::read(root.at("/var/lib/duban/duban.db")).unwrap(),
        database
    );
    assert_eq!(root.read("/etc/duban/agent.toml"), edited);

    // Purge: the data and the configuration go, the admin's own files stay, and it says so.
    let purged = root.must(&["apt-get", "purge", "-y", "duban-agent", "duban-aggregator"]);
    eprintln!("{purged}");
    for (package, state, config) in [
        (
            "duban-agent",
            "/var/lib/duban-agent",
            "/etc/duban/agent.toml",
        ),
        (
            "duban-aggregator",
            "/var/lib/duban",
            "/etc/duban/aggregator.toml",
        ),
    ] {
        assert!(
            purged.contains(&format!("{package} purged: deleted {state}")),
            "{purged}"
        );
        assert!(!root.exists(state), "{state} is gone after purge");
        assert!(!root.exists(config), "{config} is gone after purge");
        assert_eq!(root.status(package), "");
    }
    assert!(root.exists("/etc/duban/signing.key"));
    assert!(root.exists("/etc/duban/tls/ca.crt"));
}

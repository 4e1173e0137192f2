//! The aggregator's operators at the command line: flags and the configuration file merged key
//! by key, credentials from the environment, commands that only read never writing, a closed
//! pipe, a first start that does not flood, mutes, PostgreSQL errors said once, a changed plan id
//! noticed, and a clerk's task marked done.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use duban_e2e::{AgentSetup, AggregatorProcess, binary, ok, run, wait_until};

fn aggregator(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary("duban-aggregator"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn both(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn flags_merge_with_the_configuration_file_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(aggregator(
        d,
        &["dev-ca", "--out", "tls", "--units", "laoshan"],
    ));
    std::fs::copy(d.join("tls/server.crt"), d.join("renewed.crt")).unwrap();
    let config = d.join("aggregator.toml");
    std::fs::write(
        &config,
        "database_url = \"sqlite://from-file.db\"\n[tls]\ncert = \"tls/server.crt\"\nkey = \"tls/server.key\"\nclient_ca = \"tls/ca.crt\"\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    // One flag replaces one key; the file's other TLS keys stand (relative to the file).
    let renewed = d.join("renewed.crt");
    let server = AggregatorProcess::start(&[
        "--config",
        config_arg,
        "--tls-cert",
        renewed.to_str().unwrap(),
    ]);
    assert!(server.log().contains("tls=true"), "{}", server.log());
    drop(server);
    // A missing file is named.
    let out = aggregator(
        d,
        &["serve", "--config", config_arg, "--tls-cert", "missing.crt"],
    );
    assert!(!out.status.success());
    assert!(
        both(&out).contains(
            "invalid TLS configuration: missing.crt: the TLS certificate: cannot read: No such file"
        ),
        "{}",
        both(&out)
    );
    // What is missing is named when the TLS keys do not add up.
    let partial = d.join("partial.toml");
    std::fs::write(
        &partial,
        "[tls]\ncert = \"tls/server.crt\"\nkey = \"tls/server.key\"\n",
    )
    .unwrap();
    let out = aggregator(d, &["serve", "--config", partial.to_str().unwrap()]);
    assert!(
        both(&out).contains("tls: TLS needs all three files; missing: client_ca (--client-ca)"),
        "{}",
        both(&out)
    );

    // Where the database is: --database-url, else DUBAN_DATABASE_URL, else the file; a relative
    // path in the file is relative to the file's directory, wherever the command runs.
    let _ = std::fs::remove_file(d.join("from-file.db"));
    let elsewhere = tempfile::tempdir().unwrap();
    ok(aggregator(
        elsewhere.path(),
        &["migrate", "--config", config_arg],
    ));
    assert!(
        d.join("from-file.db").exists() && !elsewhere.path().join("from-file.db").exists(),
        "relative to the file's directory"
    );
    let out = Command::new(binary("duban-aggregator"))
        .args(["migrate", "--config", config_arg])
        .env("DUBAN_DATABASE_URL", "sqlite://from-env.db")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert!(d.join("from-env.db").exists());
    let out = Command::new(binary("duban-aggregator"))
        .args([
            "migrate",
            "--config",
            config_arg,
            "--database-url",
            "sqlite://from-flag.db",
        ])
        .env("DUBAN_DATABASE_URL", "sqlite://from-env-2.db")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    assert!(d.join("from-flag.db").exists() && !d.join("from-env-2.db").exists());
    // Admin commands read the file's database too.
    let listed = ok(aggregator(d, &["keys", "list", "--config", config_arg]));
    assert!(listed.contains("0 keys"), "{listed}");
}

#[test]
fn commands_that_only_read_never_create_or_migrate_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        &["status"][..],
        &["keys", "list"],
        &["reports", "list"],
        &["values", "show"],
        &["admin-log"],
        &["export", "units"],
    ] {
        let out = aggregator(d, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            both(&out).contains("no database at ./duban-data/duban.db"),
            "{args:?}: {}",
            both(&out)
        );
        assert!(
            !d.join("duban-data").exists(),
            "{args:?} created a directory"
        );
    }
    // A database of another program is not taken for one.
    std::fs::write(d.join("other.db"), b"").unwrap();
    let python = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3; sqlite3.connect({:?}).execute('create table x (a)')",
                d.join("other.db").to_str().unwrap()
            ),
        ])
        .status()
        .unwrap();
    assert!(python.success());
    let before = std::fs::read(d.join("other.db")).unwrap();
    let out = aggregator(d, &["status", "--database-url", "sqlite://other.db"]);
    assert!(
        both(&out).contains("is not a duban database"),
        "{}",
        both(&out)
    );
    assert_eq!(
        std::fs::read(d.join("other.db")).unwrap(),
        before,
        "unchanged"
    );
}

/// A PostgreSQL role that may only read: `status` and `values show` work with it.
#[test]
fn a_read_only_postgresql_role_can_read() {
    let Some(base) = duban_e2e::postgres_url() else {
        return;
    };
    let schema = format!("duban_ro_{}", std::process::id());
    let role = format!("duban_reader_{}", std::process::id());
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .args([base.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{sql}: {}", both(&out));
    };
    psql(&format!("CREATE SCHEMA {schema}"));
    let admin_url = format!("{base}?options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    ok(aggregator(
        dir.path(),
        &["migrate", "--database-url", &admin_url],
    ));
    psql(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"
    ));
    let reader = base
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1)
        .replacen("postgres://root@", &format!("postgres://{role}@"), 1);
    let reader_url = format!("{reader}?options=-c%20search_path%3D{schema}");
    let status = aggregator(dir.path(), &["status", "--database-url", &reader_url]);
    let values = aggregator(
        dir.path(),
        &["values", "show", "--database-url", &reader_url],
    );
    psql(&format!("DROP SCHEMA {schema} CASCADE; DROP ROLE {role}"));
    assert!(status.status.success(), "{}", both(&status));
    assert!(values.status.success(), "{}", both(&values));
    assert!(
        !both(&status).contains("_sqlx_migrations"),
        "{}",
        both(&status)
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    ok(aggregator(dir.path(), &["migrate"]));
    let bin = binary("duban-aggregator");
    for command in ["plan show", "status --json", "plan show --json"] {
        let out = Command::new("bash")
            .args([
                "-c",
                &format!("set -o pipefail; {} {command} | head -1", bin.display()),
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{command}: {stderr}");
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}

#[test]
fn a_new_aggregator_does_not_alert_deadlines_from_before_it_went_live_and_mutes_hold() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    // The plan ended in 2020: today every one of its deadlines is in the past.
    let server = AggregatorProcess::start(&[
        "--database-url",
        &url,
        "--insecure-plaintext",
        "--evaluate-every-seconds",
        "1",
    ]);
    wait_until(Duration::from_secs(30), "a first evaluation", || {
        duban_e2e::http_get(&server.http.to_string(), "/metrics")
            .lines()
            .any(|l| l.starts_with("duban_alerts_before_go_live ") && !l.ends_with(" 0"))
    });
    let alerts = duban_e2e::http_get(&server.http.to_string(), "/api/v1/alerts");
    let alerts: serde_json::Value = serde_json::from_str(&alerts).unwrap();
    assert_eq!(alerts["alerts"], serde_json::json!([]), "nothing alerted");
    assert!(
        server
            .log()
            .contains("alerts are sent for deadlines from the go-live date on"),
        "{}",
        server.log()
    );
    drop(server);
    let status: serde_json::Value = serde_json::from_str(&ok(aggregator(
        dir.path(),
        &["status", "--database-url", &url, "--json"],
    )))
    .unwrap();
    assert_eq!(status["alerts"], serde_json::json!([]));
    let before = status["deadlines_before_go_live"].as_u64().unwrap();
    assert!(before > 100, "{before}");
    // What-if from the plan's start: the history is there, not lost.
    let from_start: serde_json::Value = serde_json::from_str(&ok(aggregator(
        dir.path(),
        &[
            "status",
            "--database-url",
            &url,
            "--json",
            "--go-live",
            "2017-07-01",
        ],
    )))
    .unwrap();
    let all = from_start["alerts"].as_array().unwrap();
    assert!(all.len() as u64 >= before, "{} < {before}", all.len());
    assert_eq!(from_start["deadlines_before_go_live"], 0);
    assert!(
        all.iter().any(|a| a["labels"]["recipient"] == "laoshan"),
        "{all:?}"
    );
    // A mute by unit, in the configuration file.
    let config = dir.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{url}\"\n[alerts]\ngo_live = \"2017-07-01\"\n[[alerts.mute]]\nunit = \"laoshan\"\nreason = \"moving offices until March\"\n"
        ),
    )
    .unwrap();
    let muted: serde_json::Value = serde_json::from_str(&ok(aggregator(
        dir.path(),
        &["status", "--config", config.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    let left = muted["alerts"].as_array().unwrap();
    assert!(!left.is_empty());
    assert!(
        left.iter()
            .all(|a| a["labels"]["recipient"] != "laoshan" && a["labels"]["unit"] != "laoshan"),
        "a laoshan alert got through the mute"
    );
    assert!(muted["alerts_muted"].as_u64().unwrap() > 0);
    // A mute of everything is refused, naming the key.
    std::fs::write(
        &config,
        format!("database_url = \"{url}\"\n[[alerts.mute]]\nreason = \"quiet\"\n"),
    )
    .unwrap();
    let out = aggregator(
        dir.path(),
        &["status", "--config", config.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        both(&out).contains("alerts.mute[0]: expected at least one of alertname, unit or plan"),
        "{}",
        both(&out)
    );
}

#[test]
fn postgresql_connection_errors_are_said_once_and_at_once() {
    let Some(base) = duban_e2e::postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = aggregator(
        dir.path(),
        &[
            "status",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/test",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let text = both(&out);
    assert!(!out.status.success());
    assert_eq!(
        text.matches("cannot connect to postgres://postgres@127.0.0.1:1/test")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    let (scheme_and_host, _) = base.rsplit_once('/').unwrap();
    let wrong = format!("{scheme_and_host}/duban_no_such_database");
    let out = aggregator(dir.path(), &["status", "--database-url", &wrong]);
    let text = both(&out);
    assert!(!out.status.success());
    assert_eq!(
        text.matches("duban_no_such_database\" does not exist")
            .count(),
        1,
        "{text}"
    );
    // Migrating twice prints no PostgreSQL notice.
    let schema = format!("duban_notice_{}", std::process::id());
    let make = Command::new("psql")
        .args([
            base.as_str(),
            "-q",
            "-c",
            &format!("CREATE SCHEMA {schema}"),
        ])
        .output()
        .unwrap();
    assert!(make.status.success(), "{}", both(&make));
    let url = format!("{base}?options=-c%20search_path%3D{schema}");
    let first = aggregator(dir.path(), &["migrate", "--database-url", &url]);
    let second = aggregator(dir.path(), &["migrate", "--database-url", &url]);
    let _ = Command::new("psql")
        .args([
            base.as_str(),
            "-q",
            "-c",
            &format!("DROP SCHEMA {schema} CASCADE"),
        ])
        .output();
    for out in [first, second] {
        assert!(out.status.success(), "{}", both(&out));
        assert!(
            !both(&out).contains("_sqlx_migrations") && !both(&out).contains("NOTICE"),
            "{}",
            both(&out)
        );
    }
}

#[test]
fn a_database_of_another_plan_id_is_noticed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    let server = AggregatorProcess::start(&["--database-url", &url, "--insecure-plaintext"]);
    let agent = AgentSetup::new(
        dir.path(),
        &url,
        "laoshan",
        &format!("http://{}", server.grpc),
        "",
    );
    ok(agent.run(&[
        "submit",
        "--indicator",
        "pct-applications",
        "--period",
        "2018Q1",
        "--value",
        "3",
    ]));
    drop(server);
    let plan = dir.path().join("renamed.toml");
    std::fs::write(
        &plan,
        duban_aggregator::plan::EMBEDDED_PLAN.replacen(
            "id = \"qingdao-ip-2017\"",
            "id = \"qingdao-ip-2017-b\"",
            1,
        ),
    )
    .unwrap();
    let server = AggregatorProcess::start(&[
        "--database-url",
        &url,
        "--insecure-plaintext",
        "--plan",
        plan.to_str().unwrap(),
    ]);
    let log = server.log();
    assert!(
        log.contains("the database holds reports of other plan ids than the plan served")
            && log.contains("qingdao-ip-2017"),
        "{log}"
    );
}

#[test]
fn a_clerk_marks_a_task_done_and_done_means_done() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("duban.db").display());
    let server = AggregatorProcess::start(&["--database-url", &url, "--insecure-plaintext"]);
    let agent = AgentSetup::new(
        dir.path(),
        &url,
        "science-tech",
        &format!("http://{}", server.grpc),
        "",
    );
    // Done with a smaller percent is a contradiction, said before anything is stored.
    let out = agent.run(&[
        "submit-task",
        "--task",
        "2-1-4",
        "--milestone",
        "m1",
        "--period",
        "2018-06",
        "--percent",
        "80",
        "--status",
        "完成",
    ]);
    assert!(!out.status.success());
    assert!(both(&out).contains("done means 100"), "{}", both(&out));
    // Done alone means 100 %, and the milestone is done, not overdue.
    ok(agent.run(&[
        "submit-task",
        "--task",
        "2-1-4",
        "--milestone",
        "m1",
        "--period",
        "2018-06",
        "--status",
        "完成",
    ]));
    let status: serde_json::Value = serde_json::from_str(&ok(run(
        &binary("duban-aggregator"),
        &["status", "--database-url", &url, "--json"],
    )))
    .unwrap();
    let milestone = status["progress"]["milestones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["task"] == "2-1-4" && m["milestone"] == "m1")
        .unwrap()
        .clone();
    assert_eq!(milestone["status"], "done", "{milestone}");
    assert_eq!(milestone["percent"], 100.0);
}

#[test]
fn help_texts_say_each_default_once() {
    let out = ok(run(
        &binary("duban-aggregator"),
        &["reports", "list", "--help"],
    ));
    assert_eq!(out.matches("[default: 100]").count(), 1, "{out}");
}

/// `keys add` and `keys revoke` are recorded with who ran them (the OS user, and who called
/// sudo) and shown by `admin-log`; a refused change records nothing. On SQLite and PostgreSQL.
#[test]
fn key_changes_are_recorded_with_who_made_them() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("duban.db").display());
    let mut urls = vec![(sqlite, None)];
    let schema = format!("duban_admin_{}", std::process::id());
    let psql = |base: &str, sql: &str| {
        let out = Command::new("psql")
            .args([base, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{sql}: {}", both(&out));
    };
    if let Some(base) = duban_e2e::postgres_url() {
        psql(
            &base,
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
        );
        urls.push((
            format!("{base}?options=-c%20search_path%3D{schema}"),
            Some(base),
        ));
    }
    let key = duban_proto::SigningKey::generate();
    let public = dir.path().join("laoshan.pub");
    std::fs::write(&public, key.public_key().to_spki_pem()).unwrap();
    let key_id = key.public_key().key_id().to_string();
    for (url, base) in &urls {
        let run = |args: &[&str], user: &str, sudo: Option<&str>| {
            let mut command = Command::new(binary("duban-aggregator"));
            command
                .args(args)
                .args(["--database-url", url])
                .current_dir(dir.path())
                .env("USER", user)
                .env_remove("SUDO_USER");
            if let Some(caller) = sudo {
                command.env("SUDO_USER", caller);
            }
            command.output().unwrap()
        };
        let log = || -> Vec<serde_json::Value> {
            serde_json::from_slice(&run(&["admin-log", "--json"], "x", None).stdout)
                .expect("admin-log --json")
        };
        ok(run(
            &[
                "keys",
                "add",
                "--unit",
                "laoshan",
                "--public-key",
                public.to_str().unwrap(),
                "--not-after",
                "2030-01-01",
            ],
            "root",
            Some("alice"),
        ));
        // The same key again is refused, and not recorded.
        let again = run(
            &[
                "keys",
                "add",
                "--unit",
                "laoshan",
                "--public-key",
                public.to_str().unwrap(),
            ],
            "bob",
            None,
        );
        assert!(!again.status.success(), "{}", both(&again));
        assert_eq!(log().len(), 1, "{url}: a refused change is not recorded");
        // So is the revocation of a key that does not exist.
        let missing = run(&["keys", "revoke", &"ab".repeat(32)], "bob", None);
        assert!(!missing.status.success(), "{}", both(&missing));
        ok(run(&["keys", "revoke", &key_id], "bob", None));
        let log = log();
        assert_eq!(log.len(), 2, "{url}: {log:?}");
        assert_eq!(log[0]["action"], "keys.add");
        assert_eq!(log[0]["os_user"], "alice (sudo as root)");
        assert_eq!(log[0]["subject"], key_id.as_str());
        assert_eq!(log[0]["unit_id"], "laoshan");
        assert!(
            log[0]["detail"]
                .as_str()
                .unwrap()
                .contains("until 2030-01-01"),
            "{log:?}"
        );
        assert_eq!(log[1]["action"], "keys.revoke");
        assert_eq!(log[1]["os_user"], "bob");
        assert!(!log[1]["host"].as_str().unwrap().is_empty());
        assert!(log[0]["at_ms"].as_i64() <= log[1]["at_ms"].as_i64());
        let text = ok(run(&["admin-log"], "x", None));
        assert!(
            text.contains("alice (sudo as root)@") && text.contains("keys.revoke"),
            "{text}"
        );
        if let Some(base) = base {
            psql(base, &format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
}

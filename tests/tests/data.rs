//! The data over the years of a plan, across real processes (docs/OPERATIONS.md): a running
//! aggregator's SQLite database backed up with `sqlite3 .backup` and restored, a PostgreSQL
//! one with `pg_dump` and `pg_restore`, and a SQLite database moved into PostgreSQL with
//! `duban-aggregator migrate --from … --to …`, after which a real agent carries on. In each,
//! the oracle of the fault harness finds every acknowledged report stored once, with its
//! exact bytes, in what was restored or moved.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use duban_e2e::faults::field::{FieldAgent, signal};
use duban_e2e::faults::oracle::{Oracle, check_agent};
use duban_e2e::faults::senders::{Stream, Tally, on_own_runtime, send};
use duban_e2e::faults::{Stage, eventually};
use duban_e2e::{AggregatorProcess, binary, require_program};

/// Every unit in `units` sends `rounds` reports to the aggregator and resends until each is
/// acknowledged; the oracle remembers them.
fn stream(aggregator: &AggregatorProcess, units: std::ops::Range<usize>, rounds: u64) -> Oracle {
    stream_to(format!("http://{}", aggregator.grpc), units, rounds)
}

fn stream_to(endpoint: String, units: std::ops::Range<usize>, rounds: u64) -> Oracle {
    let oracle = Oracle::default();
    let tally = Tally::default();
    let stream = Stream {
        endpoints: vec![endpoint],
        units,
        rounds,
        batch: 0,
        timeout: Duration::from_secs(5),
        give_up_after: Duration::from_secs(60),
        stop: Default::default(),
    };
    let (o, t) = (oracle.clone(), tally.clone());
    on_own_runtime(move || send(stream, o, t));
    let (sent, acked) = oracle.counts();
    assert_eq!(sent, acked, "every report acknowledged: {tally}");
    oracle
}

fn output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn succeed(command: &mut Command) -> String {
    let out = command.output().expect("the program runs");
    assert!(out.status.success(), "{command:?}: {}", output(&out));
    output(&out)
}

fn psql(url: &str, sql: &str) -> String {
    succeed(Command::new("psql").args([url, "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]))
}

/// A database of its own on the test server, dropped when this is dropped.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(admin: &str, name: &str) -> Self {
        // Two commands: psql runs one -c with several statements in one transaction, which
        // DROP DATABASE refuses.
        psql(
            admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql(admin, &format!("CREATE DATABASE {name}"));
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("a database URL: {admin}"),
        };
        Database {
            admin: admin.to_owned(),
            name: name.to_owned(),
            url,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin.as_str(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[test]
fn a_sqlite_backup_taken_while_the_aggregator_writes_restores_every_acknowledged_report() {
    if !require_program("sqlite3", "sqlite3") {
        return;
    }
    // Units 0 and 1 send before the backup, 2 and 3 while it is taken, 4 to the restored copy.
    let stage = Stage::new(5, None);
    let mut aggregator = stage.start(&[]);
    let before = stream(&aggregator, 0..2, 40);
    // The backup is taken while two other units keep sending.
    let backup = stage.dir.path().join("backup.db");
    let during = {
        let endpoint = format!("http://{}", aggregator.grpc);
        std::thread::spawn(move || stream_to(endpoint, 2..4, 200))
    };
    let db = stage.url.strip_prefix("sqlite://").unwrap().to_owned();
    succeed(
        Command::new("sqlite3")
            .arg(&db)
            .arg(format!(".backup '{}'", backup.display())),
    );
    during.join().unwrap();
    aggregator.child.kill().unwrap();
    let _ = aggregator.child.wait();

    // Restored: the file checks whole, and holds every report acknowledged before it was
    // taken, once, with its bytes.
    let restored = stage.dir.path().join("restored.db");
    std::fs::copy(&backup, &restored).unwrap();
    let check = succeed(
        Command::new("sqlite3")
            .arg(&restored)
            .arg("PRAGMA integrity_check"),
    );
    assert_eq!(check.trim(), "ok");
    let found = before.check(&sqlite_url(&restored));
    assert!(found.is_empty(), "{found:?}");
    // An aggregator serves from it and stores what comes next.
    let restarted = AggregatorProcess::start(&[
        "--database-url",
        &sqlite_url(&restored),
        "--plan",
        stage.plan.to_str().unwrap(),
        "--insecure-plaintext",
    ]);
    let after = stream(&restarted, 4..5, 1);
    let found = after.check(&sqlite_url(&restored));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_postgresql_dump_restored_into_a_new_database_holds_every_acknowledged_report() {
    let test = "a_postgresql_dump_restored_into_a_new_database_holds_every_acknowledged_report";
    let Some(admin) = duban_testkit::postgres_url(test) else {
        return;
    };
    if !require_program("pg_dump", "postgresql-client") {
        return;
    }
    let pid = std::process::id();
    let source = Database::create(&admin, &format!("duban_dump_{pid}"));
    let target = Database::create(&admin, &format!("duban_restore_{pid}"));
    // Units 0 to 2 send before the dump, unit 3 to the restored database.
    let stage = Stage::new(4, Some(source.url.clone()));
    let aggregator = stage.start(&[]);
    let sent = stream(&aggregator, 0..3, 60);
    // Dumped while the aggregator runs (pg_dump reads one snapshot).
    let dump = stage.dir.path().join("duban.dump");
    succeed(
        Command::new("pg_dump")
            .args(["--format=custom", "--file"])
            .arg(&dump)
            .arg(&source.url),
    );
    succeed(
        Command::new("pg_restore")
            .args(["--exit-on-error", "--no-owner", "--dbname", &target.url])
            .arg(&dump),
    );
    let found = sent.check(&target.url);
    assert!(found.is_empty(), "{found:?}");
    drop(aggregator);
    // An aggregator serves from the restored database and stores what comes next.
    let restored = AggregatorProcess::start(&[
        "--database-url",
        &target.url,
        "--plan",
        stage.plan.to_str().unwrap(),
        "--insecure-plaintext",
    ]);
    let more = stream(&restored, 3..4, 1);
    let found = more.check(&target.url);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_running_aggregators_sqlite_database_moves_to_postgresql_and_its_agent_carries_on() {
    let test = "a_running_aggregators_sqlite_database_moves_to_postgresql_and_its_agent_carries_on";
    let Some(admin) = duban_testkit::postgres_url(test) else {
        return;
    };
    let target = Database::create(&admin, &format!("duban_moved_{}", std::process::id()));
    let stage = Stage::new(3, None);
    let aggregator = stage.start(&[]);
    let old_endpoint = format!("http://{}", aggregator.grpc);
    let mut agent = FieldAgent::new(&stage, 0, &old_endpoint, "", "");
    let mut daemon = agent.spawn(&[]);
    let delivered = |agent: &FieldAgent, url: &str| {
        eventually(Duration::from_secs(60), || {
            check_agent(url, &agent.setup, &agent.expected(), &mut Vec::new()).is_empty()
        })
    };
    assert!(delivered(&agent, &stage.url), "{}", agent.setup.log());
    signal(daemon.id(), "TERM");
    let _ = daemon.wait();
    let sent = stream(&aggregator, 1..3, 50);

    // Moved while the SQLite aggregator still runs.
    let migrate = |args: &[&str]| {
        Command::new(binary("duban-aggregator"))
            .arg("migrate")
            .args(args)
            .output()
            .expect("duban-aggregator runs")
    };
    let moved = migrate(&["--from", &stage.url, "--to", &target.url]);
    assert!(moved.status.success(), "{}", output(&moved));
    let moved = output(&moved);
    assert!(moved.contains("reports: "), "{moved}");
    assert!(moved.contains("in 14 tables"), "{moved}");
    let found = sent.check(&target.url);
    assert!(found.is_empty(), "{found:?}");
    let reports = psql(&target.url, "SELECT count(*) FROM reports");

    // A second copy into the same database is refused, and nothing is written.
    let again = migrate(&["--from", &stage.url, "--to", &target.url]);
    assert!(!again.status.success());
    assert!(
        output(&again).contains("is not empty: keys"),
        "{}",
        output(&again)
    );
    assert_eq!(psql(&target.url, "SELECT count(*) FROM reports"), reports);
    // The other way round, or half a command, is refused with the reason.
    let backwards = migrate(&["--from", &target.url, "--to", &stage.url]);
    assert!(!backwards.status.success());
    assert!(
        output(&backwards).contains("--from must be a sqlite:// URL and --to a postgres:// URL"),
        "{}",
        output(&backwards)
    );
    let half = migrate(&["--from", &stage.url]);
    assert_eq!(half.status.code(), Some(2), "{}", output(&half));
    assert!(output(&half).contains("--to"), "{}", output(&half));
    drop(aggregator);

    // The agent, sent to an aggregator on PostgreSQL, carries on: new values accepted under
    // the next seqs, nothing sent again, no seq refused as a replay.
    let on_postgres = AggregatorProcess::start(&[
        "--database-url",
        &target.url,
        "--plan",
        stage.plan.to_str().unwrap(),
        "--insecure-plaintext",
    ]);
    let config = std::fs::read_to_string(&agent.setup.config).unwrap();
    std::fs::write(
        &agent.setup.config,
        config.replace(&old_endpoint, &format!("http://{}", on_postgres.grpc)),
    )
    .unwrap();
    agent.next_round();
    let mut daemon = agent.spawn(&[]);
    let carried_on = delivered(&agent, &target.url);
    signal(daemon.id(), "TERM");
    let _ = daemon.wait();
    assert!(carried_on, "{}", agent.setup.log());
    assert!(
        !agent.setup.log().contains("SEQ_REPLAY"),
        "{}",
        agent.setup.log()
    );
}

/// `SELECT count(*)` on either kind of database, through its own client.
fn count(url: &str, sql: &str) -> u64 {
    let out = match url.strip_prefix("sqlite://") {
        Some(path) => succeed(Command::new("sqlite3").arg(path).arg(sql)),
        None => psql(url, sql),
    };
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: {out}"))
}

/// `duban-aggregator archive` of the stage's plan, on the stage's database: an archive taken
/// while the aggregator runs holds every acknowledged report once with its bytes; an existing
/// file, a plan still open and rows changed after the export each stop it with nothing lost;
/// `--delete` of the closed plan leaves the database without the plan and the archive with
/// all of it.
fn archive_the_plan(stage: &Stage) {
    if !require_program("sqlite3", "sqlite3") || !require_program("faketime", "faketime") {
        return;
    }
    let plan_rows = format!(
        "SELECT count(*) FROM reports WHERE plan_id = '{}'",
        duban_e2e::faults::PLAN_ID
    );
    let archive = |now: Option<&str>, args: &[&str]| {
        let mut command = match now {
            Some(time) => {
                let mut c = Command::new("faketime");
                c.arg(time).arg(binary("duban-aggregator"));
                c
            }
            None => Command::new(binary("duban-aggregator")),
        };
        command
            .arg("archive")
            .args(["--database-url", &stage.url])
            .arg("--plan")
            .arg(&stage.plan)
            .args(args)
            .output()
            .expect("duban-aggregator runs")
    };
    let file = |name: &str| stage.dir.path().join(name);
    let aggregator = stage.start(&[]);
    let sent = stream(&aggregator, 0..2, 30);

    // Taken while the aggregator runs; deletes nothing.
    let first = file("first.db");
    let out = archive(None, &["--out", first.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output(&out));
    assert!(
        output(&out).contains("reports: 60 rows archived and verified"),
        "{}",
        output(&out)
    );
    assert!(
        output(&out).contains("nothing was deleted"),
        "{}",
        output(&out)
    );
    let found = sent.check(&sqlite_url(&first));
    assert!(found.is_empty(), "{found:?}");
    let found = sent.check(&stage.url);
    assert!(found.is_empty(), "{found:?}");
    // The archive is a database of this program's: its own commands read it.
    succeed(
        Command::new(binary("duban-aggregator"))
            .args(["status", "--database-url", &sqlite_url(&first), "--plan"])
            .arg(&stage.plan),
    );

    // An existing file is refused and left as it was.
    let before = std::fs::read(&first).unwrap();
    let again = archive(None, &["--out", first.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", output(&again));
    assert!(
        output(&again).contains("exists: archive writes a new file only"),
        "{}",
        output(&again)
    );
    assert_eq!(std::fs::read(&first).unwrap(), before);

    // While the plan runs (the clock inside its window), --delete is refused before anything
    // is written.
    let open = file("open.db");
    let refused = archive(
        Some("2025-06-01 12:00:00"),
        &["--delete", "--out", open.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", output(&refused));
    assert!(
        output(&refused).contains("runs until 2025-12-31"),
        "{}",
        output(&refused)
    );
    assert!(!open.exists());

    // Rows that change between the export and the delete stop the delete: nothing deleted.
    let changed = file("changed.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exported = runtime
        .block_on(duban_aggregator::store::archive::export_plan(
            &stage.url,
            duban_e2e::faults::PLAN_ID,
            &changed,
            &mut std::io::sink(),
        ))
        .expect("exported");
    let later = stream(&aggregator, 2..3, 5);
    let stopped = runtime.block_on(duban_aggregator::store::archive::delete_archived(
        &stage.url,
        duban_e2e::faults::PLAN_ID,
        &changed,
        &exported,
        &mut std::io::sink(),
    ));
    let error = stopped
        .expect_err("rows changed after the export")
        .to_string();
    assert!(
        error.contains("changed after the export") && error.contains("nothing was deleted"),
        "{error}"
    );
    assert_eq!(count(&stage.url, &plan_rows), 65);
    drop(aggregator);

    // The plan closed (its window ended in 2025): archived, verified, then deleted.
    let last = file("last.db");
    let out = archive(None, &["--delete", "--out", last.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output(&out));
    assert!(
        output(&out).contains(&format!(
            "rows of plan {} deleted from",
            duban_e2e::faults::PLAN_ID
        )),
        "{}",
        output(&out)
    );
    for oracle in [&sent, &later] {
        let found = oracle.check(&sqlite_url(&last));
        assert!(found.is_empty(), "{found:?}");
    }
    assert_eq!(count(&sqlite_url(&last), &plan_rows), 65);
    assert_eq!(count(&stage.url, &plan_rows), 0);
    for table in duban_aggregator::store::archive::PLAN_TABLES {
        let rows = count(
            &stage.url,
            &format!(
                "SELECT count(*) FROM {table} WHERE plan_id = '{}'",
                duban_e2e::faults::PLAN_ID
            ),
        );
        assert_eq!(rows, 0, "{table} still has the plan's rows");
    }
    // The keys stay: they are the units', not the plan's.
    assert!(count(&stage.url, "SELECT count(*) FROM keys") >= 3);
}

#[test]
fn a_closed_plan_is_archived_verified_and_only_then_deleted_on_sqlite() {
    archive_the_plan(&Stage::new(3, None));
}

#[test]
fn a_closed_plan_is_archived_verified_and_only_then_deleted_on_postgresql() {
    let test = "a_closed_plan_is_archived_verified_and_only_then_deleted_on_postgresql";
    let Some(admin) = duban_testkit::postgres_url(test) else {
        return;
    };
    let database = Database::create(&admin, &format!("duban_archive_{}", std::process::id()));
    archive_the_plan(&Stage::new(3, Some(database.url.clone())));
}

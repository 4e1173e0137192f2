//! What a district IT admin, a clerk and an ops engineer meet on a first rollout, across real
//! processes: a lost outbox, `duban-agent check` on configurations that cannot work, a wrong
//! unit corrected, a dead letter rebuilt, a certificate from another CA, GBK exports, the
//! heartbeat and the daemon's first words.

use std::path::Path;
use std::time::Duration;

use duban_e2e::{
    AgentSetup, AggregatorProcess, World, binary, current_values, dev_ca, http_get, ok, run,
    stored_reports, wait_until,
};

fn world() -> World {
    World::new()
}

fn value_of(url: &str, indicator: &str, unit: &str, period: &str) -> Option<(f64, i64)> {
    current_values(url)
        .iter()
        .find(|v| v["indicator_id"] == indicator && v["unit_id"] == unit && v["period"] == period)
        .map(|v| {
            (
                v["value"].as_f64().unwrap(),
                v["revision"].as_i64().unwrap(),
            )
        })
}

fn submit(agent: &AgentSetup, period: &str, value: &str) -> std::process::Output {
    agent.run(&[
        "submit",
        "--indicator",
        "pct-applications",
        "--period",
        period,
        "--value",
        value,
        "--send-for",
        "10s",
    ])
}

fn stdout(out: &std::process::Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn seqs(url: &str) -> Vec<i64> {
    stored_reports(url)
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

fn remove_outbox(agent: &AgentSetup) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(agent.dir.join(format!("outbox.db{suffix}")));
    }
}

#[test]
fn a_lost_outbox_never_reuses_a_seq_and_the_next_reports_are_accepted() {
    let w = world();
    let aggregator = AggregatorProcess::start(&["--database-url", &w.url, "--insecure-plaintext"]);
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        "",
    );
    ok(submit(&agent, "2018Q1", "1"));
    ok(submit(&agent, "2018Q2", "2"));
    assert_eq!(seqs(&w.url), [1, 2]);

    // The outbox file is damaged beyond reading: it is moved aside, and the agent learns from
    // the centre where its key's seqs stand before anything goes out.
    remove_outbox(&agent);
    std::fs::write(
        agent.dir.join("outbox.db"),
        "a disk error left this where the outbox was. ".repeat(200),
    )
    .unwrap();
    let out = submit(&agent, "2018Q3", "3");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("delivered: the centre accepted everything")
            && text.contains("OUTBOX IS CORRUPT"),
        "{text}"
    );
    assert_eq!(seqs(&w.url), [1, 2, 3]);

    // A reinstall: no outbox at all.
    remove_outbox(&agent);
    let out = submit(&agent, "2018Q4", "4");
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(seqs(&w.url), [1, 2, 3, 4]);

    // A correction sent from the new outbox wins: its revision is above the centre's.
    ok(submit(&agent, "2018Q1", "10"));
    assert_eq!(
        value_of(&w.url, "pct-applications", "laoshan", "2018Q1"),
        Some((10.0, 1))
    );
    let rejected = http_get(&aggregator.http.to_string(), "/metrics")
        .lines()
        .find(|l| l.starts_with("duban_reports_rejected_total{reason=\"SEQ_REPLAY\"}"))
        .map(str::to_owned)
        .unwrap();
    assert!(rejected.ends_with(" 0"), "{rejected}");
}

/// A copy of the agent's configuration with `edit` applied, for one check.
fn variant(agent: &AgentSetup, name: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let path = agent.dir.join(format!("{name}.toml"));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn check(config: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["check", "--config", config.to_str().unwrap()];
    args.extend(extra);
    let out = run(&binary("duban-agent"), &args);
    (out.status.success(), stdout(&out))
}

#[test]
fn check_says_exactly_what_keeps_a_configuration_from_working() {
    let w = world();
    let certs = dev_ca(w.root.path(), "tls", "laoshan,shibei");
    let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let aggregator = AggregatorProcess::start_tls(&w.url, &certs, &[]);
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        "",
    );
    agent.use_tls(&certs, "laoshan");
    let (passed, text) = check(&agent.config, &[]);
    assert!(passed, "{text}");
    assert!(
        text.contains("accepts this agent") && text.contains("\nvalid ("),
        "{text}"
    );

    let cases: Vec<(&str, String, Vec<&str>)> = vec![(
        "the key file given as the certificate",
        file("units/laoshan.key"),
        vec![
            "expected a certificate (-----BEGIN CERTIFICATE-----), but this file holds -----BEGIN PRIVATE KEY-----",
        ],
    )];
    for (what, cert, expected) in cases {
        let config = variant(&agent, "cert-is-key", |t| {
            t.replace(&file("units/laoshan.crt"), &cert)
        });
        let (passed, text) = check(&config, &[]);
        assert!(!passed, "{what}: {text}");
        for e in expected {
            assert!(text.contains(e), "{what}: {e}\n{text}");
        }
    }
    // A certificate and a key that do not belong together.
    let config = variant(&agent, "mismatch", |t| {
        t.replace(&file("units/laoshan.key"), &file("units/shibei.key"))
    });
    let (passed, text) = check(&config, &[]);
    assert!(!passed, "{text}");
    assert!(text.contains("do not belong together"), "{text}");
    // Another unit's certificate: refused offline and by the centre.
    let config = variant(&agent, "other-unit", |t| {
        t.replace(&file("units/laoshan.crt"), &file("units/shibei.crt"))
            .replace(&file("units/laoshan.key"), &file("units/shibei.key"))
    });
    let (passed, text) = check(&config, &[]);
    assert!(!passed, "{text}");
    assert!(
        text.contains("is unit \"shibei\"'s certificate, but this agent is unit \"laoshan\"")
            && text.contains("UNIT_MISMATCH: the client certificate is unit \"shibei\"'s"),
        "{text}"
    );
    // A unit the plan does not have.
    let config = variant(&agent, "unknown-unit", |t| {
        t.replace("unit = \"laoshan\"", "unit = \"atlantis\"")
    });
    let (passed, text) = check(&config, &[]);
    assert!(!passed, "{text}");
    assert!(
        text.contains("UNKNOWN_UNIT: unit \"atlantis\" is not in plan qingdao-ip-2017"),
        "{text}"
    );
    // Another plan id.
    let config = variant(&agent, "other-plan", |t| {
        t.replace("plan = \"qingdao-ip-2017\"", "plan = \"qingdao-ip-2018\"")
    });
    let (passed, text) = check(&config, &[]);
    assert!(!passed, "{text}");
    assert!(
        text.contains("WRONG_AUDIENCE: the agent is configured for plan \"qingdao-ip-2018\" but the centre serves plan \"qingdao-ip-2017\""),
        "{text}"
    );
    // A key nobody registered.
    let fresh = agent.dir.join("fresh-key");
    ok(run(
        &binary("duban-agent"),
        &["keygen", "--out", fresh.to_str().unwrap()],
    ));
    let config = variant(&agent, "unregistered", |t| {
        t.replace(
            "private_key = \"signing.key\"",
            "private_key = \"fresh-key/signing.key\"",
        )
    });
    let (passed, text) = check(&config, &[]);
    assert!(!passed, "{text}");
    assert!(
        text.contains("UNKNOWN_KEY: key") && text.contains("is not registered at the centre"),
        "{text}"
    );
    // An unreachable centre: a warning, a failure with --online, not asked with --offline.
    let config = variant(&agent, "unreachable", |t| {
        t.replace(&aggregator.grpc.port().to_string(), "9")
    });
    let (passed, text) = check(&config, &[]);
    assert!(passed, "{text}");
    assert!(
        text.contains("warn  centre") && text.contains("not reachable"),
        "{text}"
    );
    let (passed, text) = check(&config, &["--online"]);
    assert!(!passed, "{text}");
    let (passed, text) = check(&config, &["--offline"]);
    assert!(
        passed && text.contains("the centre was not asked (--offline)"),
        "{text}"
    );
}

#[test]
fn a_wrong_unit_holds_the_report_and_the_corrected_configuration_gets_it_through() {
    let w = world();
    let aggregator = AggregatorProcess::start(&["--database-url", &w.url, "--insecure-plaintext"]);
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        "",
    );
    let good = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        good.replace("unit = \"laoshan\"", "unit = \"shibei\""),
    )
    .unwrap();
    let out = agent.run(&[
        "submit",
        "--indicator",
        "pct-applications",
        "--period",
        "2018Q1",
        "--value",
        "9",
        "--send-for",
        "3s",
    ]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("HELD: the centre would refuse this agent's reports: UNIT_MISMATCH: the agent is configured for unit \"shibei\" but key")
            && text.contains("is registered to unit \"laoshan\""),
        "{text}"
    );
    let stats = agent.outbox_stats();
    assert_eq!(
        (stats["reports"].as_i64(), stats["dead_letters"].as_i64()),
        (Some(1), Some(0)),
        "held, not dead-lettered"
    );
    // The admin corrects the unit: the waiting report is signed again for laoshan and goes.
    std::fs::write(&agent.config, &good).unwrap();
    let out = agent.run(&["collect", "--once"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("delivered: the centre accepted everything"),
        "{text}"
    );
    assert_eq!(
        value_of(&w.url, "pct-applications", "laoshan", "2018Q1"),
        Some((9.0, 0))
    );
    assert_eq!(
        value_of(&w.url, "pct-applications", "shibei", "2018Q1"),
        None
    );
}

#[test]
fn a_refused_item_is_built_again_once_the_source_is_fixed_and_dead_letters_can_be_discarded() {
    let w = world();
    let aggregator = AggregatorProcess::start(&["--database-url", &w.url, "--insecure-plaintext"]);
    let csv = w.root.path().join("export.csv");
    std::fs::write(&csv, "indicator,period,value\npct-aplications,2018Q1,5\n").unwrap();
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        &format!(
            "[[source]]\nname = \"export\"\nkind = \"csv\"\npath = \"{}\"\nevery = \"1h\"\n",
            csv.display()
        ),
    );
    let out = agent.run(&["collect", "--once"]);
    let text = stdout(&out);
    assert!(
        !out.status.success(),
        "everything refused must fail: {text}"
    );
    assert!(
        text.contains("REFUSED value pct-aplications (2018Q1, report seq 1): UNKNOWN_INDICATOR"),
        "{text}"
    );
    // Unchanged, it is not sent again: the centre would refuse it again.
    let again = agent.run(&["collect", "--once"]);
    assert!(
        stdout(&again).contains("export: 0 report(s) stored, 0 item(s) unchanged since the centre accepted them (or still waiting), 1 refused before and unchanged"),
        "{}",
        stdout(&again)
    );
    // Fixed at the source: the item is built and goes (the refusal was not taken for sent).
    std::fs::write(&csv, "indicator,period,value\npct-applications,2018Q1,5\n").unwrap();
    let out = agent.run(&["collect", "--once"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("export: 1 report(s) stored")
            && text.contains("delivered: the centre accepted everything"),
        "{text}"
    );
    assert_eq!(
        value_of(&w.url, "pct-applications", "laoshan", "2018Q1"),
        Some((5.0, 1)),
        "a revision above the refused report's"
    );
    let again = ok(agent.run(&["collect", "--once"]));
    assert!(
        again.contains("export: 0 report(s) stored, 1 item(s) unchanged"),
        "{again}"
    );
    // The dead letter stays until discarded, which asks first.
    let out = agent.run(&["outbox", "dead", "--discard"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("give --yes"), "{}", stdout(&out));
    assert_eq!(agent.outbox_stats()["dead_letters"], 1);
    let discarded = ok(agent.run(&["outbox", "dead", "--discard", "--yes"]));
    assert!(
        discarded.contains("discarded 1 dead letter(s)"),
        "{discarded}"
    );
    assert_eq!(agent.outbox_stats()["dead_letters"], 0);
}

#[test]
fn a_client_certificate_from_another_ca_is_named_at_the_agent_and_at_the_centre() {
    let w = world();
    let certs = dev_ca(w.root.path(), "tls", "laoshan");
    let other = dev_ca(w.root.path(), "other-ca", "laoshan");
    let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let aggregator = AggregatorProcess::start_tls(&w.url, &certs, &[]);
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        "",
    );
    // Trusts the right server CA, but presents a certificate of another CA.
    agent.use_tls(&certs, "laoshan");
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        text.replace(
            &file("units/laoshan.crt"),
            other.join("units/laoshan.crt").to_str().unwrap(),
        )
        .replace(
            &file("units/laoshan.key"),
            other.join("units/laoshan.key").to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = submit(&agent, "2018Q1", "3");
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("HELD: the centre does not accept this certificate"),
        "{text}"
    );
    assert_eq!(agent.outbox_stats()["reports"], 1, "kept");
    wait_until(Duration::from_secs(10), "the centre's log line", || {
        aggregator.log().contains("TLS handshake failed")
    });
    let log = aggregator.log();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap();
    assert!(
        line.contains("unknown_ca") && line.contains("peer=127.0.0.1:"),
        "{line}"
    );
    let metrics = http_get(&aggregator.http.to_string(), "/metrics");
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("duban_tls_handshake_failures_total{reason=\"unknown_ca\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!(failures >= 1.0, "{failures}");
    // And an agent that trusts another server CA says that instead.
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        text.replace(&file("ca.crt"), other.join("ca.crt").to_str().unwrap()),
    )
    .unwrap();
    let out = submit(&agent, "2018Q1", "3");
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("HELD: this agent does not trust the centre's certificate"),
        "{text}"
    );
}

#[test]
fn gbk_exports_are_read_with_encoding_gbk_and_named_without_it() {
    let w = world();
    let aggregator = AggregatorProcess::start(&["--database-url", &w.url, "--insecure-plaintext"]);
    // As Excel on Chinese Windows saves it: GBK, Chinese headers and a note.
    let csv = w.root.path().join("excel.csv");
    let gbk: &[u8] = &[
        0xd6, 0xb8, 0xb1, 0xea, 0x2c, 0xc6, 0xda, 0xbc, 0xe4, 0x2c, 0xca, 0xfd, 0xd6, 0xb5, 0x2c,
        0xb1, 0xb8, 0xd7, 0xa2, 0x0a, // 指标,期间,数值,备注
        0x70, 0x63, 0x74, 0x2d, 0x61, 0x70, 0x70, 0x6c, 0x69, 0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e,
        0x73, 0x2c, 0x32, 0x30, 0x31, 0x38, 0x51, 0x31, 0x2c, 0x33, 0x33, 0x2c, 0xb5, 0xda, 0xd2,
        0xbb, 0xbc, 0xbe, 0x0a, // pct-applications,2018Q1,33,第一季
    ];
    std::fs::write(&csv, gbk).unwrap();
    let source = |encoding: &str| {
        format!(
            "[[source]]\nname = \"excel\"\nkind = \"csv\"\npath = \"{}\"\nevery = \"1h\"\n{encoding}[source.fields]\nindicator = \"指标\"\nperiod = \"期间\"\nvalue = \"数值\"\nnote = \"备注\"\n",
            csv.display()
        )
    };
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        &source(""),
    );
    let out = agent.run(&["collect", "--once"]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("not valid UTF-8")
            && text.contains("it is probably GBK")
            && text.contains("encoding = \"gbk\""),
        "{text}"
    );
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        config.replace(&source(""), &source("encoding = \"gbk\"\n")),
    )
    .unwrap();
    ok(agent.run(&["collect", "--once"]));
    let values = current_values(&w.url);
    let v = values
        .iter()
        .find(|v| v["indicator_id"] == "pct-applications" && v["period"] == "2018Q1")
        .unwrap();
    assert_eq!(
        (v["value"].as_f64(), v["note"].as_str()),
        (Some(33.0), Some("第一季"))
    );
}

#[test]
fn the_daemon_says_when_each_source_runs_and_is_heard_while_idle() {
    let w = world();
    let aggregator = AggregatorProcess::start(&["--database-url", &w.url, "--insecure-plaintext"]);
    let csv = w.root.path().join("x.csv");
    std::fs::write(&csv, "indicator,period,value\n").unwrap();
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        &format!("http://{}", aggregator.grpc),
        &format!(
            "[[source]]\nname = \"nightly\"\nkind = \"csv\"\npath = \"{}\"\ncron = \"30 2 * * *\"\n",
            csv.display()
        ),
    );
    let _daemon = agent.spawn_daemon(&[]);
    wait_until(Duration::from_secs(20), "the first Hello", || {
        http_get(&aggregator.http.to_string(), "/metrics")
            .lines()
            .any(|l| {
                l.starts_with("duban_unit_last_heartbeat_timestamp_seconds{")
                    && l.contains("unit=\"laoshan\"")
                    && !l.ends_with(" 0")
            })
    });
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("source scheduled"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("source=nightly") && line.contains("next_run="),
        "{line}"
    );
    // The centre lists the agent, with nothing waiting, before it ever sent a report.
    let status = ok(run(
        &binary("duban-aggregator"),
        &["status", "--database-url", &w.url],
    ));
    let agents = status.split("AGENTS").nth(1).unwrap();
    assert!(agents.contains("laoshan 崂山区"), "{status}");
    assert!(stored_reports(&w.url).is_empty());
}

//! Security operations across real processes: rotating an agent's signing key while it runs,
//! renewing its certificate while it runs, and revoking a development certificate.

use std::time::Duration;

use duban_e2e::*;

/// The sum of a counter's samples in a /metrics body whose names start with `prefix`.
fn sum_of(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An agent whose source, a CSV file, is read every second; `write` changes its figure.
fn agent_with_csv(w: &World, endpoint: &str) -> (AgentSetup, impl Fn(f64) + use<>) {
    let csv = w.root.path().join("pct.csv");
    let write = {
        let csv = csv.clone();
        move |value: f64| {
            let tmp = csv.with_extension("tmp");
            std::fs::write(
                &tmp,
                format!("indicator,period,value\npct-applications,2018Q1,{value}\n"),
            )
            .unwrap();
            std::fs::rename(&tmp, &csv).unwrap();
        }
    };
    write(1.0);
    let agent = AgentSetup::new(
        w.root.path(),
        &w.url,
        "laoshan",
        endpoint,
        &format!(
            "[[source]]\nname = \"pct\"\nkind = \"csv\"\npath = \"{}\"\nevery = \"1s\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            csv.display()
        ),
    );
    (agent, write)
}

/// The object for `unit` anywhere in a JSON answer.
fn find_unit<'a>(value: &'a serde_json::Value, unit: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) if map.get("unit").is_some_and(|u| u == unit) => Some(value),
        serde_json::Value::Object(map) => map.values().find_map(|v| find_unit(v, unit)),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_unit(v, unit)),
        _ => None,
    }
}

fn wait_for_value(w: &World, value: f64) {
    wait_until(
        Duration::from_secs(60),
        &format!("laoshan's value {value} to be current"),
        || {
            value_of(
                &current_values(&w.url),
                "pct-applications",
                "laoshan",
                "2018Q1",
            ) == Some(value)
        },
    );
}

/// A plaintext aggregator, laoshan's agent with its CSV source, and the agent's key id.
fn plaintext_setup() -> (World, AggregatorProcess, AgentSetup, impl Fn(f64), String) {
    let w = World::new();
    let aggregator = AggregatorProcess::start(&["--database-url", &w.url, "--insecure-plaintext"]);
    let (agent, write) = agent_with_csv(&w, &format!("http://{}", aggregator.grpc));
    let old_key = duban_proto::SigningKey::read_pkcs8_pem_file(&agent.dir.join("signing.key"))
        .unwrap()
        .key_id()
        .to_string();
    (w, aggregator, agent, write, old_key)
}

#[test]
fn rotating_the_signing_key_of_a_running_agent_refuses_nothing() {
    let (w, aggregator, agent, write, old_key) = plaintext_setup();
    let mut daemon = agent.spawn_daemon(&[]);
    wait_for_value(&w, 1.0);

    // rotate-key: a new key beside the old one, and the line to run at the centre.
    let out = agent.run(&["rotate-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let add_line = said
        .lines()
        .find(|l| l.trim_start().starts_with("duban-aggregator keys add"))
        .unwrap_or_else(|| panic!("no keys add line in:\n{said}"))
        .trim()
        .to_owned();
    assert_eq!(
        add_line,
        "duban-aggregator keys add --unit laoshan --public-key signing.key.next.pub"
    );
    assert!(said.contains(&format!("keys revoke {old_key}")), "{said}");
    assert_ne!(new_key, old_key);
    // Reports go on with the old key while the centre does not know the new one.
    write(2.0);
    wait_for_value(&w, 2.0);
    assert!(agent.dir.join("signing.key.next").exists());

    // At the centre: the printed line, run where the public key was copied to.
    let mut args: Vec<&str> = add_line.split_whitespace().skip(1).collect();
    let public = agent.dir.join("signing.key.next.pub");
    let public = public.to_str().unwrap();
    *args.last_mut().unwrap() = public;
    args.extend(["--database-url", &w.url]);
    ok(run(&binary("duban-aggregator"), &args));
    wait_until(Duration::from_secs(60), "the agent to switch keys", || {
        agent.log().contains("switched to the new signing key")
    });
    assert!(
        agent
            .log()
            .contains(&format!("duban-aggregator keys revoke {old_key}")),
        "the switch names the command that revokes the old key:\n{}",
        agent.log()
    );
    write(3.0);
    wait_for_value(&w, 3.0);

    // The old key is revoked once the outbox has drained; the agent goes on with the new one.
    wait_until(Duration::from_secs(30), "an empty outbox", || {
        agent.outbox_stats()["reports"] == 0
    });
    ok(run(
        &binary("duban-aggregator"),
        &["keys", "revoke", &old_key, "--database-url", &w.url],
    ));
    write(4.0);
    wait_for_value(&w, 4.0);

    let reports = stored_reports(&w.url);
    let keys: Vec<&str> = reports
        .iter()
        .filter_map(|r| r["key_id"].as_str())
        .collect();
    assert_eq!(
        keys.len(),
        reports.len(),
        "every report names its key: {reports:?}"
    );
    assert_eq!(keys.first(), Some(&old_key.as_str()));
    assert_eq!(keys.last(), Some(&new_key.as_str()));
    let metrics = http_get(&aggregator.http.to_string(), "/metrics");
    assert_eq!(
        sum_of(&metrics, "duban_reports_rejected_total"),
        0.0,
        "no report was refused across the switch"
    );
    assert_eq!(
        sum_of(&metrics, "duban_seq_gaps_total"),
        0.0,
        "the new key goes on counting"
    );
    let reporting: serde_json::Value =
        serde_json::from_str(&http_get(&aggregator.http.to_string(), "/api/v1/reporting")).unwrap();
    let laoshan = find_unit(&reporting, "laoshan").expect("laoshan in /api/v1/reporting");
    assert_eq!(laoshan["seq_gaps"], 0, "{laoshan}");
    assert_eq!(agent.outbox_stats()["dead_letters"], 0);
    let agent_metrics = http_get(&agent.metrics_address(), "/metrics");
    assert!(
        agent_metrics.contains("duban_agent_key_rotation_pending 0"),
        "{agent_metrics}"
    );
    assert_eq!(
        duban_proto::SigningKey::read_pkcs8_pem_file(&agent.dir.join("signing.key.previous"))
            .unwrap()
            .key_id()
            .to_string(),
        old_key
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn a_renewed_certificate_is_used_by_a_running_agent_and_a_revoked_one_is_refused() {
    let w = World::new();
    let certs = dev_ca(w.root.path(), "tls", "laoshan");
    let crl = certs.join("ca.crl");
    let aggregator = AggregatorProcess::start_tls(
        &w.url,
        &certs,
        &[
            "--client-crl",
            crl.to_str().unwrap(),
            "--tls-reload-seconds",
            "1",
        ],
    );
    let (agent, write) = agent_with_csv(&w, &format!("http://{}", aggregator.grpc));
    // The agent's own copies of its certificate and key, which it re-reads.
    let own = agent.dir.join("tls");
    std::fs::create_dir_all(&own).unwrap();
    for file in ["laoshan.crt", "laoshan.key"] {
        std::fs::copy(certs.join("units").join(file), own.join(file)).unwrap();
    }
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let tls = format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"",
        certs.join("ca.crt").display(),
        own.join("laoshan.crt").display(),
        own.join("laoshan.key").display()
    );
    std::fs::write(
        &agent.config,
        text.replace("insecure_plaintext = true", &tls)
            .replace("\"http://", "\"https://"),
    )
    .unwrap();
    let mut daemon = agent.spawn_daemon(&[]);
    wait_for_value(&w, 1.0);

    // The CA revokes the certificate the agent holds: the aggregator refuses its next
    // connections, and the agent holds its reports.
    ok(run(
        &binary("duban-aggregator"),
        &[
            "dev-ca",
            "revoke",
            "--out",
            certs.to_str().unwrap(),
            "--unit",
            "laoshan",
        ],
    ));
    wait_until(
        Duration::from_secs(30),
        "the aggregator to load the CRL",
        || {
            http_get(&aggregator.http.to_string(), "/metrics")
                .contains("duban_tls_reloads_total{listener=\"grpc\"} 1")
        },
    );
    // Connections are made anew after a failure; make the agent's fail by restarting it.
    let _ = daemon.kill();
    let _ = daemon.wait();
    let mut daemon = agent.spawn_daemon(&[]);
    write(2.0);
    wait_until(
        Duration::from_secs(60),
        "the revoked certificate to be refused",
        || {
            http_get(&aggregator.http.to_string(), "/metrics")
                .lines()
                .any(|l| {
                    l.starts_with("duban_tls_handshake_failures_total{reason=\"revoked\"}")
                        && !l.ends_with(" 0")
                })
        },
    );
    assert_eq!(
        value_of(
            &current_values(&w.url),
            "pct-applications",
            "laoshan",
            "2018Q1"
        ),
        Some(1.0)
    );

    // A renewed certificate (the dev CA issues a new one for laoshan), put in place while the
    // agent runs: it reads it by itself and its held report arrives.
    std::fs::remove_file(certs.join("units/laoshan.crt")).unwrap();
    std::fs::remove_file(certs.join("units/laoshan.key")).unwrap();
    let _ = dev_ca(w.root.path(), "tls", "laoshan");
    for file in ["laoshan.key", "laoshan.crt"] {
        let tmp = own.join(format!("{file}.new"));
        std::fs::copy(certs.join("units").join(file), &tmp).unwrap();
        std::fs::rename(&tmp, own.join(file)).unwrap();
    }
    wait_for_value(&w, 2.0);
    wait_until(
        Duration::from_secs(30),
        "the agent to count its reload",
        || {
            http_get(&agent.metrics_address(), "/metrics")
                .contains("duban_agent_tls_reloads_total 1")
        },
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn an_old_key_revoked_before_the_switch_loses_nothing() {
    let (w, _aggregator, agent, write, old_key) = plaintext_setup();
    ok(agent.run(&["collect", "--once"]));
    wait_for_value(&w, 1.0);
    // A report signed with the old key waits in the outbox (stored, not sent).
    write(2.0);
    ok(agent.run(&["collect", "--once", "--send-for", "0s"]));
    assert_eq!(agent.outbox_stats()["reports"], 1);

    // The operator does everything at once: the new key registered, the old one revoked.
    let out = agent.run(&["rotate-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = agent.dir.join("signing.key.next.pub");
    ok(run(
        &binary("duban-aggregator"),
        &[
            "keys",
            "add",
            "--unit",
            "laoshan",
            "--public-key",
            public.to_str().unwrap(),
            "--database-url",
            &w.url,
        ],
    ));
    ok(run(
        &binary("duban-aggregator"),
        &["keys", "revoke", &old_key, "--database-url", &w.url],
    ));

    // The agent, refused as the old key, switches to the new one and signs the waiting report
    // again: it arrives, and nothing goes to the dead letters.
    let mut daemon = agent.spawn_daemon(&[]);
    wait_for_value(&w, 2.0);
    wait_until(Duration::from_secs(30), "an empty outbox", || {
        agent.outbox_stats()["reports"] == 0
    });
    assert!(
        agent.log().contains("switched to the new signing key"),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("signed again with the current key"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.outbox_stats()["dead_letters"], 0);
    let _ = daemon.kill();
    let _ = daemon.wait();
}

//! The baselines every figure is compared with, measured in the same run: Ed25519 verification
//! per core, raw SQLite (and PostgreSQL) inserts of the same rows, and Prometheus Pushgateway
//! under the same concurrency. Also the bench plan.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use duban_proto::envelope::{self, PendingSignature};
use duban_proto::pb;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sqlx::{Connection, Executor, QueryBuilder, Sqlite, SqliteConnection};

use crate::load::{self, LoadResult};

/// Reports per second, one core: `verify_strict` + decode one by one, and batches of 64
/// through the aggregator's own batch verifier (`verify_many`) + decode.
pub fn verify(values: usize, count: usize) -> (f64, f64) {
    let signed = load::sign_reports("bench", 0, 1, count, values, 50);
    let key = load::unit_key(0);
    let pending: Vec<PendingSignature> = signed
        .iter()
        .map(|s| PendingSignature {
            message: envelope::signed_message(s),
            signature: s.signature.as_slice().try_into().expect("64 bytes"),
            key: key.public_key().clone(),
        })
        .collect();
    let started = Instant::now();
    for s in &signed {
        envelope::verify(s, key.public_key()).expect("a good signature");
    }
    let strict = count as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (chunk, envelopes) in pending.chunks(64).zip(signed.chunks(64)) {
        assert!(envelope::verify_many(chunk).iter().all(|ok| *ok));
        for s in envelopes {
            envelope::decode_payload(s).expect("decodes");
        }
    }
    let batch = count as f64 / started.elapsed().as_secs_f64();
    (strict, batch)
}

/// `count` signed reports of `values` values each, and their decoded payloads: the rows of the
/// raw insert baselines.
fn signed_and_decoded(values: usize, count: usize) -> (Vec<pb::SignedReport>, Vec<pb::Report>) {
    let signed = load::sign_reports("bench", 0, 1, count, values, 50);
    let decoded = signed
        .iter()
        .map(|s| envelope::decode_payload(s).expect("decodes"))
        .collect();
    (signed, decoded)
}

/// Reports per second written as raw multi-row inserts (a report row and its value rows,
/// 100 reports per transaction) into SQLite in WAL mode with `synchronous=FULL`: the floor of
/// what duban's SQLite write path can cost.
pub async fn raw_sqlite(path: &Path, values: usize, count: usize) -> anyhow::Result<f64> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = SqliteConnection::connect(&url).await?;
    conn.execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE reports (report_pk INTEGER PRIMARY KEY, unit_id TEXT NOT NULL,
             report_id BLOB NOT NULL, seq INTEGER NOT NULL, period TEXT NOT NULL,
             payload BLOB NOT NULL, signature BLOB NOT NULL, UNIQUE (unit_id, report_id));
         CREATE TABLE value_history (report_pk INTEGER NOT NULL, indicator_id TEXT NOT NULL,
             value REAL NOT NULL, PRIMARY KEY (report_pk, indicator_id));",
    )
    .await?;
    let (signed, decoded) = signed_and_decoded(values, count);
    let started = Instant::now();
    let mut pk = 0i64;
    for (reports, envelopes) in decoded.chunks(100).zip(signed.chunks(100)) {
        let mut tx = conn.begin().await?;
        let first = pk;
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO reports (report_pk, unit_id, report_id, seq, period, payload, signature) ",
        );
        q.push_values(reports.iter().zip(envelopes), |mut b, (r, e)| {
            pk += 1;
            b.push_bind(pk)
                .push_bind(r.unit_id.as_str())
                .push_bind(r.report_id.as_slice())
                .push_bind(r.seq as i64)
                .push_bind(r.period.as_str())
                .push_bind(e.payload.as_slice())
                .push_bind(e.signature.as_slice());
        });
        q.build().execute(&mut *tx).await?;
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO value_history (report_pk, indicator_id, value) ",
        );
        let rows = reports.iter().enumerate().flat_map(|(i, r)| {
            r.values
                .iter()
                .map(move |v| (first + 1 + i as i64, v.indicator_id.as_str(), v.value))
        });
        q.push_values(rows, |mut b, (pk, id, value)| {
            b.push_bind(pk).push_bind(id).push_bind(value);
        });
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Reports per second written as raw inserts into PostgreSQL (`url`, a fresh schema): the same
/// rows as [`raw_sqlite`], 100 reports per transaction, each table in one `INSERT .. SELECT
/// FROM UNNEST` of typed arrays, with the server's own durability (`synchronous_commit` as
/// configured): the floor of what duban's PostgreSQL write path can cost.
pub async fn raw_postgres(url: &str, values: usize, count: usize) -> anyhow::Result<f64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    conn.execute(
        "CREATE TABLE reports (report_pk BIGINT PRIMARY KEY, unit_id TEXT NOT NULL,
             report_id BYTEA NOT NULL, seq BIGINT NOT NULL, period TEXT NOT NULL,
             payload BYTEA NOT NULL, signature BYTEA NOT NULL, UNIQUE (unit_id, report_id));
         CREATE TABLE value_history (report_pk BIGINT NOT NULL, indicator_id TEXT NOT NULL,
             value DOUBLE PRECISION NOT NULL, PRIMARY KEY (report_pk, indicator_id));",
    )
    .await?;
    let (signed, decoded) = signed_and_decoded(values, count);
    let started = Instant::now();
    let mut pk = 0i64;
    for (reports, envelopes) in decoded.chunks(100).zip(signed.chunks(100)) {
        let pks: Vec<i64> = (pk + 1..=pk + reports.len() as i64).collect();
        pk += reports.len() as i64;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO reports (report_pk, unit_id, report_id, seq, period, payload, signature)
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::bytea[], $4::int8[], $5::text[],
             $6::bytea[], $7::bytea[])",
        )
        .bind(&pks)
        .bind(
            reports
                .iter()
                .map(|r| r.unit_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            reports
                .iter()
                .map(|r| r.report_id.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(reports.iter().map(|r| r.seq as i64).collect::<Vec<_>>())
        .bind(
            reports
                .iter()
                .map(|r| r.period.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            envelopes
                .iter()
                .map(|e| e.payload.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            envelopes
                .iter()
                .map(|e| e.signature.as_slice())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(i64, &str, f64)> = reports
            .iter()
            .zip(&pks)
            .flat_map(|(r, pk)| {
                r.values
                    .iter()
                    .map(move |v| (*pk, v.indicator_id.as_str(), v.value))
            })
            .collect();
        sqlx::query(
            "INSERT INTO value_history (report_pk, indicator_id, value)
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::float8[])",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// `base` with its search path set to a schema `name` dropped and made afresh.
pub async fn fresh_pg_schema(base: &str, name: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .with_context(|| format!("connect to {}", duban_aggregator::store::redact(base)))?;
    let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    let separator = if base.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{base}{separator}options=-c%20search_path%3D{name}"
    ))
}

/// Pushes of `values` gauges each (HTTP PUT, one grouping key per push so none waits on
/// another's group), `concurrency` in flight, to a Pushgateway started here with `flags`.
pub async fn pushgateway(
    program: &str,
    flags: &[&str],
    values: usize,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<LoadResult> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let child = Command::new(program)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(flags)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {program} (Debian package prometheus-pushgateway)"))?;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let base = format!("http://127.0.0.1:{port}");
    let ready = Instant::now();
    loop {
        let probe = client.get(format!("{base}/-/ready").parse()?).await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("{program} did not become ready on port {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while started.elapsed() < deadline {
                n += 1;
                let mut body = String::new();
                for v in 0..values {
                    let _ = writeln!(body, "duban_bench_value{{indicator=\"i{v:03}\"}} {n}");
                }
                let request = hyper::Request::put(format!(
                    "{base}/metrics/job/bench/instance/w{worker}-{}",
                    n % 64
                ))
                .body(Full::new(Bytes::from(body)))
                .expect("a request");
                let call = Instant::now();
                match client.request(request).await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    _ => failed += 1,
                }
                latencies.push(call.elapsed().as_micros() as u32);
            }
            (ok, failed, latencies)
        }));
    }
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (o, f, l) = task.await?;
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    Ok(LoadResult::from_latencies(
        latencies,
        ok + failed,
        ok,
        failed,
        started.elapsed().as_secs_f64(),
    ))
}

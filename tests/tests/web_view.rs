//! The plan office's web view in a real browser (Debian's chromium driven through
//! chromium-driver), against the demo's aggregator filled by its real agents: every page
//! reachable by a link loads without console errors, the figures shown equal `/api/v1/…` at
//! the same `as_of`, the charts have one dot per period, the language switch works, the
//! 督办通报 prints to PDF with one page-led section per unit, and the exports (from the page
//! and from the CLI) read back with the same figures.
//!
//! Set `DUBAN_SCREENSHOTS=DIR` to keep the screenshots of the main pages (docs/screenshots was
//! made so).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Cursor};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use calamine::{Data as CellData, Reader, Xlsx};
use duban_e2e::{binary, require_program, wait_until};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A day in the demo's second year: reports, corrections, alerts and the 督办 loop by then.
const AS_OF: &str = "2018-06-20";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver and the browsers it started, in a process group of their own: all killed when
/// dropped, so that a failing test leaves no Chromium behind.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// The demo, run to mid-2018 and left serving; its HTTP address and directory.
fn demo(dir: &std::path::Path) -> (Killed, String) {
    let mut child = Command::new(binary("duban-demo"))
        .arg("--dir")
        .arg(dir)
        .args(["--until", "2018-06-30", "--speed", "200"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--keep-serving")
        .stdout(Stdio::piped())
        .spawn()
        .expect("run duban-demo");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("still serving") {
                let address = line
                    .split("web view http://")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                    .map(str::to_owned);
                let _ = tx.send(address.ok_or(printed.clone()));
            }
            printed.push_str(&line);
            printed.push('\n');
        }
    });
    let guard = Killed(child);
    let http = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("the demo says it is still serving")
        .unwrap_or_else(|printed| panic!("the demo prints the web view's URL:\n{printed}"));
    (guard, http)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free port, answering.
fn chromedriver() -> (Group, String) {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let child = Command::new("chromedriver")
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "chromedriver answers", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Group(child), url)
}

/// The flags a headless Chromium needs on a closed network, as root.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
];

async fn browser(driver: &str) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
    args.push("--window-size=1440,1000".into());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a chromium session")
}

/// The browser's console messages since the last call (chromedriver's log endpoint).
async fn console(http: &reqwest::Client, driver: &str, client: &Client) -> Vec<Value> {
    let session = client.session_id().await.unwrap().expect("a session id");
    let answer: Value = http
        .post(format!("{driver}/session/{session}/se/log"))
        .json(&json!({ "type": "browser" }))
        .send()
        .await
        .expect("chromedriver's log")
        .json()
        .await
        .expect("JSON");
    answer["value"].as_array().cloned().unwrap_or_default()
}

async fn get_json(http: &reqwest::Client, base: &str, path: &str) -> Value {
    let response = http.get(format!("{base}{path}")).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect(script)
}

/// The same figure: serde_json (without `float_roundtrip`) may read the last digit of a long
/// decimal one unit off, so equal means within a relative 1e-12.
fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0),
        (a, b) => a == b,
    }
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

fn f(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[test]
fn the_web_view_in_a_real_browser() {
    const TEST: &str = "the_web_view_in_a_real_browser";
    if !require_program("chromium", "chromium")
        || !require_program("chromedriver", "chromium-driver")
    {
        return;
    }
    // pdftotext answers -v, not --version.
    if !Command::new("pdftotext")
        .arg("-v")
        .output()
        .is_ok_and(|out| out.status.success())
    {
        duban_testkit::skip(
            TEST,
            "pdftotext is missing: the Debian package poppler-utils brings it",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (_demo, http_addr) = demo(&dir);
    let base = format!("http://{http_addr}");
    let (_driver, driver) = chromedriver();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        duban_aggregator::install_crypto_provider();
        let http = reqwest::Client::new();
        let client = browser(&driver).await;
        let outcome = async {
            figures_equal_the_api(&http, &client, &base).await;
            charts_have_one_dot_per_period(&http, &client, &base).await;
            the_language_switch_and_sorting_work(&client, &base).await;
            every_link_reaches_a_page_without_console_errors(&http, &driver, &client, &base).await;
            screenshots(&client, &base).await;
            exports_hold_the_same_figures(&http, &base, &dir).await;
            bad_requests_are_named(&http, &base).await;
        };
        outcome.await;
        let _ = client.close().await;
    });
    the_report_prints_one_section_per_unit(&base, tmp.path());
}

async fn figures_equal_the_api(http: &reqwest::Client, client: &Client, base: &str) {
    let api = get_json(http, base, &format!("/api/v1/progress?as_of={AS_OF}")).await;
    client
        .goto(&format!("{base}/?as_of={AS_OF}"))
        .await
        .unwrap();
    let rows = js(
        client,
        "return Array.from(document.querySelectorAll('#indicators tbody tr')).map(r => \
         [r.dataset.indicator, r.cells[1].dataset.value ?? null, r.cells[3].dataset.value ?? null, \
          r.cells[4].dataset.value, r.cells[6].dataset.value ?? null])",
    )
    .await;
    let rows = rows.as_array().unwrap();
    let indicators = api["indicators"].as_array().unwrap();
    assert_eq!(rows.len(), indicators.len(), "one row per indicator");
    let mut with_value = 0;
    for (row, i) in rows.iter().zip(indicators) {
        assert_eq!(row[0], i["indicator"]);
        assert!(
            same(f(&row[1]), f(&i["value"])),
            "value of {}: {row:?}",
            i["indicator"]
        );
        assert!(
            same(f(&row[2]), f(&i["expected"])),
            "expected of {}: {row:?}",
            i["indicator"]
        );
        assert_eq!(row[3], i["status"], "status of {}", i["indicator"]);
        let rates = &i["rates"];
        let completeness = (rates["expected"].as_f64().unwrap() > 0.0)
            .then(|| rates["received"].as_f64().unwrap() / rates["expected"].as_f64().unwrap());
        assert!(
            same(f(&row[4]), completeness),
            "completeness of {}",
            i["indicator"]
        );
        with_value += usize::from(f(&row[1]).is_some());
    }
    assert!(
        with_value >= 10,
        "the demo reported most indicators by {AS_OF}"
    );
    // Milestones by status.
    let counts = js(
        client,
        "return Object.fromEntries(Array.from(document.querySelectorAll('#task-counts tbody tr')).map(r => [r.dataset.status, r.cells[1].dataset.value]))",
    )
    .await;
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    for m in api["milestones"].as_array().unwrap() {
        *expected
            .entry(m["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for (status, shown) in counts.as_object().unwrap() {
        assert_eq!(
            f(shown).unwrap() as u32,
            expected.get(status).copied().unwrap_or(0),
            "milestones {status}"
        );
    }
    // Open alerts by severity and level.
    let cases = get_json(http, base, &format!("/api/v1/cases?as_of={AS_OF}")).await;
    let open: Vec<&Value> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["open"] == true)
        .collect();
    assert!(!open.is_empty(), "open alerts at {AS_OF}");
    let shown = js(
        client,
        "return Array.from(document.querySelectorAll('#open-alerts tbody td')).reduce((s, td) => s + Number(td.dataset.value), 0)",
    )
    .await;
    assert_eq!(
        f(&shown).unwrap() as usize,
        open.len(),
        "open alerts counted"
    );
    // Each unit's 督办 record on the alerts page.
    let record = get_json(http, base, &format!("/api/v1/supervision?as_of={AS_OF}")).await;
    client
        .goto(&format!("{base}/alerts?as_of={AS_OF}"))
        .await
        .unwrap();
    let rows = js(
        client,
        "return Object.fromEntries(Array.from(document.querySelectorAll('#record tbody tr')).map(r => [r.dataset.unit, Array.from(r.cells).slice(1).map(c => c.dataset.value ?? null)]))",
    )
    .await;
    let units = record["units"].as_array().unwrap();
    assert!(!units.is_empty());
    assert_eq!(rows.as_object().unwrap().len(), units.len());
    for u in units {
        let row = &rows[u["unit"].as_str().unwrap()];
        for (k, field) in [
            "alerted",
            "answered",
            "median_first_answer_ms",
            "extensions_requested",
            "extensions_granted",
            "extensions_refused",
            "claims_confirmed",
            "claims_rejected",
            "overdue_now",
            "max_escalation_level",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(f(&row[k]), f(&u[field]), "{} {field}", u["unit"]);
        }
    }
    assert_eq!(
        js(
            client,
            "return document.querySelectorAll('#open-cases tbody tr').length"
        )
        .await,
        json!(open.len())
    );
    // A lead unit's page: its record, and its open cases (as recipient or as the unit that owes
    // the report).
    let lead = units.iter().max_by_key(|u| u["alerted"].as_u64()).unwrap();
    let unit = lead["unit"].as_str().unwrap();
    client
        .goto(&format!("{base}/units/{unit}?as_of={AS_OF}"))
        .await
        .unwrap();
    let shown = js(
        client,
        "return [Array.from(document.querySelectorAll('#unit-record tbody tr td')).map(c => c.dataset.value ?? null), document.querySelectorAll('#unit-cases tbody tr').length]",
    )
    .await;
    assert_eq!(f(&shown[0][0]), f(&lead["alerted"]), "{unit} alerted");
    assert_eq!(f(&shown[0][1]), f(&lead["answered"]), "{unit} answered");
    let theirs = open
        .iter()
        .filter(|c| {
            c["recipients"].as_array().unwrap().contains(&json!(unit))
                || c["case"].as_str().unwrap().ends_with(&format!("/{unit}"))
        })
        .count();
    assert_eq!(shown[1], json!(theirs), "{unit}'s open cases");
    // Who has reported.
    let reporting = get_json(http, base, &format!("/api/v1/reporting?as_of={AS_OF}")).await;
    client
        .goto(&format!("{base}/units?as_of={AS_OF}"))
        .await
        .unwrap();
    let rows = js(
        client,
        "return Object.fromEntries(Array.from(document.querySelectorAll('#units tbody tr')).map(r => [r.dataset.unit, [r.cells[3].dataset.value, r.cells[4].dataset.value, r.cells[7].dataset.value, r.cells[9].dataset.value]]))",
    )
    .await;
    for u in reporting["units"].as_array().unwrap() {
        let row = &rows[u["unit"].as_str().unwrap()];
        assert_eq!(f(&row[0]), f(&u["rates"]["expected"]), "{}", u["unit"]);
        assert_eq!(f(&row[1]), f(&u["rates"]["received"]), "{}", u["unit"]);
        assert_eq!(
            f(&row[2]).unwrap() as usize,
            u["overdue"].as_array().unwrap().len()
        );
        assert_eq!(f(&row[3]), f(&u["refused_items"]));
    }
}

async fn charts_have_one_dot_per_period(http: &reqwest::Client, client: &Client, base: &str) {
    let api = get_json(http, base, &format!("/api/v1/progress?as_of={AS_OF}")).await;
    client
        .goto(&format!("{base}/?as_of={AS_OF}"))
        .await
        .unwrap();
    let sparks = js(
        client,
        "return Object.fromEntries(Array.from(document.querySelectorAll('#indicators tbody tr')).map(r => [r.dataset.indicator, r.querySelectorAll('svg circle').length]))",
    )
    .await;
    let mut drawn = 0;
    for i in api["indicators"].as_array().unwrap() {
        let id = i["indicator"].as_str().unwrap();
        let points = i["series"].as_array().unwrap().len();
        assert_eq!(sparks[id], json!(points), "the small chart of {id}");
        if points == 0 {
            continue;
        }
        client
            .goto(&format!("{base}/indicators/{id}?as_of={AS_OF}"))
            .await
            .unwrap();
        let big = js(
            client,
            "return document.querySelectorAll('#chart svg circle').length",
        )
        .await;
        assert_eq!(big, json!(points), "the chart of {id}");
        let rows = js(
            client,
            "return document.querySelectorAll('#series tbody tr').length",
        )
        .await;
        assert_eq!(rows, json!(points), "the table under the chart of {id}");
        drawn += 1;
    }
    assert!(drawn >= 10, "charts with points: {drawn}");
}

async fn the_language_switch_and_sorting_work(client: &Client, base: &str) {
    client
        .goto(&format!("{base}/?as_of={AS_OF}"))
        .await
        .unwrap();
    let state = async |client: &Client| {
        js(
            client,
            "return [document.documentElement.lang, document.querySelector('nav a').textContent, document.querySelector('#as_of').value]",
        )
        .await
    };
    assert_eq!(state(client).await, json!(["zh-CN", "总览", AS_OF]));
    click(client, "a.lang").await;
    assert_eq!(state(client).await, json!(["en", "Overview", AS_OF]));
    let url = client.current_url().await.unwrap();
    assert!(url.as_str().contains("lang=en"), "{url}");
    // English is kept from page to page, then switched back.
    click(client, "nav a[href^='/tasks']").await;
    assert_eq!(
        js(client, "return [document.documentElement.lang, document.querySelector('h1').textContent.trim().startsWith('Tasks')]").await,
        json!(["en", true])
    );
    click(client, "a.lang").await;
    assert_eq!(
        js(client, "return document.documentElement.lang").await,
        json!("zh-CN")
    );
    // The as_of form: a date chosen and submitted shows that day.
    client.goto(&format!("{base}/")).await.unwrap();
    js(client, "document.querySelector('#as_of').value = '2018-01-15'; document.querySelector('header form').submit(); return null").await;
    // The page the form leads to is rendered at that date.
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("input#as_of[value='2018-01-15']"))
        .await
        .expect("the as_of form leads to the page at 2018-01-15");
    let url = client.current_url().await.unwrap();
    assert!(url.as_str().ends_with("/?as_of=2018-01-15"), "{url}");
    assert_eq!(state(client).await, json!(["zh-CN", "总览", "2018-01-15"]));
    // Sorting: a click on the value column orders the rows by it.
    client
        .goto(&format!("{base}/?as_of={AS_OF}"))
        .await
        .unwrap();
    click(client, "#indicators thead th:nth-child(2)").await;
    let values = js(
        client,
        "return Array.from(document.querySelectorAll('#indicators tbody tr')).map(r => r.cells[1].dataset.value).filter(v => v !== undefined).map(Number)",
    )
    .await;
    let values: Vec<f64> = values
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(values.len() > 1);
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "ascending after a click: {values:?}"
    );
}

async fn every_link_reaches_a_page_without_console_errors(
    http: &reqwest::Client,
    driver: &str,
    client: &Client,
    base: &str,
) {
    let _ = console(http, driver, client).await;
    let mut queue: VecDeque<String> = [
        format!("{base}/?as_of={AS_OF}"),
        format!("{base}/"),
        format!("{base}/?lang=en"),
    ]
    .into();
    let mut seen: BTreeSet<String> = queue.iter().cloned().collect();
    let mut fragments: Vec<(String, String, String)> = Vec::new();
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut other = BTreeSet::new();
    let mut pages = 0;
    while let Some(url) = queue.pop_front() {
        client.goto(&url).await.unwrap();
        pages += 1;
        let found = js(
            client,
            "return [document.title, Array.from(document.querySelectorAll('a[href]')).map(a => [a.href, a.hasAttribute('download')]), Array.from(document.querySelectorAll('[id]')).map(e => e.id)]",
        )
        .await;
        let title = found[0].as_str().unwrap_or_default();
        assert!(
            !title.contains("未找到") && !title.contains("Not found") && !title.is_empty(),
            "{url}: {title}"
        );
        ids.insert(
            url.clone(),
            found[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
        );
        let errors: Vec<Value> = console(http, driver, client)
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect();
        assert!(errors.is_empty(), "{url}: console errors {errors:?}");
        for link in found[1].as_array().unwrap() {
            let href = link[0].as_str().unwrap().to_owned();
            let (page, fragment) = match href.split_once('#') {
                Some((page, fragment)) => (page.to_owned(), Some(fragment.to_owned())),
                None => (href.clone(), None),
            };
            assert!(
                page.starts_with(base),
                "{url} links out of the view: {href}"
            );
            if let Some(fragment) = fragment {
                let page = if page.is_empty() {
                    url.clone()
                } else {
                    page.clone()
                };
                fragments.push((url.clone(), page.clone(), fragment));
            }
            let path = &page[base.len()..];
            if link[1] == true || path.starts_with("/api/") || path.starts_with("/export/") {
                other.insert(page);
            } else if seen.insert(page.clone()) {
                queue.push_back(page);
            }
        }
    }
    assert!(pages > 60, "pages visited: {pages}");
    for (from, page, fragment) in &fragments {
        let on = ids
            .get(page)
            .unwrap_or_else(|| panic!("{page} was visited"));
        assert!(
            on.contains(fragment),
            "{from} links to {page}#{fragment}, which is not there"
        );
    }
    assert!(other.iter().any(|u| u.contains("/api/v1/")));
    assert!(other.iter().any(|u| u.contains(".xlsx")));
    for url in &other {
        let response = http.get(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
    }
}

async fn screenshots(client: &Client, base: &str) {
    let keep = std::env::var_os("DUBAN_SCREENSHOTS").map(std::path::PathBuf::from);
    for (name, path) in [
        ("overview", "/"),
        ("indicator", "/indicators/invention-patents-per-10k"),
        ("tasks", "/tasks"),
        ("unit", "/units/science-tech"),
        ("alerts", "/alerts"),
        ("units", "/units"),
    ] {
        client
            .goto(&format!("{base}{path}?as_of={AS_OF}"))
            .await
            .unwrap();
        let png = client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
        if let Some(dir) = &keep {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }
}

fn sheet(bytes: Vec<u8>) -> Vec<Vec<CellData>> {
    let mut book: Xlsx<_> = calamine::open_workbook_from_rs(Cursor::new(bytes)).expect("an xlsx");
    let range = book
        .worksheet_range_at(0)
        .expect("one sheet")
        .expect("readable");
    range.rows().map(|r| r.to_vec()).collect()
}

fn column(rows: &[Vec<CellData>], id: &str) -> usize {
    rows[0]
        .iter()
        .position(|h| h.to_string().ends_with(&format!("({id})")))
        .unwrap_or_else(|| panic!("a column ({id}) in {:?}", rows[0]))
}

fn number(cell: &CellData) -> Option<f64> {
    match cell {
        CellData::Float(v) => Some(*v),
        CellData::Int(v) => Some(*v as f64),
        CellData::Empty => None,
        other => panic!("a number, not {other:?}"),
    }
}

async fn exports_hold_the_same_figures(http: &reqwest::Client, base: &str, dir: &std::path::Path) {
    let download = async |path: &str| {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert!(response.status().is_success(), "{path}");
        let disposition = response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(disposition.contains("attachment"), "{disposition}");
        response.bytes().await.unwrap().to_vec()
    };
    // The 督办通报 against /api/v1/supervision.
    let record = get_json(http, base, &format!("/api/v1/supervision?as_of={AS_OF}")).await;
    let rows = sheet(download(&format!("/export/report.xlsx?as_of={AS_OF}")).await);
    assert_eq!(rows[0][0].to_string(), "单位编号 (unit)");
    assert_eq!(rows.len() - 1, record["units"].as_array().unwrap().len());
    for u in record["units"].as_array().unwrap() {
        let row = rows
            .iter()
            .find(|r| r[0] == u["unit"].as_str().unwrap())
            .expect("a row per unit");
        for field in [
            "alerted",
            "answered",
            "overdue_now",
            "extensions_granted",
            "max_escalation_level",
        ] {
            assert_eq!(number(&row[column(&rows, field)]), f(&u[field]), "{field}");
        }
    }
    // The 督办通报 of a period counts only the alerts fired in it.
    let alerted = |rows: &[Vec<CellData>]| -> f64 {
        let col = column(rows, "alerted");
        rows[1..].iter().filter_map(|r| number(&r[col])).sum()
    };
    let whole = alerted(&rows);
    let june = sheet(
        download(&format!(
            "/export/report.xlsx?as_of={AS_OF}&since=2018-06-01"
        ))
        .await,
    );
    assert!(
        alerted(&june) < whole,
        "since 2018-06-01: {} of {whole}",
        alerted(&june)
    );
    // Indicators by period and reporter: every obligation due or received, values as numbers,
    // due dates as dates; the same rows as the CLI's CSV.
    let api = get_json(http, base, &format!("/api/v1/progress?as_of={AS_OF}")).await;
    let due = api["obligations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["status"] != "not_due" || !o["received_ms"].is_null())
        .count();
    let rows = sheet(download(&format!("/export/indicators.xlsx?as_of={AS_OF}")).await);
    assert_eq!(rows.len() - 1, due);
    let due_col = column(&rows, "due");
    let value_col = column(&rows, "value");
    assert!(
        rows[1..]
            .iter()
            .all(|r| matches!(r[due_col], CellData::DateTime(_))),
        "due dates are dates"
    );
    let values: Vec<Option<f64>> = rows[1..].iter().map(|r| number(&r[value_col])).collect();
    assert!(values.iter().filter(|v| v.is_some()).count() > 50);
    let url = format!("sqlite://{}", dir.join("aggregator/duban.db").display());
    let out = Command::new(binary("duban-aggregator"))
        .args([
            "export",
            "indicators",
            "--as-of",
            AS_OF,
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text
        .strip_prefix('\u{feff}')
        .expect("a byte order mark for Excel");
    let mut csv_rows = text.lines();
    assert!(
        csv_rows
            .next()
            .unwrap()
            .starts_with("指标编号 (indicator),")
    );
    let csv_values: Vec<Option<f64>> = csv_rows
        .map(|line| line.split(',').nth(value_col).unwrap().parse().ok())
        .collect();
    assert_eq!(
        csv_values, values,
        "the CLI's CSV and the page's xlsx agree"
    );
    // The CLI writes xlsx to a file, the same sheet.
    let file = dir.join("units.xlsx");
    let out = Command::new(binary("duban-aggregator"))
        .args([
            "export",
            "units",
            "--format",
            "xlsx",
            "--as-of",
            AS_OF,
            "--database-url",
            &url,
            "--output",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_cli = sheet(std::fs::read(&file).unwrap());
    let from_page = sheet(download(&format!("/export/units.xlsx?as_of={AS_OF}")).await);
    assert_eq!(from_cli, from_page);
    let reporting = get_json(http, base, &format!("/api/v1/reporting?as_of={AS_OF}")).await;
    for u in reporting["units"].as_array().unwrap() {
        let row = from_cli
            .iter()
            .find(|r| r[0] == u["unit"].as_str().unwrap())
            .expect("a row per unit");
        assert_eq!(
            number(&row[column(&from_cli, "received")]),
            f(&u["rates"]["received"])
        );
        assert_eq!(
            number(&row[column(&from_cli, "seq_gaps")]),
            f(&u["seq_gaps"])
        );
    }
    // Tasks and alerts export too, with their dates as dates.
    let tasks = sheet(download("/export/tasks.xlsx").await);
    assert_eq!(tasks.len() - 1, api["milestones"].as_array().unwrap().len());
    assert!(matches!(
        tasks[1][column(&tasks, "deadline")],
        CellData::DateTime(_)
    ));
    let alerts = sheet(download(&format!("/export/alerts.xlsx?as_of={AS_OF}")).await);
    let cases = get_json(http, base, &format!("/api/v1/cases?as_of={AS_OF}")).await;
    let events: usize = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["events"].as_array().unwrap().len())
        .sum();
    assert_eq!(alerts.len() - 1, events, "one row per event");
}

async fn bad_requests_are_named(http: &reqwest::Client, base: &str) {
    for (path, status, says) in [
        ("/?as_of=yesterday", 400, "as_of"),
        ("/indicators/no-such-indicator", 404, "no-such-indicator"),
        ("/units/no-such-unit", 404, "no-such-unit"),
        (
            "/export/nothing.csv",
            404,
            "indicators, tasks, alerts, report, units",
        ),
        ("/export/report.pdf", 404, ".xlsx"),
        ("/alerts/report?since=soon", 400, "since"),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains(says), "{path}: {body}");
    }
}

fn the_report_prints_one_section_per_unit(base: &str, tmp: &std::path::Path) {
    let record: Value = serde_json::from_str(&duban_e2e::http_get(
        &base["http://".len()..],
        &format!("/api/v1/supervision?as_of={AS_OF}"),
    ))
    .unwrap();
    let pdf = tmp.join("report.pdf");
    let out = Command::new("chromium")
        .args(CHROMIUM_FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            tmp.join("chromium").display()
        ))
        .arg("--no-pdf-header-footer")
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("{base}/alerts/report?as_of={AS_OF}"))
        .output()
        .expect("chromium prints");
    assert!(
        pdf.exists(),
        "chromium --print-to-pdf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = Command::new("pdftotext")
        .args(["-layout"])
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext");
    let text = String::from_utf8(text.stdout).unwrap();
    let pages: Vec<&str> = text
        .split('\u{c}')
        .filter(|p| !p.trim().is_empty())
        .collect();
    let units = record["units"].as_array().unwrap();
    assert!(!units.is_empty());
    assert!(pages[0].contains("督办通报"), "{}", pages[0]);
    for u in units {
        let heading = format!("督办通报 · {}", u["name"].as_str().unwrap());
        let starts = pages
            .iter()
            .filter(|p| p.trim_start().starts_with(&heading))
            .count();
        assert_eq!(starts, 1, "one page begins with {heading:?}:\n{text}");
    }
    assert!(
        pages.len() > units.len(),
        "the summary, then a page per unit at least"
    );
}

#[test]
fn export_names_what_is_wrong_and_an_empty_database_gives_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("duban.db").display());
    let run = |args: &[&str]| {
        Command::new(binary("duban-aggregator"))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["migrate", "--database-url", &url]).status.success());
    let out = run(&["export", "tasks", "--database-url", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("\u{feff}任务编号 (task),部分 (section)"),
        "{text}"
    );
    // Every milestone of the plan is a row, with no updates yet.
    assert_eq!(text.lines().count(), 1 + 61, "{text}");
    let out = run(&[
        "export",
        "tasks",
        "--format",
        "xlsx",
        "--database-url",
        &url,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --output FILE"));
    let out = run(&["export", "everything", "--database-url", &url]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("indicators") && stderr.contains("report"),
        "{stderr}"
    );
    let out = run(&[
        "export",
        "units",
        "--as-of",
        "someday",
        "--database-url",
        &url,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--as-of"));
    let missing = format!("sqlite://{}", tmp.path().join("none.db").display());
    let out = run(&["export", "units", "--database-url", &missing]);
    assert!(!out.status.success());
    assert!(
        !tmp.path().join("none.db").exists(),
        "a read-only command creates nothing"
    );
}

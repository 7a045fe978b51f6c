//! The web dashboard through serve's server: the pages next to the API (filtering,
//! sorting, hostile names, a 404), the page and `creditgate usage` agreeing to the
//! credit on one store, and headless Chromium rendering the pages of a live
//! `serve`, checked against the API, with screenshots kept as test artefacts.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use creditgate::dashboard::percent_encode;
use creditgate::serve::Overrides;
use creditgate::store::{MemoryStore, RedbStore, Store};
use creditgate_testkit::http::Client;

use crate::harness::{self, InProcess, unescape};

/// Small plans, so that a test reaches 80% and exhaustion in a few requests; one
/// unlimited credit.
const POLICY: &str = include_str!("../fixtures/policies/dashboard.toml");

/// How long a server or a browser gets to start or finish.
const WAIT: Duration = Duration::from_secs(90);

/// `creditgate serve`'s server in this process ([`InProcess`]), with a client
/// of its HTTP API.
pub(crate) struct Serve {
    server: InProcess,
    base: String,
    client: Client,
}

impl Serve {
    fn start(store: &Path, policy: &Path) -> Serve {
        Serve::start_with(store, policy, None)
    }

    /// [`Serve::start`] on a redb file (`memory`: a fresh in-memory store), with
    /// another component when given.
    pub(crate) fn start_with(store: &Path, policy: &Path, component: Option<&Path>) -> Serve {
        let store: Arc<dyn Store> = if store.as_os_str() == "memory" {
            Arc::new(MemoryStore::new())
        } else {
            Arc::new(RedbStore::open(store).expect("the store opens"))
        };
        let overrides = Overrides {
            policy: Some(policy.to_owned()),
            component: component.map(Path::to_owned),
            ..Overrides::default()
        };
        let server = InProcess::start(overrides, store);
        let base = server.http_url();
        Serve {
            server,
            client: Client::new(&base),
            base,
        }
    }

    /// A page: status, content type and body.
    pub(crate) fn get(&self, path: &str) -> (u16, String, String) {
        let answer = self.client.get(path);
        (answer.status, answer.content_type, answer.body)
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let answer = self.client.post(path, &body.to_string());
        (answer.status, answer.json())
    }

    pub(crate) fn subscribe(&self, account: &str, plan: &str) {
        let path = format!("/v1/accounts/{}/subscription", percent_encode(account));
        let (status, body) = self.post(&path, &json!({ "plan": plan }));
        assert_eq!(status, 201, "{account}: {body}");
    }

    /// One send to `count` new recipients; the decision.
    pub(crate) fn send(&self, account: &str, count: usize, tag: &str) -> Value {
        let to: Vec<String> = (0..count)
            .map(|i| format!("{tag}{i}@example.com"))
            .collect();
        let (status, body) = self.post(
            "/v1/decide/email",
            &json!({ "account": account, "to": to, "kind": "first" }),
        );
        assert_eq!(status, 200, "{body}");
        body
    }

    pub(crate) fn leads(&self, account: &str, campaign: &str, emails: &[String]) {
        let path = format!(
            "/v1/accounts/{}/campaigns/{}/leads",
            percent_encode(account),
            percent_encode(campaign)
        );
        let (status, body) = self.post(&path, &json!({ "emails": emails }));
        assert_eq!(status, 200, "{body}");
    }

    pub(crate) fn usage(&self, account: &str) -> Value {
        let (status, _, body) =
            self.get(&format!("/v1/accounts/{}/usage", percent_encode(account)));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Stops the server: everything durable, the store closed after it.
    pub(crate) fn stop(self) {
        self.server.stop();
    }
}

/// Waits at most [`WAIT`] for `child` to exit; past that, kills it and fails.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("waits") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn policy_file(dir: &Path) -> PathBuf {
    harness::write_file(dir, "policy.toml", POLICY)
}

fn emails(tag: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{tag}{i}@example.org"))
        .collect()
}

// ---- reading the pages ----------------------------------------------------------

/// The value of the first `name="..."` attribute in `html`.
fn attr(html: &str, name: &str) -> Option<String> {
    let marker = format!(" {name}=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(unescape(&html[start..end]))
}

/// The text of the first element with class `class` in `html`.
fn text_of(html: &str, class: &str) -> Option<String> {
    let marker = format!("class=\"{class}\"");
    let at = html.find(&marker)? + marker.len();
    let start = html[at..].find('>')? + at + 1;
    let end = html[start..].find('<')? + start;
    Some(unescape(&html[start..end]))
}

/// Each account row of the list, by account, in page order.
pub(crate) fn rows(html: &str) -> Vec<(String, String)> {
    html.split("<tr data-account=\"")
        .skip(1)
        .map(|piece| {
            let name_end = piece.find('"').expect("a closed attribute");
            let row_end = piece.find("</tr>").expect("a closed row");
            (unescape(&piece[..name_end]), piece[..row_end].to_owned())
        })
        .collect()
}

fn assert_contains(html: &str, part: &str) {
    assert!(html.contains(part), "{part:?} is not in {html}");
}

/// What a page shows of one credit: used, limit, and the text of each.
#[derive(Debug, PartialEq, Eq)]
struct Shown {
    used: String,
    limit: String,
    figure: String,
    percent: String,
}

fn shown(html: &str, credit: &str) -> Shown {
    let at = html
        .find(&format!("data-credit=\"{credit}\""))
        .unwrap_or_else(|| panic!("no {credit} meter in {html}"));
    let meter = &html[at..];
    Shown {
        used: attr(meter, "data-used").expect("data-used"),
        limit: attr(meter, "data-limit").expect("data-limit"),
        figure: text_of(meter, "figure").expect("a figure"),
        percent: text_of(meter, "pct").expect("a percentage"),
    }
}

fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What the page must show for one credit of an API (or CLI) usage answer.
fn expected(credits: &Value) -> Shown {
    let used = credits["used"].as_u64().expect("used");
    let (limit, limit_text, percent) = match credits["limit"].as_u64() {
        Some(0) => ("0".to_owned(), "0".to_owned(), "100.0%".to_owned()),
        Some(limit) => (
            limit.to_string(),
            grouped(limit),
            format!("{:.1}%", 100.0 * used as f64 / limit as f64),
        ),
        None => {
            assert_eq!(credits["limit"], "unlimited");
            ("unlimited".into(), "unlimited".into(), "no limit".into())
        }
    };
    Shown {
        used: used.to_string(),
        limit,
        figure: format!("{} / {limit_text}", grouped(used)),
        percent,
    }
}

/// Checks that `html` (a list row or an account page) shows `usage` exactly.
fn assert_shows(html: &str, usage: &Value) {
    let account = usage["account"].as_str().expect("account");
    for credit in ["lead", "email"] {
        assert_eq!(
            shown(html, credit),
            expected(&usage[format!("{credit}_credits")]),
            "{account}: {credit} credits"
        );
    }
    assert!(
        html.contains(&format!(
            "<time datetime=\"{}\"",
            usage["email_credits"]["resets_at"]
                .as_str()
                .expect("resets_at")
        )),
        "{account}: reset date {usage} in {html}"
    );
    assert!(
        html.contains(&format!(">{}<", usage["plan"].as_str().expect("plan"))),
        "{account}: plan"
    );
}

// ---- pages over HTTP --------------------------------------------------------------

#[test]
fn the_list_filters_sorts_and_escapes_and_unknown_accounts_are_404() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = Serve::start(Path::new("memory"), &policy_file(dir.path()));
    serve.subscribe("acme", "small");
    serve.subscribe("globex", "small");
    serve.subscribe("initech", "large");
    serve.subscribe("<script>", "scale");
    serve.send("acme", 8, "a");
    serve.send("globex", 10, "g");
    assert_eq!(
        serve.send("globex", 1, "late")["reason"],
        "email_credits_exhausted"
    );
    serve.send("<script>", 1, "s");
    serve.leads("globex", "q1", &emails("x", 3));
    serve.leads("globex", "<b>q2<b>", &emails("x", 5));

    let (status, content_type, page) = serve.get("/");
    assert_eq!(status, 200, "{page}");
    assert_eq!(content_type, "text/html; charset=utf-8");
    let names: Vec<String> = rows(&page).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["<script>", "acme", "globex", "initech"]);
    for (name, row) in rows(&page) {
        assert_shows(&row, &serve.usage(&name));
    }
    assert!(!page.contains("<script"), "a name is never markup: {page}");
    assert_contains(&page, ">&lt;script&gt;</a>");
    assert_contains(&page, "href=\"/accounts/%3Cscript%3E\"");
    let state = |page: &str, name: &str| {
        let rows = rows(page);
        let row = &rows.iter().find(|(n, _)| n == name).expect("a row").1;
        attr(&format!(" {row}"), "data-state").expect("a state")
    };
    assert_eq!(state(&page, "acme"), "warning");
    assert_eq!(state(&page, "globex"), "exhausted");
    assert_eq!(state(&page, "initech"), "ok");
    assert_eq!(state(&page, "<script>"), "ok");

    let listed = |path: &str| -> Vec<String> {
        let (status, _, page) = serve.get(path);
        assert_eq!(status, 200, "{path}: {page}");
        rows(&page).into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(listed("/?q=AC"), ["acme"]);
    assert_eq!(listed("/?q=%3Cscr"), ["<script>"]);
    assert_eq!(listed("/?q=nobody"), Vec::<String>::new());
    assert_eq!(listed("/?state=exhausted"), ["globex"]);
    assert_eq!(
        listed("/?state=ok&sort=name&dir=desc"),
        ["initech", "<script>"]
    );
    // Fullest email credits first: 10/10, 8/10, 1/100, 0/5000.
    assert_eq!(
        listed("/?sort=email"),
        ["globex", "acme", "<script>", "initech"]
    );
    assert_eq!(
        listed("/?sort=email&dir=asc"),
        ["initech", "<script>", "acme", "globex"]
    );
    assert_eq!(
        listed("/?sort=state"),
        ["globex", "acme", "<script>", "initech"]
    );
    // Nonsense parameters fall back to the defaults.
    assert_eq!(listed("/?sort=%00&dir=sideways&state=&q="), names);

    let (status, _, page) = serve.get("/accounts/globex");
    assert_eq!(status, 200, "{page}");
    assert_shows(&page, &serve.usage("globex"));
    assert_contains(&page, "data-reason=\"email_credits_exhausted\"");
    assert_contains(&page, "data-campaign=\"q1\" data-leads=\"3\"");
    assert_contains(
        &page,
        "data-campaign=\"&lt;b&gt;q2&lt;b&gt;\" data-leads=\"5\"",
    );
    assert_contains(&page, "<svg class=\"chart\"");
    assert_contains(&page, "Email credits exhausted: 10 of 10 used");

    let (status, _, page) = serve.get("/accounts/%3Cscript%3E");
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("<script"), "{page}");
    assert_shows(&page, &serve.usage("<script>"));

    let (status, content_type, page) = serve.get("/accounts/nobody");
    assert_eq!(status, 404, "{page}");
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert_contains(&page, "No such account");
    let (status, _, page) = serve.get("/accounts/%FF");
    assert_eq!(status, 400, "{page}");
    // A name with URL delimiters ('/' is refused by the naming rule) stays
    // inside its one path segment.
    serve.subscribe("team?eu#1", "small");
    let (status, _, page) = serve.get("/?q=team");
    assert_eq!(status, 200, "{page}");
    assert_contains(&page, "href=\"/accounts/team%3Feu%231\"");
    let (status, _, page) = serve.get("/accounts/team%3Feu%231");
    assert_eq!(status, 200, "{page}");
    assert_shows(&page, &serve.usage("team?eu#1"));
    // The API's own answers are untouched: JSON, with JSON errors.
    let (status, content_type, body) = serve.get("/no/such/route");
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/json"),
        "{body}"
    );
    serve.stop();
}

#[test]
fn the_page_and_the_cli_agree_to_the_credit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = policy_file(dir.path());
    let store = dir.path().join("state.redb");
    let store_arg = store.to_str().expect("utf-8 path");
    let serve = Serve::start(&store, &policy);
    serve.subscribe("acme", "large");
    serve.leads("acme", "q1", &emails("lead", 700));
    serve.leads("acme", "q2", &emails("other", 137));
    for i in 0..7 {
        serve.send("acme", 9, &format!("batch{i}-"));
    }
    let api = serve.usage("acme");
    let (status, _, page) = serve.get("/accounts/acme");
    assert_eq!(status, 200, "{page}");
    let (_, _, list) = serve.get("/");
    let row = rows(&list)
        .into_iter()
        .find(|(n, _)| n == "acme")
        .expect("acme listed")
        .1;
    serve.stop();

    let output = crate::harness::creditgate_command()
        .args([
            "usage", "acme", "--format", "json", "--store", store_arg, "--policy",
        ])
        .arg(&policy)
        .output()
        .expect("creditgate usage runs");
    assert!(output.status.success(), "{output:?}");
    let mut cli: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(cli["lead_credits"], json!({"used": 837, "limit": 1000}));
    assert_eq!(cli["email_credits"]["used"], 63);
    // 63 of 5,000 in the seconds since the subscription: at that pace, long
    // before the reset. Asked at two instants, the two projections differ.
    let mut api = api;
    for (who, view) in [("the CLI", &mut cli), ("the API", &mut api)] {
        let projected = view["email_credits"]
            .as_object_mut()
            .and_then(|e| e.remove("projected_exhaustion"));
        assert!(
            projected.as_ref().is_some_and(Value::is_string),
            "{who}: {projected:?}"
        );
    }
    for key in ["account", "plan", "anchor", "lead_credits", "email_credits"] {
        assert_eq!(cli[key], api[key], "{key}: the CLI and the API");
    }
    assert_shows(&page, &cli);
    assert_shows(&row, &cli);
    // Each campaign's exclusive leads (the two share none), and the projection.
    for (campaign, leads) in [("q1", 700), ("q2", 137)] {
        let cells =
            format!(r#"data-campaign="{campaign}" data-leads="{leads}" data-exclusive="{leads}""#);
        assert!(page.contains(&cells), "{cells} in {page}");
    }
    assert!(page.contains(r#"<dd class="projected"><time"#), "{page}");
    assert!(
        page.contains(&format!(
            "<time datetime=\"{}\"",
            cli["anchor"].as_str().expect("anchor")
        )),
        "the anchor: {page}"
    );
    assert!(
        page.contains(&format!(
            "<time datetime=\"{}\"",
            cli["cycle_start"].as_str().expect("cycle_start")
        )),
        "the cycle start: {page}"
    );
    // The terminal dashboard prints the same figures and percentages.
    let output = crate::harness::creditgate_command()
        .args(["usage", "acme", "--store", store_arg, "--policy"])
        .arg(&policy)
        .output()
        .expect("creditgate usage runs");
    let text = String::from_utf8_lossy(&output.stdout);
    for credit in ["lead", "email"] {
        let on_page = shown(&page, credit);
        let line = format!(
            "{} / {}  ({})",
            on_page.used, on_page.limit, on_page.percent
        );
        assert!(text.contains(&line), "{line:?} is not in\n{text}");
    }
}

// ---- in a browser ---------------------------------------------------------------

/// Where test artefacts go: `test-artifacts/` in the target directory this test
/// binary was built in.
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_creditgate"))
        .ancestors()
        .nth(2)
        .expect("the target directory")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creates the artefact directory");
    dir
}

/// Runs headless Chromium with `args` and returns its standard output. Fails,
/// saying how to install it, when it is missing.
fn chromium(profile: &Path, args: &[&str]) -> String {
    let out = profile.with_extension("out");
    let err = profile.with_extension("err");
    let spawned = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "chromium is not installed; the browser test needs Debian's chromium package: \
             sudo apt-get install --no-install-recommends chromium"
        ),
        Err(e) => panic!("cannot run chromium: {e}"),
    };
    let status = wait_exit(&mut child, "chromium");
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "chromium {args:?}: {status}\n{stderr}");
    std::fs::read_to_string(&out).expect("chromium's output")
}

/// Saves a screenshot of each `(url, file, window size)` of `shots` to `file` in
/// `dir`, and checks it is a PNG of some size.
fn screenshots(profile: &Path, dir: &Path, shots: &[(&str, &str, &str)]) {
    for (url, file, size) in shots {
        screenshot(profile, url, &dir.join(file), size);
    }
}

fn screenshot(profile: &Path, url: &str, path: &Path, size: &str) {
    let _ = std::fs::remove_file(path);
    chromium(
        profile,
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={size}"),
            url,
        ],
    );
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {path:?}: {e}"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{path:?} is not a PNG"
    );
    assert!(png.len() > 10_000, "{path:?} is only {} bytes", png.len());
}

#[test]
fn chromium_renders_the_dashboard_of_a_live_serve() {
    let (dir, store) = harness::temp_path("state.redb");
    let serve = Serve::start(&store, &policy_file(dir.path()));
    // One near its limit, one exhausted, one fresh, and one named to inject.
    serve.subscribe("northwind", "small");
    serve.leads("northwind", "spring", &emails("n", 4));
    serve.send("northwind", 8, "n");
    serve.subscribe("globex", "small");
    serve.leads("globex", "launch", &emails("g", 6));
    serve.leads("globex", "follow-ups", &emails("g", 9));
    serve.send("globex", 6, "g");
    serve.send("globex", 4, "h");
    assert_eq!(
        serve.send("globex", 2, "late")["reason"],
        "email_credits_exhausted"
    );
    serve.subscribe("initech", "large");
    serve.subscribe("<script>", "scale");
    serve.send("<script>", 3, "s");

    let profile = dir.path().join("chromium-profile");
    let dom = chromium(&profile, &["--dump-dom", &format!("{}/", serve.base)]);
    let listed = rows(&dom);
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["<script>", "globex", "initech", "northwind"],
        "{dom}"
    );
    for (name, row) in &listed {
        assert_shows(row, &serve.usage(name));
    }
    let badge = |name: &str| {
        let row = &listed.iter().find(|(n, _)| n == name).expect("listed").1;
        text_of(
            row,
            &format!(
                "badge {}",
                attr(&format!(" {row}"), "data-state").expect("state")
            ),
        )
        .expect("a badge")
    };
    assert_eq!(badge("northwind"), "≥ 80%");
    assert_eq!(badge("globex"), "exhausted");
    assert_eq!(badge("initech"), "ok");
    // The hostile name is text in the browser's DOM: its only <script> elements
    // would be ones the page made, and it makes none.
    assert_contains(&dom, ">&lt;script&gt;</a>");
    assert_eq!(
        dom.matches("<script").count(),
        dom.matches("=\"<script").count(),
        "only attribute values may hold the name unescaped: {dom}"
    );

    let account = format!("{}/accounts/globex", serve.base);
    let dom = chromium(&profile, &["--dump-dom", &account]);
    assert_shows(&dom, &serve.usage("globex"));
    assert_contains(&dom, "data-reason=\"email_credits_exhausted\"");
    assert_contains(&dom, "data-campaign=\"follow-ups\" data-leads=\"9\"");
    assert_contains(&dom, "<svg class=\"chart\"");

    let home = format!("{}/", serve.base);
    screenshots(
        &profile,
        &artefacts(),
        &[
            (&account, "dashboard-account.png", "1280,900"),
            (&home, "dashboard.png", "1280,900"),
            // A phone's width: the list turns into cards rather than overflowing.
            (&home, "dashboard-phone.png", "390,844"),
        ],
    );
    serve.stop();
}

// ---- the README's screenshots ------------------------------------------------------

/// Regenerates `host/assets/dashboard.png` and `host/assets/dashboard-account.png`
/// from a year of realistic history: `cargo test -p creditgate --test it --
/// --ignored dashboard::readme_screenshots`.
#[test]
#[ignore = "writes host/assets/; run by hand when the pages change"]
fn readme_screenshots() {
    use chrono::{DateTime, Months, Utc};
    let (dir, store) = harness::temp_path("state.redb");
    let store_arg = store.to_str().expect("utf-8 path");
    let policy = harness::repo().join("policies/smartlead.toml");
    let now = Utc::now();
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // (account, plan, days since it subscribed, email credits used per month as a
    // share of its limit, from the oldest month)
    let accounts: [(&str, &str, u64, u64, &[u64]); 6] = [
        (
            "acme-outbound",
            "pro",
            400,
            90_000,
            &[38, 42, 51, 47, 55, 61, 58, 66, 72, 69, 78, 83],
        ),
        (
            "globex-sales",
            "base",
            300,
            6_000,
            &[62, 75, 88, 94, 100, 97, 100, 91, 100, 100],
        ),
        (
            "initech",
            "unlimited_smart",
            200,
            150_000,
            &[12, 18, 21, 25, 31, 29, 34],
        ),
        ("hooli-growth", "base", 95, 6_000, &[35, 41, 44, 39]),
        (
            "umbrella-corp",
            "unlimited_prime",
            380,
            500_000,
            &[8, 9, 11, 10, 12, 15, 14, 13, 16, 18, 17, 20],
        ),
        ("stark-industries", "pro", 12, 90_000, &[4]),
    ];
    let mut trace = String::new();
    for (account, plan, days, limit, shares) in accounts {
        let anchor = now - chrono::Duration::days(days as i64);
        trace += &format!(
            "{}\n",
            json!({"at": at(anchor), "op": "subscribe", "account": account, "plan": plan})
        );
        // The index of the current cycle: whole months since the anchor.
        let current = (0..)
            .take_while(|k| {
                anchor
                    .checked_add_months(Months::new(*k))
                    .is_some_and(|t| t <= now)
            })
            .last()
            .unwrap_or(0);
        for (i, share) in shares.iter().enumerate() {
            let Some(k) = current.checked_sub((shares.len() - 1 - i) as u32) else {
                continue;
            };
            let start = anchor.checked_add_months(Months::new(k)).expect("a date");
            let when =
                (start + chrono::Duration::hours(30)).min(now - chrono::Duration::minutes(5));
            let cost = limit * share / 100;
            trace += &format!(
                "{}\n",
                json!({"at": at(when), "op": "charge_email", "account": account, "cost": cost})
            );
        }
    }
    let output = crate::harness::run_with_stdin(
        {
            let mut c = crate::harness::creditgate_command();
            c.args(["replay", "--events", "-", "--store", store_arg, "--policy"])
                .arg(&policy);
            c
        },
        trace.as_bytes(),
    );
    assert!(output.status.success(), "{output:?}");

    let serve = Serve::start(&store, &policy);
    for (account, campaigns) in [
        (
            "acme-outbound",
            &[
                ("q4-enterprise", 940),
                ("founders-emea", 610),
                ("webinar-follow-up", 388),
            ][..],
        ),
        (
            "globex-sales",
            &[("cold-outreach", 1_000), ("re-engage", 732)][..],
        ),
        ("initech", &[("pilot", 120)][..]),
        ("hooli-growth", &[("seed-round", 456), ("partners", 80)][..]),
        (
            "umbrella-corp",
            &[("labs", 1_000), ("pharma-leads", 1_000)][..],
        ),
    ] {
        for (campaign, count) in campaigns {
            serve.leads(account, campaign, &emails(&format!("{campaign}."), *count));
        }
    }
    for i in 0..3 {
        serve.send("globex-sales", 25, &format!("late{i}-"));
    }
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    std::fs::create_dir_all(&assets).expect("creates host/assets");
    let profile = dir.path().join("chromium-profile");
    let home = format!("{}/", serve.base);
    let account = format!("{}/accounts/globex-sales", serve.base);
    screenshots(
        &profile,
        &assets,
        &[
            (&home, "dashboard.png", "1280,720"),
            (&account, "dashboard-account.png", "1280,1280"),
        ],
    );
    serve.stop();
}

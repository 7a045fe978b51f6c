//! The web dashboard: every account's credits at a glance (`GET /`), and one page
//! per account (`GET /accounts/{account}`), served by `serve` next to the HTTP API.
//!
//! What an account is, what its campaigns are, how many billing cycles its chart
//! holds and where a credit turns to "warning" are the component's to say: the
//! pages ask it ([`crate::inspect`]) and know no layout or rule of their own.
//!
//! Server-rendered HTML with its CSS inline: no JavaScript, no build step, nothing
//! fetched from anywhere else, so it works in any browser, on a phone, and on a
//! gateway with no way out to the internet. Sorting and filtering are plain links
//! and a GET form. Every figure comes from the [`AccountUsage`] of a `usage`
//! decision asked of the same gateway as `GET /v1/accounts/{account}/usage`, so
//! the page and the API cannot disagree.
//!
//! The list is paged: [`PAGE_ROWS`] accounts a page, in the store's order of
//! names, each page resuming after the last name the previous one examined, so a
//! page costs the same with 50 accounts or 500,000. The name filter is applied to
//! names before any decision; the state filter needs each account's usage, so a
//! page examines at most [`EXAMINE_AT_MOST`] accounts and then offers the next
//! page. Sorting orders the rows of the page shown. Every page, and each account
//! page, runs under the cap of [`Bulk`]: its decisions go to the gateway's bulk
//! lane and at most [`crate::api_read::BULK_SLOTS`] pages or listings run at
//! once, so viewers cannot crowd out Postfix's checks.
//!
//! Account names are untrusted input (any client of the API may subscribe one):
//! every string goes through [`escape`] on its way into HTML and every name
//! through [`percent_encode`] on its way into a URL, and a Content-Security-Policy
//! that allows no script at all is there in case one is ever missed.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Datelike, Timelike};

use crate::alerts::{self, FiredAlert};
use crate::api_read::Bulk;
use crate::bindings::{AccountUsage, CycleUsage, Reason};
use crate::gateway::Refusal;
use crate::inspect::{self, Level, Warn};
use crate::replay::reason_code;
use crate::time::{format_instant, now, parse_instant};

/// Rows of refusals, alerts and campaigns an account page shows at most.
const RECENT_ROWS: usize = 20;
const MAX_CAMPAIGN_ROWS: usize = 100;

/// Accounts a page of the list shows at most.
pub const PAGE_ROWS: usize = 50;

/// Accounts a page of the list examines (one usage decision each) at most while
/// the state filter leaves rows out; past it, the page ends with what it found.
pub const EXAMINE_AT_MOST: usize = 500;

/// Names a page reads at most while the name filter matches none of them: a
/// store read each, no decision.
const NAMES_AT_MOST: usize = 20_000;

/// The dashboard's routes over `bulk`'s gateway. Generic in the state of the
/// router it is merged into: its own state is given here, so it fits any.
pub fn router<S: Clone + Send + Sync + 'static>(bulk: Bulk) -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/accounts/{account}", get(account))
        .with_state(bulk)
}

// ---- escaping -----------------------------------------------------------------

/// `text` safe to put in HTML text or in a quoted attribute value.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` as one URL path segment or query value: every byte but RFC 3986's
/// unreserved characters percent-encoded, so that a `/`, `?` or `#` in an account
/// name stays part of the name.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

// ---- figures ------------------------------------------------------------------

impl Level {
    /// The worse of an account's two credits, each at its warning level.
    fn of_usage(u: &AccountUsage, warn: Warn) -> Level {
        Level::of(u.lead_credits.used, u.lead_credits.limit, warn.lead_credits).max(Level::of(
            u.email_credits.used,
            u.email_credits.limit,
            warn.email_credits,
        ))
    }

    /// Its name in URLs and its CSS class.
    fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Exhausted => "exhausted",
        }
    }

    fn parse(text: &str) -> Option<Level> {
        [Level::Ok, Level::Warning, Level::Exhausted]
            .into_iter()
            .find(|l| l.name() == text)
    }

    /// What the state filter and the badge call it: the warning level when both
    /// credits share one.
    fn label(self, warn: Warn) -> String {
        match (self, warn.common()) {
            (Level::Ok, _) => "ok".to_owned(),
            (Level::Warning, Some(p)) => format!("≥ {p}%"),
            (Level::Warning, None) => "warning".to_owned(),
            (Level::Exhausted, _) => "exhausted".to_owned(),
        }
    }

    fn badge(self, warn: Warn) -> String {
        let title = match (self, warn.common()) {
            (Level::Ok, Some(p)) => format!("every credit under {p}% of its limit"),
            (Level::Ok, None) => "every credit under its warning level".to_owned(),
            (Level::Warning, Some(p)) => format!("a credit is at {p}% of its limit or more"),
            (Level::Warning, None) => "a credit is at its warning level or more".to_owned(),
            (Level::Exhausted, _) => "a credit has reached its limit".to_owned(),
        };
        let text = self.label(warn);
        format!(
            r#"<span class="badge {}" title="{title}">{text}</span>"#,
            self.name()
        )
    }
}

/// `used` as a percentage of `limit`, as `creditgate usage` prints it (a limit
/// of 0 is 100% used); `None` when unlimited.
fn percent(used: u64, limit: Option<u64>) -> Option<f64> {
    match limit? {
        0 => Some(100.0),
        limit => Some(100.0 * used as f64 / limit as f64),
    }
}

/// `n` with thousands separated by commas.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), grouped)
}

/// An instant for people: `2026-12-01 09:00 UTC`.
fn date_text(nanos: i64) -> String {
    let t = DateTime::from_timestamp_nanos(nanos);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// An instant as a `<time>` element: exact in `datetime` (as the API writes it),
/// short in its text.
fn time_element(nanos: i64) -> String {
    format!(
        r#"<time datetime="{}">{}</time>"#,
        escape(&format_instant(nanos)),
        date_text(nanos)
    )
}

fn human_duration(nanos: i64) -> String {
    let secs = Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)).as_secs();
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// One credit as a labelled bar. The `data-` attributes carry the exact figures
/// for machines (the browser test reads them); the text carries them for people.
fn meter(
    credit: &str,
    label: Option<&str>,
    used: u64,
    limit: Option<u64>,
    warn: Option<u8>,
) -> String {
    let level = Level::of(used, limit, warn);
    let share = percent(used, limit);
    let width = share.map_or(0.0, |p| p.min(100.0));
    let pct = share.map_or_else(|| "no limit".to_owned(), |p| format!("{p:.1}%"));
    let label = label.map_or(String::new(), |l| {
        format!(r#"<span class="label">{}</span>"#, escape(l))
    });
    let limit_attr = limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    format!(
        r#"<div class="meter {level}" data-credit="{credit}" data-used="{used}" data-limit="{limit_attr}">
<div class="meter-head">{label}<span class="figure">{used_text} / {limit}</span><span class="pct">{pct}</span></div>
<div class="track"><span class="fill" style="width:{width:.1}%"></span></div>
</div>"#,
        level = level.name(),
        used_text = grouped(used),
        limit = limit_text(limit),
    )
}

// ---- pages ----------------------------------------------------------------------

/// An HTML answer.
struct Page {
    status: StatusCode,
    title: String,
    main: String,
}

impl Page {
    fn ok(title: impl Into<String>, main: String) -> Page {
        Page {
            status: StatusCode::OK,
            title: title.into(),
            main,
        }
    }

    fn error(status: StatusCode, title: &str, message: &str) -> Page {
        Page {
            status,
            title: title.to_owned(),
            main: format!(
                r#"<p class="crumb"><a href="/">← All accounts</a></p>
<h1>{}</h1>
<p class="callout exhausted">{}</p>"#,
                escape(title),
                escape(message)
            ),
        }
    }

    fn busy() -> Page {
        tracing::warn!("dashboard page refused: every bulk slot stayed taken");
        Page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many dashboard pages and listings are being served at once. Reload in a moment.",
        )
    }

    fn unavailable(message: &str) -> Page {
        tracing::warn!(error = %message, "dashboard unavailable");
        Page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Usage unavailable",
            &format!("The gateway could not read usage: {message}"),
        )
    }
}

/// No script from anywhere, no fetches: a name that slipped past [`escape`] could
/// still not run anything.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let html = format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<link rel="icon" href="data:,">
<title>{title} · creditgate</title>
<style>{CSS}</style>
</head>
<body>
<header class="top"><a href="/">creditgate</a><span>lead and email credits</span></header>
<main>
{main}
</main>
<footer>Rendered {rendered} · same figures as <code>GET /v1/accounts/{{account}}/usage</code></footer>
</body>
</html>
"#,
            title = escape(&self.title),
            main = self.main,
            rendered = date_text(now()),
        );
        let mut response = (self.status, html).into_response();
        let headers = response.headers_mut();
        for (name, value) in [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Usage changes with every send: never show a stale copy.
            (header::CACHE_CONTROL, "no-store"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

// ---- the list of accounts ---------------------------------------------------------

/// One account and its usage.
#[derive(Debug, Clone)]
struct Row {
    account: String,
    usage: AccountUsage,
    /// The policy in force lacks the account's plan (a reload was forced): it is
    /// denied every request, its limits 0, until moved. Listed, and said.
    plan_missing: bool,
    /// The account's plan is in shadow mode: it is let through past its
    /// limits. Marked, with how far over.
    shadow: bool,
}

/// What the list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Sort {
    #[default]
    Name,
    Plan,
    /// Share of the lead credit limit used.
    Lead,
    /// Share of the email credit limit used.
    Email,
    Reset,
    State,
}

impl Sort {
    const ALL: [Sort; 6] = [
        Sort::Name,
        Sort::Plan,
        Sort::Lead,
        Sort::Email,
        Sort::Reset,
        Sort::State,
    ];

    fn name(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Plan => "plan",
            Sort::Lead => "lead",
            Sort::Email => "email",
            Sort::Reset => "reset",
            Sort::State => "state",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::Name => "Account",
            Sort::Plan => "Plan",
            Sort::Lead => "Lead credits",
            Sort::Email => "Email credits",
            Sort::Reset => "Resets",
            Sort::State => "State",
        }
    }

    /// The direction that puts what needs attention first: the fullest, the
    /// worst, the soonest reset; names in alphabetical order.
    fn natural(self) -> Dir {
        match self {
            Sort::Name | Sort::Plan | Sort::Reset => Dir::Asc,
            Sort::Lead | Sort::Email | Sort::State => Dir::Desc,
        }
    }

    fn compare(self, a: &Row, b: &Row, warn: Warn) -> Ordering {
        let (x, y) = (&a.usage, &b.usage);
        // Unlimited sorts as emptier than any limited credit.
        let share = |used, limit| percent(used, limit).unwrap_or(-1.0);
        match self {
            Sort::Name => Ordering::Equal,
            Sort::Plan => x.plan.cmp(&y.plan),
            Sort::Lead => share(x.lead_credits.used, x.lead_credits.limit)
                .total_cmp(&share(y.lead_credits.used, y.lead_credits.limit))
                .then(x.lead_credits.used.cmp(&y.lead_credits.used)),
            Sort::Email => share(x.email_credits.used, x.email_credits.limit)
                .total_cmp(&share(y.email_credits.used, y.email_credits.limit))
                .then(x.email_credits.used.cmp(&y.email_credits.used)),
            Sort::Reset => x.email_credits.resets_at.cmp(&y.email_credits.resets_at),
            Sort::State => Level::of_usage(x, warn).cmp(&Level::of_usage(y, warn)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Asc,
    Desc,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Asc => "asc",
            Dir::Desc => "desc",
        }
    }

    fn flip(self) -> Dir {
        match self {
            Dir::Asc => Dir::Desc,
            Dir::Desc => Dir::Asc,
        }
    }
}

/// The list's query parameters: `q` (part of the name, any case), `state` (`ok`,
/// `warning`, `exhausted`), `sort` (a [`Sort`] name), `dir` (`asc`, `desc`) and
/// `after` (the page starts after this account name). Unknown or malformed
/// values fall back to the defaults: a hand-edited URL still shows a page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Params {
    q: String,
    state: Option<Level>,
    sort: Sort,
    dir: Option<Dir>,
    after: Option<String>,
    /// The policy's warning levels: not a parameter, but what `state` means.
    warn: Warn,
}

impl Params {
    fn parse(pairs: &[(String, String)]) -> Params {
        let mut params = Params::default();
        for (key, value) in pairs {
            match key.as_str() {
                "q" => params.q = value.trim().to_owned(),
                "after" => params.after = Some(value.clone()).filter(|a| !a.is_empty()),
                "state" => params.state = Level::parse(value),
                "sort" => {
                    params.sort = Sort::ALL
                        .into_iter()
                        .find(|s| s.name() == value)
                        .unwrap_or_default();
                }
                "dir" => {
                    params.dir = [Dir::Asc, Dir::Desc]
                        .into_iter()
                        .find(|d| d.name() == value);
                }
                _ => {}
            }
        }
        params
    }

    fn dir(&self) -> Dir {
        self.dir.unwrap_or(self.sort.natural())
    }

    /// The list's URL with these parameters, defaults left out.
    fn href(&self) -> String {
        let mut pairs = Vec::new();
        if !self.q.is_empty() {
            pairs.push(("q", self.q.as_str()));
        }
        if let Some(state) = self.state {
            pairs.push(("state", state.name()));
        }
        if self.sort != Sort::Name {
            pairs.push(("sort", self.sort.name()));
        }
        if let Some(dir) = self.dir.filter(|d| *d != self.sort.natural()) {
            pairs.push(("dir", dir.name()));
        }
        if let Some(after) = &self.after {
            pairs.push(("after", after.as_str()));
        }
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        if query.is_empty() {
            "/".to_owned()
        } else {
            format!("/?{}", query.join("&"))
        }
    }

    /// Whether an account of this name may be listed: the name filter.
    fn names(&self, account: &str) -> bool {
        self.q.is_empty() || account.to_lowercase().contains(&self.q.to_lowercase())
    }

    /// Whether an account with this usage is listed: the state filter.
    fn shows(&self, usage: &AccountUsage) -> bool {
        self.state
            .is_none_or(|s| Level::of_usage(usage, self.warn) == s)
    }

    /// The rows these parameters select, in their order; ties by name.
    fn select<'a>(&self, rows: &'a [Row]) -> Vec<&'a Row> {
        let mut selected: Vec<&Row> = rows
            .iter()
            .filter(|r| self.names(&r.account))
            .filter(|r| self.shows(&r.usage))
            .collect();
        let dir = self.dir();
        selected.sort_by(|a, b| {
            // Byte order, the order pages go in: a page sorted by name reads on
            // from the one before.
            let by_name = a.account.cmp(&b.account);
            let by_key = match self.sort {
                Sort::Name => by_name,
                sort => sort.compare(a, b, self.warn),
            };
            // Ties in name order whichever way the key goes.
            match dir {
                Dir::Asc => by_key.then(by_name),
                Dir::Desc => by_key.reverse().then(by_name),
            }
        });
        selected
    }
}

async fn index(
    State(bulk): State<Bulk>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Page {
    let pairs = query.map(|Query(pairs)| pairs).unwrap_or_default();
    let mut params = Params::parse(&pairs);
    let Ok(_slot) = bulk.slot().await else {
        return Page::busy();
    };
    params.warn = match bulk.warning_levels().await {
        Ok(warn) => warn,
        Err(e) => return Page::unavailable(&format!("cannot read the warning levels: {e}")),
    };
    let at = now();
    match listed(&bulk, &params, at).await {
        Ok(listed) => Page::ok("Accounts", index_main(&listed, &params, at)),
        Err(message) => Page::unavailable(&message),
    }
}

/// One page of the list: the accounts it shows, and where the next page starts.
#[derive(Debug, Default)]
struct Listed {
    rows: Vec<Row>,
    /// The last name examined, when more names follow it.
    next: Option<String>,
    /// Accounts examined (one usage decision each) for this page.
    examined: usize,
}

/// The page of accounts `params` select at `at`: accounts (as the component lists
/// them) in name order from just after `params.after`, each whose `usage`
/// decision is allowed and passes the filters, until the page is full or its
/// budget spent.
async fn listed(bulk: &Bulk, params: &Params, at: i64) -> Result<Listed, String> {
    const CHUNK: u32 = 256;
    let mut listed = Listed::default();
    let mut from = params.after.clone();
    let mut names = 0;
    loop {
        let after = from.clone();
        let chunk = bulk
            .ask(move |w| inspect::accounts_page(w, after.as_deref(), CHUNK))
            .await
            .map_err(|e| format!("cannot list accounts: {e}"))?;
        for scope in chunk.accounts {
            if listed.rows.len() == PAGE_ROWS
                || listed.examined == EXAMINE_AT_MOST
                || names == NAMES_AT_MOST
            {
                // `scope` follows the last name examined: there is a next page.
                listed.next = from;
                return Ok(listed);
            }
            names += 1;
            from = Some(scope.clone());
            if !params.names(&scope) {
                continue;
            }
            listed.examined += 1;
            // One at a time, in the gateway's bulk lane: a page never has more
            // than one decision waiting, and never in a sender's lane.
            let decision = bulk.usage(&scope, at).await.map_err(|e| e.to_string())?;
            // An account on a plan the policy lacks is shown with it.
            let plan_missing = decision.denied == Some(Reason::UnknownPlan);
            if let (None | Some(Reason::UnknownPlan), Some(usage)) =
                (decision.denied, decision.usage)
                && params.shows(&usage)
            {
                listed.rows.push(Row {
                    account: scope,
                    shadow: !plan_missing && bulk.gateway().plan_in_shadow(&usage.plan),
                    usage,
                    plan_missing,
                });
            }
        }
        match chunk.next {
            // Past names the component did not count as accounts, too.
            Some(next) => from = Some(next),
            None => return Ok(listed),
        }
    }
}

fn index_main(listed: &Listed, params: &Params, at: i64) -> String {
    let rows = &listed.rows;
    let mut out = String::from("<h1>Accounts</h1>\n");
    // Counts over the page, each a link that filters every account to it.
    let count = |level: Level| {
        rows.iter()
            .filter(|r| Level::of_usage(&r.usage, params.warn) == level)
            .count()
    };
    let _ = write!(
        out,
        r#"<p class="summary"><a href="{all}">{n} account{s}</a>{here}"#,
        all = escape(
            &Params {
                state: None,
                after: None,
                ..params.clone()
            }
            .href()
        ),
        n = rows.len(),
        s = if rows.len() == 1 { "" } else { "s" },
        here = if listed.next.is_some() || params.after.is_some() {
            " on this page"
        } else {
            ""
        },
    );
    for level in [Level::Ok, Level::Warning, Level::Exhausted] {
        let href = Params {
            state: Some(level),
            after: None,
            ..params.clone()
        }
        .href();
        let _ = write!(
            out,
            r#" · <a href="{}">{} {}</a>"#,
            escape(&href),
            count(level),
            level.badge(params.warn)
        );
    }
    out.push_str("</p>\n");
    out += &filter_form(params);

    let filtered = !params.q.is_empty() || params.state.is_some();
    let selected = params.select(rows);
    if selected.is_empty() {
        if !filtered && params.after.is_none() {
            out.push_str(
                r#"<p class="empty">No accounts yet. Subscribe one with <code>POST /v1/accounts/{account}/subscription</code>.</p>"#,
            );
        } else if listed.next.is_some() {
            out += &empty(&format!(
                "No account matches among the {} examined for this page.",
                listed.examined
            ));
        } else {
            out += &empty("No account matches.");
        }
        out += &pages(listed, params);
        return out;
    }
    if filtered {
        let _ = writeln!(
            out,
            r#"<p class="shown">Showing the accounts that match. <a href="/">Show all</a></p>"#
        );
    }
    out.push_str("<table class=\"accounts\">\n<thead><tr>");
    for sort in Sort::ALL {
        let active = params.sort == sort;
        let dir = if active {
            params.dir().flip()
        } else {
            sort.natural()
        };
        let href = Params {
            sort,
            dir: Some(dir),
            ..params.clone()
        }
        .href();
        let (aria, arrow) = match (active, params.dir()) {
            (false, _) => ("", ""),
            (true, Dir::Asc) => (r#" aria-sort="ascending""#, " ▲"),
            (true, Dir::Desc) => (r#" aria-sort="descending""#, " ▼"),
        };
        let _ = write!(
            out,
            r#"<th class="{}"{aria}><a href="{}">{}{arrow}</a></th>"#,
            sort.name(),
            escape(&href),
            sort.label()
        );
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in selected {
        let u = &row.usage;
        let _ = writeln!(
            out,
            r#"<tr data-account="{name}" data-state="{state}">
<td class="name" data-label="Account"><a href="/accounts/{path}">{name}</a></td>
<td class="plan" data-label="Plan">{plan}</td>
<td data-label="Lead credits">{lead}</td>
<td data-label="Email credits">{email}</td>
<td class="reset" data-label="Resets">{reset}<span class="in">in {until}</span></td>
<td data-label="State">{badge}</td>
</tr>"#,
            name = escape(&row.account),
            state = Level::of_usage(u, params.warn).name(),
            path = percent_encode(&row.account),
            plan = plan_cell(&u.plan, row.plan_missing)
                + &if row.shadow {
                    shadow_badge(u)
                } else {
                    String::new()
                },
            lead = meter(
                "lead",
                None,
                u.lead_credits.used,
                u.lead_credits.limit,
                params.warn.lead_credits
            ),
            email = meter(
                "email",
                None,
                u.email_credits.used,
                u.email_credits.limit,
                params.warn.email_credits
            ),
            reset = time_element(u.email_credits.resets_at),
            until = human_duration(u.email_credits.resets_at.saturating_sub(at)),
            badge = Level::of_usage(u, params.warn).badge(params.warn),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out += &pages(listed, params);
    out
}

/// A plan's name, marked when the policy in force lacks it.
fn plan_cell(plan: &str, missing: bool) -> String {
    if missing {
        format!(
            r#"{} <span class="badge exhausted missing" title="the policy in force has no such plan: every request of this account is denied until it is moved to another plan">not in the policy</span>"#,
            escape(plan)
        )
    } else {
        escape(plan).into_owned()
    }
}

/// The mark of an account in shadow mode, with how far past its limits the
/// requests let through took it.
fn shadow_badge(u: &AccountUsage) -> String {
    let over = |used: u64, limit: Option<u64>, what: &str| {
        limit
            .filter(|&limit| used > limit)
            .map(|limit| format!(", {} {what} over", grouped(used - limit)))
            .unwrap_or_default()
    };
    let lead = over(u.lead_credits.used, u.lead_credits.limit, "lead credits");
    let email = over(u.email_credits.used, u.email_credits.limit, "email credits");
    format!(
        r#" <span class="badge shadow" data-lead-over="{lo}" data-email-over="{eo}" title="shadow mode: requests past the limits are let through and counted, not refused">shadow{lead}{email}</span>"#,
        lo = u
            .lead_credits
            .limit
            .map_or(0, |l| u.lead_credits.used.saturating_sub(l)),
        eo = u
            .email_credits
            .limit
            .map_or(0, |l| u.email_credits.used.saturating_sub(l)),
    )
}

/// The links to the first and the next page, and what paging means for sorting.
fn pages(listed: &Listed, params: &Params) -> String {
    if listed.next.is_none() && params.after.is_none() {
        return String::new();
    }
    let mut out = String::from(r#"<nav class="pages" aria-label="Pages">"#);
    if params.after.is_some() {
        let first = Params {
            after: None,
            ..params.clone()
        };
        let _ = write!(
            out,
            r#"<a class="first" href="{}">← First page</a>"#,
            escape(&first.href())
        );
    }
    if let Some(next) = &listed.next {
        let following = Params {
            after: Some(next.clone()),
            ..params.clone()
        };
        let _ = write!(
            out,
            r#"<a class="next" rel="next" href="{}">Next page →</a>"#,
            escape(&following.href())
        );
    }
    out.push_str("</nav>\n");
    let _ = writeln!(
        out,
        r#"<p class="note">Pages of up to {PAGE_ROWS} accounts go in order of name; sorting orders the page shown.</p>"#
    );
    out
}

/// Filtering and sorting as a GET form: what the column links do, for a phone
/// (where the table's header is hidden) and for keyboards.
fn filter_form(params: &Params) -> String {
    let mut states = String::from(r#"<option value="">any</option>"#);
    for level in [Level::Ok, Level::Warning, Level::Exhausted] {
        let _ = write!(
            states,
            r#"<option value="{}"{}>{}</option>"#,
            level.name(),
            if params.state == Some(level) {
                " selected"
            } else {
                ""
            },
            level.label(params.warn)
        );
    }
    let mut sorts = String::new();
    for sort in Sort::ALL {
        let _ = write!(
            sorts,
            r#"<option value="{}"{}>{}</option>"#,
            sort.name(),
            if params.sort == sort { " selected" } else { "" },
            sort.label()
        );
    }
    format!(
        r#"<form class="filter" method="get" action="/" role="search">
<label>Account <input type="search" name="q" value="{q}" placeholder="name contains"></label>
<label>State <select name="state">{states}</select></label>
<label>Sort by <select name="sort">{sorts}</select></label>
<button type="submit">Apply</button>
</form>
"#,
        q = escape(&params.q)
    )
}

// ---- one account ---------------------------------------------------------------

async fn account(State(bulk): State<Bulk>, path: Result<Path<String>, PathRejection>) -> Page {
    let Ok(Path(account)) = path else {
        return Page::error(
            StatusCode::BAD_REQUEST,
            "Not an account address",
            "The account name in this address does not decode.",
        );
    };
    let account = match bulk.names().account(&account) {
        Ok(account) => account,
        Err(e) => {
            return Page::error(StatusCode::NOT_FOUND, "No such account", &e.to_string());
        }
    };
    let Ok(_slot) = bulk.slot().await else {
        return Page::busy();
    };
    let gateway = bulk.gateway();
    let at = now();
    let (usage, plan_missing) = match bulk.usage(&account, at).await {
        Err(e) => return Page::unavailable(&e.to_string()),
        Ok(d) => match (d.denied, d.usage) {
            (None, Some(usage)) => (usage, false),
            (Some(Reason::UnknownPlan), Some(usage)) => (usage, true),
            (Some(Reason::UnknownAccount), _) => {
                return Page::error(
                    StatusCode::NOT_FOUND,
                    "No such account",
                    &format!("There is no account {account:?}."),
                );
            }
            (Some(Reason::UnknownPlan), _) => {
                return Page::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Plan not in the policy",
                    &format!("The plan of {account:?} is not in the policy in force."),
                );
            }
            (denied, _) => {
                return Page::unavailable(&format!(
                    "the usage of {account:?} was answered without usage ({})",
                    denied.map_or("allowed", reason_code)
                ));
            }
        },
    };
    let name = account.clone();
    let warn = match bulk.warning_levels().await {
        Ok(warn) => warn,
        Err(e) => return Page::unavailable(&format!("cannot read the warning levels: {e}")),
    };
    let asked = bulk
        .ask(move |w| {
            let cycles = inspect::history_cycles(w)?;
            let campaigns = inspect::campaigns(w, &name).map(|found| {
                found
                    .into_iter()
                    .map(|c| (c.name, (c.leads, c.exclusive)))
                    .collect::<BTreeMap<_, _>>()
            });
            Ok((cycles, campaigns))
        })
        .await;
    let (cycles, campaigns) = match asked {
        Ok((cycles, campaigns)) => (cycles, campaigns.map_err(|e| e.to_string())),
        Err(e) => return Page::unavailable(&e.to_string()),
    };
    let history = gateway
        .email_history(account.clone(), cycles, at)
        .await
        .map_err(|e| e.to_string());
    let store = gateway.store().clone();
    let name = account.clone();
    let fired = tokio::task::spawn_blocking(move || {
        alerts::list(store.as_ref(), Some(&name)).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let refusals = gateway.recent_refusals(&account);
    let details = Details {
        history,
        campaigns,
        refusals,
        alerts: fired,
        warn,
        cycles,
    };
    let mut main = account_main(&account, &usage, &details, at);
    if !plan_missing && gateway.plan_in_shadow(&usage.plan) {
        let plan = format!(r#"<dd class="plan">{}"#, escape(&usage.plan));
        main = main.replacen(&plan, &(plan.clone() + &shadow_badge(&usage)), 1);
    }
    if plan_missing {
        // Said at the top, and in the plan's own place.
        main = main.replacen(
            &format!(r#"<dd class="plan">{}</dd>"#, escape(&usage.plan)),
            &format!(r#"<dd class="plan">{}</dd>"#, plan_cell(&usage.plan, true)),
            1,
        );
    }
    Page::ok(account.clone(), main)
}

/// What an account page shows besides usage; each part may fail alone.
struct Details {
    history: Result<Vec<CycleUsage>, String>,
    /// Campaign → (leads, leads no other campaign holds).
    campaigns: Result<BTreeMap<String, (u64, u64)>, String>,
    refusals: Vec<Refusal>,
    alerts: Result<Vec<FiredAlert>, String>,
    /// The policy's warning levels.
    warn: Warn,
    /// Billing cycles the chart has room for: as many as the component keeps.
    cycles: u32,
}

fn account_main(account: &str, u: &AccountUsage, details: &Details, at: i64) -> String {
    let warn = details.warn;
    let level = Level::of_usage(u, warn);
    let mut out = format!(
        r#"<p class="crumb"><a href="/">← All accounts</a></p>
<h1 data-account="{name}">{name} {badge}</h1>
<dl class="facts">
<div><dt>Plan</dt><dd class="plan">{plan}</dd></div>
<div><dt>Subscribed</dt><dd class="anchor">{anchor}</dd></div>
<div><dt>Current cycle</dt><dd>{start} →</dd></div>
<div><dt>Email credits reset</dt><dd class="reset">{reset} <span class="in">in {until}</span></dd></div>
<div><dt>At this cycle's pace, they run out</dt><dd class="projected">{projected}</dd></div>
</dl>
<div class="card meters">
{lead}
{email}
</div>
"#,
        name = escape(account),
        badge = level.badge(warn),
        plan = escape(&u.plan),
        anchor = time_element(u.anchor),
        start = time_element(u.email_credits.cycle_start),
        reset = time_element(u.email_credits.resets_at),
        until = human_duration(u.email_credits.resets_at.saturating_sub(at)),
        projected = match u.email_credits.projected_exhaustion {
            Some(when) => format!(
                r#"{} <span class="in">in {}</span>"#,
                time_element(when),
                human_duration(when.saturating_sub(at))
            ),
            None => "not before the reset".to_owned(),
        },
        lead = meter(
            "lead",
            Some("Lead credits"),
            u.lead_credits.used,
            u.lead_credits.limit,
            warn.lead_credits
        ),
        email = meter(
            "email",
            Some("Email credits this cycle"),
            u.email_credits.used,
            u.email_credits.limit,
            warn.email_credits
        ),
    );
    for (what, used, limit, level, until) in [
        (
            "Lead credits",
            u.lead_credits.used,
            u.lead_credits.limit,
            warn.lead_credits,
            "no new contact can be added until leads are deleted or the plan grows",
        ),
        (
            "Email credits",
            u.email_credits.used,
            u.email_credits.limit,
            warn.email_credits,
            "nothing more is sent until the reset or an upgrade",
        ),
    ] {
        match (Level::of(used, limit, level), limit) {
            (Level::Exhausted, Some(limit)) => {
                let _ = writeln!(
                    out,
                    r#"<p class="callout exhausted">{what} exhausted: {} of {} used; {until}.</p>"#,
                    grouped(used),
                    grouped(limit)
                );
            }
            (Level::Warning, Some(limit)) => {
                let _ = writeln!(
                    out,
                    r#"<p class="callout warning">{what} at {:.1}%: {} left.</p>"#,
                    percent(used, Some(limit)).unwrap_or(0.0),
                    grouped(limit - used)
                );
            }
            _ => {}
        }
    }

    out.push_str("<h2>Email credits per billing cycle</h2>\n<div class=\"card\">\n");
    match &details.history {
        Ok(history) if history.is_empty() => out += &empty("No billing cycle yet."),
        Ok(history) => {
            let chart = Chart {
                limit: u.email_credits.limit,
                current: u.email_credits.cycle_start,
                cycles: details.cycles,
                warn: warn.email_credits,
            };
            out += &history_chart(history, &chart);
            out += &history_table(history);
        }
        Err(e) => {
            out += &empty(&format!("History unavailable: {e}"));
        }
    }
    out.push_str("</div>\n<div class=\"columns\">\n");
    out += &campaigns_section(&details.campaigns, u.lead_credits.used);
    out += &refusals_section(&details.refusals);
    out.push_str("</div>\n");
    out += &alerts_section(&details.alerts);
    out
}

/// What the history chart needs besides the history.
#[derive(Debug, Clone, Copy)]
struct Chart {
    /// The current email-credit limit, drawn as a line.
    limit: Option<u64>,
    /// The start of the current cycle, whose bar is marked.
    current: i64,
    /// Slots on the chart: the cycles the component keeps.
    cycles: u32,
    /// The email-credit warning level, for the bars' colours.
    warn: Option<u8>,
}

/// Email credits used per cycle as an SVG bar chart, oldest on the left, the
/// current cycle last; the current limit as a dashed line. Every bar has a title
/// with its exact figure, and the table under it says the same in text.
fn history_chart(history: &[CycleUsage], chart: &Chart) -> String {
    let Chart {
        limit,
        current,
        cycles,
        warn,
    } = *chart;
    // At least one slot, and a slot for every cycle given.
    let cycles = (cycles.max(1) as usize).max(history.len());
    const W: f64 = 880.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 56.0;
    const RIGHT: f64 = 8.0;
    const TOP: f64 = 14.0;
    const BOTTOM: f64 = 40.0;
    let slots = cycles as f64;
    let slot = (W - LEFT - RIGHT) / slots;
    let top_value = history
        .iter()
        .map(|c| c.used)
        .chain(limit)
        .max()
        .unwrap_or(0)
        .max(1);
    let y = |v: u64| TOP + (H - TOP - BOTTOM) * (1.0 - v as f64 / top_value as f64);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="Email credits used in each of the last {n} billing cycles">
"#,
        n = history.len()
    );
    for v in [0, top_value / 2, top_value] {
        let _ = writeln!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            x2 = W - RIGHT,
            y = y(v),
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
            label = grouped(v)
        );
    }
    // Right-aligned: the current cycle always sits at the right edge.
    let offset = cycles - history.len();
    let mut previous_year = None;
    for (i, cycle) in history.iter().enumerate() {
        let x = LEFT + slot * (offset + i) as f64;
        let level = Level::of(cycle.used, limit, warn);
        let start = DateTime::from_timestamp_nanos(cycle.start);
        let is_current = cycle.start == current;
        let (bar_y, bar_h) = (y(cycle.used), (H - BOTTOM) - y(cycle.used));
        let _ = writeln!(
            svg,
            r#"<rect class="bar {level}{cur}" x="{bx:.1}" y="{bar_y:.1}" width="{bw:.1}" height="{bar_h:.1}" rx="2"><title>{from} to {to}: {used} email credits</title></rect>"#,
            level = level.name(),
            cur = if is_current { " current" } else { "" },
            bx = x + slot * 0.15,
            bw = slot * 0.7,
            from = escape(&format_instant(cycle.start)),
            to = escape(&format_instant(cycle.end)),
            used = grouped(cycle.used),
        );
        // The day too: a cycle runs from its anchor's day, not from the 1st.
        let month = format!("{} {}", MONTHS[start.month0() as usize % 12], start.day());
        let _ = writeln!(
            svg,
            r#"<text class="month{cur}" x="{cx:.1}" y="{my}" text-anchor="middle">{month}</text>"#,
            cur = if is_current { " current" } else { "" },
            cx = x + slot / 2.0,
            my = H - BOTTOM + 15.0,
        );
        if previous_year != Some(start.year()) {
            let _ = writeln!(
                svg,
                r#"<text class="year" x="{cx:.1}" y="{yy}" text-anchor="middle">{year}</text>"#,
                cx = x + slot / 2.0,
                yy = H - BOTTOM + 30.0,
                year = start.year()
            );
            previous_year = Some(start.year());
        }
    }
    if let Some(limit) = limit.filter(|l| *l > 0) {
        let _ = writeln!(
            svg,
            r#"<line class="limit" x1="{LEFT}" x2="{x2}" y1="{ly:.1}" y2="{ly:.1}"/><text class="limit-label" x="{x2}" y="{ty:.1}" text-anchor="end">limit {label}</text>"#,
            x2 = W - RIGHT,
            ly = y(limit),
            ty = y(limit) - 4.0,
            label = grouped(limit)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn history_table(history: &[CycleUsage]) -> String {
    let mut out = String::from(
        "<details><summary>As a table</summary>\n<table class=\"history\"><thead><tr><th>Cycle start</th><th>Cycle end</th><th class=\"num\">Email credits used</th></tr></thead><tbody>\n",
    );
    for cycle in history.iter().rev() {
        let _ = writeln!(
            out,
            r#"<tr data-start="{}" data-used="{}"><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#,
            escape(&format_instant(cycle.start)),
            cycle.used,
            time_element(cycle.start),
            time_element(cycle.end),
            grouped(cycle.used)
        );
    }
    out.push_str("</tbody></table></details>\n");
    out
}

/// A line saying a section has nothing to show, or why it cannot.
fn empty(text: &str) -> String {
    format!(r#"<p class="empty">{}</p>"#, escape(text))
}

fn campaigns_section(
    campaigns: &Result<BTreeMap<String, (u64, u64)>, String>,
    distinct: u64,
) -> String {
    let mut out = String::from("<section>\n<h2>Campaigns</h2>\n");
    match campaigns {
        Err(e) => {
            out += &empty(&format!("Campaigns unavailable: {e}"));
        }
        Ok(campaigns) if campaigns.is_empty() => {
            out += &empty("No leads yet.");
        }
        Ok(campaigns) => {
            out.push_str(
                "<table class=\"campaigns\"><thead><tr><th>Campaign</th><th class=\"num\">Leads</th><th class=\"num\" title=\"Leads no other campaign holds: the lead credits deleting this campaign's leads frees\">Exclusive</th></tr></thead><tbody>\n",
            );
            for (name, (count, exclusive)) in campaigns.iter().take(MAX_CAMPAIGN_ROWS) {
                let _ = writeln!(
                    out,
                    r#"<tr data-campaign="{name}" data-leads="{count}" data-exclusive="{exclusive}"><td>{name}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
                    grouped(*count),
                    grouped(*exclusive),
                    name = escape(name),
                );
            }
            out.push_str("</tbody></table>\n");
            if campaigns.len() > MAX_CAMPAIGN_ROWS {
                let _ = writeln!(
                    out,
                    r#"<p class="note">and {} more campaigns.</p>"#,
                    grouped((campaigns.len() - MAX_CAMPAIGN_ROWS) as u64)
                );
            }
            let _ = writeln!(
                out,
                r#"<p class="note">{} distinct contacts hold the lead credits: a contact in two campaigns counts in both here, once against the limit. Deleting a campaign's leads frees its exclusive ones.</p>"#,
                grouped(distinct)
            );
        }
    }
    out.push_str("</section>\n");
    out
}

fn refusals_section(refusals: &[Refusal]) -> String {
    let mut out = String::from("<section>\n<h2>Recent refusals</h2>\n");
    if refusals.is_empty() {
        out += &empty("None since this server started.");
    } else {
        out.push_str(
            "<table class=\"refusals\"><thead><tr><th>When</th><th>Request</th><th>Reason</th></tr></thead><tbody>\n",
        );
        for r in refusals.iter().take(RECENT_ROWS) {
            let _ = writeln!(
                out,
                r#"<tr data-reason="{reason}"><td>{at}</td><td><code>{op}</code></td><td><code>{reason}</code></td></tr>"#,
                at = time_element(r.at),
                op = r.op.name(),
                reason = reason_code(r.reason),
            );
        }
        out.push_str("</tbody></table>\n");
        out.push_str(
            r#"<p class="note">Newest first, kept in memory since this server started.</p>"#,
        );
    }
    out.push_str("</section>\n");
    out
}

fn alerts_section(fired: &Result<Vec<FiredAlert>, String>) -> String {
    let mut out = String::from("<h2>Alerts</h2>\n");
    match fired {
        Err(e) => {
            out += &empty(&format!("Alerts unavailable: {e}"));
        }
        Ok(fired) if fired.is_empty() => {
            out += &empty("No threshold crossed yet.");
        }
        Ok(fired) => {
            out.push_str(
                "<table class=\"alerts\"><thead><tr><th>When</th><th>Credit</th><th class=\"num\">Threshold</th><th class=\"num\">Used</th></tr></thead><tbody>\n",
            );
            for a in fired.iter().rev().take(RECENT_ROWS) {
                let _ = writeln!(
                    out,
                    r#"<tr><td>{at}</td><td>{credit}</td><td class="num">{threshold}%</td><td class="num">{used} / {limit}</td></tr>"#,
                    at = parse_instant(&a.at)
                        .map_or_else(|_| escape(&a.at).into_owned(), time_element),
                    credit = escape(&a.credit.replace('_', " ")),
                    threshold = a.threshold,
                    used = grouped(a.used),
                    limit = grouped(a.limit),
                );
            }
            out.push_str("</tbody></table>\n");
        }
    }
    out
}

const CSS: &str = r#"
:root{--ok:#1a7f37;--warning:#b45309;--exhausted:#c62828;--ink:#1f2328;--muted:#5b6470;--line:#d8dee4;--track:#e6eaef;--bg:#f5f7f9;--link:#0b57d0}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:var(--bg)}
a{color:var(--link)}
code{font:.85em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
header.top{background:#1f2328;color:#c9d1d9;padding:.65rem 1.25rem;display:flex;gap:.9rem;align-items:baseline}
header.top a{color:#fff;font-weight:700;text-decoration:none;font-size:1.1rem}
header.top span{font-size:.85rem}
main{max-width:1120px;margin:0 auto;padding:1rem 1.25rem 2rem}
footer{max-width:1120px;margin:0 auto;padding:0 1.25rem 1.5rem;color:var(--muted);font-size:.8rem}
h1{font-size:1.5rem;margin:.5rem 0 .6rem;overflow-wrap:anywhere}
h2{font-size:1.05rem;margin:1.5rem 0 .6rem}
.crumb{margin:.2rem 0;font-size:.9rem}
.summary{margin:.2rem 0 .8rem;display:flex;flex-wrap:wrap;gap:.35rem;align-items:center}
.summary a{text-decoration:none;color:var(--ink)}
.filter{display:flex;flex-wrap:wrap;gap:.6rem 1rem;align-items:end;background:#fff;border:1px solid var(--line);border-radius:8px;padding:.7rem .9rem;margin-bottom:1rem}
.filter label{display:flex;flex-direction:column;font-size:.75rem;color:var(--muted);gap:.2rem}
.filter input,.filter select,.filter button{font:inherit;font-size:.95rem;padding:.35rem .5rem;border:1px solid var(--line);border-radius:6px;background:#fff;color:var(--ink)}
.filter button{background:var(--ink);color:#fff;border-color:var(--ink);cursor:pointer}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);border-radius:8px}
th,td{padding:.55rem .75rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
th{font-size:.75rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);background:#fafbfc;white-space:nowrap}
th a{color:inherit;text-decoration:none}
th a:hover{text-decoration:underline}
.num{text-align:right;font-variant-numeric:tabular-nums}
td.name a{font-weight:600;text-decoration:none;overflow-wrap:anywhere}
td.reset{white-space:nowrap;font-size:.9rem}
.in{display:block;color:var(--muted);font-size:.8rem}
.meter{min-width:12rem}
.meters{display:grid;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr));gap:1rem 2rem}
.meters .meter-head{font-size:1.05rem}
.meter-head{display:flex;gap:.5rem;align-items:baseline;font-variant-numeric:tabular-nums;flex-wrap:wrap}
.meter-head .label{font-weight:600;width:100%;font-size:.85rem;color:var(--muted)}
.meter-head .pct{margin-left:auto;color:var(--muted);font-size:.85rem}
.track{height:.55rem;background:var(--track);border-radius:.3rem;overflow:hidden;margin-top:.3rem}
.fill{display:block;height:100%;background:var(--ok);border-radius:.3rem}
.meter.warning .fill{background:var(--warning)}
.meter.exhausted .fill{background:var(--exhausted)}
.meter.exhausted .pct{color:var(--exhausted);font-weight:600}
.badge{display:inline-block;vertical-align:middle;padding:.1rem .6rem;border-radius:1rem;font-size:.78rem;font-weight:600;color:#fff;background:var(--ok);white-space:nowrap}
.badge.warning{background:var(--warning)}
.badge.exhausted{background:var(--exhausted)}
.badge.shadow{background:#6b4fa0}
.callout{border-left:4px solid;padding:.6rem .9rem;background:#fff;border-radius:4px;margin:.8rem 0}
.callout.warning{border-color:var(--warning)}
.callout.exhausted{border-color:var(--exhausted)}
.facts{display:flex;flex-wrap:wrap;gap:.4rem 2rem;margin:0 0 1rem}
.facts div{min-width:9rem}
.facts dt{font-size:.75rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.facts dd{margin:0;font-weight:500}
.facts .in{display:inline}
.chart{width:100%;height:auto;display:block}
.chart .grid{stroke:var(--line);stroke-width:1}
.chart .tick,.chart .month,.chart .year,.chart .limit-label{font-size:11px;fill:var(--muted);font-family:inherit}
.chart .month.current{fill:var(--ink);font-weight:700}
.chart .bar{fill:#5b8def}
.chart .bar.warning{fill:var(--warning)}
.chart .bar.exhausted{fill:var(--exhausted)}
.chart .bar.current{stroke:var(--ink);stroke-width:1.5}
.chart .limit{stroke:var(--exhausted);stroke-width:1.2;stroke-dasharray:5 4}
.chart .limit-label{fill:var(--exhausted)}
details{margin-top:.6rem;font-size:.9rem}
summary{cursor:pointer;color:var(--link)}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(20rem,1fr));gap:0 1.5rem}
.empty,.note,.shown{color:var(--muted);font-size:.9rem}
.pages{display:flex;gap:1.5rem;margin:.8rem 0 .2rem}
@media (max-width:720px){
main{padding:.75rem}
table.accounts,table.accounts tbody,table.accounts tr,table.accounts td{display:block;width:100%}
table.accounts thead{display:none}
table.accounts tr{border-bottom:1px solid var(--line);padding:.4rem 0}
table.accounts td{border:0;padding:.25rem .8rem}
table.accounts td::before{content:attr(data-label);display:block;font-size:.7rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{EmailUsage, LeadUsage};

    fn row(
        account: &str,
        lead: (u64, Option<u64>),
        email: (u64, Option<u64>),
        resets_at: i64,
    ) -> Row {
        Row {
            account: account.to_owned(),
            usage: AccountUsage {
                plan: "base".to_owned(),
                anchor: 0,
                lead_credits: LeadUsage {
                    used: lead.0,
                    limit: lead.1,
                },
                email_credits: EmailUsage {
                    used: email.0,
                    limit: email.1,
                    cycle_start: 0,
                    resets_at,
                    projected_exhaustion: None,
                },
            },
            plan_missing: false,
            shadow: false,
        }
    }

    /// The default policy's warning levels.
    const WARN: Warn = Warn {
        lead_credits: Some(80),
        email_credits: Some(80),
    };

    fn names(rows: &[&Row]) -> Vec<String> {
        rows.iter().map(|r| r.account.clone()).collect()
    }

    fn params(query: &[(&str, &str)]) -> Params {
        let pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Params {
            warn: WARN,
            ..Params::parse(&pairs)
        }
    }

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(escape("acme"), "acme");
        assert!(matches!(escape("acme"), Cow::Borrowed(_)));
        assert_eq!(escape("<script>"), "&lt;script&gt;");
        assert_eq!(
            escape(r#"a&b "c" 'd' <e>"#),
            "a&amp;b &quot;c&quot; &#39;d&#39; &lt;e&gt;"
        );
        assert_eq!(escape("&lt;"), "&amp;lt;", "escaped text is escaped again");
        assert_eq!(escape("café ✓"), "café ✓");
    }

    #[test]
    fn percent_encode_keeps_a_name_one_segment() {
        assert_eq!(percent_encode("acme-1_2.3~"), "acme-1_2.3~");
        assert_eq!(percent_encode("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(percent_encode("<script>"), "%3Cscript%3E");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn levels_take_the_worse_credit_each_at_its_own_warning_level() {
        let r = row("a", (1, Some(10)), (10, Some(10)), 0);
        assert_eq!(Level::of_usage(&r.usage, WARN), Level::Exhausted);
        let r = row("a", (9, Some(10)), (1, None), 0);
        assert_eq!(Level::of_usage(&r.usage, WARN), Level::Warning);
        let lead_at_95 = Warn {
            lead_credits: Some(95),
            email_credits: Some(50),
        };
        assert_eq!(Level::of_usage(&r.usage, lead_at_95), Level::Ok);
        assert_eq!(Level::Warning.label(WARN), "≥ 80%");
        assert_eq!(Level::Warning.label(lead_at_95), "warning");
    }

    #[test]
    fn figures_read_like_the_cli() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(150_000), "150,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(percent(3, Some(2000)), Some(0.15));
        assert_eq!(percent(0, Some(0)), Some(100.0));
        assert_eq!(percent(5, None), None);
        let m = meter("email", None, 4800, Some(6000), Some(80));
        assert!(m.contains(r#"data-used="4800" data-limit="6000""#), "{m}");
        assert!(m.contains("4,800 / 6,000") && m.contains("80.0%"), "{m}");
        assert!(m.contains(r#"class="meter warning""#), "{m}");
        let m = meter("lead", None, 12, None, Some(80));
        assert!(
            m.contains(r#"data-limit="unlimited""#) && m.contains("12 / unlimited"),
            "{m}"
        );
        assert!(m.contains("width:0.0%"), "{m}");
        let m = meter("lead", None, 30, Some(10), Some(80));
        assert!(
            m.contains("300.0%") && m.contains("width:100.0%"),
            "a bar never overflows: {m}"
        );
        assert_eq!(date_text(1_764_579_600_000_000_000), "2025-12-01 09:00 UTC");
    }

    #[test]
    fn the_list_filters_by_name_and_state() {
        let rows = [
            row("Acme", (0, Some(10)), (0, Some(10)), 3),
            row("acme-eu", (9, Some(10)), (0, Some(10)), 2),
            row("globex", (0, Some(10)), (10, Some(10)), 1),
        ];
        assert_eq!(
            names(&params(&[("q", "ACME")]).select(&rows)),
            ["Acme", "acme-eu"]
        );
        assert_eq!(names(&params(&[("q", " eu ")]).select(&rows)), ["acme-eu"]);
        assert!(params(&[("q", "nobody")]).select(&rows).is_empty());
        assert_eq!(
            names(&params(&[("state", "exhausted")]).select(&rows)),
            ["globex"]
        );
        assert_eq!(
            names(&params(&[("q", "acme"), ("state", "warning")]).select(&rows)),
            ["acme-eu"]
        );
        // Unknown values are ignored rather than refused.
        assert_eq!(
            params(&[("state", "bogus"), ("sort", "x"), ("dir", "up")]),
            Params {
                warn: WARN,
                ..Params::default()
            }
        );
    }

    #[test]
    fn the_list_sorts_by_each_column_both_ways() {
        let rows = [
            row("b", (5, Some(10)), (1, Some(100)), 30),
            row("a", (1, None), (90, Some(100)), 20),
            row("c", (10, Some(10)), (50, Some(100)), 10),
            row("D", (2, Some(10)), (0, None), 40),
        ];
        let order = |query: &[(&str, &str)]| names(&params(query).select(&rows));
        assert_eq!(order(&[]), ["D", "a", "b", "c"], "names, in byte order");
        assert_eq!(order(&[("dir", "desc")]), ["c", "b", "a", "D"]);
        assert_eq!(
            order(&[("sort", "lead")]),
            ["c", "b", "D", "a"],
            "fullest first, unlimited last"
        );
        assert_eq!(
            order(&[("sort", "lead"), ("dir", "asc")]),
            ["a", "D", "b", "c"]
        );
        assert_eq!(order(&[("sort", "email")]), ["a", "c", "b", "D"]);
        assert_eq!(
            order(&[("sort", "reset")]),
            ["c", "a", "b", "D"],
            "soonest first"
        );
        // c is exhausted, a at 90%; b and D are fine and stay in name order.
        assert_eq!(order(&[("sort", "state")]), ["c", "a", "D", "b"]);
        assert_eq!(
            order(&[("sort", "state"), ("dir", "asc")]),
            ["D", "b", "a", "c"]
        );
    }

    #[test]
    fn links_keep_the_other_parameters() {
        let p = params(&[("q", "a b&c"), ("state", "ok"), ("sort", "email")]);
        assert_eq!(p.href(), "/?q=a%20b%26c&state=ok&sort=email");
        assert_eq!(Params::default().href(), "/");
        let listed = Listed {
            rows: vec![row("xa b&cx", (0, Some(1)), (0, Some(1)), 0)],
            ..Listed::default()
        };
        let html = index_main(&listed, &p, 0);
        // The email column is active and descending: its link flips it.
        assert!(
            html.contains(r#"<th class="email" aria-sort="descending"><a href="/?q=a%20b%26c&amp;state=ok&amp;sort=email&amp;dir=asc">"#),
            "{html}"
        );
    }

    #[test]
    fn hostile_names_are_text_everywhere() {
        let rows = [row(
            r#"<script>alert("x")</script>"#,
            (0, Some(1)),
            (0, Some(1)),
            0,
        )];
        let listed = Listed {
            rows: rows.to_vec(),
            ..Listed::default()
        };
        let html = index_main(&listed, &params(&[("q", "<script>")]), 0);
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains(r#"href="/accounts/%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E""#),
            "{html}"
        );
        let details = Details {
            history: Ok(Vec::new()),
            campaigns: Ok(BTreeMap::from([("<img src=x>".to_owned(), (2, 1))])),
            refusals: Vec::new(),
            alerts: Err("<b>".to_owned()),
            warn: WARN,
            cycles: 12,
        };
        let html = account_main(&rows[0].account, &rows[0].usage, &details, 0);
        assert!(
            !html.contains("<script") && !html.contains("<img") && !html.contains("<b>"),
            "{html}"
        );
    }

    #[test]
    fn the_chart_scales_to_the_larger_of_usage_and_limit() {
        let cycle = |start: i64, used| CycleUsage {
            start,
            end: start + 10,
            used,
        };
        let history = [
            cycle(1_700_000_000_000_000_000, 50),
            cycle(1_702_600_000_000_000_000, 100),
        ];
        let chart = |limit, current| Chart {
            limit,
            current,
            cycles: 12,
            warn: Some(80),
        };
        let svg = history_chart(&history, &chart(Some(200), history[1].start));
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("limit 200"), "{svg}");
        assert!(svg.contains(r#"class="bar ok current""#), "{svg}");
        assert!(svg.contains("100 email credits"), "{svg}");
        // The current cycle sits in the last of twelve slots.
        let slot = (880.0 - 56.0 - 8.0) / 12.0;
        assert!(
            svg.contains(&format!(r#"x="{:.1}""#, 56.0 + slot * 11.0 + slot * 0.15)),
            "{svg}"
        );
        // Unlimited: no limit line, scaled to the highest bar; all zero still draws.
        let svg = history_chart(&history, &chart(None, 0));
        assert!(!svg.contains("limit"), "{svg}");
        let svg = history_chart(&[cycle(0, 0)], &chart(Some(0), 0));
        assert!(svg.contains("<rect") && !svg.contains("NaN"), "{svg}");
        // A component that keeps six cycles gets six slots.
        let six = Chart {
            cycles: 6,
            ..chart(Some(200), history[1].start)
        };
        let svg = history_chart(&history, &six);
        let slot = (880.0 - 56.0 - 8.0) / 6.0;
        assert!(
            svg.contains(&format!(r#"x="{:.1}""#, 56.0 + slot * 5.0 + slot * 0.15)),
            "{svg}"
        );
    }
}

//! The pages as HTML: escaping, figures for people, the list, an account's page
//! with its chart, and the document around them with its headers. Every string
//! from outside goes through [`escape`], every name in a URL through
//! [`percent_encode`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, Timelike};

use crate::alerts::FiredAlert;
use crate::bindings::{AccountUsage, CycleUsage};
use crate::gateway::Refusal;
use crate::inspect::{Level, Warn};
use crate::time::{format_instant, now, parse_instant};
use crate::wire::reason_code;

use super::PAGE_ROWS;
use super::data::{Details, Listed, percent};
use super::params::{Dir, Params, Sort};

/// Rows of refusals, alerts and campaigns an account page shows at most.
const RECENT_ROWS: usize = 20;
const MAX_CAMPAIGN_ROWS: usize = 100;

/// The stylesheet, inline in every page (nothing is fetched from elsewhere).
const CSS: &str = include_str!("style.css");

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
    /// What the state filter and the badge call it: the warning level when both
    /// credits share one.
    pub(super) fn label(self, warn: Warn) -> String {
        match (self, warn.common()) {
            (Level::Ok, _) => "ok".to_owned(),
            (Level::Warning, Some(p)) => format!("≥ {p}%"),
            (Level::Warning, None) => "warning".to_owned(),
            (Level::Exhausted, _) => "exhausted".to_owned(),
        }
    }

    pub(super) fn badge(self, warn: Warn) -> String {
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

/// `n` with thousands separated by commas.
pub(super) fn grouped(n: u64) -> String {
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
pub(super) fn date_text(nanos: i64) -> String {
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
pub(super) fn meter(
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
pub(super) struct Page {
    status: StatusCode,
    title: String,
    main: String,
}

impl Page {
    pub(super) fn ok(title: impl Into<String>, main: String) -> Page {
        Page {
            status: StatusCode::OK,
            title: title.into(),
            main,
        }
    }

    pub(super) fn error(status: StatusCode, title: &str, message: &str) -> Page {
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

    pub(super) fn busy() -> Page {
        tracing::warn!("dashboard page refused: every bulk slot stayed taken");
        Page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many dashboard pages and listings are being served at once. Reload in a moment.",
        )
    }

    pub(super) fn unavailable(message: &str) -> Page {
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
<style>
{CSS}</style>
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

/// The list's page: counts by state, the filter, the table and the links to
/// other pages.
pub(super) fn index_main(listed: &Listed, params: &Params, at: i64) -> String {
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
pub(super) fn plan_cell(plan: &str, missing: bool) -> String {
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
pub(super) fn shadow_badge(u: &AccountUsage) -> String {
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

pub(super) fn account_main(account: &str, u: &AccountUsage, details: &Details, at: i64) -> String {
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
pub(super) struct Chart {
    /// The current email-credit limit, drawn as a line.
    pub(super) limit: Option<u64>,
    /// The start of the current cycle, whose bar is marked.
    pub(super) current: i64,
    /// Slots on the chart: the cycles the component keeps.
    pub(super) cycles: u32,
    /// The email-credit warning level, for the bars' colours.
    pub(super) warn: Option<u8>,
}

/// Email credits used per cycle as an SVG bar chart, oldest on the left, the
/// current cycle last; the current limit as a dashed line. Every bar has a title
/// with its exact figure, and the table under it says the same in text.
pub(super) fn history_chart(history: &[CycleUsage], chart: &Chart) -> String {
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

/// What a section's table shows, or the line the section shows instead: why
/// its data (`what`) is unavailable, or `none` when there is nothing to list.
fn rows_or_line<'d, T>(
    data: &'d Result<T, String>,
    what: &str,
    none: &str,
    is_empty: impl FnOnce(&T) -> bool,
) -> Result<&'d T, String> {
    match data {
        Err(e) => Err(empty(&format!("{what} unavailable: {e}"))),
        Ok(rows) if is_empty(rows) => Err(empty(none)),
        Ok(rows) => Ok(rows),
    }
}

fn campaigns_section(
    campaigns: &Result<BTreeMap<String, (u64, u64)>, String>,
    distinct: u64,
) -> String {
    let mut out = String::from("<section>\n<h2>Campaigns</h2>\n");
    match rows_or_line(campaigns, "Campaigns", "No leads yet.", BTreeMap::is_empty) {
        Err(line) => out += &line,
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
    match rows_or_line(fired, "Alerts", "No threshold crossed yet.", Vec::is_empty) {
        Err(line) => out += &line,
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

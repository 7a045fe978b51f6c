//! The dashboard's unit tests: escaping, figures, the list's parameters, and
//! the pages rendered from given data.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::data::{Details, Listed, Row, percent};
use super::html::{
    Chart, account_main, date_text, escape, grouped, history_chart, index_main, meter,
    percent_encode,
};
use super::params::Params;
use crate::bindings::{AccountUsage, CycleUsage, EmailUsage, LeadUsage};
use crate::inspect::{Level, Warn};

fn row(account: &str, lead: (u64, Option<u64>), email: (u64, Option<u64>), resets_at: i64) -> Row {
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

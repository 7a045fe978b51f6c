//! The list's query parameters: what they are, how a URL says them, and which
//! rows of a page they select in which order.

use std::cmp::Ordering;

use crate::bindings::AccountUsage;
use crate::inspect::{Level, Warn};

use super::data::{Row, percent};
use super::html::percent_encode;

impl Level {
    /// Its name in URLs and its CSS class.
    pub(super) fn name(self) -> &'static str {
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
}

/// What the list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Sort {
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
    pub(super) const ALL: [Sort; 6] = [
        Sort::Name,
        Sort::Plan,
        Sort::Lead,
        Sort::Email,
        Sort::Reset,
        Sort::State,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Plan => "plan",
            Sort::Lead => "lead",
            Sort::Email => "email",
            Sort::Reset => "reset",
            Sort::State => "state",
        }
    }

    pub(super) fn label(self) -> &'static str {
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
    pub(super) fn natural(self) -> Dir {
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
pub(super) enum Dir {
    Asc,
    Desc,
}

impl Dir {
    pub(super) fn name(self) -> &'static str {
        match self {
            Dir::Asc => "asc",
            Dir::Desc => "desc",
        }
    }

    pub(super) fn flip(self) -> Dir {
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
pub(super) struct Params {
    pub(super) q: String,
    pub(super) state: Option<Level>,
    pub(super) sort: Sort,
    pub(super) dir: Option<Dir>,
    pub(super) after: Option<String>,
    /// The policy's warning levels: not a parameter, but what `state` means.
    pub(super) warn: Warn,
}

impl Params {
    pub(super) fn parse(pairs: &[(String, String)]) -> Params {
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

    pub(super) fn dir(&self) -> Dir {
        self.dir.unwrap_or(self.sort.natural())
    }

    /// The list's URL with these parameters, defaults left out.
    pub(super) fn href(&self) -> String {
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
    pub(super) fn names(&self, account: &str) -> bool {
        self.q.is_empty() || account.to_lowercase().contains(&self.q.to_lowercase())
    }

    /// Whether an account with this usage is listed: the state filter.
    pub(super) fn shows(&self, usage: &AccountUsage) -> bool {
        self.state
            .is_none_or(|s| Level::of_usage(usage, self.warn) == s)
    }

    /// The rows these parameters select, in their order; ties by name.
    pub(super) fn select<'a>(&self, rows: &'a [Row]) -> Vec<&'a Row> {
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

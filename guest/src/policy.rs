//! A policy: the plans an account can be on, read from TOML.
//!
//! The smallest valid policy is a set of `[plans.NAME]` tables, each with integer
//! `lead_credits` and `email_credits`; every other key is optional (see
//! `policies/example.toml`, which shows and explains them all). Validation walks the
//! parsed document by hand rather than through serde so that it reports every
//! problem at once, each with its key path, line and column, in document order.
//!
//! Warnings flag what is legal but almost surely not meant: a plan with 0 credits, a
//! plan that grants exactly what an earlier one grants (no account could tell the two
//! apart, so one is probably a copy-paste slip), and a plan whose email credits cannot
//! pay for a single recipient of some kind of email.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::bindings::{Allowance, Diagnostic, EmailKind, Mode, PlanSummary, PolicySummary};

/// The one `version` this engine reads.
pub const VERSION: u64 = 1;

/// The most credits of one kind a plan may grant; anything above is surely a typo.
pub const MAX_CREDITS: u64 = 1_000_000_000_000;

/// The most email credits one recipient of one message may cost.
pub const MAX_EMAIL_COST: u64 = 1_000;

/// Longest plan name, in bytes.
pub const MAX_PLAN_NAME: usize = 64;

/// Largest policy text accepted, in bytes.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// The most plans a policy may define. Every worker of a gateway loads the policy
/// into its own instance, and a first decision on a policy of 20,000 plans took
/// seconds; real price lists have a handful of plans, so a policy past this is
/// refused with the count rather than slowing every reload.
pub const MAX_PLANS: usize = 1_000;

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub plans: BTreeMap<String, Plan>,
    pub email_costs: EmailCosts,
    pub alerts: Alerts,
}

/// Usage thresholds, in percent of a limit, that raise an alert when crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alerts {
    /// Strictly ascending, each 1 to 100.
    pub lead_credits: Vec<u8>,
    pub email_credits: Vec<u8>,
}

impl Default for Alerts {
    /// 80% (time to act) and 100% (exhausted), for both credits.
    fn default() -> Self {
        Alerts {
            lead_credits: vec![80, 100],
            email_credits: vec![80, 100],
        }
    }
}

/// What one plan grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Unique contacts an account may hold; `None`: unlimited.
    pub lead_credits: Allowance,
    /// Email credits per billing cycle; `None`: unlimited.
    pub email_credits: Allowance,
    /// The plan's own `mode`; `None`: the gateway's (see [`Plan::mode_under`]).
    pub mode: Option<Mode>,
}

impl Plan {
    /// The mode this plan's accounts are decided in under a gateway in `gateway`:
    /// its own when it sets one. A plan that says `enforce` is enforced under a
    /// gateway in shadow too, so that an operator rolling out a gateway in shadow
    /// can keep the plans that must never send past their limits enforced.
    pub fn mode_under(&self, gateway: Mode) -> Mode {
        self.mode.unwrap_or(gateway)
    }
}

/// Email credits charged per distinct recipient of one message, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailCosts {
    pub first: u64,
    pub follow_up: u64,
    pub reply: u64,
}

impl Default for EmailCosts {
    /// Every email costs one credit, whatever its kind (Smartlead's rule).
    fn default() -> Self {
        Self {
            first: 1,
            follow_up: 1,
            reply: 1,
        }
    }
}

impl EmailCosts {
    pub fn of(&self, kind: EmailKind) -> u64 {
        match kind {
            EmailKind::First => self.first,
            EmailKind::FollowUp => self.follow_up,
            EmailKind::Reply => self.reply,
        }
    }
}

impl Policy {
    /// Parses and validates `text`; on success also returns warnings about legal but
    /// suspicious content.
    pub fn parse(text: &str) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
        let mut check = Checker {
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        if text.len() > MAX_POLICY_BYTES {
            check.error(
                "",
                0..0,
                format!(
                    "the policy is {} bytes; the limit is {MAX_POLICY_BYTES}",
                    text.len()
                ),
            );
            return Err(check.errors);
        }
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                // toml's message is a multi-line report; its first line is the point.
                let message = e.message().lines().next().unwrap_or("invalid TOML").trim();
                match duplicate(text, span.clone()).filter(|_| message == "duplicate key") {
                    Some((path, first)) => {
                        let (line, column) = line_column(text, first);
                        let (again_line, again_column) = line_column(text, span.start);
                        check.error(
                            &path,
                            span,
                            format!(
                                "{path} is defined twice: first at line {line}, column {column}, \
                                 again at line {again_line}, column {again_column}"
                            ),
                        );
                    }
                    None => check.error("", span, message.to_string()),
                }
                return Err(check.errors);
            }
        };
        let policy = check.policy(root.get_ref());
        check.errors.sort_by_key(|d| (d.line, d.column));
        check.warnings.sort_by_key(|d| (d.line, d.column));
        match policy {
            Some(policy) if check.errors.is_empty() => Ok((policy, check.warnings)),
            _ => Err(check.errors),
        }
    }

    /// The plans as the WIT reports them, each with the mode it is decided in
    /// under a gateway in `gateway`.
    pub fn summary(&self, warnings: Vec<Diagnostic>, gateway: Mode) -> PolicySummary {
        PolicySummary {
            plans: self
                .plans
                .iter()
                .map(|(name, plan)| PlanSummary {
                    name: name.clone(),
                    lead_credits: plan.lead_credits,
                    email_credits: plan.email_credits,
                    mode: plan.mode_under(gateway),
                })
                .collect(),
            warnings,
        }
    }
}

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

/// A valid plan and where it is written, for the warnings that compare plans.
struct PlanEntry {
    name: String,
    /// The plan's name in its `[plans.NAME]` header (or its key).
    span: std::ops::Range<usize>,
    /// The `email_credits` value.
    email_span: std::ops::Range<usize>,
    plan: Plan,
}

/// The value of `key` in a plan's table, if the plan is a table holding it.
fn plan_value<'v, 'i>(plan: &'v Value<'i>, key: &str) -> Option<&'v Value<'i>> {
    match plan.get_ref() {
        DeValue::Table(t) => t.get(key),
        _ => None,
    }
}

fn show_allowance(allowance: Allowance) -> String {
    allowance.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

/// Collects diagnostics while walking the document.
struct Checker<'t> {
    text: &'t str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn policy(&mut self, root: &Table<'_>) -> Option<Policy> {
        let mut plans = None;
        let mut email_costs = EmailCosts::default();
        let mut alerts = Alerts::default();
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "version" => match self.integer("version", value, u64::MAX) {
                    Some(v) if v != VERSION => self.error(
                        "version",
                        value.span(),
                        format!(
                            "expected {VERSION}, the only version this engine reads, found {v}"
                        ),
                    ),
                    _ => {}
                },
                "description" => self.string("description", value),
                "plans" => plans = self.plans(value),
                "email_costs" => email_costs = self.email_costs(value),
                "alerts" => alerts = self.alerts(value),
                other => self.unknown_key(
                    "",
                    other,
                    key.span(),
                    &["version", "description", "plans", "email_costs", "alerts"],
                ),
            }
        }
        let Some(entries) = plans else {
            if !root.contains_key("plans") {
                self.error(
                    "plans",
                    0..0,
                    "missing: a policy needs at least one [plans.NAME] table".into(),
                );
            }
            return None;
        };
        // Both checks need the whole document: plans compared with each other, and
        // with `email_costs`, which may come before or after them.
        self.duplicate_plans(&entries);
        self.unaffordable_emails(&entries, &email_costs);
        let plans = entries.into_iter().map(|e| (e.name, e.plan)).collect();
        Some(Policy {
            plans,
            email_costs,
            alerts,
        })
    }

    fn plans(&mut self, value: &Value<'_>) -> Option<Vec<PlanEntry>> {
        let table = self.table("plans", value)?;
        if table.is_empty() {
            self.error(
                "plans",
                value.span(),
                "expected at least one plan, found none".into(),
            );
            return None;
        }
        if table.len() > MAX_PLANS {
            // Not validated one by one: the count alone refuses it, and checking
            // tens of thousands of plans would only delay saying so.
            self.error(
                "plans",
                value.span(),
                format!(
                    "{} plans; a policy may define at most {MAX_PLANS}",
                    table.len()
                ),
            );
            return None;
        }
        let mut plans = Vec::new();
        for (name, value) in table {
            let name_str = name.get_ref().as_ref();
            let path = format!("plans.{name_str}");
            if !valid_plan_name(name_str) {
                self.error(&path, name.span(), format!("a plan name is 1 to {MAX_PLAN_NAME} letters, digits, '_' or '-', found {name_str:?}"));
                continue;
            }
            if let Some(plan) = self.plan(&path, value) {
                let email_span = match plan_value(value, "email_credits") {
                    Some(v) => v.span(),
                    None => name.span(),
                };
                plans.push(PlanEntry {
                    name: name_str.to_string(),
                    span: name.span(),
                    email_span,
                    plan,
                });
            }
        }
        // The table iterates in key order; warnings about "an earlier plan" mean
        // earlier in the file.
        plans.sort_by_key(|e| e.span.start);
        self.plans_differing_in_case(&plans);
        Some(plans)
    }

    /// Refuses two plans whose names differ only in case. Requests name plans
    /// exactly, so `Pro` next to `pro` would be a second, parallel plan that an
    /// operator typing either spelling could land on by mistake.
    fn plans_differing_in_case(&mut self, entries: &[PlanEntry]) {
        for (i, later) in entries.iter().enumerate() {
            let Some(earlier) = entries[..i]
                .iter()
                .find(|e| e.name.eq_ignore_ascii_case(&later.name))
            else {
                continue;
            };
            let (line, column) = line_column(self.text, earlier.span.start);
            self.error(
                &format!("plans.{}", later.name),
                later.span.clone(),
                format!(
                    "plan {:?} differs from plan {:?} (line {line}, column {column}) only in case; \
                     plan names must differ in more than case",
                    later.name, earlier.name
                ),
            );
        }
    }

    /// Warns on a plan that grants the same credits as an earlier one.
    fn duplicate_plans(&mut self, entries: &[PlanEntry]) {
        for (i, later) in entries.iter().enumerate() {
            let Some(earlier) = entries[..i].iter().find(|e| e.plan == later.plan) else {
                continue;
            };
            let (line, _) = line_column(self.text, earlier.span.start);
            self.warning(
                &format!("plans.{}", later.name),
                later.span.clone(),
                format!(
                    "same credits as plans.{} (line {line}): {} lead credits and {} email credits; \
                     no account could tell the two apart, so one is probably a copy-paste slip",
                    earlier.name,
                    show_allowance(later.plan.lead_credits),
                    show_allowance(later.plan.email_credits),
                ),
            );
        }
    }

    /// Warns on a plan whose email credits cannot pay for one recipient of a kind of
    /// email: its accounts could never send that kind. (0 credits has its own warning.)
    fn unaffordable_emails(&mut self, entries: &[PlanEntry], costs: &EmailCosts) {
        for entry in entries {
            let Some(credits) = entry.plan.email_credits.filter(|&c| c > 0) else {
                continue;
            };
            for (kind, cost) in [
                ("first", costs.first),
                ("follow_up", costs.follow_up),
                ("reply", costs.reply),
            ] {
                if cost > credits {
                    self.warning(
                        &format!("plans.{}.email_credits", entry.name),
                        entry.email_span.clone(),
                        format!(
                            "{credits} credits a cycle cannot pay for one recipient of a {kind} \
                             email (email_costs.{kind} = {cost}): accounts on this plan can never send one"
                        ),
                    );
                }
            }
        }
    }

    fn plan(&mut self, path: &str, value: &Value<'_>) -> Option<Plan> {
        let table = self.table(path, value)?;
        const KEYS: [&str; 4] = ["lead_credits", "email_credits", "description", "mode"];
        let mut lead_credits = None;
        let mut email_credits = None;
        let mut mode = None;
        // Keys a misspelt key was probably meant to be: their absence is that
        // misspelling, already reported.
        let mut misspelt = Vec::new();
        for (key, v) in table {
            let key_path = format!("{path}.{}", key.get_ref());
            match key.get_ref().as_ref() {
                "lead_credits" => lead_credits = Some(self.allowance(&key_path, v)),
                "email_credits" => email_credits = Some(self.allowance(&key_path, v)),
                "description" => self.string(&key_path, v),
                "mode" => mode = self.mode(&key_path, v),
                other => {
                    misspelt.extend(closest(other, &KEYS));
                    self.unknown_key(path, other, key.span(), &KEYS);
                }
            }
        }
        for (name, found) in [
            ("lead_credits", &lead_credits),
            ("email_credits", &email_credits),
        ] {
            if found.is_none() && !misspelt.contains(&name) {
                self.error(
                    &format!("{path}.{name}"),
                    value.span(),
                    format!("missing: expected {name} = a non-negative integer or \"unlimited\""),
                );
            }
        }
        let plan = Plan {
            lead_credits: lead_credits??,
            email_credits: email_credits??,
            mode,
        };
        for (name, allowance, what) in [
            (
                "lead_credits",
                plan.lead_credits,
                "accounts on this plan can hold no lead",
            ),
            (
                "email_credits",
                plan.email_credits,
                "accounts on this plan can send no email",
            ),
        ] {
            if allowance == Some(0) {
                let span = table.get(name).map_or(value.span(), Spanned::span);
                self.warning(
                    &format!("{path}.{name}"),
                    span,
                    format!("0 credits: {what}"),
                );
            }
        }
        Some(plan)
    }

    fn email_costs(&mut self, value: &Value<'_>) -> EmailCosts {
        let mut costs = EmailCosts::default();
        let EmailCosts {
            first,
            follow_up,
            reply,
        } = &mut costs;
        let mut slots = [("first", first), ("follow_up", follow_up), ("reply", reply)];
        self.slots("email_costs", value, &mut slots, |p, path, v| {
            p.integer(path, v, MAX_EMAIL_COST)
        });
        costs
    }

    fn alerts(&mut self, value: &Value<'_>) -> Alerts {
        let mut alerts = Alerts::default();
        let Alerts {
            lead_credits,
            email_credits,
        } = &mut alerts;
        let mut slots = [
            ("lead_credits", lead_credits),
            ("email_credits", email_credits),
        ];
        self.slots("alerts", value, &mut slots, Self::thresholds);
        alerts
    }

    /// The table `section`: each key names one of `slots`, set to its value as
    /// `read` reads it (an invalid value reported, its slot left alone); any
    /// other key is reported unknown.
    fn slots<T>(
        &mut self,
        section: &str,
        value: &Value<'_>,
        slots: &mut [(&str, &mut T)],
        read: impl Fn(&mut Self, &str, &Value<'_>) -> Option<T>,
    ) {
        let Some(table) = self.table(section, value) else {
            return;
        };
        for (key, v) in table {
            let name = key.get_ref().as_ref();
            match slots.iter_mut().find(|(slot, _)| *slot == name) {
                Some((_, slot)) => {
                    if let Some(read) = read(self, &format!("{section}.{name}"), v) {
                        **slot = read;
                    }
                }
                None => {
                    let known: Vec<&str> = slots.iter().map(|(slot, _)| *slot).collect();
                    self.unknown_key(section, name, key.span(), &known);
                }
            }
        }
    }

    /// A list of percentages, strictly ascending, each 1 to 100 (`[]`: no alerts).
    fn thresholds(&mut self, path: &str, value: &Value<'_>) -> Option<Vec<u8>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                path,
                value.span(),
                format!(
                    "expected a list of percentages like [80, 100], found {}",
                    describe(value.get_ref())
                ),
            );
            return None;
        };
        let mut thresholds: Vec<u8> = Vec::new();
        let mut valid = true;
        for item in items {
            match self.integer(path, item, 100) {
                Some(0) => {
                    self.error(
                        path,
                        item.span(),
                        "expected a percentage from 1 to 100, found 0".into(),
                    );
                    valid = false;
                }
                Some(t) => {
                    let t = u8::try_from(t).unwrap_or(100);
                    if thresholds.last().is_some_and(|&last| last >= t) {
                        self.error(
                            path,
                            item.span(),
                            format!("thresholds must be in ascending order without repeats, found {t} after {}", thresholds.last().copied().unwrap_or(0)),
                        );
                        valid = false;
                    }
                    thresholds.push(t);
                }
                None => valid = false,
            }
        }
        valid.then_some(thresholds)
    }

    /// `lead_credits` / `email_credits`: a count or "unlimited". `None` on error.
    fn allowance(&mut self, path: &str, value: &Value<'_>) -> Option<Allowance> {
        const EXPECTED: &str = "a non-negative integer or \"unlimited\"";
        match value.get_ref() {
            DeValue::String(s) if s == "unlimited" => Some(None),
            DeValue::Integer(_) => self.bounded(path, value, EXPECTED, MAX_CREDITS).map(Some),
            _ => self.wrong_value(path, value, EXPECTED, &["unlimited"]),
        }
    }

    /// Reports a value that is none of `expected`; a string close to one of
    /// the `words` allowed is answered with it. Always `None`.
    fn wrong_value<T>(
        &mut self,
        path: &str,
        value: &Value<'_>,
        expected: &str,
        words: &[&str],
    ) -> Option<T> {
        let hint = match value.get_ref() {
            DeValue::String(s) => closest(s, words)
                .map(|near| format!(" (did you mean {near:?}?)"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        self.error(
            path,
            value.span(),
            format!(
                "expected {expected}, found {}{hint}",
                describe(value.get_ref())
            ),
        );
        None
    }

    /// A plan's `mode`: `"enforce"` or `"shadow"`. `None` on error (and the
    /// policy is refused, so an unreadable mode never falls back to either).
    fn mode(&mut self, path: &str, value: &Value<'_>) -> Option<Mode> {
        const EXPECTED: &str = "\"enforce\" or \"shadow\"";
        match value.get_ref() {
            DeValue::String(s) if s == "enforce" => Some(Mode::Enforce),
            DeValue::String(s) if s == "shadow" => Some(Mode::Shadow),
            _ => self.wrong_value(path, value, EXPECTED, &["enforce", "shadow"]),
        }
    }

    fn integer(&mut self, path: &str, value: &Value<'_>, max: u64) -> Option<u64> {
        match value.get_ref() {
            DeValue::Integer(_) => self.bounded(path, value, "a non-negative integer", max),
            other => {
                self.error(
                    path,
                    value.span(),
                    format!("expected a non-negative integer, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn bounded(&mut self, path: &str, value: &Value<'_>, expected: &str, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = value.get_ref() else {
            return None;
        };
        match i128::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n < 0 => self.error(
                path,
                value.span(),
                format!("expected {expected}, found {i}"),
            ),
            Ok(n) if n > i128::from(max) => self.error(
                path,
                value.span(),
                format!("expected at most {max}, found {i}"),
            ),
            Ok(n) => return u64::try_from(n).ok(),
            Err(_) => self.error(
                path,
                value.span(),
                format!("expected at most {max}, found {i}"),
            ),
        }
        None
    }

    fn string(&mut self, path: &str, value: &Value<'_>) {
        if !matches!(value.get_ref(), DeValue::String(_)) {
            self.error(
                path,
                value.span(),
                format!("expected a string, found {}", describe(value.get_ref())),
            );
        }
    }

    fn table<'v, 'i>(&mut self, path: &str, value: &'v Value<'i>) -> Option<&'v Table<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    path,
                    value.span(),
                    format!("expected a table, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn unknown_key(
        &mut self,
        parent: &str,
        key: &str,
        span: std::ops::Range<usize>,
        known: &[&str],
    ) {
        let path = if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}.{key}")
        };
        let hint = match closest(key, known) {
            Some(near) => format!(" (did you mean {near:?}?)"),
            None => String::new(),
        };
        self.error(
            &path,
            span,
            format!(
                "unknown key {key:?}{hint}; expected one of: {}",
                known.join(", ")
            ),
        );
    }

    fn error(&mut self, path: &str, span: std::ops::Range<usize>, message: String) {
        let d = self.diagnostic(path, span, message);
        self.errors.push(d);
    }

    fn warning(&mut self, path: &str, span: std::ops::Range<usize>, message: String) {
        let d = self.diagnostic(path, span, message);
        self.warnings.push(d);
    }

    fn diagnostic(&self, path: &str, span: std::ops::Range<usize>, message: String) -> Diagnostic {
        let (line, column) = line_column(self.text, span.start);
        Diagnostic {
            message,
            path: path.to_string(),
            line,
            column,
        }
    }
}

/// For a key defined twice, whose second definition is at `again`: its dotted
/// path and the offset of its first definition. toml reports only the second;
/// the first is found in the text before the line of the second.
fn duplicate(text: &str, again: std::ops::Range<usize>) -> Option<(String, usize)> {
    let key = unquote(text.get(again.clone())?);
    let line_start = text.get(..again.start)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?.trim_start();
    let mut path = if line.starts_with('[') {
        // A table header: the whole path is in it.
        header_path(line)?
    } else {
        // `key = value` under the last header before it (or at the top).
        let mut parent = text
            .get(..line_start)?
            .lines()
            .rev()
            .map(str::trim_start)
            .find(|l| l.starts_with('['))
            .map_or(Some(Vec::new()), header_path)?;
        parent.push(key);
        parent
    };
    // The document before the second definition holds only the first (the whole
    // document, recovered, keeps the second's span).
    let (root, _) = DeTable::parse_recoverable(text.get(..line_start)?);
    let mut table = root.get_ref();
    let mut first = None;
    for (i, part) in path.iter().enumerate() {
        let (name, value) = table.get_key_value(part.as_str())?;
        if i + 1 == path.len() {
            first = Some(name.span().start);
        } else {
            table = match value.get_ref() {
                DeValue::Table(t) => t,
                DeValue::Array(items) => match items.last()?.get_ref() {
                    DeValue::Table(t) => t,
                    _ => return None,
                },
                _ => return None,
            };
        }
    }
    let first = first.filter(|&f| f < again.start)?;
    for part in &mut path {
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            *part = format!("{part:?}");
        }
    }
    Some((path.join("."), first))
}

/// The key path of a `[a.b]` or `[[a.b]]` header line.
fn header_path(line: &str) -> Option<Vec<String>> {
    let inner = line.trim_start_matches('[');
    let inner = inner.get(..inner.find(']')?)?;
    let parts: Vec<String> = inner.split('.').map(unquote).collect();
    (!parts.iter().any(String::is_empty)).then_some(parts)
}

/// A key as written, without its quotes. (Keys with dots inside quotes are not
/// found; the diagnostic then falls back on toml's own.)
fn unquote(key: &str) -> String {
    key.trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .to_string()
}

/// The entry of `known` that `word` is most likely a misspelling of: at most one
/// edit (insertion, deletion, substitution or swap of neighbours) per four
/// characters, and at least one, ignoring case.
fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let word = word.to_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&word, &k.to_lowercase()), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 4).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: Levenshtein with swaps of neighbours.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Long words are no misspelling of a key; this also bounds the work.
    if a.len().abs_diff(b.len()) > 3 || a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

fn valid_plan_name(name: &str) -> bool {
    (1..=MAX_PLAN_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a value is, for "expected X, found Y".
fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => format!("the float {f}"),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the datetime {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Policy::parse(text) {
            Ok(p) => panic!("expected errors, got {p:?}"),
            Err(ds) => ds
                .iter()
                .map(|d| format!("{}:{}: {}: {}", d.line, d.column, d.path, d.message))
                .collect(),
        }
    }

    #[test]
    fn minimal_policy_is_complete() {
        let (policy, warnings) = Policy::parse(
            "[plans.base]\nlead_credits = 2000\nemail_credits = 6_000\n\n[plans.unlimited]\nlead_credits = \"unlimited\"\nemail_credits = 150000\n",
        )
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(
            policy.plans["base"],
            Plan {
                lead_credits: Some(2000),
                email_credits: Some(6000),
                mode: None,
            }
        );
        assert_eq!(
            policy.plans["unlimited"],
            Plan {
                lead_credits: None,
                email_credits: Some(150_000),
                mode: None,
            }
        );
        assert_eq!(policy.email_costs, EmailCosts::default());
    }

    #[test]
    fn negative_credits_name_path_line_and_column() {
        let text = "[plans.pro]\nlead_credits = 30000\nemail_credits = -5\n";
        assert_eq!(
            errors(text),
            [
                "3:17: plans.pro.email_credits: expected a non-negative integer or \"unlimited\", found -5"
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_in_document_order() {
        let text = "versoin = 1\n[plans.a]\nlead_credits = 1.5\nemail_credits = \"lots\"\ncolour = \"red\"\n[plans.b]\nlead_credits = 10\n";
        assert_eq!(
            errors(text),
            [
                "1:1: versoin: unknown key \"versoin\" (did you mean \"version\"?); expected one of: version, description, plans, email_costs, alerts",
                "3:16: plans.a.lead_credits: expected a non-negative integer or \"unlimited\", found the float 1.5",
                "4:17: plans.a.email_credits: expected a non-negative integer or \"unlimited\", found the string \"lots\"",
                "5:1: plans.a.colour: unknown key \"colour\"; expected one of: lead_credits, email_credits, description, mode",
                "6:1: plans.b.email_credits: missing: expected email_credits = a non-negative integer or \"unlimited\"",
            ]
        );
    }

    #[test]
    fn absurd_numbers_are_refused() {
        let text = "[plans.a]\nlead_credits = 1_000_000_000_001\nemail_credits = 99999999999999999999999\n";
        assert_eq!(
            errors(text),
            [
                "2:16: plans.a.lead_credits: expected at most 1000000000000, found 1000000000001",
                "3:17: plans.a.email_credits: expected at most 1000000000000, found 99999999999999999999999",
            ]
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = errors("[plans.a]\nlead_credits = = 3\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("2:"), "{e:?}");
    }

    #[test]
    fn missing_plans_and_wrong_version() {
        assert_eq!(
            errors("version = 2\n"),
            [
                "1:1: plans: missing: a policy needs at least one [plans.NAME] table",
                "1:11: version: expected 1, the only version this engine reads, found 2",
            ]
        );
        assert_eq!(
            errors(""),
            ["1:1: plans: missing: a policy needs at least one [plans.NAME] table"]
        );
    }

    #[test]
    fn zero_credit_plans_warn() {
        let (_, warnings) =
            Policy::parse("[plans.trial]\nlead_credits = 0\nemail_credits = 10\n").unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            (warnings[0].path.as_str(), warnings[0].line),
            ("plans.trial.lead_credits", 2)
        );
    }

    #[test]
    fn email_costs_are_optional_and_bounded() {
        let (policy, _) = Policy::parse(
            "[email_costs]\nreply = 0\n[plans.a]\nlead_credits = 1\nemail_credits = 1\n",
        )
        .unwrap();
        assert_eq!(
            policy.email_costs,
            EmailCosts {
                first: 1,
                follow_up: 1,
                reply: 0
            }
        );
        assert_eq!(
            errors("[email_costs]\nreply = 1001\n[plans.a]\nlead_credits = 1\nemail_credits = 1\n"),
            ["2:9: email_costs.reply: expected at most 1000, found 1001"]
        );
    }

    #[test]
    fn bad_plan_names() {
        assert_eq!(
            errors("[plans.\"a b\"]\nlead_credits = 1\nemail_credits = 1\n"),
            ["1:8: plans.a b: a plan name is 1 to 64 letters, digits, '_' or '-', found \"a b\""]
        );
    }

    fn warnings(text: &str) -> Vec<String> {
        match Policy::parse(text) {
            Ok((_, ws)) => ws
                .iter()
                .map(|d| format!("{}:{}: {}: {}", d.line, d.column, d.path, d.message))
                .collect(),
            Err(ds) => panic!("expected a valid policy, got {ds:?}"),
        }
    }

    #[test]
    fn a_plan_granting_what_an_earlier_one_grants_warns_naming_it() {
        // `pro` comes first in the file though `base` sorts first: "earlier" is the
        // file's order.
        let text = "[plans.pro]\nlead_credits = 2000\nemail_credits = 6000\n\n[plans.base]\nlead_credits = 2000\nemail_credits = 6000\n\n[plans.big]\nlead_credits = \"unlimited\"\nemail_credits = 6000\n";
        assert_eq!(
            warnings(text),
            [
                "5:8: plans.base: same credits as plans.pro (line 1): 2000 lead credits and 6000 email credits; no account could tell the two apart, so one is probably a copy-paste slip"
            ]
        );
    }

    #[test]
    fn a_third_copy_names_the_first() {
        let text = "[plans]\na = { lead_credits = \"unlimited\", email_credits = \"unlimited\" }\nb = { lead_credits = 1, email_credits = 1 }\nc = { lead_credits = \"unlimited\", email_credits = \"unlimited\" }\nd = { lead_credits = \"unlimited\", email_credits = \"unlimited\" }\n";
        let ws = warnings(text);
        assert_eq!(ws.len(), 2, "{ws:?}");
        assert!(ws[0].starts_with("4:1: plans.c: same credits as plans.a (line 2): unlimited lead credits and unlimited email credits;"), "{ws:?}");
        assert!(
            ws[1].starts_with("5:1: plans.d: same credits as plans.a (line 2):"),
            "{ws:?}"
        );
    }

    #[test]
    fn plans_differing_in_one_allowance_are_not_copies() {
        let text = "[plans.a]\nlead_credits = 10\nemail_credits = 20\n[plans.b]\nlead_credits = 10\nemail_credits = 21\n[plans.c]\nlead_credits = 11\nemail_credits = 20\n";
        assert_eq!(warnings(text), Vec::<String>::new());
    }

    #[test]
    fn email_credits_below_the_cost_of_one_recipient_warn() {
        let text = "[email_costs]\nfirst = 5\nreply = 0\n\n[plans.small]\nlead_credits = 10\nemail_credits = 4\n\n[plans.enough]\nlead_credits = 10\nemail_credits = 5\n";
        assert_eq!(
            warnings(text),
            [
                "7:17: plans.small.email_credits: 4 credits a cycle cannot pay for one recipient of a first email (email_costs.first = 5): accounts on this plan can never send one"
            ]
        );
        // 0 credits already has its own warning, and unlimited pays for anything.
        let text = "[email_costs]\nfirst = 5\n[plans.none]\nlead_credits = 1\nemail_credits = 0\n[plans.all]\nlead_credits = 1\nemail_credits = \"unlimited\"\n";
        let ws = warnings(text);
        assert_eq!(ws.len(), 1, "{ws:?}");
        assert!(
            ws[0].contains("0 credits: accounts on this plan can send no email"),
            "{ws:?}"
        );
    }

    #[test]
    fn the_shipped_policies_have_no_warnings() {
        for text in [
            include_str!("../../policies/smartlead.toml"),
            include_str!("../../policies/example.toml"),
        ] {
            assert_eq!(warnings(text), Vec::<String>::new());
        }
    }

    #[test]
    fn a_plan_defined_twice_names_its_path_and_both_places() {
        let text = "[plans.pro]\nlead_credits = 1\nemail_credits = 1\n\n[plans.pro]\nlead_credits = 2\nemail_credits = 2\n";
        assert_eq!(
            errors(text),
            [
                "5:8: plans.pro: plans.pro is defined twice: first at line 1, column 8, again at line 5, column 8"
            ]
        );
        let text = "[plans]\nbase = { lead_credits = 1, email_credits = 1 }\nbase = { lead_credits = 2, email_credits = 2 }\n";
        assert_eq!(
            errors(text),
            [
                "3:1: plans.base: plans.base is defined twice: first at line 2, column 1, again at line 3, column 1"
            ]
        );
        let text = "[plans.a]\nlead_credits = 1\nemail_credits = 1\nlead_credits = 3\n";
        assert_eq!(
            errors(text),
            [
                "4:1: plans.a.lead_credits: plans.a.lead_credits is defined twice: first at line 2, column 1, again at line 4, column 1"
            ]
        );
    }

    #[test]
    fn misspelt_keys_and_values_suggest_the_right_one() {
        let text = "[plans.a]\nlead_credits = \"unlimted\"\nemial_credits = 1\n";
        let e = errors(text);
        // Not also "email_credits: missing": the misspelling says it.
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0],
            "2:16: plans.a.lead_credits: expected a non-negative integer or \"unlimited\", found the string \"unlimted\" (did you mean \"unlimited\"?)"
        );
        assert_eq!(
            e[1],
            "3:1: plans.a.emial_credits: unknown key \"emial_credits\" (did you mean \"email_credits\"?); expected one of: lead_credits, email_credits, description, mode"
        );
        // Nothing close: no guess.
        let e = errors("colour = 1\n[plans.a]\nlead_credits = 1\nemail_credits = 1\n");
        assert_eq!(
            e,
            [
                "1:1: colour: unknown key \"colour\"; expected one of: version, description, plans, email_costs, alerts"
            ]
        );
        assert_eq!(closest("Unlimited", &["unlimited"]), Some("unlimited"));
        assert_eq!(
            closest("follwup", &["first", "follow_up", "reply"]),
            Some("follow_up")
        );
        assert_eq!(closest("x", &["first"]), None);
    }

    #[test]
    fn plans_differing_only_in_case_are_refused() {
        let text = "[plans.pro]\nlead_credits = 1\nemail_credits = 1\n[plans.Pro]\nlead_credits = 2\nemail_credits = 2\n";
        assert_eq!(
            errors(text),
            [
                "4:8: plans.Pro: plan \"Pro\" differs from plan \"pro\" (line 1, column 8) only in case; plan names must differ in more than case"
            ]
        );
    }

    #[test]
    fn a_policy_of_more_plans_than_the_limit_is_refused_with_the_count() {
        let plans = |n: usize| -> String {
            (0..n)
                .map(|i| format!("p{i} = {{ lead_credits = {i}, email_credits = {i} }}\n"))
                .collect()
        };
        let text = format!("[plans]\n{}", plans(MAX_PLANS + 1));
        assert_eq!(
            errors(&text),
            ["1:1: plans: 1001 plans; a policy may define at most 1000"]
        );
        let text = format!("[plans]\n{}", plans(MAX_PLANS));
        assert!(Policy::parse(&text).is_ok());
    }
}

//! Policy test suites: sequences of events with expected decisions, run through the
//! real component, as executable documentation of a policy.
//!
//! A suite is a TOML file that names a policy (relative to the suite file) and holds
//! `[[case]]` tables. A case is a list of `steps`; each step is one event in the
//! replay format (`at`, `op`, `account`, ...) plus an optional `expect` table:
//!
//! ```toml
//! policy = "../smartlead.toml"
//!
//! [[case]]
//! name = "a_new_contact_costs_one_lead_credit"
//! steps = [
//!   { at = "2025-01-31T09:00:00Z", op = "subscribe", account = "acme", plan = "base" },
//!   { at = "2025-02-01T10:00:00Z", op = "add_lead", account = "acme", campaign = "q1",
//!     email = "ann@example.com", expect = { charged = 1, lead_credits.used = 1 } },
//! ]
//! ```
//!
//! Only what `expect` gives is checked: `decision`, `reason`, `charged`, `freed`,
//! `lead_credits.used`/`limit` and `email_credits.used`/`limit`/`resets_at`.
//!
//! Events are converted to JSON and parsed by [`replay::parse_event`], so a suite step
//! and a trace line are the same thing, read by the same parser. Every problem in a
//! suite (syntax, unknown keys, an event replay would refuse) is found when it is
//! loaded, before anything runs, and named by file, line and column.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value as Json};
use toml::Spanned;

use crate::bindings::{Diagnostic, Reason};
use crate::replay::{Event, format_instant, parse_event};
use crate::runtime::{LoadError, Runtime, Worker};
use crate::store::MemoryStore;
use crate::wire::{Outcome, reason_code};

/// A loaded suite, every event already parsed.
#[derive(Debug, Clone)]
pub struct Suite {
    /// `suite` in `suite::case`.
    pub name: String,
    pub path: PathBuf,
    /// The policy file, as the suite names it joined to the suite's folder.
    pub policy_path: PathBuf,
    pub policy: Arc<str>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One event of a case and what its decision must show.
#[derive(Debug, Clone)]
pub struct Step {
    /// Where the step is written in the suite file.
    pub line: u32,
    pub column: u32,
    pub event: Event,
    /// The event as a replay trace line.
    pub json: String,
    pub expect: Expect,
}

/// Expected fields of a decision; `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub decision: Option<&'static str>,
    pub reason: Option<&'static str>,
    pub charged: Option<u64>,
    pub freed: Option<u64>,
    pub lead_used: Option<u64>,
    pub lead_limit: Option<Limit>,
    pub email_used: Option<u64>,
    pub email_limit: Option<Limit>,
    pub resets_at: Option<ExpectedInstant>,
}

/// A credit limit: a count, or unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(u64),
    Unlimited,
}

/// An instant as written in the suite, and its value in UTC nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedInstant {
    pub text: String,
    pub nanos: i64,
}

/// Why suites could not be found or loaded. Nothing has run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuiteError {
    /// A file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The suite is not valid TOML, has keys a suite does not, or holds an event or
    /// expectation that is not valid.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: u32,
        column: u32,
        message: String,
    },
    /// The policy the suite names is invalid; one diagnostic per problem.
    #[error("invalid policy {} (named by {}): {} problem(s)", policy.display(), suite.display(), diagnostics.len())]
    Policy {
        suite: PathBuf,
        policy: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
    /// The component failed while loading the policy.
    #[error("cannot load policy {}: {source}", policy.display())]
    Load { policy: PathBuf, source: LoadError },
}

/// The suite files under `path`, with their names, sorted by path.
///
/// A file given directly is a suite named by its stem. A folder is searched
/// recursively for `*.toml`; each is named by its path below the folder, `::`
/// between parts (`billing/cycles.toml` is `billing::cycles`). Files with a
/// top-level `plans` key are policies that suites use, not suites, and are skipped.
pub fn discover(path: &Path) -> Result<Vec<(PathBuf, String)>, SuiteError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SuiteError::Read { path, source }
    };
    let meta = std::fs::metadata(path).map_err(read_error(path))?;
    if !meta.is_dir() {
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        return Ok(vec![(path.to_path_buf(), name)]);
    }
    let mut files = Vec::new();
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).map_err(read_error(&folder))? {
            let entry = entry.map_err(read_error(&folder))?;
            let file = entry.path();
            let kind = entry.file_type().map_err(read_error(&file))?;
            if kind.is_dir() {
                folders.push(file);
            } else if file.extension().is_some_and(|e| e == "toml") {
                files.push(file);
            }
        }
    }
    files.sort();
    let mut suites = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(read_error(&file))?;
        // A file that does not parse is kept: loading it reports where it breaks.
        if toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.contains_key("plans")) {
            continue;
        }
        let relative = file.strip_prefix(path).unwrap_or(&file).with_extension("");
        let name = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("::");
        suites.push((file, name));
    }
    Ok(suites)
}

impl Suite {
    /// Reads and validates the suite at `path` and the policy text it names (the
    /// policy itself is validated by [`Suite::check_policy`]); the first problem
    /// if there are several (see [`Suite::load_all`]).
    pub fn load(path: &Path, name: String) -> Result<Suite, SuiteError> {
        Suite::load_all(path, name).map_err(|mut problems| problems.remove(0))
    }

    /// [`Suite::load`], reporting every problem of the suite: each invalid case,
    /// not only the first, in file order (never an empty list).
    pub fn load_all(path: &Path, name: String) -> Result<Suite, Vec<SuiteError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![SuiteError::Read {
                path: path.to_path_buf(),
                source,
            }]
        })?;
        let invalid = |span: Range<usize>, message: String| {
            let (line, column) = line_column(&text, span.start);
            SuiteError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let toml_error = |e: toml::de::Error| {
            // The first line is the point; toml's Display adds a source excerpt.
            let message = e.message().lines().next().unwrap_or("invalid TOML").trim();
            invalid(e.span().unwrap_or(0..0), message.to_string())
        };
        let mut problems = Vec::new();
        let raw: RawSuite = match toml::from_str(&text) {
            Ok(raw) => raw,
            Err(e) => {
                // serde stops at the first bad field. Read each `[[case]]` on its
                // own (the others blanked out, so positions stay right) to find
                // the problems of every case.
                let mut cases = Vec::new();
                if toml::from_str::<toml::Table>(&text).is_ok() {
                    for region in case_regions(&text) {
                        match toml::from_str::<RawSuite>(&only(&text, &region)) {
                            Ok(raw) => cases.extend(raw.case),
                            Err(e) => problems.push(toml_error(e)),
                        }
                    }
                }
                if problems.is_empty() {
                    return Err(vec![toml_error(e)]);
                }
                // The cases that read well are still checked, for their events.
                let mut names = BTreeSet::new();
                Suite::cases(cases, &text, &invalid, &mut names, &mut problems);
                problems.sort_by_key(|p| match p {
                    SuiteError::Invalid { line, column, .. } => (*line, *column),
                    _ => (0, 0),
                });
                return Err(problems);
            }
        };
        if raw.case.is_empty() {
            return Err(vec![invalid(
                0..0,
                "a suite needs at least one [[case]] table".to_string(),
            )]);
        }
        let folder = path.parent().unwrap_or(Path::new(""));
        let policy_path = normalize(&folder.join(raw.policy.get_ref()));
        let policy = std::fs::read_to_string(&policy_path).map_err(|e| {
            invalid(
                raw.policy.span(),
                format!("policy: cannot read {}: {e}", policy_path.display()),
            )
        });
        let policy = match policy {
            Ok(policy) => Some(policy),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        let mut names = BTreeSet::new();
        let cases = Suite::cases(raw.case, &text, &invalid, &mut names, &mut problems);
        match policy {
            Some(policy) if problems.is_empty() => Ok(Suite {
                name,
                path: path.to_path_buf(),
                policy_path,
                policy: Arc::from(policy),
                cases,
            }),
            _ => Err(problems),
        }
    }

    /// Validates `raw` cases, pushing the problem of each invalid one onto
    /// `problems` (one per case: later steps of a case are not checked once one
    /// step is found invalid) and returning the valid ones.
    fn cases(
        raw: Vec<RawCase>,
        text: &str,
        invalid: &dyn Fn(Range<usize>, String) -> SuiteError,
        names: &mut BTreeSet<String>,
        problems: &mut Vec<SuiteError>,
    ) -> Vec<Case> {
        let mut cases = Vec::with_capacity(raw.len());
        for case in raw {
            match Suite::case(case, text, invalid, names) {
                Ok(case) => cases.push(case),
                Err(e) => problems.push(e),
            }
        }
        cases
    }

    fn case(
        case: RawCase,
        text: &str,
        invalid: &dyn Fn(Range<usize>, String) -> SuiteError,
        names: &mut BTreeSet<String>,
    ) -> Result<Case, SuiteError> {
        let name_span = case.name.span();
        let name = case.name.into_inner();
        if name.is_empty() || name.contains("::") || name.chars().any(char::is_whitespace) {
            return Err(invalid(
                name_span,
                format!(
                    "case name: expected a non-empty name without spaces or \"::\", found {name:?}"
                ),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(
                name_span,
                format!("case name: {name:?} is already the name of an earlier case"),
            ));
        }
        if case.steps.is_empty() {
            return Err(invalid(
                name_span,
                format!("case {name:?}: expected at least one step"),
            ));
        }
        let mut steps = Vec::with_capacity(case.steps.len());
        for (i, step) in case.steps.into_iter().enumerate() {
            let step_span = step.span();
            let step = step.into_inner();
            let at = |span: Range<usize>, message: String| {
                invalid(span, format!("case {name:?}, step {}: {message}", i + 1))
            };
            let mut object = Map::new();
            for (key, value) in &step.fields {
                let json = to_json(value.get_ref())
                    .map_err(|m| at(value.span(), format!("field {:?}: {m}", key)))?;
                object.insert(key.clone(), json);
            }
            let json = event_line(&object);
            let event = parse_event(&json).map_err(|message| {
                // Point at the field the message names, if it is there.
                let span = step
                    .fields
                    .iter()
                    .find(|(key, _)| {
                        message.starts_with(&format!("field {key:?}"))
                            || message.starts_with(&format!("unknown field {key:?}"))
                    })
                    .map_or(step_span.clone(), |(_, v)| v.span());
                at(span, message)
            })?;
            let expect = match step.expect {
                None => Expect::default(),
                Some(raw) => {
                    let span = raw.span();
                    raw.into_inner().validate().map_err(|m| at(span, m))?
                }
            };
            let (line, column) = line_column(text, step_span.start);
            steps.push(Step {
                line,
                column,
                event,
                json,
                expect,
            });
        }
        Ok(Case { name, steps })
    }

    /// Loads the suite's policy into the component once, so that an invalid policy is
    /// an input error rather than a failure of every case.
    pub fn check_policy(&self, runtime: &Runtime) -> Result<(), SuiteError> {
        match runtime.worker(Arc::new(MemoryStore::new()), &self.policy) {
            Ok(_) => Ok(()),
            Err(LoadError::Policy(diagnostics)) => Err(SuiteError::Policy {
                suite: self.path.clone(),
                policy: self.policy_path.clone(),
                diagnostics,
            }),
            Err(source) => Err(SuiteError::Load {
                policy: self.policy_path.clone(),
                source,
            }),
        }
    }

    /// Runs one case on a fresh in-memory store and a fresh worker. It stops at the
    /// first step that fails: later steps would only report its consequences.
    pub fn run_case(&self, runtime: &Runtime, case: &Case) -> CaseResult {
        let mut worker = match runtime.worker(Arc::new(MemoryStore::new()), &self.policy) {
            Ok((worker, _)) => worker,
            Err(e) => {
                return CaseResult::Failed(Failure {
                    step: 0,
                    line: 0,
                    column: 0,
                    event: String::new(),
                    problem: Problem::Error(format!("cannot load the policy: {e}")),
                });
            }
        };
        for (i, step) in case.steps.iter().enumerate() {
            if let Some(problem) = run_step(&mut worker, step) {
                return CaseResult::Failed(Failure {
                    step: i + 1,
                    line: step.line,
                    column: step.column,
                    event: step.json.clone(),
                    problem,
                });
            }
        }
        CaseResult::Passed
    }
}

fn run_step(worker: &mut Worker, step: &Step) -> Option<Problem> {
    let decision = match worker.decide(&step.event.request, step.event.at) {
        Ok(decision) => decision,
        Err(e) => return Some(Problem::Error(format!("no decision: {e}"))),
    };
    let outcome = Outcome::from(&decision);
    let mismatches = step.expect.compare(&outcome);
    if mismatches.is_empty() {
        return None;
    }
    let actual = serde_json::to_string(&outcome).unwrap_or_else(|e| format!("(unprintable: {e})"));
    Some(Problem::Mismatch { mismatches, actual })
}

/// How a case fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseResult {
    Passed,
    Failed(Failure),
}

/// The step a case failed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1-based; 0 when the case could not start.
    pub step: usize,
    /// Where the step is written in the suite file.
    pub line: u32,
    pub column: u32,
    /// The event as a replay trace line.
    pub event: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The decision differs from the expectation in these fields; `actual` is its
    /// whole replay output line.
    Mismatch {
        mismatches: Vec<Mismatch>,
        actual: String,
    },
    /// No decision was made (the component failed).
    Error(String),
}

/// One expected field that differs, both sides rendered as JSON values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: &'static str,
    pub expected: String,
    pub actual: String,
}

impl Expect {
    /// The fields of `outcome` that differ from this expectation, in output order.
    pub fn compare(&self, outcome: &Outcome) -> Vec<Mismatch> {
        let mut found = Vec::new();
        let mut check = |field, expected: Option<String>, actual: String| {
            if let Some(expected) = expected
                && expected != actual
            {
                found.push(Mismatch {
                    field,
                    expected,
                    actual,
                });
            }
        };
        let quoted = |s: &str| format!("{s:?}");
        check(
            "decision",
            self.decision.map(quoted),
            quoted(outcome.decision),
        );
        check(
            "reason",
            self.reason.map(quoted),
            outcome.reason.map_or_else(|| "null".to_string(), quoted),
        );
        check(
            "charged",
            self.charged.map(|n| n.to_string()),
            outcome.charged.to_string(),
        );
        check(
            "freed",
            self.freed.map(|n| n.to_string()),
            outcome.freed.to_string(),
        );
        // Without an account there is no usage: every usage field reads "absent".
        let usage = outcome.usage.as_ref();
        let absent = || "absent (no account)".to_string();
        let lead = usage.map(|u| &u.lead_credits);
        let email = usage.map(|u| &u.email_credits);
        const LEAD: [&str; 2] = ["lead_credits.used", "lead_credits.limit"];
        const EMAIL: [&str; 2] = ["email_credits.used", "email_credits.limit"];
        let credits = [
            (LEAD, lead, self.lead_used, &self.lead_limit),
            (EMAIL, email, self.email_used, &self.email_limit),
        ];
        // The same two fields of each credit.
        for ([used_field, limit_field], actual, used, limit) in credits {
            check(
                used_field,
                used.map(|n| n.to_string()),
                actual.map_or_else(absent, |c| c.used.to_string()),
            );
            check(
                limit_field,
                limit.as_ref().map(Limit::to_string),
                actual.map_or_else(absent, |c| json_text(&c.limit)),
            );
        }
        // Instants compare in UTC whatever offset the suite wrote; a mismatch shows
        // both sides in UTC.
        if let Some(expected) = &self.resets_at {
            let actual = email.and_then(|c| c.resets_at.clone());
            let same = actual
                .as_deref()
                .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())
                .and_then(|a| a.timestamp_nanos_opt())
                == Some(expected.nanos);
            if !same {
                found.push(Mismatch {
                    field: "email_credits.resets_at",
                    expected: quoted(&format_instant(expected.nanos)),
                    actual: actual.map_or_else(absent, |a| quoted(&a)),
                });
            }
        }
        found
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Unlimited => f.write_str("\"unlimited\""),
        }
    }
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `path` with `.` and `name/..` removed, without touching the filesystem, so that a
/// policy named `../smartlead.toml` by `policies/tests/x.toml` reads as
/// `policies/smartlead.toml` in messages.
fn normalize(path: &Path) -> PathBuf {
    let mut parts: Vec<Component<'_>> = Vec::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return PathBuf::from(".");
    }
    parts.iter().collect()
}

/// The byte ranges of `text` that hold one `[[case]]` table each: from its
/// header to the next `[[case]]` header or the end.
fn case_regions(text: &str) -> Vec<Range<usize>> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code = line.split('#').next().unwrap_or("").trim();
        if code.replace(' ', "") == "[[case]]" {
            starts.push(offset);
        }
        offset += line.len();
    }
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    starts.iter().zip(ends).map(|(&s, e)| s..e).collect()
}

/// `text` with every `[[case]]` table but the one in `keep` blanked out (each
/// character a space, line ends kept), so that positions read in it are
/// positions in `text`.
fn only(text: &str, keep: &Range<usize>) -> String {
    let first_case = case_regions(text).first().map_or(text.len(), |r| r.start);
    let mut kept = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        if i < first_case || keep.contains(&i) || c == '\n' || c == '\r' {
            kept.push(c);
        } else {
            // As many bytes as the character, so that offsets do not move.
            kept.extend(std::iter::repeat_n(' ', c.len_utf8()));
        }
    }
    kept
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// A TOML value as the JSON replay reads. A TOML datetime becomes its RFC 3339 text,
/// so `at = 2025-01-31T09:00:00Z` and `at = "2025-01-31T09:00:00Z"` are one event.
fn to_json(value: &toml::Value) -> Result<Json, String> {
    Ok(match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("expected a finite number, found {f}"))?,
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// The event as one JSON line with its fields in the README's order (`at`, `op`,
/// `account`, then the op's own), whatever order the suite wrote them in.
fn event_line(object: &Map<String, Json>) -> String {
    const ORDER: [&str; 9] = [
        "at",
        "op",
        "account",
        "plan",
        "campaign",
        "email",
        "to",
        "kind",
        "message_id",
    ];
    let rank = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
    let mut keys: Vec<&String> = object.keys().collect();
    keys.sort_by_key(|k| (rank(k), k.as_str()));
    let fields: Vec<String> = keys
        .into_iter()
        .map(|k| format!("{}:{}", json_text(k), json_text(&object[k.as_str()])))
        .collect();
    format!("{{{}}}", fields.join(","))
}

// The suite file as written. Spans are kept where messages need a position.

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a suite: policy = \"FILE\" and [[case]] tables"
)]
struct RawSuite {
    policy: Spanned<String>,
    #[serde(default)]
    case: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a case: a table with name and steps")]
struct RawCase {
    name: Spanned<String>,
    steps: Vec<Spanned<RawStep>>,
}

/// A step: the event's fields, passed through to the replay parser untouched, and
/// `expect`. Written by hand because `#[serde(flatten)]` would lose the spans.
struct RawStep {
    fields: Vec<(String, Spanned<toml::Value>)>,
    expect: Option<Spanned<RawExpect>>,
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table of event fields (at, op, account, ...) and an optional expect table",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStep, A::Error> {
                let mut fields = Vec::new();
                let mut expect = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "expect" {
                        expect = Some(map.next_value()?);
                    } else {
                        fields.push((key, map.next_value()?));
                    }
                }
                Ok(RawStep { fields, expect })
            }
        }
        deserializer.deserialize_map(StepVisitor)
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of expected fields: decision, reason, charged, freed, lead_credits, email_credits"
)]
struct RawExpect {
    decision: Option<DecisionWord>,
    reason: Option<ReasonCode>,
    charged: Option<Count>,
    freed: Option<Count>,
    lead_credits: Option<RawLeadCredits>,
    email_credits: Option<RawEmailCredits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DecisionWord {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with used and limit")]
struct RawLeadCredits {
    used: Option<Count>,
    limit: Option<Limit>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with used, limit and resets_at"
)]
struct RawEmailCredits {
    used: Option<Count>,
    limit: Option<Limit>,
    resets_at: Option<ExpectedInstant>,
}

impl RawExpect {
    fn validate(self) -> Result<Expect, String> {
        if self.decision == Some(DecisionWord::Allow) && self.reason.is_some() {
            return Err(
                "expect: a reason with decision = \"allow\"; only a denial has a reason".into(),
            );
        }
        let lead = self.lead_credits.unwrap_or(RawLeadCredits {
            used: None,
            limit: None,
        });
        let email = self.email_credits.unwrap_or(RawEmailCredits {
            used: None,
            limit: None,
            resets_at: None,
        });
        Ok(Expect {
            decision: self.decision.map(|d| match d {
                DecisionWord::Allow => "allow",
                DecisionWord::Deny => "deny",
            }),
            reason: self.reason.map(|r| r.0),
            charged: self.charged.map(|c| c.0),
            freed: self.freed.map(|c| c.0),
            lead_used: lead.used.map(|c| c.0),
            lead_limit: lead.limit,
            email_used: email.used.map(|c| c.0),
            email_limit: email.limit,
            resets_at: email.resets_at,
        })
    }
}

const REASONS: [Reason; 8] = [
    Reason::AlreadySubscribed,
    Reason::UnknownAccount,
    Reason::UnknownPlan,
    Reason::InvalidEmail,
    Reason::NoRecipients,
    Reason::LeadCreditsExhausted,
    Reason::EmailCreditsExhausted,
    Reason::IdempotencyKeyReused,
];

/// A reason code replay prints; anything else is a typo caught at load time.
struct ReasonCode(&'static str);

impl<'de> Deserialize<'de> for ReasonCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = String::deserialize(deserializer)?;
        let codes = REASONS.map(reason_code);
        match codes.iter().find(|c| **c == word) {
            Some(code) => Ok(ReasonCode(code)),
            None => Err(de::Error::custom(format!(
                "unknown reason {word:?}; expected one of: {}",
                codes.join(", ")
            ))),
        }
    }
}

/// A count of credits (`used`, `charged`, `freed`).
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_any(CreditsVisitor { unlimited: false })? {
            Limit::Count(n) => Ok(Count(n)),
            Limit::Unlimited => Err(de::Error::custom("expected a non-negative integer")),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CreditsVisitor { unlimited: true })
    }
}

/// Reads a count of credits, and "unlimited" where a limit is expected; written
/// by hand so that messages speak of credits rather than of `u64`.
struct CreditsVisitor {
    unlimited: bool,
}

impl Visitor<'_> for CreditsVisitor {
    type Value = Limit;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unlimited {
            f.write_str("a non-negative integer or \"unlimited\"")
        } else {
            f.write_str("a non-negative integer")
        }
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Limit, E> {
        Ok(Limit::Count(n))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Limit, E> {
        u64::try_from(n)
            .map(Limit::Count)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Limit, E> {
        if self.unlimited && s == "unlimited" {
            Ok(Limit::Unlimited)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(s), &self))
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedInstant {
    /// An RFC 3339 string or a TOML offset datetime.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match toml::Value::deserialize(deserializer)? {
            toml::Value::String(s) => s,
            toml::Value::Datetime(d) => d.to_string(),
            other => {
                return Err(de::Error::custom(format!(
                    "expected an RFC 3339 timestamp, found {}",
                    other.type_str()
                )));
            }
        };
        let nanos = chrono::DateTime::parse_from_rfc3339(&text)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "expected an RFC 3339 timestamp such as 2025-02-28T09:00:00Z, found {text:?}"
                ))
            })?;
        Ok(ExpectedInstant { text, nanos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LimitJson;

    #[test]
    fn paths_normalise_lexically() {
        assert_eq!(
            normalize(Path::new("policies/tests/../smartlead.toml")),
            Path::new("policies/smartlead.toml")
        );
        assert_eq!(
            normalize(Path::new("./host/tests/fixtures/../../../policies/x.toml")),
            Path::new("policies/x.toml")
        );
        assert_eq!(normalize(Path::new("../a/./b")), Path::new("../a/b"));
    }

    #[test]
    fn events_print_in_the_readme_order() {
        let Json::Object(object) = serde_json::json!({
            "email": "a@x.io", "account": "a", "op": "add_lead",
            "campaign": "c", "at": "2025-01-01T00:00:00Z"
        }) else {
            unreachable!()
        };
        assert_eq!(
            event_line(&object),
            r#"{"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email":"a@x.io"}"#
        );
    }

    #[test]
    fn only_given_fields_are_compared_and_instants_in_utc() {
        let outcome = Outcome {
            decision: "deny",
            reason: Some("email_credits_exhausted"),
            upgrade_to: Some(None),
            shadow: None,
            charged: 0,
            freed: 0,
            usage: None,
        };
        assert_eq!(Expect::default().compare(&outcome), []);
        let expect = Expect {
            decision: Some("deny"),
            charged: Some(1),
            email_used: Some(3),
            ..Expect::default()
        };
        let found: Vec<String> = expect
            .compare(&outcome)
            .iter()
            .map(|m| format!("{}: {} / {}", m.field, m.expected, m.actual))
            .collect();
        assert_eq!(
            found,
            [
                "charged: 1 / 0",
                "email_credits.used: 3 / absent (no account)"
            ]
        );

        let with_usage = Outcome {
            usage: Some(crate::wire::UsageJson {
                lead_credits: crate::wire::CreditsJson {
                    used: 1,
                    limit: LimitJson::Unlimited("unlimited"),
                    resets_at: None,
                },
                email_credits: crate::wire::CreditsJson {
                    used: 0,
                    limit: LimitJson::Count(6000),
                    resets_at: Some("2025-02-28T09:00:00Z".into()),
                },
            }),
            ..outcome
        };
        let expect = Expect {
            lead_limit: Some(Limit::Unlimited),
            email_limit: Some(Limit::Count(6000)),
            resets_at: Some(ExpectedInstant {
                text: "2025-02-28T04:00:00-05:00".into(),
                nanos: 1_740_733_200_000_000_000,
            }),
            ..Expect::default()
        };
        assert_eq!(expect.compare(&with_usage), []);
    }
}

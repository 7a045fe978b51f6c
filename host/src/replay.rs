//! `creditgate replay`: events as JSON Lines in, one JSON decision per line out.
//!
//! Each input line is one event (see the README for the format). Each output line
//! answers the input line at the same position: a decision object, or
//! `{"error": "line N: ..."}` for a line that is not a valid event (it changes
//! nothing, and replay goes on).
//!
//! Output is acknowledgement: a line is written only after its decision is durable.
//! Replay decides ahead while more input is already buffered, then makes the whole
//! run of decisions durable with one commit and writes their lines (group commit);
//! it never waits on input with undurable decisions held back.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde_json::{Map, Value};

use crate::bindings::EmailKind;
use crate::names::{NameError, NameRules};
use crate::request::{Origin, Request};
use crate::runtime::Worker;
use crate::store::StoreError;
pub use crate::time::{format_instant, parse_instant};
use crate::wire::Outcome;

/// Longest event line accepted, in bytes (newline excluded).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Most decisions held back before a commit, when input keeps coming.
const MAX_PENDING: usize = 4096;

/// One event of a trace: a request and the instant it happens at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the Unix epoch, UTC.
    pub at: i64,
    pub request: Request,
}

/// Parses one event line, with the default rules for names; the error says what
/// is wrong (without the line number).
pub fn parse_event(line: &str) -> Result<Event, String> {
    parse_event_with(line, NameRules::default())
}

/// Parses one event line, normalising its account and campaign names by `names`
/// (see [`crate::names`]).
pub fn parse_event_with(line: &str, names: NameRules) -> Result<Event, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err(format!("expected a JSON object, found {}", kind_of(&value)));
    };
    let op = take_string(&mut fields, "op")?;
    let at = parse_instant(&take_string(&mut fields, "at")?)
        .map_err(|e| format!("field \"at\": {e}"))?;
    let account = take_name(&mut fields, "account", |raw| names.account(raw))?;
    let request = match op.as_str() {
        "subscribe" => Request::Subscribe {
            account,
            plan: take_plan(&mut fields)?,
            anchor: None,
        },
        "change_plan" => Request::ChangePlan {
            account,
            plan: take_plan(&mut fields)?,
        },
        "add_lead" => Request::AddLead {
            account,
            campaign: take_name(&mut fields, "campaign", |raw| names.campaign(raw))?,
            email: take_string(&mut fields, "email")?,
        },
        "delete_lead" => Request::DeleteLead {
            account,
            campaign: take_name(&mut fields, "campaign", |raw| names.campaign(raw))?,
            email: take_string(&mut fields, "email")?,
        },
        "delete_campaign_leads" => Request::DeleteCampaignLeads {
            account,
            campaign: take_name(&mut fields, "campaign", |raw| names.campaign(raw))?,
        },
        "send_email" => Request::SendEmail {
            account,
            to: take_recipients(&mut fields)?,
            kind: take_kind(&mut fields)?,
            message_id: take_message_id(&mut fields)?,
        },
        "charge_email" => Request::ChargeEmail {
            account,
            cost: take_count(&mut fields, "cost")?,
            message_id: take_message_id(&mut fields)?,
        },
        "usage" => Request::Usage { account },
        other => {
            return Err(format!(
                "unknown op {other:?}; expected one of: subscribe, change_plan, add_lead, delete_lead, \
                 delete_campaign_leads, send_email, charge_email, usage"
            ));
        }
    };
    if let Some(extra) = fields.keys().next() {
        return Err(format!("unknown field {extra:?} for op {op:?}"));
    }
    Ok(Event { at, request })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn take_string(fields: &mut Map<String, Value>, name: &str) -> Result<String, String> {
    match fields.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "field {name:?}: expected a string, found {}",
            kind_of(&other)
        )),
        None => Err(format!("missing field {name:?}")),
    }
}

/// An account or campaign name, normalised by the rule for names.
fn take_name(
    fields: &mut Map<String, Value>,
    name: &str,
    normalize: impl Fn(&str) -> Result<String, NameError>,
) -> Result<String, String> {
    let value = take_string(fields, name)?;
    normalize(&value).map_err(|e| format!("field {name:?}: {e}"))
}

/// A plan's name: a non-empty string (the policy says which exist).
fn take_plan(fields: &mut Map<String, Value>) -> Result<String, String> {
    let value = take_string(fields, "plan")?;
    if value.is_empty() {
        return Err("field \"plan\": must not be empty; name a plan of the policy".to_owned());
    }
    Ok(value)
}

fn take_optional_string(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, String> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(format!("field {name:?}: must not be empty")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "field {name:?}: expected a string, found {}",
            kind_of(&other)
        )),
    }
}

/// `message_id`, in replay's namespace of message ids ([`Origin::Replay`]).
fn take_message_id(fields: &mut Map<String, Value>) -> Result<Option<String>, String> {
    let name = "message_id";
    take_optional_string(fields, name)?
        .map(|id| Origin::Replay.message_id(&id))
        .transpose()
        .map_err(|e| format!("field {name:?}: {e}"))
}

fn take_count(fields: &mut Map<String, Value>, name: &str) -> Result<u64, String> {
    match fields.remove(name) {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("field {name:?}: expected a non-negative integer, found {n}")),
        Some(other) => Err(format!(
            "field {name:?}: expected a non-negative integer, found {}",
            kind_of(&other)
        )),
        None => Err(format!("missing field {name:?}")),
    }
}

fn take_recipients(fields: &mut Map<String, Value>) -> Result<Vec<String>, String> {
    match fields.remove("to") {
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                other => Err(format!(
                    "field \"to\"[{i}]: expected a string, found {}",
                    kind_of(&other)
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "field \"to\": expected a string or a list of strings, found {}",
            kind_of(&other)
        )),
        None => Err("missing field \"to\"".into()),
    }
}

fn take_kind(fields: &mut Map<String, Value>) -> Result<EmailKind, String> {
    match take_optional_string(fields, "kind")?.as_deref() {
        None | Some("first") => Ok(EmailKind::First),
        Some("follow_up") => Ok(EmailKind::FollowUp),
        Some("reply") => Ok(EmailKind::Reply),
        Some(other) => Err(format!(
            "field \"kind\": expected \"first\", \"follow_up\" or \"reply\", found {other:?}"
        )),
    }
}

/// What a replay run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Lines read (blank lines included: each gets an output line).
    pub lines: u64,
    /// Lines that were not valid events, or got no decision.
    pub errors: u64,
}

/// Why a replay run stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("reading events: {0}")]
    Read(io::Error),
    #[error("writing decisions: {0}")]
    Write(io::Error),
    /// Decisions could not be made durable: their lines were not written.
    #[error("making decisions durable failed, {pending} decision(s) not acknowledged: {source}")]
    Persist { pending: usize, source: StoreError },
}

/// Replays every event of `input` through `worker`, writing one line per input
/// line, with the default rules for names.
pub fn replay<R: Read, W: Write>(
    worker: &mut Worker,
    input: R,
    output: W,
) -> Result<ReplaySummary, ReplayError> {
    replay_with(worker, input, output, NameRules::default())
}

/// [`replay`], normalising names by `names`.
pub fn replay_with<R: Read, W: Write>(
    worker: &mut Worker,
    input: R,
    mut output: W,
    names: NameRules,
) -> Result<ReplaySummary, ReplayError> {
    let mut input = BufReader::with_capacity(64 * 1024, input);
    let mut summary = ReplaySummary::default();
    let mut pending = Vec::<u8>::new();
    let mut pending_count = 0;
    let mut line = Vec::new();
    loop {
        // Group commit: about to wait for more input (or to stop), so make the
        // decisions so far durable and acknowledge them first.
        if pending_count > 0 && (input.buffer().is_empty() || pending_count >= MAX_PENDING) {
            worker.persist().map_err(|source| ReplayError::Persist {
                pending: pending_count,
                source,
            })?;
            output
                .write_all(&pending)
                .and_then(|()| output.flush())
                .map_err(ReplayError::Write)?;
            pending.clear();
            pending_count = 0;
        }
        let Some(read) = read_bounded_line(&mut input, &mut line).map_err(ReplayError::Read)?
        else {
            break;
        };
        summary.lines += 1;
        let result = match read {
            LineRead::TooLong => Err(format!("longer than {MAX_LINE_BYTES} bytes")),
            LineRead::Line => std::str::from_utf8(&line)
                .map_err(|e| format!("not UTF-8: {e}"))
                .and_then(|text| parse_event_with(text.trim_end_matches(['\n', '\r']), names))
                .and_then(|event| {
                    worker
                        .decide(&event.request, event.at)
                        .map_err(|e| format!("no decision: {e}"))
                }),
        };
        let json = match result {
            Ok(decision) => serde_json::to_string(&Outcome::from(&decision)),
            Err(message) => {
                summary.errors += 1;
                serde_json::to_string(
                    &serde_json::json!({ "error": format!("line {}: {message}", summary.lines) }),
                )
            }
        };
        pending.extend_from_slice(json.map_err(|e| ReplayError::Write(e.into()))?.as_bytes());
        pending.push(b'\n');
        pending_count += 1;
    }
    Ok(summary)
}

enum LineRead {
    Line,
    TooLong,
}

/// Reads one line into `buf` (cleared first), never holding more than
/// [`MAX_LINE_BYTES`] of it; the rest of a longer line is skipped.
fn read_bounded_line<R: BufRead>(input: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<LineRead>> {
    buf.clear();
    let limit = MAX_LINE_BYTES as u64 + 2; // room for "\r\n"
    let n = input.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.ends_with(b"\n") || (n as u64) < limit {
        let content = buf.strip_suffix(b"\n").unwrap_or(buf);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.len() <= MAX_LINE_BYTES {
            return Ok(Some(LineRead::Line));
        }
        buf.clear();
        return Ok(Some(LineRead::TooLong));
    }
    // Too long: discard through the end of the line without keeping it.
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                break;
            }
            None => {
                let len = chunk.len();
                input.consume(len);
            }
        }
    }
    buf.clear();
    Ok(Some(LineRead::TooLong))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_with_defaults() {
        let e = parse_event(
            r#"{"at":"2025-01-01T00:00:00+02:00","op":"send_email","account":"a","to":"x@y.io"}"#,
        )
        .unwrap();
        assert_eq!(e.at, 1_735_682_400_000_000_000);
        assert_eq!(
            e.request,
            Request::SendEmail {
                account: "a".into(),
                to: vec!["x@y.io".into()],
                kind: EmailKind::First,
                message_id: None
            }
        );
    }

    #[test]
    fn bad_events_say_what_is_wrong() {
        let cases = [
            (
                "{",
                "invalid JSON: EOF while parsing an object at line 1 column 1",
            ),
            ("[1]", "expected a JSON object, found an array"),
            (r#"{"op":"usage","account":"a"}"#, "missing field \"at\""),
            (
                r#"{"op":"fly","at":"2025-01-01T00:00:00Z","account":"a"}"#,
                "unknown op \"fly\"; expected one of: subscribe, change_plan, add_lead, delete_lead, delete_campaign_leads, send_email, charge_email, usage",
            ),
            (
                r#"{"op":"usage","at":"yesterday","account":"a"}"#,
                "field \"at\": expected an RFC 3339 timestamp such as 2025-01-31T09:00:00Z, found \"yesterday\"",
            ),
            (
                r#"{"op":"usage","at":"2025-01-01T00:00:00Z","account":7}"#,
                "field \"account\": expected a string, found a number",
            ),
            (
                r#"{"op":"usage","at":"2025-01-01T00:00:00Z","account":""}"#,
                "field \"account\": account name \"\" is empty; a name needs at least one visible character",
            ),
            (
                r#"{"op":"usage","at":"2025-01-01T00:00:00Z","account":"\u0001alerts/acme"}"#,
                "field \"account\": account name \"\\u{1}alerts/acme\" has U+0001 at character 1; names may not contain control, invisible or bidirectional formatting characters, nor whitespace other than a space",
            ),
            (
                r#"{"op":"delete_campaign_leads","at":"2025-01-01T00:00:00Z","account":"a","campaign":"q1/q2"}"#,
                "field \"campaign\": campaign name \"q1/q2\" has '/' at character 3; names may not contain '/'",
            ),
            (
                r#"{"op":"add_lead","at":"2025-01-01T00:00:00Z","account":"a","campaign":"c"}"#,
                "missing field \"email\"",
            ),
            (
                r#"{"op":"send_email","at":"2025-01-01T00:00:00Z","account":"a","to":[1]}"#,
                "field \"to\"[0]: expected a string, found a number",
            ),
            (
                r#"{"op":"send_email","at":"2025-01-01T00:00:00Z","account":"a","to":"x@y.io","kind":"spam"}"#,
                "field \"kind\": expected \"first\", \"follow_up\" or \"reply\", found \"spam\"",
            ),
            (
                r#"{"op":"usage","at":"2025-01-01T00:00:00Z","account":"a","plan":"pro"}"#,
                "unknown field \"plan\" for op \"usage\"",
            ),
            (
                r#"{"op":"usage","at":"2300-01-01T00:00:00Z","account":"a"}"#,
                "field \"at\": \"2300-01-01T00:00:00Z\" is outside 1677-09-21 to 2262-04-11, the range creditgate counts in",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_event(line).unwrap_err(), expected, "for {line}");
        }
    }

    #[test]
    fn instants_print_in_utc() {
        assert_eq!(
            format_instant(1_735_682_400_000_000_000),
            "2024-12-31T22:00:00Z"
        );
        assert_eq!(format_instant(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn line_limit_edges() {
        for (len, ending, fits) in [
            (MAX_LINE_BYTES, "\n", true),
            (MAX_LINE_BYTES, "\r\n", true),
            (MAX_LINE_BYTES, "", true),
            (MAX_LINE_BYTES + 1, "\n", false),
            (MAX_LINE_BYTES + 1, "", false),
        ] {
            let mut data = vec![b'x'; len];
            data.extend_from_slice(ending.as_bytes());
            let mut buf = Vec::new();
            let read = read_bounded_line(&mut BufReader::new(&data[..]), &mut buf).unwrap();
            assert_eq!(
                matches!(read, Some(LineRead::Line)),
                fits,
                "{len} bytes + {ending:?}"
            );
        }
    }

    #[test]
    fn long_lines_are_skipped_whole() {
        let mut data = vec![b'x'; MAX_LINE_BYTES + 10];
        data.extend_from_slice(b"\nnext\n");
        let mut input = BufReader::new(&data[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_bounded_line(&mut input, &mut buf).unwrap(),
            Some(LineRead::TooLong)
        ));
        assert!(matches!(
            read_bounded_line(&mut input, &mut buf).unwrap(),
            Some(LineRead::Line)
        ));
        assert_eq!(buf, b"next\n");
        assert!(read_bounded_line(&mut input, &mut buf).unwrap().is_none());
    }
}

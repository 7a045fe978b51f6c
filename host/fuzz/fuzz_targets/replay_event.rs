//! The replay event parser, `creditgate::replay::parse_event`: one JSON line of a
//! trace (`creditgate replay --events`), which may come from anywhere.
//!
//! Beyond never panicking, an accepted event must mean what it says: every name
//! it carries is non-empty, and writing it back as a canonical event line (its
//! instant in UTC, the fields the README documents) parses to the same event.
//! That catches fields silently dropped or defaulted, and instants that do not
//! survive formatting (`format_instant` and `parse_instant` must agree on the
//! whole range an event can hold).

#![no_main]

use creditgate::bindings::EmailKind;
use creditgate::replay::{format_instant, parse_event};
use creditgate::request::Request;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    // Replay refuses a line that is not UTF-8 before parsing it.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(event) = parse_event(line) else {
        return;
    };
    let canonical = canonical_line(event.at, &event.request);
    match parse_event(&canonical) {
        Ok(again) => assert_eq!(
            again, event,
            "{line:?} parsed, was written back as {canonical}, and that parsed differently"
        ),
        Err(e) => panic!("{line:?} parsed, but its canonical form {canonical} does not: {e}"),
    }
});

/// The event as a line a trace would hold, with every optional field spelled out.
fn canonical_line(at: i64, request: &Request) -> String {
    let name = |what: &str, value: &str| {
        assert!(!value.is_empty(), "accepted an empty {what}: {request:?}");
        Value::from(value)
    };
    let mut fields = match request {
        Request::Subscribe { account, plan, .. } => json!({
            "op": "subscribe", "account": name("account", account), "plan": name("plan", plan),
        }),
        Request::ChangePlan { account, plan } => json!({
            "op": "change_plan", "account": name("account", account), "plan": name("plan", plan),
        }),
        Request::AddLead {
            account,
            campaign,
            email,
        }
        | Request::DeleteLead {
            account,
            campaign,
            email,
        } => {
            let op = match request {
                Request::AddLead { .. } => "add_lead",
                _ => "delete_lead",
            };
            json!({
                "op": op, "account": name("account", account),
                "campaign": name("campaign", campaign), "email": email,
            })
        }
        Request::DeleteCampaignLeads { account, campaign } => json!({
            "op": "delete_campaign_leads", "account": name("account", account),
            "campaign": name("campaign", campaign),
        }),
        Request::SendEmail {
            account,
            to,
            kind,
            message_id,
        } => {
            let kind = match kind {
                EmailKind::First => "first",
                EmailKind::FollowUp => "follow_up",
                EmailKind::Reply => "reply",
            };
            let message_id = message_id.as_deref().map(|id| event_id(id, &name));
            json!({
                "op": "send_email", "account": name("account", account), "to": to,
                "kind": kind, "message_id": message_id,
            })
        }
        Request::ChargeEmail {
            account,
            cost,
            message_id,
        } => {
            let message_id = message_id.as_deref().map(|id| event_id(id, &name));
            json!({
                "op": "charge_email", "account": name("account", account), "cost": cost,
                "message_id": message_id,
            })
        }
        Request::Usage { account } => json!({"op": "usage", "account": name("account", account)}),
        other => panic!("parse_event made a request no event line names: {other:?}"),
    };
    fields["at"] = Value::from(format_instant(at));
    fields.to_string()
}

/// The `message_id` an event carried: the parsed request holds it in replay's
/// namespace (`replay/<id>`), which the event itself does not spell.
fn event_id(id: &str, name: &impl Fn(&str, &str) -> serde_json::Value) -> serde_json::Value {
    let prefix = creditgate::request::Origin::Replay.prefix();
    let bare = id
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("a replayed message id outside {prefix:?}: {id:?}"));
    name("message_id", bare)
}

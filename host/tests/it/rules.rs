//! Every rule of the credit semantics, each through the real component.

use serde_json::{Value, json};

use crate::harness;
use creditgate::bindings::Decision;
use creditgate::replay::format_instant;
use creditgate::runtime::Worker;
use creditgate::wire::reason_code;

/// Small limits, so that exhaustion is a few events away.
const POLICY: &str = include_str!("../fixtures/policies/rules.toml");

/// When the scripts' lead and email events happen, a day after the
/// subscription.
const NOW: &str = "2025-02-01T00:00:00Z";

struct Script {
    worker: Worker,
}

impl Script {
    fn new(policy: &str) -> Self {
        Self {
            worker: harness::worker(policy),
        }
    }

    /// A fresh script with account "a" subscribed to `plan` at 2025-01-31T09:00:00Z.
    fn subscribed(plan: &str) -> Self {
        let mut s = Self::new(POLICY);
        s.expect(
            json!({"at": "2025-01-31T09:00:00Z", "op": "subscribe", "account": "a", "plan": plan}),
            "allow",
        );
        s
    }

    /// A script [`Script::subscribed`] to `tiny`, both its lead credits used by
    /// `a@x.io` and `b@x.io` in `c1`, and `c@x.io` refused there.
    fn at_the_lead_limit() -> Self {
        let mut s = Self::subscribed("tiny");
        s.expect(add("a@x.io", "c1"), "allow +1");
        s.expect(add("b@x.io", "c1"), "allow +1");
        s.expect(add("c@x.io", "c1"), "deny lead_credits_exhausted");
        s
    }

    fn decide(&mut self, event: Value) -> Decision {
        harness::decide(&mut self.worker, &event.to_string())
    }

    /// Decides `event` and compares a brief rendering of the decision with `expected`:
    /// `allow` / `deny REASON`, then ` +N` charged and ` -N` freed when non-zero.
    #[track_caller]
    fn expect(&mut self, event: Value, expected: &str) -> Decision {
        let decision = self.decide(event.clone());
        assert_eq!(brief(&decision), expected, "for {event}");
        decision
    }

    #[track_caller]
    fn usage(&mut self, at: &str) -> (u64, u64) {
        let d = self.decide(json!({"at": at, "op": "usage", "account": "a"}));
        let u = d.usage.expect("account exists");
        (u.lead_credits.used, u.email_credits.used)
    }
}

fn brief(d: &Decision) -> String {
    let mut s = match d.denied {
        None => "allow".to_string(),
        Some(reason) => format!("deny {}", reason_code(reason)),
    };
    if d.charged > 0 {
        s += &format!(" +{}", d.charged);
    }
    if d.freed > 0 {
        s += &format!(" -{}", d.freed);
    }
    s
}

fn add(email: &str, campaign: &str) -> Value {
    json!({"at": NOW, "op": "add_lead", "account": "a", "campaign": campaign, "email": email})
}

fn delete(email: &str, campaign: &str) -> Value {
    json!({"at": NOW, "op": "delete_lead", "account": "a", "campaign": campaign, "email": email})
}

/// A send at [`NOW`] with no message id.
fn mail(to: Value) -> Value {
    send(NOW, to, None)
}

fn send(at: &str, to: Value, message_id: Option<&str>) -> Value {
    let mut e = json!({"at": at, "op": "send_email", "account": "a", "to": to});
    if let Some(id) = message_id {
        e["message_id"] = json!(id);
    }
    e
}

#[test]
fn one_contact_is_one_credit_whatever_its_spelling() {
    let mut s = Script::subscribed("tiny");
    s.expect(add("Ann@Example.com", "c1"), "allow +1");
    s.expect(add("  ann@example.COM ", "c1"), "allow");
    assert_eq!(s.usage(NOW), (1, 0));
}

#[test]
fn a_contact_held_by_another_campaign_costs_nothing_and_joins_it() {
    let mut s = Script::subscribed("tiny");
    s.expect(add("ann@example.com", "c1"), "allow +1");
    s.expect(add("ann@example.com", "c2"), "allow");
    // Now in both: leaving one campaign frees nothing, leaving the second frees it.
    s.expect(delete("ann@example.com", "c1"), "allow");
    s.expect(delete("ann@example.com", "c2"), "allow -1");
    assert_eq!(s.usage(NOW), (0, 0));
}

#[test]
fn new_contacts_stop_at_the_lead_limit_but_known_ones_still_join() {
    let mut s = Script::at_the_lead_limit();
    s.expect(add("a@x.io", "c2"), "allow");
    assert_eq!(s.usage(NOW), (2, 0));
}

#[test]
fn a_freed_credit_is_really_reusable() {
    let mut s = Script::at_the_lead_limit();
    s.expect(delete("a@x.io", "c1"), "allow -1");
    s.expect(add("c@x.io", "c1"), "allow +1");
    s.expect(add("a@x.io", "c1"), "deny lead_credits_exhausted");
}

#[test]
fn deleting_a_lead_not_in_the_campaign_frees_nothing() {
    let mut s = Script::subscribed("tiny");
    s.expect(add("a@x.io", "c1"), "allow +1");
    s.expect(delete("a@x.io", "c2"), "allow");
    s.expect(delete("zed@x.io", "c1"), "allow");
    assert_eq!(s.usage(NOW), (1, 0));
}

#[test]
fn deleting_all_leads_of_a_campaign_frees_only_contacts_no_other_campaign_holds() {
    let mut s = Script::subscribed("roomy");
    for email in ["a@x.io", "b@x.io", "c@x.io"] {
        s.expect(add(email, "c1"), "allow +1");
    }
    s.expect(add("b@x.io", "c2"), "allow");
    let clear = |campaign| json!({"at": NOW, "op": "delete_campaign_leads", "account": "a", "campaign": campaign});
    s.expect(clear("c1"), "allow -2");
    assert_eq!(s.usage(NOW), (1, 0));
    s.expect(clear("c1"), "allow");
    s.expect(clear("c2"), "allow -1");
    s.expect(clear("never-existed"), "allow");
    assert_eq!(s.usage(NOW), (0, 0));
}

#[test]
fn invalid_addresses_are_denied_and_change_nothing() {
    let mut s = Script::subscribed("tiny");
    s.expect(add("a@x.io", "c1"), "allow +1");
    for bad in [
        "",
        "no-at-sign",
        "two@@x.io",
        "a@nodot",
        "a@x..io",
        "in side@x.io",
        "@x.io",
    ] {
        s.expect(add(bad, "c1"), "deny invalid_email");
        s.expect(delete(bad, "c1"), "deny invalid_email");
    }
    s.expect(mail(json!(["a@x.io", "broken"])), "deny invalid_email");
    let long = format!("{}@x.io", "a".repeat(250));
    s.expect(add(&long, "c1"), "deny invalid_email");
    assert_eq!(s.usage(NOW), (1, 0));
}

#[test]
fn every_email_costs_one_credit_per_distinct_recipient_whatever_its_kind() {
    let mut s = Script::subscribed("roomy");
    for kind in ["first", "follow_up", "reply"] {
        let mut e = mail(json!("b@x.io"));
        e["kind"] = json!(kind);
        s.expect(e, "allow +1");
    }
    s.expect(mail(json!(["c@x.io", "C@X.io ", "d@x.io"])), "allow +2");
    assert_eq!(s.usage(NOW), (0, 5));
    s.expect(mail(json!([])), "deny no_recipients");
}

#[test]
fn sends_are_all_or_nothing() {
    let mut s = Script::subscribed("tiny");
    s.expect(mail(json!(["a@x.io", "b@x.io"])), "allow +2");
    s.expect(
        mail(json!(["c@x.io", "d@x.io"])),
        "deny email_credits_exhausted",
    );
    assert_eq!(s.usage(NOW), (0, 2));
    s.expect(mail(json!("c@x.io")), "allow +1");
    s.expect(mail(json!("c@x.io")), "deny email_credits_exhausted");
}

#[test]
fn a_retried_message_is_never_billed_twice() {
    let mut s = Script::subscribed("tiny");
    s.expect(
        send("2025-02-01T00:00:00Z", json!("a@x.io"), Some("<m1@x>")),
        "allow +1",
    );
    s.expect(
        send("2025-02-01T00:01:00Z", json!("a@x.io"), Some("<m1@x>")),
        "allow",
    );
    s.expect(
        send(
            "2025-02-01T00:02:00Z",
            json!(["a@x.io", "b@x.io"]),
            Some("<m2@x>"),
        ),
        "allow +2",
    );
    // Out of credits, yet the retry of a charged message still goes through free.
    s.expect(
        send("2025-02-01T00:03:00Z", json!("a@x.io"), Some("<m3@x>")),
        "deny email_credits_exhausted",
    );
    s.expect(
        send(
            "2025-02-01T00:04:00Z",
            json!(["a@x.io", "b@x.io"]),
            Some("<m2@x>"),
        ),
        "allow",
    );
    assert_eq!(s.usage("2025-02-01T00:05:00Z"), (0, 3));
    // The next cycle (anchor Jan 31 → Feb 28) is a new billing period, but the
    // message is the same: a retry there is free too (changed on purpose: it was
    // charged again, so a retry across the boundary cost twice). The id is
    // remembered until 7 days after the cycle that charged it; then it names a
    // new message.
    s.expect(
        send("2025-02-28T09:00:00Z", json!("a@x.io"), Some("<m1@x>")),
        "allow",
    );
    s.expect(
        send("2025-03-07T09:00:00Z", json!("a@x.io"), Some("<m1@x>")),
        "allow +1",
    );
}

#[test]
fn a_denied_message_is_not_remembered() {
    let mut s = Script::subscribed("tiny");
    s.expect(
        send(
            "2025-02-01T00:00:00Z",
            json!(["a@x.io", "b@x.io", "c@x.io", "d@x.io"]),
            Some("<big@x>"),
        ),
        "deny email_credits_exhausted",
    );
    s.expect(
        send("2025-02-01T00:00:01Z", json!("a@x.io"), Some("<big@x>")),
        "allow +1",
    );
}

#[test]
fn email_credits_reset_on_month_end_anchored_cycles() {
    let mut s = Script::subscribed("tiny"); // anchored 2025-01-31T09:00:00Z
    s.expect(
        send(
            "2025-02-28T08:59:59Z",
            json!(["a@x.io", "b@x.io", "c@x.io"]),
            None,
        ),
        "allow +3",
    );
    let d = s.expect(
        send("2025-02-28T08:59:59.999999999Z", json!("d@x.io"), None),
        "deny email_credits_exhausted",
    );
    let resets_at = d.usage.map(|u| format_instant(u.email_credits.resets_at));
    assert_eq!(resets_at.as_deref(), Some("2025-02-28T09:00:00Z"));
    let d = s.expect(
        send("2025-02-28T09:00:00Z", json!("d@x.io"), None),
        "allow +1",
    );
    let resets_at = d.usage.map(|u| format_instant(u.email_credits.resets_at));
    assert_eq!(resets_at.as_deref(), Some("2025-03-31T09:00:00Z"));
    // Offsets are compared in UTC: 2025-03-31T05:00-04:00 is the 09:00Z boundary.
    s.expect(
        send(
            "2025-03-31T04:59:59-04:00",
            json!(["e@x.io", "f@x.io"]),
            None,
        ),
        "allow +2",
    );
    s.expect(
        send("2025-03-31T04:59:59-04:00", json!("g@x.io"), None),
        "deny email_credits_exhausted",
    );
    s.expect(
        send("2025-03-31T05:00:00-04:00", json!("g@x.io"), None),
        "allow +1",
    );
    assert_eq!(s.usage("2025-04-30T08:00:00Z"), (0, 1));
    assert_eq!(s.usage("2025-04-30T09:00:00Z"), (0, 0));
}

#[test]
fn lead_credits_never_reset() {
    let mut s = Script::subscribed("tiny");
    s.expect(add("a@x.io", "c1"), "allow +1");
    s.expect(add("b@x.io", "c1"), "allow +1");
    assert_eq!(s.usage("2027-06-15T00:00:00Z"), (2, 0));
    let mut e = add("c@x.io", "c1");
    e["at"] = json!("2027-06-15T00:00:00Z");
    s.expect(e, "deny lead_credits_exhausted");
}

#[test]
fn an_upgrade_raises_limits_at_once_and_keeps_usage_and_anchor() {
    let mut s = Script::subscribed("tiny");
    s.expect(add("a@x.io", "c1"), "allow +1");
    s.expect(add("b@x.io", "c1"), "allow +1");
    s.expect(mail(json!(["a@x.io", "b@x.io", "c@x.io"])), "allow +3");
    s.expect(add("c@x.io", "c1"), "deny lead_credits_exhausted");
    let d = s.expect(
        json!({"at": "2025-02-02T00:00:00Z", "op": "change_plan", "account": "a", "plan": "roomy"}),
        "allow",
    );
    let u = d.usage.expect("usage");
    assert_eq!(
        (u.plan.as_str(), u.lead_credits.used, u.email_credits.used),
        ("roomy", 2, 3)
    );
    assert_eq!(
        (u.lead_credits.limit, u.email_credits.limit),
        (Some(5), Some(10))
    );
    assert_eq!(format_instant(u.anchor), "2025-01-31T09:00:00Z");
    s.expect(add("c@x.io", "c1"), "allow +1");
    s.expect(
        send("2025-02-02T00:00:00Z", json!("d@x.io"), None),
        "allow +1",
    );
}

#[test]
fn a_downgrade_below_usage_is_allowed_and_blocks_until_usage_falls() {
    let mut s = Script::subscribed("roomy");
    for email in ["a@x.io", "b@x.io", "c@x.io"] {
        s.expect(add(email, "c1"), "allow +1");
    }
    s.expect(
        mail(json!(["a@x.io", "b@x.io", "c@x.io", "d@x.io"])),
        "allow +4",
    );
    s.expect(
        json!({"at": "2025-02-02T00:00:00Z", "op": "change_plan", "account": "a", "plan": "tiny"}),
        "allow",
    );
    assert_eq!(s.usage("2025-02-02T00:00:00Z"), (3, 4));
    s.expect(add("d@x.io", "c1"), "deny lead_credits_exhausted");
    s.expect(
        send("2025-02-02T00:00:00Z", json!("a@x.io"), None),
        "deny email_credits_exhausted",
    );
    s.expect(delete("a@x.io", "c1"), "allow -1");
    s.expect(add("d@x.io", "c1"), "deny lead_credits_exhausted"); // 2 held, limit 2
    s.expect(delete("b@x.io", "c1"), "allow -1");
    s.expect(add("d@x.io", "c1"), "allow +1");
    // The reset brings email credits back under the lower limit.
    s.expect(
        send("2025-02-28T09:00:00Z", json!("a@x.io"), None),
        "allow +1",
    );
}

#[test]
fn unlimited_plans_have_no_ceiling() {
    let mut s = Script::subscribed("boundless");
    for i in 0..50 {
        s.expect(add(&format!("p{i}@x.io"), "c1"), "allow +1");
    }
    let many: Vec<String> = (0..200).map(|i| format!("r{i}@x.io")).collect();
    let d = s.expect(mail(json!(many)), "allow +200");
    let u = d.usage.expect("usage");
    assert_eq!((u.lead_credits.limit, u.email_credits.limit), (None, None));
}

#[test]
fn unknown_accounts_and_plans_are_denied() {
    let mut s = Script::new(POLICY);
    for op in [
        json!({"at": "2025-01-01T00:00:00Z", "op": "usage", "account": "ghost"}),
        json!({"at": "2025-01-01T00:00:00Z", "op": "change_plan", "account": "ghost", "plan": "tiny"}),
        json!({"at": "2025-01-01T00:00:00Z", "op": "add_lead", "account": "ghost", "campaign": "c", "email": "a@x.io"}),
        json!({"at": "2025-01-01T00:00:00Z", "op": "delete_lead", "account": "ghost", "campaign": "c", "email": "a@x.io"}),
        json!({"at": "2025-01-01T00:00:00Z", "op": "delete_campaign_leads", "account": "ghost", "campaign": "c"}),
        json!({"at": "2025-01-01T00:00:00Z", "op": "send_email", "account": "ghost", "to": "a@x.io"}),
    ] {
        let d = s.expect(op, "deny unknown_account");
        assert_eq!(d.usage, None);
    }
    let d = s.expect(
        json!({"at": "2025-01-01T00:00:00Z", "op": "subscribe", "account": "a", "plan": "gold"}),
        "deny unknown_plan",
    );
    assert_eq!(d.usage, None);
    s.expect(
        json!({"at": "2025-01-01T00:00:00Z", "op": "subscribe", "account": "a", "plan": "tiny"}),
        "allow",
    );
    let d = s.expect(
        json!({"at": "2025-01-01T00:00:00Z", "op": "change_plan", "account": "a", "plan": "gold"}),
        "deny unknown_plan",
    );
    assert_eq!(d.usage.map(|u| u.plan), Some("tiny".to_string()));
}

#[test]
fn subscribing_twice_is_denied_and_keeps_the_first_anchor() {
    let mut s = Script::subscribed("tiny");
    let d = s.expect(
        json!({"at": "2025-03-01T00:00:00Z", "op": "subscribe", "account": "a", "plan": "roomy"}),
        "deny already_subscribed",
    );
    let u = d.usage.expect("usage");
    assert_eq!(
        (u.plan.as_str(), format_instant(u.anchor)),
        ("tiny", "2025-01-31T09:00:00Z".to_string())
    );
}

#[test]
fn an_account_whose_plan_left_the_policy_is_denied_unknown_plan() {
    let mut s = Script::subscribed("tiny");
    s.worker
        .load_policy("[plans.roomy]\nlead_credits = 5\nemail_credits = 10\n")
        .expect("valid policy");
    s.expect(add("a@x.io", "c1"), "deny unknown_plan");
    s.expect(
        json!({"at": "2025-02-01T00:00:00Z", "op": "change_plan", "account": "a", "plan": "roomy"}),
        "allow",
    );
    s.expect(add("a@x.io", "c1"), "allow +1");
}

#[test]
fn accounts_are_independent() {
    let mut s = Script::subscribed("tiny");
    s.expect(
        json!({"at": "2025-01-31T09:00:00Z", "op": "subscribe", "account": "b", "plan": "tiny"}),
        "allow",
    );
    s.expect(add("a@x.io", "c1"), "allow +1");
    s.expect(add("b@x.io", "c1"), "allow +1");
    s.expect(
        json!({"at": NOW, "op": "add_lead", "account": "b", "campaign": "c1", "email": "a@x.io"}),
        "allow +1",
    );
}

#[test]
fn a_counted_charge_is_all_or_nothing_and_once_per_message_id() {
    let mut s = Script::subscribed("tiny"); // 3 email credits
    let charge = |cost: u64, id: &str| json!({"at": "2025-02-01T00:00:00Z", "op": "charge_email", "account": "a", "cost": cost, "message_id": id});
    s.expect(charge(2, "postfix/4F2A"), "allow +2");
    // Postfix retries a request (try limit 2), perhaps on another connection.
    s.expect(charge(2, "postfix/4F2A"), "allow");
    s.expect(charge(2, "postfix/77B1"), "deny email_credits_exhausted");
    s.expect(charge(1, "postfix/77B1"), "allow +1");
    s.expect(charge(0, "postfix/0000"), "deny no_recipients");
    assert_eq!(s.usage(NOW), (0, 3));
    let unknown =
        json!({"at": "2025-02-01T00:00:00Z", "op": "charge_email", "account": "ghost", "cost": 1});
    s.expect(unknown, "deny unknown_account");
}

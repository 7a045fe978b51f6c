//! Property tests: random event sequences run through the real component (through
//! the host) and through the reference model of `model.rs`; every output line must
//! be identical, and invariants of the credit rules must hold on both.
//!
//! Sequences are drawn from small alphabets so that interesting things happen
//! often: two or three accounts, three campaigns, a handful of spellings of five
//! contacts (case, surrounding whitespace, one non-ASCII) plus invalid addresses,
//! three message ids (so retries collide), the policy's plans plus one it lacks,
//! small limits (exhaustion is frequent), and instants that mostly move forward
//! over several billing cycles (month-end anchors, cycle boundaries to the
//! nanosecond) and sometimes go back.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, SecondsFormat};
use creditgate::replay::{Event, parse_event, parse_instant};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use crate::harness;
use crate::model::{Charged, Model, ONCE_GRACE, Policy, cycle_of, cycle_start, normalise};

const SEC: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * SEC;
const DAY: i64 = 24 * HOUR;

// ---------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------

/// Small limits, so that both kinds of credits run out often.
fn small_policy() -> Policy {
    Policy::new(&[
        ("tiny", Some(3), Some(5)),
        ("small", Some(6), Some(12)),
        ("big", None, None),
    ])
}

/// The same plans, with `small` in shadow mode (issue 17.4): let past its
/// limits, charged exactly, and said so.
fn shadow_policy() -> Policy {
    small_policy().with_shadow("small")
}

/// The same plans, with replies free and follow-ups at two credits.
fn priced_policy() -> Policy {
    small_policy().with_costs(1, 2, 0)
}

// ---------------------------------------------------------------------------
// Alphabets
// ---------------------------------------------------------------------------

const ACCOUNTS: &[&str] = &["acme", "beta", "gamma"];
const CAMPAIGNS: &[&str] = &["c1", "c2", "c3"];
/// The policy's plans plus one it lacks.
const PLANS: &[&str] = &["tiny", "small", "big", "gold"];
const MESSAGE_IDS: &[&str] = &["m1", "m2", "m3"];
/// Seven contacts (more than the `small` plan's 6), several spellings of some (case, surrounding whitespace incl. NBSP
/// and a newline, non-ASCII case).
const VALID_EMAILS: &[&str] = &[
    "ann@example.com",
    " Ann@Example.COM ",
    "ANN@EXAMPLE.COM\t",
    "bob@example.com",
    "Bob@Example.com\n",
    "carol@mail.example.org",
    "\u{a0}Carol@MAIL.example.org",
    "dave@example.net",
    "erin@example.io",
    "frank@sub.example.com",
    "élodie@exemple.fr",
    "ÉLODIE@Exemple.FR",
];
const INVALID_EMAILS: &[&str] = &[
    "ann.example.com",
    "ann@localhost",
    "a nn@example.com",
    "ann@@example.com",
    "ann@example..com",
    "@example.com",
    "bo\u{7}b@example.com",
];
/// Anchors for the first subscription: month ends (leap and common years), odd
/// times of day, a fractional second, the last nanosecond of a year.
const BASES: &[&str] = &[
    "2025-01-31T10:00:00Z",
    "2024-01-31T23:30:00Z",
    "2025-03-31T00:00:00Z",
    "2025-08-29T12:00:00.25Z",
    "2025-12-31T23:59:59.999999999Z",
    "2025-05-15T08:00:00Z",
];
/// Offsets `at` is written in (seconds east of UTC); mostly UTC.
const ZONES: &[i32] = &[0, 0, 0, 0, 7200, -19800, 50400, -43200];

// ---------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------

/// How an event's instant follows the previous one.
#[derive(Debug, Clone)]
enum Step {
    Same,
    Forward(i64),
    Back(i64),
    /// To the next cycle start of the trace's base anchor after the current
    /// instant, plus an offset (a nanosecond or an hour either side, say).
    NextBoundary(i64),
}

#[derive(Debug, Clone)]
enum To {
    One(&'static str),
    List(Vec<&'static str>),
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe {
        account: &'static str,
        plan: &'static str,
    },
    ChangePlan {
        account: &'static str,
        plan: &'static str,
    },
    AddLead {
        account: &'static str,
        campaign: &'static str,
        email: &'static str,
    },
    DeleteLead {
        account: &'static str,
        campaign: &'static str,
        email: &'static str,
    },
    DeleteCampaignLeads {
        account: &'static str,
        campaign: &'static str,
    },
    SendEmail {
        account: &'static str,
        to: To,
        kind: Option<&'static str>,
        message_id: Option<&'static str>,
    },
    ChargeEmail {
        account: &'static str,
        cost: u64,
        message_id: Option<&'static str>,
    },
    Usage {
        account: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Ev {
    step: Step,
    /// Offset `at` is written in, seconds east of UTC.
    zone: i32,
    op: Op,
}

#[derive(Debug, Clone)]
struct Trace {
    base: &'static str,
    events: Vec<Ev>,
}

impl Trace {
    /// The event lines, in replay format.
    fn lines(&self) -> Vec<String> {
        let base = parse_instant(self.base).expect("valid base");
        let mut now = base;
        self.events
            .iter()
            .map(|ev| {
                now = match ev.step {
                    Step::Same => now,
                    Step::Forward(d) => now + d,
                    Step::Back(d) => now - d,
                    Step::NextBoundary(offset) => {
                        cycle_start(base, cycle_of(base, now) + 1) + offset
                    }
                };
                let zone = FixedOffset::east_opt(ev.zone).expect("valid offset");
                let at = DateTime::from_timestamp_nanos(now)
                    .with_timezone(&zone)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true);
                render(&at, &ev.op)
            })
            .collect()
    }
}

fn render(at: &str, op: &Op) -> String {
    let mut v = match op {
        Op::Subscribe { account, plan } => {
            json!({"op": "subscribe", "account": account, "plan": plan})
        }
        Op::ChangePlan { account, plan } => {
            json!({"op": "change_plan", "account": account, "plan": plan})
        }
        Op::AddLead {
            account,
            campaign,
            email,
        } => {
            json!({"op": "add_lead", "account": account, "campaign": campaign, "email": email})
        }
        Op::DeleteLead {
            account,
            campaign,
            email,
        } => {
            json!({"op": "delete_lead", "account": account, "campaign": campaign, "email": email})
        }
        Op::DeleteCampaignLeads { account, campaign } => {
            json!({"op": "delete_campaign_leads", "account": account, "campaign": campaign})
        }
        Op::SendEmail {
            account,
            to,
            kind,
            message_id,
        } => {
            let mut v = json!({"op": "send_email", "account": account});
            v["to"] = match to {
                To::One(a) => json!(a),
                To::List(list) => json!(list),
            };
            if let Some(kind) = kind {
                v["kind"] = json!(kind);
            }
            if let Some(id) = message_id {
                v["message_id"] = json!(id);
            }
            v
        }
        Op::ChargeEmail {
            account,
            cost,
            message_id,
        } => {
            let mut v = json!({"op": "charge_email", "account": account, "cost": cost});
            if let Some(id) = message_id {
                v["message_id"] = json!(id);
            }
            v
        }
        Op::Usage { account } => json!({"op": "usage", "account": account}),
    };
    v["at"] = json!(at);
    v.to_string()
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Same),
        8 => (1..=6 * 3600i64).prop_map(|s| Step::Forward(s * SEC)),
        1 => (1..1000i64).prop_map(|ms| Step::Forward(ms * 1_000_000)),
        2 => (1..=10i64).prop_map(|d| Step::Forward(d * DAY)),
        1 => (20..=40i64).prop_map(|d| Step::Forward(d * DAY)),
        1 => select(&[-HOUR, -SEC, -1, 0, 0, 1, SEC, HOUR][..]).prop_map(Step::NextBoundary),
        1 => (1..=3 * 24 * 3600i64).prop_map(|s| Step::Back(s * SEC)),
        1 => (1..=45i64).prop_map(|d| Step::Back(d * DAY)),
    ]
}

fn email() -> impl Strategy<Value = &'static str> {
    prop_oneof![9 => select(VALID_EMAILS), 1 => select(INVALID_EMAILS)]
}

fn plan() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => select(&PLANS[..3]), 1 => Just(PLANS[3])]
}

fn op() -> impl Strategy<Value = Op> {
    let account =
        || prop_oneof![6 => Just(ACCOUNTS[0]), 2 => Just(ACCOUNTS[1]), 1 => Just(ACCOUNTS[2])];
    let campaign = || select(CAMPAIGNS);
    let to = prop_oneof![
        4 => email().prop_map(To::One),
        6 => prop::collection::vec(email(), 1..=4).prop_map(To::List),
        1 => Just(To::List(Vec::new())),
    ];
    let kind = prop_oneof![
        3 => Just(None),
        1 => Just(Some("first")),
        2 => Just(Some("follow_up")),
        2 => Just(Some("reply")),
    ];
    let message_id = || prop_oneof![2 => Just(None), 3 => select(MESSAGE_IDS).prop_map(Some)];
    prop_oneof![
        2 => (account(), plan()).prop_map(|(account, plan)| Op::Subscribe { account, plan }),
        1 => (account(), plan()).prop_map(|(account, plan)| Op::ChangePlan { account, plan }),
        6 => (account(), campaign(), email()).prop_map(|(account, campaign, email)| Op::AddLead { account, campaign, email }),
        2 => (account(), campaign(), email()).prop_map(|(account, campaign, email)| Op::DeleteLead { account, campaign, email }),
        1 => (account(), campaign()).prop_map(|(account, campaign)| Op::DeleteCampaignLeads { account, campaign }),
        8 => (account(), to, kind, message_id())
            .prop_map(|(account, to, kind, message_id)| Op::SendEmail { account, to, kind, message_id }),
        3 => (account(), 0..=4u64, message_id())
            .prop_map(|(account, cost, message_id)| Op::ChargeEmail { account, cost, message_id }),
        1 => account().prop_map(|account| Op::Usage { account }),
    ]
}

fn ev() -> impl Strategy<Value = Ev> {
    (step(), select(ZONES), op()).prop_map(|(step, zone, op)| Ev { step, zone, op })
}

/// A trace: `acme` subscribes at the base instant (often `beta` too), then up to
/// `max` random events.
fn trace(max: usize) -> impl Strategy<Value = Trace> {
    let first_plan = prop_oneof![3 => Just(PLANS[0]), 2 => Just(PLANS[1]), 1 => Just(PLANS[2])];
    (
        select(BASES),
        first_plan,
        prop::option::of(select(&PLANS[..3])),
        select(ZONES),
        prop::collection::vec(ev(), 1..=max),
    )
        .prop_map(|(base, plan, beta, zone, rest)| {
            let mut events = vec![Ev {
                step: Step::Same,
                zone,
                op: Op::Subscribe {
                    account: "acme",
                    plan,
                },
            }];
            if let Some(plan) = beta {
                events.push(Ev {
                    step: Step::Same,
                    zone: 0,
                    op: Op::Subscribe {
                        account: "beta",
                        plan,
                    },
                });
            }
            events.extend(rest);
            Trace { base, events }
        })
}

// ---------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------

/// Invariants checked on a stream of (event, output) pairs.
#[derive(Debug)]
struct Invariants {
    /// Accounts that have had an allowed `change_plan`, or were let past a
    /// limit in shadow mode: they may be over a limit.
    changed_plan: BTreeSet<String>,
    /// (account, message id) of every send charged with an id, with what it was
    /// charged for and until when it is remembered (the `resets_at` of the cycle
    /// that charged it plus the grace).
    charged_ids: BTreeMap<(String, String), (Charged, i64)>,
    /// Last lead credits used seen per account.
    lead_used: BTreeMap<String, u64>,
    /// Email credits used last seen per (account, cycle's `resets_at`).
    email_used: BTreeMap<(String, String), u64>,
    /// The policy decided under: what one recipient costs by kind.
    policy: Policy,
}

fn credits(usage: &Value, kind: &str) -> (u64, Option<u64>) {
    let c = &usage[kind];
    (c["used"].as_u64().expect("used"), c["limit"].as_u64())
}

impl Invariants {
    fn new(policy: &Policy) -> Invariants {
        Invariants {
            changed_plan: BTreeSet::new(),
            charged_ids: BTreeMap::new(),
            lead_used: BTreeMap::new(),
            email_used: BTreeMap::new(),
            policy: policy.clone(),
        }
    }

    /// Checks one output (a JSON line) of `event`, and records what later checks need.
    fn check(&mut self, event: &Event, output: &str) -> Result<(), String> {
        use creditgate::request::Request as R;
        let o: Value =
            serde_json::from_str(output).map_err(|e| format!("output is not JSON: {e}"))?;
        let account = event.request.account().to_string();
        let allowed = o["decision"] == "allow";
        let charged = o["charged"].as_u64().ok_or("charged is not a count")?;
        let freed = o["freed"].as_u64().ok_or("freed is not a count")?;
        let fail = |what: &str| Err(format!("invariant broken: {what}"));

        if !allowed && (charged != 0 || freed != 0) {
            return fail("a denial charged or freed credits");
        }
        if charged > 0
            && !matches!(
                event.request,
                R::AddLead { .. } | R::SendEmail { .. } | R::ChargeEmail { .. }
            )
        {
            return fail("charged by an op that takes no credits");
        }
        if freed > 0
            && !matches!(
                event.request,
                R::DeleteLead { .. } | R::DeleteCampaignLeads { .. }
            )
        {
            return fail("freed by an op that frees no credits");
        }
        if matches!(event.request, R::AddLead { .. }) && charged > 1 {
            return fail("a lead addition charged more than one credit");
        }
        if matches!(event.request, R::DeleteLead { .. }) && freed > 1 {
            return fail("a lead deletion freed more than one credit");
        }
        if allowed && matches!(event.request, R::ChangePlan { .. }) {
            self.changed_plan.insert(account.clone());
        }
        let shadow = o.get("shadow").is_some();
        if shadow {
            if !allowed {
                return fail("a denial with a shadow refusal");
            }
            self.changed_plan.insert(account.clone());
        }

        if o.get("lead_credits").is_none() {
            if charged > 0 || freed > 0 {
                return fail("credits moved for an account without usage");
            }
            return Ok(());
        }
        let (lead_used, lead_limit) = credits(&o, "lead_credits");
        let (email_used, email_limit) = credits(&o, "email_credits");
        let resets_at = o["email_credits"]["resets_at"]
            .as_str()
            .ok_or("resets_at missing")?
            .to_string();
        let cycle_end = match parse_instant(&resets_at) {
            Ok(at) if at <= event.at => return fail("resets_at is not after the event's instant"),
            Ok(at) => at,
            Err(_) => return fail("resets_at is not RFC 3339"),
        };

        // Within the limits in force, except after a plan change (a downgrade).
        let downgraded = self.changed_plan.contains(&account);
        if let Some(limit) = lead_limit {
            if charged > 0
                && !shadow
                && matches!(event.request, R::AddLead { .. })
                && lead_used > limit
            {
                return fail("a new contact was charged while lead credits were all used");
            }
            if lead_used > limit && !downgraded {
                return fail("lead credits used exceed the limit without a downgrade");
            }
        }
        if let Some(limit) = email_limit {
            if charged > 0
                && !shadow
                && matches!(event.request, R::SendEmail { .. } | R::ChargeEmail { .. })
                && email_used > limit
            {
                return fail("a send was charged past the email limit");
            }
            if email_used > limit && !downgraded {
                return fail("email credits used exceed the limit without a downgrade");
            }
        }

        // Accounting: lead credits move by exactly what was charged and freed.
        let lead_charged = if matches!(event.request, R::AddLead { .. }) {
            charged
        } else {
            0
        };
        let before = self.lead_used.get(&account).copied().unwrap_or(0);
        if before + lead_charged != lead_used + freed {
            return fail(&format!(
                "lead credits went from {before} to {lead_used} with charged {lead_charged}, freed {freed}"
            ));
        }
        self.lead_used.insert(account.clone(), lead_used);

        // Email credits of a cycle move by exactly what was charged (0 in a fresh cycle).
        let email_charged = if matches!(event.request, R::SendEmail { .. } | R::ChargeEmail { .. })
        {
            charged
        } else {
            0
        };
        let key = (account.clone(), resets_at);
        let before = self.email_used.get(&key).copied().unwrap_or(0);
        if before + email_charged != email_used {
            return fail(&format!(
                "email credits of the cycle went from {before} to {email_used} with charged {email_charged}"
            ));
        }
        self.email_used.insert(key, email_used);

        // A message id is charged at most once while it is remembered (until the
        // end of the cycle that charged it plus the grace, whatever cycle a retry
        // falls in, and whichever way the clock went), a retry of its message is
        // let through free, and the id reused for another message neither charges
        // nor lets the message through (issue 13.2). (Invalid addresses and no
        // recipients are refused before the id counts.)
        let message = match &event.request {
            R::SendEmail {
                message_id: Some(id),
                to,
                kind,
                ..
            } => to
                .iter()
                .map(|a| normalise(a))
                .collect::<Option<BTreeSet<String>>>()
                .filter(|set| !set.is_empty())
                .map(|set| (id, Charged::Recipients(set, self.policy.cost(*kind)))),
            R::ChargeEmail {
                message_id: Some(id),
                cost,
                ..
            } => (*cost > 0).then_some((id, Charged::Cost(*cost))),
            _ => None,
        };
        if let Some((id, content)) = message {
            let key = (account, id.clone());
            let remembered = (self.charged_ids.get(&key))
                .filter(|(_, until)| event.at < *until)
                .map(|(first, _)| first);
            match remembered {
                Some(_) if charged > 0 => {
                    return fail(&format!(
                        "message id {id:?} charged twice while it is remembered"
                    ));
                }
                Some(first) if *first == content && !allowed => {
                    return fail(&format!(
                        "the retry of message {id:?} was denied {}",
                        o["reason"]
                    ));
                }
                Some(first) if *first != content && allowed => {
                    return fail(&format!(
                        "message id {id:?} reused for another message was allowed"
                    ));
                }
                Some(first) if *first != content && o["reason"] != "idempotency_key_reused" => {
                    return fail(&format!(
                        "message id {id:?} reused for another message was denied {}",
                        o["reason"]
                    ));
                }
                Some(_) => {}
                // Allowed and not remembered: the id is this message's from now
                // on, charged or not (a reply that costs 0 takes it too: once its
                // first message is forgotten, a later retry of the reply is free
                // and the first message's content is no longer the id's).
                None if charged > 0 || allowed => {
                    let until = cycle_end.saturating_add(ONCE_GRACE);
                    self.charged_ids.insert(key, (content, until));
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// Invariants of the model's own state, after every event.
fn check_model_state(
    model: &Model,
    changed_plan: &BTreeSet<String>,
    now: i64,
) -> Result<(), String> {
    for (name, acc) in &model.accounts {
        let plan = model
            .plan_of(name)
            .ok_or("an account's plan is not in the policy")?;
        let downgraded = changed_plan.contains(name);
        let lead_used = acc.lead_used();
        let email_used = acc.emails_used_in(acc.cycle_at(now));
        if !downgraded && plan.lead_credits.is_some_and(|l| lead_used > l) {
            return Err(format!(
                "model: {name} holds {lead_used} contacts over its limit"
            ));
        }
        if !downgraded && plan.email_credits.is_some_and(|l| email_used > l) {
            return Err(format!(
                "model: {name} used {email_used} email credits over its limit"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Runners
// ---------------------------------------------------------------------------

/// Runs `lines` through the component and the model; fails at the first invariant
/// broken (on either's outputs, or on the model's state), or the first output that
/// differs.
fn compare(policy: &Policy, lines: &[String]) -> Result<Vec<String>, TestCaseError> {
    let mut worker = harness::worker(&policy.toml());
    let mut model = Model::new(policy.clone());
    let mut on_component = Invariants::new(policy);
    let mut on_model = Invariants::new(policy);
    let mut outputs = Vec::with_capacity(lines.len());
    let context = |i: usize| {
        lines[..=i]
            .iter()
            .enumerate()
            .map(|(j, l)| format!("  #{j}: {l}\n"))
            .collect::<String>()
    };
    for (i, line) in lines.iter().enumerate() {
        let event = parse_event(line)
            .map_err(|e| TestCaseError::fail(format!("bad generated event {line}: {e}")))?;
        let expected = serde_json::to_string(&model.apply(&event)).expect("serializes");
        let actual = harness::outcome(&mut worker, line);
        for (who, invariants, output) in [
            ("component", &mut on_component, &actual),
            ("model", &mut on_model, &expected),
        ] {
            invariants.check(&event, output).map_err(|e| {
                TestCaseError::fail(format!(
                    "{who}, event #{i}: {e}\n  output: {output}\nsequence:\n{}",
                    context(i)
                ))
            })?;
        }
        check_model_state(&model, &on_model.changed_plan, event.at).map_err(|e| {
            TestCaseError::fail(format!("event #{i}: {e}\nsequence:\n{}", context(i)))
        })?;
        if actual != expected {
            return Err(TestCaseError::fail(format!(
                "component and model differ at event #{i}: {line}\n  component: {actual}\n  model:     {expected}\nsequence:\n{}",
                context(i)
            )));
        }
        outputs.push(actual);
    }
    Ok(outputs)
}

/// The component's outputs for `lines` from a fresh worker.
fn component_outputs(policy: &Policy, lines: &[String]) -> Vec<String> {
    let mut worker = harness::worker(&policy.toml());
    lines
        .iter()
        .map(|line| harness::outcome(&mut worker, line))
        .collect()
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// `cases` cases; failures are not persisted (no `proptest-regressions/` file in
/// the source tree): the failure message holds the whole failing sequence. The
/// store's model test uses it too.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Component and model agree on every event; invariants hold on both.
    #[test]
    fn component_matches_model(trace in trace(60)) {
        compare(&small_policy(), &trace.lines())?;
    }
}

/// A sequence the property below found (CI, 2026-12-07): m1's first message
/// is forgotten (its cycle ended a week before), a free reply takes m1, and
/// the reply's retry from a clock a day behind is let through free. The
/// checker had kept m1 as the first message's, since the reply charged 0.
#[test]
fn a_free_reply_takes_a_forgotten_id_and_its_retry_is_free() {
    let lines: Vec<String> = [
        r#"{"account":"acme","at":"2025-01-31T10:00:00Z","op":"subscribe","plan":"tiny"}"#,
        r#"{"account":"acme","at":"2025-01-31T09:59:59Z","message_id":"m1","op":"send_email","to":"ann@example.com"}"#,
        r#"{"account":"acme","at":"2025-03-08T09:59:59Z","kind":"reply","message_id":"m1","op":"send_email","to":"carol@mail.example.org"}"#,
        r#"{"account":"acme","at":"2025-03-07T09:59:59Z","kind":"reply","message_id":"m1","op":"send_email","to":"carol@mail.example.org"}"#,
    ]
    .map(String::from)
    .to_vec();
    let outputs = compare(&priced_policy(), &lines).expect("component, model and invariants agree");
    harness::assert_has(&outputs[3], r#""decision":"allow""#);
}

proptest! {
    #![proptest_config(config(64))]

    /// The same with `[email_costs] reply = 0, follow_up = 2`.
    #[test]
    fn component_matches_model_with_email_costs(trace in trace(60)) {
        compare(&priced_policy(), &trace.lines())?;
    }

    /// The same with a plan in shadow mode: its accounts go past their limits,
    /// charged exactly and told what enforcement would have said, while the
    /// plans beside it (and its accounts after a move to one) are enforced.
    #[test]
    fn component_matches_model_with_a_plan_in_shadow(trace in trace(60)) {
        compare(&shadow_policy(), &trace.lines())?;
    }

    /// A lead credit freed by a deletion is taken by a new contact right after.
    #[test]
    fn freed_lead_credit_is_reusable(
        plan in select(&["tiny", "small"][..]),
        campaign_of in prop::collection::vec(select(CAMPAIGNS), 7),
        upper in prop::collection::vec(any::<bool>(), 8),
        victim in 0..6usize,
        mode in 0..3u8,
    ) {
        let limit = if plan == "tiny" { 3 } else { 6 };
        let victim = victim % limit;
        let spell = |i: usize| {
            let a = format!("lead{i}@example.com");
            if upper[i] { format!(" {}", a.to_uppercase()) } else { a }
        };
        let at = "2025-01-31T10:00:00Z";
        let line = |op: Op| render(at, &op);
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let account = "acme";
        let mut lines = vec![line(Op::Subscribe { account, plan })];
        for (i, &campaign) in campaign_of.iter().enumerate().take(limit) {
            lines.push(line(Op::AddLead { account, campaign, email: leak(spell(i)) }));
        }
        let newcomer = leak(spell(7));
        // Full: a new contact is refused.
        lines.push(line(Op::AddLead { account, campaign: "c1", email: newcomer }));
        let victim_campaign = campaign_of[victim];
        let other_campaign = CAMPAIGNS.iter().copied().find(|c| *c != victim_campaign).expect("three campaigns");
        match mode {
            0 => lines.push(line(Op::DeleteLead { account, campaign: victim_campaign, email: leak(spell(victim).to_lowercase()) })),
            1 => lines.push(line(Op::DeleteCampaignLeads { account, campaign: victim_campaign })),
            _ => {
                // Held by two campaigns: leaving one frees nothing, leaving both frees it.
                lines.push(line(Op::AddLead { account, campaign: other_campaign, email: leak(spell(victim)) }));
                lines.push(line(Op::DeleteLead { account, campaign: victim_campaign, email: leak(spell(victim)) }));
                lines.push(line(Op::AddLead { account, campaign: "c2", email: newcomer }));
                lines.push(line(Op::DeleteLead { account, campaign: other_campaign, email: leak(spell(victim)) }));
            }
        }
        lines.push(line(Op::AddLead { account, campaign: "c2", email: newcomer }));
        let outputs = compare(&small_policy(), &lines)?;
        let o = |i: usize| serde_json::from_str::<Value>(&outputs[i]).expect("JSON");
        let n = outputs.len();
        prop_assert_eq!(&o(limit + 1)["reason"], "lead_credits_exhausted", "full account took a new contact: {:?}", lines);
        if mode == 2 {
            prop_assert_eq!(&o(n - 4)["freed"], 0);
            prop_assert_eq!(&o(n - 3)["reason"], "lead_credits_exhausted");
        }
        prop_assert!(o(n - 2)["freed"].as_u64().unwrap() >= 1, "the deletion freed nothing: {:?}", outputs);
        prop_assert_eq!(&o(n - 1)["decision"], "allow", "freed credit not reusable: {:?}", outputs);
        prop_assert_eq!(&o(n - 1)["charged"], 1);
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Replaying a sequence through two fresh workers gives the same outputs.
    #[test]
    fn replay_is_deterministic(trace in trace(60)) {
        let lines = trace.lines();
        let policy = small_policy();
        let first = component_outputs(&policy, &lines);
        let second = component_outputs(&policy, &lines);
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            prop_assert_eq!(a, b, "event #{} differs between runs: {}", i, lines[i]);
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed sequences: edges that random traces rarely reach, checked against both the
// model and literal expectations from the specification.
// ---------------------------------------------------------------------------

/// Runs fixed lines through both; returns the outputs as JSON values.
fn fixed(policy: &Policy, lines: &[&str]) -> Vec<Value> {
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match compare(policy, &lines) {
        Ok(outputs) => outputs
            .iter()
            .map(|o| serde_json::from_str(o).expect("JSON"))
            .collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn month_end_anchor_cycles() {
    let outs = fixed(
        &small_policy(),
        &[
            r#"{"at":"2024-01-31T10:00:00Z","op":"subscribe","account":"a","plan":"tiny"}"#,
            r#"{"at":"2023-12-01T00:00:00Z","op":"usage","account":"a"}"#,
            r#"{"at":"2024-02-29T09:59:59.999999999Z","op":"send_email","account":"a","to":"x@y.io","message_id":"m"}"#,
            r#"{"at":"2024-02-29T12:00:00+02:00","op":"send_email","account":"a","to":"x@y.io","message_id":"m"}"#,
            r#"{"at":"2024-02-29T10:00:00Z","op":"send_email","account":"a","to":"x@y.io","message_id":"m"}"#,
            r#"{"at":"2024-04-30T09:59:59Z","op":"usage","account":"a"}"#,
            r#"{"at":"2024-04-30T10:00:00Z","op":"usage","account":"a"}"#,
            r#"{"at":"2025-02-28T10:00:00.5Z","op":"usage","account":"a"}"#,
        ],
    );
    let resets: Vec<&str> = outs
        .iter()
        .map(|o| o["email_credits"]["resets_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        resets,
        [
            "2024-02-29T10:00:00Z",
            "2024-02-29T10:00:00Z",
            "2024-02-29T10:00:00Z",
            "2024-03-31T10:00:00Z",
            "2024-03-31T10:00:00Z",
            "2024-04-30T10:00:00Z",
            "2024-05-31T10:00:00Z",
            "2025-03-31T10:00:00Z",
        ]
    );
    // Same id: charged in cycle 0 a nanosecond before its end, then retried in
    // cycle 1 (twice the same instant): a retry, free, whatever cycle it falls
    // in. (Changed on purpose: it was charged again in cycle 1, so a retry across
    // the boundary cost twice.) The retries report cycle 1's usage.
    let charged: Vec<(u64, u64)> = outs[2..5]
        .iter()
        .map(|o| {
            let used = o["email_credits"]["used"].as_u64().unwrap();
            (o["charged"].as_u64().unwrap(), used)
        })
        .collect();
    assert_eq!(charged, [(1, 1), (0, 0), (0, 0)]);
}

#[test]
fn address_edges() {
    let local = "x".repeat(254 - "@example.com".len());
    let ok = format!("  {local}@EXAMPLE.com  ");
    let too_long = format!("{local}y@example.com");
    let wide_local = "é".repeat(254 - "@example.com".len());
    let wide = format!("{wide_local}@example.com");
    let lines: Vec<String> = [
        r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"big"}"#.to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email": ok}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email": too_long}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email": "\u{2003}Ann@Example.COM\u{3000}"}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"d","email": "ann@example.com"}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email": "ann@example.com."}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email": "ann@.example.com"}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to": [], "message_id": "m"}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to": ["ann@example.com", "bad"], "message_id": "m"}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to": ["ann@example.com", " ANN@example.com"], "message_id": "m"}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to": ["bob@example.com", "carl@example.com"], "message_id": "m"}).to_string(),
        json!({"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email": wide}).to_string(),
    ]
    .into();
    let policy = small_policy();
    let outputs = compare(&policy, &lines).unwrap_or_else(|e| panic!("{e}"));
    let reasons: Vec<Value> = outputs
        .iter()
        .map(|o| serde_json::from_str::<Value>(o).unwrap()["reason"].clone())
        .collect();
    let expected = [
        Value::Null,
        Value::Null,
        json!("invalid_email"),
        Value::Null,
        Value::Null,
        json!("invalid_email"),
        json!("invalid_email"),
        json!("no_recipients"),
        json!("invalid_email"),
        Value::Null,
        // The id again, for other recipients (issue 13.2).
        json!("idempotency_key_reused"),
        Value::Null,
    ];
    assert_eq!(reasons, expected, "{outputs:#?}");
}

#[test]
fn downgrade_and_unknown_plans() {
    let outs = fixed(
        &small_policy(),
        &[
            r#"{"at":"2025-01-01T00:00:00Z","op":"change_plan","account":"a","plan":"gold"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"gold"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"small"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"gold"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"tiny"}"#,
            r#"{"at":"2025-01-02T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","b@x.io","c@x.io","d@x.io"]}"#,
            r#"{"at":"2025-01-02T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email":"a@x.io"}"#,
            r#"{"at":"2025-01-02T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email":"b@x.io"}"#,
            r#"{"at":"2025-01-02T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email":"c@x.io"}"#,
            r#"{"at":"2025-01-02T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email":"d@x.io"}"#,
            r#"{"at":"2025-01-03T00:00:00Z","op":"change_plan","account":"a","plan":"tiny"}"#,
            r#"{"at":"2025-01-03T00:00:00Z","op":"add_lead","account":"a","campaign":"d","email":"e@x.io"}"#,
            r#"{"at":"2025-01-03T00:00:00Z","op":"add_lead","account":"a","campaign":"d","email":"a@x.io"}"#,
            r#"{"at":"2025-01-03T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","b@x.io"]}"#,
            r#"{"at":"2025-01-03T00:00:00Z","op":"change_plan","account":"a","plan":"gold"}"#,
            r#"{"at":"2025-01-03T00:00:00Z","op":"change_plan","account":"a","plan":"tiny"}"#,
            r#"{"at":"2025-02-01T00:00:00Z","op":"send_email","account":"a","to":"a@x.io"}"#,
        ],
    );
    let reasons: Vec<Value> = outs.iter().map(|o| o["reason"].clone()).collect();
    let expected = [
        json!("unknown_account"),
        json!("unknown_plan"),
        Value::Null,
        json!("unknown_plan"),
        json!("already_subscribed"),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        json!("lead_credits_exhausted"),
        Value::Null,
        json!("email_credits_exhausted"),
        json!("unknown_plan"),
        Value::Null,
        Value::Null,
    ];
    assert_eq!(reasons, expected, "{outs:#?}");
    assert!(outs[0].get("lead_credits").is_none() && outs[1].get("lead_credits").is_none());
    assert_eq!(
        outs[3]["lead_credits"]["limit"], 6,
        "unknown_plan for an existing account shows its usage"
    );
    assert_eq!(
        outs[12]["charged"], 0,
        "joining a campaign costs nothing, even over the limit"
    );
    assert_eq!(outs[16]["charged"], 1, "the reset lifts the email denial");
}

/// Each output's reason, credits charged and email credits used after it.
fn emails_charged(outs: &[Value]) -> Vec<(Value, u64, u64)> {
    outs.iter()
        .map(|o| {
            (
                o["reason"].clone(),
                o["charged"].as_u64().unwrap(),
                o["email_credits"]["used"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn repeats_and_free_kinds() {
    let outs = fixed(
        &priced_policy(),
        &[
            r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"small"}"#,
            // A free reply is allowed and remembers its id: a later send with it is a repeat.
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":"x@y.io","kind":"reply","message_id":"r"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":"x@y.io","kind":"reply","message_id":"r"}"#,
            // Sent again as a dearer kind, it is another message under the id (the
            // trust audit: it went out free as a "repeat").
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":"x@y.io","message_id":"r"}"#,
            // Follow-ups cost 2 per distinct recipient.
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["x@y.io","X@Y.IO","z@y.io"],"kind":"follow_up","message_id":"m"}"#,
            // Validity and recipients are checked before the repeat.
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["x@y.io","nope"],"message_id":"m"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":[],"message_id":"m"}"#,
            // A denied send is not remembered.
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["a@y.io","b@y.io","c@y.io","d@y.io","e@y.io"],"kind":"follow_up","message_id":"d"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["a@y.io","b@y.io"],"kind":"follow_up","message_id":"d"}"#,
            // Downgraded below usage (8 of 5): a repeat is still allowed, a free reply is not.
            r#"{"at":"2025-01-02T00:00:00Z","op":"change_plan","account":"a","plan":"tiny"}"#,
            r#"{"at":"2025-01-02T00:00:00Z","op":"send_email","account":"a","to":["z@y.io","x@y.io"],"kind":"follow_up","message_id":"m"}"#,
            r#"{"at":"2025-01-02T00:00:00Z","op":"send_email","account":"a","to":"q@y.io","kind":"reply"}"#,
            // Back in time before the anchor: cycle 0 still, the id is still charged.
            r#"{"at":"2024-12-01T00:00:00Z","op":"send_email","account":"a","to":["x@y.io","z@y.io"],"kind":"follow_up","message_id":"m"}"#,
            // Next cycle: the id is still remembered (changed on purpose: it was
            // charged again). For another message it is a conflict; its own
            // message is a free retry, with the new cycle's usage.
            r#"{"at":"2025-02-01T00:00:00Z","op":"send_email","account":"a","to":"q@y.io","message_id":"m"}"#,
            r#"{"at":"2025-02-01T00:00:00Z","op":"send_email","account":"a","to":["z@y.io","x@y.io"],"kind":"follow_up","message_id":"m"}"#,
            // Forgotten 7 days after the end of the cycle that charged it: a new
            // message's id, charged.
            r#"{"at":"2025-02-07T23:59:59.999999999Z","op":"send_email","account":"a","to":"q@y.io","message_id":"m"}"#,
            r#"{"at":"2025-02-08T00:00:00Z","op":"send_email","account":"a","to":"q@y.io","message_id":"m"}"#,
        ],
    );
    let got = emails_charged(&outs);
    let e = |r: &str| json!(r);
    let expected = vec![
        (Value::Null, 0, 0),
        (Value::Null, 0, 0),
        (Value::Null, 0, 0),
        (e("idempotency_key_reused"), 0, 0),
        (Value::Null, 4, 4),
        (e("invalid_email"), 0, 4),
        (e("no_recipients"), 0, 4),
        (e("email_credits_exhausted"), 0, 4),
        (Value::Null, 4, 8),
        (Value::Null, 0, 8),
        (Value::Null, 0, 8),
        (e("email_credits_exhausted"), 0, 8),
        (Value::Null, 0, 8),
        (e("idempotency_key_reused"), 0, 0),
        (Value::Null, 0, 0),
        (e("idempotency_key_reused"), 0, 0),
        (Value::Null, 1, 1),
    ];
    assert_eq!(got, expected, "{outs:#?}");
}

/// Issue 13.2: a message id is an idempotency key over the message it charged. The
/// same recipients (any order, any spelling) or the same cost again is a free
/// retry; other recipients, another cost, or the other operation under the id
/// are denied `idempotency_key_reused` and charge nothing, though credits are
/// left; the id stays the first message's. A blank id is no key: the event is
/// refused.
#[test]
fn a_reused_message_id_is_denied_not_free() {
    let outs = fixed(
        &small_policy(),
        &[
            r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"big"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","b@x.io"],"message_id":"<m1@acme>"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["B@x.io"," a@x.io","b@x.io"],"message_id":"<m1@acme>"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","c@x.io"],"message_id":"<m1@acme>"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":"a@x.io","message_id":"<m1@acme>"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"charge_email","account":"a","cost":2,"message_id":"<m1@acme>"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"charge_email","account":"a","cost":3,"message_id":"p1"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"charge_email","account":"a","cost":3,"message_id":"p1"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"charge_email","account":"a","cost":9,"message_id":"p1"}"#,
            r#"{"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","b@x.io"],"message_id":"<m1@acme>"}"#,
        ],
    );
    let got = emails_charged(&outs);
    let reused = json!("idempotency_key_reused");
    assert_eq!(
        got,
        [
            (Value::Null, 0, 0),
            (Value::Null, 2, 2),
            (Value::Null, 0, 2),
            (reused.clone(), 0, 2),
            (reused.clone(), 0, 2),
            (reused.clone(), 0, 2),
            (Value::Null, 3, 5),
            (Value::Null, 0, 5),
            (reused, 0, 5),
            (Value::Null, 0, 5),
        ],
        "{outs:#?}"
    );
    for blank in ["", "   "] {
        let line = json!({"at":"2025-01-01T00:00:00Z","op":"send_email","account":"a","to":"a@x.io","message_id": blank});
        let err = parse_event(&line.to_string()).expect_err("a blank id is no key");
        harness::assert_has(&err, "message_id");
    }
}

/// Usage belongs to the cycle an instant falls in: going back in time into an
/// earlier cycle, further than the clock skew tolerated at a turnover (a
/// replayed trace, a clock put right), finds that cycle's usage (and message
/// ids) again.
#[test]
fn going_back_finds_the_earlier_cycle() {
    let outs = fixed(
        &small_policy(),
        &[
            r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"tiny"}"#,
            r#"{"at":"2025-01-10T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","b@x.io","c@x.io"],"message_id":"m"}"#,
            r#"{"at":"2025-02-02T00:00:00Z","op":"send_email","account":"a","to":"a@x.io"}"#,
            r#"{"at":"2025-01-20T00:00:00Z","op":"send_email","account":"a","to":["c@x.io","a@x.io","b@x.io"],"message_id":"m"}"#,
            r#"{"at":"2025-01-20T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","b@x.io"]}"#,
            r#"{"at":"2025-01-20T00:00:00Z","op":"send_email","account":"a","to":["a@x.io","b@x.io","c@x.io"]}"#,
            r#"{"at":"2025-02-03T00:00:00Z","op":"usage","account":"a"}"#,
        ],
    );
    let got: Vec<(u64, u64)> = emails_charged(&outs)
        .into_iter()
        .map(|(_, charged, used)| (charged, used))
        .collect();
    assert_eq!(
        got,
        [(0, 0), (3, 3), (1, 1), (0, 3), (2, 5), (0, 5), (0, 1)],
        "{outs:#?}"
    );
    assert_eq!(outs[5]["reason"], "email_credits_exhausted");
}

// ---------------------------------------------------------------------------
// Message ids across cycle boundaries (the trust audit: a retry across a cycle
// boundary was charged twice).
// ---------------------------------------------------------------------------

/// Steps that keep a trace near cycle boundaries and the grace's end: to just
/// before or after the next boundary, a little back across it (a clock stepped
/// back, or a gateway whose clock is behind), and forward by the grace give or
/// take a nanosecond (from just after a boundary: to the last instant a message
/// charged just before it is remembered, or the first it is not).
fn boundary_step() -> impl Strategy<Value = Step> {
    const EDGES: &[i64] = &[-SEC, -100_000_000, -1, 0, 1, 100_000_000, SEC];
    prop_oneof![
        3 => Just(Step::Same),
        3 => select(EDGES).prop_map(Step::NextBoundary),
        2 => (1..=2 * 3600 * 1000i64).prop_map(|ms| Step::Back(ms * 1_000_000)),
        2 => (1..=6 * 3600i64).prop_map(|s| Step::Forward(s * SEC)),
        2 => select(EDGES).prop_map(|d| Step::Forward(ONCE_GRACE + d)),
        1 => (1..=10i64).prop_map(|d| Step::Forward(d * DAY)),
        1 => (1..=10i64).prop_map(|d| Step::Back(d * DAY)),
    ]
}

/// Mostly charges under a few ids, for a few recipient sets (spelt several
/// ways) and costs, so that retries, conflicts and new messages under a
/// forgotten id are all frequent.
fn boundary_op() -> impl Strategy<Value = Op> {
    let account = || prop_oneof![4 => Just(ACCOUNTS[0]), 1 => Just(ACCOUNTS[1])];
    let message_id = || prop_oneof![1 => Just(None), 6 => select(MESSAGE_IDS).prop_map(Some)];
    let to = prop::collection::vec(select(&VALID_EMAILS[..5]), 1..=2).prop_map(To::List);
    let kind = prop_oneof![2 => Just(None), 1 => Just(Some("follow_up")), 1 => Just(Some("reply"))];
    prop_oneof![
        4 => (account(), to, kind, message_id())
            .prop_map(|(account, to, kind, message_id)| Op::SendEmail { account, to, kind, message_id }),
        4 => (account(), 1..=3u64, message_id())
            .prop_map(|(account, cost, message_id)| Op::ChargeEmail { account, cost, message_id }),
        1 => (account(), select(&PLANS[..3])).prop_map(|(account, plan)| Op::ChangePlan { account, plan }),
        1 => account().prop_map(|account| Op::Usage { account }),
    ]
}

/// `acme` (and often `beta`) subscribed at the base instant, then up to `max`
/// charges near boundaries.
fn boundary_trace(max: usize) -> impl Strategy<Value = Trace> {
    let ev = (boundary_step(), select(ZONES), boundary_op()).prop_map(|(step, zone, op)| Ev {
        step,
        zone,
        op,
    });
    (
        select(BASES),
        select(&PLANS[..3]),
        prop::option::of(select(&PLANS[..3])),
        prop::collection::vec(ev, 1..=max),
    )
        .prop_map(|(base, plan, beta, rest)| {
            let subscribe = |account, plan| Ev {
                step: Step::Same,
                zone: 0,
                op: Op::Subscribe { account, plan },
            };
            let mut events = vec![subscribe("acme", plan)];
            events.extend(beta.map(|plan| subscribe("beta", plan)));
            events.extend(rest);
            Trace { base, events }
        })
}

proptest! {
    #![proptest_config(config(64))]

    /// A message id is charged at most once while it is remembered (until the
    /// end of the cycle that charged it plus the grace), whatever cycle its
    /// retries fall in and whichever way the clock steps; its message's retry
    /// is free, another message under it is denied `idempotency_key_reused`.
    /// `compare` checks both on the component and on the model, and that the
    /// two agree (past the grace too: the id is then a new message's).
    #[test]
    fn a_message_id_is_charged_at_most_once_while_remembered(
        trace in boundary_trace(40),
        policy in select(&["small", "shadow", "priced"][..]),
    ) {
        let policy = match policy {
            "shadow" => shadow_policy(),
            "priced" => priced_policy(),
            _ => small_policy(),
        };
        compare(&policy, &trace.lines())?;
    }
}

/// The audit's trace (`send_email` at 08:59:59.9 retried at 09:00:00.1 across a
/// cycle boundary, `charge_email` of 3 likewise: each was charged twice), then a
/// clock stepped back, the id reused for another message after the boundary,
/// Postfix's queue lifetime, and the grace's edge, enforced and in shadow.
#[test]
fn a_retry_across_a_cycle_boundary_is_charged_once() {
    let lines = [
        r#"{"at":"2025-01-31T09:00:00Z","op":"subscribe","account":"a","plan":"small"}"#,
        r#"{"at":"2025-02-28T08:59:59.900Z","op":"send_email","account":"a","to":["ann@example.com","bo@example.org"],"message_id":"<m1@acme>"}"#,
        r#"{"at":"2025-02-28T08:59:59.950Z","op":"charge_email","account":"a","cost":3,"message_id":"<m2@acme>"}"#,
        r#"{"at":"2025-02-28T09:00:00.100Z","op":"send_email","account":"a","to":["bo@example.org","Ann@example.com"],"message_id":"<m1@acme>"}"#,
        r#"{"at":"2025-02-28T09:00:00.200Z","op":"charge_email","account":"a","cost":3,"message_id":"<m2@acme>"}"#,
        r#"{"at":"2025-02-28T09:00:00.300Z","op":"charge_email","account":"a","cost":3,"message_id":"<m2@acme>"}"#,
        // The clock steps back an hour, into cycle 0 and past the skew tolerated
        // at a turnover: still the same messages, with cycle 0's usage.
        r#"{"at":"2025-02-28T08:00:00Z","op":"send_email","account":"a","to":["ann@example.com","bo@example.org"],"message_id":"<m1@acme>"}"#,
        // After the boundary, the ids for other messages: conflicts, whichever op.
        r#"{"at":"2025-03-01T00:00:00Z","op":"send_email","account":"a","to":"ann@example.com","message_id":"<m1@acme>"}"#,
        r#"{"at":"2025-03-01T00:00:00Z","op":"charge_email","account":"a","cost":2,"message_id":"<m1@acme>"}"#,
        r#"{"at":"2025-03-01T00:00:00Z","op":"charge_email","account":"a","cost":4,"message_id":"<m2@acme>"}"#,
        // 5 days after the boundary (Postfix's maximal_queue_lifetime): free.
        r#"{"at":"2025-03-05T09:00:00Z","op":"charge_email","account":"a","cost":3,"message_id":"<m2@acme>"}"#,
        // The grace's last nanosecond: remembered; from its end, a new message.
        r#"{"at":"2025-03-07T08:59:59.999999999Z","op":"charge_email","account":"a","cost":3,"message_id":"<m2@acme>"}"#,
        r#"{"at":"2025-03-07T09:00:00Z","op":"charge_email","account":"a","cost":3,"message_id":"<m2@acme>"}"#,
        // Charged again in cycle 1, it is remembered until cycle 1's end plus
        // the grace: free in cycle 2 (2025-03-31T09:00Z on), with its usage.
        r#"{"at":"2025-04-05T09:00:00Z","op":"charge_email","account":"a","cost":3,"message_id":"<m2@acme>"}"#,
        // Past the limit (12) in cycle 2: refused when enforced, and then not
        // remembered; let through in shadow, and then a retry is free.
        r#"{"at":"2025-04-05T09:00:00Z","op":"charge_email","account":"a","cost":20,"message_id":"<big@acme>"}"#,
        r#"{"at":"2025-04-30T09:00:00.5Z","op":"charge_email","account":"a","cost":20,"message_id":"<big@acme>"}"#,
        r#"{"at":"2025-04-30T09:00:01Z","op":"usage","account":"a"}"#,
    ];
    let reused = json!("idempotency_key_reused");
    let exhausted = json!("email_credits_exhausted");
    let common = [
        (Value::Null, 0, 0),
        (Value::Null, 2, 2),
        (Value::Null, 3, 5),
        (Value::Null, 0, 0),
        (Value::Null, 0, 0),
        (Value::Null, 0, 0),
        (Value::Null, 0, 5),
        (reused.clone(), 0, 0),
        (reused.clone(), 0, 0),
        (reused, 0, 0),
        (Value::Null, 0, 0),
        (Value::Null, 0, 0),
        (Value::Null, 3, 3),
        (Value::Null, 0, 0),
    ];
    for (policy, tail) in [
        (
            small_policy(),
            [
                (exhausted.clone(), 0, 0),
                (exhausted, 0, 0),
                (Value::Null, 0, 0),
            ],
        ),
        (
            shadow_policy(),
            [
                (Value::Null, 20, 20),
                (Value::Null, 0, 0),
                (Value::Null, 0, 0),
            ],
        ),
    ] {
        let outs = fixed(&policy, &lines);
        let expected: Vec<(Value, u64, u64)> = common.iter().cloned().chain(tail).collect();
        assert_eq!(emails_charged(&outs), expected, "{outs:#?}");
    }
}

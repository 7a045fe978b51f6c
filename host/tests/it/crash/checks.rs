//! The checks: what each crash image (and the final file) must hold against
//! the oracle, what the restarted server and the CLI must report of it, and a
//! check of the checks on a file tampered with on purpose.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::MutexGuard;
use std::time::Instant;

use creditgate::store::{RedbStore, Store};

use super::oracle::{ClientLog, Known, PLANS, Rng, Shared, lock};
use super::server::{Files, Serve};
use super::traffic::{api, http};
use super::{CLIENTS, Report};
use crate::model::{ONCE_GRACE, cycle_start};

/// What an image holds per account: the email credits used in the newest cycle,
/// the lead credits used, and the memberships `(campaign, contact)`.
#[derive(Debug, Default)]
pub(super) struct Held {
    pub(super) plan: String,
    pub(super) emails: u64,
    /// Every cycle's, for the bounds from the acknowledged side.
    pub(super) emails_all: u64,
    pub(super) leads: u64,
    pub(super) memberships: BTreeSet<(String, String)>,
}

/// The billing cycle of an account anchored at `anchor` that charged a message id
/// whose marker expires at `expires_at`: the one whose end plus the grace that is.
fn charging_cycle(anchor: i64, expires_at: i64) -> Option<u64> {
    (0..120u32)
        .find(|&n| cycle_start(anchor, n + 1).saturating_add(ONCE_GRACE) == expires_at)
        .map(u64::from)
}

/// The campaign's owner: campaigns are `c{client}a` and `c{client}b`.
pub(super) fn owner(campaign: &str) -> Option<usize> {
    let id = campaign.strip_prefix('c')?;
    let id = id.strip_suffix('a').or_else(|| id.strip_suffix('b'))?;
    id.parse().ok().filter(|&id| id < CLIENTS)
}

/// Opens `path` (a crash image, or the final file), checks its integrity and every
/// invariant against the oracle, and settles what was in flight. Clients are parked.
pub(super) fn check_image(
    path: &Path,
    label: &str,
    shared: &Shared,
    report: &mut Report,
) -> BTreeMap<String, Held> {
    report.images += 1;
    let opening = Instant::now();
    let mut store = RedbStore::open(path)
        .unwrap_or_else(|e| panic!("{label}: the store does not open after the crash: {e}"));
    report.recoveries.push(opening.elapsed());
    match store.check_integrity() {
        Ok(true) => {}
        Ok(false) => shared.violation(format!("{label}: the file failed its integrity check")),
        Err(e) => shared.violation(format!("{label}: the integrity check failed: {e}")),
    }
    let violation = |text: String| shared.violation(format!("{label}: {text}"));
    let scopes: BTreeSet<String> = store
        .scopes()
        .unwrap_or_else(|e| panic!("{label}: cannot list scopes: {e}"))
        .into_iter()
        .collect();
    let mut accounts = lock(&shared.accounts);
    let mut logs: Vec<MutexGuard<'_, ClientLog>> = shared.logs.iter().map(lock).collect();
    for scope in &scopes {
        // A scope named with a leading control character is the host's own (an
        // account's alert log): no front end creates an account so named.
        if !accounts.entries.contains_key(scope) && !scope.starts_with('\u{1}') {
            violation(format!(
                "scope {scope:?} holds data, but no client created it"
            ));
        }
    }

    let mut held = BTreeMap::new();
    let mut newly_live = Vec::new();
    // Once markers present, by account: the ids the policy remembers as charged.
    let mut remembered: HashMap<String, HashSet<String>> = HashMap::new();
    let cost_of: HashMap<&str, (&str, u64)> = logs
        .iter()
        .flat_map(|log| log.messages.iter())
        .map(|(k, m)| (k.as_str(), (m.account.as_str(), m.cost)))
        .collect();
    for (name, entry) in accounts.entries.iter_mut() {
        let dump = store
            .export_scope(name)
            .unwrap_or_else(|e| panic!("{label}: cannot export {name}: {e}"));
        let plan = &PLANS[entry.plan];
        let record = dump.records.iter().find(|(k, _)| k == "account");
        match (entry.subscribed, record) {
            (Known::Yes, None) => {
                violation(format!("the acknowledged subscription {name} is lost"))
            }
            (Known::No, Some(_)) => violation(format!("{name} exists, but was never subscribed")),
            (Known::Maybe, found) => {
                entry.subscribed = if found.is_some() {
                    newly_live.push(name.clone());
                    Known::Yes
                } else {
                    Known::No
                };
            }
            _ => {}
        }
        let Some((_, record)) = record else {
            if dump != creditgate::store::ScopeDump::default() {
                violation(format!("{name} holds data without an account: {dump:?}"));
            }
            continue;
        };
        if record.split_once(' ').map(|(_, p)| p) != Some(plan.name) {
            violation(format!(
                "{name}'s record is {record:?}, not on plan {}",
                plan.name
            ));
        }

        // Email credits: each counter is the sum of the costs of the messages its
        // cycle remembers, so a charge is counted with its id or not at all. A
        // message id is one key `msg/<id>`, expiring at the end of the cycle that
        // charged it plus the grace: the expiry names the cycle.
        let mut by_cycle: BTreeMap<u64, u64> = BTreeMap::new();
        let ids = remembered.entry(name.clone()).or_default();
        // `<anchor> <plan>`, or `<anchor>/<newest cycle> <plan>` once a later
        // cycle has been charged.
        let anchor = record
            .split_once(' ')
            .and_then(|(head, _)| head.split('/').next())
            .and_then(|anchor| anchor.parse::<i64>().ok());
        for (key, expires_at, _) in &dump.once {
            let Some(id) = key.strip_prefix("msg/") else {
                violation(format!("{name}: a once key not of a message: {key:?}"));
                continue;
            };
            let Some(cycle) = anchor.and_then(|anchor| charging_cycle(anchor, *expires_at)) else {
                violation(format!(
                    "{name}: {key:?} expires at {expires_at}, no cycle's end plus the grace"
                ));
                continue;
            };
            match cost_of.get(id) {
                Some((account, cost)) if *account == name.as_str() => {
                    *by_cycle.entry(cycle).or_default() += cost;
                    ids.insert(id.to_owned());
                }
                Some((account, _)) => {
                    violation(format!("{name} remembers {id}, a message of {account}"))
                }
                None => violation(format!("{name} remembers {id}, which nobody sent")),
            }
        }
        let mut counters: BTreeMap<u64, u64> = BTreeMap::new();
        for (counter, value, _) in &dump.counters {
            match counter
                .strip_prefix("email/")
                .and_then(|c| c.parse::<u64>().ok())
            {
                Some(cycle) => {
                    counters.insert(cycle, *value);
                }
                None => violation(format!("{name}: an unexpected counter {counter:?}")),
            }
        }
        for cycle in by_cycle
            .keys()
            .chain(counters.keys())
            .collect::<BTreeSet<_>>()
        {
            let (used, charged) = (
                counters.get(cycle).copied().unwrap_or(0),
                by_cycle.get(cycle).copied().unwrap_or(0),
            );
            if used != charged {
                violation(format!(
                    "{name}, cycle {cycle}: {used} email credits used, but the messages it \
                     remembers cost {charged}"
                ));
            }
            if used > plan.emails && plan.shadow {
                report.shadow_over += 1;
            }
            if used > plan.email_cap() {
                violation(format!(
                    "{name}: {used} email credits used, past {}",
                    plan.emails
                ));
            }
        }

        // Email alerts (the policy's default thresholds, 80% and 100%): usage only
        // grows within a cycle, and only the request that crosses a threshold
        // fires its alert (a retry charges nothing), so each is logged exactly
        // once if reached and never if not, whatever was in flight at a kill.
        let used = counters.last_key_value().map_or(0, |(_, v)| *v);
        let mut fired: BTreeMap<u8, u64> = BTreeMap::new();
        for alert in creditgate::alerts::list(&store, Some(name))
            .unwrap_or_else(|e| panic!("{label}: the alert log of {name}: {e}"))
            .iter()
            .filter(|a| a.credit == "email_credits")
        {
            *fired.entry(alert.threshold).or_default() += 1;
        }
        for threshold in [80, 100] {
            let reached = used >= (plan.emails * u64::from(threshold)).div_ceil(100).max(1);
            match (reached, fired.remove(&threshold).unwrap_or(0)) {
                (_, n @ 2..) => violation(format!(
                    "{name}: the {threshold}% email alert is logged {n} times"
                )),
                (false, 1) => violation(format!(
                    "{name}: the {threshold}% email alert is logged, but only {used} of {} \
                     credits are used",
                    plan.emails
                )),
                (true, 0) => violation(format!(
                    "{name}: {used} of {} email credits used, but the {threshold}% alert is \
                     not logged: lost with the crash",
                    plan.emails
                )),
                (true, 1) => report.alerts_logged += 1,
                (false, _) => {}
            }
        }
        for threshold in fired.keys() {
            violation(format!(
                "{name}: an email alert at {threshold}%, no threshold of the policy"
            ));
        }

        // Lead credits: the count is the number of distinct contacts held, within
        // the limit, and each campaign lists the same contacts either way.
        let memberships: BTreeSet<(String, String)> = dump.memberships.iter().cloned().collect();
        let distinct: BTreeSet<&String> = memberships.iter().map(|(_, c)| c).collect();
        let count = store
            .member_count(name)
            .unwrap_or_else(|e| panic!("{label}: member count of {name}: {e}"));
        if count != distinct.len() as u64 {
            violation(format!(
                "{name}: {count} lead credits used, but its campaigns hold {} distinct contacts",
                distinct.len()
            ));
        }
        if count > plan.lead_cap() {
            violation(format!(
                "{name}: {count} lead credits used, past {}",
                plan.leads
            ));
        }
        let campaigns: BTreeSet<&String> = memberships.iter().map(|(g, _)| g).collect();
        for campaign in campaigns {
            let mut listed = BTreeSet::new();
            store
                .visit_members(name, Some(campaign), &mut |g, c| {
                    listed.insert((g.to_owned(), c.to_owned()));
                    true
                })
                .unwrap_or_else(|e| panic!("{label}: listing {name}/{campaign}: {e}"));
            let expected: BTreeSet<(String, String)> = memberships
                .iter()
                .filter(|(g, _)| g == campaign)
                .cloned()
                .collect();
            if listed != expected {
                violation(format!(
                    "{name}/{campaign} lists {listed:?}, holds {expected:?}"
                ));
            }
            match owner(campaign) {
                Some(client) => {
                    let known = logs[client].leads.get(&(name.clone(), campaign.clone()));
                    for (_, contact) in memberships.iter().filter(|(g, _)| g == campaign) {
                        let state = known.and_then(|m| m.get(contact)).copied();
                        if !matches!(state, Some(Known::Yes | Known::Maybe)) {
                            violation(format!(
                                "{contact} is in {name}/{campaign}, which no addition put there \
                                 or an acknowledged deletion removed it from"
                            ));
                        }
                    }
                }
                None => violation(format!("{name} has a campaign nobody made: {campaign:?}")),
            }
        }
        held.insert(
            name.clone(),
            Held {
                plan: plan.name.to_owned(),
                emails: counters.last_key_value().map_or(0, |(_, v)| *v),
                emails_all: counters.values().sum(),
                leads: count,
                memberships,
            },
        );
    }
    accounts.live.extend(newly_live);
    drop(accounts);

    // The bounds the acknowledged side sets: charges acknowledged ≤ credits used ≤
    // those + charges in flight (the exact check per message follows).
    let mut bounds: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for log in &logs {
        for m in log.messages.values() {
            let b = bounds.entry(m.account.as_str()).or_default();
            match m.charged {
                Known::Yes => (b.0, b.1) = (b.0 + m.cost, b.1 + m.cost),
                Known::Maybe => b.1 += m.cost,
                Known::No => {}
            }
        }
    }
    for (name, h) in &held {
        let (floor, ceiling) = bounds.get(name.as_str()).copied().unwrap_or_default();
        if h.emails_all < floor || h.emails_all > ceiling {
            violation(format!(
                "{name}: {} email credits used; acknowledged charges {floor}, with those in \
                 flight {ceiling}",
                h.emails_all
            ));
        }
    }
    drop(bounds);

    // The oracle against the image, and what was in flight settled by it.
    let none = BTreeSet::new();
    for log in logs.iter_mut() {
        let log = &mut **log;
        for (id, message) in log.messages.iter_mut() {
            let present = remembered
                .get(&message.account)
                .is_some_and(|ids| ids.contains(id));
            match (message.charged, present) {
                (Known::Yes, false) => {
                    violation(format!("the acknowledged charge of {id} is lost"))
                }
                (Known::No, true) => violation(format!(
                    "{id} is charged, but was never allowed (denied, or not yet sent)"
                )),
                (Known::Maybe, true) => {
                    report.settled_applied += 1;
                    message.charged = Known::Yes;
                }
                (Known::Maybe, false) => {
                    report.settled_not_applied += 1;
                    message.charged = Known::No;
                }
                _ => {}
            }
        }
        for ((account, campaign), contacts) in log.leads.iter_mut() {
            let members = held.get(account).map_or(&none, |h| &h.memberships);
            for (contact, state) in contacts.iter_mut() {
                let present = members.contains(&(campaign.clone(), contact.clone()));
                match (*state, present) {
                    (Known::Yes, false) => violation(format!(
                        "the acknowledged addition of {contact} to {account}/{campaign} is lost"
                    )),
                    (Known::No, true) => {} // reported above, from the image's side
                    (Known::Maybe, present) => {
                        if present {
                            report.settled_applied += 1;
                            *state = Known::Yes;
                        } else {
                            report.settled_not_applied += 1;
                            *state = Known::No;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    drop(logs);
    drop(store);
    held
}

/// After a restart: the server reports what the image holds, for a sample of
/// accounts (the newest, which the load uses most, and a few others).
pub(super) fn compare_usage(
    serve: &Serve,
    held: &BTreeMap<String, Held>,
    rng: &mut Rng,
    shared: &Shared,
) {
    let probe = api(format!("http://{}", serve.http));
    let names: Vec<&String> = held.keys().collect();
    let mut sample: BTreeSet<&String> = names.iter().rev().take(8).copied().collect();
    for _ in 0..4.min(names.len()) {
        sample.insert(names[rng.index(names.len())]);
    }
    for name in sample {
        let h = &held[name];
        let path = format!("/v1/accounts/{name}/usage");
        match http(&probe, "GET", &path, None) {
            Ok((200, v)) => {
                let (emails, leads) = (
                    v["email_credits"]["used"].as_u64(),
                    v["lead_credits"]["used"].as_u64(),
                );
                if (emails, leads) != (Some(h.emails), Some(h.leads)) || v["plan"] != h.plan {
                    shared.violation(format!(
                        "after the restart, {name} reports {v}; the image holds {} email and \
                         {} lead credits used on {}",
                        h.emails, h.leads, h.plan
                    ));
                }
            }
            other => shared.violation(format!("after the restart, usage of {name}: {other:?}")),
        }
    }
}

/// The checks have teeth: the final file, changed behind the server's back (an
/// acknowledged charge forgotten, a contact nobody added), must fail them.
pub(super) fn check_the_checker(files: &Files, held: &BTreeMap<String, Held>, shared: &Shared) {
    let Some((name, _)) = held.iter().find(|(_, h)| h.emails > 0) else {
        panic!("no account was charged anything");
    };
    let store = RedbStore::open(&files.store).expect("the final file opens");
    let mut dump = store.export_scope(name).expect("exports");
    assert!(
        !dump.once.is_empty(),
        "{name} was charged, so remembers a message"
    );
    let forgotten = dump.once.remove(0).0;
    let intruder = "intruder@tampered.example.com";
    dump.memberships.push(("c0a".into(), intruder.into()));
    store.import_scope(name, &dump).expect("imports");
    drop(store);
    let label = "self-check on a file tampered with on purpose (these are expected)";
    let before = std::mem::take(&mut *lock(&shared.violations));
    check_image(&files.store, label, shared, &mut Report::default());
    let found = std::mem::replace(&mut *lock(&shared.violations), before);
    let id = forgotten.strip_prefix("msg/").unwrap_or("");
    let caught = |what: &str, needle: &str| {
        assert!(
            found.iter().any(|v| v.contains(needle)),
            "the checks missed {what} ({forgotten:?} in {name}): {found:#?}"
        );
    };
    caught(
        "a lost acknowledged charge",
        &format!("charge of {id} is lost"),
    );
    caught(
        "a counter that disagrees with its messages",
        "the messages it remembers cost",
    );
    caught("a contact no request added", intruder);
}

/// The operator's view of the final file agrees with the image check.
pub(super) fn check_through_the_cli(
    files: &Files,
    held: &BTreeMap<String, Held>,
    rng: &mut Rng,
    shared: &Shared,
) {
    let listed = files.cli(&["account", "list", "--format", "json"]);
    let rows = listed.as_array().cloned().unwrap_or_default();
    let names: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["account"].as_str().map(str::to_owned))
        .collect();
    if names != held.keys().cloned().collect() {
        shared.violation(format!(
            "account list names {names:?}; the file holds {:?}",
            held.keys().collect::<Vec<_>>()
        ));
    }
    for row in &rows {
        let Some(h) = row["account"].as_str().and_then(|a| held.get(a)) else {
            continue;
        };
        if row["email_credits"]["used"] != h.emails || row["lead_credits"]["used"] != h.leads {
            shared.violation(format!(
                "account list says {row}; the file holds {} email and {} lead credits used",
                h.emails, h.leads
            ));
        }
    }
    // `leads list` and `usage` start the component once each: a sample, the busiest
    // accounts first.
    let mut busiest: Vec<(&String, &Held)> = held.iter().collect();
    busiest.sort_by_key(|(_, h)| std::cmp::Reverse(h.memberships.len()));
    let mut sample: Vec<&String> = busiest.iter().take(4).map(|(n, _)| *n).collect();
    if !busiest.is_empty() {
        sample.push(busiest[rng.index(busiest.len())].0);
    }
    for name in sample {
        let h = &held[name];
        let leads = files.cli(&["leads", "list", "--account", name, "--format", "json"]);
        let listed: BTreeSet<(String, String)> = leads
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| {
                (
                    l["campaign"].as_str().unwrap_or_default().to_owned(),
                    l["email"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let distinct: BTreeSet<&String> = listed.iter().map(|(_, e)| e).collect();
        if listed != h.memberships || distinct.len() as u64 != h.leads {
            shared.violation(format!(
                "leads list of {name}: {listed:?}; the file holds {:?} ({} lead credits used)",
                h.memberships, h.leads
            ));
        }
        let usage = files.cli(&["usage", name, "--format", "json"]);
        if usage["email_credits"]["used"] != h.emails || usage["lead_credits"]["used"] != h.leads {
            shared.violation(format!(
                "usage {name}: {usage}; the file holds {} email and {} lead credits used",
                h.emails, h.leads
            ));
        }
    }
}

//! The crash test: `creditgate serve` on a redb file under concurrent load (HTTP
//! and the Postfix protocol), killed with SIGKILL at random moments, some of them
//! during start-up and recovery, and restarted on the same file, many times over.
//!
//! What it proves, against the oracle (the clients' log of every answer they got):
//!
//! - every crash image opens and passes redb's integrity check, and `serve` comes
//!   back on it, reporting the same usage the image holds;
//! - nothing acknowledged is lost: an acknowledged subscription, email charge
//!   (HTTP `message_id` or Postfix `instance`), lead addition or deletion is in
//!   every later image, and a message acknowledged once is answered "allowed,
//!   nothing charged" when retried, across any number of restarts;
//! - nothing is applied that no request asked for, and a request in flight at a
//!   kill (or answered with an error) is applied whole or not at all, and once:
//!   each account's email counter is exactly the sum of the costs of the message
//!   ids it remembers, and lies between the acknowledged charges and those plus
//!   the charges in flight; its lead count is exactly the number of distinct
//!   contacts its campaigns hold;
//! - no account ever has more credits used than its plan allows, except on the
//!   plan in shadow mode (issue 17.4), which is let through past its limits and
//!   never refused for credits, and whose charges are as exact as the others';
//! - an email alert is logged once per threshold reached, never for one not
//!   reached: a charge that crossed it is never kept without its alert.
//!
//! Each kill's image is copied before `serve` restarts (a SIGKILL loses no page
//! the process wrote, so the copy is the bytes the restart recovers) and checked
//! in this process with [`RedbStore`]. What was in flight at the kill is then known,
//! so the oracle is exact again before the load resumes. The end of the run stops
//! `serve` with SIGTERM and checks the file through the CLI as well.
//!
//! CI runs a few kills (`CREDITGATE_CRASH_KILLS`, default 12). The long run:
//!
//! ```text
//! CREDITGATE_CRASH_KILLS=200 cargo test --release -p creditgate --test it -- crash --nocapture
//! ```
//!
//! `CREDITGATE_CRASH_SEED` repeats a run's choices (operations, kill moments); the
//! interleaving of threads is the machine's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use creditgate::store::{RedbStore, Store, journal_path};
use creditgate_testkit::serve::ServeProcess;

/// Client threads, each with its own HTTP agent and Postfix connection.
const CLIENTS: usize = 6;

/// Decision workers of the server: more than the cores, as in production.
const WORKERS: &str = "3";

/// Contacts each account's campaigns draw from: twice the small plan's lead
/// credits, so that campaigns share contacts and additions hit the limit.
const POOL: u64 = 16;

/// Bounds every wait on the server or the clients: a hang fails the test.
const WAIT: Duration = Duration::from_secs(90);

/// One request's bound. A client whose request fails stops until the next kill, so
/// a slow request is never retried while the server may still be deciding it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Retries of acknowledged messages per client in the last phase.
const SWEEP: usize = 60;

struct Plan {
    name: &'static str,
    leads: u64,
    emails: u64,
    /// In shadow mode: let through past its limits, and counted.
    shadow: bool,
}

impl Plan {
    /// The most email credits an account on this plan may have used.
    fn email_cap(&self) -> u64 {
        if self.shadow { u64::MAX } else { self.emails }
    }

    /// The most lead credits an account on this plan may have used.
    fn lead_cap(&self) -> u64 {
        if self.shadow { u64::MAX } else { self.leads }
    }
}

/// Small limits, so that accounts run out while the load goes on.
const PLANS: [Plan; 3] = [
    Plan {
        name: "small",
        leads: 8,
        emails: 25,
        shadow: false,
    },
    Plan {
        name: "roomy",
        leads: 40,
        emails: 150,
        shadow: false,
    },
    Plan {
        name: "trial",
        leads: 8,
        emails: 25,
        shadow: true,
    },
];

fn policy_toml() -> String {
    PLANS
        .iter()
        .map(|p| {
            format!(
                "[plans.{}]\nlead_credits = {}\nemail_credits = {}\n{}",
                p.name,
                p.leads,
                p.emails,
                if p.shadow { "mode = \"shadow\"\n" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `account` is on the plan in shadow mode, as far as the oracle knows.
fn in_shadow(shared: &Shared, account: &str) -> bool {
    lock(&shared.accounts)
        .entries
        .get(account)
        .is_some_and(|e| PLANS[e.plan].shadow)
}

/// Without this, Postfix would hear `DUNNO` for an unknown account too, and an
/// allowed charge could not be told from an account lost in a crash.
const SERVE_CONFIG: &str = "[postfix.actions]\nunknown_account = \"fail_closed\"\n";

/// SplitMix64: a seeded generator in a few lines, so that a failing run's seed
/// replays its choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

/// What the oracle knows of an effect: applied, not applied, or asked for by a
/// request that got no decision (in flight at a kill, or answered with an error),
/// which the next crash image settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Yes,
    No,
    Maybe,
}

#[derive(Debug, Clone)]
enum Via {
    Http { to: Vec<String> },
    Postfix { instance: String },
}

/// One message: its id as the policy keys its charge on, the account, the cost
/// (distinct recipients; every kind costs one), and whether it is charged.
#[derive(Debug)]
struct Message {
    account: String,
    cost: u64,
    via: Via,
    charged: Known,
}

/// Counts of what the clients saw.
#[derive(Debug, Default, Clone)]
struct Stats {
    /// Requests answered with a decision that may change state.
    decisions: u64,
    /// Of those, allowed (a lead batch counts as allowed).
    allowed: u64,
    /// Emails refused for want of credits.
    emails_exhausted: u64,
    /// Contacts refused for want of lead credits.
    leads_exhausted: u64,
    /// Retries of a message already acknowledged, answered "nothing charged".
    retries_free: u64,
    /// Read-only answers: RCPT checks and usage.
    checks: u64,
    /// Requests answered without a decision (an error status or reply).
    errors: u64,
    /// Requests that got no answer: in flight when the server was killed.
    in_flight: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.decisions += o.decisions;
        self.allowed += o.allowed;
        self.emails_exhausted += o.emails_exhausted;
        self.leads_exhausted += o.leads_exhausted;
        self.retries_free += o.retries_free;
        self.checks += o.checks;
        self.errors += o.errors;
        self.in_flight += o.in_flight;
    }
}

/// One client's share of the oracle. A client alone sends its messages and
/// touches its campaigns (`c{id}a`, `c{id}b` in every account), one request at a
/// time, so the order of its answers is the order of their effects.
#[derive(Default)]
struct ClientLog {
    seq: u64,
    /// By the id the policy remembers: `http/{message_id}`, or `postfix/{instance}`.
    messages: BTreeMap<String, Message>,
    order: Vec<String>,
    /// `(account, campaign)` → contact → in the campaign?
    leads: BTreeMap<(String, String), BTreeMap<String, Known>>,
    stats: Stats,
}

impl ClientLog {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

struct AccountEntry {
    plan: usize,
    subscribed: Known,
}

#[derive(Default)]
struct Accounts {
    entries: BTreeMap<String, AccountEntry>,
    /// Subscribed accounts, oldest first: the ones the load uses.
    live: Vec<String>,
}

/// What the main thread tells the clients.
#[derive(Default)]
struct Control {
    epoch: u64,
    running: bool,
    sweep: bool,
    finished: bool,
    parked: usize,
    http: String,
    postfix: Option<SocketAddr>,
}

struct Shared {
    accounts: Mutex<Accounts>,
    logs: Vec<Mutex<ClientLog>>,
    control: Mutex<Control>,
    changed: Condvar,
    violations: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new() -> Self {
        Shared {
            accounts: Mutex::default(),
            logs: (0..CLIENTS).map(|_| Mutex::default()).collect(),
            control: Mutex::default(),
            changed: Condvar::new(),
            violations: Mutex::default(),
        }
    }

    fn violation(&self, text: String) {
        eprintln!("crash test: VIOLATION: {text}");
        lock(&self.violations).push(text);
    }

    fn running(&self) -> bool {
        let control = lock(&self.control);
        control.running && !control.finished
    }

    /// Lets the clients go on the server at `http` and `postfix`.
    fn release(&self, http: SocketAddr, postfix: SocketAddr, sweep: bool) {
        let mut control = lock(&self.control);
        control.epoch += 1;
        control.running = true;
        control.sweep = sweep;
        control.parked = 0;
        control.http = format!("http://{http}");
        control.postfix = Some(postfix);
        drop(control);
        self.changed.notify_all();
    }

    /// Stops the clients and waits until every one has parked.
    fn park_all(&self) {
        let mut control = lock(&self.control);
        control.running = false;
        self.changed.notify_all();
        let deadline = Instant::now() + WAIT;
        while control.parked < CLIENTS {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the clients did not stop within {WAIT:?}");
            control = self
                .changed
                .wait_timeout(control, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits (bounded) until every client parked by itself (the sweep's end).
    fn wait_parked(&self) {
        let mut control = lock(&self.control);
        let deadline = Instant::now() + 4 * WAIT;
        while control.parked < CLIENTS {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the clients' last phase did not end");
            control = self
                .changed
                .wait_timeout(control, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        control.running = false;
    }
}

/// Ends the clients however the main thread leaves the scope, a panic included,
/// so that the scope's join does not wait for them forever.
struct EndClients<'a>(&'a Shared);

impl Drop for EndClients<'_> {
    fn drop(&mut self) {
        lock(&self.0.control).finished = true;
        self.0.changed.notify_all();
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// One HTTP request: its status and JSON body, or why no answer came.
fn http(
    agent: &ureq::Agent,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let url = format!("{base}{path}");
    let sent = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        ("POST", Some(body)) => agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string()),
        _ => return Err(format!("no such request in this test: {method} {path}")),
    };
    let mut response = sent.map_err(|e| format!("{method} {path}: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// A Postfix policy request, with every attribute Postfix sends.
fn policy_request(state: &str, account: &str, extra: &[(&str, String)]) -> String {
    let mut text = format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
         client_address=127.0.0.1\nsasl_username={account}\nsender=al@example.com\n\
         recipient=bo@example.org\n"
    );
    for (name, value) in extra {
        text.push_str(&format!("{name}={value}\n"));
    }
    text.push('\n');
    text
}

fn contact(j: u64) -> String {
    format!("lead{j}@d{}.example.com", j % 3)
}

/// How a step ended: go on, or stop until the next phase (no answer came, so the
/// server may still be deciding the request, or is gone).
enum Flow {
    Go,
    Lost,
}

/// Counts a request that got no decision: an error answer (the server finished
/// with it, so the client goes on), or none (it may still be deciding, or be gone).
fn undecided(
    stats: &mut Stats,
    answer: &Result<(u16, Value), String>,
    account: &str,
    problems: &mut Vec<String>,
) -> Flow {
    match answer {
        Ok((404, v)) => {
            problems.push(format!("{account} is unknown: {v}"));
            stats.errors += 1;
            Flow::Go
        }
        Ok((status, v)) => {
            eprintln!("crash test: client: answered without a decision: {status} {v}");
            stats.errors += 1;
            Flow::Go
        }
        Err(_) => {
            stats.in_flight += 1;
            Flow::Lost
        }
    }
}

/// The answer to a charge, as either front end gives it.
enum Charge {
    /// Allowed; HTTP says what it charged, Postfix does not.
    Allowed {
        charged: Option<u64>,
        used: Option<u64>,
    },
    Denied(String),
    /// Answered, but without a decision.
    Failed(String),
    /// No answer.
    Lost,
}

/// One client during one phase.
struct Client<'s> {
    id: usize,
    shared: &'s Shared,
    agent: ureq::Agent,
    base: String,
    postfix: SocketAddr,
    stream: Option<TcpStream>,
}

fn client_loop(id: usize, shared: &Shared, seed: u64) {
    let mut rng = Rng(seed);
    let mut served = 0;
    loop {
        let (base, postfix, sweep) = {
            let mut control = lock(&shared.control);
            // No deadline: the main thread ends the phase, and `EndClients` ends
            // the loop if it fails. A phase already stopped when this client wakes
            // is still joined (and left at once), so that the client parks in it.
            while !(control.finished || control.epoch > served) {
                control = shared
                    .changed
                    .wait(control)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if control.finished {
                return;
            }
            served = control.epoch;
            let Some(postfix) = control.postfix else {
                return;
            };
            (control.http.clone(), postfix, control.sweep)
        };
        // A fresh agent each phase: connections pooled before a kill are dead.
        let mut client = Client {
            id,
            shared,
            agent: agent(REQUEST_TIMEOUT),
            base,
            postfix,
            stream: None,
        };
        if sweep {
            client.sweep(&mut rng);
        } else {
            while shared.running() {
                if let Flow::Lost = client.step(&mut rng) {
                    break;
                }
            }
        }
        lock(&shared.control).parked += 1;
        shared.changed.notify_all();
    }
}

impl Client<'_> {
    fn log(&self) -> MutexGuard<'_, ClientLog> {
        lock(&self.shared.logs[self.id])
    }

    fn violation(&self, text: String) {
        self.shared.violation(format!("client {}: {text}", self.id));
    }

    /// Reports what a step found, once its log is unlocked.
    fn finish(&self, problems: Vec<String>, flow: Flow) -> Flow {
        for p in problems {
            self.violation(p);
        }
        flow
    }

    fn step(&mut self, rng: &mut Rng) -> Flow {
        let Some((account, plan)) = self.pick_account(rng) else {
            return self.subscribe(rng);
        };
        match rng.below(100) {
            0..30 => self.send_new(rng, &account),
            30..45 => self.charge_new(rng, &account),
            45..55 => self.retry(rng),
            55..73 => self.add_leads(rng, &account, plan),
            73..83 => self.delete_lead(rng, &account),
            83..87 => self.delete_campaign(rng, &account),
            87..92 => self.rcpt(&account),
            92..98 => self.usage(&account, plan),
            _ => self.subscribe(rng),
        }
    }

    /// Mostly one of the newest accounts, so that clients race for their credits.
    fn pick_account(&self, rng: &mut Rng) -> Option<(String, usize)> {
        let accounts = lock(&self.shared.accounts);
        let live = &accounts.live;
        if live.is_empty() {
            return None;
        }
        let i = if rng.chance(85) {
            live.len() - 1 - rng.index(live.len().min(8))
        } else {
            rng.index(live.len())
        };
        let name = live[i].clone();
        let plan = accounts.entries.get(&name).map_or(0, |e| e.plan);
        Some((name, plan))
    }

    fn campaign(&self, rng: &mut Rng) -> String {
        format!("c{}{}", self.id, if rng.chance(50) { "a" } else { "b" })
    }

    fn send_new(&mut self, rng: &mut Rng, account: &str) -> Flow {
        let cost = rng.between(1, 3);
        let (key, to) = {
            let mut log = self.log();
            let seq = log.next_seq();
            let key = format!("http/<m{}.{seq}@crash>", self.id);
            let to: Vec<String> = (0..cost)
                .map(|k| format!("r{}-{seq}-{k}@to.example.com", self.id))
                .collect();
            let message = Message {
                account: account.to_owned(),
                cost,
                via: Via::Http { to: to.clone() },
                charged: Known::No,
            };
            log.messages.insert(key.clone(), message);
            log.order.push(key.clone());
            (key, to)
        };
        self.send_http(rng, &key, account, &to)
    }

    fn charge_new(&mut self, rng: &mut Rng, account: &str) -> Flow {
        let cost = rng.between(1, 3);
        let (key, instance) = {
            let mut log = self.log();
            let seq = log.next_seq();
            let instance = format!("c{}.{seq}", self.id);
            let key = format!("postfix/{instance}");
            let message = Message {
                account: account.to_owned(),
                cost,
                via: Via::Postfix {
                    instance: instance.clone(),
                },
                charged: Known::No,
            };
            log.messages.insert(key.clone(), message);
            log.order.push(key.clone());
            (key, instance)
        };
        self.charge_postfix(&key, account, cost, &instance, false)
    }

    /// The same message again: Postfix retries a request (possibly on another
    /// connection), a platform retries a send.
    fn retry(&mut self, rng: &mut Rng) -> Flow {
        let picked = {
            let log = self.log();
            if log.order.is_empty() {
                None
            } else {
                let n = log.order.len();
                let i = if rng.chance(50) {
                    n - 1 - rng.index(n.min(20))
                } else {
                    rng.index(n)
                };
                let key = log.order[i].clone();
                log.messages
                    .get(&key)
                    .map(|m| (key, m.account.clone(), m.cost, m.via.clone()))
            }
        };
        let Some((key, account, cost, via)) = picked else {
            return Flow::Go;
        };
        self.resend(rng, &key, &account, cost, &via)
    }

    fn resend(&mut self, rng: &mut Rng, key: &str, account: &str, cost: u64, via: &Via) -> Flow {
        match via {
            Via::Http { to } => self.send_http(rng, key, account, to),
            Via::Postfix { instance } => {
                let fresh = rng.chance(50);
                self.charge_postfix(key, account, cost, instance, fresh)
            }
        }
    }

    fn send_http(&mut self, rng: &mut Rng, key: &str, account: &str, to: &[String]) -> Flow {
        let kind = ["first", "follow_up", "reply"][rng.index(3)];
        // The API keeps its ids under `http/` (issue 14.3).
        let id = key.strip_prefix("http/").unwrap_or(key);
        let body = json!({"account": account, "to": to, "kind": kind, "message_id": id});
        let answer = match http(
            &self.agent,
            &self.base,
            "POST",
            "/v1/decide/email",
            Some(&body),
        ) {
            Ok((200, v)) if v["decision"] == "allow" => Charge::Allowed {
                charged: v["charged"].as_u64(),
                used: v["email_credits"]["used"].as_u64(),
            },
            Ok((200, v)) if v["decision"] == "deny" => {
                Charge::Denied(v["reason"].as_str().unwrap_or("?").to_owned())
            }
            Ok((status, v)) => Charge::Failed(format!("{status} {v}")),
            Err(_) => Charge::Lost,
        };
        self.charged(key, answer)
    }

    fn charge_postfix(
        &mut self,
        key: &str,
        account: &str,
        cost: u64,
        instance: &str,
        fresh: bool,
    ) -> Flow {
        let request = policy_request(
            "END-OF-MESSAGE",
            account,
            &[
                ("recipient_count", cost.to_string()),
                ("instance", instance.to_owned()),
            ],
        );
        let answer = match self.ask_postfix(&request, fresh) {
            Ok(action) if action == "DUNNO" => Charge::Allowed {
                charged: None,
                used: None,
            },
            Ok(action) if action.starts_with("DEFER 4.7.1 Email credits exhausted") => {
                Charge::Denied("email_credits_exhausted".into())
            }
            Ok(action) if action.contains("account unknown") => {
                Charge::Denied("unknown_account".into())
            }
            Ok(action) => Charge::Failed(action),
            Err(_) => Charge::Lost,
        };
        self.charged(key, answer)
    }

    /// Checks a charge's answer against what is known of the message, and records it.
    fn charged(&self, key: &str, answer: Charge) -> Flow {
        let limit = |account: &str| {
            let accounts = lock(&self.shared.accounts);
            accounts
                .entries
                .get(account)
                .map_or(0, |e| PLANS[e.plan].email_cap())
        };
        let mut problems = Vec::new();
        let mut guard = self.log();
        let log = &mut *guard;
        let Some(message) = log.messages.get_mut(key) else {
            return Flow::Go;
        };
        let before = message.charged;
        let flow = match answer {
            Charge::Allowed { charged, used } => {
                log.stats.decisions += 1;
                log.stats.allowed += 1;
                match (before, charged) {
                    (Known::Yes, Some(c)) if c != 0 => problems.push(format!(
                        "{key} was acknowledged before and was charged {c} again"
                    )),
                    (Known::Yes, _) => log.stats.retries_free += 1,
                    (Known::No, Some(c)) if c != message.cost => problems.push(format!(
                        "{key}, never charged, was allowed charging {c} (cost {})",
                        message.cost
                    )),
                    (Known::Maybe, Some(c)) if c != 0 && c != message.cost => problems.push(
                        format!("{key} was allowed charging {c} (cost {})", message.cost),
                    ),
                    _ => {}
                }
                let limit = limit(&message.account);
                if let Some(used) = used.filter(|&u| u > limit) {
                    problems.push(format!(
                        "{} reported {used} email credits used, past its limit {limit}",
                        message.account
                    ));
                }
                message.charged = Known::Yes;
                Flow::Go
            }
            Charge::Denied(reason) => {
                log.stats.decisions += 1;
                if reason == "email_credits_exhausted" && in_shadow(self.shared, &message.account) {
                    problems.push(format!(
                        "{key} of {}, whose plan is in shadow, was refused for credits",
                        message.account
                    ));
                } else if reason == "email_credits_exhausted" {
                    log.stats.emails_exhausted += 1;
                } else {
                    problems.push(format!("{key} was denied {reason}"));
                }
                if before == Known::Yes {
                    problems.push(format!(
                        "{key} was acknowledged, then denied ({reason}) when retried: its \
                         charge is not remembered"
                    ));
                }
                message.charged = Known::No;
                Flow::Go
            }
            Charge::Failed(what) => {
                log.stats.errors += 1;
                eprintln!("crash test: client: {key}: answered without a decision: {what}");
                if before != Known::Yes {
                    message.charged = Known::Maybe;
                }
                Flow::Go
            }
            Charge::Lost => {
                log.stats.in_flight += 1;
                if before != Known::Yes {
                    message.charged = Known::Maybe;
                }
                Flow::Lost
            }
        };
        drop(guard);
        self.finish(problems, flow)
    }

    fn add_leads(&mut self, rng: &mut Rng, account: &str, plan: usize) -> Flow {
        let campaign = self.campaign(rng);
        let size = if rng.chance(5) { 12 } else { rng.between(1, 6) };
        let mut picked = BTreeSet::new();
        while (picked.len() as u64) < size {
            picked.insert(rng.below(POOL));
        }
        let emails: Vec<String> = picked.into_iter().map(contact).collect();
        let path = format!("/v1/accounts/{account}/campaigns/{campaign}/leads");
        let answer = http(
            &self.agent,
            &self.base,
            "POST",
            &path,
            Some(&json!({ "emails": emails })),
        );
        let mut problems = Vec::new();
        let mut guard = self.log();
        let log = &mut *guard;
        let held = log
            .leads
            .entry((account.to_owned(), campaign.clone()))
            .or_default();
        let flow = match answer {
            Ok((200, v)) => {
                log.stats.decisions += 1;
                log.stats.allowed += 1;
                let results = v["results"].as_array().cloned().unwrap_or_default();
                if results.len() != emails.len() {
                    problems.push(format!("a batch of {} answered {v}", emails.len()));
                }
                for (email, result) in emails.iter().zip(&results) {
                    let state = held.entry(email.clone()).or_insert(Known::No);
                    let outcome = result["outcome"].as_str().unwrap_or("?");
                    match outcome {
                        "uploaded" | "in_other_campaign" if *state == Known::Yes => {
                            problems.push(format!(
                                "{email} was acknowledged in {account}/{campaign}, but a new \
                                 addition says {outcome}: the acknowledged one was lost"
                            ))
                        }
                        "already_in_campaign" if *state == Known::No => problems.push(format!(
                            "{email} is already_in_campaign {account}/{campaign}, where no \
                             addition put it or an acknowledged deletion removed it"
                        )),
                        "lead_credits_exhausted" if *state == Known::Yes => problems.push(format!(
                            "{email} in {account}/{campaign} was refused re-adding"
                        )),
                        "uploaded" | "in_other_campaign" | "already_in_campaign" => {}
                        "lead_credits_exhausted" if PLANS[plan].shadow => problems.push(format!(
                            "{email} was refused for credits in {account}, whose plan is in shadow"
                        )),
                        "lead_credits_exhausted" => log.stats.leads_exhausted += 1,
                        other => problems.push(format!("{email}: unexpected outcome {other}")),
                    }
                    *state = if outcome == "lead_credits_exhausted" {
                        Known::No
                    } else {
                        Known::Yes
                    };
                }
                let used = v["lead_credits"]["used"].as_u64().unwrap_or(0);
                if used > PLANS[plan].lead_cap() {
                    problems.push(format!(
                        "{account} reported {used} lead credits used, past {}",
                        PLANS[plan].leads
                    ));
                }
                Flow::Go
            }
            other => {
                // Perhaps added: nothing this request could do removes a contact.
                for email in &emails {
                    let state = held.entry(email.clone()).or_insert(Known::No);
                    if *state == Known::No {
                        *state = Known::Maybe;
                    }
                }
                undecided(&mut log.stats, &other, account, &mut problems)
            }
        };
        drop(guard);
        self.finish(problems, flow)
    }

    fn delete_lead(&mut self, rng: &mut Rng, account: &str) -> Flow {
        let campaign = self.campaign(rng);
        let email = {
            let log = self.log();
            let held: Vec<&String> = log
                .leads
                .get(&(account.to_owned(), campaign.clone()))
                .map(|m| m.iter().filter(|(_, k)| **k != Known::No).map(|(e, _)| e))
                .into_iter()
                .flatten()
                .collect();
            if !held.is_empty() && rng.chance(70) {
                held[rng.index(held.len())].clone()
            } else {
                contact(rng.below(POOL))
            }
        };
        let path = format!("/v1/accounts/{account}/campaigns/{campaign}/leads/{email}");
        let answer = http(&self.agent, &self.base, "DELETE", &path, None);
        let mut problems = Vec::new();
        let mut guard = self.log();
        let log = &mut *guard;
        let state = log
            .leads
            .entry((account.to_owned(), campaign.clone()))
            .or_default()
            .entry(email.clone())
            .or_insert(Known::No);
        let flow = match answer {
            Ok((200, v)) if v["decision"] == "allow" => {
                log.stats.decisions += 1;
                log.stats.allowed += 1;
                let freed = v["freed"].as_u64().unwrap_or(u64::MAX);
                if freed > 1 || (freed == 1 && *state == Known::No) {
                    problems.push(format!(
                        "deleting {email} from {account}/{campaign} ({state:?} there) freed {freed}"
                    ));
                }
                *state = Known::No;
                Flow::Go
            }
            other => {
                if *state == Known::Yes {
                    *state = Known::Maybe;
                }
                undecided(&mut log.stats, &other, account, &mut problems)
            }
        };
        drop(guard);
        self.finish(problems, flow)
    }

    fn delete_campaign(&mut self, rng: &mut Rng, account: &str) -> Flow {
        let campaign = self.campaign(rng);
        let path = format!("/v1/accounts/{account}/campaigns/{campaign}/leads");
        let answer = http(&self.agent, &self.base, "DELETE", &path, None);
        let mut problems = Vec::new();
        let mut guard = self.log();
        let log = &mut *guard;
        let held = log
            .leads
            .entry((account.to_owned(), campaign.clone()))
            .or_default();
        let flow = match answer {
            Ok((200, v)) if v["decision"] == "allow" => {
                log.stats.decisions += 1;
                log.stats.allowed += 1;
                let could = held.values().filter(|k| **k != Known::No).count() as u64;
                let freed = v["freed"].as_u64().unwrap_or(u64::MAX);
                if freed > could {
                    problems.push(format!(
                        "clearing {account}/{campaign}, which held at most {could}, freed {freed}"
                    ));
                }
                held.values_mut().for_each(|k| *k = Known::No);
                Flow::Go
            }
            other => {
                for k in held.values_mut() {
                    if *k == Known::Yes {
                        *k = Known::Maybe;
                    }
                }
                undecided(&mut log.stats, &other, account, &mut problems)
            }
        };
        drop(guard);
        self.finish(problems, flow)
    }

    fn subscribe(&mut self, rng: &mut Rng) -> Flow {
        let plan = match rng.below(100) {
            0..25 => 1,
            25..40 => 2,
            _ => 0,
        };
        let name = format!("a{}-{}", self.id, self.log().next_seq());
        lock(&self.shared.accounts).entries.insert(
            name.clone(),
            AccountEntry {
                plan,
                subscribed: Known::No,
            },
        );
        let body = json!({ "plan": PLANS[plan].name });
        let path = format!("/v1/accounts/{name}/subscription");
        let answer = http(&self.agent, &self.base, "POST", &path, Some(&body));
        let (known, flow) = match &answer {
            Ok((201, _)) => (Known::Yes, Flow::Go),
            Ok((status, v)) => {
                if *status < 500 {
                    self.violation(format!("subscribing {name} answered {status} {v}"));
                }
                (Known::Maybe, Flow::Go)
            }
            Err(_) => (Known::Maybe, Flow::Lost),
        };
        {
            let mut log = self.log();
            match (&answer, &flow) {
                (Ok((201, _)), _) => {
                    log.stats.decisions += 1;
                    log.stats.allowed += 1;
                }
                (_, Flow::Lost) => log.stats.in_flight += 1,
                _ => log.stats.errors += 1,
            }
        }
        let mut accounts = lock(&self.shared.accounts);
        if let Some(entry) = accounts.entries.get_mut(&name) {
            entry.subscribed = known;
        }
        if known == Known::Yes {
            accounts.live.push(name);
        }
        flow
    }

    fn rcpt(&mut self, account: &str) -> Flow {
        let request = policy_request("RCPT", account, &[]);
        match self.ask_postfix(&request, false) {
            Ok(action) if action == "DUNNO" || action.starts_with("DEFER 4.7.1") => {
                self.log().stats.checks += 1;
                Flow::Go
            }
            Ok(action) => {
                if action.contains("account unknown") {
                    self.violation(format!("RCPT for {account}: {action}"));
                }
                self.log().stats.errors += 1;
                Flow::Go
            }
            Err(_) => {
                self.log().stats.in_flight += 1;
                Flow::Lost
            }
        }
    }

    /// Usage is at least what this client alone knows to be held, and within limits.
    fn usage(&mut self, account: &str, plan: usize) -> Flow {
        let path = format!("/v1/accounts/{account}/usage");
        match http(&self.agent, &self.base, "GET", &path, None) {
            Ok((200, v)) => {
                let emails = v["email_credits"]["used"].as_u64().unwrap_or(u64::MAX);
                let leads = v["lead_credits"]["used"].as_u64().unwrap_or(u64::MAX);
                let (mine_emails, mine_leads) = {
                    let mut log = self.log();
                    log.stats.checks += 1;
                    let emails: u64 = log
                        .messages
                        .values()
                        .filter(|m| m.account == account && m.charged == Known::Yes)
                        .map(|m| m.cost)
                        .sum();
                    let leads: BTreeSet<&String> = log
                        .leads
                        .iter()
                        .filter(|((a, _), _)| a == account)
                        .flat_map(|(_, held)| held.iter())
                        .filter(|(_, k)| **k == Known::Yes)
                        .map(|(e, _)| e)
                        .collect();
                    (emails, leads.len() as u64)
                };
                let plan = &PLANS[plan];
                if emails > plan.email_cap() || emails < mine_emails {
                    self.violation(format!(
                        "{account}: {emails} email credits used; limit {}, this client's \
                         acknowledged charges alone {mine_emails}",
                        plan.emails
                    ));
                }
                if leads > plan.lead_cap() || leads < mine_leads {
                    self.violation(format!(
                        "{account}: {leads} lead credits used; limit {}, this client's \
                         acknowledged contacts alone {mine_leads}",
                        plan.leads
                    ));
                }
                Flow::Go
            }
            Ok((404, v)) => {
                self.violation(format!("{account} is unknown: {v}"));
                Flow::Go
            }
            Ok(_) => {
                self.log().stats.errors += 1;
                Flow::Go
            }
            Err(_) => {
                self.log().stats.in_flight += 1;
                Flow::Lost
            }
        }
    }

    /// The last phase: messages acknowledged long ago, retried after every restart
    /// since, must be allowed with nothing charged.
    fn sweep(&mut self, rng: &mut Rng) {
        let picked: Vec<(String, String, u64, Via)> = {
            let log = self.log();
            let charged: Vec<&String> = log
                .order
                .iter()
                .filter(|k| {
                    log.messages
                        .get(*k)
                        .is_some_and(|m| m.charged == Known::Yes)
                })
                .collect();
            let mut picked = BTreeSet::new();
            while picked.len() < SWEEP.min(charged.len()) {
                picked.insert(rng.index(charged.len()));
            }
            picked
                .into_iter()
                .filter_map(|i| {
                    let key = charged[i];
                    log.messages
                        .get(key)
                        .map(|m| (key.clone(), m.account.clone(), m.cost, m.via.clone()))
                })
                .collect()
        };
        for (key, account, cost, via) in picked {
            if let Flow::Lost = self.resend(rng, &key, &account, cost, &via) {
                return;
            }
        }
    }

    /// Sends one policy request and reads its reply's action.
    fn ask_postfix(&mut self, request: &str, fresh: bool) -> Result<String, String> {
        if fresh {
            self.stream = None;
        }
        let asked = self.ask_postfix_once(request);
        if asked.is_err() {
            self.stream = None;
        }
        asked
    }

    fn ask_postfix_once(&mut self, request: &str) -> Result<String, String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.postfix, REQUEST_TIMEOUT)
                .map_err(|e| format!("connecting to {}: {e}", self.postfix))?;
            stream
                .set_read_timeout(Some(REQUEST_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err("no connection".into());
        };
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("writing: {e}"))?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        while !reply.ends_with(b"\n\n") {
            let n = stream.read(&mut buf).map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err("closed without a reply".into());
            }
            reply.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&reply);
        text.trim_end()
            .strip_prefix("action=")
            .map(str::to_owned)
            .ok_or_else(|| format!("not a reply: {text:?}"))
    }
}

// ---- the server ----------------------------------------------------------------

struct Files {
    store: PathBuf,
    policy: PathBuf,
    config: PathBuf,
    cache: PathBuf,
    log: PathBuf,
    dir: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Files {
        let files = Files {
            store: dir.join("gateway.redb"),
            policy: dir.join("policy.toml"),
            config: dir.join("serve.toml"),
            cache: dir.join("cache"),
            log: dir.join("serve.log"),
            dir: dir.to_owned(),
        };
        std::fs::write(&files.policy, policy_toml()).expect("writes the policy");
        std::fs::write(&files.config, SERVE_CONFIG).expect("writes the config");
        files
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The CLI on the store, with the test's policy and component cache.
    fn cli(&self, args: &[&str]) -> Value {
        let output = Command::new(env!("CARGO_BIN_EXE_creditgate"))
            .args(args)
            .arg("--store")
            .arg(&self.store)
            .arg("--policy")
            .arg(&self.policy)
            .env("CREDITGATE_CACHE_DIR", &self.cache)
            .stdin(Stdio::null())
            .output()
            .expect("creditgate runs");
        assert!(
            output.status.success(),
            "creditgate {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "creditgate {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

/// A running `serve`; killed if the test leaves it behind.
struct Serve {
    process: ServeProcess,
    http: SocketAddr,
    postfix: SocketAddr,
    spawned: Instant,
}

/// `serve` on the test's files, on ports it binds itself, not waited for: a
/// kill may land anywhere in its start-up.
fn spawn(files: &Files) -> ServeProcess {
    ServeProcess::builder(env!("CARGO_BIN_EXE_creditgate"), &files.log)
        .arg("--config")
        .arg(&files.config)
        .arg("--store")
        .arg(&files.store)
        .arg("--policy")
        .arg(&files.policy)
        .args(["--workers", WORKERS])
        .env("CREDITGATE_CACHE_DIR", &files.cache)
        // Every refusal is logged at info; the listeners' lines say where serve
        // listens, and whether a start-up kill landed before it did.
        .env("RUST_LOG", "warn,creditgate::serve=info")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `serve` and waits until it listens.
fn start(files: &Files) -> Serve {
    let spawned = Instant::now();
    let mut process = spawn(files);
    process
        .wait_listening(WAIT)
        .unwrap_or_else(|e| panic!("serve did not start: {e}"));
    Serve {
        http: process.http_addr(),
        postfix: process.postfix_addr(),
        process,
        spawned,
    }
}

/// SIGKILL, then the exit (bounded).
fn kill(serve: ServeProcess) -> Instant {
    let killed = Instant::now();
    serve.kill();
    killed
}

// ---- checking a crash image ----------------------------------------------------------

/// What an image holds per account: the email credits used in the newest cycle,
/// the lead credits used, and the memberships `(campaign, contact)`.
#[derive(Debug, Default)]
struct Held {
    plan: String,
    emails: u64,
    /// Every cycle's, for the bounds from the acknowledged side.
    emails_all: u64,
    leads: u64,
    memberships: BTreeSet<(String, String)>,
}

#[derive(Debug, Default)]
struct Report {
    kills_under_load: u64,
    kills_at_start: u64,
    kills_before_listening: u64,
    /// Email alerts reached and found logged, summed over the images.
    alerts_logged: u64,
    /// Cycles of accounts on the plan in shadow found past its email limit,
    /// summed over the images.
    shadow_over: u64,
    images: u64,
    settled_applied: u64,
    settled_not_applied: u64,
    restarts: Vec<Duration>,
    starts: Vec<Duration>,
    /// Opening a crash image: redb's recovery and the journal's replay.
    recoveries: Vec<Duration>,
}

/// The campaign's owner: campaigns are `c{client}a` and `c{client}b`.
fn owner(campaign: &str) -> Option<usize> {
    let id = campaign.strip_prefix('c')?;
    let id = id.strip_suffix('a').or_else(|| id.strip_suffix('b'))?;
    id.parse().ok().filter(|&id| id < CLIENTS)
}

/// Opens `path` (a crash image, or the final file), checks its integrity and every
/// invariant against the oracle, and settles what was in flight. Clients are parked.
fn check_image(
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
        // cycle remembers, so a charge is counted with its id or not at all.
        let mut by_cycle: BTreeMap<u64, u64> = BTreeMap::new();
        let ids = remembered.entry(name.clone()).or_default();
        for (key, _, _) in &dump.once {
            let Some((cycle, id)) = key
                .strip_prefix("msg/")
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(c, id)| Some((c.parse::<u64>().ok()?, id)))
            else {
                violation(format!("{name}: a once key not of a message: {key:?}"));
                continue;
            };
            match cost_of.get(id) {
                Some((account, cost)) if *account == name.as_str() => {
                    *by_cycle.entry(cycle).or_default() += cost;
                    if !ids.insert(id.to_owned()) {
                        violation(format!("{name}: {id} charged in two cycles"));
                    }
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
fn compare_usage(serve: &Serve, held: &BTreeMap<String, Held>, rng: &mut Rng, shared: &Shared) {
    let probe = agent(REQUEST_TIMEOUT);
    let base = format!("http://{}", serve.http);
    let names: Vec<&String> = held.keys().collect();
    let mut sample: BTreeSet<&String> = names.iter().rev().take(8).copied().collect();
    for _ in 0..4.min(names.len()) {
        sample.insert(names[rng.index(names.len())]);
    }
    for name in sample {
        let h = &held[name];
        let path = format!("/v1/accounts/{name}/usage");
        match http(&probe, &base, "GET", &path, None) {
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

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a number: {e}")),
        Err(_) => default,
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

#[test]
fn serve_killed_at_random_moments_loses_and_oversells_nothing() {
    let kills = env_number("CREDITGATE_CRASH_KILLS", 12);
    let seed = env_number(
        "CREDITGATE_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    println!(
        "crash test: seed {seed} (CREDITGATE_CRASH_SEED={seed} repeats its choices), {kills} kills"
    );
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let files = Files::new(dir.path());
    let shared = Shared::new();
    let mut rng = Rng(seed);
    let mut report = Report::default();
    std::thread::scope(|scope| {
        let _end = EndClients(&shared);
        for id in 0..CLIENTS {
            let (shared, seed) = (&shared, rng.next());
            scope.spawn(move || client_loop(id, shared, seed));
        }
        run(&files, &shared, &mut rng, kills, &mut report);
    });

    let mut stats = Stats::default();
    for log in &shared.logs {
        stats.add(&lock(log).stats);
    }
    let accounts = lock(&shared.accounts).live.len();
    let violations = lock(&shared.violations).clone();
    let mut restarts = report.restarts.clone();
    restarts.sort();
    let mut starts = report.starts.clone();
    starts.sort();
    let mut recoveries = report.recoveries.clone();
    recoveries.sort();
    println!(
        "crash test: seed {seed}: {} kills ({} under load, {} during start-up, {} of those \
         before it listened), {} images checked, {:.1} s",
        report.kills_under_load + report.kills_at_start,
        report.kills_under_load,
        report.kills_at_start,
        report.kills_before_listening,
        report.images,
        began.elapsed().as_secs_f64()
    );
    println!(
        "crash test: {} acknowledged decisions ({} allowed; {} emails and {} contacts refused \
         for want of credits; {} retries of acknowledged messages charged nothing), {} checks, \
         {} accounts",
        stats.decisions,
        stats.allowed,
        stats.emails_exhausted,
        stats.leads_exhausted,
        stats.retries_free,
        stats.checks,
        accounts
    );
    println!(
        "crash test: {} requests in flight at kills, {} answered without a decision; settled \
         by the images: {} applied, {} not",
        stats.in_flight, stats.errors, report.settled_applied, report.settled_not_applied
    );
    println!(
        "crash test: restart latency (SIGKILL to listening again), {} restarts: p50 {:?}, \
         p90 {:?}, max {:?}; spawn to ready p50 {:?}",
        restarts.len(),
        percentile(&restarts, 50),
        percentile(&restarts, 90),
        percentile(&restarts, 100),
        percentile(&starts, 50),
    );
    println!(
        "crash test: recovery (opening a crash image: redb's repair and the journal's \
         replay), {} images: p50 {:?}, p99 {:?}, max {:?}",
        recoveries.len(),
        percentile(&recoveries, 50),
        percentile(&recoveries, 99),
        percentile(&recoveries, 100),
    );
    println!(
        "crash test: {} reached email alerts found logged once, summed over the images",
        report.alerts_logged
    );
    println!(
        "crash test: {} cycles of shadow accounts past their email limit, summed over the images",
        report.shadow_over
    );
    println!("crash test: {} violations", violations.len());
    assert!(
        report.shadow_over > 0,
        "no account on the plan in shadow went past its limit: the run tested nothing of it"
    );
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}):\n{}",
        violations.len(),
        violations
            .iter()
            .take(50)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The load reached what the test is about: allowed charges, and limits.
    assert!(stats.allowed > 0, "nothing was allowed: {stats:?}");
    assert!(
        stats.emails_exhausted > 0 && stats.leads_exhausted > 0,
        "no account ran out of credits: {stats:?}"
    );
}

/// The main thread: kills, restarts and checks.
fn run(files: &Files, shared: &Shared, rng: &mut Rng, kills: u64, report: &mut Report) {
    let first = start(files);
    report.starts.push(first.spawned.elapsed());
    // A few accounts to begin with; clients subscribe more as they go.
    {
        let probe = agent(REQUEST_TIMEOUT);
        let base = format!("http://{}", first.http);
        let mut accounts = lock(&shared.accounts);
        for (i, plan) in [0, 0, 2, 1].into_iter().enumerate() {
            let name = format!("seed{i}");
            let path = format!("/v1/accounts/{name}/subscription");
            let body = json!({ "plan": PLANS[plan].name });
            let answer = http(&probe, &base, "POST", &path, Some(&body));
            assert!(
                matches!(answer, Ok((201, _))),
                "subscribing {name}: {answer:?}"
            );
            accounts.entries.insert(
                name.clone(),
                AccountEntry {
                    plan,
                    subscribed: Known::Yes,
                },
            );
            accounts.live.push(name);
        }
    }
    let mut serve = Some(first);
    let mut images: Vec<PathBuf> = Vec::new();
    let mut last_kill: Option<Instant> = None;
    let mut held = BTreeMap::new();
    for k in 1..=kills {
        let at_start = serve.is_none() && rng.chance(30);
        let running = match serve.take() {
            Some(running) => running,
            None if at_start => {
                // Somewhere between the exec and the first answer: before the store
                // opens, during its recovery, or while the workers load the policy.
                let child = spawn(files);
                let typical = percentile(&report.starts, 50).max(Duration::from_millis(20));
                let after = Duration::from_micros(rng.below(typical.as_micros() as u64 + 1));
                std::thread::sleep(after);
                last_kill = Some(kill(child));
                report.kills_at_start += 1;
                if !files.log_text().contains("listening on") {
                    report.kills_before_listening += 1;
                }
                images.push(copy_image(files, k));
                continue;
            }
            None => {
                let running = start(files);
                report.starts.push(running.spawned.elapsed());
                if let Some(killed) = last_kill {
                    report.restarts.push(killed.elapsed());
                }
                for image in images.drain(..) {
                    held = check_image(&image, &image_label(&image), shared, report);
                    let _ = std::fs::remove_file(&image);
                }
                compare_usage(&running, &held, rng, shared);
                running
            }
        };
        shared.release(running.http, running.postfix, false);
        std::thread::sleep(Duration::from_millis(rng.between(100, 1200)));
        last_kill = Some(kill(running.process));
        report.kills_under_load += 1;
        shared.park_all();
        images.push(copy_image(files, k));
    }

    // The end: back up once more, every client retries acknowledged messages, then a
    // clean stop, and the file itself checked in-process and through the CLI.
    let running = start(files);
    report.starts.push(running.spawned.elapsed());
    if let Some(killed) = last_kill {
        report.restarts.push(killed.elapsed());
    }
    for image in images.drain(..) {
        held = check_image(&image, &image_label(&image), shared, report);
        let _ = std::fs::remove_file(&image);
    }
    compare_usage(&running, &held, rng, shared);
    shared.release(running.http, running.postfix, true);
    shared.wait_parked();
    terminate(running);
    let held = check_image(&files.store, "the final file", shared, report);
    check_through_the_cli(files, &held, rng, shared);
    check_the_checker(files, &held, shared);
}

/// The checks have teeth: the final file, changed behind the server's back (an
/// acknowledged charge forgotten, a contact nobody added), must fail them.
fn check_the_checker(files: &Files, held: &BTreeMap<String, Held>, shared: &Shared) {
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
    let id = forgotten
        .strip_prefix("msg/")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(_, id)| id);
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

/// Copies the store and its journal: the image a restart recovers from.
fn copy_image(files: &Files, k: u64) -> PathBuf {
    let image = files.dir.join(format!("kill-{k}.redb"));
    std::fs::copy(&files.store, &image).expect("copies the crash image");
    let journal = journal_path(&files.store);
    if journal.exists() {
        std::fs::copy(&journal, journal_path(&image)).expect("copies the crash image's journal");
    }
    image
}

fn image_label(image: &Path) -> String {
    format!(
        "image after {}",
        image
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("a kill")
    )
}

/// SIGTERM, and a clean exit (bounded).
fn terminate(serve: Serve) {
    let (status, log) = serve.process.terminate();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "serve's exit after SIGTERM:\n{log}"
    );
}

/// The operator's view of the final file agrees with the image check.
fn check_through_the_cli(
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

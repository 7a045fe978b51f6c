//! The clients' traffic: HTTP sends, Postfix charges (with retries), lead
//! batches and deletions, new subscriptions and read-only checks, each answer
//! logged in the oracle as it comes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{MutexGuard, PoisonError};

use serde_json::{Value, json};

use creditgate_testkit::http::Client as HttpClient;
use creditgate_testkit::serve::postfix_request;

use super::oracle::{
    AccountEntry, ClientLog, Known, Message, PLANS, Rng, Shared, Stats, Via, in_shadow, lock,
};
use super::{POOL, REQUEST_TIMEOUT, SWEEP};

/// A client of the HTTP API at `base`, each request bounded by [`REQUEST_TIMEOUT`].
pub(super) fn api(base: String) -> HttpClient {
    HttpClient::with_timeout(base, REQUEST_TIMEOUT)
}

/// One HTTP request: its status and JSON body, or why no answer came.
pub(super) fn http(
    api: &HttpClient,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let body = body.map(Value::to_string);
    let answer = (api.try_send(method, path, &[], body.as_deref()))
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let value = serde_json::from_str(&answer.body).unwrap_or(Value::String(answer.body));
    Ok((answer.status, value))
}

pub(super) fn contact(j: u64) -> String {
    format!("lead{j}@d{}.example.com", j % 3)
}

/// How a step ended: go on, or stop until the next phase (no answer came, so the
/// server may still be deciding the request, or is gone).
pub(super) enum Flow {
    Go,
    Lost,
}

/// Counts a request that got no decision: an error answer (the server finished
/// with it, so the client goes on), or none (it may still be deciding, or be gone).
pub(super) fn undecided(
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
pub(super) enum Charge {
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
pub(super) struct Client<'s> {
    pub(super) id: usize,
    pub(super) shared: &'s Shared,
    pub(super) api: HttpClient,
    pub(super) postfix: SocketAddr,
    pub(super) stream: Option<TcpStream>,
}

pub(super) fn client_loop(id: usize, shared: &Shared, seed: u64) {
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
        // A fresh client each phase: connections pooled before a kill are dead.
        let mut client = Client {
            id,
            shared,
            api: api(base),
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
    pub(super) fn log(&self) -> MutexGuard<'_, ClientLog> {
        lock(&self.shared.logs[self.id])
    }

    pub(super) fn violation(&self, text: String) {
        self.shared.violation(format!("client {}: {text}", self.id));
    }

    /// Reports what a step found, once its log is unlocked.
    pub(super) fn finish(&self, problems: Vec<String>, flow: Flow) -> Flow {
        for p in problems {
            self.violation(p);
        }
        flow
    }

    pub(super) fn step(&mut self, rng: &mut Rng) -> Flow {
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
    pub(super) fn pick_account(&self, rng: &mut Rng) -> Option<(String, usize)> {
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

    pub(super) fn campaign(&self, rng: &mut Rng) -> String {
        format!("c{}{}", self.id, if rng.chance(50) { "a" } else { "b" })
    }

    /// Logs a new message of `cost` credits from `account`, not yet charged;
    /// `made` gives its key and route from its sequence number. Its key.
    fn log_new(&self, account: &str, cost: u64, made: impl FnOnce(u64) -> (String, Via)) -> String {
        let mut log = self.log();
        let (key, via) = made(log.next_seq());
        let message = Message {
            account: account.to_owned(),
            cost,
            via,
            charged: Known::No,
        };
        log.messages.insert(key.clone(), message);
        log.order.push(key.clone());
        key
    }

    pub(super) fn send_new(&mut self, rng: &mut Rng, account: &str) -> Flow {
        let (id, cost) = (self.id, rng.between(1, 3));
        let mut to = Vec::new();
        let key = self.log_new(account, cost, |seq| {
            to = (0..cost)
                .map(|k| format!("r{id}-{seq}-{k}@to.example.com"))
                .collect();
            let via = Via::Http { to: to.clone() };
            (format!("http/<m{id}.{seq}@crash>"), via)
        });
        self.send_http(rng, &key, account, &to)
    }

    pub(super) fn charge_new(&mut self, rng: &mut Rng, account: &str) -> Flow {
        let (id, cost) = (self.id, rng.between(1, 3));
        let mut instance = String::new();
        let key = self.log_new(account, cost, |seq| {
            instance = format!("c{id}.{seq}");
            let via = Via::Postfix {
                instance: instance.clone(),
            };
            (format!("postfix/{instance}"), via)
        });
        self.charge_postfix(&key, account, cost, &instance, false)
    }

    /// The same message again: Postfix retries a request (possibly on another
    /// connection), a platform retries a send.
    pub(super) fn retry(&mut self, rng: &mut Rng) -> Flow {
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

    pub(super) fn resend(
        &mut self,
        rng: &mut Rng,
        key: &str,
        account: &str,
        cost: u64,
        via: &Via,
    ) -> Flow {
        match via {
            Via::Http { to } => self.send_http(rng, key, account, to),
            Via::Postfix { instance } => {
                let fresh = rng.chance(50);
                self.charge_postfix(key, account, cost, instance, fresh)
            }
        }
    }

    pub(super) fn send_http(
        &mut self,
        rng: &mut Rng,
        key: &str,
        account: &str,
        to: &[String],
    ) -> Flow {
        let kind = ["first", "follow_up", "reply"][rng.index(3)];
        // The API keeps its ids under `http/` (issue 14.3).
        let id = key.strip_prefix("http/").unwrap_or(key);
        let body = json!({"account": account, "to": to, "kind": kind, "message_id": id});
        let answer = match http(&self.api, "POST", "/v1/decide/email", Some(&body)) {
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

    pub(super) fn charge_postfix(
        &mut self,
        key: &str,
        account: &str,
        cost: u64,
        instance: &str,
        fresh: bool,
    ) -> Flow {
        let cost = cost.to_string();
        let request = postfix_request(
            "END-OF-MESSAGE",
            account,
            &[("recipient_count", &cost), ("instance", instance)],
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
    pub(super) fn charged(&self, key: &str, answer: Charge) -> Flow {
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

    pub(super) fn add_leads(&mut self, rng: &mut Rng, account: &str, plan: usize) -> Flow {
        let campaign = self.campaign(rng);
        let size = if rng.chance(5) { 12 } else { rng.between(1, 6) };
        let mut picked = BTreeSet::new();
        while (picked.len() as u64) < size {
            picked.insert(rng.below(POOL));
        }
        let emails: Vec<String> = picked.into_iter().map(contact).collect();
        let path = format!("/v1/accounts/{account}/campaigns/{campaign}/leads");
        let answer = http(&self.api, "POST", &path, Some(&json!({ "emails": emails })));
        let mut problems = Vec::new();
        let mut log = self.log();
        let (held, stats) = log.campaign(account, &campaign);
        let flow = match answer {
            Ok((200, v)) => {
                stats.decisions += 1;
                stats.allowed += 1;
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
                        "lead_credits_exhausted" => stats.leads_exhausted += 1,
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
                undecided(stats, &other, account, &mut problems)
            }
        };
        drop(log);
        self.finish(problems, flow)
    }

    pub(super) fn delete_lead(&mut self, rng: &mut Rng, account: &str) -> Flow {
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
        let allowed =
            |held: &mut BTreeMap<String, Known>, freed: u64, problems: &mut Vec<String>| {
                let state = held.entry(email.clone()).or_insert(Known::No);
                if freed > 1 || (freed == 1 && *state == Known::No) {
                    problems.push(format!(
                        "deleting {email} from {account}/{campaign} ({state:?} there) freed {freed}"
                    ));
                }
                *state = Known::No;
            };
        let unsure = |held: &mut BTreeMap<String, Known>| {
            let state = held.entry(email.clone()).or_insert(Known::No);
            if *state == Known::Yes {
                *state = Known::Maybe;
            }
        };
        self.delete(account, &campaign, &path, allowed, unsure)
    }

    pub(super) fn delete_campaign(&mut self, rng: &mut Rng, account: &str) -> Flow {
        let campaign = self.campaign(rng);
        let path = format!("/v1/accounts/{account}/campaigns/{campaign}/leads");
        let allowed =
            |held: &mut BTreeMap<String, Known>, freed: u64, problems: &mut Vec<String>| {
                let could = held.values().filter(|k| **k != Known::No).count() as u64;
                if freed > could {
                    problems.push(format!(
                        "clearing {account}/{campaign}, which held at most {could}, freed {freed}"
                    ));
                }
                held.values_mut().for_each(|k| *k = Known::No);
            };
        let unsure = |held: &mut BTreeMap<String, Known>| {
            for k in held.values_mut() {
                if *k == Known::Yes {
                    *k = Known::Maybe;
                }
            }
        };
        self.delete(account, &campaign, &path, allowed, unsure)
    }

    /// Sends a deletion from `account`'s `campaign` and keeps what this client
    /// knows of the campaign's contacts: `allowed` updates it from an allowed
    /// answer (with the credits it freed, and the problems found), `unsure` from
    /// any other (the deletion may or may not have happened).
    fn delete(
        &mut self,
        account: &str,
        campaign: &str,
        path: &str,
        allowed: impl FnOnce(&mut BTreeMap<String, Known>, u64, &mut Vec<String>),
        unsure: impl FnOnce(&mut BTreeMap<String, Known>),
    ) -> Flow {
        let answer = http(&self.api, "DELETE", path, None);
        let mut problems = Vec::new();
        let mut log = self.log();
        let (held, stats) = log.campaign(account, campaign);
        let flow = match answer {
            Ok((200, v)) if v["decision"] == "allow" => {
                stats.decisions += 1;
                stats.allowed += 1;
                allowed(held, v["freed"].as_u64().unwrap_or(u64::MAX), &mut problems);
                Flow::Go
            }
            other => {
                unsure(held);
                undecided(stats, &other, account, &mut problems)
            }
        };
        drop(log);
        self.finish(problems, flow)
    }

    pub(super) fn subscribe(&mut self, rng: &mut Rng) -> Flow {
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
        let answer = http(&self.api, "POST", &path, Some(&body));
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

    pub(super) fn rcpt(&mut self, account: &str) -> Flow {
        let request = postfix_request("RCPT", account, &[]);
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
    pub(super) fn usage(&mut self, account: &str, plan: usize) -> Flow {
        let path = format!("/v1/accounts/{account}/usage");
        match http(&self.api, "GET", &path, None) {
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
    pub(super) fn sweep(&mut self, rng: &mut Rng) {
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
    pub(super) fn ask_postfix(&mut self, request: &str, fresh: bool) -> Result<String, String> {
        if fresh {
            self.stream = None;
        }
        let asked = self.ask_postfix_once(request);
        if asked.is_err() {
            self.stream = None;
        }
        asked
    }

    pub(super) fn ask_postfix_once(&mut self, request: &str) -> Result<String, String> {
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

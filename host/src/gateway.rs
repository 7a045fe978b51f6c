//! The decision service behind a long-running gateway: a pool of workers, each
//! with its own instance of the component, sharing one store, with group commit.
//!
//! A request goes to whichever worker is free; the worker decides it (effects
//! applied, not yet durable) and hands the answer to the committer. The committer
//! takes every answer waiting, makes them durable with one `persist`, then releases
//! them all. So no "allow" is answered before its charge is durable, one disk sync
//! serves every decision that arrived while the previous one ran, and workers never
//! wait on the disk themselves: two workers keep two cores busy while the disk
//! syncs.
//!
//! On a store that batches ([`Store::batches`]: redb), one write worker takes
//! every request waiting and decides them all in one store batch (one redb write
//! transaction, journaled as a whole when it ends), then hands the whole batch to
//! the committer at once: one transaction and one hand-over for many decisions
//! instead of one each, while the previous batch syncs. Read-only requests keep
//! lanes of their own either way.
//!
//! Reloads are versioned: a new policy (or component) is validated on a scratch
//! instance first and refused whole if it fails; workers pick up the new version
//! between requests, so a request in flight finishes on the version it started with.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::alerts::{FiredAlert, Notifier};
use crate::bindings::{
    AddressProblem, CycleUsage, Decision, LeadBatch, Mode, PolicySummary, Reason, Shadow,
};
use crate::metrics::{GatewayStats, Outcome};
use crate::postfix::StateCounts;
use crate::request::{Answer, Op, Request};
use crate::runtime::{DecideError, LoadError, Runtime, Worker};
use crate::store::{BatchEnd, MemoryStore, Store, StoreError};

/// Why the gateway gave no answer. The request was not allowed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// The decision was made but could not be made durable: it is not acknowledged.
    #[error("the decision could not be made durable: {0}")]
    Persist(String),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    Stopped,
    /// The worker could not load the policy in force after a reload, and
    /// decides nothing under the one before: nothing was done. The next
    /// request it takes tries the switch again.
    #[error("the policy in force could not be loaded: {0}")]
    Behind(String),
}

impl GatewayError {
    /// See [`DecideError::is_corrupt`].
    pub fn is_corrupt(&self) -> bool {
        matches!(self, GatewayError::Decide(e) if e.is_corrupt())
    }
}

/// Why a reload was refused; the version in force keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The policy or component does not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The policy lacks plans that accounts are on: every request of theirs would
    /// be denied `unknown-plan` from then on. Forcing the reload keeps them
    /// stranded but visible, until they are moved to a plan the policy has.
    #[error("the policy lacks {} that accounts are on: {}; move those accounts to another plan first, or force the reload", plural(.0.len(), "plan"), describe_stranded(.0))]
    StrandsAccounts(Vec<StrandedPlan>),
    /// The accounts could not be read to check the above.
    #[error("cannot check which plans accounts are on: {0}")]
    Check(String),
}

/// A plan some accounts are on that a policy lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrandedPlan {
    pub plan: String,
    /// How many accounts are on it.
    pub accounts: u64,
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn describe_stranded(plans: &[StrandedPlan]) -> String {
    plans
        .iter()
        .map(|p| format!("{:?} ({})", p.plan, plural(p.accounts as usize, "account")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plans accounts in `store` are on that `policy` lacks, with how many
/// accounts are on each, in order of plan name: what loading `policy` would
/// strand. The component decides which accounts there are and what each one's
/// plan is (a `usage` question for each, answered under `policy`), so this knows
/// no layout.
pub fn stranded_plans(
    runtime: &Runtime,
    store: Arc<dyn Store>,
    policy: &str,
    now: i64,
) -> Result<Vec<StrandedPlan>, ReloadError> {
    count_by_plan(
        runtime,
        store,
        policy,
        now,
        &|decision| match (decision.denied, &decision.usage) {
            (Some(Reason::UnknownPlan), Some(usage)) => Some(&usage.plan),
            _ => None,
        },
    )
}

/// Of the accounts in `store` on one of `plans`, how many use more credits than
/// `policy` allows them, by plan, in order of plan name: what a reload that
/// lowers those plans' limits leaves over them.
pub fn over_limits(
    runtime: &Runtime,
    store: Arc<dyn Store>,
    policy: &str,
    plans: &[String],
    now: i64,
) -> Result<Vec<StrandedPlan>, ReloadError> {
    let over = |used: u64, limit: Option<u64>| limit.is_some_and(|limit| used > limit);
    count_by_plan(runtime, store, policy, now, &|decision| {
        decision
            .usage
            .as_ref()
            .filter(|usage| {
                plans.contains(&usage.plan)
                    && (over(usage.lead_credits.used, usage.lead_credits.limit)
                        || over(usage.email_credits.used, usage.email_credits.limit))
            })
            .map(|usage| &usage.plan)
    })
}

/// How many accounts of `store` each plan has that `pick` names for their
/// usage decision under `policy`, in order of plan name.
fn count_by_plan(
    runtime: &Runtime,
    store: Arc<dyn Store>,
    policy: &str,
    now: i64,
    pick: &dyn Fn(&Decision) -> Option<&String>,
) -> Result<Vec<StrandedPlan>, ReloadError> {
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    each_usage(runtime, store, policy, now, &mut |decision| {
        if let Some(plan) = pick(decision) {
            *counted.entry(plan.clone()).or_default() += 1;
        }
    })?;
    Ok(counted
        .into_iter()
        .map(|(plan, accounts)| StrandedPlan { plan, accounts })
        .collect())
}

/// Calls `visit` with the usage decision, under `policy`, of every account of
/// `store`. An account whose record is malformed is denied on every request
/// whatever the policy: it is left out, with a warning.
fn each_usage(
    runtime: &Runtime,
    store: Arc<dyn Store>,
    policy: &str,
    now: i64,
    visit: &mut dyn FnMut(&Decision),
) -> Result<(), ReloadError> {
    let (mut worker, _) = runtime.worker(store, policy)?;
    // Which names are accounts is the component's to say (crate::inspect).
    for account in
        crate::inspect::accounts(&mut worker).map_err(|e| ReloadError::Check(e.to_string()))?
    {
        let usage = Request::Usage {
            account: account.clone(),
        };
        match worker.decide(&usage, now) {
            Ok(decision) => visit(&decision),
            Err(e) if e.is_corrupt() => {
                tracing::warn!(account = %crate::names::escape(&account), "{e}: not checked");
            }
            Err(e) => return Err(ReloadError::Check(e.to_string())),
        }
    }
    Ok(())
}

/// A request the policy denied, kept for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub account: String,
    pub op: Op,
    pub reason: Reason,
    /// When it was decided (nanoseconds since the Unix epoch).
    pub at: i64,
}

/// Refusals kept in memory, all accounts together; the oldest go first.
pub const RECENT_REFUSALS: usize = 1_000;

struct Job {
    request: Request,
    now: i64,
    reply: oneshot::Sender<Result<Answer, GatewayError>>,
}

/// Where a job's answer comes.
type Reply = oneshot::Receiver<Result<Answer, GatewayError>>;

impl Job {
    /// A job for `request` at `now`, and where its answer will come.
    fn new(request: Request, now: i64) -> (Job, Reply) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            now,
            reply,
        };
        (job, answer)
    }
}

/// The policy and component in force, with a version number workers compare.
struct Version {
    number: u64,
    runtime: Arc<Runtime>,
    policy: Arc<str>,
    /// The gateway's mode, loaded with the policy into every instance.
    mode: Mode,
    /// An instance for each worker with this version's policy already loaded,
    /// made by the reload before it published the version, so that no worker's
    /// first decision under a new policy waits for an instance or a parse. Empty
    /// at start (the workers' first instances are made then), and wherever
    /// preparing failed: such a worker makes its own.
    prepared: Vec<Mutex<Option<Worker>>>,
    /// The plans the policy defines, for messages that say what is accepted.
    plans: Arc<[String]>,
    /// What loading the policy found, kept from the validation that let it in.
    summary: Arc<PolicySummary>,
}

impl Version {
    /// Worker `index`'s prepared instance of this version, if it is still there.
    fn take_prepared(&self, index: usize) -> Option<(Worker, u64)> {
        let slot = self.prepared.get(index)?;
        let worker = slot.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        Some((worker, self.number))
    }
}

/// Where requests wait for a worker: read-only ones in a lane of their own, so
/// that an RCPT check never waits behind charges, whose workers may all be held
/// up by a disk sync.
struct Lanes {
    reads: Sender<Job>,
    writes: Sender<Job>,
    /// Read-only requests for pages and listings (see [`Gateway::decide_bulk`]).
    bulk: Sender<Job>,
}

/// Most jobs a worker decides in one store batch ([`Store::batches`]).
const MAX_BATCH: usize = 512;

/// Write-lane workers on a store that batches.
const BATCH_WRITERS: usize = 1;

/// Longest a commit waits for requests already asked for to be decided, so that
/// one disk sync covers them too (see [`commit`]).
const GATHER_AT_MOST: Duration = Duration::from_millis(1);

/// Handle to the pool; cheap to share behind an `Arc`.
pub struct Gateway {
    jobs: Mutex<Option<Lanes>>,
    /// Worker threads, writers and readers: how many instances a reload prepares.
    workers: usize,
    /// Held for a whole reload: two at once would each prepare an instance per
    /// worker, past what the instance pool holds.
    reloading: Mutex<()>,
    /// Requests that may write, submitted (taken by a worker, on a store that
    /// batches) and not yet handed to the committer.
    undecided: Arc<AtomicUsize>,
    /// Whether the write lane decides in store batches ([`Store::batches`]).
    batches: bool,
    version: Arc<RwLock<Version>>,
    store: Arc<dyn Store>,
    stats: Arc<Mutex<GatewayStats>>,
    refusals: Arc<Mutex<VecDeque<Refusal>>>,
    notifier: Arc<OnceLock<Notifier>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Answers [`Gateway::find_invalid_email`], off the lanes: made when first
    /// needed, again after a reload, with the version it was made for.
    explainer: Mutex<Option<(Worker, u64)>>,
    /// Held while a worker of the moment lives ([`Gateway::with_worker_over`]):
    /// [`Gateway::instances_needed`] counts one, so that dry runs and questions,
    /// however many come at once, never take an instance a lane needs.
    moment: Mutex<()>,
    plan_gate: Arc<PlanGate>,
    strands: Arc<Mutex<Strands>>,
    /// What the Postfix listeners were asked, by protocol state.
    postfix_states: StateCounts,
}

/// Keeps a commit from landing inside a decision. A decision is several store
/// primitives (its charge, then the log entry of an alert the charge fired); a
/// durable commit taken between them, followed by a crash, would keep the charge
/// and lose the alert for good, since only the crossing request fires it. Workers
/// hold it shared for a whole decision, the committer exclusively for a commit.
/// Store writes wait for a durable commit in redb anyway (one writer), so holding
/// workers off during it costs next to nothing.
type CommitGate = RwLock<()>;

/// Keeps a reload's check for stranded accounts and its switch to the new
/// version together. Between them, the old version would still put an account
/// on a plan the new policy lacks (a subscription, a plan change), and the
/// reload, not forced, would strand it all the same. Workers hold it shared
/// while they decide a batch that changes a plan, and count the batch once its
/// effects are visible; a reload holds it exclusively from its last check to
/// the switch, checking again under it if a plan changed since the first.
#[derive(Default)]
struct PlanGate {
    lock: RwLock<()>,
    /// Batches that changed a plan, counted once their effects are visible.
    changes: AtomicU64,
}

/// Plans accounts turned out to be on that the policy in force lacks, apart
/// from those a forced reload dropped knowingly. Another gateway on the same
/// store, serving another policy (a rolling upgrade, a host left behind), can
/// move an account to such a plan: this gateway then denies every request of
/// the account (`unknown_plan`). It says so once a plan, counts each such
/// denial, and refuses the next unforced reload that still lacks the plan, as
/// it refuses one that takes a plan away from accounts.
#[derive(Debug, Default)]
struct Strands {
    /// Plans a forced reload dropped, or found stranded and kept out anyway.
    accepted: BTreeSet<String>,
    /// Plans seen on denied accounts since the policy in force was loaded,
    /// not accepted.
    seen: BTreeSet<String>,
}

impl Strands {
    /// The plans a reload from the plans `in_force` to the policy of `summary`
    /// must check no account is on: those it takes away, and those seen.
    fn suspects(&self, in_force: &[String], summary: &PolicySummary) -> BTreeSet<String> {
        in_force
            .iter()
            .chain(&self.seen)
            .filter(|plan| !defines(summary, plan))
            .cloned()
            .collect()
    }

    /// A reload to the policy of `summary` is in force: what it dropped
    /// `force`d is accepted, a plan it has is no longer, and what was seen
    /// was checked (or accepted).
    fn reloaded(&mut self, in_force: &[String], summary: &PolicySummary, force: bool) {
        if force {
            let suspects = self.suspects(in_force, summary);
            self.accepted.extend(suspects);
        }
        self.accepted.retain(|plan| !defines(summary, plan));
        self.seen.clear();
    }

    /// Notes that `account`'s request was denied because its plan `plan` is
    /// not in the policy; answers whether that was not accepted.
    fn note(&mut self, plan: &str, account: &str) -> bool {
        if self.accepted.contains(plan) {
            return false;
        }
        if !self.seen.contains(plan) {
            self.seen.insert(plan.to_owned());
            tracing::error!(account = %crate::names::Escaped(account),
                plan = %crate::names::Escaped(plan),
                "an account is on a plan the policy in force lacks, and no forced reload here \
                 dropped it: another gateway on the same store, with another policy, moved it \
                 there (or the plan was gone before this gateway started). Every request of \
                 such an account is denied (unknown_plan) until it is moved to a plan the \
                 policy has or the gateways serve one policy; a reload that still lacks the \
                 plan is refused unless forced");
        }
        true
    }
}

/// Whether the policy of `summary` defines `plan`.
fn defines(summary: &PolicySummary, plan: &str) -> bool {
    summary.plans.iter().any(|p| p.name == plan)
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Instances a gateway of `workers` workers may hold at once: each writer and
    /// reader, twice (a reload or a trap builds a worker's next instance before
    /// its last is dropped), and those made outside the lanes.
    pub fn instances_needed(workers: usize) -> u32 {
        let (writers, readers) = lanes(workers);
        // Outside the lanes: the inspector's (`crate::inspect`), the explainer's,
        // the worker of the moment (one at a time), the reload's validation (one
        // reload at a time), and two to spare.
        u32::try_from(2 * (writers + readers + BULK_WORKERS) + 6).unwrap_or(u32::MAX)
    }

    /// Starts `workers` workers (at least one) for requests that may write, and
    /// half as many (at least one) for read-only requests, over `store` with
    /// `policy` loaded, enforcing its limits.
    pub fn start(
        runtime: Arc<Runtime>,
        store: Arc<dyn Store>,
        policy: &str,
        workers: usize,
    ) -> Result<(Self, PolicySummary), LoadError> {
        Self::start_in(runtime, store, policy, Mode::Enforce, workers)
    }

    /// [`Gateway::start`] in `mode`, the mode of the plans that set none.
    pub fn start_in(
        runtime: Arc<Runtime>,
        store: Arc<dyn Store>,
        policy: &str,
        mode: Mode,
        workers: usize,
    ) -> Result<(Self, PolicySummary), LoadError> {
        let summary = validate(&runtime, policy, mode)?;
        let version = Arc::new(RwLock::new(Version {
            number: 0,
            runtime,
            policy: Arc::from(policy),
            mode,
            prepared: Vec::new(),
            plans: plan_names(&summary),
            summary: Arc::new(summary.clone()),
        }));
        let (writes, write_queue) = mpsc::channel::<Job>();
        let (reads, read_queue) = mpsc::channel::<Job>();
        let (bulk, bulk_queue) = mpsc::channel::<Job>();
        let queues = [
            Arc::new(Mutex::new(write_queue)),
            Arc::new(Mutex::new(read_queue)),
            Arc::new(Mutex::new(bulk_queue)),
        ];
        let undecided = Arc::new(AtomicUsize::new(0));
        let (done, committed) = mpsc::channel::<Vec<Done>>();
        let stats = Arc::new(Mutex::new(GatewayStats::default()));
        let refusals = Arc::new(Mutex::new(VecDeque::new()));
        let notifier = Arc::new(OnceLock::new());
        // A store whose every write is durable when it returns (Redis) has no
        // commit to keep out of a decision: the gate would only hold every worker
        // off while the committer waits out the slowest decision in flight.
        let gate = (!store.durable_on_return()).then(|| Arc::new(CommitGate::default()));
        let plan_gate = Arc::new(PlanGate::default());
        let strands = Arc::new(Mutex::new(Strands::default()));
        let mut threads = Vec::new();
        let (writers, readers) = lanes(workers);
        let batches = store.batches();
        // One batch at a time holds the store's writer: a second writer would
        // only take the jobs the first one's next batch would have taken.
        let writers = if batches { BATCH_WRITERS } else { writers };
        for i in 0..writers + readers + BULK_WORKERS {
            let shared = Shared {
                version: version.clone(),
                store: store.clone(),
                done: done.clone(),
                stats: stats.clone(),
                refusals: refusals.clone(),
                gate: gate.clone(),
                plan_gate: plan_gate.clone(),
                strands: strands.clone(),
                undecided: undecided.clone(),
            };
            let (queue, name) = if i < writers {
                (queues[0].clone(), format!("creditgate-worker-{i}"))
            } else if i < writers + readers {
                (
                    queues[1].clone(),
                    format!("creditgate-reader-{}", i - writers),
                )
            } else {
                (
                    queues[2].clone(),
                    format!("creditgate-bulk-{}", i - writers - readers),
                )
            };
            let worker = worker_for(&version, &store)?;
            let batches = batches && i < writers;
            threads.push(spawn(&name, move || {
                work(i, worker, &queue, &shared, batches)
            }));
        }
        drop(done);
        let committer = Committer {
            store: store.clone(),
            stats: stats.clone(),
            notifier: notifier.clone(),
            gate,
            undecided: undecided.clone(),
        };
        threads.push(spawn("creditgate-commit", move || {
            committer.run(&committed)
        }));
        let gateway = Gateway {
            jobs: Mutex::new(Some(Lanes {
                reads,
                writes,
                bulk,
            })),
            workers: writers + readers + BULK_WORKERS,
            reloading: Mutex::new(()),
            undecided,
            batches,
            version,
            store,
            stats,
            refusals,
            notifier,
            threads: Mutex::new(threads),
            explainer: Mutex::new(None),
            moment: Mutex::new(()),
            plan_gate,
            strands,
            postfix_states: StateCounts::default(),
        };
        Ok((gateway, summary))
    }

    /// Answers `request` as of `now` (see [`Worker::answer`]); the answer is
    /// durable when it arrives.
    pub async fn answer(&self, request: Request, now: i64) -> Result<Answer, GatewayError> {
        received(self.submit(request, now)?.await)
    }

    /// Decides `request` as of `now`; the decision is durable when it arrives.
    /// A request answered otherwise (a lead batch, a history) is refused before
    /// anything runs: see [`Gateway::answer`].
    pub async fn decide(&self, request: Request, now: i64) -> Result<Decision, GatewayError> {
        let op = one_decision(&request)?;
        decision_of(self.answer(request, now).await?, op)
    }

    /// [`Gateway::decide`] for a read-only request made on behalf of a page or a
    /// listing rather than a sender: it waits in a lane of its own, served by
    /// [`BULK_WORKERS`] worker(s) of its own, so that however many accounts a
    /// dashboard or an API listing goes through, no Postfix check or API
    /// decision ever queues behind it. A request that may write is decided as
    /// [`Gateway::decide`] decides it.
    pub async fn decide_bulk(&self, request: Request, now: i64) -> Result<Decision, GatewayError> {
        if !request.op().is_read_only() {
            return self.decide(request, now).await;
        }
        let op = one_decision(&request)?;
        let (job, answer) = Job::new(request, now);
        {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            let lanes = jobs.as_ref().ok_or(GatewayError::Stopped)?;
            lanes.bulk.send(job).map_err(|_| GatewayError::Stopped)?;
        }
        decision_of(received(answer.await)?, op)
    }

    /// Email credits used in each of the last `cycles` billing cycles of
    /// `account`, oldest first (empty for an unknown account).
    pub async fn email_history(
        &self,
        account: String,
        cycles: u32,
        now: i64,
    ) -> Result<Vec<CycleUsage>, GatewayError> {
        match self
            .answer(Request::EmailHistory { account, cycles }, now)
            .await?
        {
            Answer::History(history) => Ok(history),
            _ => Err(GatewayError::Stopped),
        }
    }

    /// The most recent refusals of `account`, newest first.
    pub fn recent_refusals(&self, account: &str) -> Vec<Refusal> {
        self.refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .filter(|r| r.account == account)
            .cloned()
            .collect()
    }

    /// Where fired alerts go once durable; without one they are logged only. Set
    /// once, before serving.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// [`Gateway::decide`] for callers on plain threads.
    pub fn decide_blocking(&self, request: Request, now: i64) -> Result<Decision, GatewayError> {
        let op = one_decision(&request)?;
        decision_of(received(self.submit(request, now)?.blocking_recv())?, op)
    }

    /// Adds a batch of leads (see [`Worker::add_leads`]); durable when it returns.
    pub async fn add_leads(
        &self,
        account: String,
        campaign: String,
        emails: Vec<String>,
        now: i64,
    ) -> Result<LeadBatch, GatewayError> {
        let request = Request::AddLeads {
            account,
            campaign,
            emails,
        };
        match self.answer(request, now).await? {
            Answer::Leads(batch) => Ok(batch),
            _ => Err(GatewayError::Stopped),
        }
    }

    fn submit(&self, request: Request, now: i64) -> Result<Reply, GatewayError> {
        let (job, answer) = Job::new(request, now);
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let lanes = jobs.as_ref().ok_or(GatewayError::Stopped)?;
        let sent = if job.request.op().is_read_only() {
            lanes.reads.send(job)
        } else if self.batches {
            // Counted once a worker takes it (see `work`).
            lanes.writes.send(job)
        } else {
            self.undecided.fetch_add(1, Ordering::AcqRel);
            lanes.writes.send(job).inspect_err(|_| {
                self.undecided.fetch_sub(1, Ordering::AcqRel);
            })
        };
        sent.map_err(|_| GatewayError::Stopped)?;
        Ok(answer)
    }

    /// Replaces the policy, and the component when `runtime` is given. A version
    /// that fails to load is refused and the current one keeps serving; so is one
    /// that lacks a plan accounts are on, unless `force` (see
    /// [`ReloadError::StrandsAccounts`]).
    pub fn reload(
        &self,
        policy: &str,
        runtime: Option<Arc<Runtime>>,
        force: bool,
    ) -> Result<PolicySummary, ReloadError> {
        self.reload_in(policy, runtime, force, None)
    }

    /// [`Gateway::reload`], switching the gateway to `mode` when given. The
    /// mode is part of the version: every decision after the switch is made by
    /// an instance loaded with the new policy in the new mode, none by one with
    /// either half of the old.
    pub fn reload_in(
        &self,
        policy: &str,
        runtime: Option<Arc<Runtime>>,
        force: bool,
        mode: Option<Mode>,
    ) -> Result<PolicySummary, ReloadError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mode = mode.unwrap_or_else(|| self.mode());
        let runtime = match runtime {
            Some(runtime) => runtime,
            None => self
                .version
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .runtime
                .clone(),
        };
        let in_force = self.plans();
        let changes = self.plan_gate.changes.load(Ordering::Acquire);
        let checked = validate(&runtime, policy, mode)
            .map_err(ReloadError::from)
            .and_then(|summary| {
                self.check_strands(&runtime, policy, &summary, &in_force, force)?;
                Ok(summary)
            });
        let summary = match checked {
            Ok(summary) => summary,
            Err(e) => {
                self.refused_reload();
                return Err(e);
            }
        };
        let prepared = self.prepare(&runtime, policy, mode);
        // From the last check to the switch, no plan changes.
        let _plans_still = (self.plan_gate.lock.write()).unwrap_or_else(PoisonError::into_inner);
        if self.plan_gate.changes.load(Ordering::Acquire) != changes
            && let Err(e) = self.check_strands(&runtime, policy, &summary, &in_force, force)
        {
            self.refused_reload();
            return Err(e);
        }
        let mut version = self.version.write().unwrap_or_else(PoisonError::into_inner);
        self.strands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reloaded(&in_force, &summary, force);
        *version = Version {
            number: version.number + 1,
            runtime,
            policy: Arc::from(policy),
            mode,
            prepared,
            plans: plan_names(&summary),
            summary: Arc::new(summary.clone()),
        };
        let mut stats = self.stats();
        stats.reloads += 1;
        stats.version = version.number;
        Ok(summary)
    }

    /// Refuses `policy` (its `summary`) when, not `force`d, it lacks plans
    /// accounts are on ([`ReloadError::StrandsAccounts`]): plans of `in_force`
    /// it takes away, and plans accounts were seen on that the policy in force
    /// lacks too ([`Strands`]: another gateway moved them there). With neither,
    /// nothing is scanned; accounts a forced reload stranded before do not block
    /// every reload after it.
    fn check_strands(
        &self,
        runtime: &Runtime,
        policy: &str,
        summary: &PolicySummary,
        in_force: &[String],
        force: bool,
    ) -> Result<(), ReloadError> {
        if force {
            return Ok(());
        }
        let suspects = self
            .strands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .suspects(in_force, summary);
        if suspects.is_empty() {
            return Ok(());
        }
        let stranded: Vec<StrandedPlan> =
            stranded_plans(runtime, self.store.clone(), policy, crate::time::now())?
                .into_iter()
                .filter(|p| suspects.contains(&p.plan))
                .collect();
        if stranded.is_empty() {
            Ok(())
        } else {
            Err(ReloadError::StrandsAccounts(stranded))
        }
    }

    /// An instance per worker with `policy` loaded, for the version a reload is
    /// about to publish (see [`Version::prepared`]). The version in force's
    /// instances that no worker took yet are dropped first: with them, an idle
    /// gateway reloaded twice would hold three instances per worker, more than
    /// the pool has room for.
    fn prepare(&self, runtime: &Runtime, policy: &str, mode: Mode) -> Vec<Mutex<Option<Worker>>> {
        for slot in &self
            .version
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .prepared
        {
            slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
        let mut prepared = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            match runtime.worker_in(self.store.clone(), policy, mode) {
                Ok((worker, _)) => prepared.push(Mutex::new(Some(worker))),
                Err(e) => {
                    tracing::warn!(
                        "cannot prepare every worker's instance, the others make their own: {e}"
                    );
                    break;
                }
            }
        }
        prepared
    }

    /// Counts a reload refused before it reached [`Gateway::reload`] (an unreadable
    /// file, a component that does not compile).
    pub fn refused_reload(&self) {
        self.stats().reloads_refused += 1;
    }

    /// The plans accounts are on that the policy in force lacks (see
    /// [`stranded_plans`]): empty unless a reload was forced, or the store was
    /// written under another policy.
    pub fn stranded_plans(&self) -> Result<Vec<StrandedPlan>, ReloadError> {
        let (runtime, policy) = {
            let version = self.version.read().unwrap_or_else(PoisonError::into_inner);
            (version.runtime.clone(), version.policy.clone())
        };
        stranded_plans(&runtime, self.store.clone(), &policy, crate::time::now())
    }

    /// The plans whose limits the policy in force lowered from `before` (the
    /// summary of the policy it replaced), with how many of their accounts are
    /// over the new limits (see [`over_limits`]): what a reload says, since it
    /// takes nothing back. Nothing is scanned when no limit went down.
    pub fn over_lowered_limits(
        &self,
        before: &PolicySummary,
    ) -> Result<Vec<StrandedPlan>, ReloadError> {
        let (runtime, policy, summary) = {
            let version = self.version.read().unwrap_or_else(PoisonError::into_inner);
            (
                version.runtime.clone(),
                version.policy.clone(),
                version.summary.clone(),
            )
        };
        let lower = |new: Option<u64>, old: Option<u64>| match (new, old) {
            (Some(_), None) => true,
            (Some(new), Some(old)) => new < old,
            (None, _) => false,
        };
        let lowered: Vec<String> = (summary.plans.iter())
            .filter(|plan| {
                before.plans.iter().any(|was| {
                    was.name == plan.name
                        && (lower(plan.lead_credits, was.lead_credits)
                            || lower(plan.email_credits, was.email_credits))
                })
            })
            .map(|plan| plan.name.clone())
            .collect();
        if lowered.is_empty() {
            return Ok(Vec::new());
        }
        over_limits(
            &runtime,
            self.store.clone(),
            &policy,
            &lowered,
            crate::time::now(),
        )
    }

    /// The version number in force and its policy's summary, as the validation
    /// that let the policy in found it.
    pub fn policy_summary(&self) -> (u64, Arc<PolicySummary>) {
        let version = self.version.read().unwrap_or_else(PoisonError::into_inner);
        (version.number, version.summary.clone())
    }

    /// Whether accounts on `plan` are decided in shadow mode under the policy
    /// and mode in force, as the component said when it loaded them.
    pub fn plan_in_shadow(&self, plan: &str) -> bool {
        self.version
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .summary
            .plans
            .iter()
            .any(|p| p.name == plan && p.mode == Mode::Shadow)
    }

    /// The gateway's mode in force: that of the plans that set none.
    pub fn mode(&self) -> Mode {
        self.version
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .mode
    }

    /// The version number in force; it grows by one at each successful reload.
    pub fn version(&self) -> u64 {
        self.version
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .number
    }

    /// The first of `emails` the policy in force refuses, and why (see
    /// [`Worker::find_invalid_email`]): to say which address an `invalid-email`
    /// denial was about. Not a decision: answered by a worker of its own, on no
    /// state, outside the lanes and the metrics; blocks (call it from a blocking
    /// thread). None as well when the policy cannot say.
    pub fn find_invalid_email(&self, emails: &[String]) -> Option<AddressProblem> {
        let mut explainer = self
            .explainer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let latest = self.version();
        if explainer
            .as_ref()
            .is_none_or(|(_, made_for)| *made_for != latest)
        {
            let none: Arc<dyn Store> = Arc::new(MemoryStore::new());
            *explainer = worker_for(&self.version, &none).ok();
        }
        let (worker, _) = explainer.as_mut()?;
        worker.find_invalid_email(emails).ok().flatten()
    }

    /// The names of the plans the policy in force defines, in its order.
    pub fn plans(&self) -> Arc<[String]> {
        self.version
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .plans
            .clone()
    }

    /// A worker of its own on the gateway's store with the version in force, and
    /// that version's number: for questions asked outside the lanes by the
    /// [`crate::inspect::Inspector`], which keeps it. [`Gateway::instances_needed`]
    /// counts one: a gateway has one inspector.
    pub fn spare_worker(&self) -> Result<(Worker, u64), LoadError> {
        worker_for(&self.version, &self.store)
    }

    /// Runs `f` on a worker of the moment over `store` (the gateway's own when
    /// `None`) with the version in force, and that version's number: for a dry
    /// run on a [`crate::store::Preview`] of the gateway's store, or a question
    /// asked once per version. One at a time: more wait (block; call it from a
    /// blocking thread), so that their instances stay inside the pool's budget.
    pub fn with_worker_over<T>(
        &self,
        store: Option<&Arc<dyn Store>>,
        f: impl FnOnce(&mut Worker, u64) -> T,
    ) -> Result<T, LoadError> {
        let _turn = self.moment.lock().unwrap_or_else(PoisonError::into_inner);
        // Dropped, and its instance back in the pool, before the turn passes on.
        let (mut worker, version) = worker_for(&self.version, store.unwrap_or(&self.store))?;
        Ok(f(&mut worker, version))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What the gateway has measured so far: a copy, taken under the lock that
    /// every decision also takes, so render it after this returns.
    pub fn snapshot(&self) -> GatewayStats {
        self.stats().clone()
    }

    /// The Postfix requests the server's listeners were asked, by protocol
    /// state (their counts are the listeners' to make).
    pub fn postfix_states(&self) -> &StateCounts {
        &self.postfix_states
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, GatewayStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops taking requests, lets the workers finish what was queued, and waits for
    /// the last commit.
    pub fn shutdown(&self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Loads `policy` on a scratch instance over a throwaway store: the check a reload
/// must pass before any worker sees it.
fn validate(runtime: &Runtime, policy: &str, mode: Mode) -> Result<PolicySummary, LoadError> {
    runtime
        .worker_in(Arc::new(MemoryStore::new()), policy, mode)
        .map(|(_, summary)| summary)
}

fn worker_for(
    version: &RwLock<Version>,
    store: &Arc<dyn Store>,
) -> Result<(Worker, u64), LoadError> {
    let version = version.read().unwrap_or_else(PoisonError::into_inner);
    let (worker, _) = version
        .runtime
        .worker_in(store.clone(), &version.policy, version.mode)?;
    Ok((worker, version.number))
}

/// Workers for the bulk lane ([`Gateway::decide_bulk`]): one, so that pages and
/// listings take at most one core's worth of decisions whatever their number.
pub const BULK_WORKERS: usize = 1;

/// Workers for requests that may write, and for read-only ones.
fn lanes(workers: usize) -> (usize, usize) {
    let writers = workers.max(1);
    (writers, (writers / 2).max(1))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// A decision made, waiting for the commit that makes it durable.
struct Done {
    op: Op,
    answer: Result<Answer, GatewayError>,
    /// The request, kept in case its batch is abandoned and it is decided again.
    request: Request,
    now: i64,
    reply: oneshot::Sender<Result<Answer, GatewayError>>,
    decided_at: Instant,
    /// Logged with the decision; delivered once it is durable.
    alerts: Vec<FiredAlert>,
    /// [`Store::losses`] before the decision applied anything.
    losses: u64,
}

/// What every worker shares.
struct Shared {
    version: Arc<RwLock<Version>>,
    store: Arc<dyn Store>,
    done: Sender<Vec<Done>>,
    stats: Arc<Mutex<GatewayStats>>,
    refusals: Arc<Mutex<VecDeque<Refusal>>>,
    /// None on a store whose writes are durable when they return.
    gate: Option<Arc<CommitGate>>,
    plan_gate: Arc<PlanGate>,
    strands: Arc<Mutex<Strands>>,
    undecided: Arc<AtomicUsize>,
}

/// A worker's loop. One that `batches` (the write lane's, on a store that
/// [`Store::batches`]) takes every job waiting, up to [`MAX_BATCH`], and decides
/// them in one store batch.
fn work(
    index: usize,
    mut current: (Worker, u64),
    queue: &Mutex<Receiver<Job>>,
    shared: &Shared,
    batches: bool,
) {
    loop {
        let jobs = {
            // One worker waits on the queue at a time; the others wait on the lock.
            let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            let Ok(first) = queue.recv() else { break };
            let mut jobs = vec![first];
            // A batch of leads holds the writer for milliseconds on its own: it
            // ends a batch, so that a batch holds at most one.
            let heavy = |job: &Job| matches!(job.request, Request::AddLeads { .. });
            while batches && jobs.len() < MAX_BATCH && !jobs.last().is_some_and(heavy) {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if batches {
                // Jobs waiting in the queue are not counted: the committer waits
                // for the batch being decided, whose jobs waited during the last
                // sync, and not for those arriving meanwhile, which the next
                // batch takes while this one syncs. This lane's jobs all write
                // (`Gateway::submit` sends read-only ones to lanes of their own).
                shared.undecided.fetch_add(jobs.len(), Ordering::AcqRel);
            }
            jobs
        };
        // Taken before the version is read: a reload holding it is about to
        // switch, and the plan change is then decided under the new policy.
        let changes_plan = jobs.iter().any(|job| job.request.op().changes_plan());
        let plan_gate = changes_plan
            .then(|| (shared.plan_gate.lock.read()).unwrap_or_else(PoisonError::into_inner));
        if let Err(e) = switch_version(index, &mut current, shared) {
            // Refused, not decided under the policy the reload replaced (whose
            // limits may be higher): fail closed until the switch succeeds.
            tracing::error!(worker = index, "cannot load the policy in force: {e}");
            if batches {
                shared.undecided.fetch_sub(jobs.len(), Ordering::AcqRel);
            }
            for job in jobs {
                let _ = job.reply.send(Err(GatewayError::Behind(e.to_string())));
            }
            continue;
        }
        let worker = &mut current.0;
        // Empty, and so no allocation, for read-only jobs: answered at once.
        let mut done = Vec::new();
        if batches {
            decide_in_batches(worker, jobs, shared, &mut done);
        } else {
            for job in jobs {
                // A read-only decision writes nothing a commit could split, so it
                // runs while a commit is syncing: an RCPT check never waits behind
                // the disk.
                let gate = (!job.request.op().is_read_only())
                    .then_some(shared.gate.as_ref())
                    .flatten()
                    .map(|gate| gate.read().unwrap_or_else(PoisonError::into_inner));
                let losses = shared.store.losses();
                done.extend(decide(worker, job, shared, losses));
                drop(gate);
            }
        }
        if let Some(gate) = plan_gate {
            // The batch's effects are visible now (its transaction ended).
            shared.plan_gate.changes.fetch_add(1, Ordering::AcqRel);
            drop(gate);
        }
        if done.is_empty() {
            continue;
        }
        let count = done.len();
        let handed = shared.done.send(done);
        // After the hand-over, so that a committer that sees no undecided request
        // has every decision in its channel.
        shared.undecided.fetch_sub(count, Ordering::AcqRel);
        if handed.is_err() {
            break;
        }
    }
}

/// Decides `jobs` in store batches: every decision of a batch in one store
/// transaction, so that nothing of it is visible to other threads, nor
/// journaled, until it all is, no commit can land inside a decision and the
/// gate is not needed.
///
/// A decision that gets no answer (the component trapped, ran out of time or
/// memory, answered something impossible or an error) may have written before
/// it failed; what it wrote must not stand, since it is not acknowledged. So its
/// batch is abandoned (redb cannot take back part of a transaction), it is
/// answered with its error, and the decisions before it in the batch, undone
/// with it, are decided again in a batch of their own before the rest go on: a
/// job is decided at most twice, whatever fails.
fn decide_in_batches(worker: &mut Worker, jobs: Vec<Job>, shared: &Shared, done: &mut Vec<Done>) {
    let losses = shared.store.losses();
    let mut queue = VecDeque::from(jobs);
    // How many jobs the next batch may decide: after an abandoned batch, only
    // those decided before its failure, again.
    let mut take = queue.len();
    while !queue.is_empty() {
        let mut decided = Vec::new();
        let mut failed = None;
        let batched = shared.store.batch(&mut || {
            while decided.len() < take
                && let Some(job) = queue.pop_front()
            {
                match decide(worker, job, shared, losses) {
                    Some(d) if d.answer.is_err() => {
                        failed = Some(d);
                        return BatchEnd::Abandon;
                    }
                    d => decided.extend(d),
                }
            }
            BatchEnd::Keep
        });
        if let Some(mut failed) = failed {
            // Its alerts were logged in the writes that are gone.
            failed.alerts.clear();
            done.push(failed);
        }
        let redo = match batched {
            Ok(BatchEnd::Keep) => {
                done.append(&mut decided);
                0
            }
            Ok(BatchEnd::Abandon) => {
                let redo = decided.len();
                for d in decided.into_iter().rev() {
                    queue.push_front(Job {
                        request: d.request,
                        now: d.now,
                        reply: d.reply,
                    });
                }
                shared
                    .stats
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .abandoned_batches += 1;
                redo
            }
            Err(e) => {
                let why = format!("the batch of decisions it was in was dropped: {e}");
                for mut d in decided {
                    d.answer = Err(GatewayError::Persist(why.clone()));
                    d.alerts.clear();
                    done.push(d);
                }
                0
            }
        };
        take = if redo > 0 { redo } else { queue.len() };
    }
}

/// Moves worker `index` to the version in force, if it is not on it yet. An
/// error when it cannot: the worker must then decide nothing, since the
/// version it is on was replaced (trust audit 4b: it went on deciding under
/// the old limits after the reload was acknowledged).
fn switch_version(
    index: usize,
    current: &mut (Worker, u64),
    shared: &Shared,
) -> Result<(), LoadError> {
    let prepared = {
        let latest = shared
            .version
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        (latest.number != current.1).then(|| latest.take_prepared(index))
    };
    match prepared {
        None => {}
        Some(Some(next)) => *current = next,
        // Validated before it was published, so this only fails if instantiating
        // fails (the instance pool full, the load's time budget run out on a
        // starved machine).
        Some(None) => {
            shared
                .stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unprepared_switches += 1;
            *current = worker_for(&shared.version, &shared.store)?;
        }
    }
    Ok(())
}

/// Decides `job`; a read-only one is answered at once, anything else is
/// returned to be answered once durable. `losses` is [`Store::losses`] as read
/// before the decision applied anything.
fn decide(worker: &mut Worker, job: Job, shared: &Shared, losses: u64) -> Option<Done> {
    let Shared {
        stats, refusals, ..
    } = shared;
    let (op, account) = (job.request.op(), job.request.account());
    let answer = worker.answer(&job.request, job.now).map(|mut answer| {
        if let Answer::Decision(decision) = &mut answer {
            shadow_mail_refusal(decision, &job.request, worker);
        }
        answer
    });
    let (denied, usage) = match &answer {
        Ok(Answer::Decision(d)) => (d.denied, d.usage.as_ref()),
        Ok(Answer::Leads(b)) => (b.denied, b.usage.as_ref()),
        _ => (None, None),
    };
    // `unknown_plan` also answers a subscription or plan change to a plan the
    // policy lacks, with the usage of an account on one it has: not stranded.
    let stranded = match (denied, usage) {
        (Some(Reason::UnknownPlan), Some(usage)) if !worker.defines_plan(&usage.plan) => shared
            .strands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(&usage.plan, account),
        _ => false,
    };
    if let Some(shadow) = shadow_of(&answer) {
        tracing::info!(account = %crate::names::Escaped(account), op = op.name(),
            reason = crate::wire::reason_code(shadow.reason),
            upgrade_to = shadow.upgrade_to.as_deref().unwrap_or(""),
            "shadow: allowed what enforcement would have refused");
    }
    // The worker logged them in the store with the decision, so they go into
    // the same commit; they are delivered once it is durable.
    let fired = worker.take_fired();
    if let Some(reason) = denied {
        let mut kept = refusals.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == RECENT_REFUSALS {
            kept.pop_front();
        }
        kept.push_back(Refusal {
            account: account.to_owned(),
            op,
            reason,
            at: job.now,
        });
    }
    let mut counted = stats.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = worker.last_call() {
        counted.latencies.record(t.op, t.total, t.in_store);
    }
    counted.stranded_denials += u64::from(stranded);
    match &answer {
        Err(DecideError::Trap(_) | DecideError::MemoryCap { .. } | DecideError::Restart(_)) => {
            counted.traps += 1
        }
        Err(DecideError::Timeout { .. }) => counted.timeouts += 1,
        _ => {}
    }
    let answer = answer.map_err(GatewayError::from);
    if op.is_read_only() {
        // Nothing to make durable: a check at RCPT or a usage query is answered
        // at once instead of waiting behind the next disk sync.
        counted.count(op, outcome(&answer));
        if let Some(shadow) = shadow_of(&answer) {
            counted.count_shadow(shadow.reason);
        }
        drop(counted);
        let _ = job.reply.send(answer);
        return None;
    }
    drop(counted);
    Some(Done {
        op,
        answer,
        request: job.request,
        now: job.now,
        reply: job.reply,
        decided_at: Instant::now(),
        alerts: fired,
        losses,
    })
}

/// What the committer thread holds.
struct Committer {
    store: Arc<dyn Store>,
    stats: Arc<Mutex<GatewayStats>>,
    notifier: Arc<OnceLock<Notifier>>,
    gate: Option<Arc<CommitGate>>,
    undecided: Arc<AtomicUsize>,
}

impl Committer {
    /// Group commit: one `persist` for every decision made since the last one.
    ///
    /// A sync does not start at the first decision that needs one: while requests
    /// already asked for are still being decided (most often the charges that
    /// queued up during the previous sync), it waits for them, up to
    /// [`GATHER_AT_MOST`]. One sync then covers a whole wave of charges instead of
    /// the first few, which is what keeps the disk from capping throughput.
    fn run(&self, committed: &Receiver<Vec<Done>>) {
        while let Ok(mut batch) = committed.recv() {
            let deadline = Instant::now() + GATHER_AT_MOST;
            loop {
                committed.try_iter().for_each(|more| batch.extend(more));
                if self.undecided.load(Ordering::Acquire) == 0 {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match committed.recv_timeout(left) {
                    Ok(more) => batch.extend(more),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&self, batch: Vec<Done>) {
        let Committer {
            store,
            stats,
            notifier,
            gate,
            ..
        } = self;
        let started = Instant::now();
        let sealed =
            (gate.as_ref()).map(|gate| gate.write().unwrap_or_else(PoisonError::into_inner));
        let persisted = store.persist().map_err(|e: StoreError| e.to_string());
        drop(sealed);
        // A decision whose effects a failed commit dropped, before this one
        // succeeded, is not durable either (a decision handed over just after a
        // commit began can land in the next batch).
        let losses = store.losses();
        let durable = Instant::now();
        let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.commit.record(durable - started);
        stats.committed += batch.len() as u64;
        let answers: Vec<_> = batch
            .into_iter()
            .map(|done| {
                let answer = match (&persisted, done.answer) {
                    (Ok(()), Ok(_)) if done.losses != losses => Err(GatewayError::Persist(
                        "a failed commit dropped what this decision had applied".into(),
                    )),
                    (Ok(()), answer) => answer,
                    // An error answer took nothing; a decision that could not be
                    // made durable must not be acknowledged.
                    (Err(_), Err(e)) => Err(e),
                    (Err(e), Ok(_)) => Err(GatewayError::Persist(e.clone())),
                };
                stats.commit_wait.record(durable - done.decided_at);
                stats.count(done.op, outcome(&answer));
                if let Some(shadow) = shadow_of(&answer) {
                    stats.count_shadow(shadow.reason);
                }
                let alerts = if answer.is_ok() {
                    done.alerts
                } else {
                    Vec::new()
                };
                (done.reply, answer, alerts)
            })
            .collect();
        // Answer outside the lock: the workers take it after every decision.
        drop(stats);
        for (reply, answer, alerts) in answers {
            let _ = reply.send(answer);
            for alert in alerts {
                match notifier.get() {
                    Some(notifier) => notifier.notify(alert),
                    None => Notifier::log_only().notify(alert),
                }
            }
        }
    }
}

fn outcome(answer: &Result<Answer, GatewayError>) -> Outcome {
    match answer {
        Ok(Answer::Decision(d)) if d.denied.is_some() => Outcome::Deny,
        Ok(Answer::Leads(b)) if b.denied.is_some() => Outcome::Deny,
        Ok(_) => Outcome::Allow,
        Err(_) => Outcome::Error,
    }
}

/// What a job's reply channel brought: the answer, or [`GatewayError::Stopped`]
/// when the gateway dropped the job (it is shutting down).
fn received<E>(reply: Result<Result<Answer, GatewayError>, E>) -> Result<Answer, GatewayError> {
    reply.unwrap_or(Err(GatewayError::Stopped))
}

/// The op of `request` when it is answered with one decision; else the error
/// [`Gateway::decide`] gives before anything runs.
fn one_decision(request: &Request) -> Result<Op, GatewayError> {
    match request {
        Request::AddLeads { .. } | Request::EmailHistory { .. } => Err(GatewayError::Decide(
            DecideError::NotADecision(request.op()),
        )),
        _ => Ok(request.op()),
    }
}

/// The decision `answer` carries, for a request of `op`.
fn decision_of(answer: Answer, op: Op) -> Result<Decision, GatewayError> {
    match answer {
        Answer::Decision(decision) => Ok(decision),
        _ => Err(GatewayError::Decide(DecideError::NotADecision(op))),
    }
}

/// In shadow, every mail decision is answered as allowed: the component lets
/// credit refusals through itself (charging past the limit), and the gateway does
/// the same for the refusals that are not about credits (an account not yet
/// subscribed, a stranded plan, an address the policy refuses, a message id
/// reused), so that putting creditgate in front of live mail in shadow defers
/// none of it. Nothing is charged for those: there is no account to charge, or
/// nothing the component would count. Whose mode decides: the account's plan's,
/// when the decision names the plan; the gateway's, for an account it does not
/// know. A plan enforced under a gateway in shadow stays enforced.
fn shadow_mail_refusal(decision: &mut Decision, request: &Request, worker: &Worker) {
    let mail = matches!(
        request,
        Request::SendEmail { .. } | Request::ChargeEmail { .. } | Request::CheckEmail { .. }
    );
    let Some(reason) = decision.denied.filter(|_| mail) else {
        return;
    };
    if matches!(
        reason,
        Reason::EmailCreditsExhausted | Reason::LeadCreditsExhausted
    ) {
        // The component's own call: such a denial is from an enforced plan.
        return;
    }
    // The mode of the policy this decision was made under, not of a version a
    // reload may have published since.
    let plan = decision.usage.as_ref().map(|u| u.plan.as_str());
    if worker.decides_in_shadow(plan) {
        decision.denied = None;
        decision.upgrade_to = None;
        decision.shadow = Some(Shadow {
            reason,
            upgrade_to: None,
        });
    }
}

/// What enforcement would have answered a request let through in shadow.
fn shadow_of<E>(answer: &Result<Answer, E>) -> Option<&Shadow> {
    match answer {
        Ok(Answer::Decision(d)) => d.shadow.as_ref(),
        Ok(Answer::Leads(b)) => b.shadow.as_ref(),
        _ => None,
    }
}

fn plan_names(summary: &PolicySummary) -> Arc<[String]> {
    summary.plans.iter().map(|p| p.name.clone()).collect()
}

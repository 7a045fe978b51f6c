//! The wasmtime side of the host: one engine, one compiled component, and workers
//! that each own an instance of it.
//!
//! The story: an [`Engine`] configured once for short synchronous calls (epoch
//! interruption on, nothing async) → the [`Component`], compiled once and cached on
//! disk, because compiling costs 100–350 ms and loading a precompiled one under
//! 1 ms → a [`Linker`] that supplies the `state` imports and turns every other
//! import (the WASI interfaces a std guest names but must never use) into a trap →
//! an [`InstancePre`](wasmtime::component::InstancePre), type-checked once →
//! per worker a [`wasmtime::Store`] and an instance, reused for every decision.
//!
//! The guest is untrusted. It sees no filesystem, network, environment or clock
//! (time arrives as an argument); its memory is capped by [`StoreLimits`]; each call
//! has a budget of *guest* time enforced by epoch interruption, with time spent in
//! the host's own store calls not counted against it. A call that traps or runs out
//! of time fails alone: its worker throws the instance away and builds a fresh one.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, ResourceLimiter,
    StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};

use crate::alerts::{self, FiredAlert, Notifier};
use crate::bindings::wit::creditgate::policy::{state, types};
use crate::bindings::wit::exports::creditgate::policy::policy::{self as contract, Guest};
use crate::bindings::wit::{PolicyEngine, PolicyEnginePre};
use crate::bindings::{
    AccountUsage, AddressProblem, CycleUsage, Decision, Diagnostic, GroupCleared, GuardedAdd,
    GuardedMember, GuestError, LeadBatch, MemberRemoved, MembersAdded, Mode, Once, PolicySummary,
    Reason, Shadow, StateError, Tally,
};
use crate::metrics::Latencies;
use crate::request::{Answer, Op, Request};
use crate::store::{
    self, CounterAdd, CounterTally, GuardedUpdate, MemberAddGuarded, MemberAddMany, Membership,
    OnceKey, Store,
};

/// The policy component built from `guest/`, embedded in the binary.
pub static BUILTIN_COMPONENT: &[u8] = include_bytes!(env!("CREDITGATE_GUEST_WASM"));

/// How often the epoch advances: the granularity of guest time budgets.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Where the component comes from.
#[derive(Debug, Clone)]
pub enum ComponentSource {
    /// The component built from this repository's `guest/`.
    Builtin,
    /// Another component implementing the `policy-engine` world.
    File(PathBuf),
}

/// Longest policy text a worker loads, in bytes. Shipped policies are a few KiB.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Limits and settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Guest time one decision may take (host store calls excluded).
    pub decision_budget: Duration,
    /// Guest time loading a policy may take.
    pub load_budget: Duration,
    /// Linear memory an instance may grow to, in bytes.
    pub memory_limit: usize,
    /// Directory for precompiled components; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Instances to keep preallocated (wasmtime's pooling allocator), for a
    /// process with one long-lived runtime, like `serve`: an instance from the
    /// pool costs tens of microseconds where a fresh one costs hundreds, at each
    /// start, reload and trap. `None` allocates on demand, the default for the
    /// library, where a process may hold many runtimes: a pool reserves address
    /// space for all its instances up front (a few GiB of it each, untouched).
    pub instance_pool: Option<u32>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            // Generous next to a decision's ~1 µs of guest work, so that a worker
            // preempted on a loaded machine is not mistaken for a looping guest; a
            // real loop is still cut off within a few ticks of it.
            decision_budget: Duration::from_millis(50),
            load_budget: Duration::from_secs(1),
            memory_limit: 64 << 20,
            cache_dir: default_cache_dir(),
            instance_pool: None,
        }
    }
}

/// `$CREDITGATE_CACHE_DIR`, else `$XDG_CACHE_HOME/creditgate`, else `~/.cache/creditgate`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("CREDITGATE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("creditgate")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("creditgate")))
}

/// Why the component or a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes are not a valid component, or it does not implement the
    /// `creditgate:policy/policy-engine` world.
    #[error("invalid policy component {what}: {message}")]
    Component { what: String, message: String },
    /// The component implements another version of the contract.
    #[error(
        "policy component {what} was built against creditgate:policy@{found} ({name}); this \
         host implements {CONTRACT}: rebuild the component against this release's wit/"
    )]
    Version {
        what: String,
        found: String,
        name: String,
    },
    /// Instantiating the component failed.
    #[error("cannot instantiate the policy component: {0}")]
    Instantiate(String),
    /// The policy text is invalid; one diagnostic per problem.
    #[error("invalid policy ({} problem(s))", .0.len())]
    Policy(Vec<Diagnostic>),
    /// The component trapped or ran out of time while loading the policy.
    #[error("the policy component failed while loading the policy: {0}")]
    Trap(String),
}

/// Why a request got no decision; it was not allowed.
///
/// Each state primitive is atomic, so a request that failed *before* its primitive
/// took nothing. One that failed *after* (a guest trapping or timing out once its
/// primitive committed) may have taken its credits without an answer: the store
/// then counts a decision nobody was told of, which over-counts but never
/// oversells. An idempotent retry (same message id) is not charged again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecideError {
    /// The component answered with an error (state failure, bad request, no policy).
    #[error("{}", describe_guest_error(.0))]
    Policy(GuestError),
    /// The component ran past its time budget and was interrupted; its instance has
    /// been replaced.
    #[error("the policy component ran past its {budget:?} budget and was interrupted")]
    Timeout { budget: Duration },
    /// The component trapped; its instance has been replaced.
    #[error("the policy component trapped: {0}")]
    Trap(String),
    /// The component asked for more memory than its cap and trapped once
    /// refused; its instance has been replaced.
    #[error("the policy component reached its memory cap of {limit} bytes and trapped")]
    MemoryCap { limit: usize },
    /// The component trapped and a fresh instance could not be made either.
    #[error("the policy component trapped and could not be restarted: {0}")]
    Restart(LoadError),
    /// The component answered something no policy could mean (denied yet
    /// charged, a batch with the wrong number of results, ...): a broken or
    /// hostile component. The answer is not used; what it did to the store
    /// stands, except through a [`Gateway`](crate::gateway::Gateway) on a store
    /// that batches (redb), which drops the writes of every decision that got
    /// no answer, this one's as a trap's.
    #[error("the policy component answered an impossible result: {0}")]
    Contract(String),
    /// [`Worker::decide`] was asked a request that is answered with something
    /// other than one decision (a lead batch, a history): [`Worker::answer`]
    /// answers every request. Nothing was called.
    #[error("{} is not answered with one decision", .0.name())]
    NotADecision(Op),
}

/// Why [`Worker::decide_durable`] gave no answer. Nothing it decided is
/// acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// Decided, but not made durable: a crash could take it back, so it is not
    /// an answer.
    #[error("the decision could not be made durable")]
    Persist(#[source] crate::store::StoreError),
}

/// Checks what the WIT promises about a decision and that the types cannot say.
fn check_decision(d: &Decision) -> Result<(), String> {
    let credit_denial = matches!(
        d.denied,
        Some(Reason::EmailCreditsExhausted | Reason::LeadCreditsExhausted)
    );
    if d.upgrade_to.is_some() && !credit_denial {
        return Err("a plan to upgrade to, for no denial of credits".into());
    }
    if d.denied.is_some() && d.shadow.is_some() {
        return Err("denied, yet allowed in shadow".into());
    }
    if d.denied.is_some() && (d.charged > 0 || d.freed > 0 || !d.alerts.is_empty()) {
        return Err(format!(
            "denied, yet charged {}, freed {} and fired {} alert(s)",
            d.charged,
            d.freed,
            d.alerts.len()
        ));
    }
    if let Some(u) = &d.usage
        && u.email_credits.resets_at <= u.email_credits.cycle_start
    {
        return Err("a billing cycle that ends before it starts".into());
    }
    check_alerts(&d.alerts)
}

/// Checks an email decision's charge against what the store applied during its
/// call. A charge the store did not apply is a send let through uncharged, so
/// the component's word is not taken for it: the email credits `charged` says
/// were added must have been added to a counter, and an allowed `charge-email`
/// (whose cost the gateway counted, not the component) is charged in full, or
/// is a repeat of a message already charged. What else a component charges,
/// and for what, is its rule.
fn check_charged(request: &Request, d: &Decision, charges: Charges) -> Result<(), String> {
    // Email credits are counters; lead credits are memberships, whose adds
    // the component answers from the store's own counts.
    if !matches!(
        request,
        Request::SendEmail { .. } | Request::ChargeEmail { .. }
    ) {
        return Ok(());
    }
    if d.charged > charges.applied {
        return Err(format!(
            "charged {}, but the store added {}",
            d.charged, charges.applied
        ));
    }
    if let Request::ChargeEmail { cost, .. } = request
        && d.denied.is_none()
        && d.charged != *cost
        && !(d.charged == 0 && charges.repeated)
    {
        return Err(format!(
            "charge-email of {cost} allowed with {} charged, and no repeat of a charged message",
            d.charged
        ));
    }
    Ok(())
}

fn check_alerts(alerts: &[crate::bindings::Alert]) -> Result<(), String> {
    match alerts
        .iter()
        .find(|a| !(1..=100).contains(&a.threshold) || a.limit == 0)
    {
        Some(a) => Err(format!(
            "an alert at {}% of a limit of {}",
            a.threshold, a.limit
        )),
        None => Ok(()),
    }
}

impl DecideError {
    /// Whether the store's data the component read is malformed (written by an
    /// incompatible release, or by hand): retrying will not help, and a listing
    /// leaves the account out, saying so, rather than failing whole.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            DecideError::Policy(GuestError::State(StateError::Corrupt(_)))
        )
    }
}

fn describe_guest_error(e: &GuestError) -> String {
    match e {
        GuestError::NoPolicy => "the policy component has no policy loaded".into(),
        GuestError::State(StateError::Unavailable(m)) => format!("store unavailable: {m}"),
        GuestError::State(StateError::Corrupt(m)) => format!("store data corrupt: {m}"),
        GuestError::State(StateError::InvalidArgument(m)) => format!("invalid argument: {m}"),
        GuestError::InvalidRequest(m) => format!("invalid request: {m}"),
    }
}

/// `file:line:column: key.path: message`, the way compilers point at a problem.
pub fn located(file: &Path, d: &Diagnostic) -> String {
    let place = if d.line == 0 {
        file.display().to_string()
    } else {
        format!("{}:{}:{}", file.display(), d.line, d.column)
    };
    if d.path.is_empty() {
        format!("{place}: {}", d.message)
    } else {
        format!("{place}: {}: {}", d.path, d.message)
    }
}

/// The compiled component and everything needed to make workers from it.
pub struct Runtime {
    engine: Engine,
    pre: PolicyEnginePre<HostState>,
    config: RuntimeConfig,
    /// Shared with every worker: epochs must keep advancing while any instance can
    /// run, even after the runtime itself is dropped.
    ticker: Arc<Ticker>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(source: &ComponentSource, config: RuntimeConfig) -> Result<Self, LoadError> {
        let engine = Engine::new(&engine_config(&config)).map_err(|e| LoadError::Component {
            what: "engine".into(),
            message: format!("{e:#}"),
        })?;
        let (bytes, what) = match source {
            ComponentSource::Builtin => (
                std::borrow::Cow::Borrowed(BUILTIN_COMPONENT),
                "(built in)".to_string(),
            ),
            ComponentSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
                    path: path.clone(),
                    source,
                })?;
                (std::borrow::Cow::Owned(bytes), path.display().to_string())
            }
        };
        let invalid = |e: wasmtime::Error| LoadError::Component {
            what: what.clone(),
            message: format!("{e:#}"),
        };
        let component = compile_cached(&engine, &config, &bytes).map_err(invalid)?;
        check_contract(&engine, &component, &what)?;

        let mut linker = Linker::<HostState>::new(&engine);
        PolicyEngine::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(invalid)?;
        // A std guest for wasm32-wasip2 imports WASI interfaces (stdio, environment,
        // clocks) even when it never calls them. It gets traps: no ambient authority.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(invalid)?;
        let pre = PolicyEnginePre::new(linker.instantiate_pre(&component).map_err(invalid)?)
            .map_err(invalid)?;
        let ticker = Arc::new(Ticker::start(engine.clone()));
        Ok(Self {
            engine,
            pre,
            config,
            ticker,
        })
    }

    /// A worker over `store`, with `policy` loaded under a gateway that enforces
    /// its limits. One worker serves one thread.
    pub fn worker(
        &self,
        store: Arc<dyn Store>,
        policy: &str,
    ) -> Result<(Worker, PolicySummary), LoadError> {
        self.worker_in(store, policy, Mode::Enforce)
    }

    /// [`Runtime::worker`] under a gateway in `mode`: the mode of the plans
    /// that set none (see the WIT's `load-policy`).
    pub fn worker_in(
        &self,
        store: Arc<dyn Store>,
        policy: &str,
        mode: Mode,
    ) -> Result<(Worker, PolicySummary), LoadError> {
        let mut worker = Worker {
            pre: self.pre.clone(),
            engine: self.engine.clone(),
            config: self.config.clone(),
            instance: Instance::new(
                &self.pre,
                &self.engine,
                &self.config,
                &self.ticker.ticks,
                store,
            )?,
            policy: Arc::from(policy),
            mode,
            plans: Vec::new(),
            modes: Vec::new(),
            accounts: HashMap::default(),
            campaigns: HashMap::default(),
            calls: 0,
            latencies: Latencies::default(),
            last_call: None,
            fired: Vec::new(),
            notifier: Notifier::log_only(),
            _ticker: self.ticker.clone(),
        };
        let summary = worker.load_policy_in(policy, mode)?;
        Ok((worker, summary))
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }
}

/// The version of the contract this host implements.
pub const CONTRACT: &str = "creditgate:policy@0.2.0";

/// Refuses a component whose imports or exports name another version of the
/// contract, before linking: the linker's own message would name one missing
/// function, where the operator needs to hear which release built it.
fn check_contract(engine: &Engine, component: &Component, what: &str) -> Result<(), LoadError> {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(name, _)| name);
    let exports = ty.exports(engine).map(|(name, _)| name);
    let (package, ours) = CONTRACT.split_once('@').unwrap_or((CONTRACT, ""));
    for name in imports.chain(exports) {
        let Some(rest) = name.strip_prefix(package).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let found = rest.split_once('@').map_or("(no version)", |(_, v)| v);
        if found != ours {
            return Err(LoadError::Version {
                what: what.to_string(),
                found: found.to_string(),
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

fn engine_config(runtime: &RuntimeConfig) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    if let Some(instances) = runtime.instance_pool {
        // Per component instance: a std Rust guest for wasm32-wasip2 is a few core
        // instances (the program and its adapters) with a memory or two, as the
        // store limits below also allow.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .max_memory_size(runtime.memory_limit)
            // Reused slots are zeroed with memset up to this much instead of
            // being given back to the kernel and faulted in again.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(1 << 16);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Compiles `bytes`, or loads the result of an earlier compilation from `cache_dir`.
fn compile_cached(
    engine: &Engine,
    config: &RuntimeConfig,
    bytes: &[u8],
) -> wasmtime::Result<Component> {
    let Some(dir) = config.cache_dir.as_deref() else {
        return Component::new(engine, bytes);
    };
    // The key covers the component and this host build: a different wasmtime or
    // engine configuration is also caught by `deserialize`, which then fails and
    // the entry is rebuilt.
    let mut hash = Sha256::new();
    hash.update(bytes);
    hash.update(env!("CARGO_PKG_VERSION"));
    hash.update(format!("{:?}", engine_config(config)));
    let key: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{key}.cwasm"));
    if path.is_file() {
        // Mapped rather than read: instances then start from copy-on-write pages
        // of the file instead of a copy of the guest's initial memory.
        //
        // SAFETY: the file is one this function wrote with `Component::serialize` into
        // the user's own cache directory, named by the hash of its source; wasmtime
        // checks the header, version and engine settings before using it. It is
        // never changed in place (entries are replaced by rename, which leaves a
        // mapped file as it was). A file someone else forged or altered there is
        // outside what the host defends against, as is a forged executable in the
        // user's PATH.
        #[allow(unsafe_code)]
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
            return Ok(component);
        }
    }
    let component = Component::new(engine, bytes)?;
    // A cache that cannot be written only costs time on the next start.
    if let Ok(serialized) = component.serialize() {
        let _ = write_atomically(dir, &path, &serialized);
    }
    Ok(component)
}

fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    /// Ticks so far: the engine's epoch, readable by the host (wasmtime's is not).
    ticks: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), ticks.clone());
        let thread = std::thread::Builder::new()
            .name("creditgate-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    count.fetch_add(1, Ordering::Relaxed);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self {
            stop,
            ticks,
            thread,
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the host keeps in each wasmtime store.
pub struct HostState {
    store: Arc<dyn Store>,
    limits: Limits,
    /// The names the instance interned (WIT `state.intern`), by handle.
    names: Names,
    /// The call in progress, for the epoch callback and the latency split.
    clock: CallClock,
    /// What the call in progress had the store add to counters.
    charges: Charges,
}

/// What one call had the store add to counters (`counter-add-guarded`): the
/// host's own account of a charge, beside what the component says it charged.
#[derive(Debug, Clone, Copy, Default)]
struct Charges {
    /// The amounts the store applied.
    applied: u64,
    /// Whether an addition found its `once` key already charged (a repeat).
    repeated: bool,
}

/// The instance's resource caps ([`StoreLimits`]), remembering whether a memory
/// growth was refused during the call in progress: the trap a guest's allocator
/// raises next is then reported as the cap it is, not as whatever instruction it
/// stopped on.
struct Limits {
    caps: StoreLimits,
    memory_refused: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.caps.memory_growing(current, desired, maximum)?;
        self.memory_refused |= !allowed;
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.caps.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.caps.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.caps.instances()
    }

    fn tables(&self) -> usize {
        self.caps.tables()
    }

    fn memories(&self) -> usize {
        self.caps.memories()
    }
}

/// The strings an instance interned, by handle, and their total length.
#[derive(Default)]
struct Names {
    texts: Vec<Box<str>>,
    bytes: usize,
}

/// Most names one instance may intern before it forgets them (see the WIT).
const MAX_NAMES: usize = 262_144;
/// Most bytes of names one instance may intern before it forgets them.
const MAX_NAME_BYTES: usize = 16 << 20;

impl Names {
    fn intern(&mut self, text: String) -> Result<u32, StateError> {
        if self.texts.len() >= MAX_NAMES || self.bytes + text.len() > MAX_NAME_BYTES {
            return Err(StateError::InvalidArgument(format!(
                "the component interned {} names ({} bytes): the limit is {MAX_NAMES} \
                 ({MAX_NAME_BYTES} bytes) until it forgets them",
                self.texts.len(),
                self.bytes
            )));
        }
        self.bytes += text.len();
        self.texts.push(text.into_boxed_str());
        // Below MAX_NAMES, so it fits.
        Ok(u32::try_from(self.texts.len() - 1).unwrap_or(u32::MAX))
    }

    fn get(&self, name: u32) -> Result<&str, StateError> {
        usize::try_from(name)
            .ok()
            .and_then(|i| self.texts.get(i))
            .map(|t| &**t)
            .ok_or_else(|| {
                StateError::InvalidArgument(format!(
                    "name handle {name} was not given to this instance (or was forgotten)"
                ))
            })
    }

    fn forget(&mut self) {
        *self = Names::default();
    }
}

/// The clocks of the call in progress.
///
/// Two kinds: the epoch ticker's count (a relaxed atomic load, about a
/// nanosecond), which bounds the guest's time and discounts the store's from it
/// at a tick's resolution; and the system clock (`clock_gettime`, 20-25 ns a
/// read), which times the whole call on every decision and the store calls only
/// on every [`SPLIT_EVERY`]th, for the guest/store split of the latency
/// histograms. The split is a sample, the budget and the total are not.
struct CallClock {
    ticks: Arc<AtomicU64>,
    /// Tick count when the call started; `None` between calls.
    started_tick: Option<u64>,
    budget_ticks: u64,
    /// Ticks that passed inside store calls during this call.
    store_ticks: u64,
    /// Whether this call times its store calls with the system clock.
    split: bool,
    /// Time spent in store calls, when `split`.
    in_store: Duration,
}

/// One call in this many has its store calls timed by the system clock.
pub const SPLIT_EVERY: u32 = 8;

impl CallClock {
    fn timed<T>(
        &mut self,
        f: impl FnOnce() -> Result<T, crate::store::StoreError>,
    ) -> Result<T, StateError> {
        let tick = self.ticks.load(Ordering::Relaxed);
        let result = if self.split {
            let started = Instant::now();
            let result = f();
            self.in_store += started.elapsed();
            result
        } else {
            f()
        };
        self.store_ticks += self.ticks.load(Ordering::Relaxed).wrapping_sub(tick);
        result.map_err(StateError::from)
    }
}

impl HostState {
    /// Runs the store primitive `f` on the strings `handles` stand for, timed.
    fn on<const N: usize, T>(
        &mut self,
        handles: [u32; N],
        f: impl FnOnce(&dyn Store, [&str; N]) -> Result<T, crate::store::StoreError>,
    ) -> Result<T, StateError> {
        let mut texts = [""; N];
        for (text, handle) in texts.iter_mut().zip(handles) {
            *text = self.names.get(handle)?;
        }
        let store = &*self.store;
        self.clock.timed(|| f(store, texts))
    }
}

impl types::Host for HostState {}

impl state::Host for HostState {
    fn intern(&mut self, text: String) -> Result<u32, StateError> {
        self.names.intern(text)
    }
    fn forget_names(&mut self) {
        self.names.forget();
    }
    fn record_get(&mut self, scope: u32, key: u32) -> Result<Option<String>, StateError> {
        self.on([scope, key], |store, [scope, key]| {
            store.record_get(scope, key)
        })
    }
    fn record_insert(&mut self, scope: u32, key: u32, value: String) -> Result<bool, StateError> {
        self.on([scope, key], |store, [scope, key]| {
            store.record_insert(scope, key, &value)
        })
    }
    fn record_update(&mut self, scope: u32, key: u32, value: String) -> Result<bool, StateError> {
        self.on([scope, key], |store, [scope, key]| {
            store.record_update(scope, key, &value)
        })
    }
    fn record_update_guarded(
        &mut self,
        scope: u32,
        guard: state::Guard,
        key: u32,
        value: String,
    ) -> Result<bool, StateError> {
        let (store, names, clock) = self.parts();
        let update = GuardedUpdate {
            scope: names.get(scope)?,
            guard: guard_of(names, guard)?,
            key: names.get(key)?,
            value: &value,
        };
        clock.timed(|| store.record_update_guarded(update))
    }
    fn counter_get(&mut self, scope: u32, counter: u32, now: i64) -> Result<u64, StateError> {
        self.on([scope, counter], |store, [scope, counter]| {
            store.counter_get(scope, counter, now)
        })
    }
    fn member_add_many(
        &mut self,
        scope: u32,
        group: u32,
        members: Vec<String>,
        limit: Option<u64>,
    ) -> Result<MembersAdded, StateError> {
        self.on([scope, group], |store, [scope, group]| {
            store.member_add_many(MemberAddMany {
                scope,
                group,
                members: &members,
                limit,
            })
        })
    }
    fn member_remove(
        &mut self,
        scope: u32,
        group: u32,
        member: String,
    ) -> Result<MemberRemoved, StateError> {
        self.on([scope, group], |store, [scope, group]| {
            let member = &member;
            store.member_remove(Membership {
                scope,
                group,
                member,
            })
        })
    }
    fn group_clear(&mut self, scope: u32, group: u32) -> Result<GroupCleared, StateError> {
        self.on([scope, group], |store, [scope, group]| {
            store.group_clear(scope, group)
        })
    }
    fn member_count(&mut self, scope: u32) -> Result<u64, StateError> {
        self.on([scope], |store, [scope]| store.member_count(scope))
    }
    fn store_secret(&mut self) -> Result<Vec<u8>, StateError> {
        self.on([], |store, []| store.secret().map(Vec::from))
    }
    fn counter_add_guarded(
        &mut self,
        scope: u32,
        guard: state::Guard,
        counter: u32,
        amount: u64,
        limit: Option<u64>,
        once: Option<state::Once>,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<GuardedAdd, StateError> {
        let (store, names, clock) = self.parts();
        let (scope, counter) = (names.get(scope)?, names.get(counter)?);
        let guard = guard_of(names, guard)?;
        let once = match once {
            Some(o) => Some(Once::joined(
                names.get(o.prefix)?,
                &o.key,
                o.fingerprint,
                o.expires_at,
            )),
            None => None,
        };
        let add = CounterAdd {
            scope,
            guard: Some(guard),
            name: counter,
            amount,
            limit,
            once: once.as_ref().map(OnceKey::of),
            expires_at,
            now,
        };
        let added = clock.timed(|| store.counter_add_guarded(add))?;
        match added {
            GuardedAdd::Applied(_) => {
                self.charges.applied = self.charges.applied.saturating_add(amount);
            }
            GuardedAdd::Repeated(_) => self.charges.repeated = true,
            GuardedAdd::Refused(_) | GuardedAdd::Conflict(_) | GuardedAdd::Stale => {}
        }
        Ok(added)
    }
    fn member_add_guarded(
        &mut self,
        scope: u32,
        guard: state::Guard,
        group: u32,
        member: String,
        limit: Option<u64>,
        counter: u32,
        now: i64,
    ) -> Result<Option<GuardedMember>, StateError> {
        let (store, names, clock) = self.parts();
        let (scope, group, counter) = (names.get(scope)?, names.get(group)?, names.get(counter)?);
        let add = MemberAddGuarded {
            scope,
            guard: Some(guard_of(names, guard)?),
            group,
            member: &member,
            limit,
            name: counter,
            now,
        };
        clock.timed(|| store.member_add_guarded(add))
    }
    fn counter_tally(
        &mut self,
        scope: u32,
        guard: state::Guard,
        counter: u32,
        now: i64,
    ) -> Result<Option<Tally>, StateError> {
        let (store, names, clock) = self.parts();
        let (scope, counter) = (names.get(scope)?, names.get(counter)?);
        let tally = CounterTally {
            scope,
            guard: Some(guard_of(names, guard)?),
            name: counter,
            now,
        };
        clock.timed(|| store.counter_tally(tally))
    }
}

impl HostState {
    /// The store, the interned names and the clock, borrowed apart: a store
    /// call is timed while it reads names.
    fn parts(&mut self) -> (&dyn Store, &Names, &mut CallClock) {
        (self.store.as_ref(), &self.names, &mut self.clock)
    }
}

/// The store's guard for the contract's: the record key and the value its
/// version token was interned from.
fn guard_of(names: &Names, guard: state::Guard) -> Result<store::Guard<'_>, StateError> {
    Ok(store::Guard {
        key: names.get(guard.key)?,
        value: names.get(guard.version)?,
    })
}

/// A wasmtime store and the component instance living in it.
struct Instance {
    store: wasmtime::Store<HostState>,
    bindings: PolicyEngine,
}

impl Instance {
    fn new(
        pre: &PolicyEnginePre<HostState>,
        engine: &Engine,
        config: &RuntimeConfig,
        ticks: &Arc<AtomicU64>,
        store: Arc<dyn Store>,
    ) -> Result<Self, LoadError> {
        let limits = Limits {
            caps: StoreLimitsBuilder::new()
                .memory_size(config.memory_limit)
                .instances(4)
                .memories(4)
                .tables(8)
                .build(),
            memory_refused: false,
        };
        let mut wasm_store = wasmtime::Store::new(
            engine,
            HostState {
                store,
                limits,
                names: Names::default(),
                clock: CallClock {
                    ticks: ticks.clone(),
                    started_tick: None,
                    budget_ticks: 0,
                    store_ticks: 0,
                    split: false,
                    in_store: Duration::ZERO,
                },
                charges: Charges::default(),
            },
        );
        wasm_store.limiter(|s| &mut s.limits);
        // Budgets count guest time only: when the deadline passes, the callback
        // subtracts the time spent in host imports (a durable commit may take
        // milliseconds) and extends the deadline by what the guest has left.
        wasm_store.epoch_deadline_callback(|ctx| {
            let clock = &ctx.data().clock;
            let Some(started) = clock.started_tick else {
                return Ok(UpdateDeadline::Continue(1));
            };
            let elapsed = clock.ticks.load(Ordering::Relaxed).wrapping_sub(started);
            let guest = elapsed.saturating_sub(clock.store_ticks);
            match clock.budget_ticks.checked_sub(guest) {
                Some(left) if left > 0 => Ok(UpdateDeadline::Continue(left)),
                _ => Ok(UpdateDeadline::Interrupt),
            }
        });
        let bindings = pre
            .instantiate(&mut wasm_store)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        Ok(Self {
            store: wasm_store,
            bindings,
        })
    }

    /// Runs one export under `budget` of guest time; returns the export's result,
    /// the time the call took and, when `split`, the part of it spent in store
    /// primitives (see [`CallClock`]).
    fn call<T>(
        &mut self,
        budget: Duration,
        split: bool,
        f: impl FnOnce(&PolicyEngine, &mut wasmtime::Store<HostState>) -> wasmtime::Result<T>,
    ) -> (wasmtime::Result<T>, Duration, Option<Duration>) {
        let started = Instant::now();
        let state = self.store.data_mut();
        // A refusal belongs to the call it happened in: a guest that survived
        // one earlier must not have a later, unrelated trap called the cap.
        state.limits.memory_refused = false;
        state.charges = Charges::default();
        let clock = &mut state.clock;
        clock.started_tick = Some(clock.ticks.load(Ordering::Relaxed));
        clock.budget_ticks = ticks(budget);
        clock.store_ticks = 0;
        clock.split = split;
        clock.in_store = Duration::ZERO;
        self.store.set_epoch_deadline(ticks(budget));
        let result = f(&self.bindings, &mut self.store);
        let total = started.elapsed();
        let clock = &mut self.store.data_mut().clock;
        clock.started_tick = None;
        (result, total, split.then_some(clock.in_store))
    }

    /// Loads `policy` into this instance, under a gateway in `mode`; a trap or
    /// timeout is `LoadError::Trap`.
    fn load_policy(
        &mut self,
        policy: &str,
        mode: Mode,
        budget: Duration,
    ) -> Result<PolicySummary, LoadError> {
        if policy.len() > MAX_POLICY_BYTES {
            // Refused before it is copied into the guest: a policy is a few KiB,
            // and a huge one would only cost guest memory and load time.
            return Err(LoadError::Policy(vec![Diagnostic {
                message: format!(
                    "the policy is {} bytes long; the limit is {MAX_POLICY_BYTES}",
                    policy.len()
                ),
                path: String::new(),
                line: 0,
                column: 0,
            }]));
        }
        let (result, ..) = self.call(budget, false, |b, s| {
            b.creditgate_policy_policy()
                .call_load_policy(s, policy, mode)
        });
        match result {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(diagnostics)) => Err(LoadError::Policy(diagnostics)),
            Err(trap) => Err(LoadError::Trap(trap_message(&trap, budget))),
        }
    }

    fn shared_store(&self) -> Arc<dyn Store> {
        self.store.data().store.clone()
    }
}

/// Whole epoch ticks covering `d`, at least one.
fn ticks(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    u64::try_from(d.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Handles an instance gave, by the name they stand for.
///
/// Names come from the network, so the hash is seeded per process (foldhash's
/// `RandomState`): crafted colliding names cannot turn the look-up that every
/// decision makes into a scan of the map; and it is fast on short keys.
type Handles = HashMap<String, u32, foldhash::fast::RandomState>;

/// Account and campaign handles a worker keeps before it asks its instance to
/// forget them all (see the WIT's `forget-handles`).
const MAX_HANDLES: usize = 16_384;

/// Answers decisions on one thread: an instance of the component with a policy
/// loaded, and the latency of every decision it made.
pub struct Worker {
    pre: PolicyEnginePre<HostState>,
    engine: Engine,
    config: RuntimeConfig,
    instance: Instance,
    /// Reloaded into a replacement instance after a trap.
    policy: Arc<str>,
    /// The gateway's mode, loaded with the policy.
    mode: Mode,
    /// The plans of the loaded policy, by the index the component answers.
    plans: Vec<String>,
    /// The mode each of those plans is decided in, as the component said.
    modes: Vec<Mode>,
    /// Handles of the accounts the instance has resolved (WIT `account-handle`).
    accounts: Handles,
    /// Handles of the campaigns the instance has resolved (WIT `campaign-handle`).
    campaigns: Handles,
    /// Calls so far, to pick the ones whose guest/store split is timed.
    calls: u32,
    latencies: Latencies,
    last_call: Option<CallTiming>,
    /// Alerts fired since the last [`Worker::persist`] or [`Worker::take_fired`]:
    /// logged in the store, not yet delivered.
    fired: Vec<FiredAlert>,
    /// Where [`Worker::persist`] delivers them.
    notifier: Notifier,
    _ticker: Arc<Ticker>,
}

/// How long the last call took, whole and in the store.
#[derive(Debug, Clone, Copy)]
pub struct CallTiming {
    pub op: Op,
    pub total: Duration,
    /// The part in store primitives, timed on one call in [`SPLIT_EVERY`].
    pub in_store: Option<Duration>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Loads a new policy into this worker's instance, in the gateway mode it
    /// has. On error the old one stays.
    pub fn load_policy(&mut self, policy: &str) -> Result<PolicySummary, LoadError> {
        self.load_policy_in(policy, self.mode)
    }

    /// Loads a new policy under a gateway in `mode`; on error the old policy
    /// and mode stay, together.
    pub fn load_policy_in(&mut self, policy: &str, mode: Mode) -> Result<PolicySummary, LoadError> {
        match self
            .instance
            .load_policy(policy, mode, self.config.load_budget)
        {
            Ok(summary) => {
                self.policy = Arc::from(policy);
                self.mode = mode;
                self.plans = summary.plans.iter().map(|p| p.name.clone()).collect();
                self.modes = summary.plans.iter().map(|p| p.mode).collect();
                Ok(summary)
            }
            Err(trapped @ LoadError::Trap(_)) => {
                // The old policy lives on in a fresh instance; if even that fails,
                // this worker is unusable and says so on its next decision.
                let _ = self.replace_instance();
                Err(trapped)
            }
            Err(e) => Err(e),
        }
    }

    /// Decides `request` as of `now` (nanoseconds since the Unix epoch).
    ///
    /// The decision's effects are applied in the store but not necessarily durable:
    /// call [`Worker::persist`] before acknowledging it to anyone.
    ///
    /// Every alert the decision fires is logged in the store here, with the
    /// decision's own effects, so that every front end keeps the same log; it is
    /// delivered by [`Worker::persist`] (or handed over by [`Worker::take_fired`]).
    ///
    /// A lead batch or a history is no decision: refused with
    /// [`DecideError::NotADecision`] (see [`Worker::answer`]).
    pub fn decide(&mut self, request: &Request, now: i64) -> Result<Decision, DecideError> {
        let decision = self.decide_unchecked(request, now)?;
        check_decision(&decision).map_err(DecideError::Contract)?;
        check_charged(request, &decision, self.instance.store.data().charges)
            .map_err(DecideError::Contract)?;
        self.check_mode(request, &decision)
            .map_err(DecideError::Contract)?;
        let fired = FiredAlert::of_decision(request.account(), &decision, now);
        self.log_alerts(fired, now);
        Ok(decision)
    }

    /// Logs `fired` in the store, as not yet durable effects of the decision that
    /// fired them. A failure to log is reported, not returned: the decision itself
    /// stands, and failing it now would hide a charge already applied.
    fn log_alerts(&mut self, fired: Vec<FiredAlert>, now: i64) {
        // Most decisions fire none: then the store is not even borrowed.
        if fired.is_empty() {
            return;
        }
        let store = self.instance.shared_store();
        for alert in fired {
            if let Err(e) = alerts::record(store.as_ref(), &alert, now) {
                tracing::warn!(account = %alert.account, "cannot log an alert: {e}");
            }
            self.fired.push(alert);
        }
    }

    /// Takes the alerts fired since the last call, for a caller that makes the
    /// store durable itself (the gateway's committer) and delivers them after.
    pub fn take_fired(&mut self) -> Vec<FiredAlert> {
        std::mem::take(&mut self.fired)
    }

    /// Where [`Worker::persist`] delivers fired alerts; logged only by default.
    pub fn set_notifier(&mut self, notifier: Notifier) {
        self.notifier = notifier;
    }

    /// The guest time a call about `addresses` addresses may take: the decision
    /// budget, and 20 µs more per address, for the per-address work the guest does
    /// (normalising, fingerprinting), so that a send to thousands of recipients
    /// or a large lead batch is not cut off as a runaway.
    fn budget_for(&self, addresses: usize) -> Duration {
        let per_address =
            Duration::from_micros(20).saturating_mul(u32::try_from(addresses).unwrap_or(u32::MAX));
        self.config.decision_budget.saturating_add(per_address)
    }

    /// Answers `request` as of `now`: [`Worker::decide`] for a decision,
    /// [`Worker::add_leads`] for a batch of leads, [`Worker::email_history`]
    /// for a history. Not yet durable, like [`Worker::decide`].
    pub fn answer(&mut self, request: &Request, now: i64) -> Result<Answer, DecideError> {
        match request {
            Request::AddLeads {
                account,
                campaign,
                emails,
            } => self
                .add_leads(account, campaign, emails, now)
                .map(Answer::Leads),
            Request::EmailHistory { account, cycles } => self
                .email_history(account, *cycles, now)
                .map(Answer::History),
            request => self.decide(request, now).map(Answer::Decision),
        }
    }

    fn decide_unchecked(&mut self, request: &Request, now: i64) -> Result<Decision, DecideError> {
        let budget = match request {
            Request::SendEmail { to, .. } => self.budget_for(to.len()),
            Request::AddLeads { .. } | Request::EmailHistory { .. } => {
                return Err(DecideError::NotADecision(request.op()));
            }
            _ => self.config.decision_budget,
        };
        self.make_room_for_handles()?;
        let account = self.account_handle(request.account())?;
        let campaign = match request {
            Request::AddLead { campaign, .. }
            | Request::DeleteLead { campaign, .. }
            | Request::DeleteCampaignLeads { campaign, .. } => self.campaign_handle(campaign)?,
            _ => 0,
        };
        let decision = self.call(request.op(), budget, |p, s| match request {
            Request::Subscribe { plan, anchor, .. } => {
                p.call_subscribe(s, account, plan, anchor.unwrap_or(now), now)
            }
            Request::ChangePlan { plan, .. } => p.call_change_plan(s, account, plan, now),
            Request::AddLead { email, .. } => p.call_add_lead(s, account, campaign, email, now),
            Request::DeleteLead { email, .. } => {
                p.call_delete_lead(s, account, campaign, email, now)
            }
            Request::DeleteCampaignLeads { .. } => {
                p.call_delete_campaign_leads(s, account, campaign, now)
            }
            Request::SendEmail {
                to,
                kind,
                message_id,
                ..
            } => {
                // One recipient travels alone (see the WIT's `send-email`).
                let (first, more) = match to.split_first() {
                    Some((first, [])) => (Some(first.as_str()), None),
                    Some((first, more)) => (Some(first.as_str()), Some(more)),
                    None => (None, None),
                };
                p.call_send_email(s, account, first, more, *kind, message_id.as_deref(), now)
            }
            Request::ChargeEmail {
                cost, message_id, ..
            } => p.call_charge_email(s, account, *cost, message_id.as_deref(), now),
            Request::CheckEmail { cost, .. } => p.call_check_email(s, account, *cost, now),
            Request::Usage { .. } => p.call_usage(s, account, now),
            Request::AddLeads { .. } | Request::EmailHistory { .. } => {
                unreachable!("refused above: not one decision")
            }
        })?;
        Ok(Decision {
            denied: decision.denied,
            charged: decision.charged,
            freed: decision.freed,
            usage: self.usage(decision.usage)?,
            alerts: decision.alerts,
            upgrade_to: self.plan_name(decision.upgrade_to)?,
            shadow: self.shadow(decision.shadow)?,
        })
    }

    /// The plan at `index` of the loaded policy, by name.
    fn plan(&self, index: u32) -> Result<String, DecideError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.plans.get(i))
            .cloned()
            .ok_or_else(|| {
                DecideError::Contract(format!(
                    "plan {index} of a policy with {} plan(s)",
                    self.plans.len()
                ))
            })
    }

    fn plan_name(&self, index: Option<u32>) -> Result<Option<String>, DecideError> {
        index.map(|i| self.plan(i)).transpose()
    }

    fn shadow(
        &self,
        shadow: Option<contract::ShadowRefusal>,
    ) -> Result<Option<Shadow>, DecideError> {
        shadow
            .map(|s| match s.reason {
                Reason::EmailCreditsExhausted | Reason::LeadCreditsExhausted => Ok(Shadow {
                    reason: s.reason,
                    upgrade_to: self.plan_name(s.upgrade_to)?,
                }),
                _ => Err(DecideError::Contract(
                    "a shadow refusal for no lack of credits".into(),
                )),
            })
            .transpose()
    }

    /// Whether `plan` is decided in shadow mode, as the component said when it
    /// loaded the policy.
    fn in_shadow(&self, plan: &str) -> bool {
        // Most policies have no plan in shadow: then no name is compared.
        self.modes.contains(&Mode::Shadow) && self.plan_mode(plan) == Some(Mode::Shadow)
    }

    /// The mode `plan` is decided in, as the component said when it loaded the
    /// policy; None for a plan the policy lacks.
    fn plan_mode(&self, plan: &str) -> Option<Mode> {
        let i = self.plans.iter().position(|name| name == plan)?;
        self.modes.get(i).copied()
    }

    /// Whether this worker's policy has `plan`.
    pub fn defines_plan(&self, plan: &str) -> bool {
        self.plans.iter().any(|name| name == plan)
    }

    /// Whether this worker's policy decides an account on `plan` in shadow
    /// mode: the plan's mode as the component loaded it, or the gateway's for
    /// an account the policy does not know (None) or a plan it lacks.
    pub fn decides_in_shadow(&self, plan: Option<&str>) -> bool {
        plan.and_then(|p| self.plan_mode(p)).unwrap_or(self.mode) == Mode::Shadow
    }

    /// Shadow never leaks into enforcement: a decision that says it was let
    /// through in shadow must be about an account whose plan the component put
    /// in shadow, and a charge allowed on a plan it enforces must leave the
    /// charged credit within its limit. A component that answers otherwise is
    /// broken, and its answer is not used (the request fails closed).
    fn check_mode(&self, request: &Request, d: &Decision) -> Result<(), String> {
        let Some(usage) = &d.usage else {
            return match d.shadow {
                Some(_) => Err("a shadow refusal without usage".into()),
                None => Ok(()),
            };
        };
        let shadow = self.in_shadow(&usage.plan);
        if d.shadow.is_some() && !shadow {
            return Err(format!(
                "a shadow refusal on plan {:?}, which is enforced",
                usage.plan
            ));
        }
        if shadow || d.denied.is_some() || d.charged == 0 {
            return Ok(());
        }
        let (used, limit) = match request {
            Request::SendEmail { .. } | Request::ChargeEmail { .. } => {
                (usage.email_credits.used, usage.email_credits.limit)
            }
            Request::AddLead { .. } => (usage.lead_credits.used, usage.lead_credits.limit),
            _ => return Ok(()),
        };
        match limit {
            Some(limit) if used > limit => Err(format!(
                "a charge allowed past the limit ({used} of {limit}) of plan {:?}, which is enforced",
                usage.plan
            )),
            _ => Ok(()),
        }
    }

    /// Makes the instance forget every handle when there may not be room for
    /// the two a request resolves (see the WIT's `forget-handles`). Before
    /// resolving them, so that it never forgets one a request is about to use.
    fn make_room_for_handles(&mut self) -> Result<(), DecideError> {
        if self.accounts.len() + self.campaigns.len() + 2 > MAX_HANDLES {
            self.plain_call(|p, s| p.call_forget_handles(s))?;
            self.accounts.clear();
            self.campaigns.clear();
        }
        Ok(())
    }

    /// The handle of `account` in this instance, resolved on first use.
    fn account_handle(&mut self, account: &str) -> Result<u32, DecideError> {
        self.handle(
            account,
            |w| &mut w.accounts,
            |p, s, name| p.call_account_handle(s, name),
        )
    }

    /// The handle of `campaign` in this instance, resolved on first use.
    fn campaign_handle(&mut self, campaign: &str) -> Result<u32, DecideError> {
        self.handle(
            campaign,
            |w| &mut w.campaigns,
            |p, s, name| p.call_campaign_handle(s, name),
        )
    }

    /// The handle of `name` in the map `handles` picks, asked of the instance
    /// by `resolve` on first use.
    fn handle(
        &mut self,
        name: &str,
        handles: fn(&mut Self) -> &mut Handles,
        resolve: fn(&Guest, &mut wasmtime::Store<HostState>, &str) -> wasmtime::Result<u32>,
    ) -> Result<u32, DecideError> {
        if let Some(&handle) = handles(self).get(name) {
            return Ok(handle);
        }
        let handle = self.plain_call(|p, s| resolve(p, s, name))?;
        handles(self).insert(name.to_string(), handle);
        Ok(handle)
    }

    /// A call that is no decision (not timed into the latencies) and cannot
    /// answer an error; a trap or timeout replaces the instance.
    fn plain_call<T>(
        &mut self,
        f: impl FnOnce(&Guest, &mut wasmtime::Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, DecideError> {
        let budget = self.config.decision_budget;
        let (result, _, _) = self.instance.call(budget, false, |b, s| {
            f(b.creditgate_policy_policy(), s).map(Ok)
        });
        self.settle(result, budget)
    }

    /// A usage with its plan by name, from the summary of the loaded policy.
    fn usage(
        &self,
        usage: Option<contract::AccountUsage>,
    ) -> Result<Option<AccountUsage>, DecideError> {
        usage
            .map(|u| {
                Ok(AccountUsage {
                    plan: match u.plan {
                        contract::PlanRef::Loaded(index) => self.plan(index)?,
                        contract::PlanRef::Missing(name) => name,
                    },
                    anchor: u.anchor,
                    lead_credits: u.lead_credits,
                    email_credits: u.email_credits,
                })
            })
            .transpose()
    }

    /// Adds many contacts to a campaign in one guest call and one store transaction,
    /// with the results one `add_lead` per address would give, in order. Not yet
    /// durable, like [`Worker::decide`].
    pub fn add_leads(
        &mut self,
        account: &str,
        campaign: &str,
        emails: &[String],
        now: i64,
    ) -> Result<LeadBatch, DecideError> {
        let budget = self.budget_for(emails.len());
        self.make_room_for_handles()?;
        let handle = self.account_handle(account)?;
        let group = self.campaign_handle(campaign)?;
        let batch = self.call(Op::AddLeads, budget, |p, s| {
            p.call_add_leads(s, handle, group, emails, now)
        })?;
        let expected = if batch.denied.is_some() {
            0
        } else {
            emails.len()
        };
        if batch.results.len() != expected {
            return Err(DecideError::Contract(format!(
                "{} result(s) for a batch of {} address(es){}",
                batch.results.len(),
                emails.len(),
                if batch.denied.is_some() {
                    ", denied"
                } else {
                    ""
                }
            )));
        }
        check_alerts(&batch.alerts).map_err(DecideError::Contract)?;
        let resets_at = batch.usage.as_ref().map(|u| u.email_credits.resets_at);
        let fired = FiredAlert::of(account, &batch.alerts, now, resets_at);
        self.log_alerts(fired, now);
        let usage = self.usage(batch.usage)?;
        let shadow = self.shadow(batch.shadow)?;
        if shadow.is_some() && !usage.as_ref().is_some_and(|u| self.in_shadow(&u.plan)) {
            return Err(DecideError::Contract(
                "a batch let through in shadow on a plan that is enforced".into(),
            ));
        }
        Ok(LeadBatch {
            denied: batch.denied,
            results: batch.results,
            usage,
            alerts: batch.alerts,
            upgrade_to: self.plan_name(batch.upgrade_to)?,
            shadow,
        })
    }

    /// Email credits used in each of the last `cycles` billing cycles of `account`
    /// (at most 12), oldest first. Reads only.
    pub fn email_history(
        &mut self,
        account: &str,
        cycles: u32,
        now: i64,
    ) -> Result<Vec<CycleUsage>, DecideError> {
        let budget = self.config.decision_budget;
        self.make_room_for_handles()?;
        let handle = self.account_handle(account)?;
        let history = self.call(Op::EmailHistory, budget, |p, s| {
            p.call_email_history(s, handle, cycles, now)
        })?;
        if history.len() > 12 || history.iter().any(|c| c.end <= c.start) {
            return Err(DecideError::Contract(format!(
                "a history of {} cycle(s), or a cycle that ends before it starts",
                history.len()
            )));
        }
        Ok(history)
    }

    /// Runs one export under `budget`, timing it into the latency histograms; a trap
    /// or timeout replaces the instance.
    fn call<T>(
        &mut self,
        op: Op,
        budget: Duration,
        f: impl FnOnce(
            &Guest,
            &mut wasmtime::Store<HostState>,
        ) -> wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, DecideError> {
        self.calls = self.calls.wrapping_add(1);
        let split = self.calls.is_multiple_of(SPLIT_EVERY);
        let (result, total, in_store) = self
            .instance
            .call(budget, split, |b, s| f(b.creditgate_policy_policy(), s));
        self.latencies.record(op, total, in_store);
        self.last_call = Some(CallTiming {
            op,
            total,
            in_store,
        });
        self.settle(result, budget)
    }

    /// The first of `emails` the policy's address rule refuses, and why; none when
    /// all are valid. For messages after an `invalid-email` denial: not a
    /// decision, so not timed into the latencies. Reads no state.
    pub fn find_invalid_email(
        &mut self,
        emails: &[String],
    ) -> Result<Option<AddressProblem>, DecideError> {
        self.plain_call(|p, s| p.call_find_invalid_email(s, emails))
    }

    /// What a call into the guest comes to; a trap or timeout replaces the instance.
    fn settle<T>(
        &mut self,
        result: wasmtime::Result<Result<T, GuestError>>,
        budget: Duration,
    ) -> Result<T, DecideError> {
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(DecideError::Policy(e)),
            Err(trap) => {
                let timed_out = is_interrupt(&trap);
                let message = trap_message(&trap, budget);
                let refused = self.instance.store.data().limits.memory_refused;
                let capped = refused.then_some(self.config.memory_limit);
                self.replace_instance().map_err(DecideError::Restart)?;
                Err(match (timed_out, capped) {
                    (true, _) => DecideError::Timeout { budget },
                    (false, Some(limit)) => DecideError::MemoryCap { limit },
                    (false, None) => DecideError::Trap(message),
                })
            }
        }
    }

    /// Decides `request` and, unless it was denied, makes everything decided so
    /// far durable before returning (alerts delivered after): what a one-shot
    /// caller (a CLI command) reports is then never taken back by a crash, and no
    /// caller can forget the sync. A gateway, which shares one sync among many
    /// decisions, calls [`Worker::decide`] and persists by group instead.
    pub fn decide_durable(
        &mut self,
        request: &Request,
        now: i64,
    ) -> Result<Decision, DurableError> {
        let decision = self.decide(request, now)?;
        if decision.denied.is_none() {
            self.persist().map_err(DurableError::Persist)?;
        }
        Ok(decision)
    }

    /// Makes the effects of every decision so far durable, then delivers the
    /// alerts they fired. If it fails they are not delivered: an alert is never
    /// sent about a decision that may not have been kept.
    pub fn persist(&mut self) -> Result<(), crate::store::StoreError> {
        let persisted = self.instance.store.data().store.persist();
        let fired = std::mem::take(&mut self.fired);
        if persisted.is_ok() {
            for alert in fired {
                self.notifier.notify(alert);
            }
        }
        persisted
    }

    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// The timing of the last decision, for callers that keep their own histograms.
    pub fn last_call(&self) -> Option<CallTiming> {
        self.last_call
    }

    /// A trapped instance refuses further calls: build a new store and instance and
    /// load the current policy into it.
    fn replace_instance(&mut self) -> Result<(), LoadError> {
        let store = self.instance.shared_store();
        self.accounts.clear();
        self.campaigns.clear();
        self.instance = Instance::new(
            &self.pre,
            &self.engine,
            &self.config,
            &self._ticker.ticks,
            store,
        )?;
        let policy = self.policy.clone();
        self.instance
            .load_policy(&policy, self.mode, self.config.load_budget)
            .map(drop)
    }
}

// ---- inspection (wit/inspect.wit; the host's side is `crate::inspect`) ----

impl crate::bindings::wit::creditgate::policy::catalog::Host for HostState {
    fn scopes_after(
        &mut self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, StateError> {
        let store = &*self.store;
        self.clock
            .timed(|| crate::inspect::scopes_after(store, after.as_deref(), limit))
    }
    fn members_after(
        &mut self,
        scope: String,
        group: Option<String>,
        after: Option<crate::inspect::Membership>,
        limit: u32,
    ) -> Result<Vec<crate::inspect::Membership>, StateError> {
        let store = &*self.store;
        self.clock.timed(|| {
            crate::inspect::members_after(store, &scope, group.as_deref(), after.as_ref(), limit)
        })
    }
    fn group_sizes(&mut self, scope: String) -> Result<Vec<crate::inspect::GroupSize>, StateError> {
        let store = &*self.store;
        self.clock
            .timed(|| crate::inspect::group_sizes(store, &scope))
    }
}

impl Worker {
    /// Asks the component an `inspect` question (see [`crate::inspect`]): under
    /// the decision budget, not timed into the decision latencies.
    pub fn inspect<T>(
        &mut self,
        f: impl FnOnce(
            &crate::bindings::wit::exports::creditgate::policy::inspect::Guest,
            &mut wasmtime::Store<HostState>,
        ) -> wasmtime::Result<Result<T, crate::inspect::InspectError>>,
    ) -> Result<T, DecideError> {
        use crate::inspect::InspectError;
        let budget = self.config.decision_budget;
        let (result, ..) = self.instance.call(budget, false, |b, s| {
            f(b.creditgate_policy_inspect(), s).map(|answer| {
                answer.map_err(|e| match e {
                    InspectError::NoPolicy => GuestError::NoPolicy,
                    InspectError::State(e) => GuestError::State(e),
                })
            })
        });
        self.settle(result, budget)
    }
}

fn is_interrupt(e: &wasmtime::Error) -> bool {
    e.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
}

fn trap_message(e: &wasmtime::Error, budget: Duration) -> String {
    if is_interrupt(e) {
        format!("interrupted after its {budget:?} budget")
    } else {
        // The first line names the trap; wasm backtraces follow on later lines.
        format!("{e:#}")
            .lines()
            .next()
            .unwrap_or("unknown trap")
            .to_string()
    }
}

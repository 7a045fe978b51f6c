//! `creditgate serve --check`: everything `serve` would read at start-up,
//! validated without serving and without changing anything: the config file
//! (already read into a [`Config`]), the component, the policy (loaded by the
//! component over a throwaway store), the store, never created, and its
//! accounts' plans: a policy that lacks a plan accounts are on fails the check,
//! as it fails a reload. For a deployment step (`ExecStartPre=`, a CI job on a
//! config change).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use creditgate::bindings::Mode;
use creditgate::gateway::{StrandedPlan, stranded_plans};
use creditgate::runtime::{Runtime, RuntimeConfig};
use creditgate::serve::{Config, Listen, ServeError};
use creditgate::store::{
    Create, MemoryStore, OpenOptions, RedbStore, RedisStore, Store, StoreError, default_path,
};

use super::{Exit, located, redis_url};

pub fn check(settings: &Config) -> anyhow::Result<Exit> {
    match &settings.file {
        Some(path) => println!("config     {}: ok", path.display()),
        None => println!("config     (none: flags and defaults): ok"),
    }
    if let Listen::At(addr) = settings.http_listen {
        println!("http       http://{addr}");
    }

    let component = settings
        .policy
        .component
        .as_ref()
        .map_or("built-in".to_owned(), |p| p.display().to_string());
    let runtime = Runtime::new(
        &settings.policy.component_source(),
        RuntimeConfig::default(),
    )
    .with_context(|| format!("component {component}"))?;
    println!("component  {component}: ok");

    let (path, text) = settings.policy.load()?;
    let summary = match runtime.worker_in(Arc::new(MemoryStore::new()), &text, settings.mode) {
        Ok((_, summary)) => summary,
        Err(e) => return Err(ServeError::load(&path, e).into()),
    };
    for warning in &summary.warnings {
        println!("warning: {}", located(&path, warning));
    }
    let names: Vec<&str> = summary.plans.iter().map(|p| p.name.as_str()).collect();
    println!(
        "policy     {}: ok, {} plan(s) ({}), {} warning(s)",
        path.display(),
        names.len(),
        names.join(", "),
        summary.warnings.len()
    );
    // Said only when something is observed rather than enforced: an operator
    // checking a rollout sees which plans will let requests past their limits.
    let shadow: Vec<&str> = (summary.plans.iter())
        .filter(|p| p.mode == Mode::Shadow)
        .map(|p| p.name.as_str())
        .collect();
    if settings.mode == Mode::Shadow || !shadow.is_empty() {
        println!(
            "mode       gateway {}; plans in shadow (allowed past their limits): {}",
            if settings.mode == Mode::Shadow {
                "shadow"
            } else {
                "enforce"
            },
            if shadow.is_empty() {
                "none".to_owned()
            } else {
                shadow.join(", ")
            }
        );
    }

    let spec = match &settings.store {
        Some(spec) => spec.clone(),
        None => default_path()
            .context("no default store path: set $CREDITGATE_STORE or $HOME, or pass --store")?,
    };
    println!("store      {}", store(&spec, settings.store.is_none())?);
    match accounts_on_missing_plans(&runtime, &spec, &text)? {
        Stranded::Checked(plans) if plans.is_empty() => {
            println!("accounts   every account is on a plan of the policy");
        }
        Stranded::Checked(plans) => {
            for p in &plans {
                println!(
                    "error: plan {:?} is not in {}, and {} account(s) are on it: started so, \
                     serve denies them unknown_plan on every request (move them to another \
                     plan first)",
                    p.plan,
                    path.display(),
                    p.accounts
                );
            }
            println!("serve --check: invalid");
            return Ok(Exit::Failed);
        }
        Stranded::NotChecked(why) => println!("accounts   not checked: {why}"),
    }
    println!("serve --check: valid");
    Ok(Exit::Success)
}

/// Whether accounts are on plans the policy lacks.
enum Stranded {
    Checked(Vec<StrandedPlan>),
    NotChecked(&'static str),
}

/// The plans of `policy` accounts of the store at `spec` are on and it lacks:
/// what a start under it would strand (a reload refuses it; a start cannot
/// wait). A redb file in use by a gateway is not opened: that gateway refuses
/// such a reload itself. One that is not is opened as `serve` would open it,
/// replaying its journal if a crash left one.
fn accounts_on_missing_plans(
    runtime: &Runtime,
    spec: &Path,
    policy: &str,
) -> anyhow::Result<Stranded> {
    let store: Arc<dyn Store> = if spec.as_os_str() == "memory" {
        return Ok(Stranded::NotChecked(
            "a fresh in-memory store holds no account",
        ));
    } else if let Some(url) = redis_url(spec) {
        Arc::new(RedisStore::open(url).context("store: cannot open the Redis store")?)
    } else if !spec.exists() {
        return Ok(Stranded::NotChecked("the store does not exist yet"));
    } else {
        let options = OpenOptions {
            create: Create::Never,
            ..OpenOptions::default()
        };
        match RedbStore::open_with(spec, options) {
            Ok(store) => Arc::new(store),
            Err(StoreError::Locked { .. }) => {
                return Ok(Stranded::NotChecked(
                    "the store is in use; its gateway refuses a reload that strands accounts",
                ));
            }
            Err(e) => return Err(e).context("store: cannot open it to check its accounts"),
        }
    };
    let plans = stranded_plans(runtime, store, policy, creditgate::time::now())
        .context("store: cannot check the accounts' plans")?;
    Ok(Stranded::Checked(plans))
}

/// What the store is, checked without creating or changing it.
fn store(spec: &Path, default: bool) -> anyhow::Result<String> {
    if spec.as_os_str() == "memory" {
        return Ok("memory: a fresh in-memory store (nothing is kept)".into());
    }
    if let Some(url) = redis_url(spec) {
        let store = RedisStore::open(url).context("store: cannot open the Redis store")?;
        let scopes = store
            .scopes()
            .context("store: cannot list the Redis store's scopes")?;
        let durability = match store.durability() {
            Ok(d) => match d.risk() {
                None => format!("; {d}"),
                Some(risk) => format!(
                    "; {d}: WARNING, a crash can lose {risk} that gateways answered as \
                     allowed (use appendonly yes, appendfsync always)"
                ),
            },
            Err(e) => format!("; durability not known ({e})"),
        };
        return Ok(format!(
            "redis {}: ok, reachable, {} scope(s){durability}",
            store.label(),
            scopes.len()
        ));
    }
    let name = spec.display();
    if !spec.exists() {
        let dir = spec.parent().filter(|d| !d.as_os_str().is_empty());
        return match dir {
            // serve creates the default location's folder, and any file.
            Some(dir) if !default && !dir.is_dir() => {
                anyhow::bail!("store {name}: its folder {} does not exist", dir.display())
            }
            _ => Ok(format!("{name}: does not exist yet; serve will create it")),
        };
    }
    match redb::ReadOnlyDatabase::open(spec) {
        Ok(db) => {
            use redb::ReadableDatabase as _;
            let tables = db
                .begin_read()
                .and_then(|txn| Ok(txn.list_tables()?.count()))
                .with_context(|| format!("store {name}: cannot read it"))?;
            Ok(format!("{name}: ok, opened read-only ({tables} table(s))"))
        }
        // A gateway running on it: the file is one it opened and keeps sound.
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Ok(format!(
            "{name}: in use by another process, not inspected ({})",
            super::locked::hint(spec)
        )),
        Err(e) => Err(anyhow::anyhow!(
            "store {name}: cannot open it read-only: {e} (after a crash, serve repairs it \
             when it starts)"
        )),
    }
}

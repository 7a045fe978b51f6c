//! A state machine: random sequences of the WIT `state` primitives on
//! `creditgate::store::MemoryStore` and, when the input asks, `RedbStore` (a fresh
//! file on tmpfs), each result compared with the store contract's one model
//! (`storemodel/`, through `creditgate::store::model`), in the manner of redb's
//! own fuzzer.
//!
//! The stores hold what customers paid for: a result that differs from the model
//! (a counter past its limit, a member counted twice, an idempotency key ignored,
//! an invalid name half applied) is an oversold or lost credit. The property test
//! in `host/tests/it/store/model.rs` checks against the same model with proptest; here the
//! fuzzer's coverage feedback steers the sequences, and the alphabets add names
//! and values just past the stores' limits, which must be refused with nothing
//! applied, and scope copies (`export_scope` into `import_scope` of another scope).

#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use creditgate::store::{MAX_NAME_LEN, MAX_VALUE_LEN, MemoryStore, RedbStore, Store, model};
use libfuzzer_sys::fuzz_target;

/// A name one byte longer than any store accepts.
static TOO_LONG: LazyLock<String> = LazyLock::new(|| "x".repeat(MAX_NAME_LEN + 1));
/// A name exactly as long as a store accepts.
static LONGEST: LazyLock<String> = LazyLock::new(|| "y".repeat(MAX_NAME_LEN));
/// A record value one byte past the limit.
static VALUE_TOO_LONG: LazyLock<String> = LazyLock::new(|| "v".repeat(MAX_VALUE_LEN + 1));

// Tiny alphabets make collisions common; "s\0" and "g\0" probe range bounds.
fn scope(i: u8) -> &'static str {
    [
        "",
        "s",
        "s\0",
        "t",
        "u",
        LONGEST.as_str(),
        TOO_LONG.as_str(),
    ][usize::from(i) % 7]
}
fn key(i: u8) -> &'static str {
    ["k", "l", "", TOO_LONG.as_str()][usize::from(i) % 4]
}
fn value(i: u8) -> &'static str {
    ["", "v", "w", VALUE_TOO_LONG.as_str()][usize::from(i) % 4]
}
fn group(i: u8) -> &'static str {
    ["", "g", "g\0", "h", TOO_LONG.as_str()][usize::from(i) % 5]
}
fn member(i: u8) -> &'static str {
    ["m", "n", "o", "p", "q", LONGEST.as_str(), TOO_LONG.as_str()][usize::from(i) % 7]
}

/// Amounts are mostly tiny, sometimes near `u64::MAX` to probe overflow.
fn amount(a: u8) -> u64 {
    if a >= 250 {
        u64::MAX - u64::from(255 - a)
    } else {
        u64::from(a % 4)
    }
}

fn limit(l: u8) -> Option<u64> {
    match l % 5 {
        0 => None,
        4 => Some(u64::MAX),
        _ => Some(u64::from(l / 5 % 8)),
    }
}

/// A small offset in time: -2 to 11.
fn offset(d: u8) -> i64 {
    i64::from(d % 14) - 2
}

/// A `once` fingerprint from a small alphabet, so that keys often meet with
/// another one; and the edge of a u64.
fn fingerprint(f: u8) -> u64 {
    match f % 4 {
        3 => u64::MAX,
        f => u64::from(f),
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    redb: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
struct Step {
    /// Time mostly moves forward, sometimes stands still or steps back.
    dt: u8,
    op: Op,
}

#[derive(Debug, Clone, Arbitrary)]
enum Op {
    RecordGet(u8, u8),
    RecordInsert(u8, u8, u8),
    RecordUpdate(u8, u8, u8),
    /// (scope, guard key, guard value, key, value)
    RecordUpdateGuarded(u8, u8, u8, u8, u8),
    CounterGet(u8, u8),
    CounterAdd {
        scope: u8,
        name: u8,
        amount: u8,
        limit: u8,
        /// (key, expires in, fingerprint)
        once: Option<(u8, u8, u8)>,
        expires_in: Option<u8>,
    },
    MemberAdd(u8, u8, u8, u8),
    MemberAddMany(u8, u8, Vec<u8>, u8),
    MemberRemove(u8, u8, u8),
    GroupClear(u8, u8),
    MemberCount(u8),
    Scopes,
    Persist,
    Visit(u8, Option<u8>),
    Export(u8),
    /// Exports a scope and imports it back: changes nothing observable.
    Reimport(u8),
    /// Exports one scope and imports it over another.
    Copy(u8, u8),
    /// The alert log, apart from the scopes: owners and keys are drawn as scopes
    /// and keys are.
    AlertSequence(u8),
    AlertInsert(u8, u8, u8),
    /// Owner filter; after (owner, key).
    VisitAlerts(Option<u8>, Option<(u8, u8)>),
    /// Each group's size and exclusive members, as the store keeps them.
    GroupCounts(u8),
    /// Whether a member is in a group, and its group count.
    Membership(u8, u8, u8),
}

impl Op {
    /// The call this draws, at `now`.
    fn call(&self, now: i64) -> model::Op {
        let s = |i: u8| scope(i).to_owned();
        let k = |i: u8| key(i).to_owned();
        let v = |i: u8| value(i).to_owned();
        let g = |i: u8| group(i).to_owned();
        let m = |i: u8| member(i).to_owned();
        match *self {
            Op::RecordGet(scope, key) => model::Op::RecordGet {
                scope: s(scope),
                key: k(key),
            },
            Op::RecordInsert(scope, key, value) => model::Op::RecordInsert {
                scope: s(scope),
                key: k(key),
                value: v(value),
            },
            Op::RecordUpdate(scope, key, value) => model::Op::RecordUpdate {
                scope: s(scope),
                key: k(key),
                value: v(value),
            },
            Op::RecordUpdateGuarded(scope, guard_key, guard_value, key, value) => {
                model::Op::RecordUpdateGuarded {
                    scope: s(scope),
                    guard: (k(guard_key), v(guard_value)),
                    key: k(key),
                    value: v(value),
                }
            }
            Op::CounterGet(scope, name) => model::Op::CounterGet {
                scope: s(scope),
                name: k(name),
                now,
            },
            Op::CounterAdd {
                scope,
                name,
                amount: a,
                limit: l,
                once,
                expires_in,
            } => model::Op::CounterAdd {
                scope: s(scope),
                guard: None,
                name: k(name),
                add: model::AddCall {
                    amount: amount(a),
                    limit: limit(l),
                    once: once.map(|(key, d, f)| (k(key), fingerprint(f), now + offset(d))),
                    expires_at: expires_in.map(|d| now + offset(d)),
                    now,
                },
            },
            Op::MemberAdd(scope, group, member, l) => model::Op::MemberAdd {
                scope: s(scope),
                group: g(group),
                member: m(member),
                limit: limit(l),
            },
            Op::MemberAddMany(scope, group, ref members, l) => model::Op::MemberAddMany {
                scope: s(scope),
                group: g(group),
                members: members.iter().map(|&i| m(i)).collect(),
                limit: limit(l),
            },
            Op::MemberRemove(scope, group, member) => model::Op::MemberRemove {
                scope: s(scope),
                group: g(group),
                member: m(member),
            },
            Op::GroupClear(scope, group) => model::Op::GroupClear {
                scope: s(scope),
                group: g(group),
            },
            Op::MemberCount(scope) => model::Op::MemberCount { scope: s(scope) },
            Op::Scopes => model::Op::Scopes,
            Op::Persist => model::Op::Persist,
            Op::Visit(scope, group) => model::Op::Visit {
                scope: s(scope),
                group: group.map(g),
            },
            Op::Export(scope) => model::Op::Export { scope: s(scope) },
            Op::Reimport(scope) => model::Op::Copy {
                from: s(scope),
                to: s(scope),
            },
            Op::Copy(from, to) => model::Op::Copy {
                from: s(from),
                to: s(to),
            },
            Op::AlertSequence(owner) => model::Op::AlertSequence { owner: s(owner) },
            Op::AlertInsert(owner, key, value) => model::Op::AlertInsert {
                owner: s(owner),
                key: k(key),
                value: v(value),
            },
            Op::VisitAlerts(owner, after) => model::Op::VisitAlerts {
                owner: owner.map(s),
                after: after.map(|(o, key)| (s(o), k(key))),
            },
            Op::GroupCounts(scope) => model::Op::GroupCounts { scope: s(scope) },
            Op::Membership(scope, group, member) => model::Op::Membership {
                scope: s(scope),
                group: g(group),
                member: m(member),
            },
        }
    }
}

/// Runs `steps` on `store` and the model side by side; panics at the first step
/// whose result differs, then compares the whole content.
fn check(name: &str, store: &dyn Store, steps: &[Step]) {
    let mut model = model::model();
    let mut now = 0i64;
    for (i, step) in steps.iter().enumerate() {
        now += i64::from(step.dt % 6) - 2;
        if let Err(e) = model::step(store, &mut model, &step.op.call(now)) {
            panic!("{name}: step {i} at now = {now}: {e}");
        }
    }
    if let Err(e) = model::same_content(store, &model, &[]) {
        panic!("{name}: {e}");
    }
}

fuzz_target!(|input: Input| {
    check("memory", &MemoryStore::new(), &input.steps);
    if input.redb {
        // tmpfs where there is one: a file store, without paying for real syncs.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        let dir = dir.expect("a temporary directory for redb");
        let store =
            RedbStore::open(&dir.path().join("fuzz.redb")).expect("a fresh redb file opens");
        check("redb", &store, &input.steps);
    }
});

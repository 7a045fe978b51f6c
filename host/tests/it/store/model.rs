//! Every backend against the store contract's one model (`storemodel/`, through
//! `creditgate::store::model`): random sequences of primitives over tiny
//! alphabets, each answer compared with the model's, then the whole content.

use creditgate::store::model::{self, AddCall, Op};
use proptest::prelude::*;

use crate::properties::config;

use super::*;

// Tiny alphabets make collisions common; "s\0" and "g\0" probe the range bounds.
const SCOPES: [&str; 4] = ["", "s", "s\0", "t"];
const KEYS: [&str; 3] = ["k", "l", ""];
const VALUES: [&str; 3] = ["", "v", "w"];
const GROUPS: [&str; 4] = ["", "g", "g\0", "h"];
const MEMBERS: [&str; 5] = ["m", "n", "o", "p", "q"];

fn pick(alphabet: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    proptest::sample::select(alphabet).prop_map(str::to_owned)
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..4u64, 1 => (u64::MAX - 3)..=u64::MAX]
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 3 => (0..8u64).prop_map(Some), 1 => Just(Some(u64::MAX))]
}

/// One call, made at instant 0 (see [`Op::later`]).
fn op() -> impl Strategy<Value = Op> {
    let (s, k, v) = (pick(&SCOPES), pick(&KEYS), pick(&VALUES));
    let (g, m) = (pick(&GROUPS), pick(&MEMBERS));
    let guard = (k.clone(), v.clone());
    let add = (
        amount(),
        limit(),
        proptest::option::of((k.clone(), 0..3u64, -2..12i64)),
        proptest::option::of(-2..12i64),
    )
        .prop_map(|(amount, limit, once, expires_at)| AddCall {
            amount,
            limit,
            once,
            expires_at,
            now: 0,
        });
    prop_oneof![
        1 => (s.clone(), k.clone()).prop_map(|(scope, key)| Op::RecordGet { scope, key }),
        2 => (s.clone(), k.clone(), v.clone())
            .prop_map(|(scope, key, value)| Op::RecordInsert { scope, key, value }),
        1 => (s.clone(), k.clone(), v.clone()).prop_map(|(scope, key, value)| Op::RecordUpdate { scope, key, value }),
        1 => (s.clone(), guard.clone(), k.clone(), v)
            .prop_map(|(scope, guard, key, value)| Op::RecordUpdateGuarded { scope, guard, key, value }),
        1 => (s.clone(), k.clone()).prop_map(|(scope, name)| Op::CounterGet { scope, name, now: 0 }),
        5 => (s.clone(), prop_oneof![3 => Just(None), 1 => guard.clone().prop_map(Some)], k.clone(), add)
            .prop_map(|(scope, guard, name, add)| Op::CounterAdd { scope, guard, name, add }),
        1 => (s.clone(), proptest::option::of(guard.clone()), k.clone())
            .prop_map(|(scope, guard, name)| Op::CounterTally { scope, guard, name, now: 0 }),
        4 => (s.clone(), g.clone(), m.clone(), limit())
            .prop_map(|(scope, group, member, limit)| Op::MemberAdd { scope, group, member, limit }),
        1 => (s.clone(), guard, g.clone(), m.clone(), limit(), k)
            .prop_map(|(scope, guard, group, member, limit, name)| Op::MemberAddGuarded {
                scope, guard: Some(guard), group, member, limit, name, now: 0,
            }),
        2 => (s.clone(), g.clone(), proptest::collection::vec(m.clone(), 0..8), limit())
            .prop_map(|(scope, group, members, limit)| Op::MemberAddMany { scope, group, members, limit }),
        2 => (s.clone(), g.clone(), m.clone())
            .prop_map(|(scope, group, member)| Op::MemberRemove { scope, group, member }),
        1 => (s.clone(), g.clone()).prop_map(|(scope, group)| Op::GroupClear { scope, group }),
        1 => s.clone().prop_map(|scope| Op::MemberCount { scope }),
        1 => Just(Op::Scopes),
        1 => Just(Op::Persist),
        1 => (s.clone(), proptest::option::of(g.clone())).prop_map(|(scope, group)| Op::Visit { scope, group }),
        1 => s.clone().prop_map(|scope| Op::Export { scope }),
        // Exports a scope and imports it over another (or itself: no change).
        1 => (s.clone(), s.clone()).prop_map(|(from, to)| Op::Copy { from, to }),
        // Issue 17: each group's size and exclusive members, as the store keeps them.
        2 => s.clone().prop_map(|scope| Op::GroupCounts { scope }),
        1 => (s, g, m).prop_map(|(scope, group, member)| Op::Membership { scope, group, member }),
    ]
}

fn run(s: &dyn Store, steps: &[(i64, Op)]) -> Result<(), TestCaseError> {
    let mut model = model::model();
    let mut now = 0i64;
    for (i, (dt, op)) in steps.iter().enumerate() {
        now += dt;
        model::step(s, &mut model, &op.clone().later(now))
            .map_err(|e| TestCaseError::fail(format!("step {i} at now={now}: {e}")))?;
    }
    // The kept counts never drift from the memberships, whatever came before.
    model::same_content(s, &model, &SCOPES).map_err(TestCaseError::fail)
}

fn steps() -> impl Strategy<Value = Vec<(i64, Op)>> {
    // Time mostly moves forward, sometimes stands still or steps back a little.
    proptest::collection::vec((prop_oneof![1 => -2..0i64, 4 => 0..4i64], op()), 1..120)
}

proptest! {
    #![proptest_config(config(256))]
    #[test]
    fn memory_matches_model(steps in steps()) {
        run(&*memory().store, &steps)?;
    }
}

proptest! {
    #![proptest_config(config(64))]
    #[test]
    fn redb_matches_model(steps in steps()) {
        run(&*redb().store, &steps)?;
    }
}

/// One server for every case, each case under a key prefix of its own: a server
/// per case would spend the test's time starting servers.
#[test]
fn redis_matches_model() {
    let server = RedisServer::start();
    matches_model(64, |case| Box::new(server.store(&format!("case{case}"))));
}

/// The property test against the model on stores `fresh` makes, a fresh one per
/// case (numbered), for set-ups of other modules (the Redis Cluster).
pub(crate) fn matches_model(cases: u32, fresh: impl Fn(usize) -> Box<dyn Store>) {
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config(cases));
    let result = runner.run(&steps(), |steps| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        run(&*fresh(n), &steps)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

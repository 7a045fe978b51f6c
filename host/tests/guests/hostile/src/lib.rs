//! A component that implements `creditgate:policy/policy-engine` and misbehaves on
//! purpose, to test how the host contains a hostile or broken guest.
//!
//! The "policy" text names the misbehaviour (one word). Requests about accounts
//! whose name starts with `boom` misbehave; every other request is allowed with
//! nothing charged, so a test can show the host keeps serving after a failure.
//!
//! | policy            | what happens                                              |
//! |-------------------|-----------------------------------------------------------|
//! | `loop`            | a decision spins forever                                  |
//! | `recurse`         | a decision recurses without bound                         |
//! | `grow`            | a decision allocates memory without bound                 |
//! | `trap`            | a decision traps (a panic, which aborts)                  |
//! | `charge-then-trap`| every decision takes a lead credit through the host; then a misbehaving one traps |
//! | `slow-store`      | a decision makes many store calls (host time, not guest)  |
//! | `lie`             | answers contradict themselves (denied yet charged, a 250% alert, a batch with the wrong number of results, a cycle ending before it starts, shadow on an enforced plan, a charge past an enforced limit) |
//! | `loop-on-load`    | `load-policy` spins forever                               |
//! | `trap-on-load`    | `load-policy` traps                                       |
//! | anything else     | `load-policy` fails with one diagnostic                   |

#![allow(clippy::missing_safety_doc)]

use std::cell::{Cell, RefCell};
use std::hint::black_box;

wit_bindgen::generate!({
    path: "../../../../wit",
    world: "policy-engine",
});

use creditgate::policy::state;
use exports::creditgate::policy::policy::{
    Account, AccountUsage, Alert, Campaign, Credit, CycleUsage, Decision, Diagnostic, EmailKind,
    EmailUsage, Error, Guest, LeadBatch, LeadOutcome, LeadResult, LeadUsage, Mode as PlanMode,
    PlanRef, PlanSummary, PolicySummary, Reason, ShadowRefusal,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Loop,
    Recurse,
    Grow,
    Trap,
    ChargeThenTrap,
    SlowStore,
    Lie,
}

thread_local! {
    static MODE: Cell<Option<Mode>> = const { Cell::new(None) };
    /// Account names by handle.
    static ACCOUNTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The name of the account behind `handle`; an unknown handle is an invalid request.
fn named(handle: Account) -> Result<String, Error> {
    ACCOUNTS
        .with(|a| a.borrow().get(handle as usize).cloned())
        .ok_or_else(|| Error::InvalidRequest(format!("unknown account handle {handle}")))
}

struct Hostile;

export!(Hostile);

fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(depth + 1).wrapping_add(frame[7])
}

fn grow() -> usize {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        black_box(&hoard);
    }
}

/// Adds `victim@example.com` to `account`'s group `hostile`: a lead credit.
fn take_credit(account: &str) {
    if let (Ok(scope), Ok(group)) = (state::intern(account), state::intern("hostile")) {
        let _ = state::member_add_many(scope, group, &["victim@example.com".into()], None);
    }
}

fn decide(handle: Account) -> Result<Decision, Error> {
    let account: &str = &named(handle)?;
    let allowed = Decision {
        denied: None,
        charged: 0,
        freed: 0,
        alerts: Vec::new(),
        usage: None,
        upgrade_to: None,
        shadow: None,
    };
    let mode = MODE.with(Cell::get);
    if mode == Some(Mode::ChargeThenTrap) {
        take_credit(account);
    }
    if !account.starts_with("boom") {
        return Ok(allowed);
    }
    match mode {
        None => Err(Error::NoPolicy),
        Some(Mode::Loop) => spin(),
        Some(Mode::Recurse) => Ok(Decision {
            charged: recurse(0),
            ..allowed
        }),
        Some(Mode::Grow) => Ok(Decision {
            charged: grow() as u64,
            ..allowed
        }),
        Some(Mode::Trap) => panic!("hostile guest traps on purpose"),
        Some(Mode::ChargeThenTrap) => panic!("hostile guest traps after charging"),
        Some(Mode::SlowStore) => {
            if let Ok(scope) = state::intern(account) {
                for _ in 0..200 {
                    let _ = state::member_count(scope);
                }
            }
            Ok(allowed)
        }
        Some(Mode::Lie) => Ok(match account {
            "boom-denied-charged" => Decision {
                denied: Some(Reason::EmailCreditsExhausted),
                charged: 3,
                ..allowed
            },
            // A reused message id is denied, so it must charge nothing either.
            "boom-reused-charged" => Decision {
                denied: Some(Reason::IdempotencyKeyReused),
                charged: 2,
                ..allowed
            },
            // Plan 0 ("enforced") is in enforce mode: neither may pass.
            "boom-shadow-enforced" => Decision {
                usage: Some(usage_on_enforced(0)),
                shadow: Some(ShadowRefusal {
                    reason: Reason::EmailCreditsExhausted,
                    upgrade_to: None,
                }),
                ..allowed
            },
            "boom-past-limit" => Decision {
                charged: 1,
                usage: Some(usage_on_enforced(11)),
                ..allowed
            },
            // Allowed, with nothing charged and no store call: mail let out free.
            "boom-free-charge" => allowed,
            // Says it charged what the store never added.
            "boom-overstated" => Decision {
                charged: 1,
                ..allowed
            },
            "boom-upgrade-elsewhere" => Decision {
                denied: Some(Reason::UnknownAccount),
                upgrade_to: Some(0),
                ..allowed
            },
            "boom-alert" => Decision {
                alerts: vec![Alert {
                    credit: Credit::Email,
                    threshold: 250,
                    used: 1,
                    limit: 10,
                }],
                ..allowed
            },
            _ => Decision {
                usage: Some(AccountUsage {
                    plan: PlanRef::Missing("p".into()),
                    anchor: 0,
                    lead_credits: LeadUsage {
                        used: 0,
                        limit: None,
                    },
                    email_credits: EmailUsage {
                        used: 0,
                        limit: None,
                        cycle_start: 10,
                        resets_at: 5,
                        projected_exhaustion: None,
                    },
                }),
                ..allowed
            },
        }),
    }
}

/// Usage on plan 0, whose email limit is 10, with `used` email credits used.
fn usage_on_enforced(used: u64) -> AccountUsage {
    AccountUsage {
        plan: PlanRef::Loaded(0),
        anchor: 0,
        lead_credits: LeadUsage {
            used: 0,
            limit: None,
        },
        email_credits: EmailUsage {
            used,
            limit: Some(10),
            cycle_start: 0,
            resets_at: 5,
            projected_exhaustion: None,
        },
    }
}

fn lie_mode() -> bool {
    matches!(MODE.with(Cell::get), Some(Mode::Lie))
}

impl Guest for Hostile {
    fn account_handle(name: String) -> Account {
        ACCOUNTS.with(|a| {
            let mut a = a.borrow_mut();
            a.push(name);
            (a.len() - 1) as Account
        })
    }

    fn campaign_handle(_name: String) -> Campaign {
        0
    }

    fn forget_handles() {
        ACCOUNTS.with(|a| a.borrow_mut().clear());
    }

    fn load_policy(
        toml: String,
        _gateway_mode: PlanMode,
    ) -> Result<PolicySummary, Vec<Diagnostic>> {
        let mode = match toml.trim() {
            "loop" => Mode::Loop,
            "recurse" => Mode::Recurse,
            "grow" => Mode::Grow,
            "trap" => Mode::Trap,
            "charge-then-trap" => Mode::ChargeThenTrap,
            "slow-store" => Mode::SlowStore,
            "lie" => Mode::Lie,
            "loop-on-load" => spin(),
            "trap-on-load" => panic!("hostile guest traps while loading"),
            other => {
                return Err(vec![Diagnostic {
                    message: format!("unknown hostile mode {other:?}"),
                    path: String::new(),
                    line: 1,
                    column: 1,
                }]);
            }
        };
        MODE.with(|m| m.set(Some(mode)));
        let plans = match mode {
            Mode::Lie => vec![PlanSummary {
                name: "enforced".into(),
                lead_credits: None,
                email_credits: Some(10),
                mode: PlanMode::Enforce,
            }],
            _ => Vec::new(),
        };
        Ok(PolicySummary {
            plans,
            warnings: Vec::new(),
        })
    }

    fn subscribe(
        account: Account,
        _plan: String,
        _anchor: i64,
        _now: i64,
    ) -> Result<Decision, Error> {
        decide(account)
    }
    fn change_plan(account: Account, _plan: String, _now: i64) -> Result<Decision, Error> {
        decide(account)
    }
    fn add_lead(
        account: Account,
        _campaign: Campaign,
        _email: String,
        _now: i64,
    ) -> Result<Decision, Error> {
        decide(account)
    }
    fn add_leads(
        account: Account,
        _campaign: Campaign,
        emails: Vec<String>,
        _now: i64,
    ) -> Result<LeadBatch, Error> {
        decide(account).map(|_| LeadBatch {
            denied: None,
            // One result per address is the contract; a liar answers one short.
            results: (0..emails.len().saturating_sub(usize::from(lie_mode())))
                .map(|_| LeadResult {
                    outcome: LeadOutcome::Added,
                    contact: 1,
                })
                .collect(),
            usage: None,
            alerts: Vec::new(),
            upgrade_to: None,
            shadow: None,
        })
    }
    fn delete_lead(
        account: Account,
        _campaign: Campaign,
        _email: String,
        _now: i64,
    ) -> Result<Decision, Error> {
        decide(account)
    }
    fn delete_campaign_leads(
        account: Account,
        _campaign: Campaign,
        _now: i64,
    ) -> Result<Decision, Error> {
        decide(account)
    }
    fn send_email(
        account: Account,
        _to: Option<String>,
        _more_to: Option<Vec<String>>,
        _kind: EmailKind,
        _message_id: Option<String>,
        _now: i64,
    ) -> Result<Decision, Error> {
        decide(account)
    }
    fn charge_email(
        account: Account,
        _cost: u64,
        _message_id: Option<String>,
        _now: i64,
    ) -> Result<Decision, Error> {
        decide(account)
    }
    fn check_email(account: Account, _cost: u64, _now: i64) -> Result<Decision, Error> {
        decide(account)
    }
    fn usage(account: Account, _now: i64) -> Result<Decision, Error> {
        decide(account)
    }

    fn email_history(account: Account, _cycles: u32, _now: i64) -> Result<Vec<CycleUsage>, Error> {
        decide(account).map(|_| Vec::new())
    }

    fn find_invalid_email(
        _emails: Vec<String>,
    ) -> Option<exports::creditgate::policy::policy::AddressProblem> {
        None
    }
}

/// Inspection knows nothing and no account: the tests here are about decisions.
impl exports::creditgate::policy::inspect::Guest for Hostile {
    fn accounts(
        _after: Option<String>,
        _limit: u32,
    ) -> Result<
        exports::creditgate::policy::inspect::AccountPage,
        exports::creditgate::policy::inspect::InspectError,
    > {
        Ok(exports::creditgate::policy::inspect::AccountPage {
            accounts: Vec::new(),
            next: None,
        })
    }
    fn campaigns(
        _account: String,
    ) -> Result<
        Vec<exports::creditgate::policy::inspect::Campaign>,
        exports::creditgate::policy::inspect::InspectError,
    > {
        Ok(Vec::new())
    }
    fn leads(
        _account: String,
        _campaign: Option<String>,
        _after: Option<exports::creditgate::policy::inspect::Lead>,
        _limit: u32,
    ) -> Result<
        Vec<exports::creditgate::policy::inspect::Lead>,
        exports::creditgate::policy::inspect::InspectError,
    > {
        Ok(Vec::new())
    }
    fn history_cycles() -> u32 {
        1
    }
    fn warning_levels() -> Result<
        exports::creditgate::policy::inspect::Levels,
        exports::creditgate::policy::inspect::InspectError,
    > {
        Ok(exports::creditgate::policy::inspect::Levels {
            lead_credits: None,
            email_credits: None,
        })
    }
}

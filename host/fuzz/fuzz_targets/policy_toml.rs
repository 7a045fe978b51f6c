//! The policy TOML loader, natively: `creditgate_guest::policy::Policy::parse`, the
//! very code the policy component runs on a `load-policy` call (the component is a
//! build of the same crate for wasm32), so a panic found here is a trap there.
//!
//! A policy file is operator input, and `creditgate check` and a reload show its
//! diagnostics to a person: besides never panicking, every diagnostic must point
//! inside the text (a 1-based line that exists and a column within that line, or
//! 0:0 for "no position"), carry a message, and come in document order. On
//! success the summary the component returns must build too.

#![no_main]

use creditgate_guest::bindings::{Diagnostic, Mode};
use creditgate_guest::policy::{MAX_CREDITS, MAX_PLAN_NAME, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The host reads a policy as UTF-8 and refuses anything else before the
    // component sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text) {
        Ok((policy, warnings)) => {
            check_diagnostics(text, &warnings, "warning");
            for (name, plan) in &policy.plans {
                assert!(
                    (1..=MAX_PLAN_NAME).contains(&name.len())
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                    "accepted an invalid plan name: {name:?}"
                );
                for credits in [plan.lead_credits, plan.email_credits] {
                    assert!(
                        credits.is_none_or(|n| n <= MAX_CREDITS),
                        "plans.{name} grants {credits:?}, past MAX_CREDITS"
                    );
                }
            }
            for gateway in [Mode::Enforce, Mode::Shadow] {
                let summary = policy.summary(warnings.clone(), gateway);
                assert_eq!(
                    summary.plans.len(),
                    policy.plans.len(),
                    "the summary lists every plan once"
                );
                // A plan without a mode of its own takes the gateway's.
                for (plan, (_, defined)) in summary.plans.iter().zip(&policy.plans) {
                    assert!(
                        plan.mode == gateway || defined.mode.is_some(),
                        "plans.{} is in {:?} under a gateway in {gateway:?} without a mode of its own",
                        plan.name,
                        plan.mode
                    );
                }
            }
        }
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "a refused policy has at least one error"
            );
            check_diagnostics(text, &errors, "error");
        }
    }
});

fn check_diagnostics(text: &str, diagnostics: &[Diagnostic], what: &str) {
    // Lines as `line_column` counts them: split on '\n' only.
    let lines: Vec<&str> = text.split('\n').collect();
    let mut previous = (0, 0);
    for d in diagnostics {
        assert!(!d.message.is_empty(), "{what} without a message: {d:?}");
        let at = (d.line, d.column);
        assert!(
            at >= previous,
            "{what}s out of document order: {d:?} after {previous:?}"
        );
        previous = at;
        if at == (0, 0) {
            continue;
        }
        let line = usize::try_from(d.line).unwrap_or(usize::MAX);
        assert!(
            (1..=lines.len()).contains(&line),
            "{what} on line {} of a {}-line text: {d:?}",
            d.line,
            lines.len()
        );
        // A column may point just past the last character (an error at the end of
        // a line or of the text), never further.
        let width = lines[line - 1].chars().count() + 1;
        let column = usize::try_from(d.column).unwrap_or(usize::MAX);
        assert!(
            (1..=width).contains(&column),
            "{what} at column {} of line {} which has {} character(s): {d:?}",
            d.column,
            d.line,
            width - 1
        );
    }
}

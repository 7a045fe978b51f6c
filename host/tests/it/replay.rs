//! `creditgate replay` end to end: the golden trace, persistence across runs,
//! malformed events and policies, through the library and through the binary.

use std::path::PathBuf;
use std::process::Output;

use crate::harness::{self, text, words};
use creditgate::replay::replay;

fn trace() -> PathBuf {
    harness::repo().join("policies/traces/example.jsonl")
}

fn golden() -> String {
    harness::repo_text("policies/traces/example.out.jsonl")
}

fn creditgate(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = harness::creditgate_command();
    command.args(args);
    harness::run_with_stdin(command, stdin)
}

#[test]
fn the_example_trace_matches_its_golden_output() {
    let mut worker = harness::worker(harness::SMARTLEAD);
    let input = std::fs::read(trace()).expect("trace");
    let mut output = Vec::new();
    let summary = replay(&mut worker, &input[..], &mut output).expect("replays");
    assert_eq!(summary.errors, 0);
    assert_eq!(text(&output), golden());
}

/// `--store memory` is a throwaway store here as in every other command, not a
/// redb file named `memory` in the working directory (audit E.9).
#[test]
fn replay_on_the_memory_store_writes_no_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = trace();
    let trace = trace.to_str().expect("utf-8");
    let mut command = harness::creditgate_command();
    command
        .args(["replay", "--store", "memory", "--events", trace])
        .current_dir(dir.path());
    let o = harness::run_with_stdin(command, b"");
    harness::assert_exit(&o, 0);
    assert_eq!(text(&o.stdout), golden());
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("lists").collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_binary_prints_decisions_on_stdout_and_latencies_on_stderr() {
    let trace = trace();
    let trace = trace.to_str().expect("utf-8 path");
    let args = format!("replay --policy policies/smartlead.toml --events {trace}");
    let out = creditgate(&words(&args), b"");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), golden());
    let stderr = text(&out.stderr);
    for column in ["count", "p50", "p99", "p99.9", "max"] {
        assert!(stderr.contains(column), "no {column} column in:\n{stderr}");
    }
    let add_lead = stderr
        .lines()
        .find(|l| l.starts_with("add_lead"))
        .expect("an add_lead row");
    assert_eq!(add_lead.split_whitespace().nth(1), Some("5"), "{add_lead}");
}

#[test]
fn state_in_a_redb_store_survives_across_runs() {
    let (_dir, store) = harness::temp_path("state.redb");
    let store = store.to_str().expect("utf-8 path");
    let lines = std::fs::read_to_string(trace()).expect("trace");
    let lines: Vec<&str> = lines.lines().collect();
    let mut combined = String::new();
    for half in [&lines[..11], &lines[11..]] {
        let input = half.iter().map(|l| format!("{l}\n")).collect::<String>();
        let args = format!("replay --policy policies/smartlead.toml --events - --store {store}");
        let out = creditgate(&words(&args), input.as_bytes());
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        combined += &text(&out.stdout);
    }
    assert_eq!(combined, golden());
}

#[test]
fn malformed_lines_get_an_error_line_in_place_and_change_nothing() {
    let input = concat!(
        r#"{"at":"2025-01-01T00:00:00Z","op":"subscribe","account":"a","plan":"base"}"#,
        "\n",
        "not json\n",
        r#"{"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c"}"#,
        "\n",
        "\n",
        r#"{"at":"2025-01-01T00:00:00Z","op":"add_lead","account":"a","campaign":"c","email":"x@y.io","extra":1}"#,
        "\n",
        r#"{"at":"2025-01-01T00:00:00Z","op":"usage","account":"a"}"#,
        "\n",
    );
    let out = creditgate(&["replay", "--events", "-"], input.as_bytes());
    harness::assert_exit(&out, 1);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(
        lines[1],
        r#"{"error":"line 2: invalid JSON: expected ident at line 1 column 2"}"#
    );
    assert_eq!(lines[2], r#"{"error":"line 3: missing field \"email\""}"#);
    assert_eq!(
        lines[3],
        r#"{"error":"line 4: invalid JSON: EOF while parsing a value at line 1 column 0"}"#
    );
    assert_eq!(
        lines[4],
        r#"{"error":"line 5: unknown field \"extra\" for op \"add_lead\""}"#
    );
    assert!(
        lines[5].contains(r#""lead_credits":{"used":0,"limit":2000}"#),
        "{}",
        lines[5]
    );
    harness::assert_stderr_has(&out, "4 of 6 line(s) had errors");
}

/// Replays nothing against a policy with `contents`: exit status, stderr, and the
/// policy's path as the messages print it.
fn replay_with_policy(contents: &str) -> (Option<i32>, String, String) {
    let (_dir, policy) = harness::temp_path("policy.toml");
    std::fs::write(&policy, contents).expect("written");
    let path = policy.to_str().expect("utf-8 path");
    let out = creditgate(&["replay", "--policy", path, "--events", "-"], b"");
    assert!(out.stdout.is_empty());
    (out.status.code(), text(&out.stderr), path.to_string())
}

#[test]
fn an_invalid_policy_is_reported_with_file_line_and_column() {
    let (code, stderr, p) =
        replay_with_policy("[plans.pro]\nlead_credits = 30000\nemail_credits = -5\ncolour = 1\n");
    assert_eq!(code, Some(2));
    let expected = format!(
        "{p}:3:17: plans.pro.email_credits: expected a non-negative integer or \"unlimited\", found -5\n\
         {p}:4:1: plans.pro.colour: unknown key \"colour\""
    );
    harness::assert_has(&stderr, &expected);
}

#[test]
fn a_toml_syntax_error_is_reported_with_its_position() {
    let (code, stderr, p) =
        replay_with_policy("[plans.pro]\nlead_credits = 30000\nemail_credits = = 5\n");
    assert_eq!(code, Some(2));
    harness::assert_has(&stderr, &format!("{p}:3:17: "));
}

#[test]
fn missing_inputs_are_usage_errors() {
    let out = creditgate(&["replay", "--events", "/nonexistent/events.jsonl"], b"");
    harness::assert_exit(&out, 2);
    harness::assert_stderr_has(&out, "cannot read events /nonexistent/events.jsonl");
    let out = creditgate(
        &["replay", "--policy", "/nonexistent/p.toml", "--events", "-"],
        b"",
    );
    harness::assert_exit(&out, 2);
    harness::assert_stderr_has(&out, "cannot read policy /nonexistent/p.toml");
}

#[test]
fn a_store_held_by_another_process_is_refused_at_once() {
    let (_dir, path) = harness::temp_path("busy.redb");
    let _held = creditgate::store::RedbStore::open(&path).expect("opens");
    let path = path.to_str().expect("utf-8");
    let out = creditgate(&["replay", "--events", "-", "--store", path], b"");
    harness::assert_exit(&out, 75);
    harness::assert_stderr_has(&out, "in use by another process");
}

/// The trust audit's trace (`/tmp/audit/l2/boundary.jsonl`): a send charged at
/// 08:59:59.9 and retried at 09:00:00.1, across the end of a billing cycle, was
/// charged 2 and 2; a `charge_email` of 3 (its first attempt with a clock a
/// little behind) was charged 3 and 3. Each message is charged once; on a
/// store, also when the retries come in a later run. Once the retry at
/// 09:00:00.1 has been asked in the new cycle, the old one is over: the
/// `charge_email` stamped 08:59:59.95 is charged to the new cycle (audit 3.2),
/// as is everything after it.
#[test]
fn a_retry_across_a_cycle_boundary_is_charged_once() {
    const TRACE: &str = r#"{"at": "2025-01-31T09:00:00Z", "op": "subscribe", "account": "acme", "plan": "base"}
{"at": "2025-02-28T08:59:59.900Z", "op": "send_email", "account": "acme", "to": ["ann@example.com", "bo@example.org"], "message_id": "<m1@acme>"}
{"at": "2025-02-28T09:00:00.100Z", "op": "send_email", "account": "acme", "to": ["ann@example.com", "bo@example.org"], "message_id": "<m1@acme>"}
{"at": "2025-02-28T08:59:59.950Z", "op": "charge_email", "account": "acme", "cost": 3, "message_id": "<m2@acme>"}
{"at": "2025-02-28T09:00:00.200Z", "op": "charge_email", "account": "acme", "cost": 3, "message_id": "<m2@acme>"}
{"at": "2025-02-28T09:00:00.300Z", "op": "charge_email", "account": "acme", "cost": 3, "message_id": "<m2@acme>"}
{"at": "2025-02-28T09:00:01Z", "op": "usage", "account": "acme"}
"#;
    // (charged, email credits used in the cycle of the event) per line.
    let expected = [(0, 0), (2, 2), (0, 0), (3, 3), (0, 3), (0, 3), (0, 3)];
    let charged_and_used = |stdout: &str| -> Vec<(u64, u64)> {
        (stdout.lines())
            .map(|line| {
                let o: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                let count = |v: &serde_json::Value| v.as_u64().expect("a count");
                (count(&o["charged"]), count(&o["email_credits"]["used"]))
            })
            .collect()
    };
    let out = creditgate(
        &words("replay --policy policies/smartlead.toml --events -"),
        TRACE.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(charged_and_used(&text(&out.stdout)), expected);

    let (_dir, store) = harness::temp_path("boundary.redb");
    let store = store.to_str().expect("utf-8 path");
    let lines: Vec<&str> = TRACE.lines().collect();
    let mut combined = Vec::new();
    for run in [&lines[..2], &lines[2..]] {
        let input: String = run.iter().map(|l| format!("{l}\n")).collect();
        let args = format!("replay --policy policies/smartlead.toml --events - --store {store}");
        let out = creditgate(&words(&args), input.as_bytes());
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        combined.extend(charged_and_used(&text(&out.stdout)));
    }
    assert_eq!(combined, expected);
}

//! Postfix's requests counted by protocol state, and the messages let out
//! uncharged: for `/metrics`, and to tell the operator when mail leaves without
//! a charge.
//!
//! creditgate charges at `END-OF-MESSAGE` only. A `check_policy_service` in
//! `smtpd_recipient_restrictions` or `smtpd_data_restrictions` alone is answered
//! (checks at `RCPT`, `DUNNO` at `DATA`) and lets every message out uncharged,
//! which nothing in one request can show: only the counts can. So
//! [`StateCounts::count`] says when requests about mail keep coming and not one
//! has come at `END-OF-MESSAGE`, at the 100th, the 1,000th, the 10,000th, and so
//! on, for the server to log. It counts them apart by [`Path`]: where Postfix
//! asked (its `server_port`) and whether the client authenticated. Mail that
//! skips the policy on one path only (a submission service whose `master.cf`
//! entry overrides `smtpd_end_of_data_restrictions`, or
//! `permit_sasl_authenticated` ahead of `check_policy_service` there) is then
//! reported however much mail is charged on the others.
//!
//! A message can also reach `END-OF-MESSAGE` and be let through uncharged by a
//! failure action the operator set to `fail_open` (no account named, an
//! unknown account, no decision) or `idempotency_key_reused = "dunno"`:
//! [`StateCounts::uncharged`] counts those by [`Uncharged`], with their
//! recipients, and says when to log them (the first, the tenth, the 100th...).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// A `protocol_state` Postfix sends (SMTPD_POLICY_README; `BDAT` since Postfix
/// 3.4, for a message sent with `CHUNKING`). Any other value is no state
/// Postfix documents: the request is answered as an internal error rather than
/// taken for one creditgate may ignore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolState {
    Connect,
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    EndOfMessage,
    Vrfy,
    Etrn,
}

impl ProtocolState {
    pub const ALL: [ProtocolState; 10] = [
        ProtocolState::Connect,
        ProtocolState::Ehlo,
        ProtocolState::Helo,
        ProtocolState::Mail,
        ProtocolState::Rcpt,
        ProtocolState::Data,
        ProtocolState::Bdat,
        ProtocolState::EndOfMessage,
        ProtocolState::Vrfy,
        ProtocolState::Etrn,
    ];

    /// The state named `text`, in any case (Postfix sends upper case).
    pub fn parse(text: &str) -> Option<ProtocolState> {
        Self::ALL
            .into_iter()
            .find(|state| state.name().eq_ignore_ascii_case(text))
    }

    /// The state as Postfix writes it.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolState::Connect => "CONNECT",
            ProtocolState::Ehlo => "EHLO",
            ProtocolState::Helo => "HELO",
            ProtocolState::Mail => "MAIL",
            ProtocolState::Rcpt => "RCPT",
            ProtocolState::Data => "DATA",
            ProtocolState::Bdat => "BDAT",
            ProtocolState::EndOfMessage => "END-OF-MESSAGE",
            ProtocolState::Vrfy => "VRFY",
            ProtocolState::Etrn => "ETRN",
        }
    }

    /// Whether a request at this state is about a message on its way: one that
    /// leaves uncharged if no request follows at `END-OF-MESSAGE`.
    fn is_about_mail(self) -> bool {
        matches!(
            self,
            ProtocolState::Mail | ProtocolState::Rcpt | ProtocolState::Data | ProtocolState::Bdat
        )
    }
}

/// The first count of requests about mail, without one at `END-OF-MESSAGE`,
/// that [`StateCounts::count`] reports; then every tenfold.
pub const FIRST_UNCHARGED_WARNING: u64 = 100;

/// The paths [`StateCounts`] tells apart; requests on more are counted by
/// state only. Postfix listens on a few ports.
const MAX_PATHS: usize = 32;

/// Where a request came from, as far as whether it reaches `END-OF-MESSAGE`
/// can depend on it: the port of the Postfix service asked (`server_port`,
/// sent since Postfix 3.2), and whether the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    pub server_port: Option<u16>,
    pub authenticated: bool,
}

impl Path {
    /// The path as one number, never 0: the port plus one (0 for none), then
    /// whether the client authenticated, then one more.
    fn key(self) -> u32 {
        let port = self.server_port.map_or(0, |p| u32::from(p) + 1);
        ((port << 1) | u32::from(self.authenticated)) + 1
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(port) = self.server_port {
            write!(f, "on port {port} ")?;
        }
        let clients = if self.authenticated {
            "that authenticated"
        } else {
            "that did not authenticate"
        };
        write!(f, "from clients {clients}")
    }
}

/// Requests about mail that [`StateCounts::count`] says never reached
/// `END-OF-MESSAGE` on their path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeverAtTheEnd {
    /// Requests about mail on `path` so far.
    pub requests: u64,
    pub path: Path,
}

/// Why a message was let out at `END-OF-MESSAGE` without a charge: an action
/// the operator set to let it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncharged {
    /// `no_account = "fail_open"`: the request named no account.
    NoAccount,
    /// `unknown_account = "fail_open"`.
    UnknownAccount,
    /// `internal_error = "fail_open"`: the policy could not decide.
    InternalError,
    /// `idempotency_key_reused = "dunno"`.
    IdempotencyKeyReused,
}

impl Uncharged {
    pub const ALL: [Uncharged; 4] = [
        Uncharged::NoAccount,
        Uncharged::UnknownAccount,
        Uncharged::InternalError,
        Uncharged::IdempotencyKeyReused,
    ];

    /// The label in `/metrics`, and the setting that let the message through.
    pub fn name(self) -> &'static str {
        match self {
            Uncharged::NoAccount => "no_account",
            Uncharged::UnknownAccount => "unknown_account",
            Uncharged::InternalError => "internal_error",
            Uncharged::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

/// Requests about mail and at `END-OF-MESSAGE` on one [`Path`]; `key` 0 while
/// the slot is free. Atomics, not a lock: every request about mail counts
/// here, on whichever socket thread reads it.
#[derive(Debug, Default)]
struct PathCounts {
    key: AtomicU32,
    about_mail: AtomicU64,
    /// Whether a request has come at `END-OF-MESSAGE`: set once, read by
    /// every request about mail, never written again (no shared write per
    /// charge).
    reached_the_end: AtomicBool,
}

/// Requests by protocol state since the server started, shared by its Postfix
/// listeners, and the messages let out uncharged.
#[derive(Debug, Default)]
pub struct StateCounts {
    by_state: [AtomicU64; ProtocolState::ALL.len()],
    /// Requests whose state Postfix does not document (or that had none).
    other: AtomicU64,
    /// Requests about mail and at its end, by path (the first [`MAX_PATHS`]).
    paths: [PathCounts; MAX_PATHS],
    uncharged: [AtomicU64; Uncharged::ALL.len()],
    uncharged_recipients: [AtomicU64; Uncharged::ALL.len()],
}

impl StateCounts {
    /// Counts one request at `state` (`None`: no state Postfix documents) on
    /// `path`. Says so when requests about mail keep coming on `path` and not
    /// one has come at `END-OF-MESSAGE` there: at [`FIRST_UNCHARGED_WARNING`]
    /// and every tenfold after, while none has.
    pub fn count(&self, state: Option<ProtocolState>, path: Path) -> Option<NeverAtTheEnd> {
        let Some(state) = state else {
            self.other.fetch_add(1, Relaxed);
            return None;
        };
        self.by_state[state as usize].fetch_add(1, Relaxed);
        let at_the_end = state == ProtocolState::EndOfMessage;
        if !at_the_end && !state.is_about_mail() {
            return None;
        }
        let counts = self.path_counts(path)?;
        if at_the_end {
            if !counts.reached_the_end.load(Relaxed) {
                counts.reached_the_end.store(true, Relaxed);
            }
            return None;
        }
        let requests = counts.about_mail.fetch_add(1, Relaxed) + 1;
        let never = !counts.reached_the_end.load(Relaxed);
        (never && is_reminder(FIRST_UNCHARGED_WARNING, requests))
            .then_some(NeverAtTheEnd { requests, path })
    }

    /// The counts of `path`, given a free slot at its first request; none
    /// once every slot holds another path.
    fn path_counts(&self, path: Path) -> Option<&PathCounts> {
        let key = path.key();
        // A plain load first: the slot is found without a write to its line.
        self.paths.iter().find(|slot| match slot.key.load(Relaxed) {
            0 => match slot.key.compare_exchange(0, key, Relaxed, Relaxed) {
                Ok(_) => true,
                Err(held) => held == key,
            },
            held => held == key,
        })
    }

    /// Counts a message let out uncharged at `END-OF-MESSAGE` for `why`, with
    /// its `recipients` when Postfix said how many. Returns how many have been
    /// let out for `why` when the operator should be told: at the first, the
    /// tenth, the 100th, and so on.
    pub fn uncharged(&self, why: Uncharged, recipients: Option<u64>) -> Option<u64> {
        let i = why as usize;
        self.uncharged_recipients[i].fetch_add(recipients.unwrap_or(0), Relaxed);
        let messages = self.uncharged[i].fetch_add(1, Relaxed) + 1;
        is_reminder(1, messages).then_some(messages)
    }

    /// Messages let out uncharged for `why`, and their recipients.
    pub fn uncharged_count(&self, why: Uncharged) -> (u64, u64) {
        let i = why as usize;
        (
            self.uncharged[i].load(Relaxed),
            self.uncharged_recipients[i].load(Relaxed),
        )
    }

    /// Requests counted at `state`.
    pub fn get(&self, state: ProtocolState) -> u64 {
        self.by_state[state as usize].load(Relaxed)
    }

    /// Requests counted at no state Postfix documents.
    pub fn other(&self) -> u64 {
        self.other.load(Relaxed)
    }

    /// Appends `creditgate_postfix_requests_total` in the Prometheus text format.
    pub fn prometheus(&self, out: &mut String) {
        out.push_str(
            "# HELP creditgate_postfix_requests_total Postfix policy requests, by protocol state \
             (charges are made at END-OF-MESSAGE only).\n",
        );
        out.push_str("# TYPE creditgate_postfix_requests_total counter\n");
        let states = ProtocolState::ALL.map(|s| (s.name(), self.get(s)));
        for (name, count) in states.into_iter().chain([("other", self.other())]) {
            let _ = writeln!(
                out,
                "creditgate_postfix_requests_total{{state=\"{name}\"}} {count}"
            );
        }
        let uncharged = Uncharged::ALL.map(|why| (why.name(), self.uncharged_count(why)));
        for (metric, help, of_messages) in [
            (
                "creditgate_postfix_uncharged_messages_total",
                "Messages let through at END-OF-MESSAGE uncharged, by the action that let them \
                 (a failure action set to fail_open, idempotency_key_reused = dunno).",
                true,
            ),
            (
                "creditgate_postfix_uncharged_recipients_total",
                "The recipients (recipient_count) of the messages let through uncharged.",
                false,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (reason, (messages, recipients)) in uncharged {
                let count = if of_messages { messages } else { recipients };
                let _ = writeln!(out, "{metric}{{reason=\"{reason}\"}} {count}");
            }
        }
    }
}

/// `first`, then every tenfold: 100, 1,000, 10,000, ... from 100.
fn is_reminder(first: u64, n: u64) -> bool {
    let mut at = first;
    while at < n {
        match at.checked_mul(10) {
            Some(next) => at = next,
            None => return false,
        }
    }
    at == n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_in_any_case_and_only_postfixs() {
        for state in ProtocolState::ALL {
            assert_eq!(ProtocolState::parse(state.name()), Some(state));
            let lower = state.name().to_lowercase();
            assert_eq!(ProtocolState::parse(&lower), Some(state));
        }
        for text in ["", "XYZZY", "END_OF_MESSAGE", " RCPT", "RCPT "] {
            assert_eq!(ProtocolState::parse(text), None, "{text:?}");
        }
    }

    const SMTP: Path = Path {
        server_port: Some(25),
        authenticated: false,
    };
    const SUBMISSION: Path = Path {
        server_port: Some(587),
        authenticated: true,
    };

    #[test]
    fn mail_never_asked_about_at_the_end_is_reported_tenfold() {
        let counts = StateCounts::default();
        let mut reported = Vec::new();
        for i in 0..12_000u64 {
            let state = match i % 3 {
                0 => ProtocolState::Mail,
                1 => ProtocolState::Rcpt,
                _ => ProtocolState::Data,
            };
            counts.count(Some(ProtocolState::Connect), SMTP);
            reported.extend(counts.count(Some(state), SMTP).map(|r| r.requests));
        }
        assert_eq!(reported, [100, 1_000, 10_000]);
        assert_eq!(counts.get(ProtocolState::Rcpt), 4_000);
        assert_eq!(counts.get(ProtocolState::Connect), 12_000);
    }

    #[test]
    fn one_request_at_the_end_of_a_message_silences_the_report_on_its_path() {
        let counts = StateCounts::default();
        for _ in 0..99 {
            assert_eq!(counts.count(Some(ProtocolState::Rcpt), SMTP), None);
        }
        assert_eq!(counts.count(Some(ProtocolState::EndOfMessage), SMTP), None);
        for _ in 0..2_000 {
            assert_eq!(counts.count(Some(ProtocolState::Rcpt), SMTP), None);
        }
    }

    /// Audit 4.2: one request at END-OF-MESSAGE anywhere silenced the report
    /// for good, so a path that never reaches it (a submission service that
    /// overrides `smtpd_end_of_data_restrictions`, `permit_sasl_authenticated`
    /// ahead of the policy there) went unreported beside one that does.
    #[test]
    fn a_path_that_never_reaches_the_end_is_reported_beside_one_that_does() {
        let counts = StateCounts::default();
        let mut reported = Vec::new();
        for _ in 0..1_000 {
            for path in [SMTP, SUBMISSION] {
                reported.extend(counts.count(Some(ProtocolState::Rcpt), path));
            }
            counts.count(Some(ProtocolState::EndOfMessage), SMTP);
        }
        assert_eq!(
            reported,
            [100, 1_000].map(|requests| NeverAtTheEnd {
                requests,
                path: SUBMISSION
            })
        );
        assert_eq!(
            SUBMISSION.to_string(),
            "on port 587 from clients that authenticated"
        );
        let unknown_port = Path {
            server_port: None,
            authenticated: false,
        };
        assert_eq!(
            unknown_port.to_string(),
            "from clients that did not authenticate"
        );
    }

    #[test]
    fn paths_past_the_most_kept_are_counted_by_state_only() {
        let counts = StateCounts::default();
        let path = |port| Path {
            server_port: Some(port),
            authenticated: false,
        };
        for port in 0..MAX_PATHS as u16 {
            counts.count(Some(ProtocolState::EndOfMessage), path(port));
        }
        for _ in 0..200 {
            assert_eq!(counts.count(Some(ProtocolState::Rcpt), path(9999)), None);
        }
        assert_eq!(counts.get(ProtocolState::Rcpt), 200);
    }

    #[test]
    fn paths_are_told_apart_and_claimed_once_by_racing_threads() {
        let paths: Vec<Path> = [None, Some(0), Some(25), Some(587), Some(u16::MAX)]
            .into_iter()
            .flat_map(|server_port| {
                [false, true].map(|authenticated| Path {
                    server_port,
                    authenticated,
                })
            })
            .collect();
        let keys: std::collections::BTreeSet<u32> = paths.iter().map(|p| p.key()).collect();
        assert_eq!(keys.len(), paths.len());
        assert!(!keys.contains(&0));

        let counts = StateCounts::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        for &path in &paths {
                            counts.count(Some(ProtocolState::Rcpt), path);
                        }
                    }
                });
            }
        });
        let claimed = counts.paths.iter().filter(|c| c.key.load(Relaxed) != 0);
        assert_eq!(claimed.count(), paths.len());
        for path in &paths {
            let held = counts.path_counts(*path).expect("claimed");
            assert_eq!(held.about_mail.load(Relaxed), 2_000, "{path}");
        }
    }

    /// Audit 4.1: mail let through uncharged by a fail-open action was logged
    /// at INFO, one line a request, and counted nowhere.
    #[test]
    fn messages_let_through_uncharged_are_counted_and_said_tenfold_from_the_first() {
        let counts = StateCounts::default();
        let said: Vec<u64> = (0..1_000)
            .filter_map(|_| counts.uncharged(Uncharged::NoAccount, Some(50)))
            .collect();
        assert_eq!(said, [1, 10, 100, 1_000]);
        assert_eq!(counts.uncharged(Uncharged::InternalError, None), Some(1));
        assert_eq!(
            counts.uncharged_count(Uncharged::NoAccount),
            (1_000, 50_000)
        );
        assert_eq!(counts.uncharged_count(Uncharged::InternalError), (1, 0));
        let mut text = String::new();
        counts.prometheus(&mut text);
        for line in [
            "creditgate_postfix_uncharged_messages_total{reason=\"no_account\"} 1000\n",
            "creditgate_postfix_uncharged_recipients_total{reason=\"no_account\"} 50000\n",
            "creditgate_postfix_uncharged_messages_total{reason=\"internal_error\"} 1\n",
            "creditgate_postfix_uncharged_messages_total{reason=\"unknown_account\"} 0\n",
            "creditgate_postfix_uncharged_recipients_total{reason=\"idempotency_key_reused\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn unknown_states_are_counted_apart() {
        let counts = StateCounts::default();
        counts.count(None, SMTP);
        counts.count(Some(ProtocolState::Bdat), SMTP);
        let mut text = String::new();
        counts.prometheus(&mut text);
        assert!(text.contains("creditgate_postfix_requests_total{state=\"other\"} 1\n"));
        assert!(text.contains("creditgate_postfix_requests_total{state=\"BDAT\"} 1\n"));
        assert!(text.contains("creditgate_postfix_requests_total{state=\"END-OF-MESSAGE\"} 0\n"));
    }

    #[test]
    fn reminders_are_powers_of_ten_from_the_first() {
        let got: Vec<u64> = (1..=100_000).filter(|&n| is_reminder(100, n)).collect();
        assert_eq!(got, [100, 1_000, 10_000, 100_000]);
        let got: Vec<u64> = (1..=100).filter(|&n| is_reminder(1, n)).collect();
        assert_eq!(got, [1, 10, 100]);
        assert!(!is_reminder(100, u64::MAX));
    }
}

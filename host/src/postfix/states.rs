//! Postfix's requests counted by protocol state: for `/metrics`, and to tell the
//! operator when Postfix asks about mail but never at the end of a message.
//!
//! creditgate charges at `END-OF-MESSAGE` only. A `check_policy_service` in
//! `smtpd_recipient_restrictions` or `smtpd_data_restrictions` alone is answered
//! (checks at `RCPT`, `DUNNO` at `DATA`) and lets every message out uncharged,
//! which nothing in one request can show: only the counts can. So
//! [`StateCounts::count`] says when requests about mail keep coming and not one
//! has come at `END-OF-MESSAGE`, at the 100th, the 1,000th, the 10,000th, and so
//! on, for the server to log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

/// Requests by protocol state since the server started, shared by its Postfix
/// listeners.
#[derive(Debug, Default)]
pub struct StateCounts {
    by_state: [AtomicU64; ProtocolState::ALL.len()],
    /// Requests whose state Postfix does not document (or that had none).
    other: AtomicU64,
    /// Requests at `MAIL`, `RCPT`, `DATA` and `BDAT`.
    about_mail: AtomicU64,
}

impl StateCounts {
    /// Counts one request at `state` (`None`: no state Postfix documents).
    /// Returns how many requests about mail have come when the operator should
    /// be told that not one has come at `END-OF-MESSAGE`: at
    /// [`FIRST_UNCHARGED_WARNING`] and every tenfold after, while none has.
    pub fn count(&self, state: Option<ProtocolState>) -> Option<u64> {
        let Some(state) = state else {
            self.other.fetch_add(1, Relaxed);
            return None;
        };
        self.by_state[state as usize].fetch_add(1, Relaxed);
        if !state.is_about_mail() {
            return None;
        }
        let about_mail = self.about_mail.fetch_add(1, Relaxed) + 1;
        let charged = self.get(ProtocolState::EndOfMessage);
        (charged == 0 && is_reminder(about_mail)).then_some(about_mail)
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
    }
}

/// 100, 1,000, 10,000, ...
fn is_reminder(n: u64) -> bool {
    let mut at = FIRST_UNCHARGED_WARNING;
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
            counts.count(Some(ProtocolState::Connect));
            reported.extend(counts.count(Some(state)));
        }
        assert_eq!(reported, [100, 1_000, 10_000]);
        assert_eq!(counts.get(ProtocolState::Rcpt), 4_000);
        assert_eq!(counts.get(ProtocolState::Connect), 12_000);
    }

    #[test]
    fn one_request_at_the_end_of_a_message_silences_the_report() {
        let counts = StateCounts::default();
        for _ in 0..99 {
            assert_eq!(counts.count(Some(ProtocolState::Rcpt)), None);
        }
        assert_eq!(counts.count(Some(ProtocolState::EndOfMessage)), None);
        for _ in 0..2_000 {
            assert_eq!(counts.count(Some(ProtocolState::Rcpt)), None);
        }
    }

    #[test]
    fn unknown_states_are_counted_apart() {
        let counts = StateCounts::default();
        counts.count(None);
        counts.count(Some(ProtocolState::Bdat));
        let mut text = String::new();
        counts.prometheus(&mut text);
        assert!(text.contains("creditgate_postfix_requests_total{state=\"other\"} 1\n"));
        assert!(text.contains("creditgate_postfix_requests_total{state=\"BDAT\"} 1\n"));
        assert!(text.contains("creditgate_postfix_requests_total{state=\"END-OF-MESSAGE\"} 0\n"));
    }

    #[test]
    fn reminders_are_powers_of_ten_from_the_first() {
        let got: Vec<u64> = (1..=100_000).filter(|&n| is_reminder(n)).collect();
        assert_eq!(got, [100, 1_000, 10_000, 100_000]);
        assert!(!is_reminder(u64::MAX));
    }
}

//! The sans-I/O core of Postfix policy delegation (`check_policy_service`, see
//! Postfix's SMTPD_POLICY_README): reading requests, mapping them onto creditgate
//! decisions, and encoding replies. No sockets here; the server that wraps this
//! (`creditgate serve`) owns the connections and calls the policy.
//!
//! # The protocol
//!
//! Postfix's SMTP server connects (and keeps the connection for many requests) and
//! sends one request per decision point: `name=value` lines, each ended by `\n`,
//! then an empty line. Postfix sends every attribute it knows, empty when it has no
//! value (`sasl_username=` when the client did not authenticate). The server answers
//! each request, in order, with `action=<text>` and an empty line. The action is
//! what an `access(5)` table could return: `DUNNO` (no opinion, go on with the next
//! restriction), `DEFER 4.7.1 text`, `REJECT`, `HOLD`, `451 4.3.5 text`, ...
//!
//! creditgate looks at two decision points:
//!
//! - `RCPT`: may this account send at all? A check of one email credit that charges
//!   nothing ([`Mapped::Check`]), so an exhausted account is refused before the body
//!   is transferred.
//! - `END-OF-MESSAGE`: the message is complete and `recipient_count` says how many
//!   recipients were accepted: charge them ([`Mapped::Charge`]), idempotently on the
//!   message's `instance`, because Postfix may send a request twice
//!   (`smtpd_policy_service_try_limit` defaults to 2).
//!
//! Every other state Postfix documents is answered `DUNNO` ([`Mapped::Ignore`]);
//! a state it does not is an error ([`MappingError::UnknownState`]), answered
//! as the server answers failures, never taken for one to ignore. Since only
//! `END-OF-MESSAGE` charges, a Postfix that never asks there (the policy
//! service in `smtpd_recipient_restrictions` alone) sends every message
//! uncharged: [`states::StateCounts`] counts requests by state so that the
//! server can say so.
//!
//! # The charge at END-OF-MESSAGE
//!
//! The WIT `send-email` takes the recipients' addresses and charges per distinct
//! one; at `END-OF-MESSAGE` Postfix gives only `recipient_count` (the `RCPT`
//! requests came one by one, possibly over other connections, so collecting them
//! here would be unreliable). [`Mapped::Charge`] therefore carries a count, which
//! the server charges with the WIT `charge-email`, with `cost = recipients` and
//! `message-id = "postfix/<instance>"` (the `postfix/` namespace is Postfix's
//! alone: [`crate::request::Origin`]). A count is of accepted `RCPT` commands, so
//! a recipient given twice costs twice here. The same `instance` with the same
//! count is a retry, charged once; with another count it is refused
//! ([`Actions::idempotency_key_reused`]); a count of 0 charges nothing
//! ([`Actions::no_recipients`]).
//!
//! # Bounds
//!
//! The peer is trusted to be Postfix but is still a socket, so [`RequestReader`]
//! holds at most one partial line (at most [`Limits::max_line_bytes`] + 1 bytes) and
//! the attributes of one request (at most [`Limits::max_request_bytes`] in total, at
//! most [`Limits::max_attributes`] lines). Input past a limit is never copied: the
//! reader fails with a [`ProtocolError`] naming the limit, and the server should
//! then close the connection (Postfix reconnects and applies its `default_action`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use thiserror::Error;

use crate::names::NameRules;

pub mod states;

pub use states::{NeverAtTheEnd, Path, ProtocolState, StateCounts, Uncharged};

/// Bounds on what [`RequestReader`] accepts from one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest line, in bytes, its `\n` (and a `\r` before it) excluded. Default
    /// 4,096: Postfix's own `line_length_limit` is 2,048, but attribute values such
    /// as `ccert_subject` or a long `sender` can approach it, and a margin costs
    /// nothing.
    pub max_line_bytes: usize,
    /// Largest request, in bytes as sent, every line terminator and the final empty
    /// line included. Default 65,536.
    pub max_request_bytes: usize,
    /// Most attribute lines in one request, repeats included. Default 128 (Postfix
    /// 3.7 sends about 30).
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 4 * 1024,
            max_request_bytes: 64 * 1024,
            max_attributes: 128,
        }
    }
}

/// Why a peer's input was refused. After one, the reader refuses everything (it
/// answers the same error again): the server should close the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A line is longer than `max_line_bytes`. `line` counts from 1 within the request.
    #[error("line {line} of the request is longer than max_line_bytes = {limit}")]
    LineTooLong { line: usize, limit: usize },
    /// The request is larger than `max_request_bytes`.
    #[error("the request is larger than max_request_bytes = {limit}")]
    RequestTooLarge { limit: usize },
    /// The request has more than `max_attributes` attribute lines.
    #[error("the request has more than max_attributes = {limit} attributes")]
    TooManyAttributes { limit: usize },
    /// A non-empty line without `=`.
    #[error("line {line} of the request is not name=value (no '=')")]
    MissingEquals { line: usize },
    /// A line that starts with `=`.
    #[error("line {line} of the request has an empty attribute name")]
    EmptyName { line: usize },
    /// An attribute name that is not UTF-8.
    #[error("line {line} of the request has an attribute name that is not UTF-8")]
    NameNotUtf8 { line: usize },
}

/// One policy request: its attributes, by name.
///
/// A repeated attribute (Postfix never repeats one) keeps its last value, and its
/// name is listed by [`repeated`](Self::repeated), for a server that logs it:
/// last-wins matches what Postfix's own `attr_scan_plain` readers and the common
/// policy daemons do, and refusing the connection would turn a client quirk into
/// an outage. A value that is not UTF-8 is kept with U+FFFD replacements and its
/// name recorded in [`non_utf8`](Self::non_utf8); the mapping refuses such a value
/// where it would name an account, so two distinct byte strings never collapse
/// into one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    /// Every attribute's name then value, back to back, as read: one buffer for the
    /// whole request, where a map of strings took three allocations an attribute.
    text: String,
    /// Per attribute line, in order: where its name starts, where its value starts
    /// (the name's end) and where the value ends, in `text`.
    fields: Vec<(usize, usize, usize)>,
    non_utf8: BTreeSet<String>,
}

impl PolicyRequest {
    /// Room for a typical request from Postfix (about 30 attributes, 600 bytes).
    fn with_capacity() -> Self {
        PolicyRequest {
            text: String::with_capacity(1024),
            fields: Vec::with_capacity(32),
            ..PolicyRequest::default()
        }
    }

    /// Every attribute line, in order, repeats included.
    fn entries(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|&(name, value, end)| (&self.text[name..value], &self.text[value..end]))
    }

    /// Appends one attribute line. A value that is not UTF-8 is kept with U+FFFD
    /// replacements, and its name recorded.
    fn push(&mut self, name: &str, value: &[u8]) {
        let start = self.text.len();
        self.text.push_str(name);
        let value_start = self.text.len();
        match std::str::from_utf8(value) {
            Ok(value) => {
                self.text.push_str(value);
                if !self.non_utf8.is_empty() {
                    self.non_utf8.remove(name);
                }
            }
            Err(_) => {
                self.text.push_str(&String::from_utf8_lossy(value));
                self.non_utf8.insert(name.to_owned());
            }
        }
        self.fields.push((start, value_start, self.text.len()));
    }

    /// The value of attribute `name`, if the request had it (possibly empty); the
    /// last one when it came more than once.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries()
            .rev()
            .find(|&(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// Every attribute, known to creditgate or not, with its last value.
    pub fn attributes(&self) -> BTreeMap<&str, &str> {
        self.entries().collect()
    }

    /// Names of attributes that appeared more than once (their last value was kept).
    /// Worked out when asked (nothing on the request path asks): a request of
    /// thirty attributes would otherwise compare names 435 times as it is read.
    pub fn repeated(&self) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        self.entries()
            .filter(|&(name, _)| !seen.insert(name))
            .map(|(name, _)| name)
            .collect()
    }

    /// Names of attributes whose value was not UTF-8 (kept with U+FFFD replacements).
    pub fn non_utf8(&self) -> &BTreeSet<String> {
        &self.non_utf8
    }

    /// `request`: `smtpd_access_policy` for every request creditgate answers.
    pub fn request(&self) -> Option<&str> {
        self.get("request")
    }

    /// `protocol_state`: `CONNECT`, `EHLO`, `HELO`, `MAIL`, `RCPT`, `DATA`,
    /// `BDAT`, `END-OF-MESSAGE`, `VRFY` or `ETRN` ([`ProtocolState`]).
    pub fn protocol_state(&self) -> Option<&str> {
        self.get("protocol_state")
    }

    /// `instance`: the same for every request about one message, even over different
    /// connections.
    pub fn instance(&self) -> Option<&str> {
        self.get("instance")
    }

    /// `queue_id`: empty until Postfix has created the queue file.
    pub fn queue_id(&self) -> Option<&str> {
        self.get("queue_id")
    }

    /// `sasl_username`: empty when the client did not authenticate.
    pub fn sasl_username(&self) -> Option<&str> {
        self.get("sasl_username")
    }

    /// `sender`: the envelope sender; empty for the null sender (`MAIL FROM:<>`).
    pub fn sender(&self) -> Option<&str> {
        self.get("sender")
    }

    /// `recipient`: the envelope recipient at `RCPT`.
    pub fn recipient(&self) -> Option<&str> {
        self.get("recipient")
    }

    /// `client_address`: the SMTP client's IP address.
    pub fn client_address(&self) -> Option<&str> {
        self.get("client_address")
    }

    /// `recipient_count`: recipients accepted so far; non-zero only at `DATA` and
    /// `END-OF-MESSAGE`. An error when absent or not a decimal number.
    pub fn recipient_count(&self) -> Result<u64, MappingError> {
        let value = self.required("recipient_count")?;
        // `u64::from_str` accepts a leading `+`; Postfix never sends one, and a
        // count is digits only.
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_number("recipient_count", value));
        }
        let count = value
            .parse()
            .map_err(|_| invalid_number("recipient_count", value))?;
        if count > MAX_RECIPIENT_COUNT {
            return Err(MappingError::TooManyRecipients { count });
        }
        Ok(count)
    }

    /// The value of `name`, which must be present, non-empty and UTF-8.
    fn required(&self, name: &'static str) -> Result<&str, MappingError> {
        match self.get(name) {
            None | Some("") => Err(MappingError::Missing { name }),
            Some(_) if self.non_utf8.contains(name) => Err(MappingError::NotUtf8 { name }),
            Some(value) => Ok(value),
        }
    }
}

/// The most recipients one `END-OF-MESSAGE` may charge. Postfix accepts at most
/// `smtpd_recipient_limit` (1,000 by default) per message; a count past this
/// one is no message but a request that would push an unlimited plan's counter
/// toward overflow, after which every charge of the cycle is refused.
pub const MAX_RECIPIENT_COUNT: u64 = 1_000_000;

fn invalid_number(name: &'static str, value: &str) -> MappingError {
    MappingError::InvalidNumber {
        name,
        value: value.to_owned(),
    }
}

/// Reads policy requests from a byte stream, incrementally and within [`Limits`].
///
/// Feed it whatever the socket gave, in any chunking:
///
/// ```text
/// let mut input = &buf[..n];
/// while let Some(request) = reader.decode(&mut input)? {
///     // answer `request`
/// }
/// // `input` is now empty: the reader kept any partial request.
/// ```
#[derive(Debug, Clone)]
pub struct RequestReader {
    limits: Limits,
    /// The current line so far, without its `\n`. Never more than
    /// `max_line_bytes + 1` bytes (the extra one a `\r` that may precede `\n`).
    line: Vec<u8>,
    /// The current line's number within the request, from 1.
    line_no: usize,
    /// Bytes of the current request consumed so far, terminators included.
    request_bytes: usize,
    /// Attribute lines of the current request so far.
    attribute_lines: usize,
    request: PolicyRequest,
    failed: Option<ProtocolError>,
}

impl Default for RequestReader {
    fn default() -> Self {
        RequestReader::new(Limits::default())
    }
}

impl RequestReader {
    pub fn new(limits: Limits) -> Self {
        RequestReader {
            limits,
            line: Vec::new(),
            line_no: 1,
            request_bytes: 0,
            attribute_lines: 0,
            request: PolicyRequest::default(),
            failed: None,
        }
    }

    /// Consumes bytes from the front of `input` up to the end of the next complete
    /// request, and returns it; or consumes all of `input` and returns `None` when
    /// no request is complete yet (the partial one is kept for the next call).
    ///
    /// On an error, `input` is left where the error was found, and every later call
    /// returns the same error.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<PolicyRequest>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.decode_inner(input) {
            Ok(request) => Ok(request),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// True when no part of a request is buffered: the peer may close here without
    /// losing anything (a close elsewhere abandons a partial request).
    pub fn is_idle(&self) -> bool {
        self.request_bytes == 0 && self.line.is_empty()
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<PolicyRequest>, ProtocolError> {
        while !input.is_empty() {
            let newline = input.iter().position(|&b| b == b'\n');
            let chunk = &input[..newline.unwrap_or(input.len())];
            let consumed = chunk.len() + usize::from(newline.is_some());

            // Both limits are checked before anything is copied, so that a peer
            // streaming an endless line is cut off, not buffered.
            let line_len = self.line.len() + chunk.len();
            let ends_in_cr = chunk.last().or(self.line.last()) == Some(&b'\r');
            // A `\r` is not part of the line if `\n` follows it; until the `\n`
            // arrives, a trailing `\r` gets the benefit of the doubt.
            let content_len = if ends_in_cr { line_len - 1 } else { line_len };
            if content_len > self.limits.max_line_bytes {
                return Err(ProtocolError::LineTooLong {
                    line: self.line_no,
                    limit: self.limits.max_line_bytes,
                });
            }
            if self.request_bytes + consumed > self.limits.max_request_bytes {
                return Err(ProtocolError::RequestTooLarge {
                    limit: self.limits.max_request_bytes,
                });
            }
            self.request_bytes += consumed;
            *input = &input[consumed..];

            if newline.is_none() {
                self.line.extend_from_slice(chunk);
                continue;
            }
            // A line that arrived whole is parsed in place; one that arrived in
            // pieces is parsed from the buffer, whose allocation is then reused.
            let finished = if self.line.is_empty() {
                self.end_line(chunk)?
            } else {
                self.line.extend_from_slice(chunk);
                let line = std::mem::take(&mut self.line);
                let finished = self.end_line(&line);
                self.line = line;
                self.line.clear();
                finished?
            };
            if let Some(request) = finished {
                return Ok(Some(request));
            }
        }
        Ok(None)
    }

    /// Takes one complete line (without `\n`); returns the request if it was the
    /// empty line that ends one.
    fn end_line(&mut self, line: &[u8]) -> Result<Option<PolicyRequest>, ProtocolError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.line_no = 1;
            self.request_bytes = 0;
            self.attribute_lines = 0;
            let next = PolicyRequest::with_capacity();
            return Ok(Some(std::mem::replace(&mut self.request, next)));
        }
        let line_no = self.line_no;
        self.line_no += 1;
        self.attribute_lines += 1;
        if self.attribute_lines > self.limits.max_attributes {
            return Err(ProtocolError::TooManyAttributes {
                limit: self.limits.max_attributes,
            });
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            return Err(ProtocolError::MissingEquals { line: line_no });
        };
        let (name, value) = (&line[..eq], &line[eq + 1..]);
        if name.is_empty() {
            return Err(ProtocolError::EmptyName { line: line_no });
        }
        let name =
            std::str::from_utf8(name).map_err(|_| ProtocolError::NameNotUtf8 { line: line_no })?;
        self.request.push(name, value);
        Ok(None)
    }
}

/// Where the account a message is charged to comes from.
///
/// In TOML: `account_from = "sasl_username"` (or `"sender"`, `"sender_domain"`), or
/// a table that maps one of those to account names:
///
/// ```toml
/// [account_from.table]
/// key = "sender_domain"
/// map = { "example.com" = "acme", "example.org" = "acme" }
/// ```
///
/// Whatever the source, the account is named by the one rule for names
/// ([`crate::names`]): trimmed, NFC, lowercased unless names are case-sensitive,
/// and refused (as an unknown account) if it is no valid name. So `RACE2`,
/// `race2 ` and ` race2` at the gateway are all the account `race2`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AccountFrom {
    /// The SMTP AUTH user name, normalised as an account name.
    #[default]
    SaslUsername,
    /// The envelope sender address, lowercased whole (as creditgate normalises
    /// addresses).
    Sender,
    /// The envelope sender's domain (after its last `@`), lowercased.
    SenderDomain,
    /// `key`'s value looked up in `map`. The value is normalised first (a
    /// `sasl_username` as an account name; a sender and its domain lowercased), so
    /// write the map's keys that way: lowercase unless names are case-sensitive.
    /// A value missing from the map is an unknown account; the account the map
    /// gives is normalised as any account name.
    Table {
        key: AccountKey,
        map: BTreeMap<String, String>,
    },
}

/// The attribute an [`AccountFrom::Table`] looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKey {
    SaslUsername,
    Sender,
    SenderDomain,
}

impl AccountKey {
    /// The key's value in `req`, trimmed and lowercased (a `sasl_username` only
    /// unless names are case-sensitive); `Ok(None)` when the request has none.
    ///
    /// Only an empty attribute names no account, and the null sender only from
    /// a client that did not authenticate. Everything else that names no
    /// account well is an unknown name, refused as `unknown_account` says
    /// (fail-closed by default), never taken for no account at all, whose
    /// action (`no_account`) is fail-open by default, uncharged:
    /// - a sender with no domain (`ann`, `ann@`), as far as `sender_domain` goes;
    /// - the null sender from an authenticated client: under a sender-based
    ///   mapping the client picks the envelope sender, and `MAIL FROM:<>` would
    ///   otherwise send its mail unmetered;
    /// - a value that is not UTF-8.
    fn value(self, req: &PolicyRequest, names: NameRules) -> Result<Option<String>, MappingError> {
        let name = match self {
            AccountKey::SaslUsername => "sasl_username",
            AccountKey::Sender | AccountKey::SenderDomain => "sender",
        };
        let unknown = |value: &str, why: &str| MappingError::UnknownName {
            from: self.name(),
            value: value.to_owned(),
            why: why.to_owned(),
        };
        let raw = req.get(name).unwrap_or("").trim();
        if req.non_utf8().contains(name) {
            return Err(unknown(raw, "it is not UTF-8"));
        }
        if raw.is_empty() {
            let authenticated = req.sasl_username().is_some_and(|u| !u.trim().is_empty());
            return match self {
                AccountKey::Sender | AccountKey::SenderDomain if authenticated => Err(unknown(
                    "<>",
                    "the null sender from an authenticated client (sasl_username) names no account",
                )),
                _ => Ok(None),
            };
        }
        let value = match self {
            AccountKey::SaslUsername if names.case_sensitive => raw.to_owned(),
            AccountKey::SaslUsername | AccountKey::Sender => raw.to_lowercase(),
            AccountKey::SenderDomain => match raw.rsplit_once('@') {
                Some((_, domain)) if !domain.is_empty() => domain.to_lowercase(),
                _ => return Err(unknown(raw, "the sender has no domain")),
            },
        };
        Ok(Some(value))
    }

    fn name(self) -> &'static str {
        match self {
            AccountKey::SaslUsername => "sasl_username",
            AccountKey::Sender => "sender",
            AccountKey::SenderDomain => "sender_domain",
        }
    }
}

impl AccountFrom {
    /// The account `req` is about: [`MappingError::NoAccount`] when the request
    /// names none (no SMTP AUTH, the null sender), [`MappingError::UnknownName`]
    /// when what it names maps to no valid account name.
    pub fn account(&self, req: &PolicyRequest, names: NameRules) -> Result<String, MappingError> {
        let (key, map) = match self {
            AccountFrom::SaslUsername => (AccountKey::SaslUsername, None),
            AccountFrom::Sender => (AccountKey::Sender, None),
            AccountFrom::SenderDomain => (AccountKey::SenderDomain, None),
            AccountFrom::Table { key, map } => (*key, Some(map)),
        };
        let value = key
            .value(req, names)?
            .ok_or(MappingError::NoAccount { from: key.name() })?;
        let unknown = |why: String| MappingError::UnknownName {
            from: key.name(),
            value: value.clone(),
            why,
        };
        let account = match map {
            None => value.as_str(),
            Some(map) => match map.get(&value) {
                Some(account) => account.as_str(),
                None => return Err(unknown("not in account_from.table".to_owned())),
            },
        };
        names.account(account).map_err(|e| unknown(e.to_string()))
    }
}

/// What a request asks of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// At `RCPT`: could `account` send an email costing `cost` credits now? Charges
    /// nothing (`Request::CheckEmail`).
    Check { account: String, cost: u64 },
    /// At `END-OF-MESSAGE`: charge `account` for `recipients` recipients, once per
    /// `instance` (Postfix's identifier of the message). There is no `Request` for
    /// it yet: see "The charge at END-OF-MESSAGE" in the module documentation.
    Charge {
        account: String,
        recipients: u64,
        instance: String,
    },
    /// Any other protocol state Postfix documents: no opinion (`DUNNO`).
    Ignore,
}

/// Why a request could not be mapped to a decision.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MappingError {
    /// The request names no account: an empty `sasl_username` (no SMTP AUTH), the
    /// null sender. The server applies [`Actions::no_account`].
    #[error("no account: {from} is empty")]
    NoAccount { from: &'static str },
    /// The request names something that maps to no account: a value missing from
    /// the table, or one that is not a valid account name. The server applies
    /// [`Actions::unknown_account`], as for an account the policy does not know.
    #[error("no account: {} {} maps to no account: {}", .from, crate::names::quote(.value), .why)]
    UnknownName {
        from: &'static str,
        value: String,
        why: String,
    },
    /// A required attribute is absent or empty.
    #[error("attribute {name} is missing or empty")]
    Missing { name: &'static str },
    /// A numeric attribute is not a decimal number.
    #[error("attribute {name} is not a number: {value:?}")]
    InvalidNumber { name: &'static str, value: String },
    /// `recipient_count` is past [`MAX_RECIPIENT_COUNT`].
    #[error(
        "recipient_count {count} is more than {MAX_RECIPIENT_COUNT}, the most one message may charge"
    )]
    TooManyRecipients { count: u64 },
    /// An attribute that names something is not UTF-8.
    #[error("attribute {name} is not UTF-8")]
    NotUtf8 { name: &'static str },
    /// `request` is not `smtpd_access_policy`.
    #[error("request is {found:?}, expected \"smtpd_access_policy\"")]
    NotAccessPolicy { found: String },
    /// `protocol_state` is none Postfix documents ([`ProtocolState`]): answered
    /// as a failure to decide, not as a state to ignore, which would let the
    /// message through unchecked.
    #[error("protocol_state {found:?} is not a state Postfix documents")]
    UnknownState { found: String },
}

/// The Postfix front end's settings, as the gateway config embeds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostfixConfig {
    pub limits: Limits,
    pub account_from: AccountFrom,
    pub actions: Actions,
    /// How account names are normalised: set by the server from its own config
    /// (`case_sensitive_names`), the same for every front end.
    #[serde(skip)]
    pub names: NameRules,
}

impl PostfixConfig {
    /// What `req` asks of the policy. The account is resolved only at the states
    /// that need one, so a `CONNECT` without an account is still `Ignore`.
    pub fn map(&self, req: &PolicyRequest) -> Result<Mapped, MappingError> {
        self.map_at(req, req.protocol_state().and_then(ProtocolState::parse))
    }

    /// [`PostfixConfig::map`] for a request whose `protocol_state` the caller
    /// has read and parsed already (the listener counts requests by state):
    /// `state` is `req`'s, `None` when it is missing or no state Postfix
    /// documents.
    pub fn map_at(
        &self,
        req: &PolicyRequest,
        state: Option<ProtocolState>,
    ) -> Result<Mapped, MappingError> {
        match req.request() {
            Some("smtpd_access_policy") => {}
            Some(other) => {
                return Err(MappingError::NotAccessPolicy {
                    found: other.to_owned(),
                });
            }
            None => return Err(MappingError::Missing { name: "request" }),
        }
        match state {
            Some(ProtocolState::Rcpt) => Ok(Mapped::Check {
                account: self.account_from.account(req, self.names)?,
                cost: 1,
            }),
            // A count of 0 should not reach END-OF-MESSAGE in Postfix (DATA needs
            // a recipient); it is passed on as is, charges nothing, and is
            // answered as [`Actions::no_recipients`] says.
            Some(ProtocolState::EndOfMessage) => Ok(Mapped::Charge {
                account: self.account_from.account(req, self.names)?,
                recipients: req.recipient_count()?,
                instance: req.required("instance")?.to_owned(),
            }),
            Some(_) => Ok(Mapped::Ignore),
            // Missing, empty or not UTF-8 says so; anything else is unknown.
            None => Err(MappingError::UnknownState {
                found: req.required("protocol_state")?.to_owned(),
            }),
        }
    }

    /// What the server should tell the operator at start about these settings:
    /// the ways they let mail out uncharged, each chosen but easy to choose
    /// without seeing it.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let sender_based = match &self.account_from {
            AccountFrom::Sender | AccountFrom::SenderDomain => true,
            AccountFrom::Table { key, .. } => *key != AccountKey::SaslUsername,
            AccountFrom::SaslUsername => false,
        };
        if sender_based {
            out.push(
                "[postfix] account_from names the account by the envelope sender: a client \
                 that may relay (one customer's login, or an address in mynetworks) can \
                 charge, and spend, another customer's credits by sending as its address, \
                 unless Postfix ties senders to logins (smtpd_sender_login_maps with \
                 reject_sender_login_mismatch, or reject_authenticated_sender_login_mismatch \
                 for authenticated clients only, in smtpd_sender_restrictions)"
                    .to_owned(),
            );
        }
        if sender_based && self.actions.no_account == FailureAction::FailOpen {
            out.push(
                "[postfix] account_from names the account by the envelope sender and \
                 [postfix.actions] no_account = \"fail_open\": a client that did not \
                 authenticate may send with the null sender (MAIL FROM:<>) uncharged; set \
                 no_account = \"fail_closed\" unless bounces must pass"
                    .to_owned(),
            );
        }
        if !sender_based && self.actions.no_account == FailureAction::FailOpen {
            out.push(
                "[postfix.actions] no_account = \"fail_open\": a client that may relay \
                 without SMTP AUTH (permit_mynetworks: an application server, a host in \
                 mynetworks) sends uncharged, since the account is its sasl_username; set \
                 no_account = \"fail_closed\" if every sender authenticates, or map such \
                 clients to an account with an account_from table. serve counts such \
                 messages (creditgate_postfix_uncharged_messages_total) and logs them"
                    .to_owned(),
            );
        }
        if self.actions.idempotency_key_reused == RefusalAction::Dunno {
            out.push(
                "[postfix.actions] idempotency_key_reused = \"dunno\": Postfix lets a message \
                 whose instance was already charged for another recipient count send \
                 uncharged"
                    .to_owned(),
            );
        }
        for (field, action) in [
            ("unknown_account", self.actions.unknown_account),
            ("internal_error", self.actions.internal_error),
        ] {
            if action == FailureAction::FailOpen {
                let what = match field {
                    "unknown_account" => "an account the ledger does not know",
                    _ => "any request while the policy cannot decide (store down, timeout)",
                };
                out.push(format!(
                    "[postfix.actions] {field} = \"fail_open\": Postfix lets {what} send uncharged"
                ));
            }
        }
        out
    }
}

/// The longest action text a [`Reply`] carries, in bytes. An SMTP reply line is at
/// most 512 bytes (RFC 5321, 4.5.3.1.5) and Postfix reads a policy reply line of at
/// most `line_length_limit` (2,048): text that Postfix would have to cut or wrap is
/// refused here instead.
pub const MAX_ACTION_BYTES: usize = 500;

/// One reply to Postfix: an action, validated to fit on one protocol line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Reply(String);

/// Why an action text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplyError {
    #[error("action text is empty")]
    Empty,
    #[error("action text starts with whitespace: {text:?}")]
    LeadingWhitespace { text: String },
    /// A newline would end the reply early (and let the text inject attributes);
    /// other control characters have no place in an SMTP reply.
    #[error("action text has a control character at byte {at}: {text:?}")]
    ControlCharacter { at: usize, text: String },
    #[error("action text is {len} bytes, more than {limit}")]
    TooLong { len: usize, limit: usize },
    /// A reply to a refusal whose action would not keep the message from going
    /// out ([`Refusing`]).
    #[error(
        "action {verb:?} would let the message out uncharged{why}; a refusal must be \
         REJECT, DEFER, DEFER_IF_PERMIT, DISCARD or a 4xx or 5xx code"
    )]
    LetsThrough { verb: String, why: &'static str },
}

impl Reply {
    /// `DUNNO`: no opinion; Postfix goes on with its next restriction.
    pub fn dunno() -> Self {
        Reply("DUNNO".to_owned())
    }

    /// A reply with action `text`: one line, no control characters, at most
    /// [`MAX_ACTION_BYTES`].
    pub fn new(text: impl Into<String>) -> Result<Self, ReplyError> {
        let text = text.into();
        if text.is_empty() {
            return Err(ReplyError::Empty);
        }
        if text.starts_with(char::is_whitespace) {
            return Err(ReplyError::LeadingWhitespace { text });
        }
        if let Some((at, _)) = text.char_indices().find(|(_, c)| c.is_control()) {
            return Err(ReplyError::ControlCharacter { at, text });
        }
        if text.len() > MAX_ACTION_BYTES {
            return Err(ReplyError::TooLong {
                len: text.len(),
                limit: MAX_ACTION_BYTES,
            });
        }
        Ok(Reply(text))
    }

    /// The action text.
    pub fn action(&self) -> &str {
        &self.0
    }

    /// Appends the reply as sent: `action=<text>\n\n`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"action=");
        out.extend_from_slice(self.0.as_bytes());
        out.extend_from_slice(b"\n\n");
    }

    /// The reply as sent: `action=<text>\n\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 9);
        self.encode_into(&mut out);
        out
    }
}

impl TryFrom<String> for Reply {
    type Error = ReplyError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Reply::new(text)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The reply to a refusal, written by the operator: an action that keeps the
/// message from going out, `REJECT`, `DEFER`, `DEFER_IF_PERMIT`, `DISCARD`, or a
/// `4xx` or `5xx` code, each with a text of its own. Any other action would undo
/// the refusal it answers: `OK` and `DUNNO` let the message through, and so, in
/// the end, does `HOLD`: a message released from the hold queue (`postsuper -H`)
/// is delivered without asking the policy again, uncharged. Such a text is
/// refused with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Refusing(Reply);

impl Refusing {
    pub fn new(text: impl Into<String>) -> Result<Self, ReplyError> {
        let reply = Reply::new(text)?;
        let verb = reply
            .action()
            .split(|c: char| c.is_ascii_whitespace())
            .next()
            .unwrap_or("");
        let code = |first: u8| {
            verb.len() == 3
                && verb.starts_with(first as char)
                && verb.bytes().all(|b| b.is_ascii_digit())
        };
        let refuses = ["REJECT", "DEFER", "DEFER_IF_PERMIT", "DISCARD"]
            .iter()
            .any(|v| verb.eq_ignore_ascii_case(v))
            || code(b'4')
            || code(b'5');
        if refuses {
            return Ok(Refusing(reply));
        }
        let why = if verb.eq_ignore_ascii_case("HOLD") {
            " once released from the hold queue (postsuper -H), since Postfix delivers it \
             without asking the policy again"
        } else {
            ""
        };
        Err(ReplyError::LetsThrough {
            verb: verb.to_owned(),
            why,
        })
    }

    pub fn reply(&self) -> &Reply {
        &self.0
    }
}

impl TryFrom<String> for Refusing {
    type Error = ReplyError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Refusing::new(text)
    }
}

/// What to answer when an account's email credits are exhausted.
///
/// In TOML: `"defer"`, `"reject"`, or `{ custom = "..." }` (a [`Refusing`]
/// text). `"hold"` is refused with the configuration: a held message released
/// later is delivered uncharged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ExhaustedSpelling")]
pub enum ExhaustedAction {
    /// `DEFER 4.7.1`: the client retries later (450), and succeeds after the reset.
    #[default]
    Defer,
    /// `REJECT 5.7.1`: a permanent failure (554); the message bounces.
    Reject,
    /// An action text of the operator's; `{resets_at}` in it is replaced by the
    /// reset instant and `{upgrade_to}` by the plan that would do.
    Custom(Refusing),
}

/// [`ExhaustedAction`] as written, `hold` included so that it is refused with
/// its reason rather than as an unknown word.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum ExhaustedSpelling {
    Defer,
    Hold,
    Reject,
    Custom(Refusing),
}

impl TryFrom<ExhaustedSpelling> for ExhaustedAction {
    type Error = &'static str;

    fn try_from(spelling: ExhaustedSpelling) -> Result<Self, Self::Error> {
        match spelling {
            ExhaustedSpelling::Defer => Ok(ExhaustedAction::Defer),
            ExhaustedSpelling::Reject => Ok(ExhaustedAction::Reject),
            ExhaustedSpelling::Custom(refusing) => Ok(ExhaustedAction::Custom(refusing)),
            ExhaustedSpelling::Hold => Err(
                "\"hold\" would let the message out uncharged: Postfix delivers a message \
                 released from the hold queue (postsuper -H) without asking the policy again; \
                 use \"defer\" (the client retries after the reset) or \"reject\"",
            ),
        }
    }
}

/// What to answer for a refusal that is neither exhausted credits nor a failure to
/// decide ([`Actions::no_recipients`], [`Actions::idempotency_key_reused`]).
///
/// In TOML: `"dunno"`, `"defer"`, `"reject"`, or `{ custom = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RefusalAction {
    /// `DUNNO`: no opinion; the message goes on, uncharged (fails open).
    Dunno,
    /// `DEFER 4.x.x <text>`: the client retries later (450).
    Defer,
    /// `REJECT 5.x.x <text>`: a permanent failure (554); the message bounces.
    Reject,
    /// An action text of the operator's that refuses the message ([`Refusing`]);
    /// `dunno` is the one way to let it through.
    Custom(Refusing),
}

/// What to answer when the policy cannot decide: no opinion, or a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// `DUNNO`: mail flows as if creditgate were not there. Also spelt `dunno`.
    #[serde(alias = "dunno")]
    FailOpen,
    /// `451 4.3.5 ...`: the client retries later; nothing flows unmetered.
    FailClosed,
}

/// The replies for each outcome that is not a plain `DUNNO`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Actions {
    /// Email credits exhausted. Default `defer`.
    pub exhausted: ExhaustedAction,
    /// The request names an account (an authenticated `sasl_username`, a sender)
    /// that maps to none: not in the table, not a valid name, or not known to the
    /// policy. Default `fail_closed` (`451 4.3.5`): an authenticated sender the
    /// ledger does not know must not send unmetered. `fail_open` (`DUNNO`) is for
    /// gateways that also carry mail outside creditgate.
    pub unknown_account: FailureAction,
    /// The request names no account at all (no SMTP AUTH, the null sender).
    /// Default `fail_open`: mail that is not a customer's (a bounce, a local
    /// sender) flows; Postfix's own restrictions decide who may relay.
    pub no_account: FailureAction,
    /// The policy could not decide (store unavailable, component timeout). Default
    /// `fail_closed`: an outage must not become unmetered sending.
    pub internal_error: FailureAction,
    /// `END-OF-MESSAGE` with `recipient_count=0` (the policy's `no_recipients`):
    /// nothing to charge, and nothing Postfix could deliver. Default `reject`
    /// (`REJECT 5.5.1`, as Postfix itself refuses a DATA without recipients).
    pub no_recipients: RefusalAction,
    /// `END-OF-MESSAGE` for an `instance` already charged with another
    /// `recipient_count` (the policy's `idempotency_key_reused`): charging nothing
    /// and letting the message through would send it unmetered. Default `defer`
    /// (fails closed; a retry comes as a new `instance` and is charged).
    pub idempotency_key_reused: RefusalAction,
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            exhausted: ExhaustedAction::Defer,
            unknown_account: FailureAction::FailClosed,
            no_account: FailureAction::FailOpen,
            internal_error: FailureAction::FailClosed,
            no_recipients: RefusalAction::Reject,
            idempotency_key_reused: RefusalAction::Defer,
        }
    }
}

impl Actions {
    /// The reply to an exhausted account, saying when its credits reset
    /// (`resets_at`, say `2025-03-31T09:00:00Z`) and, when the policy names
    /// one, the plan that would have let the message through (`upgrade_to`).
    /// A `resets_at` or plan that would make the reply invalid (a control
    /// character, too long) is left out. A custom reply may say them with
    /// `{resets_at}` and `{upgrade_to}` (empty when there is none).
    pub fn reply_for_exhausted(&self, resets_at: &str, upgrade_to: Option<&str>) -> Reply {
        const TEXT: &str = "Email credits exhausted";
        let upgrade = upgrade_to
            .map(|plan| format!(", or upgrade to {plan}"))
            .unwrap_or_default();
        let (with, without) = match &self.exhausted {
            ExhaustedAction::Defer => (
                format!("DEFER 4.7.1 {TEXT}; they reset at {resets_at}{upgrade}"),
                format!("DEFER 4.7.1 {TEXT}"),
            ),
            ExhaustedAction::Reject => (
                format!("REJECT 5.7.1 {TEXT}; they reset at {resets_at}{upgrade}"),
                format!("REJECT 5.7.1 {TEXT}"),
            ),
            ExhaustedAction::Custom(Refusing(reply)) => (
                reply
                    .action()
                    .replace("{resets_at}", resets_at)
                    .replace("{upgrade_to}", upgrade_to.unwrap_or("")),
                reply.action().to_owned(),
            ),
        };
        // `without` is built from validated parts, so the last fallback is
        // unreachable; it keeps this function total without an unwrap, and
        // refusing.
        Reply::new(with)
            .or_else(|_| Reply::new(without))
            .unwrap_or_else(|_| Reply(format!("DEFER 4.7.1 {TEXT}")))
    }

    /// The reply when the request names an account the ledger does not know.
    pub fn reply_for_unknown_account(&self) -> Reply {
        failure_reply(
            self.unknown_account,
            "Sending account unknown to the credit policy",
        )
    }

    /// The reply when the request names no account at all.
    pub fn reply_for_no_account(&self) -> Reply {
        failure_reply(self.no_account, "No sending account for the credit policy")
    }

    /// The reply when the policy could not decide.
    pub fn reply_for_internal_error(&self) -> Reply {
        failure_reply(self.internal_error, "Policy service unavailable")
    }

    /// The reply to a refusal that has no action of its own (`reason` is its
    /// code, e.g. `unknown_plan`: an account stranded on a plan the policy no
    /// longer has). Always `DEFER 4.7.1`: a refusal must not turn into `DUNNO`,
    /// and the mail goes once the operator has mended the account.
    pub fn reply_for_refusal(&self, reason: &str) -> Reply {
        Reply(format!(
            "DEFER 4.7.1 Refused by the credit policy: {reason}"
        ))
    }

    /// The reply to a message counted with no recipients.
    pub fn reply_for_no_recipients(&self) -> Reply {
        refusal_reply(
            &self.no_recipients,
            ("4.5.1", "5.5.1"),
            "No valid recipients",
        )
    }

    /// The reply to an `instance` charged before for another recipient count.
    pub fn reply_for_idempotency_key_reused(&self) -> Reply {
        refusal_reply(
            &self.idempotency_key_reused,
            ("4.7.1", "5.7.1"),
            "Message already charged with another recipient count",
        )
    }
}

/// `statuses`: the enhanced status codes of the defer and the reject.
fn refusal_reply(action: &RefusalAction, statuses: (&str, &str), text: &str) -> Reply {
    match action {
        RefusalAction::Dunno => Reply::dunno(),
        RefusalAction::Defer => Reply(format!("DEFER {} {text}", statuses.0)),
        RefusalAction::Reject => Reply(format!("REJECT {} {text}", statuses.1)),
        RefusalAction::Custom(Refusing(reply)) => reply.clone(),
    }
}

fn failure_reply(action: FailureAction, text: &'static str) -> Reply {
    match action {
        FailureAction::FailOpen => Reply::dunno(),
        FailureAction::FailClosed => Reply(format!("451 4.3.5 {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Serializes attributes as Postfix would.
    fn encode_request(attrs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in attrs {
            out.extend_from_slice(format!("{name}={value}\n").as_bytes());
        }
        out.push(b'\n');
        out
    }

    fn attrs_of(req: &PolicyRequest) -> Vec<(&str, &str)> {
        req.attributes().into_iter().collect()
    }

    /// Feeds `bytes` in chunks of `chunk` bytes; returns the requests and the error.
    fn read_chunked(
        reader: &mut RequestReader,
        bytes: &[u8],
        chunk: usize,
    ) -> (Vec<PolicyRequest>, Option<ProtocolError>) {
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            let mut input = piece;
            loop {
                match reader.decode(&mut input) {
                    Ok(Some(req)) => out.push(req),
                    Ok(None) => {
                        assert!(input.is_empty());
                        break;
                    }
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn read_all(bytes: &[u8]) -> (Vec<PolicyRequest>, Option<ProtocolError>) {
        read_chunked(&mut RequestReader::default(), bytes, bytes.len())
    }

    fn read_with(limits: Limits, bytes: &[u8]) -> Result<Vec<PolicyRequest>, ProtocolError> {
        match read_chunked(&mut RequestReader::new(limits), bytes, bytes.len()) {
            (requests, None) => Ok(requests),
            (_, Some(e)) => Err(e),
        }
    }

    /// What an RCPT request from `account` maps to: a check of one credit.
    fn checked(account: &str) -> Result<Mapped, MappingError> {
        Ok(Mapped::Check {
            account: account.into(),
            cost: 1,
        })
    }

    fn rcpt(sasl: &str, sender: &str) -> PolicyRequest {
        request(&[
            ("request", "smtpd_access_policy"),
            ("protocol_state", "RCPT"),
            ("instance", "1a2b.67e1f0a1.3c4d.0"),
            ("queue_id", ""),
            ("sasl_username", sasl),
            ("sender", sender),
            ("recipient", "bo@example.org"),
            ("recipient_count", "0"),
            ("client_address", "192.0.2.7"),
        ])
    }

    fn request(attrs: &[(&str, &str)]) -> PolicyRequest {
        let (mut requests, error) = read_all(&encode_request(attrs));
        assert_eq!(error, None);
        assert_eq!(requests.len(), 1);
        requests.remove(0)
    }

    fn without(req: &PolicyRequest, name: &str) -> PolicyRequest {
        let mut out = PolicyRequest::default();
        for (n, value) in req.entries().filter(|&(n, _)| n != name) {
            out.push(n, value.as_bytes());
        }
        out
    }

    fn with(req: &PolicyRequest, name: &str, value: &str) -> PolicyRequest {
        let mut req = req.clone();
        req.push(name, value.as_bytes());
        req
    }

    fn config(account_from: AccountFrom) -> PostfixConfig {
        PostfixConfig {
            account_from,
            ..PostfixConfig::default()
        }
    }

    // --- reading ---

    #[test]
    fn several_requests_in_one_buffer() {
        let mut bytes = encode_request(&[("request", "smtpd_access_policy"), ("a", "1")]);
        bytes.extend(encode_request(&[("b", "2")]));
        bytes.extend(encode_request(&[("c", "3")]));
        let mut reader = RequestReader::default();
        let mut input = &bytes[..];
        let first = reader.decode(&mut input).unwrap().unwrap();
        assert_eq!(
            attrs_of(&first),
            [("a", "1"), ("request", "smtpd_access_policy")]
        );
        // The rest is left for the next call, untouched.
        assert_eq!(input, &bytes[bytes.len() - 10..]);
        assert_eq!(
            attrs_of(&reader.decode(&mut input).unwrap().unwrap()),
            [("b", "2")]
        );
        assert_eq!(
            attrs_of(&reader.decode(&mut input).unwrap().unwrap()),
            [("c", "3")]
        );
        assert_eq!(reader.decode(&mut input), Ok(None));
        assert!(input.is_empty());
        assert!(reader.is_idle());
    }

    #[test]
    fn a_request_split_byte_by_byte() {
        let attrs = [
            ("request", "smtpd_access_policy"),
            ("sender", "al@example.com"),
        ];
        let mut bytes = encode_request(&attrs);
        bytes.extend(encode_request(&attrs));
        let mut reader = RequestReader::default();
        let (requests, error) = read_chunked(&mut reader, &bytes, 1);
        assert_eq!(error, None);
        assert_eq!(requests.len(), 2);
        for req in &requests {
            assert_eq!(req.sender(), Some("al@example.com"));
        }
    }

    #[test]
    fn partial_requests_are_not_idle() {
        let mut reader = RequestReader::default();
        let mut input: &[u8] = b"a=1";
        assert_eq!(reader.decode(&mut input), Ok(None));
        assert!(!reader.is_idle());
        let mut input: &[u8] = b"\n";
        assert_eq!(reader.decode(&mut input), Ok(None));
        assert!(!reader.is_idle());
        let mut input: &[u8] = b"\n";
        assert!(reader.decode(&mut input).unwrap().is_some());
        assert!(reader.is_idle());
    }

    #[test]
    fn crlf_is_accepted() {
        let (requests, error) = read_all(b"request=smtpd_access_policy\r\nsender=a@b.c\r\n\r\n");
        assert_eq!(error, None);
        assert_eq!(
            attrs_of(&requests[0]),
            [("request", "smtpd_access_policy"), ("sender", "a@b.c")]
        );
        // Only one `\r`, only at the end, is a terminator.
        let (requests, _) = read_all(b"a=x\ry\r\r\n\n");
        assert_eq!(requests[0].get("a"), Some("x\ry\r"));
    }

    #[test]
    fn a_repeated_attribute_keeps_the_last_value_and_is_recorded() {
        let req = request(&[
            ("sender", "first@example.com"),
            ("a", "1"),
            ("sender", "last@example.com"),
        ]);
        assert_eq!(req.sender(), Some("last@example.com"));
        assert_eq!(req.repeated().into_iter().collect::<Vec<_>>(), ["sender"]);
        assert!(request(&[("a", "1")]).repeated().is_empty());
    }

    #[test]
    fn values_may_be_empty_or_contain_equals() {
        let req = request(&[("sasl_username", ""), ("ccert_subject", "CN=x=y")]);
        assert_eq!(req.sasl_username(), Some(""));
        assert_eq!(req.get("ccert_subject"), Some("CN=x=y"));
        assert_eq!(req.get("absent"), None);
    }

    #[test]
    fn an_empty_request_is_a_request_without_attributes() {
        let (requests, error) = read_all(b"\n\r\n");
        assert_eq!(error, None);
        assert_eq!(
            requests,
            [PolicyRequest::default(), PolicyRequest::default()]
        );
    }

    #[test]
    fn non_utf8_values_are_kept_lossily_and_recorded() {
        let (requests, error) = read_all(b"sender=caf\xe9@example.com\nx=ok\n\n");
        assert_eq!(error, None);
        assert_eq!(requests[0].sender(), Some("caf\u{fffd}@example.com"));
        assert_eq!(
            requests[0].non_utf8().iter().collect::<Vec<_>>(),
            ["sender"]
        );
        // A later valid value clears the mark.
        let (requests, _) = read_all(b"sender=\xff\nsender=ok\n\n");
        assert!(requests[0].non_utf8().is_empty());
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        let cases: [(&[u8], ProtocolError); 4] = [
            (
                b"a=1\nnoequals\n\n",
                ProtocolError::MissingEquals { line: 2 },
            ),
            (b"a=1\nb=2\n=3\n\n", ProtocolError::EmptyName { line: 3 }),
            (b"\xff=1\n\n", ProtocolError::NameNotUtf8 { line: 1 }),
            (b"a\r\n\r\n", ProtocolError::MissingEquals { line: 1 }),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                read_all(bytes).1,
                Some(expected),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Line numbers restart with each request.
        let (requests, error) = read_all(b"a=1\n\nb=2\nbad\n\n");
        assert_eq!(requests.len(), 1);
        assert_eq!(error, Some(ProtocolError::MissingEquals { line: 2 }));
    }

    #[test]
    fn after_an_error_the_reader_refuses_everything() {
        let mut reader = RequestReader::default();
        let mut input: &[u8] = b"bad\n\n";
        let e = reader.decode(&mut input).unwrap_err();
        let mut input: &[u8] = b"a=1\n\n";
        assert_eq!(reader.decode(&mut input), Err(e));
        assert_eq!(input, b"a=1\n\n");
    }

    fn line_of(len: usize) -> Vec<u8> {
        let mut line = b"a=".to_vec();
        line.resize(len, b'v');
        line
    }

    #[test]
    fn line_length_at_its_limit() {
        let limits = Limits {
            max_line_bytes: 16,
            ..Limits::default()
        };
        for terminator in [&b"\n"[..], b"\r\n"] {
            let mut ok = line_of(16);
            ok.extend_from_slice(terminator);
            ok.push(b'\n');
            assert_eq!(read_with(limits, &ok).map(|r| r.len()), Ok(1));
            let mut over = line_of(17);
            over.extend_from_slice(terminator);
            over.push(b'\n');
            assert_eq!(
                read_with(limits, &over),
                Err(ProtocolError::LineTooLong { line: 1, limit: 16 })
            );
        }
        // Byte by byte too: a `\r` at the limit waits for its `\n`.
        let mut ok = line_of(16);
        ok.extend_from_slice(b"\r\n\r\n");
        let (requests, error) = read_chunked(&mut RequestReader::new(limits), &ok, 1);
        assert_eq!((requests.len(), error), (1, None));
        let mut over = line_of(16);
        over.extend_from_slice(b"\rx\n\n");
        let (_, error) = read_chunked(&mut RequestReader::new(limits), &over, 1);
        assert_eq!(
            error,
            Some(ProtocolError::LineTooLong { line: 1, limit: 16 })
        );
    }

    #[test]
    fn request_size_at_its_limit() {
        // Three lines of 10 bytes with their `\n`, plus the empty line: 31 bytes.
        let bytes = b"a=1234567\nb=1234567\nc=1234567\n\n";
        assert_eq!(bytes.len(), 31);
        let at = Limits {
            max_request_bytes: 31,
            ..Limits::default()
        };
        assert_eq!(read_with(at, bytes).map(|r| r.len()), Ok(1));
        let under = Limits {
            max_request_bytes: 30,
            ..Limits::default()
        };
        assert_eq!(
            read_with(under, bytes),
            Err(ProtocolError::RequestTooLarge { limit: 30 })
        );
        // The count restarts with each request.
        let mut two = bytes.to_vec();
        two.extend_from_slice(bytes);
        assert_eq!(read_with(at, &two).map(|r| r.len()), Ok(2));
        let (requests, error) = read_chunked(&mut RequestReader::new(under), &two, 1);
        assert_eq!(requests.len(), 0);
        assert_eq!(error, Some(ProtocolError::RequestTooLarge { limit: 30 }));
    }

    #[test]
    fn attribute_count_at_its_limit() {
        let limits = Limits {
            max_attributes: 3,
            ..Limits::default()
        };
        // Repeats count: they take memory and time like any line.
        let three = encode_request(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(read_with(limits, &three).map(|r| r.len()), Ok(1));
        let four = encode_request(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
        assert_eq!(
            read_with(limits, &four),
            Err(ProtocolError::TooManyAttributes { limit: 3 })
        );
    }

    #[test]
    fn default_limits_are_the_documented_ones() {
        assert_eq!(
            Limits::default(),
            Limits {
                max_line_bytes: 4096,
                max_request_bytes: 65536,
                max_attributes: 128,
            }
        );
    }

    #[test]
    fn a_giant_line_without_newline_is_cut_off_at_the_limit() {
        let mut reader = RequestReader::default();
        let block = [b'x'; 1000];
        let mut fed = 0;
        let error = loop {
            let mut input = &block[..];
            match reader.decode(&mut input) {
                Ok(None) => fed += block.len(),
                Ok(Some(_)) => panic!("no request can end without a newline"),
                Err(e) => break e,
            }
            assert!(reader.line.len() <= 4097);
        };
        assert_eq!(
            error,
            ProtocolError::LineTooLong {
                line: 1,
                limit: 4096
            }
        );
        assert_eq!(fed, 4000);
        // The chunk that crossed the limit was not copied.
        assert_eq!(reader.line.len(), 4000);
        assert!(reader.line.capacity() < 8192);
        // One giant push is refused without copying anything.
        let mut reader = RequestReader::default();
        let giant = vec![b'x'; 10 << 20];
        let mut input = &giant[..];
        assert!(reader.decode(&mut input).is_err());
        assert_eq!(reader.line.capacity(), 0);
        assert_eq!(input.len(), giant.len());
    }

    // --- accessors and mapping ---

    #[test]
    fn accessors_read_postfix_attributes() {
        let req = rcpt("acme", "Al@Example.COM");
        assert_eq!(req.request(), Some("smtpd_access_policy"));
        assert_eq!(req.protocol_state(), Some("RCPT"));
        assert_eq!(req.instance(), Some("1a2b.67e1f0a1.3c4d.0"));
        assert_eq!(req.queue_id(), Some(""));
        assert_eq!(req.sasl_username(), Some("acme"));
        assert_eq!(req.sender(), Some("Al@Example.COM"));
        assert_eq!(req.recipient(), Some("bo@example.org"));
        assert_eq!(req.recipient_count(), Ok(0));
        assert_eq!(req.client_address(), Some("192.0.2.7"));
    }

    #[test]
    fn recipient_count_must_be_a_number() {
        let req = rcpt("acme", "");
        assert_eq!(
            with(&req, "recipient_count", "17").recipient_count(),
            Ok(17)
        );
        for bad in ["x", "-1", "+1", "1.5", " 1", "18446744073709551616"] {
            assert_eq!(
                with(&req, "recipient_count", bad).recipient_count(),
                Err(MappingError::InvalidNumber {
                    name: "recipient_count",
                    value: bad.into()
                })
            );
        }
        assert_eq!(
            with(&req, "recipient_count", "").recipient_count(),
            Err(MappingError::Missing {
                name: "recipient_count"
            })
        );
        let absent = without(&req, "recipient_count");
        assert_eq!(
            absent.recipient_count(),
            Err(MappingError::Missing {
                name: "recipient_count"
            })
        );
    }

    #[test]
    fn rcpt_maps_to_a_check_of_one_credit() {
        let got = PostfixConfig::default().map(&rcpt("acme", "al@example.com"));
        assert_eq!(got, checked("acme"));
    }

    #[test]
    fn end_of_message_maps_to_a_charge_of_the_recipient_count() {
        let eom = with(
            &with(&rcpt("acme", ""), "protocol_state", "END-OF-MESSAGE"),
            "recipient_count",
            "3",
        );
        assert_eq!(
            PostfixConfig::default().map(&eom),
            Ok(Mapped::Charge {
                account: "acme".into(),
                recipients: 3,
                instance: "1a2b.67e1f0a1.3c4d.0".into(),
            })
        );
        assert_eq!(
            PostfixConfig::default().map(&with(&eom, "recipient_count", "three")),
            Err(MappingError::InvalidNumber {
                name: "recipient_count",
                value: "three".into()
            })
        );
        assert_eq!(
            PostfixConfig::default().map(&with(&eom, "instance", "")),
            Err(MappingError::Missing { name: "instance" })
        );
        // No message has more recipients than Postfix's limit allows; a count
        // near 2^64 would push an unlimited plan's counter to overflow.
        let count = (MAX_RECIPIENT_COUNT + 1).to_string();
        assert_eq!(
            PostfixConfig::default().map(&with(&eom, "recipient_count", &count)),
            Err(MappingError::TooManyRecipients {
                count: MAX_RECIPIENT_COUNT + 1
            })
        );
        let most = MAX_RECIPIENT_COUNT.to_string();
        assert!(matches!(
            PostfixConfig::default().map(&with(&eom, "recipient_count", &most)),
            Ok(Mapped::Charge {
                recipients: MAX_RECIPIENT_COUNT,
                ..
            })
        ));
    }

    #[test]
    fn other_states_are_ignored_even_without_an_account() {
        for state in [
            "CONNECT", "EHLO", "HELO", "MAIL", "DATA", "BDAT", "VRFY", "ETRN",
        ] {
            let req = with(&rcpt("", ""), "protocol_state", state);
            assert_eq!(
                PostfixConfig::default().map(&req),
                Ok(Mapped::Ignore),
                "{state}"
            );
        }
    }

    #[test]
    fn a_state_postfix_does_not_document_is_an_error_not_one_to_ignore() {
        for state in ["XYZZY", "END_OF_MESSAGE", "RCPT TO"] {
            let req = with(&rcpt("acme", ""), "protocol_state", state);
            assert_eq!(
                PostfixConfig::default().map(&req),
                Err(MappingError::UnknownState {
                    found: state.to_owned()
                }),
            );
        }
    }

    #[test]
    fn only_access_policy_requests_map() {
        let req = rcpt("acme", "");
        assert_eq!(
            PostfixConfig::default().map(&with(&req, "request", "junk")),
            Err(MappingError::NotAccessPolicy {
                found: "junk".into()
            })
        );
        let mut absent = without(&req, "request");
        assert_eq!(
            PostfixConfig::default().map(&absent),
            Err(MappingError::Missing { name: "request" })
        );
        absent = without(&req, "protocol_state");
        assert_eq!(
            PostfixConfig::default().map(&absent),
            Err(MappingError::Missing {
                name: "protocol_state"
            })
        );
    }

    #[test]
    fn account_from_sasl_username() {
        let c = config(AccountFrom::SaslUsername);
        assert_eq!(c.map(&rcpt("acme", "al@example.com")), checked("acme"));
        assert_eq!(
            c.map(&rcpt("", "al@example.com")),
            Err(MappingError::NoAccount {
                from: "sasl_username",
            })
        );
        let absent = without(&rcpt("", ""), "sasl_username");
        assert!(matches!(
            c.map(&absent),
            Err(MappingError::NoAccount { .. })
        ));
    }

    /// Issue 14.2: `RACE2`, `race2 `, ` race2` and `race2\t` are the account
    /// `race2`, not an unknown account let through.
    #[test]
    fn a_sasl_username_is_normalised_as_an_account_name() {
        let c = config(AccountFrom::SaslUsername);
        for user in [
            "race2",
            "RACE2",
            "race2 ",
            " race2",
            "race2\t",
            "Race2\u{a0}",
        ] {
            assert_eq!(c.map(&rcpt(user, "")), checked("race2"), "{user:?}");
        }
        let mut keep = config(AccountFrom::SaslUsername);
        keep.names.case_sensitive = true;
        assert!(
            matches!(keep.map(&rcpt(" RACE2 ", "")), Ok(Mapped::Check { account, .. }) if account == "RACE2")
        );
        // A name no account can have is an unknown account, not "no account".
        for user in ["a/b", "\u{1}alerts/acme", "ac\u{202e}me", "ab\u{200b}"] {
            let e = c.map(&rcpt(user, "")).unwrap_err();
            assert!(
                matches!(
                    &e,
                    MappingError::UnknownName {
                        from: "sasl_username",
                        ..
                    }
                ),
                "{user:?}: {e:?}"
            );
            let text = e.to_string();
            assert!(!text.contains(['\u{1}', '\u{202e}', '\u{200b}']), "{text}");
        }
    }

    /// Under `from` (which a `NoAccount` names `name`), `sender` maps to
    /// `account`, and the null sender (a bounce) names no account:
    /// `no_account`'s action, fail-open by default.
    fn maps_the_sender(
        from: AccountFrom,
        name: &'static str,
        sender: &str,
        account: &str,
    ) -> PostfixConfig {
        let c = config(from);
        assert_eq!(c.map(&rcpt("", sender)), checked(account));
        assert_eq!(
            c.map(&rcpt("", "")),
            Err(MappingError::NoAccount { from: name })
        );
        // The null sender from a client that authenticated is no bounce it
        // relays but a way out uncharged that the client chose: it fails closed.
        for sasl in ["acme", " acme "] {
            assert_eq!(
                c.map(&rcpt(sasl, "")),
                Err(MappingError::UnknownName {
                    from: name,
                    value: "<>".to_owned(),
                    why: "the null sender from an authenticated client (sasl_username) names \
                          no account"
                        .to_owned(),
                }),
                "{sasl:?}"
            );
        }
        c
    }

    #[test]
    fn account_from_sender() {
        maps_the_sender(
            AccountFrom::Sender,
            "sender",
            "Al@Example.COM",
            "al@example.com",
        );
    }

    #[test]
    fn account_from_sender_domain() {
        let c = maps_the_sender(
            AccountFrom::SenderDomain,
            "sender_domain",
            "\"a@b\"@Mail.Example.COM",
            "mail.example.com",
        );
        // Only the null sender names no account; a sender without a domain
        // names one badly, and fails closed: it is not a way out uncharged.
        for sender in ["postmaster", "al@", " al@ "] {
            assert_eq!(
                c.map(&rcpt("acme", sender)),
                Err(MappingError::UnknownName {
                    from: "sender_domain",
                    value: sender.trim().to_owned(),
                    why: "the sender has no domain".to_owned(),
                }),
                "{sender:?}"
            );
        }
    }

    #[test]
    fn account_from_a_table() {
        let map: BTreeMap<String, String> = [("example.com", "acme"), ("empty.example", "")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let c = config(AccountFrom::Table {
            key: AccountKey::SenderDomain,
            map: map.clone(),
        });
        assert_eq!(c.map(&rcpt("", "al@EXAMPLE.com")), checked("acme"));
        for sender in ["al@example.org", "al@empty.example"] {
            assert!(matches!(
                c.map(&rcpt("", sender)),
                Err(MappingError::UnknownName { .. })
            ));
        }
        assert!(matches!(
            c.map(&rcpt("", "")),
            Err(MappingError::NoAccount { .. })
        ));
        assert_eq!(
            c.map(&rcpt("", "al@example.org")),
            Err(MappingError::UnknownName {
                from: "sender_domain",
                value: "example.org".into(),
                why: "not in account_from.table".into(),
            })
        );
        let by_user = config(AccountFrom::Table {
            key: AccountKey::SaslUsername,
            map: [("u1".to_owned(), "Acme".to_owned())].into(),
        });
        // The key is normalised before the look-up, the account after it.
        for user in ["u1", "U1", " u1 "] {
            assert!(
                matches!(by_user.map(&rcpt(user, "")), Ok(Mapped::Check { account, .. }) if account == "acme"),
                "{user:?}"
            );
        }
        assert!(matches!(
            by_user.map(&rcpt("u2", "")),
            Err(MappingError::UnknownName { .. })
        ));
        let by_sender = config(AccountFrom::Table {
            key: AccountKey::Sender,
            map: [("al@example.com".to_owned(), "acme".to_owned())].into(),
        });
        assert!(
            matches!(by_sender.map(&rcpt("", "Al@example.com")), Ok(Mapped::Check { account, .. }) if account == "acme")
        );
    }

    #[test]
    fn a_non_utf8_account_source_is_refused() {
        let (requests, _) = read_all(
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=\xff\xfe\nsender=a@b.c\n\n",
        );
        // Refused as an unknown name (`unknown_account`, fail-closed by
        // default), not as a failure to decide, which may be set to fail open.
        assert_eq!(
            PostfixConfig::default().map(&requests[0]),
            Err(MappingError::UnknownName {
                from: "sasl_username",
                value: "\u{fffd}\u{fffd}".to_owned(),
                why: "it is not UTF-8".to_owned(),
            })
        );
        assert!(config(AccountFrom::Sender).map(&requests[0]).is_ok());
    }

    // --- configuration ---

    #[test]
    fn config_from_toml() {
        let c: PostfixConfig = toml::from_str("").unwrap();
        assert_eq!(c, PostfixConfig::default());
        let c: PostfixConfig = toml::from_str(
            r#"
            account_from = "sender_domain"
            [limits]
            max_line_bytes = 2048
            [actions]
            exhausted = "reject"
            unknown_account = "fail_closed"
            internal_error = "fail_open"
            "#,
        )
        .unwrap();
        assert_eq!(c.account_from, AccountFrom::SenderDomain);
        assert_eq!(c.limits.max_line_bytes, 2048);
        assert_eq!(c.limits.max_attributes, 128);
        assert_eq!(c.actions.exhausted, ExhaustedAction::Reject);
        assert_eq!(c.actions.unknown_account, FailureAction::FailClosed);
        assert_eq!(c.actions.internal_error, FailureAction::FailOpen);

        let table: PostfixConfig = toml::from_str(
            r#"
            [account_from.table]
            key = "sasl_username"
            map = { "u1" = "acme" }
            [actions]
            exhausted = { custom = "450 4.7.1 Over quota until {resets_at}" }
            "#,
        )
        .unwrap();
        assert_eq!(
            table.account_from,
            AccountFrom::Table {
                key: AccountKey::SaslUsername,
                map: [("u1".to_owned(), "acme".to_owned())].into()
            }
        );
        // Defaults: an unknown account fails closed, no account at all fails open.
        assert_eq!(table.actions.unknown_account, FailureAction::FailClosed);
        assert_eq!(table.actions.no_account, FailureAction::FailOpen);
        let c: PostfixConfig =
            toml::from_str("[actions]\nunknown_account = \"dunno\"").expect("dunno is fail_open");
        assert_eq!(c.actions.unknown_account, FailureAction::FailOpen);
        assert_eq!(
            table
                .actions
                .reply_for_exhausted("2025-03-31T09:00:00Z", None)
                .action(),
            "450 4.7.1 Over quota until 2025-03-31T09:00:00Z"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases = [
            ("bogus = 1", "bogus"),
            ("[limits]\nmax_lines = 1", "max_lines"),
            ("[actions]\nexhausted = \"bounce\"", "bounce"),
            ("[actions]\nunknown_account = \"DUNNO\"", "DUNNO"),
            (
                "[account_from.table]\nkey = \"sender\"\nmap = {}\nextra = 1",
                "extra",
            ),
            ("[account_from.table]\nmap = {}", "key"),
            ("account_from = \"recipient\"", "recipient"),
            (
                "[actions]\nexhausted = { custom = \"DEFER\\nx=y\" }",
                "control character",
            ),
            // A held message released later goes out uncharged.
            ("[actions]\nexhausted = \"hold\"", "postsuper -H"),
            (
                "[actions]\nexhausted = { custom = \"HOLD over quota\" }",
                "postsuper -H",
            ),
            (
                "[actions]\nidempotency_key_reused = { custom = \"OK\" }",
                "would let the message out uncharged",
            ),
        ];
        for (text, needle) in cases {
            let e = toml::from_str::<PostfixConfig>(text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn only_actions_that_refuse_answer_a_refusal() {
        for text in [
            "REJECT",
            "reject 5.7.1 over quota",
            "DEFER 4.7.1 later",
            "DEFER_IF_PERMIT",
            "DISCARD quietly",
            "450 4.7.1 Over quota until {resets_at}",
            "554 5.7.1 no",
        ] {
            assert!(Refusing::new(text).is_ok(), "{text:?}");
        }
        for (text, verb) in [
            ("OK", "OK"),
            ("DUNNO", "DUNNO"),
            ("HOLD over quota", "HOLD"),
            ("PREPEND X-Over: yes", "PREPEND"),
            ("REDIRECT billing@example.com", "REDIRECT"),
            ("FILTER smtp:[127.0.0.1]:10025", "FILTER"),
            ("DEFER_IF_REJECT", "DEFER_IF_REJECT"),
            ("250 2.0.0 fine", "250"),
            ("4501 too long", "4501"),
            ("{upgrade_to}", "{upgrade_to}"),
        ] {
            match Refusing::new(text) {
                Err(ReplyError::LetsThrough { verb: got, .. }) => assert_eq!(got, verb),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn settings_that_let_mail_out_uncharged_are_said_at_start() {
        let warned = |text: &str| {
            toml::from_str::<PostfixConfig>(text)
                .expect("valid")
                .warnings()
                .join("\n")
        };
        // Audit 4.1: by default a client that relays without SMTP AUTH names no
        // account and sends uncharged; that was said nowhere.
        let defaults = PostfixConfig::default().warnings();
        assert_eq!(defaults.len(), 1, "{defaults:?}");
        assert!(defaults[0].contains("mynetworks"), "{defaults:?}");
        assert!(warned("[actions]\nno_account = \"fail_closed\"").is_empty());
        let table = warned("[account_from.table]\nkey = \"sasl_username\"\nmap = {}");
        assert!(table.contains("no_account = \"fail_open\""), "{table}");
        // Audit 4.3: letting a reused instance through was accepted in silence.
        let reused =
            warned("[actions]\nno_account = \"fail_closed\"\nidempotency_key_reused = \"dunno\"");
        assert!(
            reused.contains("idempotency_key_reused = \"dunno\""),
            "{reused}"
        );
        assert!(
            warned("[actions]\nno_account = \"fail_closed\"\nidempotency_key_reused = \"reject\"")
                .is_empty()
        );
        let sender = warned("account_from = \"sender\"");
        assert!(sender.contains("MAIL FROM:<>"), "{sender}");
        let table = warned("[account_from.table]\nkey = \"sender_domain\"\nmap = {}");
        assert!(table.contains("MAIL FROM:<>"), "{table}");
        // Audit 3.4: under a sender-based account, an authenticated client can
        // send as another customer unless Postfix ties senders to logins.
        for text in [
            "account_from = \"sender_domain\"\n[actions]\nno_account = \"fail_closed\"",
            "[account_from.table]\nkey = \"sender\"\nmap = {}",
        ] {
            let sender = warned(text);
            assert!(
                sender.contains("reject_authenticated_sender_login_mismatch"),
                "{sender}"
            );
        }
        assert!(
            !warned("[account_from.table]\nkey = \"sasl_username\"\nmap = {}")
                .contains("login_mismatch")
        );
        let open = warned("[actions]\nunknown_account = \"dunno\"\ninternal_error = \"fail_open\"");
        assert!(open.contains("unknown_account = \"fail_open\""), "{open}");
        assert!(open.contains("internal_error = \"fail_open\""), "{open}");
    }

    // --- replies ---

    #[test]
    fn replies_for_exhausted_say_when_credits_reset() {
        let at = "2025-03-31T09:00:00Z";
        let reply = |exhausted| {
            Actions {
                exhausted,
                ..Actions::default()
            }
            .reply_for_exhausted(at, None)
            .action()
            .to_owned()
        };
        assert_eq!(
            reply(ExhaustedAction::Defer),
            "DEFER 4.7.1 Email credits exhausted; they reset at 2025-03-31T09:00:00Z"
        );
        assert_eq!(
            reply(ExhaustedAction::Reject),
            "REJECT 5.7.1 Email credits exhausted; they reset at 2025-03-31T09:00:00Z"
        );
        assert_eq!(
            reply(ExhaustedAction::Custom(
                Refusing::new("DEFER_IF_PERMIT").unwrap()
            )),
            "DEFER_IF_PERMIT"
        );
        // A reset text that would break the reply is left out.
        let actions = Actions::default();
        assert_eq!(
            actions
                .reply_for_exhausted("soon\naction=OK", None)
                .action(),
            "DEFER 4.7.1 Email credits exhausted"
        );
        assert_eq!(
            actions.reply_for_exhausted(&"9".repeat(600), None).action(),
            "DEFER 4.7.1 Email credits exhausted"
        );
    }

    #[test]
    fn replies_for_exhausted_name_the_plan_that_would_do() {
        let at = "2025-03-31T09:00:00Z";
        assert_eq!(
            Actions::default()
                .reply_for_exhausted(at, Some("pro"))
                .action(),
            "DEFER 4.7.1 Email credits exhausted; they reset at 2025-03-31T09:00:00Z, or upgrade to pro"
        );
        let custom = Actions {
            exhausted: ExhaustedAction::Custom(
                Refusing::new("DEFER 4.7.1 over; try {upgrade_to} after {resets_at}").unwrap(),
            ),
            ..Actions::default()
        };
        assert_eq!(
            custom.reply_for_exhausted(at, Some("pro")).action(),
            "DEFER 4.7.1 over; try pro after 2025-03-31T09:00:00Z"
        );
        // A plan name that would break the reply is left out with the rest.
        assert_eq!(
            Actions::default()
                .reply_for_exhausted(at, Some("pro\naction=OK"))
                .action(),
            "DEFER 4.7.1 Email credits exhausted"
        );
    }

    #[test]
    fn failure_replies() {
        let defaults = Actions::default();
        // Issue 14.2: an authenticated sender the ledger does not know is refused.
        assert_eq!(
            defaults.reply_for_unknown_account().action(),
            "451 4.3.5 Sending account unknown to the credit policy"
        );
        assert_eq!(defaults.reply_for_no_account(), Reply::dunno());
        assert_eq!(
            defaults.reply_for_internal_error().action(),
            "451 4.3.5 Policy service unavailable"
        );
        let flipped = Actions {
            unknown_account: FailureAction::FailOpen,
            no_account: FailureAction::FailClosed,
            internal_error: FailureAction::FailOpen,
            ..Actions::default()
        };
        assert_eq!(flipped.reply_for_unknown_account(), Reply::dunno());
        assert!(
            flipped
                .reply_for_no_account()
                .action()
                .starts_with("451 4.3.5 ")
        );
        assert_eq!(flipped.reply_for_internal_error(), Reply::dunno());
    }

    /// Issues 13.6 and 13.2: a message with no recipients and an `instance`
    /// reused with another count have replies of their own, configurable, failing
    /// closed by default.
    #[test]
    fn refusal_replies() {
        let defaults = Actions::default();
        assert_eq!(
            [
                defaults.reply_for_no_recipients(),
                defaults.reply_for_idempotency_key_reused()
            ]
            .map(|reply| reply.action().to_owned()),
            [
                "REJECT 5.5.1 No valid recipients",
                "DEFER 4.7.1 Message already charged with another recipient count"
            ]
        );
        let config: PostfixConfig = toml::from_str(
            "[actions]\nno_recipients = \"dunno\"\nidempotency_key_reused = { custom = \"DISCARD reused\" }",
        )
        .expect("valid");
        assert_eq!(config.actions.reply_for_no_recipients(), Reply::dunno());
        assert_eq!(
            config.actions.reply_for_idempotency_key_reused().action(),
            "DISCARD reused"
        );
        let config: PostfixConfig = toml::from_str(
            "[actions]\nno_recipients = \"defer\"\nidempotency_key_reused = \"reject\"",
        )
        .expect("valid");
        assert_eq!(
            config.actions.reply_for_no_recipients().action(),
            "DEFER 4.5.1 No valid recipients"
        );
        assert!(
            (config.actions.reply_for_idempotency_key_reused().action())
                .starts_with("REJECT 5.7.1 ")
        );
        let err = toml::from_str::<PostfixConfig>("[actions]\nno_recipients = \"fail_open\"")
            .expect_err("not a refusal action");
        assert!(err.to_string().contains("fail_open"), "{err}");
    }

    #[test]
    fn replies_encode_as_one_action_line() {
        assert_eq!(Reply::dunno().encode(), b"action=DUNNO\n\n");
        let mut out = b"prefix ".to_vec();
        Reply::new("REJECT 5.7.1 no").unwrap().encode_into(&mut out);
        assert_eq!(out, b"prefix action=REJECT 5.7.1 no\n\n");
    }

    #[test]
    fn action_text_is_validated() {
        assert_eq!(Reply::new(""), Err(ReplyError::Empty));
        assert!(matches!(
            Reply::new(" DUNNO"),
            Err(ReplyError::LeadingWhitespace { .. })
        ));
        for (text, at) in [
            ("DEFER\nx", 5),
            ("DEFER\r", 5),
            ("a\tb", 1),
            ("\u{7f}", 0),
            ("é\u{85}", 2),
        ] {
            assert!(
                matches!(Reply::new(text), Err(ReplyError::ControlCharacter { at: a, .. }) if a == at),
                "{text:?}"
            );
        }
        assert!(Reply::new("x".repeat(MAX_ACTION_BYTES)).is_ok());
        assert_eq!(
            Reply::new("x".repeat(MAX_ACTION_BYTES + 1)),
            Err(ReplyError::TooLong {
                len: MAX_ACTION_BYTES + 1,
                limit: MAX_ACTION_BYTES
            })
        );
        // The longest reply still fits Postfix's 2,048-byte line with room to spare.
        assert!(
            Reply::new("x".repeat(MAX_ACTION_BYTES))
                .unwrap()
                .encode()
                .len()
                < 2048
        );
    }

    // --- properties ---

    fn attr_name() -> impl Strategy<Value = String> {
        "[a-z_]{1,12}"
    }

    /// Any value Postfix could send: no `\n`, and no trailing `\r` (which a reader
    /// must take for part of a CRLF terminator).
    fn attr_value() -> impl Strategy<Value = String> {
        "[^\n]{0,40}".prop_filter("no trailing CR", |v| !v.ends_with('\r'))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_in_arbitrary_chunks_never_panic(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'='), any::<u8>()],
                0..600,
            ),
            cuts in proptest::collection::vec(0usize..600, 0..10),
            max_line_bytes in 0usize..40,
            max_request_bytes in 0usize..200,
            max_attributes in 0usize..8,
        ) {
            let limits = Limits { max_line_bytes, max_request_bytes, max_attributes };
            let mut reader = RequestReader::new(limits);
            let mut cuts = cuts;
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            for window in cuts.windows(2) {
                let (from, to) = (window[0].min(bytes.len()), window[1].min(bytes.len()));
                let mut input = &bytes[from..to];
                loop {
                    let before = input.len();
                    match reader.decode(&mut input) {
                        Ok(Some(req)) => {
                            prop_assert!(req.attributes().len() <= max_attributes);
                            prop_assert!(input.len() < before);
                        }
                        Ok(None) => {
                            prop_assert!(input.is_empty());
                            break;
                        }
                        Err(_) => break,
                    }
                }
                prop_assert!(reader.line.len() <= max_line_bytes + 1);
            }
        }

        #[test]
        fn well_formed_requests_round_trip_in_any_chunking(
            requests in proptest::collection::vec(
                proptest::collection::vec((attr_name(), attr_value()), 0..10),
                1..4,
            ),
            crlf in any::<bool>(),
            chunk in 1usize..64,
        ) {
            let mut bytes = Vec::new();
            for attrs in &requests {
                let pairs: Vec<(&str, &str)> =
                    attrs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let mut encoded = encode_request(&pairs);
                if crlf {
                    encoded = String::from_utf8(encoded).unwrap().replace('\n', "\r\n").into_bytes();
                }
                bytes.extend(encoded);
            }
            let (got, error) = read_chunked(&mut RequestReader::default(), &bytes, chunk);
            prop_assert_eq!(error, None);
            prop_assert_eq!(got.len(), requests.len());
            for (req, attrs) in got.iter().zip(&requests) {
                // Last one wins, as in a map built in order.
                let expected: BTreeMap<&str, &str> =
                    attrs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                prop_assert_eq!(req.attributes(), expected);
                let names: BTreeSet<&String> = attrs.iter().map(|(n, _)| n).collect();
                prop_assert_eq!(req.repeated().is_empty(), names.len() == attrs.len());
                prop_assert!(req.non_utf8().is_empty());
            }
        }
    }
}

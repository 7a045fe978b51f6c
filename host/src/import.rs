//! Lead imports: a CSV file of contacts streamed through the policy in batches,
//! ending with a report shaped like a cold-email platform's upload response. The
//! CLI's `leads import` is a thin adapter over [`import`]; the HTTP API can be
//! another.
//!
//! Memory stays bounded whatever the size of the file: rows are read one at a
//! time, each at most [`MAX_ROW_BYTES`], into a chunk of at most [`CHUNK_BYTES`]
//! (the addresses only); addresses go to the guest in batches of at most
//! [`ImportOptions::batch`] addresses and [`MAX_BATCH_BYTES`]; and what the
//! import remembers across chunks is one 64-bit fingerprint per distinct contact
//! (to tell duplicates within the file from contacts already in the campaign),
//! some 20 bytes each in a hash set.
//!
//! A chunk is sent in the store's key order when that cannot change an outcome
//! (the lead credits left cover every address in it, and the store is the
//! import's alone): a random list then extends the store's B-trees at a few
//! places per batch instead of rewriting pages all over them at every batch.
//! Otherwise, and for small files, rows go in file order. See
//! [`ImportOptions::sort_from`].
//!
//! Rows are split here rather than by a `csv::Reader` over the whole input, for
//! two reasons. A `csv::Reader` holds a record whole, so one stray quote would make
//! the rest of a multi-gigabyte file a single record in memory. And its positions
//! name the line after the previous record, not the line a record starts on when
//! blank lines come between, so invalid rows could not be reported by line. The
//! splitter follows the csv crate's quoting rules (a quote opens a quoted field
//! only at the start of a field, `""` inside one is a quote, CR, LF or CRLF end a
//! row outside quotes, blank lines are skipped), and each row it yields is then
//! parsed into fields by the csv crate itself.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::io::{self, BufRead, Cursor, SeekFrom};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bindings::{LeadBatch, LeadOutcome, LeadResult, MemberAddOutcome, MembersAdded, Reason};
use crate::request::Request;
use crate::runtime::{DecideError, Worker};
use crate::store::{
    DryRun, MAX_GROUPS_PER_MEMBER, MAX_NAME_LEN, MemberAddMany, MemoryStore, Predict, Store,
    StoreError, too_many_groups,
};
use crate::wire::{CreditsJson, LeadClass, LeadClassifier, UsageJson, reason_code};

/// Longest row accepted, in bytes (line ending excluded); a longer one is reported
/// as invalid by line number and skipped without being held in memory.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

/// Addresses per guest call and store transaction unless told otherwise: the
/// most a call takes. Each store transaction rewrites every page its batch
/// touches, and a batch of a random list touches pages all over the campaign's
/// tables: fewer, larger batches rewrite fewer pages in all (a million random
/// addresses imported in 42 s rather than 53 s, on a loaded machine).
pub const DEFAULT_BATCH: usize = MAX_BATCH;

/// Most addresses per batch that [`import`] accepts.
pub const MAX_BATCH: usize = crate::store::MAX_BATCH;

/// Most bytes of addresses per batch. Every address of a batch is in the guest's
/// memory at once (capped at 64 MiB by default) along with its normalised copy,
/// so a batch of long addresses is cut short rather than risking a trap.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Invalid rows listed by line number in a report (all of them are counted).
pub const INVALID_ROWS_SHOWN: usize = 10;

/// Least time between two durable points of a long import.
///
/// A durable commit costs one disk sync plus writing every page the import
/// changed since the last one, so a sync a second costs little on a list whose
/// addresses come in order. A crash loses at most the batches since the last
/// durable point, whole (each batch is one transaction), and running the import
/// again repairs it: contacts already in the campaign cost nothing. In redb, a
/// sync is also what lets pages that the last durable state held, and later
/// commits replaced, be reused (their records wait in memory until then).
/// See [`PERSIST_SHARE`] for lists in random order.
pub const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Durable points are spaced so that they take at most 1 / `PERSIST_SHARE` of
/// an import's time: the next one comes no sooner than `PERSIST_SHARE` times
/// the last one took (and no sooner than [`PERSIST_EVERY`]).
///
/// Real lead lists are in random order, so each batch lands all over the
/// campaign's tables: after a few batches, the pages changed since the last
/// durable point are most of the tables, and a durable commit writes them all
/// out again, some 100 MB for a million contacts. A sync a second then took
/// most of the import's time (issue 15: a million random addresses in 51 s,
/// where `sort -u` of the file took 1.3 s), writing the same pages over and over.
/// Spaced by their own cost, the syncs of an in-order list still come every
/// second, and those of a random list no longer dominate.
pub const PERSIST_SHARE: u32 = 10;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub account: String,
    pub campaign: String,
    /// The header of the column that holds the addresses, matched without regard
    /// to case or surrounding spaces.
    pub column: String,
    /// Addresses per guest call and store transaction, 1 to [`MAX_BATCH`].
    pub batch: usize,
    /// The instant every decision is made at (nanoseconds since the Unix epoch).
    pub now: i64,
    /// The field separator; `None`: the one of `,`, `;` and tab the header row
    /// holds most of (`,` if none).
    pub delimiter: Option<u8>,
    /// Rows are read ahead in chunks (at most [`CHUNK_BYTES`]); a chunk of at
    /// least this many addresses is applied in the store's key order when the
    /// lead credits left cover all of them, which changes no outcome (see
    /// [`import_with`]). `None`: always in file order, for a store other
    /// callers may use meanwhile (credits taken by one of them could then run
    /// out part way through a chunk, refusing rows out of file order).
    pub sort_from: Option<usize>,
}

impl ImportOptions {
    /// Options with the `email` column and the default batch size.
    pub fn new(account: impl Into<String>, campaign: impl Into<String>, now: i64) -> Self {
        Self {
            account: account.into(),
            campaign: campaign.into(),
            column: "email".into(),
            batch: DEFAULT_BATCH,
            now,
            delimiter: None,
            sort_from: Some(SORT_FROM),
        }
    }
}

/// Why a row was not imported as an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InvalidReason {
    /// The policy does not accept the address.
    InvalidEmail,
    /// The address field is empty or only spaces.
    Empty,
    /// The row has fewer fields than the address column's position.
    MissingField,
    /// The address field is not valid UTF-8.
    NotUtf8,
    /// The address field is longer than a store accepts ([`MAX_NAME_LEN`] bytes).
    FieldTooLong,
    /// The row is longer than [`MAX_ROW_BYTES`].
    RowTooLong,
}

impl InvalidReason {
    /// The reason's name in reports and in the rejected-rows file.
    pub fn code(self) -> &'static str {
        match self {
            InvalidReason::InvalidEmail => "invalid_email",
            InvalidReason::Empty => "empty",
            InvalidReason::MissingField => "missing_field",
            InvalidReason::NotUtf8 => "not_utf8",
            InvalidReason::FieldTooLong => "field_too_long",
            InvalidReason::RowTooLong => "row_too_long",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            InvalidReason::InvalidEmail => "not a valid address",
            InvalidReason::Empty => "empty",
            InvalidReason::MissingField => "no such field",
            InvalidReason::NotUtf8 => "not UTF-8",
            InvalidReason::FieldTooLong => "field too long",
            InvalidReason::RowTooLong => "row too long",
        }
    }
}

/// One invalid row: where it is in the file and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InvalidRow {
    /// Line number in the file, the header being line 1.
    pub line: u64,
    pub reason: InvalidReason,
}

impl fmt::Display for InvalidRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.line, self.reason.describe())
    }
}

/// Why a row was not imported, for the rejected-rows output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// No usable address (see [`InvalidReason`]).
    Invalid(InvalidReason),
    /// An earlier row of the file named the same contact.
    DuplicateInFile,
    /// A new contact, not imported because the account's lead credits ran out.
    LeadCreditsExhausted,
}

impl Rejection {
    /// The reason as the rejected-rows file writes it.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::Invalid(reason) => reason.code(),
            Rejection::DuplicateInFile => "duplicate_in_file",
            Rejection::LeadCreditsExhausted => "lead_credits_exhausted",
        }
    }
}

/// A row that was not imported: where, what it held, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// Line number in the file, the header being line 1.
    pub line: u64,
    /// The address field as read (lossily decoded if it is not UTF-8, cut at
    /// [`MAX_REJECTED_VALUE`] bytes; empty when the row had no such field or was
    /// too long to read).
    pub value: String,
    pub reason: Rejection,
}

/// Longest value a [`RejectedRow`] keeps, in bytes: as long as any address a store
/// accepts.
pub const MAX_REJECTED_VALUE: usize = MAX_NAME_LEN;

/// What an import did, row by row: every row read is counted in exactly one of
/// `uploaded`, `already_in_campaign`, `in_other_campaign`, `duplicates_in_file`,
/// `invalid` and `credits_exhausted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub account: String,
    pub campaign: String,
    /// Whether this was a dry run ([`DryRunStore`]), which changed nothing.
    pub dry_run: bool,
    /// Data rows read (the header and blank lines excluded).
    pub rows: u64,
    /// New contacts, each charged one lead credit.
    pub uploaded: u64,
    /// Contacts the campaign already held before this import.
    pub already_in_campaign: u64,
    /// Contacts another campaign of the account held: now in this one too, no credit.
    pub in_other_campaign: u64,
    /// Rows whose contact an earlier row of the file already named (in any spelling
    /// the policy deems the same contact).
    pub duplicates_in_file: u64,
    /// Rows without a usable address.
    pub invalid: u64,
    /// The first [`INVALID_ROWS_SHOWN`] invalid rows, by line number.
    pub invalid_rows: Vec<InvalidRow>,
    /// New contacts not imported because the account's lead credits ran out.
    pub credits_exhausted: u64,
    /// The account's lead credits after the import.
    pub lead_credits: Option<CreditsJson>,
}

impl ImportReport {
    /// Rows accounted for in one of the outcome counts.
    pub fn classified(&self) -> u64 {
        self.uploaded
            + self.already_in_campaign
            + self.in_other_campaign
            + self.duplicates_in_file
            + self.invalid
            + self.credits_exhausted
    }

    fn invalid_row(&mut self, line: u64, reason: InvalidReason) {
        self.invalid += 1;
        // Host-side rejections are counted as rows are read, the policy's when
        // their batch returns: keep the lowest line numbers, in order.
        let at = self.invalid_rows.partition_point(|r| r.line < line);
        if at < INVALID_ROWS_SHOWN {
            self.invalid_rows.insert(at, InvalidRow { line, reason });
            self.invalid_rows.truncate(INVALID_ROWS_SHOWN);
        }
    }
}

/// How far an import has got, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Bytes of input consumed.
    pub bytes: u64,
    /// Counts so far (rows read may run ahead of the outcomes by one chunk).
    pub report: &'a ImportReport,
}

/// Why an import failed. Line numbers count the header as line 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The input is empty: not even a header row.
    #[error("line 1: no header row (the input is empty); expected one naming a {column:?} column")]
    NoHeader { column: String },
    /// The header row has no column of that name.
    #[error(
        "line {line}: the header has no {column:?} column (matched regardless of case); columns found: {}",
        list_columns(.found)
    )]
    MissingColumn {
        line: u64,
        column: String,
        found: Vec<String>,
    },
    /// The header row names the column more than once: which of them holds the
    /// addresses is not for the import to guess.
    #[error(
        "line {line}: the header has {count} {column:?} columns (matched regardless of case), \
         at positions {}; rename all but one, or choose another with --column",
        .positions.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousColumn {
        line: u64,
        column: String,
        count: usize,
        positions: Vec<usize>,
    },
    /// The header row is longer than [`MAX_ROW_BYTES`].
    #[error("line {line}: the header row is longer than {MAX_ROW_BYTES} bytes")]
    HeaderTooLong { line: u64 },
    /// [`ImportOptions::batch`] is out of range.
    #[error("batch size {0} is out of range: expected 1 to {MAX_BATCH}")]
    BatchSize(usize),
    /// The policy refused the whole import (unknown account or plan); nothing was
    /// imported.
    #[error("{}", describe_denial(.account, *.reason))]
    Denied { account: String, reason: Reason },
    /// The policy component gave no decision on whether the account exists.
    #[error("checking the account: no decision: {0}")]
    Check(DecideError),
    /// Reading the input failed. The rows before it were imported and are durable.
    #[error(
        "line {line}: cannot read the input: {source} ({done} row(s) before it were processed; importing the file again completes the import, charging nothing twice)"
    )]
    Read {
        line: u64,
        done: u64,
        source: io::Error,
    },
    /// The policy component gave no decision for a batch; that batch changed
    /// nothing, those before it were imported and are durable.
    #[error(
        "lines {first_line} to {last_line}: no decision: {source} ({done} row(s) before them were processed; importing the file again completes the import, charging nothing twice)"
    )]
    Decide {
        first_line: u64,
        last_line: u64,
        done: u64,
        source: DecideError,
    },
    /// The policy component broke its contract (one result per address).
    #[error(
        "lines {first_line} to {last_line}: the policy component answered {got} result(s) for {sent} address(es)"
    )]
    Answer {
        first_line: u64,
        last_line: u64,
        sent: usize,
        got: usize,
    },
    /// A quoted field opens and is never closed: the rest of the input would be
    /// one field. The rows before it were imported and are durable.
    #[error(
        "line {line}: a quoted field opens here and is never closed (the rest of the input would be one field); {done} row(s) before it were processed; close the quote and import the file again (nothing is charged twice)"
    )]
    UnterminatedQuote { line: u64, done: u64 },
    /// [`ImportOptions::delimiter`] is a byte that cannot separate fields.
    #[error(
        "delimiter {0:?} cannot separate fields: expected one character other than a quote or a line end"
    )]
    Delimiter(char),
    /// Writing a rejected row out failed. The rows before its batch were imported
    /// and are durable.
    #[error("line {line}: cannot write the rejected row: {source}")]
    Rejected { line: u64, source: io::Error },
    /// The store could not make the import durable; work since the last durable
    /// point may be lost (running the import again completes it).
    #[error("making the import durable failed: {0}")]
    Persist(StoreError),
}

impl ImportError {
    /// Whether this is a decision that failed (the policy refused, or could not
    /// decide), as opposed to a problem with the input or the store.
    pub fn is_decision_failure(&self) -> bool {
        matches!(
            self,
            ImportError::Denied { .. }
                | ImportError::Check(_)
                | ImportError::Decide { .. }
                | ImportError::Answer { .. }
        )
    }
}

fn list_columns(found: &[String]) -> String {
    if found.is_empty() {
        return "none".into();
    }
    found
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_denial(account: &str, reason: Reason) -> String {
    match reason {
        Reason::UnknownAccount => {
            format!(
                "unknown account {account:?}: it has not subscribed to a plan (unknown_account)"
            )
        }
        Reason::UnknownPlan => {
            format!("account {account:?} is on a plan the policy does not define (unknown_plan)")
        }
        other => format!("account {account:?}: denied ({})", reason_code(other)),
    }
}

/// The store a dry run imports into: reads go to the real store, and what the
/// import would add is remembered beside it, never written.
///
/// A dry run used to copy the whole account into memory, every contact of every
/// campaign with its names, which on a large account took many times what the
/// import itself takes. This reads in place and keeps, per member, a 64-bit
/// fingerprint (about 20 bytes in a hash set, as the import's own duplicate
/// detection does): the scope's members, the group's, and those the run adds. A
/// fingerprint collision (about one chance in 10^7 for a million contacts) would
/// show one contact as another's repeat in the report; nothing is stored either
/// way.
///
/// Where an account's contacts live is the component's to say, so the store
/// learns it from the component: the scope and group of the first
/// `member-add-many` are the ones the run adds to (their members are read then,
/// in one pass). Further additions must go to the same group; every other write
/// is refused, so a policy that wrote elsewhere would fail the dry run rather
/// than let it change the store. The alert log lives in a throwaway in-memory
/// store.
pub type DryRunStore = DryRun<Additions>;

/// The predictions of an import's dry run ([`DryRunStore`]): the contacts it
/// would add, as fingerprints.
pub struct Additions {
    /// The import's account and campaign, for messages.
    account: String,
    campaign: String,
    scratch: MemoryStore,
    target: Mutex<Option<Target>>,
}

impl fmt::Debug for Additions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Additions")
            .field("account", &self.account)
            .field("campaign", &self.campaign)
            .finish_non_exhaustive()
    }
}

/// The scope and group a dry run adds to, and their members as fingerprints.
struct Target {
    scope: String,
    group: String,
    /// Each member of the scope, and how many of its groups hold it.
    in_scope: HashMap<u64, u64>,
    in_group: HashSet<u64>,
    /// The scope's member count, as the real store counts it, plus additions.
    count: u64,
}

/// A member's fingerprint: SipHash with fixed keys, the same in every run.
fn fingerprint(member: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    member.hash(&mut hasher);
    hasher.finish()
}

impl DryRunStore {
    /// A dry run over `base` of an import into `campaign` of `account`.
    pub fn new(base: Arc<dyn Store>, account: &str, campaign: &str) -> Result<Self, StoreError> {
        let additions = Additions {
            account: account.to_owned(),
            campaign: campaign.to_owned(),
            scratch: MemoryStore::new(),
            target: Mutex::new(None),
        };
        Ok(DryRun::with(base, additions))
    }
}

impl Additions {
    fn target(&self) -> std::sync::MutexGuard<'_, Option<Target>> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `scope`'s members read from the real store (one pass, in one snapshot).
    fn read_target(real: &dyn Store, scope: &str, group: &str) -> Result<Target, StoreError> {
        let count = real.member_count(scope)?;
        // Sized once: growing a set of millions doubles it, briefly holding both.
        let mut target = Target {
            scope: scope.to_owned(),
            group: group.to_owned(),
            in_scope: HashMap::with_capacity(usize::try_from(count).unwrap_or(0)),
            in_group: HashSet::new(),
            count,
        };
        real.visit_members(scope, None, &mut |g, member| {
            let print = fingerprint(member);
            *target.in_scope.entry(print).or_default() += 1;
            if g == group {
                target.in_group.insert(print);
            }
            true
        })?;
        Ok(target)
    }
}

impl Predict for Additions {
    fn refused(&self, what: &str) -> StoreError {
        let what = match what {
            "record-insert" | "record-update" => "write records",
            "counter-add" => "charge counters",
            "member-add" => "add contacts one by one",
            "member-remove" | "group-clear" => "remove contacts",
            "visit-members" => "list contacts",
            "export-scope" => "export",
            "import-scope" => "import scopes",
            other => other,
        };
        StoreError::InvalidArgument(format!(
            "a dry run does not {what}: an import into campaign {:?} of account {:?} only adds contacts",
            self.campaign, self.account
        ))
    }

    fn member_add_many(
        &self,
        real: &dyn Store,
        add: MemberAddMany<'_>,
    ) -> Result<MembersAdded, StoreError> {
        let (scope, group, members) = (add.scope, add.group, add.members);
        crate::store::check_batch(scope, group, members)?;
        let mut target = self.target();
        let t = match target.as_mut() {
            Some(t) if t.scope == scope && t.group == group => t,
            Some(_) => return Err(self.refused("add contacts to two campaigns")),
            None => target.insert(Self::read_target(real, scope, group)?),
        };
        // As every store answers `member-add-many` (see MemoryStore): refused
        // whole if one member would join too many groups.
        let prints: Vec<u64> = members.iter().map(|m| fingerprint(m)).collect();
        let full = prints.iter().position(|print| {
            !t.in_group.contains(print)
                && (t.in_scope.get(print)).is_some_and(|&n| n >= MAX_GROUPS_PER_MEMBER)
        });
        if let Some(i) = full {
            return Err(too_many_groups(scope, &members[i]));
        }
        let outcomes = prints
            .into_iter()
            .map(|print| {
                if t.in_group.contains(&print) {
                    MemberAddOutcome::AlreadyInGroup
                } else if let Some(groups) = t.in_scope.get_mut(&print) {
                    *groups += 1;
                    t.in_group.insert(print);
                    MemberAddOutcome::Joined
                } else if add.limit.is_some_and(|l| t.count >= l) {
                    MemberAddOutcome::Refused
                } else {
                    t.in_scope.insert(print, 1);
                    t.in_group.insert(print);
                    t.count += 1;
                    MemberAddOutcome::Inserted
                }
            })
            .collect();
        Ok(MembersAdded {
            outcomes,
            members: t.count,
        })
    }

    /// The member count of `scope` as the run sees it, if the run adds to it.
    fn member_count(&self, scope: &str) -> Option<u64> {
        self.target()
            .as_ref()
            .filter(|t| t.scope == scope)
            .map(|t| t.count)
    }

    // A listing would not show the contacts the run adds.
    fn lists(&self) -> bool {
        false
    }

    fn alert_log(&self) -> Option<&dyn Store> {
        Some(&self.scratch)
    }
}

/// Imports the addresses of the CSV `input` into `options.campaign`, one batch at
/// a time through `worker`, calling `progress` after each batch.
///
/// The work is durable when this returns `Ok`, and every [`PERSIST_EVERY`] on the
/// way. An unknown account is refused before anything is read.
pub fn import<R: BufRead>(
    worker: &mut Worker,
    input: R,
    options: &ImportOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ImportReport, ImportError> {
    import_with(worker, input, options, progress, &mut |_| Ok(()))
}

/// [`import`], also calling `rejected` with every row not imported, in line order
/// batch by batch (each batch's rows once its outcome is known; chunk by chunk
/// for a chunk sent in key order). An error from
/// `rejected` (writing the rejected-rows file failed, say) stops the import like
/// a read error: the batches before it are imported and durable.
pub fn import_with<R: BufRead>(
    worker: &mut Worker,
    input: R,
    options: &ImportOptions,
    progress: &mut dyn FnMut(Progress<'_>),
    rejected: &mut dyn FnMut(&RejectedRow) -> io::Result<()>,
) -> Result<ImportReport, ImportError> {
    if !(1..=MAX_BATCH).contains(&options.batch) {
        return Err(ImportError::BatchSize(options.batch));
    }
    if let Some(d) = options.delimiter
        && matches!(d, b'"' | b'\r' | b'\n')
    {
        return Err(ImportError::Delimiter(char::from(d)));
    }
    let mut report = ImportReport {
        account: options.account.clone(),
        campaign: options.campaign.clone(),
        ..ImportReport::default()
    };
    check_account(worker, options, &mut report)?;

    let mut rows = Rows::new(input, options.delimiter);
    let (column, mut fields) = read_header(&mut rows, options)?;

    let mut import = Batches {
        worker,
        options,
        report,
        classifier: LeadClassifier::default(),
        emails: Vec::with_capacity(options.batch),
        lines: Vec::with_capacity(options.batch),
        refused: Vec::new(),
        bytes: 0,
        since_flush: 0,
        last_persist: Instant::now(),
        persist_took: Duration::ZERO,
        rejected,
    };
    let mut chunk = Chunk::default();
    loop {
        let row = match rows.next(fields.buffer()) {
            Ok(Some(row)) if row.unterminated => {
                // What was read before the quote is good: import it first.
                let line = rows.quote_line();
                import.chunk(&mut chunk, progress)?;
                import.flush()?;
                import.persist()?;
                return Err(ImportError::UnterminatedQuote {
                    line,
                    done: import.report.rows,
                });
            }
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(source) => {
                // What was read before the failure is good: import it first.
                import.chunk(&mut chunk, progress)?;
                import.flush()?;
                import.persist()?;
                return Err(ImportError::Read {
                    line: rows.line(),
                    done: import.report.rows,
                    source,
                });
            }
        };
        let field = row.fits.then(|| fields.parse().get(column)).flatten();
        let email = if row.fits {
            address(field)
        } else {
            Err(InvalidReason::RowTooLong)
        };
        let at = rows.bytes();
        match email {
            Ok(email) => chunk.push(row.line, at, email.as_bytes(), Pending::Address),
            Err(reason) => {
                let value = field.map_or_else(String::new, rejected_value);
                chunk.push(row.line, at, value.as_bytes(), Pending::Invalid(reason));
            }
        }
        if chunk.full() {
            import.chunk(&mut chunk, progress)?;
        }
    }
    import.chunk(&mut chunk, progress)?;
    import.flush()?;
    import.persist()?;
    progress(Progress {
        bytes: rows.bytes(),
        report: &import.report,
    });
    Ok(import.report)
}

/// Bytes of memory a [`Chunk`] may take (its addresses, and per row its entry
/// and what sorting it needs): a million addresses of a typical list (25 bytes
/// each) fit in one.
pub const CHUNK_BYTES: usize = 80 << 20;

/// redb's page cache for an import, in bytes (a gateway's is 128 MiB): the
/// writes of a chunk in key order touch each page about once, so a large cache
/// would only hold pages not read again, in memory the chunk needs.
pub const STORE_CACHE_BYTES: usize = 32 << 20;

/// Addresses a chunk must hold for [`ImportOptions::sort_from`]'s default:
/// below it, the store's tables are touched in few places anyway.
pub const SORT_FROM: usize = 20_000;

/// What a row of a [`Chunk`] holds, and once decided, how it fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// An address for the policy.
    Address,
    /// No usable address; the bytes are the value the rejected-rows output shows.
    Invalid(InvalidReason),
    /// The policy's outcome for the address.
    Decided(LeadOutcome),
}

/// One row of a [`Chunk`]: where it is, and its bytes in [`Chunk::arena`].
#[derive(Debug, Clone, Copy)]
struct ChunkRow {
    line: u64,
    /// Bytes of input consumed once the row was read, for progress.
    at: u64,
    start: u32,
    len: u16,
    state: Pending,
}

/// Rows read ahead of the policy, in file order, so that a large run of them
/// can be applied in the store's key order (see [`Batches::chunk`]).
#[derive(Debug, Default)]
struct Chunk {
    rows: Vec<ChunkRow>,
    /// The bytes of every row's address (or rejected value), one after another.
    arena: Vec<u8>,
    addresses: usize,
}

/// What a chunk keeps per row beside the bytes: its entry, a sort key and
/// index, and the contact's fingerprint.
const CHUNK_ROW_BYTES: usize =
    std::mem::size_of::<ChunkRow>() + std::mem::size_of::<(u64, u32)>() + 8;

impl Chunk {
    fn push(&mut self, line: u64, at: u64, bytes: &[u8], state: Pending) {
        // Row values are at most MAX_NAME_LEN bytes (`address`, `rejected_value`),
        // and a chunk is far below 4 GiB: neither conversion can fail.
        let start = u32::try_from(self.arena.len()).unwrap_or(u32::MAX);
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.arena.extend_from_slice(bytes);
        if state == Pending::Address {
            self.addresses += 1;
        }
        self.rows.push(ChunkRow {
            line,
            at,
            start,
            len,
            state,
        });
    }

    fn full(&self) -> bool {
        self.arena.len() + self.rows.len() * CHUNK_ROW_BYTES >= CHUNK_BYTES
    }

    fn bytes(&self, row: &ChunkRow) -> &[u8] {
        let start = row.start as usize;
        &self.arena[start..start + usize::from(row.len)]
    }

    /// A row's value as text (addresses and rejected values are UTF-8).
    fn text(&self, row: &ChunkRow) -> String {
        String::from_utf8(self.bytes(row).to_vec())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.arena.clear();
        self.addresses = 0;
    }
}

/// The indexes of a chunk's addresses in key order, as far as the first 8
/// bytes of each ([`order_prefix`]) tell; rows of equal prefixes in file order.
///
/// Locality is what counts, not an exact order: addresses of one prefix are
/// neighbours in the store's tables anyway, and the store sorts each batch
/// itself. Comparing whole addresses would reach into the rows at every tie of
/// a common prefix (`james.sm`), and took longer than the prefixes alone.
fn key_order(chunk: &Chunk) -> Vec<u32> {
    let mut keys: Vec<(u64, u32)> = Vec::with_capacity(chunk.addresses);
    for (i, row) in chunk.rows.iter().enumerate() {
        if row.state == Pending::Address {
            // A chunk holds far fewer than 4 billion rows (CHUNK_BYTES).
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            keys.push((order_prefix(chunk.bytes(row)), i));
        }
    }
    keys.sort_unstable();
    keys.into_iter().map(|(_, i)| i).collect()
}

/// The part of an address its place in key order is decided by: the policy
/// normalises `<a@x.io>` and `A@X.io` as `a@x.io`, and the store orders its
/// tables by the normalised contact. Only the order depends on this, never an
/// outcome: a contact the policy normalises otherwise lands elsewhere, that's all.
fn order_key(address: &[u8]) -> &[u8] {
    address.strip_prefix(b"<").unwrap_or(address)
}

/// The first 8 bytes of [`order_key`], lowercased, as a number that orders as
/// they do (shorter keys padded with zeroes, which order first).
fn order_prefix(address: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (to, from) in bytes.iter_mut().zip(order_key(address)) {
        *to = from.to_ascii_lowercase();
    }
    u64::from_be_bytes(bytes)
}

/// A field as the rejected-rows output shows it: lossily decoded, cut at
/// [`MAX_REJECTED_VALUE`] bytes on a character boundary.
fn rejected_value(field: &[u8]) -> String {
    let mut value = String::from_utf8_lossy(field.trim_ascii()).into_owned();
    if value.len() > MAX_REJECTED_VALUE {
        let mut end = MAX_REJECTED_VALUE;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

/// Refuses an unknown account (or plan) before reading anything, so that a typo
/// is not reported after a long file has been read; notes the credits before.
fn check_account(
    worker: &mut Worker,
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let usage = Request::Usage {
        account: options.account.clone(),
    };
    let decision = worker
        .decide(&usage, options.now)
        .map_err(ImportError::Check)?;
    if let Some(reason) = decision.denied {
        return Err(ImportError::Denied {
            account: options.account.clone(),
            reason,
        });
    }
    report.lead_credits = decision
        .usage
        .as_ref()
        .map(|u| UsageJson::from(u).lead_credits);
    Ok(())
}

/// Reads the header row, settles the delimiter (detected from the header unless
/// given), and finds the address column; returns its index and the field parser
/// for the rows that follow.
fn read_header<R: BufRead>(
    rows: &mut Rows<R>,
    options: &ImportOptions,
) -> Result<(usize, Fields), ImportError> {
    let column = options.column.as_str();
    let mut header = Vec::new();
    let row = match rows.next(&mut header) {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Err(ImportError::NoHeader {
                column: column.into(),
            });
        }
        Err(source) => {
            return Err(ImportError::Read {
                line: rows.line(),
                done: 0,
                source,
            });
        }
    };
    if !row.fits {
        return Err(ImportError::HeaderTooLong { line: row.line });
    }
    if row.unterminated {
        return Err(ImportError::UnterminatedQuote {
            line: rows.quote_line(),
            done: 0,
        });
    }
    let delimiter = options
        .delimiter
        .unwrap_or_else(|| detect_delimiter(&header));
    rows.delimiter = Some(delimiter);
    let mut fields = Fields::new(delimiter);
    *fields.buffer() = header;
    let wanted = column.trim().to_lowercase();
    let found: Vec<String> = fields
        .parse()
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    let matching: Vec<usize> = (found.iter().enumerate())
        .filter(|(_, f)| f.to_lowercase() == wanted)
        .map(|(index, _)| index)
        .collect();
    match matching[..] {
        [index] => Ok((index, fields)),
        [] => Err(ImportError::MissingColumn {
            line: row.line,
            column: column.into(),
            found,
        }),
        _ => Err(ImportError::AmbiguousColumn {
            line: row.line,
            column: column.into(),
            count: matching.len(),
            positions: matching.iter().map(|i| i + 1).collect(),
        }),
    }
}

/// The delimiters detected, in order of preference on a tie.
const DELIMITERS: [u8; 3] = [b',', b';', b'\t'];

/// The one of [`DELIMITERS`] that occurs most in `header` outside quotes; `,`
/// when none does (a file of one column).
fn detect_delimiter(header: &[u8]) -> u8 {
    let mut counts = [0usize; DELIMITERS.len()];
    let mut quoted = false;
    for &byte in header {
        if byte == b'"' {
            quoted = !quoted;
        } else if !quoted && let Some(i) = DELIMITERS.iter().position(|&d| d == byte) {
            counts[i] += 1;
        }
    }
    let mut best = 0;
    for (i, &n) in counts.iter().enumerate() {
        if n > counts[best] {
            best = i;
        }
    }
    DELIMITERS[best]
}

/// The address in a row's field, or why there is none. Validating the address
/// itself is the policy's business; this only refuses what cannot be sent to it.
fn address(field: Option<&[u8]>) -> Result<String, InvalidReason> {
    let field = field.ok_or(InvalidReason::MissingField)?.trim_ascii();
    if field.is_empty() {
        return Err(InvalidReason::Empty);
    }
    // The store refuses longer member names, and would fail the whole batch.
    if field.len() > MAX_NAME_LEN {
        return Err(InvalidReason::FieldTooLong);
    }
    std::str::from_utf8(field)
        .map(str::to_owned)
        .map_err(|_| InvalidReason::NotUtf8)
}

/// The import in progress: the batch being filled and the counts so far.
struct Batches<'w, 'o, 'r> {
    worker: &'w mut Worker,
    options: &'o ImportOptions,
    report: ImportReport,
    /// What each address came to, with the contacts named so far in this file.
    classifier: LeadClassifier,
    emails: Vec<String>,
    /// The line of each address in `emails`.
    lines: Vec<u64>,
    /// Rows of this batch refused before the policy saw them.
    refused: Vec<RejectedRow>,
    bytes: usize,
    /// Rows since the last batch was sent, in file order.
    since_flush: usize,
    /// When the last durable point ended, and how long it took.
    last_persist: Instant,
    persist_took: Duration,
    rejected: &'r mut dyn FnMut(&RejectedRow) -> io::Result<()>,
}

impl Batches<'_, '_, '_> {
    fn push(&mut self, email: String, line: u64) {
        self.bytes += email.len();
        self.emails.push(email);
        self.lines.push(line);
    }

    /// Imports the rows of `chunk` and empties it: in the store's key order
    /// when that cannot change an outcome (see [`Batches::sortable`]), else in
    /// file order, batch by batch.
    fn chunk(
        &mut self,
        chunk: &mut Chunk,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), ImportError> {
        if chunk.rows.is_empty() {
            return Ok(());
        }
        let sorted = self
            .options
            .sort_from
            .is_some_and(|from| chunk.addresses >= from.max(1));
        if sorted {
            // The batch begun in file order goes first: the credits left are
            // known once it is decided.
            self.flush()?;
        }
        let result = if sorted && self.sortable(chunk.addresses) {
            self.in_key_order(chunk, progress)
        } else {
            self.in_file_order(chunk, progress)
        };
        chunk.clear();
        result
    }

    /// Whether `addresses` new contacts fit in the lead credits left, so that
    /// none of them can be refused for want of credits, whatever their order.
    ///
    /// Then the order in which the policy decides a chunk's addresses changes
    /// no outcome: each is decided on what the store held before the chunk,
    /// but for repeats of a contact within it, which [`Batches::in_key_order`]
    /// counts in file order. The store is the import's alone meanwhile (the CLI
    /// sorts only for a redb file, which one process holds at a time), so no
    /// other caller takes credits between the check and the batches.
    fn sortable(&self, addresses: usize) -> bool {
        let Some(credits) = &self.report.lead_credits else {
            return false;
        };
        match credits.limit {
            crate::wire::LimitJson::Count(limit) => {
                limit.saturating_sub(credits.used) >= addresses as u64
            }
            crate::wire::LimitJson::Unlimited(_) => true,
        }
    }

    /// Imports a chunk's rows in file order, as they were read.
    fn in_file_order(
        &mut self,
        chunk: &Chunk,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), ImportError> {
        for row in &chunk.rows {
            self.report.rows += 1;
            match row.state {
                Pending::Invalid(reason) => {
                    self.report.invalid_row(row.line, reason);
                    let value = chunk.text(row);
                    self.bytes += value.len();
                    self.refused.push(RejectedRow {
                        line: row.line,
                        value,
                        reason: Rejection::Invalid(reason),
                    });
                }
                Pending::Address | Pending::Decided(_) => self.push(chunk.text(row), row.line),
            }
            self.since_flush += 1;
            // Counting rows rather than addresses keeps progress (and durability)
            // moving through a long stretch of invalid rows too.
            if self.since_flush >= self.options.batch || self.bytes >= MAX_BATCH_BYTES {
                self.flush()?;
                progress(Progress {
                    bytes: row.at,
                    report: &self.report,
                });
                if self.persist_due() {
                    self.persist()?;
                }
            }
        }
        Ok(())
    }

    /// Imports a chunk's addresses in the store's key order, then counts every
    /// row in file order.
    ///
    /// A random list sent in file order lands each batch all over the store's
    /// tables, so that every batch rewrites most of their pages (a million
    /// random addresses took 42 s, 41x `sort -u`, issue 15); in key order, each
    /// batch extends a run of neighbouring keys, and the tables are written
    /// about once. Only the order of the store's writes changes: every address
    /// is decided on what the store held before the chunk (see
    /// [`Batches::sortable`]), and the outcomes are counted in file order.
    /// Which of two spellings of one contact comes first in key order may not
    /// be the first in the file: the one decided first (added, or joined) is
    /// counted for the first row of the file, and the other as its repeat.
    ///
    /// Should the policy fail on a batch, the batches of the chunk before it
    /// are applied and durable, but not counted: the error says so.
    fn in_key_order(
        &mut self,
        chunk: &mut Chunk,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), ImportError> {
        let done = self.report.rows;
        for row in &chunk.rows {
            self.report.rows += 1;
            if let Pending::Invalid(reason) = row.state {
                self.report.invalid_row(row.line, reason);
                self.refused.push(RejectedRow {
                    line: row.line,
                    value: chunk.text(row),
                    reason: Rejection::Invalid(reason),
                });
            }
        }
        let order = key_order(chunk);
        let at = chunk.rows.last().map_or(0, |r| r.at);
        let mut contacts = vec![0u64; chunk.rows.len()];
        let mut indexes: Vec<usize> = Vec::with_capacity(self.options.batch);
        let mut next = order.iter().peekable();
        while next.peek().is_some() {
            indexes.clear();
            let mut bytes = 0;
            while let Some(&&i) = next.peek() {
                let row = &chunk.rows[i as usize];
                if indexes.len() >= self.options.batch
                    || (!indexes.is_empty() && bytes + usize::from(row.len) > MAX_BATCH_BYTES)
                {
                    break;
                }
                next.next();
                bytes += usize::from(row.len);
                indexes.push(i as usize);
                self.emails.push(chunk.text(row));
                self.lines.push(row.line);
            }
            let batch = self.decide(done)?;
            for (result, &i) in batch.results.iter().zip(&indexes) {
                chunk.rows[i].state = Pending::Decided(result.outcome);
                contacts[i] = result.contact;
            }
            self.emails.clear();
            self.lines.clear();
            progress(Progress {
                bytes: at,
                report: &self.report,
            });
            if self.persist_due() {
                self.persist()?;
            }
        }
        drop(order);

        // Counted in file order. A contact added (or joined) by a row that is not
        // its first in the file was decided before its first row, which the store
        // then found in the campaign: that first row is the one added.
        let mut first_rows_in_campaign = 0u64;
        let mut refused = std::mem::take(&mut self.refused);
        for (row, &contact) in chunk.rows.iter().zip(&contacts) {
            let Pending::Decided(outcome) = row.state else {
                continue;
            };
            let repeat_decided_first = matches!(outcome, LeadOutcome::Added | LeadOutcome::Joined)
                && first_rows_in_campaign > 0
                && self.classifier.named(contact);
            if repeat_decided_first {
                first_rows_in_campaign -= 1;
                self.report.already_in_campaign -= 1;
                match outcome {
                    LeadOutcome::Added => self.report.uploaded += 1,
                    _ => self.report.in_other_campaign += 1,
                }
                self.report.duplicates_in_file += 1;
                refused.push(RejectedRow {
                    line: row.line,
                    value: chunk.text(row),
                    reason: Rejection::DuplicateInFile,
                });
                continue;
            }
            let result = LeadResult { outcome, contact };
            let before = self.report.already_in_campaign;
            if let Some(reason) = count(&mut self.report, &mut self.classifier, &result, row.line) {
                refused.push(RejectedRow {
                    line: row.line,
                    value: chunk.text(row),
                    reason,
                });
            }
            first_rows_in_campaign += self.report.already_in_campaign - before;
        }
        self.reject(refused)
    }

    /// Sends the batch to the guest (one call, one store transaction) and
    /// checks its answer; `done` is what an error says was processed before.
    fn decide(&mut self, done: u64) -> Result<LeadBatch, ImportError> {
        let first_line = self.lines.iter().copied().min().unwrap_or(0);
        let last_line = self.lines.iter().copied().max().unwrap_or(0);
        let options = self.options;
        let answer = self.worker.add_leads(
            &options.account,
            &options.campaign,
            &self.emails,
            options.now,
        );
        let batch: LeadBatch = match answer {
            Ok(batch) => batch,
            Err(source) => {
                self.persist()?;
                return Err(ImportError::Decide {
                    first_line,
                    last_line,
                    done,
                    source,
                });
            }
        };
        if let Some(reason) = batch.denied {
            // The account or its plan went away during the import (checked at the
            // start): what came before stands.
            self.persist()?;
            return Err(ImportError::Denied {
                account: options.account.clone(),
                reason,
            });
        }
        if batch.results.len() != self.emails.len() {
            self.persist()?;
            return Err(ImportError::Answer {
                first_line,
                last_line,
                sent: self.emails.len(),
                got: batch.results.len(),
            });
        }
        if let Some(usage) = &batch.usage {
            self.report.lead_credits = Some(UsageJson::from(usage).lead_credits);
        }
        Ok(batch)
    }

    /// Sends the batch to the guest (one call, one store transaction) and counts
    /// its outcomes.
    fn flush(&mut self) -> Result<(), ImportError> {
        self.since_flush = 0;
        if self.lines.is_empty() {
            return self.reject(Vec::new());
        }
        let done = self.report.rows - self.emails.len() as u64;
        let batch = self.decide(done)?;
        let mut refused = Vec::new();
        for ((result, &line), email) in batch.results.iter().zip(&self.lines).zip(&self.emails) {
            if let Some(reason) = count(&mut self.report, &mut self.classifier, result, line) {
                refused.push(RejectedRow {
                    line,
                    value: email.clone(),
                    reason,
                });
            }
        }
        self.emails.clear();
        self.lines.clear();
        self.reject(refused)
    }

    /// Hands this batch's rejected rows over in line order, those the policy
    /// refused (`refused`) with those refused before it, and starts a new batch.
    fn reject(&mut self, refused: Vec<RejectedRow>) -> Result<(), ImportError> {
        let mut all = std::mem::take(&mut self.refused);
        all.extend(refused);
        all.sort_by_key(|r| r.line);
        self.bytes = 0;
        for row in &all {
            if let Err(source) = (self.rejected)(row) {
                self.persist()?;
                return Err(ImportError::Rejected {
                    line: row.line,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Whether the next durable point is due (see [`PERSIST_SHARE`]).
    fn persist_due(&self) -> bool {
        self.last_persist.elapsed() >= PERSIST_EVERY.max(self.persist_took * PERSIST_SHARE)
    }

    fn persist(&mut self) -> Result<(), ImportError> {
        let started = Instant::now();
        self.worker.persist().map_err(ImportError::Persist)?;
        self.last_persist = Instant::now();
        self.persist_took = self.last_persist - started;
        Ok(())
    }
}

/// Counts one address's outcome; `classifier` knows the contacts named earlier
/// in the file. Returns why the row was not imported, if it was not.
fn count(
    report: &mut ImportReport,
    classifier: &mut LeadClassifier,
    result: &LeadResult,
    line: u64,
) -> Option<Rejection> {
    match classifier.classify(result) {
        LeadClass::Uploaded => report.uploaded += 1,
        LeadClass::AlreadyInCampaign => report.already_in_campaign += 1,
        LeadClass::InOtherCampaign => report.in_other_campaign += 1,
        LeadClass::Repeat => {
            report.duplicates_in_file += 1;
            return Some(Rejection::DuplicateInFile);
        }
        LeadClass::CreditsExhausted => {
            report.credits_exhausted += 1;
            return Some(Rejection::LeadCreditsExhausted);
        }
        LeadClass::InvalidEmail => {
            report.invalid_row(line, InvalidReason::InvalidEmail);
            return Some(Rejection::Invalid(InvalidReason::InvalidEmail));
        }
    }
    None
}

/// Where a row starts, and whether it fitted in [`MAX_ROW_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    line: u64,
    fits: bool,
    /// The input ended inside a quoted field ([`Rows::quote_line`] says where it
    /// opened).
    unterminated: bool,
}

/// Where the splitter is within a row, as far as quoting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// At the start of a field: a quote here opens a quoted field.
    FieldStart,
    /// In a field that did not start with a quote: quotes are literal.
    Unquoted,
    /// In a quoted field: separators and line ends are data.
    Quoted,
    /// Just after a quote in a quoted field: another quote makes an escaped quote,
    /// anything else ends the quoting.
    QuoteInQuoted,
}

/// Splits a CSV input into rows, each bounded in size, noting the line each starts on.
struct Rows<R> {
    input: R,
    /// The field separator; `None` (while the header is read, before it is
    /// detected): any of [`DELIMITERS`].
    delimiter: Option<u8>,
    /// The line of the next byte.
    line: u64,
    /// The line the last quoted field opened on.
    quote_line: u64,
    /// The last byte was a CR: an LF now ends the same line.
    after_cr: bool,
    bytes: u64,
}

impl<R: BufRead> Rows<R> {
    fn new(input: R, delimiter: Option<u8>) -> Self {
        Self {
            input,
            delimiter,
            line: 1,
            quote_line: 1,
            after_cr: false,
            bytes: 0,
        }
    }

    fn line(&self) -> u64 {
        self.line
    }

    fn quote_line(&self) -> u64 {
        self.quote_line
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads the next row into `buf` (cleared first; left empty for a row too
    /// long), skipping blank lines; `None` at the end of the input.
    fn next(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<Row>> {
        buf.clear();
        let mut row: Option<Row> = None;
        let mut quoting = Quoting::FieldStart;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if let Some(row) = row.as_mut() {
                    row.unterminated = quoting == Quoting::Quoted;
                }
                return Ok(row);
            }
            let mut used = 0;
            let mut ended = false;
            let mut rest = chunk;
            while let Some(&byte) = rest.first() {
                // A run of bytes that are neither quotes nor line ends, in a field
                // not quoted, is taken whole: its last byte alone says where the
                // splitter is after it (at a field's start after a separator).
                if let Some(current) = row.as_mut()
                    && matches!(quoting, Quoting::FieldStart | Quoting::Unquoted)
                {
                    let run = rest
                        .iter()
                        .position(|b| matches!(b, b'"' | b'\r' | b'\n'))
                        .unwrap_or(rest.len());
                    if let Some(&last) = rest[..run].last() {
                        let separator = self
                            .delimiter
                            .map_or(DELIMITERS.contains(&last), |d| d == last);
                        quoting = if separator {
                            Quoting::FieldStart
                        } else {
                            Quoting::Unquoted
                        };
                        self.after_cr = false;
                        if current.fits {
                            if buf.len() + run <= MAX_ROW_BYTES {
                                buf.extend_from_slice(&rest[..run]);
                            } else {
                                current.fits = false;
                                buf.clear();
                            }
                        }
                        used += run;
                        rest = &rest[run..];
                        continue;
                    }
                }
                rest = &rest[1..];
                let current = match row.as_mut() {
                    Some(current) => current,
                    // Line ends before a row are blank lines.
                    None if byte == b'\r' || byte == b'\n' => {
                        count_line(&mut self.line, &mut self.after_cr, byte);
                        used += 1;
                        continue;
                    }
                    None => row.insert(Row {
                        line: self.line,
                        fits: true,
                        unterminated: false,
                    }),
                };
                let separator = self
                    .delimiter
                    .map_or(DELIMITERS.contains(&byte), |d| d == byte);
                quoting = match (quoting, byte) {
                    (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
                    (Quoting::Quoted, _) => Quoting::Quoted,
                    (Quoting::FieldStart, b'"') => {
                        self.quote_line = self.line;
                        Quoting::Quoted
                    }
                    (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
                    _ if separator => Quoting::FieldStart,
                    (_, b'\r' | b'\n') => {
                        // The line end is left for the next call, which skips it.
                        ended = true;
                        break;
                    }
                    _ => Quoting::Unquoted,
                };
                count_line(&mut self.line, &mut self.after_cr, byte);
                if current.fits {
                    if buf.len() < MAX_ROW_BYTES {
                        buf.push(byte);
                    } else {
                        current.fits = false;
                        buf.clear();
                    }
                }
                used += 1;
            }
            self.input.consume(used);
            self.bytes += used as u64;
            if ended {
                return Ok(row);
            }
        }
    }
}

/// Counts CR, LF and CRLF each as one line end, as editors number lines.
fn count_line(line: &mut u64, after_cr: &mut bool, byte: u8) {
    match byte {
        b'\n' if *after_cr => *after_cr = false,
        b'\n' => *line += 1,
        b'\r' => {
            *line += 1;
            *after_cr = true;
        }
        _ => *after_cr = false,
    }
}

/// Parses one row into fields with the csv crate, reusing one reader and one
/// record for every row.
struct Fields {
    reader: csv::Reader<Cursor<Vec<u8>>>,
    record: csv::ByteRecord,
}

impl Fields {
    fn new(delimiter: u8) -> Self {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(Cursor::new(Vec::new()));
        // `seek_raw` reads the (empty) header row on first use: have it done now,
        // before any row is in the buffer.
        let _ = reader.seek_raw(SeekFrom::Start(0), csv::Position::new());
        Self {
            reader,
            record: csv::ByteRecord::new(),
        }
    }

    /// The buffer the next row is to be read into.
    fn buffer(&mut self) -> &mut Vec<u8> {
        self.reader.get_mut().get_mut()
    }

    /// The fields of the row in the buffer.
    fn parse(&mut self) -> &csv::ByteRecord {
        // Rewinding resets the parser, so each row is parsed on its own. In memory,
        // with flexible records, neither call can fail; if one did, the row would
        // read as having no fields, which reports it as invalid.
        let parsed = self
            .reader
            .seek_raw(SeekFrom::Start(0), csv::Position::new())
            .and_then(|()| self.reader.read_byte_record(&mut self.record));
        if !matches!(parsed, Ok(true)) {
            self.record.clear();
        }
        &self.record
    }
}

/// Reads the addresses of a CSV input exactly as [`import`] does (header row,
/// column by name and delimiter as `options` say, quoting, row limits), for an
/// import that sends them elsewhere: the CLI's `leads import --server` posts them
/// to a gateway. Calls `row(line, address)` for each data row, in order; returns
/// the rows read.
pub fn read_addresses<R: BufRead>(
    input: R,
    options: &ImportOptions,
    row: &mut dyn FnMut(u64, Result<String, InvalidReason>) -> Result<(), ImportError>,
) -> Result<u64, ImportError> {
    let mut rows = Rows::new(input, options.delimiter);
    let (index, mut fields) = read_header(&mut rows, options)?;
    let mut read = 0;
    loop {
        let next = match rows.next(fields.buffer()) {
            Ok(Some(next)) if next.unterminated => {
                return Err(ImportError::UnterminatedQuote {
                    line: rows.quote_line(),
                    done: read,
                });
            }
            Ok(Some(next)) => next,
            Ok(None) => return Ok(read),
            Err(source) => {
                return Err(ImportError::Read {
                    line: rows.line(),
                    done: read,
                    source,
                });
            }
        };
        read += 1;
        let email = if next.fits {
            address(fields.parse().get(index))
        } else {
            Err(InvalidReason::RowTooLong)
        };
        row(next.line, email)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `data` into (line, fits, fields) per row.
    fn split(data: &[u8]) -> Vec<(u64, bool, Vec<String>)> {
        // A tiny buffer makes rows and line ends straddle reads.
        split_with(data, 3)
    }

    fn split_with(data: &[u8], capacity: usize) -> Vec<(u64, bool, Vec<String>)> {
        let mut rows = Rows::new(io::BufReader::with_capacity(capacity, data), Some(b','));
        let mut fields = Fields::new(b',');
        let mut out = Vec::new();
        while let Some(row) = rows.next(fields.buffer()).unwrap() {
            let parsed = fields
                .parse()
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            out.push((row.line, row.fits, parsed));
        }
        assert_eq!(rows.bytes(), data.len() as u64);
        out
    }

    fn row(line: u64, fields: &[&str]) -> (u64, bool, Vec<String>) {
        (line, true, fields.iter().map(|f| f.to_string()).collect())
    }

    #[test]
    fn rows_start_on_the_right_line_whatever_the_line_ends() {
        assert_eq!(
            split(b"email\n\n\na@x.io\r\n\r\nb@x.io\rc@x.io\n"),
            vec![
                row(1, &["email"]),
                row(4, &["a@x.io"]),
                row(6, &["b@x.io"]),
                row(7, &["c@x.io"]),
            ]
        );
    }

    #[test]
    fn quoted_fields_may_hold_separators_quotes_and_line_ends() {
        assert_eq!(
            split(b"name,email\n\"Doe, \"\"Jo\"\"\r\nJr\",jo@x.io\nx,y"),
            vec![
                row(1, &["name", "email"]),
                row(2, &["Doe, \"Jo\"\r\nJr", "jo@x.io"]),
                row(4, &["x", "y"]),
            ]
        );
        // A quote inside an unquoted field is data; after a closing quote, the
        // rest of the field is too.
        assert_eq!(
            split(b"a\"b,\"c\"d,e\n"),
            vec![row(1, &["a\"b", "cd", "e"])]
        );
    }

    /// Runs of plain bytes are taken whole from the buffer (issue 15): a large
    /// buffer, where they are long, splits as a tiny one does.
    #[test]
    fn rows_split_the_same_whatever_the_buffer() {
        let mut data =
            b"name,email\n\"Doe, \"\"Jo\"\"\r\nJr\",jo@x.io\r\n\r\nx,y\rab\"c,\"d\"e,f\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_ROW_BYTES - 2));
        data.extend_from_slice(b",y\n");
        data.extend(std::iter::repeat_n(b'x', MAX_ROW_BYTES - 1));
        data.extend_from_slice(b",y\nlast,\"\"");
        let small = split_with(&data, 3);
        assert_eq!(split_with(&data, 1 << 20), small);
        assert_eq!(small.len(), 7);
        assert_eq!((small[4].1, small[5].1), (true, false));
    }

    #[test]
    fn a_leading_bom_is_not_part_of_the_first_header() {
        assert_eq!(split(b"\xef\xbb\xbfEmail\nx\n")[0], row(1, &["Email"]));
    }

    #[test]
    fn a_row_past_the_limit_is_skipped_whole_and_the_next_one_read() {
        let mut data = b"email\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_ROW_BYTES));
        data.extend_from_slice(b"\n\"");
        data.extend(std::iter::repeat_n(b'\n', MAX_ROW_BYTES));
        data.extend_from_slice(b"\"\nlast\n");
        let rows = split(&data);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            (rows[1].0, rows[1].1, rows[1].2[0].len()),
            (2, true, MAX_ROW_BYTES)
        );
        assert_eq!((rows[2].0, rows[2].1), (3, false));
        assert_eq!(rows[3], row(4 + MAX_ROW_BYTES as u64, &["last"]));
    }

    #[test]
    fn an_unclosed_quote_ends_at_the_end_of_the_input_and_says_where_it_opened() {
        assert_eq!(
            split(b"email\n\"a@x.io\nb@x.io\n"),
            vec![row(1, &["email"]), row(2, &["a@x.io\nb@x.io\n"])]
        );
        let data = b"email,name\na@x.io,Ann\nb@x.io,\"Bo\nc@x.io,Cy\n";
        let mut rows = Rows::new(&data[..], Some(b','));
        let mut buf = Vec::new();
        let flags: Vec<(u64, bool)> = std::iter::from_fn(|| rows.next(&mut buf).unwrap())
            .map(|r| (r.line, r.unterminated))
            .collect();
        assert_eq!(flags, [(1, false), (2, false), (3, true)]);
        assert_eq!(rows.quote_line(), 3);
    }

    #[test]
    fn the_delimiter_is_the_one_the_header_holds_most_of() {
        assert_eq!(detect_delimiter(b"email,name,company"), b',');
        assert_eq!(detect_delimiter(b"email;name;\"a,b,c\""), b';');
        assert_eq!(detect_delimiter(b"email\tname"), b'\t');
        assert_eq!(detect_delimiter(b"email"), b',');
    }

    #[test]
    fn addresses_are_refused_only_when_they_cannot_be_sent() {
        assert_eq!(address(None), Err(InvalidReason::MissingField));
        assert_eq!(address(Some(b" \t")), Err(InvalidReason::Empty));
        assert_eq!(address(Some(b"\xff@x.io")), Err(InvalidReason::NotUtf8));
        let long = vec![b'a'; MAX_NAME_LEN + 1];
        assert_eq!(address(Some(&long)), Err(InvalidReason::FieldTooLong));
        assert_eq!(
            address(Some(b" not an address ")),
            Ok("not an address".into())
        );
    }

    #[test]
    fn the_report_keeps_the_lowest_invalid_lines_in_order() {
        let mut report = ImportReport::default();
        for line in (2..30).rev() {
            report.invalid_row(line, InvalidReason::Empty);
        }
        assert_eq!(report.invalid, 28);
        let lines: Vec<u64> = report.invalid_rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, (2..12).collect::<Vec<_>>());
    }
}

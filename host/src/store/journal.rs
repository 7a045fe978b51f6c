//! The embedded store's journal: a write-ahead log of the write primitives redb
//! applied, so that making them durable costs one append and one `fdatasync` of
//! the bytes that changed, not a redb durable commit (which writes every dirty
//! B-tree page and syncs twice: about 17 syncs' worth, measured).
//!
//! [`RedbStore`](super::RedbStore) commits each primitive to redb without a sync,
//! then appends a record of the call to the journal's buffer, in the order of the
//! commits (both happen under one writer lock). `persist` writes the buffer at the
//! journal's end and syncs it. Every so often a checkpoint makes redb durable
//! (one durable commit), after which the journal starts again from its head, so
//! that it, and the time to replay it, stay bounded. Opening the store replays
//! the records redb does not hold yet, calling the same primitives again in the
//! same order on the same state, which gives the same effects.
//!
//! # The file
//!
//! `HEADER_LEN` bytes of header (magic, the id of the store the journal
//! belongs to, a checksum), then records, each:
//!
//! | bytes | what |
//! |-------|------|
//! | 4     | payload length, little-endian |
//! | 4     | CRC-32 of the length, sequence, boot and payload |
//! | 8     | sequence number: one per primitive that changed anything, in commit order |
//! | 8     | boot: which opening of the store appended it |
//! | n     | payload: the call, as [`Op`] encodes it |
//!
//! The file is written with zeros ahead of the records (at creation, and in
//! steps when it must grow) and then reused from its head after every
//! checkpoint, so that an append overwrites blocks the file already has and
//! `fdatasync` does not also sync a new size and new extents.
//!
//! # What replay accepts
//!
//! Records are read from the head while they check: a whole record, its
//! checksum right, its sequence number the previous one's plus one, its boot
//! not before the previous one's and before the current one. The first that
//! does not is the end: a torn write, zeros, or a record left from an earlier
//! pass over the file. Old records cannot pass for new ones: after a
//! checkpoint the new run starts at the head with higher numbers, and each
//! opening of the store appends with a boot number no earlier record has, so a
//! record written but never synced before a crash (whose number the next
//! opening reuses) never continues the new run. Records redb already holds
//! (their number at most the last one it applied, kept in redb in the same
//! transaction as each record's effects) are skipped, so replaying twice
//! changes nothing.

use std::borrow::Cow;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::StorageBackend;
use redb::backends::FileBackend;

use super::{
    CounterAdd, Guard, GuardedUpdate, MemberAdd, MemberAddGuarded, MemberAddMany, Membership,
    OnceKey, ScopeDump, Store, StoreError, WrapStorage,
};

/// Bytes before the first record.
pub(super) const HEADER_LEN: u64 = 4096;
const MAGIC: [u8; 16] = *b"creditgate-jrnl1";
/// Length, checksum, sequence, boot.
const RECORD_HEADER: usize = 24;
/// Zeros written ahead of the records when the journal is created.
const INITIAL_LEN: u64 = HEADER_LEN + (1 << 20);
/// The most the journal grows by at once.
const GROW: u64 = 8 << 20;
/// The most zeros written in one call.
const ZEROS: usize = 1 << 20;
/// How much is read at a time during replay.
const READ_AHEAD: usize = 1 << 20;

/// The journal file of the store at `store`: its name with `-journal` appended.
pub fn path_of(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push("-journal");
    PathBuf::from(name)
}

fn poisoned<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves the state whole between statements
    // that cannot panic, so a poisoned lock still holds a usable state.
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens the journal of the store at `path`, locked, and wrapped by `wrap` (see
/// [`super::OpenOptions::storage`]); a new one replaces whatever is there when
/// `create` (a new ledger, or a journal found missing that the store does not
/// need: the caller decides, see `redb_store::open_database`).
pub(super) fn open_file(
    path: &Path,
    wrap: Option<&WrapStorage>,
    id: u64,
    create: bool,
) -> Result<Box<dyn StorageBackend>, StoreError> {
    let at = path_of(path);
    let what = format!("opening the journal {}", at.display());
    if create {
        self::create(&at, id).map_err(|e| unavailable(&what, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&at)
        .map_err(|e| unavailable(&what, e))?;
    // Locked like the database, though only a process holding the database
    // opens it; released when the file closes, with the store. A lock found
    // held is tried again for a moment: a child this process is starting holds
    // a copy of every descriptor, and with it the lock of a store just closed,
    // from its fork until its exec closes them. A store another process holds
    // is refused all the same, a quarter of a second later.
    let mut tries = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if tries < LOCK_TRIES => {
                tries += 1;
                std::thread::sleep(LOCK_PAUSE);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: at.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(unavailable(&what, e)),
        }
    }
    let storage: Box<dyn StorageBackend> =
        Box::new(FileBackend::new(file).map_err(|e| unavailable(&what, e))?);
    Ok(match wrap {
        Some(wrap) => wrap(&at, storage),
        None => storage,
    })
}

/// How often, and how far apart, a journal found locked is tried again.
const LOCK_TRIES: u32 = 25;
const LOCK_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// A number for a new store's id: random enough that two stores' differ.
pub(super) fn new_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// Creates a journal for the store `id` at `path`, replacing any file there:
/// written whole under another name and renamed into place, so that a crash
/// leaves either no journal or a complete one.
pub(super) fn create(path: &Path, id: u64) -> io::Result<()> {
    use std::io::Write as _;
    let mut temp = path.as_os_str().to_owned();
    temp.push(".new");
    let temp = PathBuf::from(temp);
    // Its owner's alone, like the store (see `open_database`).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    let mut bytes = vec![0u8; usize::try_from(INITIAL_LEN).unwrap_or(usize::MAX)];
    bytes[..HEADER_LEN as usize].copy_from_slice(&header(id));
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether a creditgate journal (by its magic) is beside the store at `store`.
pub(super) fn is_journal(store: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 16];
    std::fs::File::open(path_of(store))
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == MAGIC)
}

fn header(id: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..16].copy_from_slice(&MAGIC);
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The store id a journal's header names, or why it names none.
fn read_header(file: &dyn StorageBackend, shown: &str) -> Result<u64, StoreError> {
    let len = file
        .len()
        .map_err(|e| StoreError::Unavailable(format!("reading the journal {shown}: {e}")))?;
    let not_ours = || {
        StoreError::Corrupt(format!(
            "{shown} is not a creditgate journal (its header does not check)"
        ))
    };
    if len < HEADER_LEN {
        return Err(not_ours());
    }
    let mut h = [0u8; 28];
    file.read(0, &mut h)
        .map_err(|e| StoreError::Unavailable(format!("reading the journal {shown}: {e}")))?;
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if h[..16] != MAGIC || crc32fast::hash(&h[..24]) != crc {
        return Err(not_ours());
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().unwrap_or([0; 8])))
}

/// Where replay starts from and what it may accept.
pub(super) struct ReplayFrom {
    /// The id of the store: the journal's header must name it.
    pub id: u64,
    /// The last record redb holds the effects of.
    pub applied: u64,
    /// This opening's boot number: every record replayed is from an earlier one.
    pub boot: u64,
    /// Bytes past this offset are not read: what a failed flush may have left.
    pub limit: Option<u64>,
    /// Whether records past a damaged one are given up rather than refused
    /// (see [`Replayed::abandoned`]): the operator's `accept-journal-loss`.
    pub accept_loss: bool,
}

/// Records lost to damage: the journal's run broke at `offset`, after record
/// `after`, where a synced mark past it says records up to `synced` were
/// synced (see [`MARK`]). A run that breaks short of what was synced is damaged in
/// what was acknowledged (a bad sector, a stray write): not an end to replay
/// up to in silence. A break past it is the last write, torn by a crash, which
/// nothing acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub after: u64,
    pub synced: u64,
}

/// What replay found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replayed {
    /// Records applied (their number above `applied`).
    pub applied: u64,
    /// Records skipped, redb holding them already.
    pub skipped: u64,
    /// The last record's number, applied or skipped; `applied` if none.
    pub last: u64,
    /// Records past damage given up, as [`ReplayFrom::accept_loss`] allowed.
    pub abandoned: Option<Damage>,
}

/// What replay calls with each record: its number and payload.
pub(super) type Apply<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// Reads the journal in `file` and calls `apply(seq, payload)` for each record
/// past `from.applied`, in order.
pub(super) fn replay(
    file: &dyn StorageBackend,
    shown: &str,
    from: &ReplayFrom,
    apply: &mut Apply<'_>,
) -> Result<Replayed, StoreError> {
    let io_error =
        |e: io::Error| StoreError::Unavailable(format!("reading the journal {shown}: {e}"));
    let id = read_header(file, shown)?;
    if id != from.id {
        return Err(StoreError::Corrupt(format!(
            "the journal {shown} belongs to another store (id {id:016x}, the store's is {:016x}): \
             if the store file was restored from a backup or replaced, move the journal aside",
            from.id
        )));
    }
    let mut end = file.len().map_err(io_error)?;
    if let Some(limit) = from.limit {
        end = end.min(limit);
    }
    let mut reader = Reader {
        file,
        window: Vec::new(),
        window_at: HEADER_LEN,
        end,
    };
    let mut at = HEADER_LEN;
    let mut found = Replayed {
        applied: 0,
        skipped: 0,
        last: from.applied,
        abandoned: None,
    };
    let mut previous: Option<(u64, u64)> = None;
    while let Some(bytes) = reader.bytes(at, RECORD_HEADER).map_err(io_error)? {
        let mut head = [0u8; RECORD_HEADER];
        head.copy_from_slice(bytes);
        let len = u32::from_le_bytes(field(&head, 0));
        let crc = u32::from_le_bytes(field(&head, 4));
        let seq = u64::from_le_bytes(field(&head, 8));
        let boot = u64::from_le_bytes(field(&head, 16));
        let follows = match previous {
            Some((p_seq, p_boot)) => p_seq.checked_add(1) == Some(seq) && boot >= p_boot,
            None => seq != 0,
        };
        if !follows || boot >= from.boot {
            break;
        }
        let Some(payload) = reader
            .bytes(at + RECORD_HEADER as u64, len as usize)
            .map_err(io_error)?
        else {
            break;
        };
        if checksum(&head, payload) != crc {
            break;
        }
        if previous.is_none() && seq > from.applied.saturating_add(1) {
            return Err(StoreError::Corrupt(format!(
                "the journal {shown} starts at record {seq}, but the store holds records up \
                 to {} only: the ones between are missing (was the store file restored from \
                 an older copy? then move the journal aside, accepting the loss)",
                from.applied
            )));
        }
        if seq > from.applied {
            apply(seq, payload)?;
            found.applied += 1;
        } else {
            found.skipped += 1;
        }
        found.last = found.last.max(seq);
        previous = Some((seq, boot));
        at += (RECORD_HEADER + len as usize) as u64;
    }
    // The run ended at `at`: at its end, or at damage if records a synced
    // mark past it says were synced are missing from it.
    let synced = synced_claim(&mut reader, at).map_err(io_error)?;
    if found.last < synced {
        let damage = Damage {
            offset: at,
            after: found.last,
            synced,
        };
        if !from.accept_loss {
            return Err(StoreError::Corrupt(format!(
                "the journal {shown} is damaged at byte {at}: the record after {} does not \
                 check out, yet records up to {synced} were synced (acknowledged decisions); \
                 replaying up to the damage would drop them without a word. Keep a copy of the \
                 journal, then `creditgate store accept-journal-loss` opens the store with \
                 the records before the damage only",
                found.last
            )));
        }
        found.abandoned = Some(damage);
    }
    Ok(found)
}

/// The synced mark each flush writes right after its records, in the same
/// write and under the same sync (the next flush writes its records over it):
/// the last record known synced when the flush began. So the mark after the
/// journal's last flush is true however that flush fared in a crash, and a
/// replay whose run breaks off before the record it names met damage in what
/// was acknowledged (a bad sector, a stray write), not the torn end of the
/// last write. Shaped so that no reader takes it for a record: its sequence
/// field names a record before the run's last. Journals written before it have
/// none: replayed as they were.
const MARK: [u8; 8] = *b"cgsynced";
const MARK_LEN: usize = 24;

fn synced_mark(seq: u64) -> [u8; MARK_LEN] {
    let mut mark = [0u8; MARK_LEN];
    mark[..8].copy_from_slice(&MARK);
    mark[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&mark[..16]);
    mark[16..20].copy_from_slice(&crc.to_le_bytes());
    mark
}

/// The highest record a checking synced mark at or after `from` names (0 if
/// none). Marks left by earlier passes over the file name records redb holds
/// (a checkpoint made them durable), so they claim nothing a replay lacks.
fn synced_claim(reader: &mut Reader<'_>, from: u64) -> io::Result<u64> {
    let mut claim = 0;
    let mut at = from;
    while at < reader.end {
        let n = usize::try_from(reader.end - at)
            .unwrap_or(READ_AHEAD)
            .min(READ_AHEAD);
        let Some(chunk) = reader.bytes(at, n)? else {
            break;
        };
        let mut i = 0;
        while let Some(found) = chunk[i..].windows(MARK.len()).position(|w| w == MARK) {
            let start = i + found;
            if let Some(mark) = chunk.get(start..start + MARK_LEN) {
                let seq = u64::from_le_bytes(mark[8..16].try_into().unwrap_or([0; 8]));
                if mark == synced_mark(seq) {
                    claim = claim.max(seq);
                }
            }
            i = start + 1;
        }
        if n < READ_AHEAD {
            break;
        }
        // Overlapping, so that a mark across two chunks is seen whole.
        at += (n - MARK_LEN) as u64;
    }
    Ok(claim)
}

/// `N` bytes of `head` from `at`.
fn field<const N: usize>(head: &[u8; RECORD_HEADER], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&head[at..at + N]);
    out
}

/// The CRC of a record: its header's length, sequence and boot, and its payload.
fn checksum(head: &[u8; RECORD_HEADER], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[0..4]);
    hasher.update(&head[8..RECORD_HEADER]);
    hasher.update(payload);
    hasher.finalize()
}

/// Reads a file front to back through a window, so that replay reads each
/// byte once without holding the whole journal.
struct Reader<'a> {
    file: &'a dyn StorageBackend,
    window: Vec<u8>,
    window_at: u64,
    end: u64,
}

impl Reader<'_> {
    /// `n` bytes at `at`, or None if the file (or the limit) ends first.
    fn bytes(&mut self, at: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let Some(stop) = at.checked_add(n as u64).filter(|&s| s <= self.end) else {
            return Ok(None);
        };
        let have = self.window_at + self.window.len() as u64;
        if at < self.window_at || stop > have {
            let len = usize::try_from(self.end - at)
                .unwrap_or(usize::MAX)
                .min(n.max(READ_AHEAD));
            self.window.resize(len, 0);
            self.file.read(at, &mut self.window)?;
            self.window_at = at;
        }
        let from = (at - self.window_at) as usize;
        Ok(Some(&self.window[from..from + n]))
    }
}

/// Where the journal is; shared by the appenders and the one flush under way.
struct Appends {
    /// Records appended and not yet handed to a flush.
    pending: Vec<u8>,
    /// Where `pending` goes: the end of what flushes took.
    end: u64,
    /// The number the next record gets.
    next_seq: u64,
    /// Records and bytes appended since the last checkpoint.
    records: u64,
    bytes: u64,
}

/// What flushes have written; held for a whole flush.
struct Written {
    /// Everything before this offset is synced.
    durable_end: u64,
    /// The furthest a flush wrote: past `durable_end` only after one failed.
    written_end: u64,
    /// The file's length, zeros past the records.
    capacity: u64,
    /// The buffer of the last flush, kept for the next `pending`.
    spare: Vec<u8>,
    /// The last record synced: what the next flush's synced mark says.
    synced_seq: u64,
}

/// An open journal, appended to by the store's writer and flushed by
/// `persist`.
pub(super) struct Journal {
    file: Box<dyn StorageBackend>,
    boot: u64,
    appends: Mutex<Appends>,
    written: Mutex<Written>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("boot", &self.boot).finish()
    }
}

impl Journal {
    /// A journal in `file` whose next record is `next_seq`, appended from the
    /// head on (after a replay, everything the file held is in redb, made
    /// durable by a checkpoint or skipped as already there).
    pub fn new(file: Box<dyn StorageBackend>, boot: u64, next_seq: u64) -> io::Result<Self> {
        let capacity = file.len()?;
        Ok(Journal {
            file,
            boot,
            appends: Mutex::new(Appends {
                pending: Vec::new(),
                end: HEADER_LEN,
                next_seq,
                records: 0,
                bytes: 0,
            }),
            written: Mutex::new(Written {
                durable_end: HEADER_LEN,
                written_end: HEADER_LEN,
                capacity,
                spare: Vec::new(),
                // Every record before the first of this journal is in redb.
                synced_seq: next_seq.saturating_sub(1),
            }),
        })
    }

    /// The number the next record will get. Only the store's writer, holding
    /// its lock, appends, so it stays the next one until it does.
    pub fn next_seq(&self) -> u64 {
        poisoned(&self.appends).next_seq
    }

    /// Appends record `seq` (which must be [`Journal::next_seq`]), its payload
    /// written by `encode`. In memory only, until the next [`Journal::flush`].
    pub fn append(&self, seq: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut appends = poisoned(&self.appends);
        self.push(&mut appends, seq, encode);
    }

    fn push(&self, appends: &mut Appends, seq: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        debug_assert_eq!(seq, appends.next_seq);
        appends.next_seq = seq + 1;
        let start = appends.pending.len();
        appends.pending.extend_from_slice(&[0; RECORD_HEADER]);
        encode(&mut appends.pending);
        let len = appends.pending.len() - start - RECORD_HEADER;
        let mut head = [0u8; RECORD_HEADER];
        head[0..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        head[8..16].copy_from_slice(&seq.to_le_bytes());
        head[16..24].copy_from_slice(&self.boot.to_le_bytes());
        let crc = checksum(&head, &appends.pending[start + RECORD_HEADER..]);
        head[4..8].copy_from_slice(&crc.to_le_bytes());
        appends.pending[start..start + RECORD_HEADER].copy_from_slice(&head);
        appends.records += 1;
        appends.bytes += (RECORD_HEADER + len) as u64;
    }

    /// Appends records `first`, `first + 1`, ... (`first` must be
    /// [`Journal::next_seq`]) whose payloads are `payloads` cut at `ends`: a
    /// batch's records (see `RedbStore::batch`), under one lock.
    pub fn append_all(&self, first: u64, payloads: &[u8], ends: &[usize]) {
        let mut appends = poisoned(&self.appends);
        debug_assert_eq!(first, appends.next_seq);
        let mut start = 0;
        for (seq, &end) in (first..).zip(ends) {
            let payload = &payloads[start..end];
            start = end;
            self.push(&mut appends, seq, |out| out.extend_from_slice(payload));
        }
    }

    /// Whether the journal holds enough since the last checkpoint that one is
    /// due: `records` records, or `bytes` bytes.
    pub fn checkpoint_due(&self, records: u64, bytes: u64) -> bool {
        let appends = poisoned(&self.appends);
        appends.records >= records || appends.bytes >= bytes
    }

    /// Writes every record appended so far and syncs them. One flush at a time:
    /// when it returns, every record appended before it was called is durable,
    /// by this flush, an earlier one, or a checkpoint.
    pub fn flush(&self) -> io::Result<()> {
        let mut written = poisoned(&self.written);
        let (bytes, at, last) = {
            let mut appends = poisoned(&self.appends);
            if appends.pending.is_empty() {
                return Ok(());
            }
            let spare = std::mem::take(&mut written.spare);
            let bytes = std::mem::replace(&mut appends.pending, spare);
            let at = appends.end;
            appends.end += bytes.len() as u64;
            (bytes, at, appends.next_seq.saturating_sub(1))
        };
        let stop = at + bytes.len() as u64;
        // Room for the synced mark, written after the records.
        let mut bytes = bytes;
        bytes.extend_from_slice(&synced_mark(written.synced_seq));
        let marked = stop + MARK_LEN as u64;
        if marked > written.capacity {
            // Up to twice what is needed (in steps of at most GROW), so that
            // growing is rare and each growth short; the sync below makes the
            // zeros and the new length durable with the records.
            let target = marked.saturating_add(marked.clamp(1 << 20, GROW));
            let zeros = vec![0u8; ZEROS];
            let mut from = written.capacity;
            written.written_end = written.written_end.max(target);
            self.file.set_len(target)?;
            while from < target {
                let n = usize::try_from(target - from).unwrap_or(ZEROS).min(ZEROS);
                self.file.write(from, &zeros[..n])?;
                from += n as u64;
            }
            written.capacity = target;
        }
        written.written_end = written.written_end.max(marked);
        self.file.write(at, &bytes)?;
        self.file.sync_data()?;
        written.durable_end = stop;
        written.synced_seq = last;
        let mut spare = bytes;
        spare.clear();
        written.spare = spare;
        Ok(())
    }

    /// Starts the journal again from its head, after a checkpoint made every
    /// record appended so far durable in redb. The caller holds the store's
    /// writer lock, so nothing is appended meanwhile.
    pub fn restart(&self) -> io::Result<()> {
        let mut written = poisoned(&self.written);
        let mut appends = poisoned(&self.appends);
        appends.pending.clear();
        appends.end = HEADER_LEN;
        appends.records = 0;
        appends.bytes = 0;
        written.durable_end = HEADER_LEN;
        written.written_end = HEADER_LEN;
        // Not synced: a replay that finds it stops at once, one that does not
        // skips the records (all in redb) until the run ends.
        self.file.write(HEADER_LEN, &[0; RECORD_HEADER])
    }

    /// The journal's file, for [`clear`] when an opening gives up
    /// what a damaged journal held past the damage.
    pub fn file(&self) -> &dyn StorageBackend {
        &*self.file
    }

    /// `(durable_end, written_end)`: what a reopen after a failure must not read
    /// past, and what it must clear up to.
    pub fn ends(&self) -> (u64, u64) {
        let written = poisoned(&self.written);
        (written.durable_end, written.written_end)
    }
}

/// Zeros `[from, to)` of `file` and syncs it: clears what a failed flush may
/// have left past the last durable record before the journal is appended to
/// again.
pub(super) fn clear(file: &dyn StorageBackend, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let zeros = vec![0u8; ZEROS];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).unwrap_or(ZEROS).min(ZEROS);
        file.write(at, &zeros[..n])?;
        at += n as u64;
    }
    file.sync_data()
}

/// A write primitive as the journal records it: the call, with every argument,
/// so that calling it again on the state it was first applied to applies the
/// same effects. A primitive that takes its arguments as one struct is recorded
/// as that struct, as it was called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op<'a> {
    RecordInsert {
        scope: &'a str,
        key: &'a str,
        value: &'a str,
    },
    RecordUpdate {
        scope: &'a str,
        key: &'a str,
        value: &'a str,
    },
    RecordUpdateGuarded(GuardedUpdate<'a>),
    CounterAdd(CounterAdd<'a>),
    MemberAdd(MemberAdd<'a>),
    MemberAddGuarded(MemberAddGuarded<'a>),
    MemberAddMany(Many<'a>),
    MemberRemove(Membership<'a>),
    GroupClear {
        scope: &'a str,
        group: &'a str,
    },
    ImportScope {
        scope: &'a str,
        dump: Cow<'a, ScopeDump>,
    },
    AlertSequence {
        owner: &'a str,
    },
    AlertInsert {
        owner: &'a str,
        key: &'a str,
        value: &'a str,
    },
}

/// [`MemberAddMany`] with the members borrowed one by one, as a payload holds
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Many<'a> {
    pub scope: &'a str,
    pub group: &'a str,
    pub limit: Option<u64>,
    pub members: Vec<&'a str>,
}

/// Writes the fields of a payload.
pub(super) struct Encoder<'a>(pub &'a mut Vec<u8>);

impl Encoder<'_> {
    pub fn tag(&mut self, tag: u8) -> &mut Self {
        self.0.push(tag);
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0
            .extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn len(&mut self, n: usize) -> &mut Self {
        self.u64(n as u64)
    }
}

/// A field of a payload: how [`Encoder`] writes it and [`Decoder`] reads it back.
trait Field<'a>: Sized {
    fn put(&self, e: &mut Encoder<'_>);
    fn take(d: &mut Decoder<'a>) -> Result<Self, String>;
}

impl<'a> Field<'a> for &'a str {
    fn put(&self, e: &mut Encoder<'_>) {
        e.str(self);
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        d.str()
    }
}

impl<'a> Field<'a> for u64 {
    fn put(&self, e: &mut Encoder<'_>) {
        e.u64(*self);
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        d.u64()
    }
}

impl<'a> Field<'a> for i64 {
    fn put(&self, e: &mut Encoder<'_>) {
        e.i64(*self);
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        d.i64()
    }
}

/// A tag, 1 (followed by the value) or 0.
impl<'a, T: Field<'a>> Field<'a> for Option<T> {
    fn put(&self, e: &mut Encoder<'_>) {
        match self {
            Some(v) => {
                e.tag(1);
                v.put(e);
            }
            None => {
                e.tag(0);
            }
        }
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        Ok(match d.u8()? {
            0 => None,
            _ => Some(T::take(d)?),
        })
    }
}

/// A count, then the elements.
impl<'a, T: Field<'a>> Field<'a> for Vec<T> {
    fn put(&self, e: &mut Encoder<'_>) {
        e.len(self.len());
        for v in self {
            v.put(e);
        }
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        (0..d.len()?).map(|_| T::take(d)).collect()
    }
}

impl<'a> Field<'a> for Guard<'a> {
    fn put(&self, e: &mut Encoder<'_>) {
        e.str(self.key).str(self.value);
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        Ok(Guard {
            key: d.str()?,
            value: d.str()?,
        })
    }
}

impl<'a> Field<'a> for OnceKey<'a> {
    fn put(&self, e: &mut Encoder<'_>) {
        e.str(self.key).u64(self.fingerprint).i64(self.expires_at);
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        Ok(OnceKey {
            key: d.str()?,
            fingerprint: d.u64()?,
            expires_at: d.i64()?,
        })
    }
}

/// Each list of the dump, a count and its rows.
impl<'a> Field<'a> for Cow<'a, ScopeDump> {
    fn put(&self, e: &mut Encoder<'_>) {
        e.len(self.records.len());
        for (k, v) in &self.records {
            e.str(k).str(v);
        }
        e.len(self.counters.len());
        for (name, value, expires_at) in &self.counters {
            e.str(name).u64(*value);
            expires_at.put(e);
        }
        e.len(self.once.len());
        for (key, expires_at, fingerprint) in &self.once {
            e.str(key).i64(*expires_at);
            fingerprint.put(e);
        }
        e.len(self.memberships.len());
        for (group, member) in &self.memberships {
            e.str(group).str(member);
        }
    }
    fn take(d: &mut Decoder<'a>) -> Result<Self, String> {
        let mut dump = ScopeDump::default();
        for _ in 0..d.len()? {
            dump.records
                .push((d.str()?.to_owned(), d.str()?.to_owned()));
        }
        for _ in 0..d.len()? {
            dump.counters
                .push((d.str()?.to_owned(), d.u64()?, Field::take(d)?));
        }
        for _ in 0..d.len()? {
            dump.once
                .push((d.str()?.to_owned(), d.i64()?, Field::take(d)?));
        }
        for _ in 0..d.len()? {
            dump.memberships
                .push((d.str()?.to_owned(), d.str()?.to_owned()));
        }
        Ok(Cow::Owned(dump))
    }
}

/// The codec of [`Op`], from one table: each operation's tag (its first byte
/// in the journal: never renumbered, never reused) and its fields in the order
/// they are written (the order is the format; a new field goes last in a new
/// tag, never into an existing one). `Op::X { .. }` are the variants
/// with fields of their own, `Op::X(Args)` those that hold the primitive's
/// argument struct.
macro_rules! codec {
    (
        $($op:ident = $tag:literal { $($field:ident),* },)*
        ;
        $($arg_op:ident($arg:ident) = $arg_tag:literal { $($arg_field:ident),* },)*
    ) => {
        impl<'a> Op<'a> {
            /// Appends the payload to `out`.
            pub fn encode(&self, out: &mut Vec<u8>) {
                let mut e = Encoder(out);
                match self {
                    $(Op::$op { $($field),* } => {
                        e.tag($tag);
                        $(Field::put($field, &mut e);)*
                    })*
                    $(Op::$arg_op($arg { $($arg_field),* }) => {
                        e.tag($arg_tag);
                        $(Field::put($arg_field, &mut e);)*
                    })*
                }
            }

            /// Reads a payload [`Op::encode`] wrote.
            pub fn decode(payload: &'a [u8]) -> Result<Op<'a>, String> {
                let mut d = Decoder(payload);
                let op = match d.u8()? {
                    $($tag => Op::$op { $($field: Field::take(&mut d)?),* },)*
                    $($arg_tag => Op::$arg_op($arg {
                        $($arg_field: Field::take(&mut d)?),*
                    }),)*
                    other => return Err(format!("unknown operation {other}")),
                };
                if !d.0.is_empty() {
                    return Err(format!("{} bytes past the operation", d.0.len()));
                }
                Ok(op)
            }
        }
    };
}

codec! {
    RecordInsert = 1 { scope, key, value },
    RecordUpdate = 2 { scope, key, value },
    GroupClear = 8 { scope, group },
    ImportScope = 9 { scope, dump },
    AlertSequence = 10 { owner },
    AlertInsert = 11 { owner, key, value },
    ;
    CounterAdd(CounterAdd) = 3 {
        scope, guard, name, amount, limit, once, expires_at, now
    },
    MemberAdd(MemberAdd) = 4 { scope, group, member, limit },
    MemberAddGuarded(MemberAddGuarded) = 5 {
        scope, guard, group, member, limit, name, now
    },
    MemberAddMany(Many) = 6 { scope, group, limit, members },
    MemberRemove(Membership) = 7 { scope, group, member },
    RecordUpdateGuarded(GuardedUpdate) = 12 { scope, guard, key, value },
}

impl Op<'_> {
    /// Calls the primitive this records on `store`, answering only whether it
    /// failed.
    pub fn apply(&self, store: &impl Store) -> Result<(), StoreError> {
        match self {
            Op::RecordInsert { scope, key, value } => {
                store.record_insert(scope, key, value).map(drop)
            }
            Op::RecordUpdate { scope, key, value } => {
                store.record_update(scope, key, value).map(drop)
            }
            Op::RecordUpdateGuarded(update) => store.record_update_guarded(*update).map(drop),
            Op::CounterAdd(add) => store.counter_add_guarded(*add).map(drop),
            Op::MemberAdd(add) => store.member_add(*add).map(drop),
            Op::MemberAddGuarded(add) => store.member_add_guarded(*add).map(drop),
            Op::MemberAddMany(many) => {
                let members: Vec<String> = many.members.iter().map(|&m| m.to_owned()).collect();
                let add = MemberAddMany {
                    scope: many.scope,
                    group: many.group,
                    members: &members,
                    limit: many.limit,
                };
                store.member_add_many(add).map(drop)
            }
            Op::MemberRemove(at) => store.member_remove(*at).map(drop),
            Op::GroupClear { scope, group } => store.group_clear(scope, group).map(drop),
            Op::ImportScope { scope, dump } => store.import_scope(scope, dump),
            Op::AlertSequence { owner } => store.alert_sequence(owner).map(drop),
            Op::AlertInsert { owner, key, value } => {
                store.alert_insert(owner, key, value).map(drop)
            }
        }
    }
}

/// Reads the fields of a payload.
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the record ends inside a field".into());
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "a short u64")?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes(b.try_into().map_err(|_| "a short i64")?))
    }
    fn len(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        // Each element takes at least a byte: a larger count is damage, and
        // must not reserve memory for it.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or_else(|| format!("a count of {n} past the record's end"))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let b = self.take(4)?;
        let n = u32::from_le_bytes(b.try_into().map_err(|_| "a short length")?);
        let bytes = self.take(n as usize)?;
        std::str::from_utf8(bytes).map_err(|e| format!("a name that is not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::backends::InMemoryBackend;

    use super::*;

    /// A journal file in memory, for the store `ID`.
    fn file() -> Box<dyn StorageBackend> {
        let file = InMemoryBackend::new();
        file.set_len(INITIAL_LEN).expect("grows");
        file.write(0, &header(ID)).expect("writes");
        Box::new(file)
    }

    const ID: u64 = 0x1234;

    fn record(i: u64) -> Op<'static> {
        Op::RecordInsert {
            scope: "acme",
            key: "k",
            value: if i.is_multiple_of(2) { "even" } else { "odd!" },
        }
    }

    /// The bytes of each of the records [`record`] makes.
    fn record_size() -> u64 {
        let mut payload = Vec::new();
        record(0).encode(&mut payload);
        (RECORD_HEADER + payload.len()) as u64
    }

    /// Appends records `seqs` (all payloads the same size) and flushes them.
    fn write(journal: &Journal, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            journal.append(seq, |out| record(seq).encode(out));
        }
        journal.flush().expect("flushes");
    }

    /// The records a replay applies, as an opening with `applied` and `boot`
    /// would.
    fn replayed(file: &dyn StorageBackend, applied: u64, boot: u64) -> Vec<u64> {
        let from = ReplayFrom {
            id: ID,
            applied,
            boot,
            limit: None,
            accept_loss: false,
        };
        let mut seen = Vec::new();
        replay(file, "test", &from, &mut |seq, payload| {
            assert_eq!(Op::decode(payload), Ok(record(seq)));
            seen.push(seq);
            Ok(())
        })
        .expect("replays");
        seen
    }

    /// Shares one in-memory file between journals, as reopening a file does.
    #[derive(Debug)]
    struct Shared(Arc<dyn StorageBackend>);

    impl StorageBackend for Shared {
        fn len(&self) -> io::Result<u64> {
            self.0.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.0.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.0.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0.write(offset, data)
        }
    }

    #[test]
    fn every_operation_decodes_as_it_was_encoded() {
        let once = OnceKey {
            key: "msg/0/a",
            fingerprint: 7,
            expires_at: -3,
        };
        let guard = Some(Guard {
            key: "account",
            value: "0 pro",
        });
        let dump = ScopeDump {
            records: vec![("account".into(), "0 pro".into())],
            counters: vec![("email/0".into(), 4, Some(9)), ("x".into(), 0, None)],
            once: vec![("msg/0/a".into(), 5, Some(1)), ("old".into(), 6, None)],
            memberships: vec![("q1".into(), "ann@x.io".into())],
        };
        let ops = [
            record(0),
            Op::RecordUpdate {
                scope: "s",
                key: "",
                value: "é",
            },
            Op::CounterAdd(CounterAdd {
                scope: "acme",
                guard,
                name: "email/0",
                amount: 3,
                limit: Some(10),
                once: Some(once),
                expires_at: Some(i64::MAX),
                now: 42,
            }),
            Op::CounterAdd(CounterAdd {
                scope: "acme",
                guard: None,
                name: "n",
                amount: u64::MAX,
                limit: None,
                once: None,
                expires_at: None,
                now: i64::MIN,
            }),
            Op::MemberAdd(MemberAdd {
                scope: "acme",
                group: "q1",
                member: "ann@x.io",
                limit: None,
            }),
            Op::MemberAddGuarded(MemberAddGuarded {
                scope: "acme",
                guard,
                group: "q1",
                member: "bob@x.io",
                limit: Some(2),
                name: "email/0",
                now: 1,
            }),
            Op::MemberAddMany(Many {
                scope: "acme",
                group: "q2",
                limit: Some(1),
                members: vec!["a", "b", "a"],
            }),
            Op::MemberRemove(Membership {
                scope: "acme",
                group: "q1",
                member: "ann@x.io",
            }),
            Op::GroupClear {
                scope: "acme",
                group: "q2",
            },
            Op::ImportScope {
                scope: "acme",
                dump: Cow::Borrowed(&dump),
            },
            Op::AlertSequence { owner: "acme" },
            Op::AlertInsert {
                owner: "acme",
                key: "00000001",
                value: "{}",
            },
        ];
        let mut every = Vec::new();
        for op in ops {
            let mut bytes = Vec::new();
            op.encode(&mut bytes);
            every.extend_from_slice(&bytes);
            assert_eq!(Op::decode(&bytes), Ok(op.clone()));
            // A payload cut short, or with bytes past its end, is refused.
            assert!(Op::decode(&bytes[..bytes.len() - 1]).is_err(), "{op:?}");
            bytes.push(0);
            assert!(Op::decode(&bytes).is_err(), "{op:?}");
        }
        // The bytes themselves are what journals on disk hold: they do not change.
        assert_eq!((every.len(), crc32fast::hash(&every)), (569, 3_130_579_431));
        // Tag 12, added after those were pinned, pinned on its own.
        let op = Op::RecordUpdateGuarded(GuardedUpdate {
            scope: "acme",
            guard: Guard {
                key: "account",
                value: "0 pro",
            },
            key: "account",
            value: "0/1 pro",
        });
        let mut bytes = Vec::new();
        op.encode(&mut bytes);
        assert_eq!(Op::decode(&bytes), Ok(op));
        assert!(Op::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            (bytes[0], bytes.len(), crc32fast::hash(&bytes)),
            (12, 51, 1_631_656_796)
        );
    }

    #[test]
    fn replay_applies_what_was_flushed_in_order_and_skips_what_redb_holds() {
        let journal = Journal::new(file(), 1, 1).expect("opens");
        write(&journal, 1..=3);
        write(&journal, 4..=5);
        // Appended, not flushed: not in the file.
        journal.append(6, |out| record(6).encode(out));
        assert_eq!(replayed(&*journal.file, 0, 2), [1, 2, 3, 4, 5]);
        assert_eq!(replayed(&*journal.file, 3, 2), [4, 5]);
        assert_eq!(replayed(&*journal.file, 5, 2), Vec::<u64>::new());
        // Records of this opening's boot or later are never replayed: here,
        // records the last flush's mark says were synced, so the journal is
        // refused.
        let from = ReplayFrom {
            id: ID,
            applied: 0,
            boot: 1,
            limit: None,
            accept_loss: false,
        };
        let mut seen = 0;
        let err = replay(&*journal.file, "j", &from, &mut |_, _| {
            seen += 1;
            Ok(())
        });
        assert!(matches!(err, Err(StoreError::Corrupt(_))), "{err:?}");
        assert_eq!(seen, 0);
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_replay() {
        let journal = Journal::new(file(), 1, 1).expect("opens");
        write(&journal, 1..=4);
        let size = record_size();
        // The last record torn: its last byte never written.
        journal
            .file
            .write(HEADER_LEN + 4 * size - 1, &[0])
            .expect("writes");
        assert_eq!(replayed(&*journal.file, 0, 2), [1, 2, 3]);
        // A flipped byte in the second record's payload.
        let mut byte = [0u8];
        let at = HEADER_LEN + size + RECORD_HEADER as u64;
        journal.file.read(at, &mut byte).expect("reads");
        journal.file.write(at, &[byte[0] ^ 1]).expect("writes");
        assert_eq!(replayed(&*journal.file, 0, 2), [1]);
    }

    /// Audit F.2: a record damaged in a flush that was synced (a later flush
    /// says so) is refused, not taken for the end of the journal, which
    /// would drop every acknowledged record after it in silence. Accepted
    /// (`accept-journal-loss`), the records before it are replayed.
    #[test]
    fn damage_in_what_was_synced_is_refused_not_taken_for_the_end() {
        let journal = Journal::new(file(), 1, 1).expect("opens");
        write(&journal, 1..=2);
        write(&journal, 3..=4);
        let size = record_size();
        let flip = |record: u64| {
            let at = HEADER_LEN + (record - 1) * size + RECORD_HEADER as u64;
            let mut byte = [0u8];
            journal.file.read(at, &mut byte).expect("reads");
            journal.file.write(at, &[byte[0] ^ 1]).expect("writes");
        };
        // Damage in the last flush: a write torn by a crash, never acknowledged.
        flip(4);
        assert_eq!(replayed(&*journal.file, 0, 2), [1, 2, 3]);
        flip(4);
        // Damage in the first: records 1 and 2 were synced before 3 was written.
        flip(2);
        let mut from = ReplayFrom {
            id: ID,
            applied: 0,
            boot: 2,
            limit: None,
            accept_loss: false,
        };
        let mut seen = Vec::new();
        let err = replay(&*journal.file, "j", &from, &mut |seq, _| {
            seen.push(seq);
            Ok(())
        });
        assert!(
            matches!(&err, Err(StoreError::Corrupt(m)) if m.contains("damaged at byte") && m.contains("records up to 2 were synced")),
            "{err:?}"
        );
        from.accept_loss = true;
        seen.clear();
        let found = replay(&*journal.file, "j", &from, &mut |seq, _| {
            seen.push(seq);
            Ok(())
        })
        .expect("accepted");
        assert_eq!(seen, [1]);
        assert_eq!(
            found.abandoned,
            Some(Damage {
                offset: HEADER_LEN + size,
                after: 1,
                synced: 2
            })
        );
        // Once given up, the mark is forgotten: the next opening replays what
        // is there without refusing again.
        let len = journal.file.len().expect("len");
        clear(&*journal.file, HEADER_LEN, len).expect("clears");
        assert_eq!(replayed(&*journal.file, 1, 3), Vec::<u64>::new());
    }

    /// Records written but never synced before a crash, found after the next
    /// opening's records, are not taken for theirs, even where their numbers
    /// and places fit: the boot tells them apart.
    #[test]
    fn a_stale_record_does_not_continue_a_later_run() {
        let shared: Arc<dyn StorageBackend> = Arc::from(file());
        let first = Journal::new(Box::new(Shared(shared.clone())), 1, 1).expect("opens");
        write(&first, 1..=6);
        // A power cut: record 1 never reached the disk, 2 to 6 did.
        let size = record_size();
        shared
            .write(HEADER_LEN, &vec![0; size as usize])
            .expect("tears");
        assert_eq!(replayed(&*shared, 0, 2), Vec::<u64>::new());

        // The next opening found nothing to replay, and numbers its first
        // record 1 again, the same size as the lost one: old record 2 now sits
        // right after it.
        let second = Journal::new(Box::new(Shared(shared.clone())), 2, 1).expect("opens");
        write(&second, 1..=1);
        assert_eq!(replayed(&*shared, 0, 3), [1]);
    }

    #[test]
    fn a_journal_of_another_store_or_with_a_gap_is_refused() {
        let journal = Journal::new(file(), 1, 1).expect("opens");
        write(&journal, 1..=2);
        let mut from = ReplayFrom {
            id: ID + 1,
            applied: 0,
            boot: 2,
            limit: None,
            accept_loss: false,
        };
        let err = replay(&*journal.file, "j", &from, &mut |_, _| Ok(()));
        assert!(
            matches!(&err, Err(StoreError::Corrupt(m)) if m.contains("another store")),
            "{err:?}"
        );
        // The store holds nothing, the journal starts at record 5.
        let later = Journal::new(file(), 1, 5).expect("opens");
        write(&later, 5..=6);
        from.id = ID;
        let err = replay(&*later.file, "j", &from, &mut |_, _| Ok(()));
        assert!(
            matches!(&err, Err(StoreError::Corrupt(m)) if m.contains("missing")),
            "{err:?}"
        );
    }

    #[test]
    fn a_journal_that_outgrows_its_file_grows_it() {
        let journal = Journal::new(file(), 1, 1).expect("opens");
        let big = "x".repeat(300_000);
        for seq in 1..=8 {
            let op = Op::RecordInsert {
                scope: "acme",
                key: "k",
                value: &big,
            };
            journal.append(seq, |out| op.encode(out));
            journal.flush().expect("flushes");
        }
        assert!(journal.file.len().expect("len") > 8 * 300_000);
        let from = ReplayFrom {
            id: ID,
            applied: 0,
            boot: 2,
            limit: None,
            accept_loss: false,
        };
        let mut n = 0;
        replay(&*journal.file, "j", &from, &mut |_, _| {
            n += 1;
            Ok(())
        })
        .expect("replays");
        assert_eq!(n, 8);
    }
}

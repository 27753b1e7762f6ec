//! The journal: an append-only JSONL file beside the output holding one record per finished
//! row, written the moment a response arrives. It is the source of truth: the output file is
//! built from it, and a re-run reads it to skip rows already paid for.
//!
//! A row is known by its identity (see [`crate::identity`]), not its position: the index maps
//! each identity to its latest record, so a reordered or grown input finds its rows' records.
//!
//! A crash (even `kill -9`) loses at most the requests in flight: each record is handed to the
//! OS in one `write` as soon as it exists. A crash in the middle of that write leaves a
//! truncated last line; opening the journal detects it, cuts it off, and goes on.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::client::Choice;
use crate::key_table::KeyTable;
use crate::pipeline::ledger::{Charge, Spent};
use crate::types::Usage;

/// How a row ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

/// One finished row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 0-based row index in the input when it was recorded (for people reading the journal;
    /// rows are matched by `id`, never by position).
    pub row: u64,
    /// The row's identity: its `input.id` value, or `#` and a hash of its cells when the job
    /// has no `input.id` (see [`crate::identity`]).
    pub id: String,
    /// Hash of exactly what was sent (provider, URL, body); a changed template or model
    /// changes it, and the row is redone.
    pub hash: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Cost in picodollars; None when the model has no known price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_pico: Option<u64>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Served from the response cache (cost nothing this time).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// Priced at Batch API rates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
    /// Structured-output fields parsed from the response, when the job has a schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    /// The answer is another row's, to the very same request sent once in this run: the row
    /// this names (its `input.id`, or its row number) paid for it; this one cost nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<String>,
    /// A regenerated answer: the hash of the row's own request (the one without feedback),
    /// which this answer stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regen_of: Option<String>,
    /// How many times the row's answer has been regenerated (0: the first answer).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub regenerated: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Record {
    /// The request this record answers, as the row plans it: a regenerated answer stands
    /// for the request it regenerates.
    pub fn answers(&self) -> &str {
        self.regen_of.as_deref().unwrap_or(&self.hash)
    }
}

/// Money a row spent on answers it threw away (structured output that did not parse) before
/// the run stopped without finishing it (an abort, or a second Ctrl-C). It counts in the
/// journal's spend, so a budget cap holds across runs, but it is not the row's record: the
/// line has no `status`, is never indexed, and the row is sent again on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unfinished {
    pub row: u64,
    pub id: String,
    pub hash: String,
    pub usage: Usage,
    /// Cost in picodollars; None when the model has no known price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_pico: Option<u64>,
}

impl Record {
    /// A failed row with no answer: `error` says why. Callers set `batch` and the rest with
    /// struct update syntax where they differ.
    pub fn failed(row: u64, id: String, hash: String, attempts: u32, error: String) -> Record {
        Record {
            row,
            id,
            hash,
            status: Status::Failed,
            choices: Vec::new(),
            usage: None,
            cost_pico: None,
            attempts,
            error: Some(error),
            cached: false,
            batch: false,
            fields: None,
            shared_with: None,
            regen_of: None,
            regenerated: 0,
        }
    }
}

/// Errors reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where each row's latest record sits in the journal file, and what the journal adds up to.
///
/// The identity → offset and request → offset tables are not held in RAM (they would grow
/// with the rows): they are [`KeyTable`]s rebuilt from the journal on every open, so the
/// journal stays the only source of truth. Clones share the tables and see records appended
/// after they were made; records are never moved, so every offset stays valid.
#[derive(Debug, Default, Clone)]
pub struct JournalIndex {
    /// None for an index with no record (nothing to look up).
    slots: Option<Arc<Slots>>,
    /// Rows (identities) with a record.
    pub records: u64,
    /// A truncated or corrupt tail was cut off when opening.
    pub repaired_tail: bool,
    /// Corrupt lines in the middle of the file that were skipped.
    pub skipped_lines: u64,
    /// Money spent on every response recorded (superseded ones too: they were paid for),
    /// per endpoint, with the reservations no answer settled.
    pub spent: Spent,
    /// What this journal's own lines and reservations say was spent, companions left out
    /// (as of opening: appends update only `spent`), for the shared budget.
    pub own: Spent,
    /// The reservations read from companion journals: theirs to compact, not this one's.
    foreign_rsv: std::collections::HashSet<u64>,
}

/// The offset tables and the journal they index (for error messages).
#[derive(Debug)]
struct Slots {
    /// Row identity → offset of its latest record.
    by_id: RwLock<KeyTable>,
    /// Request hash → offset of the latest record answering that request.
    by_request: RwLock<KeyTable>,
    journal: PathBuf,
}

impl Slots {
    fn new(journal: &Path) -> Result<Slots, JournalError> {
        let table = || KeyTable::create_beside(journal).map_err(io_err(journal));
        Ok(Slots {
            by_id: RwLock::new(table()?),
            by_request: RwLock::new(table()?),
            journal: journal.to_path_buf(),
        })
    }

    /// Points `id` and `hash` at the record at `at`; true when `id` had no record before.
    fn set(&self, id: &str, hash: &str, at: u64) -> Result<bool, JournalError> {
        let err = io_err(&self.journal);
        let first = write(&self.by_id).insert(id, at).map_err(&err)?.is_none();
        // A bad row's record answers no request.
        if !hash.is_empty() {
            write(&self.by_request).insert(hash, at).map_err(&err)?;
        }
        Ok(first)
    }
}

/// The table for writing; a panic elsewhere while it was held leaves it usable (every insert
/// is a single slot write).
fn write(t: &RwLock<KeyTable>) -> std::sync::RwLockWriteGuard<'_, KeyTable> {
    t.write().unwrap_or_else(|e| e.into_inner())
}

fn read(t: &RwLock<KeyTable>) -> std::sync::RwLockReadGuard<'_, KeyTable> {
    t.read().unwrap_or_else(|e| e.into_inner())
}

impl JournalIndex {
    /// Offset of the latest record of the row whose identity is `id`.
    pub fn offset(&self, id: &str) -> Result<Option<u64>, JournalError> {
        match &self.slots {
            Some(s) => read(&s.by_id).get(id).map_err(io_err(&s.journal)),
            None => Ok(None),
        }
    }

    /// Offset of the latest record answering the request whose hash is `hash`, whatever row
    /// it was for.
    pub fn offset_of_request(&self, hash: &str) -> Result<Option<u64>, JournalError> {
        match &self.slots {
            Some(s) if !hash.is_empty() => {
                read(&s.by_request).get(hash).map_err(io_err(&s.journal))
            }
            _ => Ok(None),
        }
    }

    /// Counts the money side of one journal line (see [`SpendFields`]); `own` when the
    /// line is the journal's own, not a companion's.
    fn count_spend(&mut self, line: &SpendFields, own: bool) {
        let ep = line.ep.as_deref();
        // Served from the cache or shared with another row: nothing was paid for it.
        let paid = line.has_usage && !line.cached && !line.shared;
        let charge = Charge::of(paid, line.cost_pico);
        let mut tallies = vec![&mut self.spent];
        if own {
            tallies.push(&mut self.own);
        }
        for spent in tallies {
            if let Some(id) = line.rsv {
                spent.settled(id);
            }
            spent.charge(ep, charge);
        }
    }
}

/// Appends records.
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    len: u64,
    index: JournalIndex,
    line: Vec<u8>,
    /// Written into every line, so the ledger keeps each endpoint's spend apart.
    endpoint: Option<String>,
    /// The reservations file, once a reservation was written (see [`ReservationLine`]).
    reservations: Option<File>,
}

/// One journal line as written: the value, the endpoint it was sent to, and the reservation
/// it settles.
#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    #[serde(flatten)]
    value: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    ep: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rsv: Option<u64>,
}

/// A line of the reservations file beside the journal: a request's worst case, written
/// before it is sent (`id` set), or a reservation given back unspent (`release` set). A
/// journal line carrying `rsv: id` (the answer, or an unfinished spend) settles it too. One
/// never settled (the run was killed with the request in flight) counts its worst case as
/// spent. The file holds only reservations: the journal's lines stay one per answer.
#[derive(Serialize, Deserialize, Default)]
struct ReservationLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release: Option<u64>,
    /// The row (for people reading the file; absent once compacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    row: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ep: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worst_pico: Option<u64>,
}

/// A new reservation id. Random: unique across runs without a counter that would have to
/// survive crashes; 53 bits, so it fits a JSON number exactly.
pub fn new_reservation_id() -> u64 {
    rand::random::<u64>() >> 11
}

/// Where the reservations of a journal's requests are written (see [`ReservationLine`]).
pub fn reservations_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_os_string();
    name.push(".reserved");
    journal.with_file_name(name)
}

/// Reads the reservations file of `journal` (if any) into `spent`: every reservation not
/// released is open until a journal line settles it. A line that does not parse (cut off by
/// a crash mid-write: its request was never sent) is skipped.
fn read_reservations(journal: &Path, spent: &mut Spent) -> Result<(), JournalError> {
    let path = reservations_path(journal);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io_err(&path))? == 0 {
            return Ok(());
        }
        let Ok(r) = serde_json::from_slice::<ReservationLine>(&line) else {
            continue;
        };
        match (r.id, r.release) {
            (Some(id), _) => {
                spent.reserved(id, r.ep.as_deref(), r.worst_pico.map(crate::types::Money))
            }
            (None, Some(id)) => spent.settled(id),
            (None, None) => {}
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (or creates) a journal: reads what is there into an index, cuts off a truncated
/// tail, and returns a writer positioned at the end.
pub fn open(path: &Path) -> Result<JournalWriter, JournalError> {
    let err = io_err(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(&err)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(&err)?;
    let (index, good_end) = scan(Some(&mut file), path)?;
    if index.repaired_tail {
        file.set_len(good_end).map_err(&err)?;
        tracing::warn!(
            "{}: the last record was cut off (an earlier run was killed mid-write); it was \
             dropped and that row will be redone",
            path.display()
        );
    }
    Ok(JournalWriter {
        file,
        path: path.to_path_buf(),
        len: good_end,
        index,
        line: Vec::with_capacity(1024),
        endpoint: None,
        reservations: None,
    })
}

/// Reads the index of an existing journal without changing the file (a truncated tail is
/// left in place but not indexed, as [`open`] would drop it). None when there is no journal.
pub fn read_index(path: &Path) -> Result<Option<JournalIndex>, JournalError> {
    let mut file = match File::open(path) {
        Ok(f) => Some(f),
        // No journal of its own yet, but its companions' records count (see [`scan`]).
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && !crate::shard::companions_at(path).is_empty() =>
        {
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let (index, _) = scan(file.as_mut(), path)?;
    Ok(Some(index))
}

/// Reads every record from the start of `file`: the index (`records` = rows with a record),
/// and where the last good line ends. The journal's companions (see
/// [`crate::shard::companions`]: the shards' journals beside the job's own, or the job's own
/// beside a shard's) are read first, so their records and spend count too, and a record of
/// the journal itself, read last, wins over theirs.
fn scan(file: Option<&mut File>, path: &Path) -> Result<(JournalIndex, u64), JournalError> {
    let slots = Slots::new(path)?;
    let mut index = JournalIndex::default();
    for (place, other) in crate::shard::companions_at(path) {
        let mut f = match File::open(&other) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&other)(e)),
        };
        read_reservations(&other, &mut index.spent)?;
        // A companion's truncated tail is left alone: its own run cuts it off.
        scan_lines(&mut f, &other, Some(place), &slots, &mut index)?;
    }
    index.foreign_rsv = index
        .spent
        .open_reservations()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    index.repaired_tail = false;
    read_reservations(path, &mut index.spent)?;
    read_reservations(path, &mut index.own)?;
    let good_end = match file {
        Some(file) => scan_lines(file, path, None, &slots, &mut index)?,
        None => 0,
    };
    index.slots = Some(Arc::new(slots));
    Ok((index, good_end))
}

/// Reads the lines of one journal into `slots` and `index`, offsets tagged with `place`
/// when it is a companion's (see [`tag`]); returns where the last good line ends.
fn scan_lines(
    file: &mut File,
    path: &Path,
    place: Option<crate::shard::Place>,
    slots: &Slots,
    index: &mut JournalIndex,
) -> Result<u64, JournalError> {
    let err = io_err(path);
    let mut good_end = 0u64;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(&err)? as u64;
        if n == 0 {
            break;
        }
        let complete = line.last() == Some(&b'\n');
        match serde_json::from_slice::<RowOnly>(&line) {
            Ok(r) if complete => {
                // A line without a status is an [`Unfinished`] spend, not the row's record.
                if r.status.is_some() {
                    let at = match place {
                        None => offset,
                        Some(p) => tag(p, offset).ok_or_else(|| {
                            err(std::io::Error::other(
                                "a shard journal past 2 TiB cannot be read with others",
                            ))
                        })?,
                    };
                    if slots.set(&r.id, &r.hash, at)? {
                        index.records += 1;
                    }
                }
                index.count_spend(
                    &SpendFields {
                        cost_pico: r.cost_pico,
                        cached: r.cached,
                        has_usage: r.usage.is_some(),
                        shared: r.shared_with.is_some(),
                        ep: r.ep,
                        rsv: r.rsv,
                    },
                    place.is_none(),
                );
                good_end = offset + n;
            }
            _ if !complete => {
                // A crash mid-write: the last line is cut. The caller drops it.
                index.repaired_tail = true;
            }
            _ => {
                index.skipped_lines += 1;
                good_end = offset + n;
            }
        }
        offset += n;
    }
    if offset != good_end {
        index.repaired_tail = true;
    }
    Ok(good_end)
}

/// The high bit of an offset into a companion journal (see [`tag`]).
const COMPANION: u64 = 1 << 63;
/// Bits of a companion journal's offsets kept below its place.
const COMPANION_OFFSET_BITS: u32 = 41;

/// An offset into the companion journal at `place`, as the index keeps it: the high bit set,
/// then N (0: the job's own journal) and K in 11 bits each, then the byte offset in 41 bits.
/// None past 2 TiB.
fn tag(place: crate::shard::Place, offset: u64) -> Option<u64> {
    let (k, n) = place.map_or((0, 0), |s| (u64::from(s.k), u64::from(s.n)));
    (offset < 1 << COMPANION_OFFSET_BITS)
        .then_some(COMPANION | n << 52 | k << COMPANION_OFFSET_BITS | offset)
}

/// Where an indexed offset points: the journal itself (`None`) or a companion's place, and
/// the byte offset in that file.
fn untag(at: u64) -> (Option<crate::shard::Place>, u64) {
    if at & COMPANION == 0 {
        return (None, at);
    }
    let field = |shift: u32| ((at >> shift) & 0x7ff) as u32;
    let place = crate::shard::Shard::new(field(COMPANION_OFFSET_BITS), field(52));
    (Some(place), at & ((1 << COMPANION_OFFSET_BITS) - 1))
}

/// The part of a record the opening scan needs: the row, and the money side.
#[derive(Deserialize)]
struct RowOnly {
    id: String,
    #[serde(default)]
    hash: String,
    #[serde(default)]
    status: Option<serde::de::IgnoredAny>,
    // Not `#[serde(flatten)]`: that would buffer every other field (the answers' text too).
    #[serde(default)]
    cost_pico: Option<u64>,
    #[serde(default)]
    cached: bool,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    shared_with: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    ep: Option<String>,
    #[serde(default)]
    rsv: Option<u64>,
}

/// The money side of a journal line: a record or an unfinished spend.
#[derive(Default)]
struct SpendFields {
    cost_pico: Option<u64>,
    cached: bool,
    /// The line has usage (an answer was billed).
    has_usage: bool,
    /// A copy of another row's answer (`shared_with`).
    shared: bool,
    /// The ledger; absent in lines written before it was recorded.
    ep: Option<String>,
    /// The reservation this line settles.
    rsv: Option<u64>,
}

impl JournalWriter {
    /// Appends one record in a single write, so it is in the OS's hands before the next
    /// response is even looked at.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        self.append_settling(record, None)
    }

    /// Appends a record that settles the reservation `rsv` (see [`Self::reserve`]).
    pub fn append_settling(
        &mut self,
        record: &Record,
        rsv: Option<u64>,
    ) -> Result<(), JournalError> {
        let at = self.write_line(record, rsv)?;
        let spend = SpendFields {
            cost_pico: record.cost_pico,
            cached: record.cached,
            has_usage: record.usage.is_some(),
            shared: record.shared_with.is_some(),
            ep: self.endpoint.clone(),
            rsv,
        };
        self.index.count_spend(&spend, false);
        if let Some(slots) = &self.index.slots {
            if slots.set(&record.id, &record.hash, at)? {
                self.index.records += 1;
            }
        }
        Ok(())
    }

    /// Appends the spend of a row that did not finish; the row's latest record stays what it
    /// was.
    pub fn append_unfinished(
        &mut self,
        spend: &Unfinished,
        rsv: Option<u64>,
    ) -> Result<(), JournalError> {
        self.write_line(spend, rsv)?;
        let fields = SpendFields {
            cost_pico: spend.cost_pico,
            has_usage: true,
            ep: self.endpoint.clone(),
            rsv,
            ..SpendFields::default()
        };
        self.index.count_spend(&fields, false);
        Ok(())
    }

    /// Journals a request's worst case before it is sent (`worst_pico` None: unpriced);
    /// returns the reservation's id, which the line that settles it carries.
    pub fn reserve(&mut self, row: u64, worst_pico: Option<u64>) -> Result<u64, JournalError> {
        let id = new_reservation_id();
        self.reserve_as(id, row, worst_pico)?;
        Ok(id)
    }

    /// Journals the reservation `id` (from [`new_reservation_id`], kept by the caller before
    /// this is called): writing the same id again after a crash holds one reservation, not
    /// two.
    pub fn reserve_as(
        &mut self,
        id: u64,
        row: u64,
        worst_pico: Option<u64>,
    ) -> Result<(), JournalError> {
        let line = ReservationLine {
            id: Some(id),
            row: Some(row),
            ep: self.endpoint.clone(),
            worst_pico,
            ..ReservationLine::default()
        };
        self.write_reservation(&line)?;
        let worst = worst_pico.map(crate::types::Money);
        self.index
            .spent
            .reserved(id, self.endpoint.as_deref(), worst);
        Ok(())
    }

    /// Journals that the reservation `rsv` of `row` was given back unspent.
    pub fn release(&mut self, row: u64, rsv: u64) -> Result<(), JournalError> {
        let line = ReservationLine {
            release: Some(rsv),
            row: Some(row),
            ..ReservationLine::default()
        };
        self.write_reservation(&line)?;
        self.index.spent.settled(rsv);
        Ok(())
    }

    /// Appends one line to the reservations file (opened on first use) in a single write.
    fn write_reservation(&mut self, line: &ReservationLine) -> Result<(), JournalError> {
        let path = reservations_path(&self.path);
        let err = io_err(&path);
        if self.reservations.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(&err)?;
            self.reservations = Some(f);
        }
        let mut bytes = serde_json::to_vec(line).map_err(|e| err(e.into()))?;
        bytes.push(b'\n');
        match self.reservations.as_mut() {
            Some(f) => f.write_all(&bytes).map_err(&err),
            None => Ok(()),
        }
    }

    /// Rewrites the reservations file with only the reservations still open (none: it is
    /// removed), so that it does not grow run after run. Called while the job is locked.
    fn compact_reservations(&mut self) -> Result<(), JournalError> {
        let path = reservations_path(&self.path);
        let err = io_err(&path);
        self.reservations = None;
        let mut open = self.index.spent.open_reservations();
        open.retain(|(id, _, _)| !self.index.foreign_rsv.contains(id));
        if open.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
                _ => Ok(()),
            };
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(&err)?;
        for (id, ep, worst) in open {
            let line = ReservationLine {
                id: Some(id),
                ep,
                worst_pico: worst.map(|m| m.0),
                ..ReservationLine::default()
            };
            let mut bytes = serde_json::to_vec(&line).map_err(|e| err(e.into()))?;
            bytes.push(b'\n');
            tmp.write_all(&bytes).map_err(&err)?;
        }
        tmp.as_file().sync_data().map_err(&err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// Labels every line written from now on with the ledger its spend belongs to (see
    /// [`crate::pipeline::ledger::ledger_of`]).
    pub fn set_endpoint(&mut self, endpoint: &str) {
        self.endpoint = Some(endpoint.to_string());
    }

    /// Writes one line; returns where it starts.
    fn write_line(
        &mut self,
        value: &impl Serialize,
        rsv: Option<u64>,
    ) -> Result<u64, JournalError> {
        self.line.clear();
        let line = Line {
            value,
            ep: self.endpoint.as_deref(),
            rsv,
        };
        serde_json::to_writer(&mut self.line, &line).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: e.into(),
        })?;
        self.line.push(b'\n');
        self.file
            .write_all(&self.line)
            .map_err(io_err(&self.path))?;
        let at = self.len;
        self.len += self.line.len() as u64;
        Ok(at)
    }

    /// Forces written records to disk (survives power loss, not just process death).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// The index of records so far.
    pub fn index(&self) -> &JournalIndex {
        &self.index
    }

    /// Finishes writing; returns the index.
    pub fn finish(mut self) -> Result<JournalIndex, JournalError> {
        self.sync()?;
        self.compact_reservations()?;
        Ok(self.index)
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads records by offset (random access into the journal file, and into its companions
/// for the offsets an index found there).
pub struct JournalReader {
    /// None when the journal has no file of its own yet (its companions have records).
    reader: Option<BufReader<File>>,
    path: PathBuf,
    line: Vec<u8>,
    /// The companion journals opened so far, by place.
    companions: Vec<(crate::shard::Place, PathBuf, BufReader<File>)>,
}

impl JournalReader {
    /// Opens a journal for reading (one that does not exist yet is an error only when a
    /// record of its own is read: its companions may have records).
    pub fn open(path: &Path) -> Result<JournalReader, JournalError> {
        let reader = match File::open(path) {
            Ok(file) => Some(BufReader::with_capacity(8192, file)),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !crate::shard::companions_at(path).is_empty() =>
            {
                None
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        Ok(JournalReader {
            reader,
            path: path.to_path_buf(),
            line: Vec::with_capacity(1024),
            companions: Vec::new(),
        })
    }

    /// The record at `offset` (from a [`JournalIndex`]).
    pub fn read_at(&mut self, offset: u64) -> Result<Record, JournalError> {
        let (place, at) = untag(offset);
        let Some(place) = place else {
            return match self.reader.as_mut() {
                Some(reader) => read_line(reader, &self.path, &mut self.line, at),
                None => Err(io_err(&self.path)(std::io::ErrorKind::NotFound.into())),
            };
        };
        let i = match self.companions.iter().position(|(p, _, _)| *p == place) {
            Some(i) => i,
            None => {
                let path = crate::shard::journal_at(&self.path, place).ok_or_else(|| {
                    io_err(&self.path)(std::io::Error::other(format!(
                        "record at byte {at} of a companion journal this journal has none of"
                    )))
                })?;
                let file = File::open(&path).map_err(io_err(&path))?;
                self.companions
                    .push((place, path, BufReader::with_capacity(8192, file)));
                self.companions.len() - 1
            }
        };
        let (_, path, reader) = &mut self.companions[i];
        read_line(reader, path, &mut self.line, at)
    }

    /// The latest record of the row whose identity is `id`, if any.
    pub fn get(&mut self, index: &JournalIndex, id: &str) -> Result<Option<Record>, JournalError> {
        match index.offset(id)? {
            Some(o) => self.read_at(o).map(Some),
            None => Ok(None),
        }
    }
}

/// The record on the line at `offset` of the journal `path` that `reader` reads.
fn read_line(
    reader: &mut BufReader<File>,
    path: &Path,
    line: &mut Vec<u8>,
    offset: u64,
) -> Result<Record, JournalError> {
    let err = io_err(path);
    reader.seek(SeekFrom::Start(offset)).map_err(&err)?;
    line.clear();
    reader.read_until(b'\n', line).map_err(&err)?;
    serde_json::from_slice(line).map_err(|e| JournalError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("record at byte {offset}: {e}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Money;

    fn rec(row: u64, status: Status) -> Record {
        Record {
            row,
            id: format!("id-{row}"),
            hash: "h".into(),
            status,
            choices: vec![Choice {
                text: format!("text {row}"),
                finish_reason: Some("stop".into()),
            }],
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..Usage::default()
            }),
            cost_pico: Some(12),
            attempts: 1,
            error: None,
            cached: false,
            batch: false,
            fields: None,
            shared_with: None,
            regen_of: None,
            regenerated: 0,
        }
    }

    #[test]
    fn records_survive_reopening_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Failed)).unwrap();
        w.append(&rec(2, Status::Ok)).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        drop(w);
        let w = open(&path).unwrap();
        let idx = w.index().clone();
        assert_eq!(idx.records, 2);
        assert!(!idx.repaired_tail);
        let mut r = JournalReader::open(&path).unwrap();
        assert_eq!(r.get(&idx, "id-0").unwrap().unwrap().status, Status::Ok);
        assert_eq!(r.get(&idx, "id-2").unwrap().unwrap(), rec(2, Status::Ok));
        assert!(r.get(&idx, "id-1").unwrap().is_none());
        assert!(r.get(&idx, "id-99").unwrap().is_none());
    }

    #[test]
    fn an_unfinished_spend_counts_but_is_no_row_s_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let spend = |row| Unfinished {
            row,
            id: format!("id-{row}"),
            hash: "h".into(),
            usage: Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                ..Usage::default()
            },
            cost_pico: Some(30),
        };
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Failed)).unwrap();
        w.append_unfinished(&spend(0), None).unwrap();
        w.append_unfinished(&spend(1), None).unwrap();
        let live = w.index().clone();
        drop(w);
        let idx = read_index(&path).unwrap().unwrap();
        for idx in [&live, &idx] {
            assert_eq!(idx.records, 1);
            assert_eq!(idx.skipped_lines, 0);
            assert_eq!(idx.spent.everywhere().known(), Some(Money(12 + 30 + 30)));
            let mut r = JournalReader::open(&path).unwrap();
            assert_eq!(r.get(idx, "id-0").unwrap().unwrap(), rec(0, Status::Failed));
            assert!(r.get(idx, "id-1").unwrap().is_none());
        }
    }

    #[test]
    fn a_reservation_never_settled_counts_its_worst_case_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.set_endpoint("api");
        let settled = w.reserve(0, Some(100)).unwrap();
        let lost = w.reserve(1, Some(40)).unwrap();
        let released = w.reserve(2, Some(7)).unwrap();
        w.append_settling(&rec(0, Status::Ok), Some(settled))
            .unwrap();
        w.release(2, released).unwrap();
        assert_eq!(w.index().spent.on("api").known(), Some(Money(12 + 40)));
        drop(w); // killed: row 1's request was in flight
        let lines = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            lines.lines().count(),
            1,
            "the journal holds answers only: {lines}"
        );
        let idx = read_index(&path).unwrap().unwrap();
        assert_eq!(idx.spent.on("api").known(), Some(Money(12 + 40)));
        assert_eq!(idx.spent.unsettled("api").known(), Some(Money(40)));
        assert_eq!(idx.spent.on("mock").known(), Some(Money(0)));
        // Finishing a later run keeps only the open reservation; once it is released the
        // file goes away.
        let w = open(&path).unwrap();
        w.finish().unwrap();
        let reserved = std::fs::read_to_string(reservations_path(&path)).unwrap();
        assert_eq!(reserved.lines().count(), 1, "{reserved}");
        let mut w = open(&path).unwrap();
        assert_eq!(w.index().spent.on("api").known(), Some(Money(12 + 40)));
        w.release(1, lost).unwrap();
        let idx = w.finish().unwrap();
        assert_eq!(idx.spent.on("api").known(), Some(Money(12)));
        assert!(!reservations_path(&path).exists());
    }

    #[test]
    fn shard_journals_count_as_the_job_s_own_and_their_reservations_stay_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("copy.journal.jsonl");
        let shard = dir.path().join("copy.shard-2-of-3.journal.jsonl");
        let mut s = open(&shard).unwrap();
        s.set_endpoint("api");
        s.append(&rec(1, Status::Ok)).unwrap();
        s.append(&rec(5, Status::Failed)).unwrap();
        let _in_flight = s.reserve(7, Some(40)).unwrap();
        drop(s); // killed with row 7 in flight
                 // Nothing of its own yet: the index and the reader are the shard's.
        let idx = read_index(&own).unwrap().unwrap();
        assert_eq!(idx.records, 2);
        assert_eq!(idx.spent.on("api").known(), Some(Money(12 + 12 + 40)));
        let mut r = JournalReader::open(&own).unwrap();
        assert_eq!(r.get(&idx, "id-1").unwrap().unwrap().row, 1);
        // The job's own record of a row wins over the shard's.
        let mut w = open(&own).unwrap();
        w.set_endpoint("api");
        w.append(&rec(5, Status::Ok)).unwrap();
        let idx = w.finish().unwrap();
        assert_eq!(idx.records, 2);
        assert!(
            !reservations_path(&own).exists(),
            "the shard's reservation is not copied"
        );
        let idx = read_index(&own).unwrap().unwrap();
        let mut r = JournalReader::open(&own).unwrap();
        assert_eq!(r.get(&idx, "id-5").unwrap().unwrap().status, Status::Ok);
        assert_eq!(r.get(&idx, "id-1").unwrap().unwrap().status, Status::Ok);
        assert_eq!(idx.spent.on("api").known(), Some(Money(3 * 12 + 40)));
        // The shard, in turn, sees the job's own journal.
        let idx = read_index(&shard).unwrap().unwrap();
        let mut r = JournalReader::open(&shard).unwrap();
        assert_eq!(r.get(&idx, "id-5").unwrap().unwrap().status, Status::Failed);
        assert_eq!(idx.spent.on("api").known(), Some(Money(3 * 12 + 40)));
    }

    #[test]
    fn a_companion_offset_keeps_its_place() {
        for place in [
            None,
            crate::shard::Shard::new(3, 4),
            crate::shard::Shard::new(1024, 1024),
        ] {
            let at = tag(place, 12345).unwrap();
            assert_eq!(untag(at), (Some(place), 12345));
        }
        assert_eq!(untag(99), (None, 99));
        assert_eq!(tag(None, 1 << 41), None);
    }

    #[test]
    fn a_truncated_tail_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        w.append(&rec(1, Status::Ok)).unwrap();
        drop(w);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let mut w = open(&path).unwrap();
        assert!(w.index().repaired_tail);
        assert_eq!(w.index().records, 1);
        assert!(w.index().offset("id-1").unwrap().is_none());
        w.append(&rec(1, Status::Ok)).unwrap();
        drop(w);
        let w = open(&path).unwrap();
        assert!(!w.index().repaired_tail);
        assert_eq!(w.index().records, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn rows_are_found_by_identity_and_request_whatever_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        // Enough rows to make the tables grow while being written.
        let rows: Vec<u64> = (0..10_000u64).map(|i| (i * 7919) % 10_007).collect();
        let mut w = open(&path).unwrap();
        for &row in &rows {
            let mut r = rec(row, Status::Ok);
            r.hash = format!("h{row}");
            w.append(&r).unwrap();
        }
        let mut again = rec(rows[5], Status::Failed);
        again.hash = format!("h{}", rows[5]);
        w.append(&again).unwrap();
        let live = w.index().clone();
        drop(w);
        let idx = read_index(&path).unwrap().unwrap();
        assert_eq!(idx.records, 10_000, "rows with a record");
        for index in [&live, &idx] {
            assert_eq!(index.records, 10_000);
            let mut r = JournalReader::open(&path).unwrap();
            let latest = r.get(index, &format!("id-{}", rows[5])).unwrap().unwrap();
            assert_eq!(latest.status, Status::Failed, "the latest record wins");
            for &row in rows.iter().step_by(97) {
                let got = r.get(index, &format!("id-{row}")).unwrap().unwrap();
                assert_eq!(got.row, row);
                let o = index
                    .offset_of_request(&format!("h{row}"))
                    .unwrap()
                    .unwrap();
                assert_eq!(r.read_at(o).unwrap().id, format!("id-{row}"));
            }
            assert!(r.get(index, "id-10008").unwrap().is_none());
            assert!(index.offset_of_request("").unwrap().is_none());
        }
        assert!(JournalIndex::default().offset("id-3").unwrap().is_none());
    }

    #[test]
    fn a_shared_answer_is_no_spend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        let shared = Record {
            shared_with: Some("id-0".into()),
            cost_pico: None,
            ..rec(1, Status::Ok)
        };
        w.append(&shared).unwrap();
        let live = w.index().clone();
        drop(w);
        for idx in [live, read_index(&path).unwrap().unwrap()] {
            let spent = idx.spent.everywhere();
            assert_eq!(
                (idx.records, spent.known(), spent.unpriced),
                (2, Some(Money(12)), 0)
            );
        }
    }

    #[test]
    fn a_garbage_line_in_the_middle_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut w = open(&path).unwrap();
        w.append(&rec(0, Status::Ok)).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{not json}\n").unwrap();
        drop(f);
        let mut w = open(&path).unwrap();
        w.append(&rec(1, Status::Ok)).unwrap();
        let idx = w.finish().unwrap();
        assert_eq!(idx.records, 2);
        let mut r = JournalReader::open(&path).unwrap();
        assert_eq!(r.get(&idx, "id-1").unwrap().unwrap().row, 1);
    }
}

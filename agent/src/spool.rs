//! The durable on-disk queue of encoded batches, between the collection loop and
//! the senders: every batch is written here before any collector sees it, and
//! removed only once every configured collector acknowledged it.
//!
//! # Format
//! A spool is a directory of append-only **segment** files, `{first_seq:020}.seg`,
//! named after the sequence number of the first batch they hold (so an empty
//! segment still says where the sequence stands). A segment opens with the 8-byte
//! magic [`SEGMENT_MAGIC`], then records, each:
//!
//! ```text
//! len: u32 LE | crc: u32 LE | seq: u64 LE | created_ms: i64 LE | body: len bytes
//! ```
//!
//! `crc` is the CRC-32 (IEEE) of `len`, `seq`, `created_ms` and `body`. `body` is
//! the batch as JSON, exactly the bytes POSTed for a single batch.
//!
//! Per collector, `cursor-{crc32(label):08x}` holds the highest sequence number that
//! collector acknowledged and its label (`"{seq}\n{label}\n"`), replaced atomically
//! (temporary file + rename).
//!
//! # Durability ([`Fsync`])
//! - `always` (default): a record is `fdatasync`ed before [`Spool::append`]
//!   returns, so before any sender may read it; new segments, deleted segments and
//!   cursors are synced too (the directory included). A batch that was offered to a
//!   collector survives power loss. One sync per tick: the agent makes one batch per
//!   tick, so this is a group commit of everything the tick collected.
//! - `never`: writes go to the page cache only. A killed agent loses nothing (the
//!   kernel keeps the writes); a power cut may lose the last seconds.
//!
//! # A failed sync
//! After a failed `fdatasync` nothing is known of the record: the kernel may
//! have dropped its pages or kept them (and may report the next sync as a
//! success), so the record may or may not reach the disk. Such a record is
//! never handed to a sender: the segment is cut back to its length before the
//! record and the cut synced, then the same batch is written again under the
//! same sequence number, up to [`SYNC_ATTEMPTS`] writes in all. If the cut (or
//! its sync) fails too, the record's bytes may stay in that segment, so the next
//! record starts a new segment named after the failed record's seq: a segment
//! holds only seqs below the next segment's name, so recovery skips the stale
//! copy (counted as corrupt) and no record is ever read twice. When every
//! attempt fails, the batch is counted as dropped and its seq is used up; a
//! failed write (a full disk) is cut back the same way. The failpoints of
//! `Spool::fail_next_syncs` and `Spool::fail_next_truncates` inject `EIO`
//! there, in tests and with the cargo feature `failpoints` only.
//!
//! # Recovery
//! Opening scans every segment. A record whose header or checksum is wrong, or
//! whose sequence number is out of order, is counted ([`Stats::corrupt_records`])
//! and skipped: the scan resynchronizes on the next byte offset where a valid record
//! starts. The tail of the last segment after its last valid record (a torn write
//! from a kill) is truncated, so appends continue from a clean end. A segment whose
//! magic is wrong is counted as one corrupt record and deleted. Nothing in a
//! segment's content stops the agent.
//!
//! # Bounds
//! The files never exceed `max_bytes`: before an append that would, the oldest
//! segment is deleted and the batches in it that some collector had not yet
//! acknowledged are counted as dropped ([`Stats::dropped_batches`]). Segments
//! rotate at `max_bytes / 16` (at most 64 MiB), so a drop loses about a
//! sixteenth of the spool at a time. An append never waits for a collector.
//!
//! # Sequence numbers
//! A fresh spool starts at the current time in microseconds (above anything an
//! earlier spool-less run may have sent); then the next number is one above the
//! highest of: the last valid record, the last segment's name, and every cursor.
//!
//! Without a directory ([`Storage::Memory`]) the same queue lives in memory: same
//! bounds and cursors, nothing survives a restart.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tracing::{error, info, warn};

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"DCWSPL1\n";
/// Bytes before a record's body.
pub const RECORD_HEADER: usize = 24;
/// The largest record body accepted when reading (a larger `len` is corruption).
pub const MAX_RECORD_BYTES: u32 = 64 << 20;
/// The smallest `max_bytes` accepted.
pub const MIN_MAX_BYTES: u64 = 16 << 10;
/// The default `max_bytes`: 1 GiB, days of a GPU node's batches at 1 s.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// The default `max_bytes` of the in-memory queue (no `[spool]`): 64 MiB.
pub const DEFAULT_MEMORY_MAX_BYTES: u64 = 64 << 20;
/// Writes of one record whose sync failed, before the batch is given up.
pub const SYNC_ATTEMPTS: u32 = 3;
/// Largest segment file.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Segments a full spool is cut into (the granularity of dropping).
const SEGMENTS_PER_SPOOL: u64 = 16;
const SEGMENT_SUFFIX: &str = ".seg";
const CURSOR_PREFIX: &str = "cursor-";

/// When the spool forces its writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Every record (one per tick), new and deleted segments, cursors.
    #[default]
    Always,
    /// Never: the page cache survives a killed agent, not a power cut.
    Never,
}

/// Where the spool keeps its batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// Segment files in a directory (created if missing).
    Disk {
        /// The directory.
        dir: PathBuf,
        /// The sync policy.
        fsync: Fsync,
    },
    /// Memory only: lost on restart.
    Memory,
}

/// A validated `[spool]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSpec {
    /// Where batches are kept.
    pub storage: Storage,
    /// The most bytes the spool holds, file headers included.
    pub max_bytes: u64,
}

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {path}: cannot {op}: {source}", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was attempted, e.g. `create the directory`.
        op: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// One batch is larger than the whole spool.
    #[error("batch of {len} bytes does not fit a spool of max_bytes = {max}")]
    TooLarge {
        /// The record's size, bytes.
        len: u64,
        /// `max_bytes`.
        max: u64,
    },
}

/// Why one write of a record failed.
#[derive(Debug)]
enum Failed {
    /// Written, but its sync failed; the record was removed again, so it may be
    /// written again.
    Unsynced(SpoolError),
    /// Anything else.
    Other(SpoolError),
}

impl From<SpoolError> for Failed {
    fn from(e: SpoolError) -> Self {
        Failed::Other(e)
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// One spooled batch, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// When the batch was made, Unix ms.
    pub created_ms: i64,
    /// The encoded batch.
    pub body: Arc<[u8]>,
}

/// The spool's counters and levels, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes on disk (or in memory), headers included.
    pub bytes: u64,
    /// Batches held that some collector has not acknowledged yet.
    pub batches: u64,
    /// Torn or corrupt records found and skipped since start.
    pub corrupt_records: u64,
    /// Batches dropped unsent (spool full, or an append that failed) since start.
    pub dropped_batches: u64,
}

/// Where one record lives.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    created_ms: i64,
    /// The segment's id (its first seq); 0 in memory.
    segment: u64,
    /// Offset of the record's header in the segment.
    offset: u64,
    /// Body length.
    len: u32,
    /// The body, in memory mode.
    body: Option<Arc<[u8]>>,
}

impl Entry {
    fn size(&self) -> u64 {
        RECORD_HEADER as u64 + u64::from(self.len)
    }
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    fsync: Fsync,
    /// By id (= first seq). The last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    /// Append handle of the active segment.
    active: File,
    /// A record (this seq) whose sync failed could not be cut off the active
    /// segment: the next record goes to a new segment named after it.
    stale: Option<u64>,
    /// Injected failures (tests and the `failpoints` feature only).
    #[cfg(any(test, feature = "failpoints"))]
    failpoints: Failpoints,
}

/// Failures injected at the boundary with the kernel: the next `syncs` record
/// syncs and the next `truncates` truncations of the active segment fail with
/// `EIO` (after the real write, so the bytes are in the page cache as after a
/// real failed `fdatasync`). Compiled in for tests and with the cargo feature
/// `failpoints` only.
#[cfg(any(test, feature = "failpoints"))]
#[derive(Debug, Default, Clone, Copy)]
struct Failpoints {
    syncs: u32,
    truncates: u32,
}

/// `EIO`, the error of a failed `fsync` (5 on every Unix).
#[cfg(any(test, feature = "failpoints"))]
fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

impl Disk {
    /// `fdatasync` of the active segment.
    fn sync_active(&mut self) -> io::Result<()> {
        #[cfg(any(test, feature = "failpoints"))]
        if self.failpoints.syncs > 0 {
            self.failpoints.syncs -= 1;
            return Err(eio());
        }
        self.active.sync_data()
    }

    /// Cuts the active segment to `len` bytes.
    fn truncate_active(&mut self, len: u64) -> io::Result<()> {
        #[cfg(any(test, feature = "failpoints"))]
        if self.failpoints.truncates > 0 {
            self.failpoints.truncates -= 1;
            return Err(eio());
        }
        self.active.set_len(len)
    }
}

#[derive(Debug)]
struct Cursor {
    label: String,
    path: Option<PathBuf>,
    /// The highest seq this collector acknowledged.
    acked: u64,
    /// Batches dropped before this collector got them.
    dropped: u64,
}

/// The spool: see the module docs. Not thread-safe by itself; the shipper keeps
/// it behind a mutex.
#[derive(Debug)]
pub struct Spool {
    disk: Option<Disk>,
    max_bytes: u64,
    segment_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
    cursors: Vec<Cursor>,
    corrupt: u64,
    dropped: u64,
}

/// The current time in microseconds: a fresh spool's first sequence number.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(0)
}

impl Spool {
    /// Opens (or creates) the spool for the collectors labelled `collectors`
    /// (their index is their handle in [`Spool::ack`] and friends), recovering
    /// what a crash left behind. Fails only when the directory cannot be created
    /// or listed, or a new segment cannot be created.
    pub fn open(spec: &SpoolSpec, collectors: &[String]) -> Result<Spool, SpoolError> {
        let max_bytes = spec.max_bytes.max(MIN_MAX_BYTES);
        let segment_bytes = (max_bytes / SEGMENTS_PER_SPOOL).clamp(4096, MAX_SEGMENT_BYTES);
        let mut spool = Spool {
            disk: None,
            max_bytes,
            segment_bytes,
            entries: VecDeque::new(),
            bytes: 0,
            next_seq: now_us(),
            cursors: collectors
                .iter()
                .map(|label| Cursor {
                    label: label.clone(),
                    path: None,
                    acked: 0,
                    dropped: 0,
                })
                .collect(),
            corrupt: 0,
            dropped: 0,
        };
        match &spec.storage {
            Storage::Memory => {
                for c in &mut spool.cursors {
                    c.acked = spool.next_seq - 1;
                }
            }
            Storage::Disk { dir, fsync } => spool.open_dir(dir, *fsync)?,
        }
        Ok(spool)
    }

    fn open_dir(&mut self, dir: &Path, fsync: Fsync) -> Result<(), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "create the directory"))?;
        let mut segment_ids = Vec::new();
        let mut cursor_max: Option<u64> = None;
        let mut saved: BTreeMap<String, u64> = BTreeMap::new();
        let listing = std::fs::read_dir(dir).map_err(io_err(dir, "list the directory"))?;
        for item in listing {
            let item = item.map_err(io_err(dir, "list the directory"))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                segment_ids.push(id);
            } else if name.starts_with(CURSOR_PREFIX) && !name.ends_with(".tmp") {
                match read_cursor(&item.path()) {
                    Some((seq, label)) => {
                        cursor_max = Some(cursor_max.map_or(seq, |m| m.max(seq)));
                        saved.insert(label, seq);
                    }
                    None => {
                        warn!(path = %item.path().display(), "Spool cursor unreadable; ignored.")
                    }
                }
            }
        }
        segment_ids.sort_unstable();

        let mut segments = BTreeMap::new();
        let mut last_seq: Option<u64> = None;
        let count = segment_ids.len();
        for (i, id) in segment_ids.iter().copied().enumerate() {
            let path = dir.join(segment_name(id));
            let next_id = segment_ids.get(i + 1).copied();
            let is_last = i + 1 == count;
            match self.recover_segment(&path, id, next_id, last_seq, is_last, fsync) {
                Some((bytes, entries)) => {
                    if let Some(e) = entries.last() {
                        last_seq = Some(e.seq);
                    }
                    self.bytes += bytes;
                    self.entries.extend(entries);
                    segments.insert(id, Segment { path, bytes });
                }
                None => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(path = %path.display(), error = %e, "Corrupt spool segment could not be deleted.");
                    }
                }
            }
        }

        let from_records = last_seq.map(|s| s + 1);
        let from_names = segments.keys().next_back().copied();
        let from_cursors = cursor_max.map(|s| s + 1);
        if let Some(next) = [from_records, from_names, from_cursors]
            .into_iter()
            .flatten()
            .max()
        {
            self.next_seq = next;
        }
        let oldest_minus_one = self
            .entries
            .front()
            .map_or(self.next_seq, |e| e.seq)
            .saturating_sub(1);
        for c in &mut self.cursors {
            let path = dir.join(cursor_name(&c.label));
            c.acked = saved
                .get(&c.label)
                .copied()
                .unwrap_or(oldest_minus_one)
                .min(self.next_seq - 1);
            c.path = Some(path);
        }

        // The active segment: the last one, or a fresh one.
        let active_id = match segments.keys().next_back() {
            Some(id) => *id,
            None => {
                let id = self.next_seq;
                let path = dir.join(segment_name(id));
                create_segment(&path, fsync)?;
                sync_dir(dir, fsync);
                self.bytes += SEGMENT_MAGIC.len() as u64;
                segments.insert(
                    id,
                    Segment {
                        path,
                        bytes: SEGMENT_MAGIC.len() as u64,
                    },
                );
                id
            }
        };
        let active_path = &segments[&active_id].path;
        let active = OpenOptions::new()
            .append(true)
            .open(active_path)
            .map_err(io_err(active_path, "open the active segment"))?;
        info!(
            dir = %dir.display(),
            batches = self.entries.len(),
            bytes = self.bytes,
            next_seq = self.next_seq,
            corrupt_records = self.corrupt,
            "Spool opened."
        );
        self.disk = Some(Disk {
            dir: dir.to_owned(),
            fsync,
            segments,
            active,
            stale: None,
            #[cfg(any(test, feature = "failpoints"))]
            failpoints: Failpoints::default(),
        });
        self.gc();
        Ok(())
    }

    /// Scans one segment. `None`: the segment is unusable (bad magic) and is to
    /// be deleted. Otherwise its size after recovery and its valid records.
    fn recover_segment(
        &mut self,
        path: &Path,
        id: u64,
        next_id: Option<u64>,
        mut prev: Option<u64>,
        is_last: bool,
        fsync: Fsync,
    ) -> Option<(u64, Vec<Entry>)> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                error!(path = %path.display(), error = %e, "Spool segment unreadable; skipped.");
                self.corrupt += 1;
                return None;
            }
        };
        if data.len() < SEGMENT_MAGIC.len() {
            // Torn at creation: the magic was never (fully) written.
            if SEGMENT_MAGIC.starts_with(&data) && is_last {
                match rewrite_magic(path, fsync) {
                    Ok(()) => return Some((SEGMENT_MAGIC.len() as u64, Vec::new())),
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "Torn spool segment could not be repaired.")
                    }
                }
            }
            if !data.is_empty() {
                self.corrupt += 1;
            }
            return None;
        }
        if &data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
            error!(path = %path.display(), "Spool segment has a wrong magic; deleted.");
            self.corrupt += 1;
            return None;
        }
        let valid = |seq: u64, prev: Option<u64>| {
            seq >= id && next_id.is_none_or(|n| seq < n) && prev.is_none_or(|p| seq > p)
        };
        let mut entries = Vec::new();
        let mut pos = SEGMENT_MAGIC.len();
        let mut end = pos;
        while pos < data.len() {
            match parse_record(&data, pos) {
                Some((seq, created_ms, len)) if valid(seq, prev) => {
                    entries.push(Entry {
                        seq,
                        created_ms,
                        segment: id,
                        offset: pos as u64,
                        len,
                        body: None,
                    });
                    prev = Some(seq);
                    pos += RECORD_HEADER + len as usize;
                    end = pos;
                }
                _ => {
                    // One corrupt region: resynchronize on the next valid record.
                    self.corrupt += 1;
                    let found = (pos + 1..data.len()).find(|&p| {
                        parse_record(&data, p).is_some_and(|(seq, _, _)| valid(seq, prev))
                    });
                    warn!(path = %path.display(), offset = pos, resumed_at = ?found, "Corrupt spool record skipped.");
                    match found {
                        Some(p) => pos = p,
                        None => break,
                    }
                }
            }
        }
        let mut size = data.len() as u64;
        if is_last && end < data.len() {
            // A torn tail: cut it so that appends continue from a clean end.
            let cut = OpenOptions::new().write(true).open(path).and_then(|f| {
                f.set_len(end as u64)?;
                if fsync == Fsync::Always {
                    f.sync_all()?;
                }
                Ok(())
            });
            match cut {
                Ok(()) => size = end as u64,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "Torn spool tail could not be truncated.")
                }
            }
        }
        Some((size, entries))
    }

    /// The sequence number the next [`Spool::append`] gives its batch.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one encoded batch as sequence number [`Spool::next_seq`], making
    /// room by dropping the oldest segments if needed, and (with
    /// [`Fsync::Always`]) syncs it. Returns its sequence number. A record whose
    /// sync failed is cut off and written again, up to [`SYNC_ATTEMPTS`] times
    /// (see the module docs). On an error the number is used up and the batch is
    /// counted as dropped; nothing of it is left to be read back.
    pub fn append(&mut self, created_ms: i64, body: &[u8]) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let mut attempt = 1;
        let result = loop {
            match self.write(seq, created_ms, body) {
                Ok(()) => break Ok(seq),
                Err(Failed::Unsynced(e)) if attempt < SYNC_ATTEMPTS => {
                    warn!(seq, attempt, error = %e, "Spool record not synced; cut off and written again.");
                    attempt += 1;
                }
                Err(Failed::Unsynced(e) | Failed::Other(e)) => break Err(e),
            }
        };
        if result.is_err() {
            self.dropped += 1;
            for c in &mut self.cursors {
                c.dropped += 1;
            }
        }
        result
    }

    /// Removes a record that was written at `offset` of the active segment but
    /// not synced: cuts the segment back to `offset` and syncs the cut. If that
    /// fails, the record's bytes may stay in that segment, so the next record
    /// (`seq` again) goes to a new segment named `seq`, whose range the stale copy
    /// is outside of (a segment holds seqs below the next one's name): recovery
    /// skips it and counts it as corrupt.
    fn discard_unsynced(&mut self, seq: u64, offset: u64) -> Result<(), SpoolError> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let cut = disk.truncate_active(offset).and_then(|()| {
            if disk.fsync == Fsync::Always {
                disk.active.sync_all()?;
            }
            Ok(())
        });
        let Err(e) = cut else {
            return Ok(());
        };
        warn!(dir = %disk.dir.display(), seq, error = %e, "Unsynced spool record could not be cut off; a new segment starts.");
        disk.stale = Some(seq);
        self.leave_stale()
    }

    /// If the active segment may end in a record that was never synced (see
    /// [`Spool::discard_unsynced`]), starts a new segment named after it.
    fn leave_stale(&mut self) -> Result<(), SpoolError> {
        let Some(seq) = self.disk.as_ref().and_then(|d| d.stale) else {
            return Ok(());
        };
        self.rotate(seq)?;
        if let Some(d) = self.disk.as_mut() {
            d.stale = None;
        }
        Ok(())
    }

    fn write(&mut self, seq: u64, created_ms: i64, body: &[u8]) -> Result<(), Failed> {
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD_BYTES);
        let size = (RECORD_HEADER + body.len()) as u64;
        let overhead = if self.disk.is_some() {
            2 * SEGMENT_MAGIC.len() as u64
        } else {
            0
        };
        let Some(len) = len.filter(|_| size + overhead <= self.max_bytes) else {
            return Err(Failed::Other(SpoolError::TooLarge {
                len: size,
                max: self.max_bytes,
            }));
        };
        self.leave_stale()?;
        let rotate = self.disk.as_ref().is_some_and(|d| {
            d.segments.values().next_back().is_some_and(|s| {
                s.bytes > SEGMENT_MAGIC.len() as u64 && s.bytes + size > self.segment_bytes
            })
        });
        if rotate {
            self.rotate(seq)?;
        }
        while self.bytes + size > self.max_bytes {
            if !self.drop_oldest(seq)? {
                return Err(Failed::Other(SpoolError::TooLarge {
                    len: size,
                    max: self.max_bytes,
                }));
            }
        }
        let Some(disk) = self.disk.as_mut() else {
            self.entries.push_back(Entry {
                seq,
                created_ms,
                segment: 0,
                offset: 0,
                len,
                body: Some(Arc::from(body)),
            });
            self.bytes += size;
            return Ok(());
        };
        let Some((&id, segment)) = disk.segments.iter().next_back() else {
            return Err(Failed::Other(SpoolError::Io {
                path: disk.dir.clone(),
                op: "find the active segment",
                source: io::Error::other("no segment"),
            }));
        };
        let (path, offset) = (segment.path.clone(), segment.bytes);
        let mut buf = Vec::with_capacity(RECORD_HEADER + body.len());
        encode_record(&mut buf, seq, created_ms, body);
        if let Err(e) = disk.active.write_all(&buf) {
            // Leave no half record behind.
            let err = io_err(&path, "write a record")(e);
            return Err(match self.discard_unsynced(seq, offset) {
                Ok(()) => Failed::Other(err),
                Err(e) => Failed::Other(e),
            });
        }
        if disk.fsync == Fsync::Always {
            if let Err(e) = disk.sync_active() {
                // After a failed fsync the kernel may have dropped the pages
                // or kept them; either way this record is not known to be on
                // disk: it must go, and be written again.
                let err = io_err(&path, "sync a record")(e);
                return Err(match self.discard_unsynced(seq, offset) {
                    Ok(()) => Failed::Unsynced(err),
                    Err(e) => Failed::Other(e),
                });
            }
        }
        if let Some(segment) = disk.segments.get_mut(&id) {
            segment.bytes += size;
        }
        self.entries.push_back(Entry {
            seq,
            created_ms,
            segment: id,
            offset,
            len,
            body: None,
        });
        self.bytes += size;
        Ok(())
    }

    /// Starts a new active segment whose first record will be `seq`.
    fn rotate(&mut self, seq: u64) -> Result<(), SpoolError> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let path = disk.dir.join(segment_name(seq));
        let active = create_segment(&path, disk.fsync)?;
        sync_dir(&disk.dir, disk.fsync);
        disk.active = active;
        // A segment of this name (the active one, holding at most a stale
        // record of `seq`) was created anew, empty.
        if let Some(old) = disk.segments.remove(&seq) {
            self.bytes -= old.bytes;
        }
        disk.segments.insert(
            seq,
            Segment {
                path,
                bytes: SEGMENT_MAGIC.len() as u64,
            },
        );
        self.bytes += SEGMENT_MAGIC.len() as u64;
        Ok(())
    }

    /// Drops the oldest segment (memory: the oldest batch), counting what some
    /// collector had not acknowledged. False when there is nothing left to drop.
    /// `seq` is the record about to be written (the name of a new segment).
    fn drop_oldest(&mut self, seq: u64) -> Result<bool, SpoolError> {
        let Some(disk) = self.disk.as_ref() else {
            let Some(e) = self.entries.pop_front() else {
                return Ok(false);
            };
            self.bytes -= e.size();
            self.count_dropped(std::iter::once(e.seq));
            return Ok(true);
        };
        if disk.segments.len() == 1 {
            let active_empty = disk
                .segments
                .values()
                .all(|s| s.bytes <= SEGMENT_MAGIC.len() as u64);
            if active_empty {
                return Ok(false);
            }
            self.rotate(seq)?;
        }
        let Some(disk) = self.disk.as_mut() else {
            return Ok(false);
        };
        let Some((id, segment)) = disk.segments.pop_first() else {
            return Ok(false);
        };
        if let Err(e) = std::fs::remove_file(&segment.path) {
            warn!(path = %segment.path.display(), error = %e, "Full spool: oldest segment could not be deleted.");
        }
        sync_dir(&disk.dir, disk.fsync);
        self.bytes -= segment.bytes;
        let mut seqs = Vec::new();
        while self.entries.front().is_some_and(|e| e.segment == id) {
            if let Some(e) = self.entries.pop_front() {
                seqs.push(e.seq);
            }
        }
        warn!(
            segment = id,
            batches = seqs.len(),
            "Spool full; oldest batches dropped."
        );
        self.count_dropped(seqs.into_iter());
        Ok(true)
    }

    fn count_dropped(&mut self, seqs: impl Iterator<Item = u64>) {
        for seq in seqs {
            let mut unsent = false;
            for c in &mut self.cursors {
                if seq > c.acked {
                    c.dropped += 1;
                    unsent = true;
                }
            }
            if unsent {
                self.dropped += 1;
            }
        }
    }

    /// Records that `collector` has applied everything up to `last_seq`
    /// (a cursor never moves back), persists its cursor and deletes segments
    /// every collector is past. A `last_seq` at or above [`Spool::next_seq`]
    /// (the collector saw numbers from elsewhere) moves `next_seq` above it, so
    /// that new batches are not taken for duplicates. (The senders never pass
    /// one: a collector's `last_seq` above what it was sent is a protocol
    /// error, see `ship`.)
    pub fn ack(&mut self, collector: usize, last_seq: u64) -> Result<(), SpoolError> {
        if last_seq >= self.next_seq {
            warn!(last_seq, next_seq = self.next_seq, "A collector has applied sequence numbers above this agent's; new batches continue above them.");
            self.next_seq = last_seq.saturating_add(1);
        }
        let Some(c) = self.cursors.get_mut(collector) else {
            return Ok(());
        };
        if last_seq <= c.acked {
            return Ok(());
        }
        c.acked = last_seq;
        if let Some(path) = &c.path {
            write_cursor(path, last_seq, &c.label)?;
        }
        self.gc();
        Ok(())
    }

    /// Deletes what every collector has acknowledged: whole segments on disk
    /// (never the active one), entries in memory.
    fn gc(&mut self) {
        let Some(min) = self.cursors.iter().map(|c| c.acked).min() else {
            return;
        };
        match self.disk.as_mut() {
            None => {
                while self.entries.front().is_some_and(|e| e.seq <= min) {
                    if let Some(e) = self.entries.pop_front() {
                        self.bytes -= e.size();
                    }
                }
            }
            Some(disk) => {
                let ids: Vec<u64> = disk.segments.keys().copied().collect();
                let mut deleted = false;
                for pair in ids.windows(2) {
                    let (id, next) = (pair[0], pair[1]);
                    // Segment `id` holds seqs below `next`.
                    if next > min + 1 {
                        break;
                    }
                    if let Some(seg) = disk.segments.remove(&id) {
                        match std::fs::remove_file(&seg.path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => {
                                warn!(path = %seg.path.display(), error = %e, "Acknowledged spool segment could not be deleted.");
                                disk.segments.insert(id, seg);
                                break;
                            }
                        }
                        self.bytes -= seg.bytes;
                        deleted = true;
                        while self.entries.front().is_some_and(|e| e.segment == id) {
                            self.entries.pop_front();
                        }
                    }
                }
                if deleted {
                    sync_dir(&disk.dir, disk.fsync);
                }
            }
        }
    }

    /// Failpoint: the next `n` record syncs fail with `EIO` (with
    /// [`Fsync::Always`]; the record is written first).
    #[cfg(any(test, feature = "failpoints"))]
    pub fn fail_next_syncs(&mut self, n: u32) {
        if let Some(d) = self.disk.as_mut() {
            d.failpoints.syncs = n;
        }
    }

    /// Failpoint: the next `n` truncations of the active segment fail with `EIO`.
    #[cfg(any(test, feature = "failpoints"))]
    pub fn fail_next_truncates(&mut self, n: u32) {
        if let Some(d) = self.disk.as_mut() {
            d.failpoints.truncates = n;
        }
    }

    /// The highest sequence number `collector` acknowledged.
    pub fn acked(&self, collector: usize) -> u64 {
        self.cursors.get(collector).map_or(0, |c| c.acked)
    }

    /// Batches waiting for `collector`.
    pub fn pending(&self, collector: usize) -> u64 {
        let acked = self.acked(collector);
        (self.entries.len() - self.entries.partition_point(|e| e.seq <= acked)) as u64
    }

    /// Batches dropped before `collector` got them.
    pub fn dropped_for(&self, collector: usize) -> u64 {
        self.cursors.get(collector).map_or(0, |c| c.dropped)
    }

    /// How long the oldest batch waiting for `collector` has waited, ms (0 when
    /// none waits).
    pub fn lag_ms(&self, collector: usize, now_ms: i64) -> i64 {
        let acked = self.acked(collector);
        let i = self.entries.partition_point(|e| e.seq <= acked);
        self.entries
            .get(i)
            .map_or(0, |e| (now_ms - e.created_ms).max(0))
    }

    /// The current counters and levels.
    pub fn stats(&self) -> Stats {
        let min = self.cursors.iter().map(|c| c.acked).min().unwrap_or(0);
        Stats {
            bytes: self.bytes,
            batches: (self.entries.len() - self.entries.partition_point(|e| e.seq <= min)) as u64,
            corrupt_records: self.corrupt,
            dropped_batches: self.dropped,
        }
    }

    /// The batches after `after`, in order: at least one (if any), then more
    /// while their bodies total at most `max_bytes` and they number at most
    /// `max_batches`. A record that no longer reads back intact is counted as
    /// corrupt and forgotten.
    pub fn read_after(&mut self, after: u64, max_bytes: usize, max_batches: usize) -> Vec<Record> {
        let start = self.entries.partition_point(|e| e.seq <= after);
        let mut out: Vec<Record> = Vec::new();
        let mut total = 0usize;
        let mut bad = Vec::new();
        let mut open: Option<(u64, File)> = None;
        for e in self.entries.iter().skip(start) {
            if out.len() >= max_batches.max(1)
                || (!out.is_empty() && total + e.len as usize > max_bytes)
            {
                break;
            }
            let body = match (&e.body, &self.disk) {
                (Some(b), _) => Some(Arc::clone(b)),
                (None, Some(disk)) => {
                    if open.as_ref().is_none_or(|(id, _)| *id != e.segment) {
                        open = disk
                            .segments
                            .get(&e.segment)
                            .and_then(|s| File::open(&s.path).ok())
                            .map(|f| (e.segment, f));
                    }
                    open.as_ref().and_then(|(_, f)| read_record(f, e))
                }
                (None, None) => None,
            };
            match body {
                Some(body) => {
                    total += body.len();
                    out.push(Record {
                        seq: e.seq,
                        created_ms: e.created_ms,
                        body,
                    });
                }
                None => bad.push(e.seq),
            }
        }
        if !bad.is_empty() {
            warn!(
                batches = bad.len(),
                "Spooled batches no longer read back intact; skipped."
            );
            self.corrupt += bad.len() as u64;
            self.entries.retain(|e| !bad.contains(&e.seq));
        }
        out
    }
}

fn read_record(f: &File, e: &Entry) -> Option<Arc<[u8]>> {
    let mut buf = vec![0u8; RECORD_HEADER + e.len as usize];
    f.read_exact_at(&mut buf, e.offset).ok()?;
    let (seq, _, len) = parse_record(&buf, 0)?;
    (seq == e.seq && len == e.len).then(|| Arc::from(&buf[RECORD_HEADER..]))
}

fn segment_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

fn cursor_name(label: &str) -> String {
    format!("{CURSOR_PREFIX}{:08x}", crc32(label.as_bytes()))
}

fn create_segment(path: &Path, fsync: Fsync) -> Result<File, SpoolError> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(io_err(path, "create a segment"))?;
    f.write_all(SEGMENT_MAGIC)
        .map_err(io_err(path, "write a segment header"))?;
    if fsync == Fsync::Always {
        f.sync_all()
            .map_err(io_err(path, "sync a segment header"))?;
    }
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path, "open a segment"))
}

fn rewrite_magic(path: &Path, fsync: Fsync) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(SEGMENT_MAGIC)?;
    if fsync == Fsync::Always {
        f.sync_all()?;
    }
    Ok(())
}

/// Syncs a directory so that creations, renames and deletions in it last.
fn sync_dir(dir: &Path, fsync: Fsync) {
    if fsync == Fsync::Always {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            warn!(dir = %dir.display(), error = %e, "Spool directory sync failed.");
        }
    }
}

fn read_cursor(path: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let seq = lines.next()?.trim().parse().ok()?;
    let label = lines.next()?.to_owned();
    Some((seq, label))
}

/// Replaces a cursor (a new file renamed over the old: never half-written).
/// Not synced, whatever `fsync` says: after a power cut a cursor may be older
/// than what its collector acknowledged, which costs one resend, answered as a
/// duplicate with the collector's `last_seq` (the cursor then jumps there);
/// nothing is applied twice, and sequence numbers come from the spooled
/// batches, which are synced. Syncing it cost two of the three syncs per
/// batch (docs/benchmarks.md).
fn write_cursor(path: &Path, seq: u64, label: &str) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp, "create a cursor"))?;
    f.write_all(format!("{seq}\n{label}\n").as_bytes())
        .map_err(io_err(&tmp, "write a cursor"))?;
    std::fs::rename(&tmp, path).map_err(io_err(path, "replace a cursor"))
}

/// Appends one record (header and body) to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, created_ms: i64, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
    let (seq, created) = (seq.to_le_bytes(), created_ms.to_le_bytes());
    let crc = Crc32::new()
        .update(&len)
        .update(&seq)
        .update(&created)
        .update(body)
        .finish();
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq);
    buf.extend_from_slice(&created);
    buf.extend_from_slice(body);
}

/// The record at `pos` if its header is sane and its checksum matches:
/// `(seq, created_ms, body length)`.
fn parse_record(data: &[u8], pos: usize) -> Option<(u64, i64, u32)> {
    let header = data.get(pos..pos.checked_add(RECORD_HEADER)?)?;
    let word = |r: std::ops::Range<usize>| header.get(r);
    let len_bytes: [u8; 4] = word(0..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes);
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let crc = u32::from_le_bytes(word(4..8)?.try_into().ok()?);
    let body = data.get(pos + RECORD_HEADER..pos + RECORD_HEADER + len as usize)?;
    let want = Crc32::new()
        .update(&len_bytes)
        .update(word(8..24)?)
        .update(body)
        .finish();
    if want != crc {
        return None;
    }
    let seq = u64::from_le_bytes(word(8..16)?.try_into().ok()?);
    let created_ms = i64::from_le_bytes(word(16..24)?.try_into().ok()?);
    Some((seq, created_ms, len))
}

/// CRC-32 (IEEE 802.3, reflected, polynomial `0xEDB88320`), table-driven.
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    /// A fresh checksum.
    pub fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    /// Feeds `bytes`.
    pub fn update(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
        self
    }

    /// The checksum of everything fed.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

/// The CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    Crc32::new().update(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn disk(dir: &Path, max_bytes: u64) -> SpoolSpec {
        SpoolSpec {
            storage: Storage::Disk {
                dir: dir.to_owned(),
                fsync: Fsync::Never,
            },
            max_bytes,
        }
    }

    fn open(dir: &Path, max_bytes: u64) -> Spool {
        Spool::open(&disk(dir, max_bytes), &["a".to_owned(), "b".to_owned()]).unwrap()
    }

    fn body(i: u64, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
    }

    fn all(s: &mut Spool, after: u64) -> Vec<(u64, Vec<u8>)> {
        s.read_after(after, usize::MAX, usize::MAX)
            .into_iter()
            .map(|r| (r.seq, r.body.to_vec()))
            .collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_survive_reopen_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let first = s.next_seq();
        let before = now_us();
        assert!(first <= before && first + 60_000_000 > before, "{first}");
        let want: Vec<(u64, Vec<u8>)> = (0..10)
            .map(|i| (s.append(i as i64, &body(i, 100)).unwrap(), body(i, 100)))
            .collect();
        assert_eq!(want[9].0, first + 9);
        drop(s);
        let mut s = open(dir.path(), 1 << 20);
        assert_eq!(s.next_seq(), first + 10);
        assert_eq!(all(&mut s, 0), want);
        assert_eq!(s.stats().corrupt_records, 0);
        assert_eq!(s.stats().batches, 10);
        assert_eq!(s.lag_ms(0, 1000), 1000);
    }

    #[test]
    fn torn_tail_is_counted_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let first = s.next_seq();
        for i in 0..3 {
            s.append(0, &body(i, 50)).unwrap();
        }
        drop(s);
        let seg = &segments(dir.path())[0];
        let len = std::fs::metadata(seg).unwrap().len();
        // Half of the last record made it to disk.
        OpenOptions::new()
            .write(true)
            .open(seg)
            .unwrap()
            .set_len(len - 30)
            .unwrap();
        let mut s = open(dir.path(), 1 << 20);
        assert_eq!(s.stats().corrupt_records, 1);
        assert_eq!(s.next_seq(), first + 2, "the torn record's seq is reused");
        assert_eq!(
            std::fs::metadata(seg).unwrap().len(),
            (SEGMENT_MAGIC.len() + 2 * (RECORD_HEADER + 50)) as u64
        );
        s.append(0, b"after").unwrap();
        drop(s);
        let mut s = open(dir.path(), 1 << 20);
        assert_eq!(s.stats().corrupt_records, 0);
        let got = all(&mut s, 0);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], (first + 2, b"after".to_vec()));
    }

    fn synced(dir: &Path) -> SpoolSpec {
        SpoolSpec {
            storage: Storage::Disk {
                dir: dir.to_owned(),
                fsync: Fsync::Always,
            },
            max_bytes: 1 << 20,
        }
    }

    fn on_disk(dir: &Path) -> u64 {
        segments(dir)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }

    /// A sync that fails on batch `k` (`EIO` from the failpoint, after the
    /// record reached the page cache): the record is cut and written again, so
    /// every batch reads back once, in order, in-process and after a reopen.
    /// Also when the cut itself fails: the batch goes to a new segment and the
    /// stale copy, out of its segment's range, is skipped on reopen (or, when it
    /// was its segment's first record, the segment is created anew).
    #[test]
    fn a_failed_sync_is_cut_and_the_batch_written_again() {
        for (k, cut_fails) in [(4, false), (4, true), (0, false), (0, true)] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(&synced(dir.path()), &["a".to_owned()]).unwrap();
            let first = s.next_seq();
            let mut want = Vec::new();
            for i in 0..10u64 {
                if i == k {
                    s.fail_next_syncs(1);
                    if cut_fails {
                        s.fail_next_truncates(1);
                    }
                }
                let b = body(i, 100);
                let seq = s.append(i as i64, &b).unwrap_or_else(|e| {
                    panic!("cut_fails {cut_fails}: batch {i} not spooled: {e}")
                });
                want.push((seq, b));
            }
            let seqs: Vec<u64> = want.iter().map(|(q, _)| *q).collect();
            assert_eq!(seqs, (first..first + 10).collect::<Vec<_>>());
            assert_eq!(all(&mut s, 0), want, "k {k} cut_fails {cut_fails}");
            assert_eq!(s.stats().dropped_batches, 0);
            assert_eq!(s.stats().batches, 10);
            if !cut_fails {
                // The failed copy is gone from the file.
                let records = 10 * (RECORD_HEADER as u64 + 100);
                assert_eq!(on_disk(dir.path()), SEGMENT_MAGIC.len() as u64 + records);
                assert_eq!(s.stats().bytes, on_disk(dir.path()));
            }
            drop(s);
            let mut s = Spool::open(&synced(dir.path()), &["a".to_owned()]).unwrap();
            assert_eq!(
                all(&mut s, 0),
                want,
                "k {k} cut_fails {cut_fails}, reopened"
            );
            assert_eq!(s.next_seq(), first + 10);
            // The stale copy left behind an uncut tail is counted, never read.
            let stale = u64::from(cut_fails && k > 0);
            assert_eq!(
                s.stats().corrupt_records,
                stale,
                "k {k} cut_fails {cut_fails}"
            );
            assert_eq!(s.append(0, b"next").unwrap(), first + 10);
        }
    }

    /// Syncs that keep failing: the append gives up (bounded), the batch is
    /// counted as dropped and leaves nothing behind, not even after a reopen;
    /// its seq is never reused; appends work again once syncs do.
    #[test]
    fn a_sync_that_keeps_failing_drops_the_batch_without_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(&synced(dir.path()), &["a".to_owned()]).unwrap();
        let first = s.append(0, &body(0, 100)).unwrap();
        s.fail_next_syncs(100);
        assert!(s.append(1, &body(1, 100)).is_err());
        assert_eq!(s.stats().dropped_batches, 1);
        s.fail_next_syncs(0);
        let third = s.append(2, &body(2, 100)).unwrap();
        assert_eq!(third, first + 2, "the failed batch's seq is not reused");
        let want = vec![(first, body(0, 100)), (third, body(2, 100))];
        assert_eq!(all(&mut s, 0), want);
        drop(s);
        let mut s = Spool::open(&synced(dir.path()), &["a".to_owned()]).unwrap();
        assert_eq!(all(&mut s, 0), want);
        assert_eq!(s.stats().corrupt_records, 0);
        assert_eq!(s.next_seq(), first + 3);
    }

    #[test]
    fn flipped_bit_loses_one_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1 << 20);
        let first = s.next_seq();
        for i in 0..5 {
            s.append(0, &body(i, 40)).unwrap();
        }
        drop(s);
        let seg = &segments(dir.path())[0];
        let mut data = std::fs::read(seg).unwrap();
        // A bit of the second record's length field.
        let at = SEGMENT_MAGIC.len() + RECORD_HEADER + 40;
        data[at] ^= 0x04;
        std::fs::write(seg, &data).unwrap();
        let mut s = open(dir.path(), 1 << 20);
        assert_eq!(s.stats().corrupt_records, 1);
        let seqs: Vec<u64> = all(&mut s, 0).into_iter().map(|(q, _)| q).collect();
        assert_eq!(seqs, vec![first, first + 2, first + 3, first + 4]);
        assert_eq!(s.next_seq(), first + 5);
    }

    #[test]
    fn segments_rotate_and_go_once_every_collector_is_past_them() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB spool: 4 KiB segments, about 9 records of 400 bytes each.
        let mut s = open(dir.path(), 64 << 10);
        let first = s.next_seq();
        for i in 0..40 {
            s.append(0, &body(i, 400)).unwrap();
        }
        let n = segments(dir.path()).len();
        assert!(n >= 4, "{n} segments");
        s.ack(0, first + 39).unwrap();
        assert_eq!(segments(dir.path()).len(), n, "b still needs them all");
        assert_eq!(s.pending(0), 0);
        assert_eq!(s.pending(1), 40);
        s.ack(1, first + 20).unwrap();
        let left = segments(dir.path());
        assert!(left.len() < n);
        // What is left starts at or before 21: nothing b needs was deleted.
        let oldest: u64 = left[0]
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(oldest <= first + 21);
        assert_eq!(s.pending(1), 19);
        drop(s);
        // Cursors persist.
        let s = open(dir.path(), 64 << 10);
        assert_eq!(s.acked(0), first + 39);
        assert_eq!(s.acked(1), first + 20);
        assert_eq!(s.pending(1), 19);
        assert_eq!(s.next_seq(), first + 40);
        // Everything acknowledged: only the active segment stays, and its name
        // (or its last record) still carries the sequence.
        let mut s = s;
        s.ack(1, first + 39).unwrap();
        assert_eq!(segments(dir.path()).len(), 1);
        drop(s);
        assert_eq!(open(dir.path(), 64 << 10).next_seq(), first + 40);
    }

    #[test]
    fn full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let max = 16u64 << 10;
        let mut s = open(dir.path(), max);
        let first = s.next_seq();
        for i in 0..200 {
            s.append(0, &body(i, 300)).unwrap();
            let on_disk: u64 = segments(dir.path())
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            assert_eq!(on_disk, s.stats().bytes);
            assert!(on_disk <= max, "{on_disk}");
        }
        let st = s.stats();
        let held = all(&mut s, 0);
        assert!(st.dropped_batches > 0);
        assert_eq!(st.dropped_batches + held.len() as u64, 200);
        assert_eq!(s.dropped_for(0), st.dropped_batches);
        // What is held is the newest, contiguous, ending with the last.
        assert_eq!(held.last().unwrap().0, first + 199);
        for w in held.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1);
        }
        // A batch larger than the spool is refused and counted.
        assert!(matches!(
            s.append(0, &vec![0; max as usize]),
            Err(SpoolError::TooLarge { .. })
        ));
        assert_eq!(s.stats().dropped_batches, st.dropped_batches + 1);
    }

    #[test]
    fn acked_batches_are_not_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(&disk(dir.path(), 16 << 10), &["a".to_owned()]).unwrap();
        for i in 0..200 {
            let seq = s.append(0, &body(i, 300)).unwrap();
            s.ack(0, seq).unwrap();
        }
        assert_eq!(s.stats().dropped_batches, 0);
        assert_eq!(s.stats().batches, 0);
    }

    #[test]
    fn wrong_magic_segment_is_dropped_and_the_rest_opens() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 64 << 10);
        for i in 0..40 {
            s.append(0, &body(i, 400)).unwrap();
        }
        drop(s);
        let segs = segments(dir.path());
        std::fs::write(&segs[0], b"garbage!garbage!").unwrap();
        let mut s = open(dir.path(), 64 << 10);
        assert_eq!(s.stats().corrupt_records, 1);
        assert!(!segs[0].exists());
        let got = all(&mut s, 0);
        assert!(!got.is_empty() && got.len() < 40);
        // An empty (torn at creation) last segment is repaired.
        std::fs::write(dir.path().join(segment_name(u64::MAX - 1)), b"DCW").unwrap();
        let s = open(dir.path(), 64 << 10);
        assert_eq!(s.next_seq(), u64::MAX - 1);
    }

    #[test]
    fn memory_spool_bounds_and_acks() {
        let spec = SpoolSpec {
            storage: Storage::Memory,
            max_bytes: 16 << 10,
        };
        let mut s = Spool::open(&spec, &["a".to_owned()]).unwrap();
        let first = s.next_seq();
        for i in 0..100 {
            s.append(0, &body(i, 300)).unwrap();
        }
        let st = s.stats();
        assert!(st.bytes <= 16 << 10);
        assert_eq!(st.dropped_batches + st.batches, 100);
        s.ack(0, first + 99).unwrap();
        assert_eq!(s.stats().bytes, 0);
    }

    #[test]
    fn ack_above_next_seq_moves_it() {
        let spec = SpoolSpec {
            storage: Storage::Memory,
            max_bytes: 1 << 20,
        };
        let mut s = Spool::open(&spec, &["a".to_owned()]).unwrap();
        let n = s.next_seq();
        s.ack(0, n + 1000).unwrap();
        assert_eq!(s.next_seq(), n + 1001);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Ack(u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1usize..700).prop_map(Op::Append),
            1 => any::<u8>().prop_map(Op::Ack),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the appends, acks and reopens, then one flipped bit anywhere:
        /// the spool opens, every record it returns is one that was written, byte
        /// for byte, in order; at most one is lost (a whole segment if the bit
        /// hit its magic), and the loss is counted.
        #[test]
        fn any_history_and_one_flipped_bit(ops in proptest::collection::vec(op(), 1..80), flip in any::<u64>()) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(&disk(dir.path(), 32 << 10), &["a".to_owned()]).unwrap();
            let mut written: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut acked = 0u64;
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Append(len) => {
                        let b = body(i as u64, *len);
                        let seq = s.append(i as i64, &b).unwrap();
                        written.insert(seq, b);
                    }
                    Op::Ack(k) => {
                        if let Some((&seq, _)) = written.iter().nth(*k as usize % written.len().max(1)) {
                            acked = acked.max(seq);
                            s.ack(0, seq).unwrap();
                        }
                    }
                    Op::Reopen => {
                        drop(s);
                        s = Spool::open(&disk(dir.path(), 32 << 10), &["a".to_owned()]).unwrap();
                        prop_assert_eq!(s.stats().corrupt_records, 0);
                    }
                }
            }
            let held: Vec<(u64, Vec<u8>)> = all(&mut s, acked);
            for (seq, b) in &held {
                prop_assert_eq!(written.get(seq), Some(b));
            }
            drop(s);

            // One flipped bit somewhere in the files.
            let segs = segments(dir.path());
            let sizes: Vec<u64> = segs.iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
            let total: u64 = sizes.iter().sum();
            let mut at = flip % (total * 8);
            let mut in_magic = false;
            for (p, size) in segs.iter().zip(&sizes) {
                if at < size * 8 {
                    let mut data = std::fs::read(p).unwrap();
                    let byte = (at / 8) as usize;
                    in_magic = byte < SEGMENT_MAGIC.len();
                    data[byte] ^= 1 << (at % 8);
                    std::fs::write(p, &data).unwrap();
                    break;
                }
                at -= size * 8;
            }
            let mut s = Spool::open(&disk(dir.path(), 32 << 10), &["a".to_owned()]).unwrap();
            let after: Vec<(u64, Vec<u8>)> = all(&mut s, acked);
            let mut last = 0;
            for (seq, b) in &after {
                prop_assert!(*seq > last);
                last = *seq;
                prop_assert_eq!(written.get(seq), Some(b));
            }
            let lost = held.len().saturating_sub(after.len());
            if !in_magic {
                prop_assert!(lost <= 1, "lost {lost}");
            }
            if lost > 0 {
                prop_assert!(s.stats().corrupt_records >= 1);
            }
            // Appends work after any of it.
            prop_assert!(s.append(0, b"next").is_ok());
        }
    }
}

//! The durable spool between Danube and ClickHouse: one directory per table, rows appended
//! to segment files and synced to disk *before* the records are acked to Danube; a
//! segment is inserted into ClickHouse once it is full or old enough, and deleted only
//! after that insert succeeded.
//!
//! Files: `{seq:016}.open` (being appended to), `{seq:016}.ready` (sealed, waiting for
//! its insert) and `{seq:016}.done` (inserted; the newest are kept as a dedup ledger). The
//! first line is `#` and a JSON array of the insert's columns; every other line is
//! `{id:032x} {row}`: the record's id (a hash of its Danube message id, publish time and
//! producer name) and the
//! `JSONEachRow` row.
//!
//! Redelivered records are skipped by id: against every pending row, the newest `.done`
//! segments (holding at least `dedup_rows` rows), and for `dedup_window` after a start
//! against every row the previous run left on disk. That covers the records whose Danube
//! ack was lost when the previous run was killed.
//!
//! Every method does blocking file I/O: call it from `spawn_blocking`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{InsertBatchConfig, SpoolConfig, SyncMode};

/// A spool I/O failure.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A segment file is not in the spool format.
    #[error("spool segment {0} has no valid header")]
    Corrupt(PathBuf),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io { what, path: path.to_path_buf(), source }
}

/// The stable spool id of a Danube message: a hash of its message id (`partition:offset`),
/// publish time and producer name. All three are the same on every redelivery; the publish
/// time and producer tell apart a new message that reuses an offset (the topic was
/// recreated, or the broker lost its data and restarted its offsets), which would
/// otherwise be taken for a redelivery, acked and never inserted.
pub fn record_id(message_id: &str, publish_time: u64, producer_name: &str) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update((message_id.len() as u64).to_be_bytes());
    hasher.update(message_id.as_bytes());
    hasher.update(publish_time.to_be_bytes());
    hasher.update(producer_name.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

/// Rows of one shape to append: the insert columns and `(id, row)` pairs.
pub type RowGroup = (Vec<String>, Vec<(u128, Vec<u8>)>);

/// What an append did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Rows written.
    pub appended: usize,
    /// Rows skipped because their id is already spooled.
    pub duplicates: usize,
    /// Whether a segment was sealed (the flusher has work).
    pub sealed: bool,
}

/// A sealed segment waiting for its insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    /// The segment name (`{seq:016}`), unique within the table's spool.
    pub name: String,
    /// The `.ready` file.
    pub path: PathBuf,
    /// Found sealed at start: a previous run may already have inserted it.
    pub recovered: bool,
}

/// A sealed segment read back for its insert.
#[derive(Debug)]
pub struct LoadedSegment {
    /// The segment.
    pub segment: SealedSegment,
    /// The insert's columns.
    pub columns: Vec<String>,
    /// The rows, one `JSONEachRow` line each.
    pub rows: Vec<Vec<u8>>,
    /// The record ids, to forget once the segment is deleted.
    pub ids: Vec<u128>,
}

impl LoadedSegment {
    /// The rows as one `JSONEachRow` body.
    pub fn body(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        json_each_row(&self.rows[range], None)
    }

    /// The segment's deterministic batch token: a hash of the table and its record ids, the
    /// same on every retry and after a restart.
    pub fn token(&self, table: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(table.as_bytes());
        for id in &self.ids {
            hasher.update(id.to_be_bytes());
        }
        hasher.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Joins rows into a `JSONEachRow` body; with `extra = Some((column, value))` every row
/// also gets that string field (the batch token column).
pub fn json_each_row(rows: &[Vec<u8>], extra: Option<(&str, &str)>) -> Vec<u8> {
    let mut field = Vec::new();
    if let Some((column, value)) = extra {
        crate::types::write_str(column, &mut field);
        field.push(b':');
        crate::types::write_str(value, &mut field);
    }
    let mut body = Vec::with_capacity(rows.iter().map(|r| r.len() + field.len() + 2).sum());
    for row in rows {
        match row.strip_suffix(b"}") {
            Some(head) if !field.is_empty() => {
                body.extend_from_slice(head);
                if head != b"{" {
                    body.push(b',');
                }
                body.extend_from_slice(&field);
                body.push(b'}');
            }
            _ => body.extend_from_slice(row),
        }
        body.push(b'\n');
    }
    body
}

struct OpenSegment {
    name: String,
    file: File,
    rows: usize,
    data_bytes: usize,
    len: u64,
    opened: Instant,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    open: HashMap<Vec<String>, OpenSegment>,
    ready: VecDeque<SealedSegment>,
    ids: HashSet<u128>,
    bytes: u64,
    /// `.done` segments kept on disk: `(name, ids)`, oldest first.
    done: VecDeque<(String, Vec<u128>)>,
    /// The ids of `done`.
    recent: HashSet<u128>,
    /// Ids the previous run left on disk, checked until `ledger_until`.
    ledger: HashSet<u128>,
    ledger_until: Option<Instant>,
}

/// One table's spool.
pub struct Spool {
    dir: PathBuf,
    sync: SyncMode,
    batch: InsertBatchConfig,
    dedup_rows: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir` and recovers what a previous run left: `.open`
    /// segments lose a torn tail (rows never acked) and are sealed; all are queued.
    pub fn open(dir: PathBuf, config: &SpoolConfig, batch: InsertBatchConfig) -> Result<Self, SpoolError> {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let mut done: Vec<(u64, PathBuf)> = Vec::new();
        // `.open` segments sealed here were never offered to ClickHouse.
        let mut sealed_now: HashSet<u64> = HashSet::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let path = entry.map_err(io_err("list", &dir))?.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            let Ok(seq) = stem.parse::<u64>() else { continue };
            match path.extension().and_then(|e| e.to_str()) {
                Some("open") => {
                    let ready = path.with_extension("ready");
                    if repair(&path)? {
                        fs::rename(&path, &ready).map_err(io_err("seal", &path))?;
                        sealed_now.insert(seq);
                        names.push((seq, ready));
                    } else {
                        fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    }
                }
                Some("ready") => names.push((seq, path)),
                Some("done") => done.push((seq, path)),
                _ => {}
            }
        }
        names.sort();
        done.sort();
        let last_seq = names.iter().chain(&done).map(|(seq, _)| *seq).max();
        let mut state = State { next_seq: last_seq.map_or(0, |seq| seq + 1), ..State::default() };
        for (seq, path) in done {
            // A `.done` segment only serves to recognise redeliveries: one that cannot be
            // read costs at worst a duplicate row, never a lost one, so it does not stop
            // the start.
            let loaded = match load_file(SealedSegment {
                name: format!("{seq:016}"),
                path: path.clone(),
                recovered: true,
            }) {
                Ok(loaded) => loaded,
                Err(error) => {
                    warn!(segment = %path.display(), error = %danube_connect_core::error::error_chain(&error), "skipping an unreadable done spool segment (its records are no longer recognised as redeliveries)");
                    continue;
                }
            };
            state.ledger.extend(loaded.ids.iter().copied());
            state.recent.extend(loaded.ids.iter().copied());
            state.done.push_back((loaded.segment.name, loaded.ids));
        }
        for (seq, path) in names {
            let recovered = path.extension().is_some_and(|e| e == "ready") && !sealed_now.contains(&seq);
            let loaded = load_file(SealedSegment { name: format!("{seq:016}"), path: path.clone(), recovered })?;
            state.ids.extend(loaded.ids.iter().copied());
            state.ledger.extend(loaded.ids.iter().copied());
            state.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            info!(segment = %path.display(), rows = loaded.rows.len(), "recovered spool segment; it will be inserted");
            state.ready.push_back(loaded.segment);
        }
        if !state.ledger.is_empty() {
            state.ledger_until = Some(Instant::now() + config.dedup_window);
        }
        let spool = Self { dir, sync: config.sync, batch, dedup_rows: config.dedup_rows, state: Mutex::new(state) };
        spool.trim_done(&mut spool.lock());
        spool.sync_dir()?;
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters at worst slightly off.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Spooled bytes (open and sealed segments).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Rows whose insert is still pending (recovered plus appended, not yet deleted).
    pub fn pending_ids(&self) -> usize {
        self.lock().ids.len()
    }

    /// Appends rows and syncs them to disk (per [`SyncMode`]). On error nothing of this
    /// call stays in the spool (files are truncated back).
    pub fn append(&self, groups: Vec<RowGroup>) -> Result<AppendOutcome, SpoolError> {
        let mut st = self.lock();
        let mut outcome = AppendOutcome::default();
        // name -> (file, length, rows, data bytes) before this call
        let mut touched: HashMap<String, (File, u64, usize, usize)> = HashMap::new();
        let mut to_seal: Vec<OpenSegment> = Vec::new();
        let mut new_ids: Vec<u128> = Vec::new();
        let mut written: u64 = 0;
        if st.ledger_until.is_some_and(|until| Instant::now() >= until) {
            st.ledger = HashSet::new();
            st.ledger_until = None;
        }
        let result = (|| -> Result<(), SpoolError> {
            let mut batch_ids = HashSet::new();
            for (columns, rows) in groups {
                let mut pending: Vec<u8> = Vec::new();
                for (id, line) in rows {
                    if st.ids.contains(&id)
                        || st.recent.contains(&id)
                        || st.ledger.contains(&id)
                        || !batch_ids.insert(id)
                    {
                        outcome.duplicates += 1;
                        continue;
                    }
                    if !st.open.contains_key(&columns) {
                        let segment = self.create_segment(&mut st, &columns)?;
                        st.open.insert(columns.clone(), segment);
                    }
                    let Some(segment) = st.open.get_mut(&columns) else { continue };
                    if !touched.contains_key(&segment.name) {
                        let clone = segment.file.try_clone().map_err(io_err("open", &self.dir))?;
                        touched.insert(segment.name.clone(), (clone, segment.len, segment.rows, segment.data_bytes));
                    }
                    pending.extend_from_slice(format!("{id:032x} ").as_bytes());
                    pending.extend_from_slice(&line);
                    pending.push(b'\n');
                    segment.rows += 1;
                    segment.data_bytes += line.len() + 1;
                    new_ids.push(id);
                    outcome.appended += 1;
                    if segment.rows >= self.batch.max_rows || segment.data_bytes >= self.batch.max_bytes {
                        write_segment(&self.dir, segment, &pending)?;
                        written += pending.len() as u64;
                        pending.clear();
                        if let Some(full) = st.open.remove(&columns) {
                            to_seal.push(full);
                        }
                    }
                }
                if !pending.is_empty() {
                    if let Some(segment) = st.open.get_mut(&columns) {
                        write_segment(&self.dir, segment, &pending)?;
                        written += pending.len() as u64;
                    }
                }
            }
            if self.sync == SyncMode::Always {
                for (name, (file, ..)) in &touched {
                    file.sync_data().map_err(io_err("sync", &self.dir.join(name)))?;
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            for (name, (file, len, rows, data_bytes)) in &touched {
                if let Err(e) = file.set_len(*len) {
                    warn!(segment = %name, error = %e, "cannot truncate spool segment after a failed append");
                }
                if let Some(segment) = st.open.values_mut().find(|s| &s.name == name) {
                    segment.len = *len;
                    segment.rows = *rows;
                    segment.data_bytes = *data_bytes;
                }
                if let Some(segment) = to_seal.iter_mut().find(|s| &s.name == name) {
                    segment.len = *len;
                    segment.rows = *rows;
                }
            }
            for segment in to_seal {
                if segment.rows == 0 {
                    let _ = fs::remove_file(self.dir.join(format!("{}.open", segment.name)));
                } else {
                    self.seal(&mut st, segment);
                }
            }
            return Err(error);
        }
        st.ids.extend(new_ids);
        st.bytes += written;
        outcome.sealed = !to_seal.is_empty();
        for segment in to_seal {
            self.seal(&mut st, segment);
        }
        if outcome.sealed {
            self.sync_dir()?;
        }
        Ok(outcome)
    }

    fn create_segment(&self, st: &mut State, columns: &[String]) -> Result<OpenSegment, SpoolError> {
        let name = format!("{:016}", st.next_seq);
        st.next_seq += 1;
        let path = self.dir.join(format!("{name}.open"));
        let mut file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io_err("create", &path))?;
        let mut header = b"#".to_vec();
        // A Vec<String> always serializes.
        let _ = serde_json::to_writer(&mut header, columns);
        header.push(b'\n');
        file.write_all(&header).map_err(io_err("write", &path))?;
        if self.sync == SyncMode::Always {
            file.sync_data().map_err(io_err("sync", &path))?;
            self.sync_dir()?;
        }
        st.bytes += header.len() as u64;
        Ok(OpenSegment { name, file, rows: 0, data_bytes: 0, len: header.len() as u64, opened: Instant::now() })
    }

    /// Queues a full or lingering segment for its insert, renamed `.ready`. Its rows are
    /// already acked, so it is queued even when the rename fails: it is then inserted
    /// from its `.open` file (which a restart would also recover and insert).
    fn seal(&self, st: &mut State, segment: OpenSegment) {
        let from = self.dir.join(format!("{}.open", segment.name));
        let to = self.dir.join(format!("{}.ready", segment.name));
        let path = match fs::rename(&from, &to) {
            Ok(()) => to,
            Err(e) => {
                warn!(segment = %from.display(), error = %e, "cannot rename a sealed spool segment to .ready; inserting it from its .open file");
                from
            }
        };
        st.ready.push_back(SealedSegment { name: segment.name, path, recovered: false });
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        if self.sync == SyncMode::Always {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err("sync", &self.dir))?;
        }
        Ok(())
    }

    /// Seals open segments whose first row is at least `linger` old (all with `None`).
    /// Returns whether any was sealed.
    pub fn seal_lingering(&self, linger: Option<Duration>) -> Result<bool, SpoolError> {
        let mut st = self.lock();
        let keys: Vec<Vec<String>> = st
            .open
            .iter()
            .filter(|(_, s)| s.rows > 0 && linger.is_none_or(|l| s.opened.elapsed() >= l))
            .map(|(k, _)| k.clone())
            .collect();
        let sealed = !keys.is_empty();
        for key in keys {
            if let Some(segment) = st.open.remove(&key) {
                self.seal(&mut st, segment);
            }
        }
        if sealed {
            self.sync_dir()?;
        }
        Ok(sealed)
    }

    /// When the oldest open segment with rows reaches `linger`.
    pub fn next_deadline(&self, linger: Duration) -> Option<Instant> {
        self.lock().open.values().filter(|s| s.rows > 0).map(|s| s.opened + linger).min()
    }

    /// The oldest sealed segment.
    pub fn front(&self) -> Option<SealedSegment> {
        self.lock().ready.front().cloned()
    }

    /// Reads a sealed segment back.
    pub fn load(&self, segment: &SealedSegment) -> Result<LoadedSegment, SpoolError> {
        load_file(segment.clone())
    }

    /// Marks a segment whose rows are in ClickHouse (or dead-lettered) as done: it is
    /// renamed `.done` (the directory synced, so a power loss cannot bring it back as
    /// `.ready` for a second insert), leaves the insert queue and joins the dedup ledger
    /// (the oldest `.done` files are deleted).
    ///
    /// On error the segment stays queued and the call can be repeated: a repeat after
    /// the rename itself succeeded, or after the segment was completed, is not an error.
    pub fn complete(&self, loaded: &LoadedSegment) -> Result<(), SpoolError> {
        let mut st = self.lock();
        if !st.ready.iter().any(|s| s.name == loaded.segment.name) {
            return Ok(());
        }
        let path = &loaded.segment.path;
        let done = path.with_extension("done");
        let size = fs::metadata(path).or_else(|_| fs::metadata(&done)).map(|m| m.len()).unwrap_or(0);
        match fs::rename(path, &done) {
            Ok(()) => {}
            // An earlier attempt renamed it, then failed to sync the directory.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && done.is_file() => {}
            Err(e) => return Err(SpoolError::Io { what: "complete", path: path.clone(), source: e }),
        }
        self.sync_dir()?;
        st.ready.retain(|s| s.name != loaded.segment.name);
        for id in &loaded.ids {
            st.ids.remove(id);
        }
        st.bytes = st.bytes.saturating_sub(size);
        st.recent.extend(loaded.ids.iter().copied());
        st.done.push_back((loaded.segment.name.clone(), loaded.ids.clone()));
        self.trim_done(&mut st);
        Ok(())
    }

    /// Deletes the oldest `.done` segments beyond those needed to hold `dedup_rows` rows.
    fn trim_done(&self, st: &mut State) {
        let mut kept: usize = st.done.iter().map(|(_, ids)| ids.len()).sum();
        while let Some((name, rows)) = st.done.front().map(|(name, ids)| (name.clone(), ids.len())) {
            if kept.saturating_sub(rows) < self.dedup_rows {
                break;
            }
            let path = self.dir.join(format!("{name}.done"));
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(segment = %path.display(), error = %e, "cannot delete a done spool segment");
                    break;
                }
            }
            kept -= rows;
            if let Some((_, ids)) = st.done.pop_front() {
                for id in ids {
                    st.recent.remove(&id);
                }
            }
        }
    }

    /// Ids of earlier runs still checked against redeliveries.
    pub fn ledger_len(&self) -> usize {
        self.lock().ledger.len()
    }

    /// Whether nothing waits in the spool.
    pub fn is_empty(&self) -> bool {
        let st = self.lock();
        st.ready.is_empty() && st.open.values().all(|s| s.rows == 0)
    }
}

fn write_segment(dir: &Path, segment: &mut OpenSegment, data: &[u8]) -> Result<(), SpoolError> {
    segment.file.write_all(data).map_err(io_err("write", &dir.join(format!("{}.open", segment.name))))?;
    segment.len += data.len() as u64;
    Ok(())
}

/// Splits one spool line into its id and row; `None` when it is not a complete line.
fn parse_line(line: &[u8]) -> Option<(u128, &[u8])> {
    if line.len() < 34 || line[32] != b' ' {
        return None;
    }
    let id = u128::from_str_radix(std::str::from_utf8(&line[..32]).ok()?, 16).ok()?;
    let row = &line[33..];
    serde_json::from_slice::<serde::de::IgnoredAny>(row).ok()?;
    Some((id, row))
}

/// Truncates a torn tail off an `.open` segment; returns whether it holds any row.
fn repair(path: &Path) -> Result<bool, SpoolError> {
    let data = fs::read(path).map_err(io_err("read", path))?;
    let Some(header_end) = data.iter().position(|&b| b == b'\n') else { return Ok(false) };
    if data.first() != Some(&b'#') || serde_json::from_slice::<Vec<String>>(&data[1..header_end]).is_err() {
        return Ok(false);
    }
    let mut good = header_end + 1;
    let mut rows = 0;
    while good < data.len() {
        let Some(end) = data[good..].iter().position(|&b| b == b'\n') else { break };
        if parse_line(&data[good..good + end]).is_none() {
            break;
        }
        good += end + 1;
        rows += 1;
    }
    if good < data.len() {
        warn!(segment = %path.display(), dropped_bytes = data.len() - good, "truncating a torn spool tail (those records were never acked)");
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(good as u64).and_then(|()| f.sync_all()))
            .map_err(io_err("truncate", path))?;
    }
    Ok(rows > 0)
}

fn load_file(segment: SealedSegment) -> Result<LoadedSegment, SpoolError> {
    let data = fs::read(&segment.path).map_err(io_err("read", &segment.path))?;
    let header_end = data.iter().position(|&b| b == b'\n').ok_or_else(|| SpoolError::Corrupt(segment.path.clone()))?;
    let columns: Vec<String> = data
        .first()
        .filter(|&&b| b == b'#')
        .and_then(|_| serde_json::from_slice(&data[1..header_end]).ok())
        .ok_or_else(|| SpoolError::Corrupt(segment.path.clone()))?;
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for line in data[header_end + 1..].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Some((id, row)) => {
                ids.push(id);
                rows.push(row.to_vec());
            }
            None => warn!(segment = %segment.path.display(), "skipping a malformed spool line"),
        }
    }
    Ok(LoadedSegment { segment, columns, rows, ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(dir: &Path, max_rows: usize) -> Spool {
        let config = SpoolConfig { dir: dir.to_path_buf(), ..SpoolConfig::default() };
        let batch = InsertBatchConfig { max_rows, ..InsertBatchConfig::default() };
        Spool::open(dir.to_path_buf(), &config, batch).expect("open")
    }

    fn rows(ids: std::ops::Range<u128>) -> RowGroup {
        (vec!["a".into()], ids.map(|i| (i, format!("{{\"a\":{i}}}").into_bytes())).collect())
    }

    #[test]
    fn record_ids_tell_a_reused_offset_from_a_redelivery() {
        let id = record_id("/default/t:7", 1_700_000_000_000, "producer-a");
        assert_eq!(id, record_id("/default/t:7", 1_700_000_000_000, "producer-a"), "a redelivery keeps its id");
        assert_ne!(id, record_id("/default/t:8", 1_700_000_000_000, "producer-a"));
        assert_ne!(id, record_id("/default/t:7", 1_700_000_000_001, "producer-a"), "offset reused later");
        assert_ne!(id, record_id("/default/t:7", 1_700_000_000_000, "producer-b"), "offset reused by another producer");
    }

    #[test]
    fn full_segments_are_sealed_and_duplicates_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spool(dir.path(), 3);
        let out = s.append(vec![rows(0..4)]).expect("append");
        assert_eq!(out, AppendOutcome { appended: 4, duplicates: 0, sealed: true });
        let out = s.append(vec![rows(2..5)]).expect("append");
        assert_eq!(out.appended, 1);
        assert_eq!(out.duplicates, 2);
        let front = s.front().expect("sealed");
        let loaded = s.load(&front).expect("load");
        assert_eq!(loaded.columns, vec!["a"]);
        assert_eq!(loaded.rows.len(), 3);
        assert_eq!(loaded.body(0..2), b"{\"a\":0}\n{\"a\":1}\n");
        s.complete(&loaded).expect("complete");
        assert!(s.front().is_none());
        assert_eq!(s.pending_ids(), 2);
    }

    #[test]
    fn done_segments_dedup_redeliveries_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = spool(dir.path(), 3);
            s.append(vec![rows(0..3)]).expect("append");
            let loaded = s.load(&s.front().expect("sealed")).expect("load");
            assert!(!loaded.segment.recovered);
            s.complete(&loaded).expect("complete");
            s.append(vec![rows(3..5)]).expect("append");
        }
        let s = spool(dir.path(), 3);
        // 3 rows done, 2 pending (their .open segment is sealed at recovery).
        assert_eq!(s.pending_ids(), 2);
        assert_eq!(s.ledger_len(), 5);
        let out = s.append(vec![rows(0..6)]).expect("append");
        assert_eq!((out.appended, out.duplicates), (1, 5));
        let recovered = s.load(&s.front().expect("recovered")).expect("load");
        assert!(!recovered.segment.recovered, "an .open segment sealed at start was never inserted");
    }

    #[test]
    fn tokens_are_deterministic_and_batch_columns_are_added() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spool(dir.path(), 2);
        s.append(vec![rows(0..2)]).expect("append");
        let a = s.load(&s.front().expect("sealed")).expect("load");
        let b = s.load(&s.front().expect("sealed")).expect("load");
        assert_eq!(a.token("db.t"), b.token("db.t"));
        assert_ne!(a.token("db.t"), a.token("db.u"));
        let body = json_each_row(&[b"{}".to_vec(), b"{\"a\":1}".to_vec()], Some(("_batch", "t1")));
        assert_eq!(body, b"{\"_batch\":\"t1\"}\n{\"a\":1,\"_batch\":\"t1\"}\n");
    }

    #[test]
    fn a_restart_recovers_open_segments_without_their_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = spool(dir.path(), 100);
            s.append(vec![rows(0..5)]).expect("append");
        }
        let open = dir.path().join(format!("{:016}.open", 0));
        let mut f = OpenOptions::new().append(true).open(&open).expect("open");
        f.write_all(b"0000000000000000000000000000000a {\"a\":").expect("torn write");
        drop(f);
        let s = spool(dir.path(), 100);
        assert_eq!(s.pending_ids(), 5);
        let loaded = s.load(&s.front().expect("recovered")).expect("load");
        assert_eq!(loaded.rows.len(), 5);
        assert_eq!(s.append(vec![rows(3..7)]).expect("append").duplicates, 2);
    }

    #[test]
    fn complete_can_be_repeated_after_a_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spool(dir.path(), 3);
        s.append(vec![rows(0..3)]).expect("append");
        let loaded = s.load(&s.front().expect("sealed")).expect("load");
        // A directory in the way makes the rename fail, even for root.
        let done = dir.path().join(format!("{:016}.done", 0));
        fs::create_dir_all(done.join("blocker")).expect("blocker");
        assert!(s.complete(&loaded).is_err());
        assert_eq!(
            s.front().map(|f| f.name),
            Some(loaded.segment.name.clone()),
            "still queued after a failed complete"
        );
        assert_eq!(s.pending_ids(), 3);
        fs::remove_dir_all(&done).expect("remove blocker");
        s.complete(&loaded).expect("complete on retry");
        assert!(s.front().is_none());
        assert_eq!(s.pending_ids(), 0);
        assert!(done.is_file());
        // A repeat (e.g. after a retry whose first attempt did its work) changes nothing.
        s.complete(&loaded).expect("repeat");
        assert_eq!(s.append(vec![rows(0..3)]).expect("append").duplicates, 3);
    }

    #[test]
    fn complete_after_the_rename_already_happened_finishes_the_bookkeeping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spool(dir.path(), 2);
        s.append(vec![rows(0..2)]).expect("append");
        let loaded = s.load(&s.front().expect("sealed")).expect("load");
        fs::rename(&loaded.segment.path, loaded.segment.path.with_extension("done")).expect("rename");
        s.complete(&loaded).expect("complete");
        assert!(s.front().is_none());
        assert_eq!(s.pending_ids(), 0);
        assert_eq!(s.append(vec![rows(0..2)]).expect("append").duplicates, 2, "its ids joined the ledger");
    }

    #[test]
    fn a_segment_whose_seal_rename_fails_stays_queued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spool(dir.path(), 3);
        let ready = dir.path().join(format!("{:016}.ready", 0));
        fs::create_dir_all(ready.join("blocker")).expect("blocker");
        let out = s.append(vec![rows(0..4)]).expect("rows are synced even if the rename fails");
        assert!(out.sealed);
        let front = s.front().expect("the full segment is queued");
        assert_eq!(front.path.extension().and_then(|e| e.to_str()), Some("open"));
        let loaded = s.load(&front).expect("load");
        assert_eq!(loaded.rows.len(), 3);
        s.complete(&loaded).expect("complete");
        assert!(dir.path().join(format!("{:016}.done", 0)).is_file());
        assert_eq!(s.pending_ids(), 1);
    }

    #[test]
    fn an_unreadable_done_segment_does_not_stop_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = spool(dir.path(), 2);
            s.append(vec![rows(0..2)]).expect("append");
            let loaded = s.load(&s.front().expect("sealed")).expect("load");
            s.complete(&loaded).expect("complete");
            s.append(vec![rows(2..3)]).expect("append");
        }
        fs::write(dir.path().join(format!("{:016}.done", 7)), b"not a spool segment").expect("corrupt");
        let s = spool(dir.path(), 2);
        assert_eq!(s.pending_ids(), 1, "the pending row is recovered");
        assert_eq!(s.ledger_len(), 3, "the readable segments are in the ledger");
        assert_eq!(s.append(vec![rows(0..4)]).expect("append").appended, 1);
        assert!(s.front().is_some_and(|f| f.name.as_str() < "0000000000000007"));
        // New segments are numbered after the corrupt one: it is never overwritten.
        s.seal_lingering(None).expect("seal");
        assert!(dir.path().join(format!("{:016}.ready", 8)).is_file());
    }

    #[test]
    fn lingering_segments_are_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spool(dir.path(), 100);
        s.append(vec![rows(0..2)]).expect("append");
        assert!(s.front().is_none());
        assert!(s.next_deadline(Duration::from_secs(1)).is_some());
        assert!(!s.seal_lingering(Some(Duration::from_secs(60))).expect("seal"));
        assert!(s.seal_lingering(Some(Duration::ZERO)).expect("seal"));
        assert!(s.front().is_some());
        assert!(!s.is_empty());
    }
}

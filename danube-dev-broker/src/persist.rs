//! Append-only persistence of broker state in a data directory.
//!
//! Two files are written by one background thread, so the hot paths only
//! enqueue a record:
//! - `messages.log`: every published message, as a length-delimited protobuf
//!   `StreamMessage` carrying its topic and offset in `msg_id`;
//! - `meta.jsonl`: one JSON record per line for namespaces, topics,
//!   subscriptions, acknowledgements, dispatch-window overrides, producers,
//!   consumers and schemas.
//!
//! Files are never compacted; this is a development broker. Records are
//! flushed whenever the queue runs empty, and [`Persist::flush`] waits for it.
//! A truncated last record (crash while writing) is ignored at load.

use crate::error::BrokerError;
use crate::message::LogEntry;
use crate::schema::SchemaVersionRecord;
use danube_core::proto::StreamMessage;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

const MESSAGES_FILE: &str = "messages.log";
const META_FILE: &str = "meta.jsonl";

/// A line of `meta.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum MetaRecord {
    Namespace { name: String },
    Topic { name: String, reliable: bool },
    Subscription { topic: String, name: String, sub_type: i32, start: u64 },
    Ack { topic: String, sub: String, offset: u64 },
    MaxUnacked { topic: String, sub: String, n: usize },
    Producer { id: u64, topic: String, name: String },
    Consumer { id: u64, topic: String, sub: String, name: String, key_filters: Vec<String> },
    Schema(SchemaVersionRecord),
    CompatMode { subject: String, mode: String },
}

enum Op {
    Message(Arc<LogEntry>),
    Meta(MetaRecord),
    Flush(mpsc::Sender<()>),
}

/// Everything read back from a data directory.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub messages: Vec<LogEntry>,
    pub meta: Vec<MetaRecord>,
}

/// Handle on the writer thread.
#[derive(Debug)]
pub(crate) struct Persist {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Message(e) => write!(f, "Message({}@{})", e.message.topic, e.message.offset),
            Op::Meta(m) => write!(f, "Meta({m:?})"),
            Op::Flush(_) => f.write_str("Flush"),
        }
    }
}

fn data_err(path: &Path, source: std::io::Error) -> BrokerError {
    BrokerError::DataDir { path: path.to_path_buf(), source }
}

impl Persist {
    /// Reads what `dir` holds (creating it if needed) and opens it for appending.
    pub(crate) fn open(dir: &Path) -> Result<(Persist, Loaded), BrokerError> {
        std::fs::create_dir_all(dir).map_err(|e| data_err(dir, e))?;
        let msg_path = dir.join(MESSAGES_FILE);
        let meta_path = dir.join(META_FILE);
        let loaded = Loaded { messages: read_messages(&msg_path)?, meta: read_meta(&meta_path)? };
        let open = |p: &PathBuf| OpenOptions::new().create(true).append(true).open(p).map_err(|e| data_err(p, e));
        let msg_file = open(&msg_path)?;
        let meta_file = open(&meta_path)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("danube-dev-broker-persist".into())
            .spawn(move || writer_loop(rx, msg_file, meta_file))
            .map_err(|e| data_err(dir, e))?;
        Ok((Persist { tx: Some(tx), thread: Some(thread) }, loaded))
    }

    fn send(&self, op: Op) {
        if let Some(tx) = &self.tx {
            if tx.send(op).is_err() {
                tracing::error!("persistence thread is gone, record lost");
            }
        }
    }

    /// Queues a published message.
    pub(crate) fn message(&self, entry: Arc<LogEntry>) {
        self.send(Op::Message(entry));
    }

    /// Queues a metadata record.
    pub(crate) fn meta(&self, record: MetaRecord) {
        self.send(Op::Meta(record));
    }

    /// Waits (blocking) until everything queued so far is written and flushed.
    pub(crate) fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        let _ = rx.recv();
    }
}

impl Drop for Persist {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(rx: mpsc::Receiver<Op>, msg_file: File, meta_file: File) {
    let mut msgs = BufWriter::new(msg_file);
    let mut meta = BufWriter::new(meta_file);
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut waiters = Vec::new();
        let mut op = Some(first);
        while let Some(current) = op.take() {
            let res = match current {
                Op::Message(entry) => {
                    buf.clear();
                    entry
                        .to_log_record()
                        .encode_length_delimited(&mut buf)
                        .map_err(std::io::Error::other)
                        .and_then(|_| msgs.write_all(&buf))
                }
                Op::Meta(record) => serde_json::to_writer(&mut meta, &record)
                    .map_err(std::io::Error::other)
                    .and_then(|_| meta.write_all(b"\n")),
                Op::Flush(w) => {
                    waiters.push(w);
                    Ok(())
                }
            };
            if let Err(e) = res {
                tracing::error!(error = %e, "cannot write to the data directory");
            }
            op = rx.try_recv().ok();
        }
        if let Err(e) = msgs.flush().and_then(|_| meta.flush()) {
            tracing::error!(error = %e, "cannot flush the data directory");
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
    let _ = msgs.flush();
    let _ = meta.flush();
}

fn read_messages(path: &Path) -> Result<Vec<LogEntry>, BrokerError> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(|e| data_err(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(data_err(path, e)),
    }
    let mut out = Vec::new();
    let mut rest: &[u8] = &data;
    while !rest.is_empty() {
        match StreamMessage::decode_length_delimited(&mut rest) {
            Ok(record) => match LogEntry::from_log_record(record) {
                Some(entry) => out.push(entry),
                None => {
                    return Err(BrokerError::Corrupt {
                        path: path.to_path_buf(),
                        reason: "message record without msg_id".into(),
                    })
                }
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring truncated tail of message log");
                break;
            }
        }
    }
    Ok(out)
}

fn read_meta(path: &Path) -> Result<Vec<MetaRecord>, BrokerError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(data_err(path, e)),
    };
    let mut out = Vec::new();
    let lines: Vec<String> = BufReader::new(f).lines().collect::<Result<_, _>>().map_err(|e| data_err(path, e))?;
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<MetaRecord>(line) {
            Ok(r) => out.push(r),
            Err(e) if i == last => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring truncated last metadata line");
            }
            Err(e) => {
                return Err(BrokerError::Corrupt { path: path.to_path_buf(), reason: format!("line {}: {e}", i + 1) })
            }
        }
    }
    Ok(out)
}

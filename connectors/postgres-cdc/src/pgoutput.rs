//! Decoder for the `pgoutput` logical replication protocol (version 1).
//!
//! Message layout as documented in the PostgreSQL manual, "Logical Replication Message
//! Formats". Every read is bounds-checked: malformed input is a [`DecodeError`], never a
//! panic (proptest in `tests/cdc/decoder.rs` feeds it arbitrary bytes).

use bytes::Bytes;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field of `what`.
    #[error("pgoutput message truncated while reading {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// An unknown message type byte.
    #[error("unknown pgoutput message type {0:#04x}")]
    UnknownMessage(u8),
    /// An unknown tuple column kind or tuple marker.
    #[error("unexpected byte {byte:#04x} in {what}")]
    Unexpected {
        /// Where it was found.
        what: &'static str,
        /// The byte.
        byte: u8,
    },
    /// A string was not valid UTF-8.
    #[error("invalid UTF-8 in {what}")]
    Utf8 {
        /// The field.
        what: &'static str,
    },
    /// A length or count was negative.
    #[error("negative length in {what}")]
    Negative {
        /// The field.
        what: &'static str,
    },
}

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

/// A relation (table) description, sent before the first change of a table in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub oid: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in table order.
    pub columns: Vec<Column>,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value (not sent).
    UnchangedToast,
    /// Text representation.
    Text(Bytes),
    /// Binary representation (only with the `binary` option).
    Binary(Bytes),
}

/// A row image.
pub type Tuple = Vec<TupleValue>;

/// A decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Transaction start.
    Begin {
        /// LSN of the commit record.
        final_lsn: u64,
        /// Commit time (microseconds since 2000-01-01).
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// Transaction end.
    Commit {
        /// Flags (unused).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End LSN of the transaction.
        end_lsn: u64,
        /// Commit time (microseconds since 2000-01-01).
        commit_time: i64,
    },
    /// Replication origin of the transaction.
    Origin {
        /// Commit LSN on the origin server.
        commit_lsn: u64,
        /// Origin name.
        name: String,
    },
    /// Table description.
    Relation(Relation),
    /// Data type description.
    Type {
        /// Type OID.
        oid: u32,
        /// Schema name.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// A new row.
    Insert {
        /// Relation OID.
        relation: u32,
        /// The row.
        new: Tuple,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        relation: u32,
        /// The old key (`K`) or whole old row (`O`, replica identity full), if sent.
        old: Option<(u8, Tuple)>,
        /// The new row.
        new: Tuple,
    },
    /// A removed row.
    Delete {
        /// Relation OID.
        relation: u32,
        /// The old key (`K`) or whole old row (`O`).
        old: (u8, Tuple),
    },
    /// Tables truncated.
    Truncate {
        /// Option bits: 1 = CASCADE, 2 = RESTART IDENTITY.
        options: u8,
        /// Relation OIDs.
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage {
        /// Whether it was emitted transactionally.
        transactional: bool,
        /// Its LSN.
        lsn: u64,
        /// Prefix.
        prefix: String,
        /// Content.
        content: Bytes,
    },
}

/// Decodes one `pgoutput` message.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { data, pos: 0 };
    let tag = r.u8("message type")?;
    let message = match tag {
        b'B' => {
            Message::Begin { final_lsn: r.u64("begin lsn")?, commit_time: r.i64("begin time")?, xid: r.u32("xid")? }
        }
        b'C' => Message::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit lsn")?,
            end_lsn: r.u64("end lsn")?,
            commit_time: r.i64("commit time")?,
        },
        b'O' => Message::Origin { commit_lsn: r.u64("origin lsn")?, name: r.string("origin name")? },
        b'R' => {
            let oid = r.u32("relation oid")?;
            let namespace = r.string("relation namespace")?;
            let name = r.string("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let count = r.count16("column count")?;
            let mut columns = Vec::with_capacity(count.min(1600));
            for _ in 0..count {
                columns.push(Column {
                    key: r.u8("column flags")? & 1 == 1,
                    name: r.string("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column typmod")?,
                });
            }
            Message::Relation(Relation { oid, namespace, name, replica_identity, columns })
        }
        b'Y' => Message::Type {
            oid: r.u32("type oid")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation = r.u32("insert relation")?;
            expect(r.u8("insert marker")?, b'N', "insert marker")?;
            Message::Insert { relation, new: r.tuple()? }
        }
        b'U' => {
            let relation = r.u32("update relation")?;
            let mut marker = r.u8("update marker")?;
            let old = if marker == b'K' || marker == b'O' {
                let old = (marker, r.tuple()?);
                marker = r.u8("update new marker")?;
                Some(old)
            } else {
                None
            };
            expect(marker, b'N', "update new marker")?;
            Message::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32("delete relation")?;
            let marker = r.u8("delete marker")?;
            if marker != b'K' && marker != b'O' {
                return Err(DecodeError::Unexpected { what: "delete marker", byte: marker });
            }
            Message::Delete { relation, old: (marker, r.tuple()?) }
        }
        b'T' => {
            let count = r.i32("truncate count")?;
            let count = usize::try_from(count).map_err(|_| DecodeError::Negative { what: "truncate count" })?;
            let options = r.u8("truncate options")?;
            let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relations.push(r.u32("truncate relation")?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message lsn")?;
            let prefix = r.string("message prefix")?;
            let len = r.len32("message length")?;
            Message::LogicalMessage {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(len, "message content")?,
            }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    Ok(message)
}

fn expect(byte: u8, wanted: u8, what: &'static str) -> Result<(), DecodeError> {
    if byte == wanted {
        Ok(())
    } else {
        Err(DecodeError::Unexpected { what, byte })
    }
}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated { what })?;
        let slice = self.data.get(self.pos..end).ok_or(DecodeError::Truncated { what })?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = i16::from_be_bytes(self.array(what)?);
        usize::try_from(n).map_err(|_| DecodeError::Negative { what })
    }

    fn len32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(self.i32(what)?).map_err(|_| DecodeError::Negative { what })
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.data.slice(start..start + n))
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self.data.get(self.pos..).ok_or(DecodeError::Truncated { what })?;
        let end = rest.iter().position(|b| *b == 0).ok_or(DecodeError::Truncated { what })?;
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::Utf8 { what })?.to_string();
        self.pos += end + 1;
        Ok(text)
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.count16("tuple column count")?;
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let value = match self.u8("tuple column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.len32("text value length")?;
                    TupleValue::Text(self.bytes(len, "text value")?)
                }
                b'b' => {
                    let len = self.len32("binary value length")?;
                    TupleValue::Binary(self.bytes(len, "binary value")?)
                }
                other => return Err(DecodeError::Unexpected { what: "tuple column kind", byte: other }),
            };
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert_message() -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend(16384u32.to_be_bytes());
        m.push(b'N');
        m.extend(3i16.to_be_bytes());
        m.push(b't');
        m.extend(1i32.to_be_bytes());
        m.push(b'7');
        m.push(b'n');
        m.push(b'u');
        m
    }

    #[test]
    fn insert_with_text_null_and_unchanged_toast_decodes() {
        let message = decode(&Bytes::from(insert_message())).expect("decodes");
        assert_eq!(
            message,
            Message::Insert {
                relation: 16384,
                new: vec![TupleValue::Text(Bytes::from_static(b"7")), TupleValue::Null, TupleValue::UnchangedToast]
            }
        );
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error() {
        let full = insert_message();
        for len in 0..full.len() {
            assert!(decode(&Bytes::from(full[..len].to_vec())).is_err(), "prefix of {len} bytes must fail");
        }
    }

    #[test]
    fn relation_message_decodes_columns_and_key_flags() {
        let mut m = vec![b'R'];
        m.extend(42u32.to_be_bytes());
        m.extend(b"public\0users\0");
        m.push(b'd');
        m.extend(2i16.to_be_bytes());
        m.push(1);
        m.extend(b"id\0");
        m.extend(23u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        m.push(0);
        m.extend(b"name\0");
        m.extend(25u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&Bytes::from(m)).expect("decodes") else { panic!("not a relation") };
        assert_eq!(rel.namespace, "public");
        assert_eq!(rel.name, "users");
        assert!(rel.columns[0].key);
        assert!(!rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 25);
    }

    #[test]
    fn unknown_type_and_negative_lengths_are_errors() {
        assert_eq!(decode(&Bytes::from_static(b"Z")), Err(DecodeError::UnknownMessage(b'Z')));
        let mut m = vec![b'T'];
        m.extend((-1i32).to_be_bytes());
        m.push(0);
        assert!(matches!(decode(&Bytes::from(m)), Err(DecodeError::Negative { .. })));
    }
}

//! A read-mostly view of a Kafka record batch (magic v2) header.
//!
//! The node stores producer batches exactly as received; it only needs the
//! fixed-position header fields to validate a batch, assign offsets and index
//! timestamps. Records inside a batch are decoded with `kafka-protocol`'s
//! `RecordBatchDecoder` where the node has to look at them (timestamp lookup).

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

use super::codec;
pub use super::validate::RecordError;

/// Size of the v2 batch header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
/// The bytes before `batchLength` counts: baseOffset (8) + batchLength (4).
pub const LOG_OVERHEAD: usize = 12;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a batch was refused. Each maps onto one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated or its length field is inconsistent")]
    Truncated,
    #[error("record batch magic {0} is not supported (only v2 batches are)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch of {size} bytes is larger than max.message.bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("record batch has an invalid record count or offset delta")]
    InvalidCount,
    #[error("record batch uses unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("a produce request must carry exactly one record batch per partition")]
    NotOneBatch,
    #[error("record batch cannot be decoded: {0}")]
    Undecodable(String),
    /// Records that break the topic's rules, each named by its index.
    #[error("{} record(s) refused, the first ({}): {}", .0.len(), .0[0].index, .0[0].message)]
    InvalidRecords(Vec<RecordError>),
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Header fields of one v2 batch. Constructed only through [`Header::parse`],
/// which checks that the slice holds at least a whole header.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a>(&'a [u8]);

impl<'a> Header<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Self, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::Truncated);
        }
        Ok(Header(b))
    }
    pub fn base_offset(&self) -> i64 {
        i64_at(self.0, BASE_OFFSET)
    }
    pub fn batch_length(&self) -> i32 {
        i32_at(self.0, BATCH_LENGTH)
    }
    pub fn leader_epoch(&self) -> i32 {
        i32_at(self.0, LEADER_EPOCH)
    }
    pub fn magic(&self) -> i8 {
        self.0[MAGIC] as i8
    }
    pub fn crc(&self) -> u32 {
        u32::from_be_bytes(self.0[CRC..CRC + 4].try_into().expect("4 bytes"))
    }
    pub fn attributes(&self) -> i16 {
        i16_at(self.0, ATTRIBUTES)
    }
    pub fn compression(&self) -> i16 {
        self.attributes() & COMPRESSION_MASK
    }
    pub fn log_append_time(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_BIT != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }
    pub fn last_offset_delta(&self) -> i32 {
        i32_at(self.0, LAST_OFFSET_DELTA)
    }
    pub fn base_timestamp(&self) -> i64 {
        i64_at(self.0, BASE_TIMESTAMP)
    }
    pub fn max_timestamp(&self) -> i64 {
        i64_at(self.0, MAX_TIMESTAMP)
    }
    pub fn producer_id(&self) -> i64 {
        i64_at(self.0, PRODUCER_ID)
    }
    pub fn producer_epoch(&self) -> i16 {
        i16_at(self.0, PRODUCER_EPOCH)
    }
    pub fn base_sequence(&self) -> i32 {
        i32_at(self.0, BASE_SEQUENCE)
    }
    pub fn record_count(&self) -> i32 {
        i32_at(self.0, RECORD_COUNT)
    }
    /// Offset of the last record the batch covers.
    pub fn last_offset(&self) -> i64 {
        // Saturating: a base offset from a client (or a corrupt batch on
        // disk) may be anything.
        self.base_offset()
            .saturating_add(i64::from(self.last_offset_delta()))
    }
}

/// CRC32C over everything from the attributes to the end of the batch, as the
/// v2 format defines it (base offset, length, leader epoch and magic are not
/// covered, which is what lets a broker rewrite them without recomputing it).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Splits the `records` field of a produce request into batches and validates
/// each one: framing, magic, CRC, size against `max_message_bytes`, counts.
pub fn split_and_validate(
    records: &Bytes,
    max_message_bytes: usize,
) -> Result<Vec<Bytes>, BatchError> {
    split(records, max_message_bytes, false)
}

/// [`split_and_validate`] for batches a leader sent to a follower, which
/// may hold fewer records than their offsets span, or none (what compaction
/// leaves, see [`emptied`]).
pub fn split_replicated(records: &Bytes) -> Result<Vec<Bytes>, BatchError> {
    split(records, usize::MAX, true)
}

fn split(
    records: &Bytes,
    max_message_bytes: usize,
    allow_empty: bool,
) -> Result<Vec<Bytes>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < LOG_OVERHEAD + 5 {
            return Err(BatchError::Truncated);
        }
        let magic = rest[MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let length = i32_at(rest, BATCH_LENGTH);
        if length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::Truncated);
        }
        let size = LOG_OVERHEAD + length as usize;
        if size > rest.len() {
            return Err(BatchError::Truncated);
        }
        let batch = &rest[..size];
        validate_one(batch, max_message_bytes, allow_empty)?;
        out.push(records.slice(pos..pos + size));
        pos += size;
    }
    if out.is_empty() {
        return Err(BatchError::Truncated);
    }
    Ok(out)
}

fn validate_one(
    batch: &[u8],
    max_message_bytes: usize,
    allow_empty: bool,
) -> Result<(), BatchError> {
    let h = Header::parse(batch)?;
    let computed = compute_crc(batch);
    if computed != h.crc() {
        return Err(BatchError::CrcMismatch {
            stored: h.crc(),
            computed,
        });
    }
    if batch.len() > max_message_bytes {
        return Err(BatchError::TooLarge {
            size: batch.len(),
            max: max_message_bytes,
        });
    }
    if h.compression() > 4 {
        return Err(BatchError::UnknownCompression(h.compression()));
    }
    let count = h.record_count();
    let delta = h.last_offset_delta();
    // Compacted data (`allow_empty`: what replicas copy) may hold fewer
    // records than its offsets span, none at all in an emptied batch; a
    // produced batch holds exactly one record per offset.
    let fits = if allow_empty {
        delta >= 0 && (0..=delta.saturating_add(1)).contains(&count)
    } else {
        count > 0 && delta == count - 1
    };
    if !fits {
        return Err(BatchError::InvalidCount);
    }
    Ok(())
}

/// The batches of stored data read back (a fetch's records), split by
/// their length fields; stops at anything that is not a whole batch.
pub fn framed(records: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = records.get(pos..)?;
        if rest.len() < LOG_OVERHEAD {
            return None;
        }
        let length = usize::try_from(i32_at(rest, BATCH_LENGTH)).ok()?;
        let size = LOG_OVERHEAD.checked_add(length)?;
        if size > rest.len() || size < HEADER_LEN {
            return None;
        }
        let b = records.slice(pos..pos + size);
        pos += size;
        Some(b)
    })
}

/// Rewrites the fields a leader owns: base offset and partition leader epoch.
/// Neither is covered by the CRC.
pub fn assign(batch: &mut BytesMut, base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// A batch without records covering the same offsets as `stored` (legal in
/// v2 since KIP-98): what compaction leaves of a batch that ended the log
/// when every record in it went, so readers still reach the log end.
pub fn emptied(stored: &[u8]) -> BytesMut {
    let mut b = BytesMut::from(&stored[..HEADER_LEN]);
    let length = (HEADER_LEN - LOG_OVERHEAD) as i32;
    b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
    let attrs = i16_at(&b, ATTRIBUTES) & !COMPRESSION_MASK;
    b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
    b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&0i32.to_be_bytes());
    let crc = compute_crc(&b);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Marks the batch as `LogAppendTime` with the given time, as Kafka does for
/// topics with `message.timestamp.type=LogAppendTime`, and recomputes the CRC.
pub fn stamp_log_append_time(batch: &mut BytesMut, now_ms: i64) {
    let attrs = i16_at(batch, ATTRIBUTES) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The codec of a batch, as `kafka-protocol` names it.
pub fn codec(h: &Header<'_>) -> Compression {
    match h.compression() {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    }
}

/// The records of one stored or produced batch, decompressed into at most
/// `max_decompressed` bytes. Every count and length in the batch is checked
/// against the bytes present before anything is allocated for it.
pub fn decode_records(batch: &[u8], max_decompressed: usize) -> Result<Vec<Record>, BatchError> {
    decode_shared(&Bytes::copy_from_slice(batch), max_decompressed)
}

/// [`decode_records`] over a batch already in a shared buffer (a produce
/// request's): the records' keys and values point into it, nothing is
/// copied but what compression makes new.
pub fn decode_shared(batch: &Bytes, max_decompressed: usize) -> Result<Vec<Record>, BatchError> {
    let mut buf = batch.clone();
    let bounded = |payload: &mut Bytes, c: Compression| match c {
        // Uncompressed records are read where they are.
        Compression::None if payload.len() <= max_decompressed => Ok(payload.clone()),
        c => codec::decompress(c, payload, max_decompressed).map_err(anyhow::Error::from),
    };
    RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(bounded))
        .map(|set| set.records)
        .map_err(|e| BatchError::Undecodable(e.to_string()))
}

/// Sets the batch's max timestamp (a `CreateTime` batch whose header
/// disagrees with its records) and recomputes the CRC, as Kafka does.
pub fn set_max_timestamp(batch: &mut BytesMut, max_timestamp: i64) {
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Encodes `records` (taken from the batch `h`, some perhaps left out) as one
/// batch again with `compression`: same producer, epochs, attributes and
/// timestamp type; the records keep their offsets, so a batch missing some
/// starts at its first record and leaves gaps (log compaction).
pub fn rebuild(
    h: &Header<'_>,
    records: Vec<Record>,
    compression: Compression,
) -> Result<BytesMut, BatchError> {
    rebuild_spanning(h, records, compression, None)
}

/// [`rebuild`], keeping the batch's base offset and last offset (`span`,
/// inclusive) where the records no longer reach its ends: Kafka's cleaner
/// does so for every v2 batch it filters, so a producer's last sequence
/// stays readable from the header.
pub fn rebuild_spanning(
    h: &Header<'_>,
    mut records: Vec<Record>,
    compression: Compression,
    span: Option<(i64, i64)>,
) -> Result<BytesMut, BatchError> {
    if h.producer_id() < 0 {
        // Not idempotent: keep the base sequence at -1.
        if let Some(first) = records.first().map(|r| r.offset) {
            for r in &mut records {
                r.sequence = (r.offset - first) as i32 - 1;
            }
        }
    }
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    match span {
        Some(span) => RecordBatchEncoder::encode_spanning(&mut out, &records, &options, span),
        None => RecordBatchEncoder::encode(&mut out, &records, &options),
    }
    .map_err(|e| BatchError::Undecodable(format!("re-encoding: {e}")))?;
    if h.log_append_time() {
        stamp_log_append_time(&mut out, h.max_timestamp());
    }
    Ok(out)
}

/// A record as a non-idempotent client writes it: no producer, CreateTime,
/// its sequence following its offset (a batch's base sequence -1).
pub fn plain_record(
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        // The encoder keeps records with a constant offset - sequence in
        // one batch and derives the base sequence from the first.
        sequence: (offset as i32).wrapping_sub(1),
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

/// Encodes records as one v2 batch with `kafka-protocol`.
pub fn encode_v2(records: &[Record], compression: Compression) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    Ok(buf.freeze())
}

/// Encodes (key, value) records as one v2 batch with `kafka-protocol`, the
/// way a non-idempotent client would: offsets from 0, one timestamp.
pub fn encode_records(
    records: Vec<(Option<Bytes>, Option<Bytes>)>,
    timestamp: i64,
    compression: Compression,
) -> anyhow::Result<Bytes> {
    let recs: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| plain_record(i as i64, timestamp, key, value))
        .collect();
    encode_v2(&recs, compression)
}

/// Kafka's control record types (`ControlRecordType`): the key of the one
/// record in a transaction marker batch.
const CONTROL_ABORT: i16 = 0;
const CONTROL_COMMIT: i16 = 1;

/// A transaction marker (Kafka's `EndTransactionMarker`) as the control
/// batch a partition leader appends: one record whose key says commit or
/// abort and whose value carries the coordinator's epoch.
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> anyhow::Result<Bytes> {
    let kind = if commit {
        CONTROL_COMMIT
    } else {
        CONTROL_ABORT
    };
    let mut key = BytesMut::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = BytesMut::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Default::default(),
    };
    encode_v2(&[record], Compression::None)
}

/// What a control batch says: `Some(true)` a commit marker, `Some(false)`
/// an abort marker, `None` anything else (not a control batch, another
/// control record type, unreadable).
pub fn marker_of(batch: &[u8]) -> Option<bool> {
    let h = Header::parse(batch).ok()?;
    if !h.is_control() {
        return None;
    }
    let records = decode_records(batch, 1 << 16).ok()?;
    let key = records.first()?.key.as_ref()?;
    match i16::from_be_bytes([*key.get(2)?, *key.get(3)?]) {
        CONTROL_COMMIT => Some(true),
        CONTROL_ABORT => Some(false),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Compression, Record, TimestampType};

    /// A batch of (key, timestamp) records with values, offsets from 0.
    pub(crate) fn encode_with(
        records: Vec<(Option<String>, i64)>,
        compression: Compression,
    ) -> Bytes {
        let recs: Vec<Record> = records
            .into_iter()
            .enumerate()
            .map(|(i, (key, timestamp))| {
                let value = Some(Bytes::from(format!("value-{i}")));
                plain_record(i as i64, timestamp, key.map(Bytes::from), value)
            })
            .collect();
        encode_v2(&recs, compression).unwrap()
    }

    pub(crate) fn encode(records: usize, compression: Compression) -> Bytes {
        let recs: Vec<Record> = (0..records)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // Non-idempotent: base sequence -1 (the encoder derives it from
                // the first record, and keeps records with offset - sequence
                // constant in one batch).
                sequence: i as i32 - 1,
                timestamp: 1_000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("value-{i}"))),
                headers: [(
                    StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"v")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        encode_v2(&recs, compression).unwrap()
    }

    #[test]
    fn markers_say_commit_or_abort_and_carry_the_producer() {
        for commit in [true, false] {
            let b = marker_batch(42, 3, commit, 7, 1_000).unwrap();
            let h = Header::parse(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id(), h.producer_epoch(), h.base_sequence()),
                (42, 3, -1)
            );
            assert_eq!(h.record_count(), 1);
            assert_eq!(marker_of(&b), Some(commit));
        }
        let data = encode_records(
            vec![(None, Some(Bytes::from_static(b"v")))],
            0,
            Compression::None,
        )
        .unwrap();
        assert_eq!(marker_of(&data), None);
    }

    #[test]
    fn valid_batches_pass_for_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encode(10, c);
            let batches = split_and_validate(&b, 1 << 20).unwrap();
            assert_eq!(batches.len(), 1);
            let h = Header::parse(&batches[0]).unwrap();
            assert_eq!(h.record_count(), 10);
            assert_eq!(h.last_offset_delta(), 9);
            assert_eq!(h.compression(), c as i16);
            assert_eq!(h.max_timestamp(), 1_009);
        }
    }

    #[test]
    fn an_emptied_batch_keeps_its_offsets_and_only_replication_takes_it() {
        let mut b = BytesMut::from(&encode(5, Compression::Gzip)[..]);
        assign(&mut b, 100, 3);
        let e = emptied(&b).freeze();
        let h = Header::parse(&e).unwrap();
        assert_eq!(
            (h.base_offset(), h.last_offset(), h.record_count()),
            (100, 104, 0)
        );
        assert_eq!(h.compression(), 0);
        assert_eq!(h.leader_epoch(), 3);
        assert_eq!(split_replicated(&e).unwrap().len(), 1);
        assert_eq!(
            split_and_validate(&e, 1 << 20),
            Err(BatchError::InvalidCount)
        );
        assert!(decode_records(&e, 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn corrupt_crc_is_detected() {
        let mut b = BytesMut::from(&encode(3, Compression::None)[..]);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            split_and_validate(&b.freeze(), 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn truncation_and_size_limits() {
        let b = encode(3, Compression::None);
        assert_eq!(
            split_and_validate(&b.slice(..b.len() - 1), 1 << 20),
            Err(BatchError::Truncated)
        );
        assert_eq!(
            split_and_validate(&b.slice(..20), 1 << 20),
            Err(BatchError::Truncated)
        );
        assert!(matches!(
            split_and_validate(&b, 10),
            Err(BatchError::TooLarge { .. })
        ));
    }

    #[test]
    fn assign_keeps_crc_valid_and_log_append_time_recomputes_it() {
        let mut b = BytesMut::from(&encode(2, Compression::Lz4)[..]);
        assign(&mut b, 42, 7);
        stamp_log_append_time(&mut b, 99_999);
        let frozen = b.freeze();
        let batches = split_and_validate(&frozen, 1 << 20).unwrap();
        let h = Header::parse(&batches[0]).unwrap();
        assert_eq!(h.base_offset(), 42);
        assert_eq!(h.last_offset(), 43);
        assert_eq!(h.leader_epoch(), 7);
        assert!(h.log_append_time());
        assert_eq!(h.max_timestamp(), 99_999);
    }
}

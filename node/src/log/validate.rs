//! The log validator: every record of a produced batch is checked before
//! anything of it is stored, as Kafka's `LogValidator` does.
//!
//! A batch that is framed, checksummed and counted right (see
//! [`batch::split_and_validate`]) is decoded record by record with
//! `kafka-protocol`, decompressing with a bound ([`codec`]):
//! - structure: the declared record count is what the batch holds, every
//!   record's length matches its fields, varint lengths stay inside the
//!   batch, header counts and keys are sound, nothing trails the last
//!   record; offset deltas run 0, 1, 2, ... as the header's last offset
//!   delta says. A batch that fails here is corrupt as a whole
//!   (`CORRUPT_MESSAGE`): nothing in it can be trusted;
//! - topic rules, per record: a key on compacted topics (`INVALID_RECORD`),
//!   a `CreateTime` within `message.timestamp.difference.max.ms` of now
//!   (`INVALID_TIMESTAMP`). Every record that breaks one is named with its
//!   index in the batch (KIP-467), so a client fails just those and retries
//!   or fails the rest as it chooses.
//!
//! On success the decoded records are handed back (recompression reuses
//! them) with the batch's true max timestamp, which replaces a wrong one in
//! the header as Kafka does.

use bytes::Bytes;
use kafka_protocol::records::Record;

use super::batch::{self, BatchError, Header};

/// Why one record of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Its position in the batch (Kafka's `batch_index`).
    pub index: i32,
    pub problem: RecordProblem,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordProblem {
    /// `INVALID_RECORD`: e.g. no key on a compacted topic.
    InvalidRecord,
    /// `INVALID_TIMESTAMP`: a CreateTime too far from the broker's clock.
    InvalidTimestamp,
}

/// What a topic asks of every record.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `cleanup.policy` includes `compact`: every record needs a key.
    pub compacted: bool,
    /// For `CreateTime` topics: the broker's clock and
    /// `message.timestamp.difference.max.ms`. `None` for `LogAppendTime`.
    pub create_time: Option<(i64, i64)>,
    /// The most a batch may decompress to.
    pub max_decompressed: usize,
}

/// A batch that passed, decoded.
#[derive(Debug)]
pub struct Checked {
    pub records: Vec<Record>,
    /// The largest record timestamp (-1 without records).
    pub max_timestamp: i64,
}

/// Checks every record of one produced batch (already framed and
/// checksummed) against the topic's rules.
pub fn validate(b: &Bytes, rules: &Rules) -> Result<Checked, BatchError> {
    let h = Header::parse(b)?;
    let records = batch::decode_shared(b, rules.max_decompressed)?;
    // The decoder read exactly `count` records and nothing after them; the
    // header's count was checked against its last offset delta.
    if records.len() != h.record_count() as usize {
        return Err(BatchError::Undecodable(format!(
            "the batch declares {} records and holds {}",
            h.record_count(),
            records.len()
        )));
    }
    let mut errors = Vec::new();
    let mut max_timestamp = -1i64;
    for (i, r) in records.iter().enumerate() {
        // The decoder adds deltas as Kafka does (wrapping), so does this.
        let delta = r.offset.wrapping_sub(h.base_offset());
        if delta != i as i64 {
            return Err(BatchError::Undecodable(format!(
                "record {i} has offset delta {delta}; deltas must run 0 to {}",
                h.last_offset_delta()
            )));
        }
        max_timestamp = max_timestamp.max(r.timestamp);
        let index = i as i32;
        if rules.compacted && r.key.is_none() && !h.is_control() {
            errors.push(RecordError {
                index,
                problem: RecordProblem::InvalidRecord,
                message: "compacted topic cannot accept a record without a key".into(),
            });
        }
        if let Some((now, max_diff)) = rules.create_time {
            // -1 is "no timestamp", which Kafka lets through.
            if r.timestamp != -1 && r.timestamp.abs_diff(now) > max_diff.max(0) as u64 {
                errors.push(RecordError {
                    index,
                    problem: RecordProblem::InvalidTimestamp,
                    message: format!(
                        "timestamp {} is out of range: it must be within {max_diff} ms of the broker's time {now}",
                        r.timestamp
                    ),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(BatchError::InvalidRecords(errors));
    }
    Ok(Checked {
        records,
        max_timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::tests::{encode, encode_with};
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::Compression;

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn rules() -> Rules {
        Rules {
            compacted: false,
            create_time: None,
            max_decompressed: 1 << 20,
        }
    }

    #[test]
    fn sound_batches_pass_in_every_codec() {
        for c in CODECS {
            let b = encode(10, c);
            let ok = validate(&b, &rules()).unwrap();
            assert_eq!(ok.records.len(), 10);
            assert_eq!(ok.max_timestamp, 1_009);
        }
    }

    /// A batch re-framed after its records were changed: CRC and length
    /// recomputed, so only the record checks can catch what is wrong.
    fn reframe(header_and_records: &[u8]) -> Bytes {
        let mut b = BytesMut::from(header_and_records);
        let len = (b.len() - batch::LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = batch::compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn a_count_larger_than_the_records_is_corrupt() {
        let mut b = BytesMut::from(&encode(1, Compression::None)[..]);
        // Count 1000, last offset delta 999: framing is consistent, the
        // records are not there.
        b[57..61].copy_from_slice(&1000i32.to_be_bytes());
        b[23..27].copy_from_slice(&999i32.to_be_bytes());
        let b = reframe(&b);
        assert!(batch::split_and_validate(&b, 1 << 20).is_ok());
        assert!(matches!(
            validate(&b, &rules()),
            Err(BatchError::Undecodable(_))
        ));
        // The same with i32::MAX: refused without reserving for it.
        let mut b = BytesMut::from(&b[..]);
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        b[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        let b = reframe(&b);
        assert!(matches!(
            validate(&b, &rules()),
            Err(BatchError::Undecodable(_))
        ));
    }

    #[test]
    fn garbage_records_and_trailing_bytes_are_corrupt() {
        let good = encode(3, Compression::None);
        let mut junk = BytesMut::from(&good[..batch::HEADER_LEN]);
        junk.extend_from_slice(&[0x7f; 40]);
        assert!(matches!(
            validate(&reframe(&junk), &rules()),
            Err(BatchError::Undecodable(_))
        ));
        let mut trailing = BytesMut::from(&good[..]);
        trailing.extend_from_slice(b"extra");
        assert!(matches!(
            validate(&reframe(&trailing), &rules()),
            Err(BatchError::Undecodable(_))
        ));
    }

    #[test]
    fn keyless_records_on_compacted_topics_are_named() {
        let b = encode_with(
            (0..10)
                .map(|i| {
                    (
                        if i % 3 == 0 {
                            None
                        } else {
                            Some(format!("k{i}"))
                        },
                        1_000,
                    )
                })
                .collect(),
            Compression::Lz4,
        );
        let r = Rules {
            compacted: true,
            ..rules()
        };
        let Err(BatchError::InvalidRecords(errors)) = validate(&b, &r) else {
            panic!("expected record errors");
        };
        let idx: Vec<i32> = errors.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![0, 3, 6, 9]);
        assert!(errors
            .iter()
            .all(|e| e.problem == RecordProblem::InvalidRecord));
    }

    #[test]
    fn timestamps_out_of_range_are_named_and_no_timestamp_passes() {
        let now = 1_000_000;
        let b = encode_with(
            vec![
                (Some("a".into()), now),
                (Some("b".into()), now - 5_000),
                (Some("c".into()), -1),
                (Some("d".into()), now + 5_000),
            ],
            Compression::None,
        );
        let r = Rules {
            create_time: Some((now, 1_000)),
            ..rules()
        };
        let Err(BatchError::InvalidRecords(errors)) = validate(&b, &r) else {
            panic!("expected record errors");
        };
        let idx: Vec<i32> = errors.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![1, 3]);
        assert!(errors
            .iter()
            .all(|e| e.problem == RecordProblem::InvalidTimestamp));
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let b = encode(2_000, Compression::Zstd);
        let r = Rules {
            max_decompressed: 1_000,
            ..rules()
        };
        assert!(matches!(validate(&b, &r), Err(BatchError::Undecodable(_))));
    }
}

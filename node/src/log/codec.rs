//! Decompression of record batch payloads with a bound on what comes out.
//!
//! A few hundred compressed bytes can claim gigabytes (a gzip or zstd bomb,
//! a snappy block whose header claims 4 GB), and an allocation that fails
//! aborts the process. Every codec here stops at `limit` output bytes and
//! reports an error instead, so a batch from a client or from disk can cost
//! at most `limit` bytes of memory. The formats are the ones Kafka writes:
//! gzip (one or more members), snappy in the xerial framing Kafka's Java
//! client uses (or raw snappy), the LZ4 frame format, and zstd frames.

use std::io::Read;

use bytes::Bytes;
use kafka_protocol::records::Compression;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("{codec} payload decompresses to more than {limit} bytes")]
    TooLarge { codec: &'static str, limit: usize },
    #[error("{codec} payload is corrupt: {reason}")]
    Corrupt { codec: &'static str, reason: String },
}

fn corrupt(codec: &'static str, e: impl std::fmt::Display) -> DecompressError {
    DecompressError::Corrupt {
        codec,
        reason: e.to_string(),
    }
}

/// Reads `r` to its end, refusing to produce more than `limit` bytes.
fn read_bounded(
    codec: &'static str,
    r: impl Read,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { codec, limit });
    }
    Ok(out)
}

/// The xerial snappy-java stream header Kafka's Java client writes.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

fn snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    const CODEC: &str = "snappy";
    let block = |b: &[u8], out: &mut Vec<u8>| -> Result<(), DecompressError> {
        let n = snap::raw::decompress_len(b).map_err(|e| corrupt(CODEC, e))?;
        if out.len().saturating_add(n) > limit {
            return Err(DecompressError::TooLarge {
                codec: CODEC,
                limit,
            });
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(b, &mut out[start..])
            .map_err(|e| corrupt(CODEC, e))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        block(data, &mut out)?;
        return Ok(out);
    }
    let mut rest = data
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| corrupt(CODEC, "truncated stream header"))?;
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt(CODEC, "truncated block length"))?;
        let b = rest
            .get(4..4 + len)
            .ok_or_else(|| corrupt(CODEC, "truncated block"))?;
        block(b, &mut out)?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Decompresses a batch payload (the bytes after the batch header) in
/// `codec`, producing at most `limit` bytes.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<Bytes, DecompressError> {
    let out = match codec {
        Compression::None => {
            if data.len() > limit {
                return Err(DecompressError::TooLarge {
                    codec: "uncompressed",
                    limit,
                });
            }
            return Ok(Bytes::copy_from_slice(data));
        }
        Compression::Gzip => read_bounded("gzip", flate2::read::MultiGzDecoder::new(data), limit)?,
        Compression::Snappy => snappy(data, limit)?,
        Compression::Lz4 => {
            let d = lz4::Decoder::new(data).map_err(|e| corrupt("lz4", e))?;
            read_bounded("lz4", d, limit)?
        }
        Compression::Zstd => {
            let d = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt("zstd", e))?;
            read_bounded("zstd", d, limit)?
        }
    };
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(codec: Compression, plain: &[u8]) -> Vec<u8> {
        use bytes::BufMut;
        use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
        let mut out = bytes::BytesMut::new();
        let fill = |b: &mut bytes::BytesMut| {
            b.put_slice(plain);
            Ok(())
        };
        match codec {
            Compression::Gzip => Gzip::compress(&mut out, fill),
            Compression::Snappy => Snappy::compress(&mut out, fill),
            Compression::Lz4 => Lz4::compress(&mut out, fill),
            Compression::Zstd => Zstd::compress(&mut out, fill),
            Compression::None => fill(&mut out),
        }
        .unwrap();
        out.to_vec()
    }

    #[test]
    fn every_codec_round_trips_and_stops_at_the_limit() {
        let plain = vec![7u8; 100_000];
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = roundtrip(c, &plain);
            assert_eq!(
                &decompress(c, &packed, plain.len()).unwrap()[..],
                &plain[..]
            );
            assert!(matches!(
                decompress(c, &packed, plain.len() - 1),
                Err(DecompressError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn a_bomb_is_refused_without_allocating_it() {
        // 1 GiB of zeros in a few kilobytes of gzip.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 2 << 20);
        assert!(matches!(
            decompress(Compression::Gzip, &bomb, 16 << 20),
            Err(DecompressError::TooLarge { .. })
        ));
        // A raw snappy block whose header claims 4 GB.
        let claim = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(decompress(Compression::Snappy, &claim, 16 << 20).is_err());
    }

    #[test]
    fn garbage_is_an_error_for_every_codec() {
        let junk = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff\xff\xffjunk";
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(decompress(c, junk, 1 << 20).is_err(), "{c:?}");
        }
    }
}

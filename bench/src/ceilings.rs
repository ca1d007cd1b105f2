//! The machine's ceilings, measured the way the node uses the machine:
//! RocksDB atomic writes of batch-sized values, sequential disk writes,
//! one loopback TCP stream.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};

use crate::report::{incompressible, Report};

#[derive(Args)]
pub struct RocksdbArgs {
    /// Directory for the scratch database (removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Bytes of each put's value: one record batch.
    #[arg(long, default_value_t = 65_536)]
    pub batch_bytes: usize,
    /// Bytes of one record in the batch, to report records/s.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Bytes to write in all.
    #[arg(long, default_value_t = 1 << 30)]
    pub total_bytes: u64,
}

#[derive(Args)]
pub struct DiskArgs {
    /// Directory for the scratch file (removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Bytes to write.
    #[arg(long, default_value_t = 1 << 30)]
    pub total_bytes: u64,
}

#[derive(Args)]
pub struct LoopbackArgs {
    /// Bytes to send.
    #[arg(long, default_value_t = 4 << 30)]
    pub total_bytes: u64,
}

fn scratch(dir: &Option<PathBuf>) -> anyhow::Result<tempfile::TempDir> {
    Ok(match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    })
}

/// Puts as the node's log column family takes them (the node's own RocksDB
/// options),
/// a 28-byte key per batch and a 40-byte counter record in the same atomic
/// write, no fsync (the node's default).
pub fn rocksdb(a: &RocksdbArgs) -> anyhow::Result<Report> {
    let dir = scratch(&a.dir)?;
    let (db_opts, log_opts) = sluice_node::log::Store::options();
    let cfs = vec![
        ColumnFamilyDescriptor::new("log", log_opts),
        ColumnFamilyDescriptor::new("meta", Options::default()),
    ];
    let db = DB::open_cf_descriptors(&db_opts, dir.path(), cfs)?;
    let (log, meta) = (
        db.cf_handle("log").expect("created"),
        db.cf_handle("meta").expect("created"),
    );
    let value = incompressible(a.batch_bytes, 42);
    let puts = (a.total_bytes / a.batch_bytes.max(1) as u64).max(1);
    let start = Instant::now();
    for i in 0..puts {
        let mut key = [0u8; 28];
        key[20..].copy_from_slice(&i.to_be_bytes());
        let mut wb = WriteBatch::default();
        wb.put_cf(&log, key, &value);
        wb.put_cf(&meta, b"part/state", i.to_be_bytes().repeat(5));
        db.write(wb)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = puts * a.batch_bytes as u64;
    let records = bytes / a.record_size.max(1) as u64;
    Ok(Report::new("rocksdb-puts", records, bytes, secs))
}

pub fn disk(a: &DiskArgs) -> anyhow::Result<Report> {
    let dir = scratch(&a.dir)?;
    let path = dir.path().join("disk-ceiling");
    let block = incompressible(1 << 20, 9);
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut written = 0u64;
    while written < a.total_bytes {
        f.write_all(&block)?;
        written += block.len() as u64;
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Report::new("disk-write", 0, written, secs))
}

pub fn loopback(a: &LoopbackArgs) -> anyhow::Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = a.total_bytes;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok(got)
    });
    let block = incompressible(1 << 20, 3);
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let mut sent = 0u64;
    while sent < total {
        s.write_all(&block)?;
        sent += block.len() as u64;
    }
    drop(s);
    let got = reader.join().expect("reader thread")?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Report::new("loopback-tcp", 0, got, secs))
}

//! The SQLite store (DESIGN 1.3, 1.4): schema and migrations, the shard-count record, one
//! [`ShardWriter`] per shard (the pipeline's [`BatchWriter`]), the per-shard DLQ, retention and
//! `otelring sql`.
//!
//! Layout of a data directory:
//! ```text
//! <data dir>/otelring.shards         the shard count, written once when the directory is created
//! <data dir>/otelring.catalog        the segments of every shard with their time ranges (SQLite)
//! <data dir>/otelring-<i>.db         shard i's first segment (+ -wal, -shm)
//! <data dir>/otelring-<i>.<n>.db     shard i's segment n (n = 000001, ...), owned by writer i
//! <DLQ_PATH>/shard-<ii>-<id>.dlq     dead letters of shard i; corrupt/ and poison/ beside them
//! ```
//!
//! Use from the server:
//! ```no_run
//! use otelring::config::{PipelineConfig, StoreConfig};
//! use otelring::pipeline::{Pipeline, Stats};
//! use otelring::store::{self, Store};
//! use std::sync::Arc;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scfg = StoreConfig::for_data_dir("./data");
//! let recorded = store::recorded_shards(&scfg.data_dir)?; // feed PipelineArgs::pipeline_config
//! let pcfg = PipelineConfig { shards: recorded.unwrap_or(2), ..PipelineConfig::default() };
//! let stats = Arc::new(Stats::new());
//! let store = Store::open(&scfg, pcfg.shards, stats.clone())?; // records, migrates, recovers the DLQ
//! let gauges = store.gauges(); // WAL bytes, DLQ files/bytes per shard, for /metrics
//! let pipeline = Pipeline::new(pcfg, stats)?;
//! pipeline.start(store.into_writers())?;
//! # Ok(()) }
//! ```
//!
//! SQLite runs on the writer threads only: [`Store::open`] opens and migrates the files on the
//! calling thread at start-up (before any request), then each connection moves to its writer.

pub mod catalog;
pub mod dlq;
pub(crate) mod replay;
pub mod schema;
pub mod segment;
pub mod shard;
pub mod sql;

pub use shard::{SegmentLimits, ShardWriter, is_permanent, shard_file_name};

use crate::config::StoreConfig;
use crate::pipeline::{BatchWriter, Stats};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Name of the shard-count record in the data directory.
pub const SHARD_RECORD: &str = "otelring.shards";

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("{path}: {source}")]
    Migrate { path: PathBuf, source: schema::MigrateError },
    #[error(
        "INGEST_PIPELINE_WORKERS={requested} differs from the {recorded} shards recorded in {path}; the shard \
         count decides which file a trace lives in and cannot change for an existing data directory"
    )]
    ShardMismatch { path: PathBuf, recorded: usize, requested: usize },
    #[error("{path} is damaged: {message}")]
    BadRecord { path: PathBuf, message: String },
    #[error(
        "{dir} holds shard files but no {SHARD_RECORD} record; restore the record (a line `shards = N`) \
         rather than guessing the shard count"
    )]
    MissingRecord { dir: PathBuf },
    #[error("no shard files in {dir}")]
    NoShards { dir: PathBuf },
}

impl StoreError {
    pub(crate) fn sqlite(path: &Path, source: rusqlite::Error) -> Self {
        Self::Sqlite { path: path.to_owned(), source }
    }
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }
}

/// Per-shard live values for metrics (read at scrape time; `Relaxed`: statistics, they order
/// nothing).
#[derive(Debug, Default)]
pub struct ShardGauges {
    /// Current size of the shard's `-wal` file.
    pub wal_bytes: AtomicU64,
    /// Committed transactions (groups, replays, retention steps excluded).
    pub commits: AtomicU64,
    /// DLQ files / bytes pending replay.
    pub dlq_files: AtomicU64,
    pub dlq_bytes: AtomicU64,
    /// DLQ files written, replayed, evicted (counted lost), set aside as damaged.
    pub dlq_spilled_files: AtomicU64,
    pub dlq_replayed_files: AtomicU64,
    pub dlq_evicted_files: AtomicU64,
    /// Items (spans, log records, points) committed from replayed DLQ files.
    pub dlq_replayed_items: AtomicU64,
    pub dlq_corrupt_files: AtomicU64,
    /// Replay attempts that failed (the database or DLQ disk was unavailable).
    pub dlq_replay_failures: AtomicU64,
    /// Units (trace groups, log records, points) isolated as poison.
    pub poison_units: AtomicU64,
    /// Rows dropped by retention (with their segments).
    pub retention_deleted_rows: AtomicU64,
    /// Segments dropped by retention for their age / for the size limit, and their bytes.
    pub retention_segments_age: AtomicU64,
    pub retention_segments_bytes: AtomicU64,
    pub retention_dropped_bytes: AtomicU64,
    /// This shard's share of `OTELRING_RETENTION_BYTES` (0: no size limit).
    pub retention_limit_bytes: AtomicU64,
    /// Segments of the shard (active included) and the bytes they take (file + WAL).
    pub segments: AtomicU64,
    pub data_bytes: AtomicU64,
    pub active_segment_bytes: AtomicU64,
    /// Rotations, and the longest pause one caused the writer (ns).
    pub rotations: AtomicU64,
    pub rotation_max_pause_ns: AtomicU64,
    /// Spans not stored again because the previous segment holds them (retries across a
    /// rotation).
    pub prev_segment_duplicates: AtomicU64,
}

/// Failure injection for tests (a hook that fails on demand); inert unless armed. Shared by all
/// shard writers of a [`Store`].
#[derive(Debug, Default)]
pub struct Faults {
    fail_commits: AtomicUsize,
    fail_dlq_writes: AtomicUsize,
    fail_dlq_dir_syncs: AtomicUsize,
    /// 0: [`shard::WAL_TRUNCATE_BYTES`]; else the WAL size that counts as over the limit.
    wal_truncate_bytes: AtomicU64,
    /// Statements queued so far; writer i runs those after the last one it ran.
    sql_len: AtomicUsize,
    sql: Mutex<Vec<String>>,
}

impl Faults {
    /// Fails the next `n` transactions (of any shard) just before COMMIT, after every row was
    /// inserted, with an I/O error (so they are rolled back and the failure is transient).
    pub fn fail_next_commits(&self, n: usize) {
        self.fail_commits.store(n, Ordering::SeqCst);
    }
    /// Has every shard writer run `sql` on its connection before its next transaction or
    /// maintenance tick (e.g. `PRAGMA query_only = 1`, `PRAGMA max_page_count = 1`).
    pub fn run_sql(&self, sql: impl Into<String>) {
        let mut q = self.sql.lock().unwrap_or_else(|p| p.into_inner());
        q.push(sql.into());
        self.sql_len.store(q.len(), Ordering::SeqCst);
    }
    /// Fails the next `n` DLQ file writes (of any shard) after the temp file is written and
    /// before it is renamed, as a full disk would.
    pub fn fail_next_dlq_writes(&self, n: usize) {
        self.fail_dlq_writes.store(n, Ordering::SeqCst);
    }
    /// Fails the next `n` fsyncs of a DLQ directory (of any shard) with an I/O error; the
    /// operation before them (rename, unlink) has already happened.
    pub fn fail_next_dlq_dir_syncs(&self, n: usize) {
        self.fail_dlq_dir_syncs.store(n, Ordering::SeqCst);
    }
    /// Makes the writers treat a WAL over `bytes` as over [`shard::WAL_TRUNCATE_BYTES`]
    /// (0 restores the real limit), so tests need not write hundreds of MB.
    pub fn set_wal_truncate_bytes(&self, bytes: u64) {
        self.wal_truncate_bytes.store(bytes, Ordering::SeqCst);
    }
    pub(crate) fn wal_truncate_bytes(&self) -> u64 {
        match self.wal_truncate_bytes.load(Ordering::Relaxed) {
            0 => shard::WAL_TRUNCATE_BYTES,
            n => n,
        }
    }
    fn take_one(counter: &AtomicUsize) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
    }
    pub(crate) fn dlq_write(&self) -> std::io::Result<()> {
        if Self::take_one(&self.fail_dlq_writes) {
            return Err(std::io::Error::other("injected dlq write failure"));
        }
        Ok(())
    }
    pub(crate) fn dlq_dir_sync(&self) -> std::io::Result<()> {
        if Self::take_one(&self.fail_dlq_dir_syncs) {
            return Err(std::io::Error::other("injected dlq directory fsync failure"));
        }
        Ok(())
    }
    /// Statements queued after the first `seen`; updates `seen`.
    pub(crate) fn take_sql(&self, seen: &mut usize) -> Vec<String> {
        if self.sql_len.load(Ordering::SeqCst) <= *seen {
            return Vec::new();
        }
        let q = self.sql.lock().unwrap_or_else(|p| p.into_inner());
        let new = q.get(*seen..).map(<[String]>::to_vec).unwrap_or_default();
        *seen = q.len();
        new
    }
    pub(crate) fn before_commit(&self) -> rusqlite::Result<()> {
        if self.fail_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok() {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("injected failure before commit".into()),
            ));
        }
        Ok(())
    }
}

/// Reads the shard count recorded in `data_dir` (`None` for a new directory).
pub fn recorded_shards(data_dir: &Path) -> Result<Option<usize>, StoreError> {
    let path = data_dir.join(SHARD_RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if shard_files_exist(data_dir) {
                Err(StoreError::MissingRecord { dir: data_dir.to_owned() })
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == "shards"
        {
            return v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| (1..=crate::config::MAX_SHARDS).contains(&n))
                .map(Some)
                .ok_or_else(|| StoreError::BadRecord {
                    path: path.clone(),
                    message: format!("bad shard count {v:?}"),
                });
        }
    }
    Err(StoreError::BadRecord { path, message: "no `shards = N` line".into() })
}

fn shard_files_exist(data_dir: &Path) -> bool {
    (0..crate::config::MAX_SHARDS).any(|i| data_dir.join(shard_file_name(i)).exists())
}

/// Records `shards` in `data_dir` (temp file, fsync, rename, fsync the directory).
fn record_shards(data_dir: &Path, shards: usize) -> Result<(), StoreError> {
    let path = data_dir.join(SHARD_RECORD);
    let tmp = data_dir.join(format!("{SHARD_RECORD}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "# otelring: shard count of this data directory; it cannot change")?;
        writeln!(f, "shards = {shards}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| StoreError::io(&path, e))
}

/// Refuses a shard count that differs from the record; records it for a new directory.
pub fn check_and_record_shards(data_dir: &Path, shards: usize) -> Result<(), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::io(data_dir, e))?;
    match recorded_shards(data_dir)? {
        Some(r) if r != shards => Err(StoreError::ShardMismatch {
            path: data_dir.join(SHARD_RECORD),
            recorded: r,
            requested: shards,
        }),
        Some(_) => Ok(()),
        None => record_shards(data_dir, shards),
    }
}

/// The opened store: one writer per shard, ready to hand to [`crate::pipeline::Pipeline::start`].
#[derive(Debug)]
pub struct Store {
    writers: Vec<ShardWriter>,
    gauges: Vec<Arc<ShardGauges>>,
    faults: Arc<Faults>,
    recovered: dlq::Recovered,
}

impl Store {
    /// Opens the data directory for `shards` shards: checks or writes the shard-count record,
    /// opens and migrates every shard file, and scans the DLQ (what it holds is added to
    /// `dlq_recovered` and `dlq_pending` in `stats`; damaged files are set aside and counted
    /// recovered and lost, so the books stay balanced). `stats` must be the pipeline's.
    pub fn open(cfg: &StoreConfig, shards: usize, stats: Arc<Stats>) -> Result<Self, StoreError> {
        cfg.validate()?;
        check_and_record_shards(&cfg.data_dir, shards)?;
        let n = shards.max(1) as u64;
        let max_files = (cfg.dlq_max_files / n).max(1);
        let max_bytes = (cfg.dlq_max_bytes / n).max(1);
        let faults = Arc::new(Faults::default());
        let mut writers = Vec::with_capacity(shards);
        let mut gauges = Vec::with_capacity(shards);
        let mut total = dlq::Recovered::default();
        let hasher = std::hash::RandomState::new();
        let n_shards = shards.max(1) as u64;
        let limits = SegmentLimits {
            max_bytes: cfg.segment_max_bytes,
            max_age: cfg.segment_max_age,
            retention: cfg.retention,
            retention_bytes: cfg.retention_bytes / n_shards,
        };
        for i in 0..shards {
            let mut catalog = catalog::Catalog::open(&cfg.data_dir)?;
            let (active, prev) =
                shard::open_segments(&cfg.data_dir, &mut catalog, i, cfg.durable_commits, &hasher)?;
            let (mut q, rec) = dlq::ShardDlq::open(&cfg.dlq_path, i, max_files, max_bytes)
                .map_err(|e| StoreError::io(&cfg.dlq_path, e))?;
            q.set_faults(faults.clone());
            rec.book(&stats, i);
            total.files += rec.files;
            total.corrupt_files += rec.corrupt_files;
            total.tmp_files += rec.tmp_files;
            for k in 0..3 {
                total.items[k] += rec.items[k];
                total.corrupt_items[k] += rec.corrupt_items[k];
            }
            let g = Arc::new(ShardGauges::default());
            g.retention_limit_bytes.store(limits.retention_bytes, Ordering::Relaxed);
            g.dlq_corrupt_files.fetch_add(rec.corrupt_files, Ordering::Relaxed);
            gauges.push(g.clone());
            writers.push(ShardWriter::new(
                i,
                cfg.data_dir.clone(),
                active,
                prev,
                catalog,
                hasher.clone(),
                q,
                limits,
                stats.clone(),
                g,
                faults.clone(),
            ));
        }
        Ok(Self { writers, gauges, faults, recovered: total })
    }

    /// Per-shard gauges (WAL bytes, DLQ files and bytes, replay counters), shared with the
    /// writers: read them at scrape time.
    pub fn gauges(&self) -> Vec<Arc<ShardGauges>> {
        self.gauges.clone()
    }

    /// The failure-injection hook shared by every shard writer (tests).
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    /// What the DLQ held at start (already added to the books).
    pub fn recovered(&self) -> dlq::Recovered {
        self.recovered
    }

    /// The writers, writer i for shard i, for [`crate::pipeline::Pipeline::start`].
    pub fn into_writers(self) -> Vec<Box<dyn BatchWriter>> {
        self.writers.into_iter().map(|w| Box::new(w) as Box<dyn BatchWriter>).collect()
    }

    /// The writers as concrete types (benchmarks and tests drive them directly).
    pub fn into_shard_writers(self) -> Vec<ShardWriter> {
        self.writers
    }
}

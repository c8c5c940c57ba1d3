//! The SQLite shard writer: writer thread i's [`BatchWriter`] over shard i's segments
//! (`<data dir>/otelring-<i>.db`, `otelring-<i>.<n>.db`, ...; see [`super::segment`]).
//!
//! - One transaction per coalesced group into the **active** segment, in FK order: one trace
//!   upsert per (tenant, trace) of the group (the group's trace rows are merged in memory first),
//!   then spans (`INSERT OR IGNORE`: the unique index `span_rows_key` makes them idempotent within
//!   the segment), logs, metric points. Each distinct resource is written once per segment.
//! - Idempotency across one rotation: a span whose key is in the previous segment's filter
//!   ([`SpanKeys`]) and confirmed by that segment's key index is not stored again. The logs
//!   derived from a span (its events, its ERROR log) are stored only when the span was new.
//! - Trace rule (DESIGN 1.4), in memory within a group and in the upsert across groups of a
//!   segment: start = min, end = max, duration = end − start, the root span's service once it
//!   arrives (else the first seen), status only upgrades toward ERROR. A trace that spans two
//!   segments has a row in each; `otelring sql` merges them by the same rule.
//! - Rotation (between groups, from `maintain`): when the active segment reaches
//!   `OTELRING_SEGMENT_MAX_BYTES` or `OTELRING_SEGMENT_MAX_AGE`, the spare segment prepared
//!   ahead becomes active in one catalog transaction; the sealed one is checkpointed and closed
//!   on a thread of its own, so the writer pauses only for a few statements (the pause is
//!   exported as `otelring_store_rotation_max_pause_seconds`).
//! - Retention drops whole sealed segments (age by their newest `ingested_at`, then size):
//!   unlist, unlink; no DELETE.
//! - Failures roll the transaction back and return [`WriteError::Database`]; the writer loop then
//!   retries commit-mode batches alone and spills async batches through [`BatchWriter::spill`]
//!   into this shard's DLQ, which [`BatchWriter::maintain`] replays with backoff (bisecting a
//!   group that fails for a permanent reason, isolating poison units). The replay is the
//!   routine both sinks share (`store::replay`); this writer's part records every stored part
//!   and poison unit of a file in `dlq_applied`, in the transaction of its rows.
//! - WAL: SQLite runs a PASSIVE checkpoint (never waits) right after any commit that leaves
//!   [`CHECKPOINT_PAGES`] or more frames in the WAL; a TRUNCATE
//!   checkpoint runs with the busy handler off when the WAL file passes [`WAL_TRUNCATE_BYTES`];
//!   the WAL size is published in [`ShardGauges::wal_bytes`] and logged when over
//!   [`WAL_WARN_BYTES`].
//! - Maintenance (DLQ replay, retention, rotation, WAL truncation, probes) runs from `maintain`,
//!   which the writer loop calls after every group and whenever the delay it returned has
//!   passed, under load as when idle.
//! - Readiness: the writer sets its shard's `db_failing` / `dlq_failing` flags in [`Stats`] from
//!   what its database and DLQ operations do (replays, spills). While a flag is set and nothing
//!   else exercises that store (no traffic, nothing to replay), a probe (a marker row written and
//!   removed in one transaction; a small fsynced file in the DLQ directory) retries it with the
//!   replay backoff, so readiness comes back once the fault clears, without new traffic.

use super::catalog::{Catalog, SegmentInfo};
use super::dlq::ShardDlq;
use super::replay::{self, Backoff, Outcome};
use super::schema;
use super::segment::{self, Extent, SpanKeys};
use super::{Faults, ShardGauges, StoreError};
use crate::pipeline::batch::{
    Batch, LogRow, MetricPointRow, NumberValue, Rows, SpanId, SpanRow, StatusCode, TraceId,
};
use crate::pipeline::{BatchWriter, Group, Stats, WriteError};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, Statement};
use std::collections::{HashMap, HashSet};
use std::hash::RandomState;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a statement waits for a lock held by another connection (a reader's checkpoint or
/// `otelring sql` never holds the write lock; this only covers outside tools such as `sqlite3`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page cache per shard, KiB (`PRAGMA cache_size = -N`). Random trace ids scatter inserts over
/// the whole `spans_key` index, so the cache should hold its interior pages and as many leaves
/// as affordable (SQLite's default is 2 MiB; the default was not measured against this). 64 MiB
/// per shard is part of the memory budget (docs/PERFORMANCE.md);
/// 256 MiB and `mmap_size` = 256 MiB measured no better (300,000-span runs, 1.42–1.61× the
/// baseline either way).
pub const CACHE_KIB: i64 = 64 * 1024;
/// `PRAGMA journal_size_limit`: the WAL file is truncated to this after a checkpoint resets it,
/// so one large transaction does not keep its disk space forever.
pub const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// WAL size above which `maintain` attempts a TRUNCATE checkpoint (busy handler off). PASSIVE
/// checkpoints keep the WAL near one transaction (≈ 10–20 MB at 20,000 rows) unless a reader
/// holds an old snapshot.
pub const WAL_TRUNCATE_BYTES: u64 = 256 * 1024 * 1024;
/// How soon `maintain` tries the TRUNCATE checkpoint again while the WAL stays over
/// [`WAL_TRUNCATE_BYTES`] (a reader was in the way), even when nothing else is due.
pub const WAL_TRUNCATE_RETRY: Duration = Duration::from_secs(1);
/// Id of the marker row the database probe writes and removes in `dlq_applied` (file ids are
/// digits and hex, so it never names a file).
pub const PROBE_ID: &str = "probe";
/// WAL size above which a warning is logged (at most once per [`WAL_WARN_INTERVAL`]).
pub const WAL_WARN_BYTES: u64 = 1024 * 1024 * 1024;
pub const WAL_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// First delay before a DLQ replay after a failure; doubles up to [`REPLAY_MAX_BACKOFF`].
pub const REPLAY_MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between replay attempts while the database keeps failing.
pub const REPLAY_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// DLQ files replayed per maintenance tick: one file is one spilled group (≤ `INGEST_WRITER_MAX_ROWS`
/// rows), one transaction of ~0.1 s, so a tick never delays the lanes for long.
pub const REPLAY_FILES_PER_TICK: usize = 1;
/// PASSIVE checkpoint threshold in WAL pages (`PRAGMA wal_autocheckpoint`: SQLite runs a
/// PASSIVE checkpoint right after a commit that leaves at least this many frames in the WAL).
/// SQLite's default is 1,000 (4 MiB); 16,384 (64 MiB at 4 KiB pages) lets pages dirtied again by
/// later transactions (index leaves, trace rows) be written to the database once per checkpoint
/// instead of once per 1,000 pages: 1.7× the span rate at 20,000-span groups (docs/PERFORMANCE.md).
pub const CHECKPOINT_PAGES: i64 = 16_384;

/// The file name of shard `i`'s first segment (the whole shard in the layout before segments).
pub fn shard_file_name(i: usize) -> String {
    segment::segment_file_name(i, 0)
}

/// Opens (creating if needed) a shard file for writing, with the pragmas of DESIGN 1.4, and
/// migrates its schema.
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::sqlite(path, e))?;
    let setup = |c: &Connection| -> rusqlite::Result<()> {
        c.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!("journal_mode is {mode}, not wal")));
        }
        c.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{CACHE_KIB}; \
             PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}; PRAGMA wal_autocheckpoint = {}; \
             PRAGMA temp_store = MEMORY;",
            CHECKPOINT_PAGES
        ))?;
        c.set_prepared_statement_cache_capacity(32);
        Ok(())
    };
    setup(&conn).map_err(|e| StoreError::sqlite(path, e))?;
    schema::migrate(&mut conn).map_err(|e| StoreError::Migrate { path: path.to_owned(), source: e })?;
    Ok(conn)
}

/// Opens shard `shard`'s segments at start-up: reconciles the catalog with the files, opens (or
/// creates and lists) the active segment with its extent and span-key filter, and the previous
/// segment's filter and read-only connection.
pub(super) fn open_segments(
    data_dir: &Path,
    catalog: &mut Catalog,
    shard: usize,
    durable: bool,
    hasher: &RandomState,
) -> Result<(Active, Option<PrevSegment>), StoreError> {
    let segs = segment::reconcile(data_dir, catalog, shard)?;
    let cat_path = catalog.path().to_owned();
    let cat_err = |e: rusqlite::Error| StoreError::sqlite(&cat_path, e);
    let now = unix_nano_now();
    let (info, conn) = match segs.last().filter(|s| !s.sealed) {
        Some(s) => {
            let path = data_dir.join(&s.file);
            (s.clone(), open_connection(&path)?)
        }
        None => {
            let seq = segs.last().map_or(0, |s| s.seq + 1);
            let file = segment::segment_file_name(shard, seq);
            let conn = open_connection(&data_dir.join(&file))?;
            // The DLQ replay records of the segment before (a legacy file at an upgrade, or a
            // segment sealed by reconciliation): a DLQ file pending since then stays
            // exactly-once (rotation carries them the same way).
            if let Some(p) = segs.last() {
                carry_dlq_records(&conn, &data_dir.join(&p.file))
                    .map_err(|e| StoreError::sqlite(&data_dir.join(&file), e))?;
            }
            let info = SegmentInfo::new_active(shard, seq, file, now);
            catalog.insert(&info).map_err(cat_err)?;
            (info, conn)
        }
    };
    let path = data_dir.join(&info.file);
    if durable {
        conn.execute_batch("PRAGMA synchronous = FULL").map_err(|e| StoreError::sqlite(&path, e))?;
    }
    let version = schema::version(&conn).map_err(|e| StoreError::sqlite(&path, e))?;
    let extent = segment::extent(&conn, version).map_err(|e| StoreError::sqlite(&path, e))?;
    let mut keys = SpanKeys::new(hasher.clone());
    keys.load(&conn, version).map_err(|e| StoreError::sqlite(&path, e))?;
    let age = Duration::from_nanos(u64::try_from(now.saturating_sub(info.created_at)).unwrap_or(0));
    let mut active = Active::new(data_dir, info, conn, extent, keys);
    active.started = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    let prev = match segs.iter().rfind(|s| s.sealed && s.seq < active.info.seq) {
        Some(p) => {
            let ppath = data_dir.join(&p.file);
            let (pconn, pversion) =
                segment::open_read_only(&ppath).map_err(|e| StoreError::sqlite(&ppath, e))?;
            let mut pkeys = SpanKeys::new(hasher.clone());
            pkeys.load(&pconn, pversion).map_err(|e| StoreError::sqlite(&ppath, e))?;
            drop(pconn);
            Some(PrevSegment::open(data_dir, p.clone(), pkeys).map_err(|e| StoreError::sqlite(&ppath, e))?)
        }
        None => None,
    };
    Ok((active, prev))
}

/// Copies every `dlq_applied` record of the segment file `from` into `conn`'s segment.
fn carry_dlq_records(conn: &Connection, from: &Path) -> rusqlite::Result<()> {
    conn.execute("ATTACH DATABASE ?1 AS carried", [from.to_string_lossy()])?;
    let copied = conn.execute_batch(
        "INSERT OR IGNORE INTO main.dlq_applied (id, applied_at) SELECT id, applied_at FROM carried.dlq_applied",
    );
    conn.execute_batch("DETACH DATABASE carried")?;
    copied
}

const UPSERT_TRACE: &str = "INSERT INTO trace_rows (trace_id, tenant_id, service_name, start_time_unix_nano, \
    end_time_unix_nano, status, has_root, ingested_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
    ON CONFLICT (trace_id, tenant_id) DO UPDATE SET \
      service_name = CASE WHEN excluded.has_root AND NOT trace_rows.has_root THEN excluded.service_name \
                          ELSE trace_rows.service_name END, \
      has_root = trace_rows.has_root OR excluded.has_root, \
      start_time_unix_nano = min(trace_rows.start_time_unix_nano, excluded.start_time_unix_nano), \
      end_time_unix_nano = max(trace_rows.end_time_unix_nano, excluded.end_time_unix_nano), \
      status = CASE WHEN excluded.status = 'STATUS_CODE_ERROR' THEN excluded.status \
                    WHEN excluded.status = 'STATUS_CODE_OK' AND trace_rows.status = 'STATUS_CODE_UNSET' \
                      THEN excluded.status \
                    ELSE trace_rows.status END, \
      ingested_at = max(trace_rows.ingested_at, excluded.ingested_at)";

const INSERT_SPAN: &str = "INSERT OR IGNORE INTO span_rows (tenant_id, trace_id, span_id, parent_span_id, name, \
    kind, service_name, start_time_unix_nano, end_time_unix_nano, status_code, status_message, attributes, \
    resource_id, scope_name, ingested_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

const INSERT_LOG: &str = "INSERT INTO log_rows (tenant_id, time_unix_nano, observed_time_unix_nano, severity_number, \
    severity_text, body, trace_id, span_id, service_name, attributes, resource_id, scope_name, ingested_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

const INSERT_POINT: &str = "INSERT INTO metric_point_rows (tenant_id, service_name, name, description, unit, kind, \
    temporality, is_monotonic, time_unix_nano, start_time_unix_nano, value, count, sum, min, max, bucket_counts, \
    explicit_bounds, scale, zero_count, positive_offset, positive_bucket_counts, negative_offset, \
    negative_bucket_counts, quantiles, attributes, resource_id, scope_name, ingested_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, \
    ?23, ?24, ?25, ?26, ?27, ?28)";

const INSERT_RESOURCE: &str = "INSERT OR IGNORE INTO resources (id, attributes) VALUES (?1, ?2)";

/// One trace's aggregate over a group (merged before the single upsert).
struct TraceAgg<'a> {
    tenant: &'a str,
    id: TraceId,
    service: &'a str,
    has_root: bool,
    start: i64,
    end: i64,
    status: StatusCode,
    ingested_at: i64,
}

/// Merges the trace rows of `batches` per (tenant, trace), sorted by key (the b-tree order).
fn merge_traces(batches: &[Batch]) -> Vec<TraceAgg<'_>> {
    let mut aggs: Vec<TraceAgg<'_>> = Vec::new();
    let mut index: HashMap<(&str, TraceId), usize> = HashMap::new();
    for b in batches {
        let Rows::Traces(groups) = &b.rows else { continue };
        for g in groups {
            let t = &g.trace;
            let key = (&*t.tenant_id, t.trace_id);
            match index.get(&key).and_then(|&i| aggs.get_mut(i)) {
                Some(a) => {
                    if t.has_root && !a.has_root {
                        a.service = &t.service_name;
                        a.has_root = true;
                    }
                    a.start = a.start.min(t.start_time_unix_nano);
                    a.end = a.end.max(t.end_time_unix_nano);
                    a.status = a.status.max(t.status);
                    a.ingested_at = a.ingested_at.max(b.received.unix_nano);
                }
                None => {
                    index.insert(key, aggs.len());
                    aggs.push(TraceAgg {
                        tenant: &t.tenant_id,
                        id: t.trace_id,
                        service: &t.service_name,
                        has_root: t.has_root,
                        start: t.start_time_unix_nano,
                        end: t.end_time_unix_nano,
                        status: t.status,
                        ingested_at: b.received.unix_nano,
                    });
                }
            }
        }
    }
    aggs.sort_unstable_by(|a, b| (a.id, a.tenant).cmp(&(b.id, b.tenant)));
    aggs
}

fn bind_u64(v: Option<u64>) -> Value {
    match v {
        None => Value::Null,
        Some(v) => i64::try_from(v).map_or(Value::Real(v as f64), Value::Integer),
    }
}

fn bind_f64(v: Option<f64>) -> Value {
    v.map_or(Value::Null, Value::Real)
}

/// The id of a resource's JSON in `resources`: FNV-1a 64 of its bytes, as SQLite's signed
/// integer key. Stable across processes (it is stored). Two distinct resources of one segment
/// sharing a hash would show the first one's attributes (about 1 in 10^11 for 10,000 distinct
/// resources); accepted, documented in docs/STORAGE.md.
pub fn resource_id(json: &str) -> i64 {
    crate::pipeline::route::Fnv1a::default().write(json.as_bytes()).finish() as i64
}

/// The resource ids of one transaction: each distinct resource string (one shared `Arc` per
/// resource of a request) is hashed and inserted once, then looked up by address.
struct Resources<'c> {
    ids: HashMap<*const u8, i64>,
    stmt: Option<rusqlite::CachedStatement<'c>>,
    conn: &'c Connection,
}

impl<'c> Resources<'c> {
    fn new(conn: &'c Connection) -> Self {
        Self { ids: HashMap::new(), stmt: None, conn }
    }
    fn id(&mut self, json: &Arc<str>) -> rusqlite::Result<i64> {
        let ptr = Arc::as_ptr(json) as *const u8;
        if let Some(&id) = self.ids.get(&ptr) {
            return Ok(id);
        }
        let id = resource_id(json);
        let stmt = match &mut self.stmt {
            Some(s) => s,
            None => self.stmt.insert(self.conn.prepare_cached(INSERT_RESOURCE)?),
        };
        stmt.execute((id, &**json))?;
        self.ids.insert(ptr, id);
        Ok(id)
    }
}

/// Columns bound per span row.
const SPAN_COLUMNS: usize = 15;
/// Span rows per multi-row INSERT: 64 × 15 = 960 parameters, far under SQLite's variable limit
/// (`SQLITE_MAX_VARIABLE_NUMBER`, 32,766 since 3.32). Multi-row statements cut the per-row
/// statement reset and dispatch (docs/PERFORMANCE.md); the remainder uses the one-row statement.
pub const SPAN_ROWS_PER_STATEMENT: usize = 64;

fn insert_spans_multi_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let head = INSERT_SPAN.split(" VALUES ").next().unwrap_or(INSERT_SPAN);
        let rows: Vec<String> = (0..SPAN_ROWS_PER_STATEMENT)
            .map(|r| {
                let cols: Vec<String> =
                    (1..=SPAN_COLUMNS).map(|c| format!("?{}", r * SPAN_COLUMNS + c)).collect();
                format!("({})", cols.join(", "))
            })
            .collect();
        format!("{head} VALUES {}", rows.join(", "))
    })
}

/// A span ready to bind: the row, its receive time and its resource id.
type SpanIn<'a> = (&'a SpanRow, i64, i64);

/// Binds span `s` as row `row` of a (multi-row) span statement.
fn bind_span(stmt: &mut Statement<'_>, row: usize, (s, at, rid): SpanIn<'_>) -> rusqlite::Result<()> {
    let b = row * SPAN_COLUMNS;
    let mut tb = [0u8; 32];
    stmt.raw_bind_parameter(b + 1, &*s.tenant_id)?;
    stmt.raw_bind_parameter(b + 2, s.trace_id.hex(&mut tb))?;
    stmt.raw_bind_parameter(b + 3, &s.span_id.0[..])?;
    stmt.raw_bind_parameter(b + 4, s.parent_span_id.as_ref().map(|p| &p.0[..]))?;
    stmt.raw_bind_parameter(b + 5, s.name.as_str())?;
    stmt.raw_bind_parameter(b + 6, s.kind as i64)?;
    stmt.raw_bind_parameter(b + 7, &*s.service_name)?;
    stmt.raw_bind_parameter(b + 8, s.start_time_unix_nano)?;
    stmt.raw_bind_parameter(b + 9, s.end_time_unix_nano)?;
    stmt.raw_bind_parameter(b + 10, s.status_code as i64)?;
    stmt.raw_bind_parameter(b + 11, s.status_message.as_str())?;
    stmt.raw_bind_parameter(b + 12, s.attributes.as_str())?;
    stmt.raw_bind_parameter(b + 13, rid)?;
    stmt.raw_bind_parameter(b + 14, &*s.scope_name)?;
    stmt.raw_bind_parameter(b + 15, at)
}

fn insert_log(stmt: &mut Statement<'_>, l: &LogRow, ingested_at: i64, rid: i64) -> rusqlite::Result<()> {
    let mut tb = [0u8; 32];
    stmt.raw_bind_parameter(1, &*l.tenant_id)?;
    stmt.raw_bind_parameter(2, l.time_unix_nano)?;
    stmt.raw_bind_parameter(3, l.observed_time_unix_nano)?;
    stmt.raw_bind_parameter(4, l.severity_number)?;
    stmt.raw_bind_parameter(5, l.severity_text.as_str())?;
    stmt.raw_bind_parameter(6, l.body.as_deref())?;
    stmt.raw_bind_parameter(7, l.trace_id.as_ref().map_or("", |t| t.hex(&mut tb)))?;
    stmt.raw_bind_parameter(8, l.span_id.as_ref().map(|s| &s.0[..]))?;
    stmt.raw_bind_parameter(9, &*l.service_name)?;
    stmt.raw_bind_parameter(10, l.attributes.as_str())?;
    stmt.raw_bind_parameter(11, rid)?;
    stmt.raw_bind_parameter(12, &*l.scope_name)?;
    stmt.raw_bind_parameter(13, ingested_at)?;
    stmt.raw_execute().map(drop)
}

fn insert_point(
    stmt: &mut Statement<'_>,
    m: &MetricPointRow,
    ingested_at: i64,
    rid: i64,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, &*m.tenant_id)?;
    stmt.raw_bind_parameter(2, &*m.service_name)?;
    stmt.raw_bind_parameter(3, &*m.name)?;
    stmt.raw_bind_parameter(4, &*m.description)?;
    stmt.raw_bind_parameter(5, &*m.unit)?;
    stmt.raw_bind_parameter(6, m.kind.as_str())?;
    stmt.raw_bind_parameter(7, m.temporality.map(|t| t.as_str()))?;
    stmt.raw_bind_parameter(8, m.is_monotonic)?;
    stmt.raw_bind_parameter(9, m.time_unix_nano)?;
    stmt.raw_bind_parameter(10, m.start_time_unix_nano)?;
    let value = match m.value {
        None => Value::Null,
        Some(NumberValue::Int(i)) => Value::Integer(i),
        Some(NumberValue::Double(d)) => Value::Real(d),
    };
    stmt.raw_bind_parameter(11, value)?;
    stmt.raw_bind_parameter(12, bind_u64(m.count))?;
    stmt.raw_bind_parameter(13, bind_f64(m.sum))?;
    stmt.raw_bind_parameter(14, bind_f64(m.min))?;
    stmt.raw_bind_parameter(15, bind_f64(m.max))?;
    stmt.raw_bind_parameter(16, m.bucket_counts.as_deref())?;
    stmt.raw_bind_parameter(17, m.explicit_bounds.as_deref())?;
    stmt.raw_bind_parameter(18, m.scale)?;
    stmt.raw_bind_parameter(19, bind_u64(m.zero_count))?;
    stmt.raw_bind_parameter(20, m.positive_offset)?;
    stmt.raw_bind_parameter(21, m.positive_bucket_counts.as_deref())?;
    stmt.raw_bind_parameter(22, m.negative_offset)?;
    stmt.raw_bind_parameter(23, m.negative_bucket_counts.as_deref())?;
    stmt.raw_bind_parameter(24, m.quantiles.as_deref())?;
    stmt.raw_bind_parameter(25, m.attributes.as_str())?;
    stmt.raw_bind_parameter(26, rid)?;
    stmt.raw_bind_parameter(27, &*m.scope_name)?;
    stmt.raw_bind_parameter(28, ingested_at)?;
    stmt.raw_execute().map(drop)
}

/// The previous segment of a shard, for idempotency across one rotation: its span-key filter,
/// and a read-only connection for the exact look-up that confirms a filter hit.
pub(super) struct PrevSegment {
    pub info: SegmentInfo,
    pub keys: SpanKeys,
    conn: Connection,
    version: i64,
}

impl PrevSegment {
    pub fn open(data_dir: &Path, info: SegmentInfo, keys: SpanKeys) -> rusqlite::Result<Self> {
        let (conn, version) = segment::open_read_only(&data_dir.join(&info.file))?;
        Ok(Self { info, keys, conn, version })
    }

    /// True when the span is stored in this segment: the filter, then the exact key index.
    fn holds(&self, key: u64, s: &SpanRow) -> rusqlite::Result<bool> {
        if !self.keys.contains(key) {
            return Ok(false);
        }
        let mut tb = [0u8; 32];
        let trace = s.trace_id.hex(&mut tb);
        if self.version == schema::LEGACY_VERSION {
            let mut sb = [0u8; 16];
            self.conn
                .prepare_cached(
                    "SELECT count(*) FROM spans WHERE tenant_id = ?1 AND trace_id = ?2 AND span_id = ?3",
                )?
                .query_row((&*s.tenant_id, trace, s.span_id.hex(&mut sb)), |r| r.get::<_, i64>(0))
                .map(|n| n > 0)
        } else {
            self.conn
                .prepare_cached(
                    "SELECT count(*) FROM span_rows WHERE trace_id = ?1 AND span_id = ?2 AND tenant_id = ?3",
                )?
                .query_row((trace, &s.span_id.0[..], &*s.tenant_id), |r| r.get::<_, i64>(0))
                .map(|n| n > 0)
        }
    }
}

/// What one transaction added to the active segment (applied to its [`Extent`] and gauges
/// only once it committed).
#[derive(Debug, Default)]
struct Inserted {
    rows: u64,
    /// Spans skipped because the previous segment holds them (retries across a rotation).
    prev_duplicates: u64,
}

/// Inserts every row of `batches` in FK order on an open transaction, plus the `dlq_applied`
/// record of a replay. A span already stored (in this segment, by the unique index; in the
/// previous one, by `prev`) is not stored again, and neither are the logs derived from it (its
/// events, its ERROR log): a client that retries an ERROR span gets one span and one log.
fn insert_rows(
    conn: &Connection,
    batches: &[Batch],
    applied: Option<&str>,
    keys: &mut SpanKeys,
    prev: Option<&PrevSegment>,
) -> rusqlite::Result<Inserted> {
    let mut out = Inserted::default();
    let mut res = Resources::new(conn);
    let traces = merge_traces(batches);
    // Spans with derived logs (tenant, trace, span): inserted one by one, so that each copy's
    // outcome is known; their logs are stored only with a copy that was new.
    let mut derived: HashSet<(&str, TraceId, SpanId)> = HashSet::new();
    // The (trace group, span) copies that were stored new; a group is named by its address.
    let mut new_copies: HashSet<(usize, SpanId)> = HashSet::new();
    if !traces.is_empty() {
        let mut stmt = conn.prepare_cached(UPSERT_TRACE)?;
        let mut tb = [0u8; 32];
        for t in &traces {
            stmt.raw_bind_parameter(1, t.id.hex(&mut tb))?;
            stmt.raw_bind_parameter(2, t.tenant)?;
            stmt.raw_bind_parameter(3, t.service)?;
            stmt.raw_bind_parameter(4, t.start)?;
            stmt.raw_bind_parameter(5, t.end)?;
            stmt.raw_bind_parameter(6, t.status.as_str())?;
            stmt.raw_bind_parameter(7, t.has_root)?;
            stmt.raw_bind_parameter(8, t.ingested_at)?;
            stmt.raw_execute()?;
        }
        for b in batches {
            if let Rows::Traces(groups) = &b.rows {
                for l in groups.iter().flat_map(|g| g.logs.iter()) {
                    if let (Some(t), Some(s)) = (l.trace_id, l.span_id) {
                        derived.insert((&*l.tenant_id, t, s));
                    }
                }
            }
        }
        // Spans in key order: consecutive unique-index inserts land on the same pages.
        let mut spans: Vec<SpanIn<'_>> = Vec::new();
        let mut single: Vec<(usize, SpanIn<'_>)> = Vec::new();
        for b in batches {
            if let Rows::Traces(groups) = &b.rows {
                for g in groups {
                    let addr = std::ptr::from_ref(g) as usize;
                    for s in &g.spans {
                        let key = keys.key(&s.tenant_id, &s.trace_id, &s.span_id);
                        if let Some(p) = prev
                            && p.holds(key, s)?
                        {
                            out.prev_duplicates += 1;
                            continue;
                        }
                        keys.insert(key);
                        let row = (s, b.received.unix_nano, res.id(&s.resource_attributes)?);
                        if derived.contains(&(&*s.tenant_id, s.trace_id, s.span_id)) {
                            single.push((addr, row));
                        } else {
                            spans.push(row);
                        }
                    }
                }
            }
        }
        spans.sort_unstable_by(|(a, ..), (b, ..)| {
            (a.trace_id, a.span_id, &*a.tenant_id).cmp(&(b.trace_id, b.span_id, &*b.tenant_id))
        });
        let mut chunks = spans.chunks_exact(SPAN_ROWS_PER_STATEMENT);
        if chunks.len() > 0 {
            let mut multi = conn.prepare_cached(insert_spans_multi_sql())?;
            for chunk in &mut chunks {
                for (row, &s) in chunk.iter().enumerate() {
                    bind_span(&mut multi, row, s)?;
                }
                out.rows += multi.raw_execute()? as u64;
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() || !single.is_empty() {
            let mut one = conn.prepare_cached(INSERT_SPAN)?;
            for &s in rest {
                bind_span(&mut one, 0, s)?;
                out.rows += one.raw_execute()? as u64;
            }
            // Spans with derived logs, one by one: the change count says whether each is new.
            for &(addr, s) in &single {
                bind_span(&mut one, 0, s)?;
                let n = one.raw_execute()?;
                if n > 0 {
                    new_copies.insert((addr, s.0.span_id));
                    out.rows += n as u64;
                }
            }
        }
    }
    let mut logs: Option<rusqlite::CachedStatement<'_>> = None;
    // Synthesized logs first (of new spans only), then log records (the order of `Group::logs`).
    for b in batches {
        if let Rows::Traces(groups) = &b.rows {
            for (g, l) in groups.iter().flat_map(|g| g.logs.iter().map(move |l| (g, l))) {
                if let Some(s) = l.span_id
                    && !new_copies.contains(&(std::ptr::from_ref(g) as usize, s))
                {
                    continue;
                }
                let rid = res.id(&l.resource_attributes)?;
                let stmt = match &mut logs {
                    Some(s) => s,
                    None => logs.insert(conn.prepare_cached(INSERT_LOG)?),
                };
                insert_log(stmt, l, b.received.unix_nano, rid)?;
                out.rows += 1;
            }
        }
    }
    for b in batches {
        if let Rows::Logs(records) = &b.rows {
            for l in records {
                let rid = res.id(&l.resource_attributes)?;
                let stmt = match &mut logs {
                    Some(s) => s,
                    None => logs.insert(conn.prepare_cached(INSERT_LOG)?),
                };
                insert_log(stmt, l, b.received.unix_nano, rid)?;
                out.rows += 1;
            }
        }
    }
    drop(logs);
    for b in batches {
        if let Rows::Metrics(points) = &b.rows {
            let mut stmt = conn.prepare_cached(INSERT_POINT)?;
            for m in points {
                let rid = res.id(&m.resource_attributes)?;
                insert_point(&mut stmt, m, b.received.unix_nano, rid)?;
                out.rows += 1;
            }
        }
    }
    if let Some(id) = applied {
        conn.prepare_cached("INSERT INTO dlq_applied (id, applied_at) VALUES (?1, ?2)")?
            .execute((id, unix_nano_now()))?;
    }
    Ok(out)
}

fn unix_nano_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// True for failures caused by the rows themselves (a constraint, a value too big, a type
/// mismatch, a value that cannot be bound): retrying the same rows fails the same way, so a DLQ
/// replay bisects them. Everything else (I/O, full disk, read-only, locks, corruption) is the
/// database's state: replay waits and retries.
pub fn is_permanent(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            matches!(f.code, ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch)
        }
        rusqlite::Error::ToSqlConversionFailure(_)
        | rusqlite::Error::InvalidParameterCount(..)
        | rusqlite::Error::NulError(_) => true,
        _ => false,
    }
}

/// Why a transaction failed.
enum TxError {
    Sqlite(rusqlite::Error),
    Panicked(String),
}

impl TxError {
    fn permanent(&self) -> bool {
        match self {
            TxError::Sqlite(e) => is_permanent(e),
            TxError::Panicked(_) => true,
        }
    }
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Sqlite(e) => write!(f, "{e}"),
            TxError::Panicked(m) => write!(f, "panicked: {m}"),
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Segment settings of a shard writer (from [`crate::config::StoreConfig`]).
#[derive(Clone, Copy, Debug)]
pub struct SegmentLimits {
    /// Seal the active segment at this size (file + WAL).
    pub max_bytes: u64,
    /// ... or after it has been active this long.
    pub max_age: Duration,
    /// Drop sealed segments whose newest row is older than this (zero: keep).
    pub retention: Duration,
    /// This shard's share of `OTELRING_RETENTION_BYTES` (0: no size limit).
    pub retention_bytes: u64,
}

/// How often the writer checks retention (a catalog read and a `stat` per segment).
pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The active segment: the one file writer i writes.
pub(super) struct Active {
    pub info: SegmentInfo,
    pub conn: Connection,
    pub wal_path: PathBuf,
    pub extent: Extent,
    pub started: Instant,
    pub keys: SpanKeys,
}

impl Active {
    pub fn new(data_dir: &Path, info: SegmentInfo, conn: Connection, extent: Extent, keys: SpanKeys) -> Self {
        let path = data_dir.join(&info.file);
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        Self { info, conn, wal_path: PathBuf::from(wal), extent, started: Instant::now(), keys }
    }
}

/// A segment file created ahead of the rotation that will use it (schema committed).
struct Spare {
    seq: u64,
    file: String,
    conn: Connection,
}

/// Writer thread i's store: its active segment, the previous one (idempotency), the catalog,
/// its DLQ, its retention and checkpoint state.
pub struct ShardWriter {
    shard: usize,
    data_dir: PathBuf,
    active: Active,
    prev: Option<PrevSegment>,
    spare: Option<Spare>,
    /// The segment sealed last, while its closing thread checkpoints and closes it.
    sealing: Option<(u64, std::thread::JoinHandle<()>)>,
    catalog: Catalog,
    limits: SegmentLimits,
    /// SipHash key shared by this shard's span-key filters.
    hasher: RandomState,
    stats: Arc<Stats>,
    gauges: Arc<ShardGauges>,
    faults: Arc<Faults>,
    dlq: ShardDlq,
    /// When the next DLQ replay is due.
    replay: Backoff,
    /// When the next database / DLQ probe is due while this shard's readiness flags are set
    /// ([`replay::probes_due`]).
    probe: Backoff,
    next_retention: Instant,
    last_wal_warn: Option<Instant>,
    /// Injected statements already run ([`Faults::run_sql`]).
    faults_seen: usize,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("shard", &self.shard)
            .field("active", &self.active.info.file)
            .finish()
    }
}

impl ShardWriter {
    /// Builds shard `shard`'s writer over its open active segment (see [`super::Store`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shard: usize,
        data_dir: PathBuf,
        active: Active,
        prev: Option<PrevSegment>,
        catalog: Catalog,
        hasher: RandomState,
        dlq: ShardDlq,
        limits: SegmentLimits,
        stats: Arc<Stats>,
        gauges: Arc<ShardGauges>,
        faults: Arc<Faults>,
    ) -> Self {
        let now = Instant::now();
        let w = Self {
            shard,
            data_dir,
            active,
            prev,
            spare: None,
            sealing: None,
            catalog,
            limits,
            hasher,
            stats,
            gauges,
            faults,
            dlq,
            replay: Backoff::new(REPLAY_MIN_BACKOFF, REPLAY_MAX_BACKOFF),
            probe: Backoff::new(REPLAY_MIN_BACKOFF, REPLAY_MAX_BACKOFF),
            next_retention: now,
            last_wal_warn: None,
            faults_seen: 0,
        };
        w.dlq.publish(&w.gauges);
        w.publish_segments();
        w
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Runs test-injected SQL and rolls back a transaction a panic left open.
    fn prepare(&mut self) {
        for sql in self.faults.take_sql(&mut self.faults_seen) {
            if let Err(e) = self.active.conn.execute_batch(&sql) {
                tracing::warn!(shard = self.shard, error = %e, sql, "injected sql failed");
            }
        }
        if !self.active.conn.is_autocommit() {
            let _ = self.active.conn.execute_batch("ROLLBACK");
        }
    }

    /// One transaction: every row of `batches` (and a `dlq_applied` record) or nothing.
    fn transaction(&mut self, batches: &[Batch], applied: Option<&str>) -> Result<(), TxError> {
        let conn = &self.active.conn;
        let faults = &self.faults;
        let keys = &mut self.active.keys;
        let prev = self.prev.as_ref();
        let run = || -> rusqlite::Result<Inserted> {
            conn.execute_batch("BEGIN")?;
            let r = insert_rows(conn, batches, applied, keys, prev)
                .and_then(|n| faults.before_commit().map(|()| n));
            match r.and_then(|n| conn.execute_batch("COMMIT").map(|()| n)) {
                Ok(n) => Ok(n),
                Err(e) => {
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    Err(e)
                }
            }
        };
        let r = match catch_unwind(AssertUnwindSafe(run)) {
            Ok(r) => r.map_err(TxError::Sqlite),
            Err(p) => {
                if !self.active.conn.is_autocommit() {
                    let _ = self.active.conn.execute_batch("ROLLBACK");
                }
                Err(TxError::Panicked(panic_text(p.as_ref())))
            }
        };
        match r {
            Ok(n) => {
                self.gauges.commits.fetch_add(1, Ordering::Relaxed);
                self.gauges.prev_segment_duplicates.fetch_add(n.prev_duplicates, Ordering::Relaxed);
                let times = batches.iter().map(|b| b.received.unix_nano);
                let (lo, hi) = (times.clone().min(), times.max());
                if n.rows > 0
                    && let (Some(lo), Some(hi)) = (lo, hi)
                {
                    self.active.extent.add(n.rows, lo, hi);
                }
                self.publish_wal();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn publish_wal(&mut self) {
        let bytes = std::fs::metadata(&self.active.wal_path).map_or(0, |m| m.len());
        self.gauges.wal_bytes.store(bytes, Ordering::Relaxed);
        if bytes > WAL_WARN_BYTES && self.last_wal_warn.is_none_or(|t| t.elapsed() >= WAL_WARN_INTERVAL) {
            self.last_wal_warn = Some(Instant::now());
            tracing::warn!(
                shard = self.shard,
                wal_bytes = bytes,
                limit = WAL_WARN_BYTES,
                "WAL over its limit: a reader holds an old snapshot and checkpoints cannot reset it"
            );
        }
    }

    /// TRUNCATE checkpoint with the busy handler off: gives up at once if a reader is in the way.
    fn checkpoint_truncate(&mut self) {
        if self.active.conn.busy_timeout(Duration::ZERO).is_err() {
            return;
        }
        match self.active.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
            Ok(0) => tracing::debug!(shard = self.shard, "WAL truncated"),
            Ok(_) => tracing::debug!(shard = self.shard, "WAL truncate skipped: readers are active"),
            Err(e) => tracing::debug!(shard = self.shard, error = %e, "WAL truncate failed"),
        }
        if let Err(e) = self.active.conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(shard = self.shard, error = %e, "could not restore the busy timeout");
        }
        self.publish_wal();
    }

    /// One attempt at the oldest DLQ file (see [`replay`]; this writer's part is its
    /// [`replay::Sink`] impl).
    fn replay_oldest(&mut self) -> Outcome {
        let (shard, stats, gauges) = (self.shard, Arc::clone(&self.stats), Arc::clone(&self.gauges));
        replay::replay_oldest(self, shard, &stats, &gauges)
    }

    /// One maintenance tick: DLQ replay (when due), retention (when due), WAL truncation.
    /// Returns how soon the next tick is wanted.
    fn tick(&mut self) -> Option<Duration> {
        if !self.dlq.is_empty() && self.replay.is_due() {
            for _ in 0..REPLAY_FILES_PER_TICK {
                if self.dlq.is_empty() {
                    break;
                }
                match self.replay_oldest() {
                    Outcome::Finished => self.replay.succeeded(),
                    Outcome::Failed => {
                        self.gauges.dlq_replay_failures.fetch_add(1, Ordering::Relaxed);
                        self.replay.failed();
                        break;
                    }
                }
            }
            self.dlq.publish(&self.gauges);
        }
        if Instant::now() >= self.next_retention {
            self.reap_sealing(false);
            if let Err(e) = self.retention_step() {
                tracing::warn!(shard = self.shard, error = %e, "retention step failed");
            }
            self.next_retention = Instant::now() + RETENTION_CHECK_INTERVAL;
        }
        if self.rotation_due() {
            self.rotate();
        }
        if self.spare.is_none() {
            self.prepare_spare();
        }
        let wal_limit = self.faults.wal_truncate_bytes();
        if self.gauges.wal_bytes.load(Ordering::Relaxed) > wal_limit {
            self.checkpoint_truncate();
        }
        let (shard, stats) = (self.shard, Arc::clone(&self.stats));
        replay::probe_when_due(self, shard, &stats);
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut due = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if !self.dlq.is_empty() {
            due(self.replay.next());
        }
        if self.limits.retention > Duration::ZERO || self.limits.retention_bytes > 0 || self.sealing.is_some()
        {
            due(self.next_retention);
        }
        // An idle segment still ages out: come back when it is due.
        due(self.active.started + self.limits.max_age);
        if self.gauges.wal_bytes.load(Ordering::Relaxed) > wal_limit {
            // A reader kept the WAL from being truncated: try again while idle too.
            due(now + WAL_TRUNCATE_RETRY);
        }
        if replay::probes_due(&self.stats, self.shard, &self.dlq) {
            // A flag nothing else will clear: probe again while idle too.
            due(self.probe.next());
        }
        next.map(|t| t.saturating_duration_since(now).max(Duration::from_millis(1)))
    }

    /// Writes and removes the [`PROBE_ID`] row of `dlq_applied` in one transaction: the pages it
    /// touches are written to the WAL at COMMIT, so this fails like a group would while the
    /// disk is full or the file read-only. Counts as a transaction for [`Faults`].
    fn probe_transaction(&mut self) -> rusqlite::Result<()> {
        self.prepare();
        let conn = &self.active.conn;
        let run = || -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.execute(
                "INSERT OR REPLACE INTO dlq_applied (id, applied_at) VALUES (?1, ?2)",
                (PROBE_ID, unix_nano_now()),
            )?;
            conn.execute("DELETE FROM dlq_applied WHERE id = ?1", [PROBE_ID])?;
            self.faults.before_commit()?;
            conn.execute_batch("COMMIT")
        };
        let r = run();
        if r.is_err() && !self.active.conn.is_autocommit() {
            let _ = self.active.conn.execute_batch("ROLLBACK");
        }
        r
    }

    /// The `dlq_applied` records of file `id`.
    fn applied_parts(&self, id: &str) -> rusqlite::Result<Vec<Part>> {
        let mut stmt = self.active.conn.prepare_cached(
            "SELECT id FROM dlq_applied WHERE id = ?1 OR (id > ?1 || ':' AND id < ?1 || ';')",
        )?;
        let rows = stmt.query_map([id], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(p) = Part::parse(id, &r?) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Drops this shard's sealed segments that retention no longer keeps: those whose newest
    /// row is older than `OTELRING_RETENTION`, then the oldest ones while the shard's segments
    /// (active included) take more than its share of `OTELRING_RETENTION_BYTES`. The active
    /// segment is never dropped. Each drop unlists the segment
    /// in the catalog, then unlinks its files: no DELETE on the hot path.
    pub fn retention_step(&mut self) -> rusqlite::Result<()> {
        let sealed: Vec<SegmentInfo> =
            self.catalog.segments(Some(self.shard))?.into_iter().filter(|s| s.sealed).collect();
        let mut keep: Vec<(SegmentInfo, u64)> = Vec::with_capacity(sealed.len());
        if let Some(age) = i64::try_from(self.limits.retention.as_nanos()).ok().filter(|&n| n > 0) {
            let cutoff = unix_nano_now().saturating_sub(age);
            for seg in sealed {
                let old = match seg.max_ingested_at {
                    Some(t) => t < cutoff,
                    None => seg.created_at < cutoff,
                };
                if old {
                    self.drop_segment(&seg, RetentionReason::Age)?;
                } else {
                    let bytes = segment::segment_bytes(&self.data_dir, &seg.file);
                    keep.push((seg, bytes));
                }
            }
        } else {
            for seg in sealed {
                let bytes = segment::segment_bytes(&self.data_dir, &seg.file);
                keep.push((seg, bytes));
            }
        }
        let active = segment::segment_bytes(&self.data_dir, &self.active.info.file);
        let mut total: u64 = active + keep.iter().map(|(_, b)| b).sum::<u64>();
        if self.limits.retention_bytes > 0 {
            for (seg, bytes) in &keep {
                if total <= self.limits.retention_bytes {
                    break;
                }
                self.drop_segment(seg, RetentionReason::Bytes)?;
                total = total.saturating_sub(*bytes);
            }
        }
        self.gauges.data_bytes.store(total, Ordering::Relaxed);
        self.publish_segments();
        Ok(())
    }

    /// Unlists `seg` and removes its files (retention).
    fn drop_segment(&mut self, seg: &SegmentInfo, reason: RetentionReason) -> rusqlite::Result<()> {
        if self.sealing.as_ref().is_some_and(|(q, _)| *q == seg.seq) {
            // Still being checkpointed and closed (only the newest sealed segment can be).
            self.reap_sealing(true);
        }
        if self.prev.as_ref().is_some_and(|p| p.info.seq == seg.seq) {
            self.prev = None;
        }
        let bytes = segment::segment_bytes(&self.data_dir, &seg.file);
        self.catalog.remove(self.shard, seg.seq)?;
        if let Err(e) = segment::remove_segment_files(&self.data_dir, &seg.file) {
            // Unlisted already: start-up adopts the file again and retention drops it then.
            tracing::warn!(shard = self.shard, file = %seg.file, error = %e, "could not remove a dropped segment");
        }
        let g = &self.gauges;
        match reason {
            RetentionReason::Age => g.retention_segments_age.fetch_add(1, Ordering::Relaxed),
            RetentionReason::Bytes => g.retention_segments_bytes.fetch_add(1, Ordering::Relaxed),
        };
        g.retention_dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
        g.retention_deleted_rows.fetch_add(seg.rows, Ordering::Relaxed);
        tracing::info!(shard = self.shard, file = %seg.file, rows = seg.rows, bytes, reason = reason.as_str(),
            "retention dropped a segment");
        Ok(())
    }

    fn publish_segments(&self) {
        let n = self.catalog.segments(Some(self.shard)).map_or(0, |v| v.len() as u64);
        self.gauges.segments.store(n, Ordering::Relaxed);
        self.gauges
            .active_segment_bytes
            .store(segment::segment_bytes(&self.data_dir, &self.active.info.file), Ordering::Relaxed);
    }

    /// Seals the active segment now, whatever its size and age (tests, benchmarks, and an
    /// operator's `SIGHUP`-free way to cut a segment through the library).
    pub fn rotate_now(&mut self) {
        self.rotate();
    }

    /// The active segment's file name (tests, benchmarks).
    pub fn active_segment(&self) -> &str {
        &self.active.info.file
    }

    /// True when the active segment has reached its size or age limit (and holds rows).
    fn rotation_due(&self) -> bool {
        if self.active.extent.rows == 0 {
            return false;
        }
        self.active.started.elapsed() >= self.limits.max_age
            || segment::segment_bytes(&self.data_dir, &self.active.info.file) >= self.limits.max_bytes
    }

    /// Creates the next segment file ahead of its rotation (schema committed; not yet listed:
    /// a crash leaves an empty unlisted file, which start-up removes).
    fn prepare_spare(&mut self) {
        let seq = self.active.info.seq.max(self.catalog.max_seq(self.shard).ok().flatten().unwrap_or(0)) + 1;
        let file = segment::segment_file_name(self.shard, seq);
        let path = self.data_dir.join(&file);
        match open_connection(&path) {
            Ok(conn) => {
                if let Err(e) = conn.execute_batch(self.synchronous_pragma()) {
                    tracing::warn!(shard = self.shard, error = %e, "could not set up the next segment");
                    return;
                }
                self.spare = Some(Spare { seq, file, conn });
            }
            Err(e) => {
                tracing::warn!(shard = self.shard, file, error = %e, "could not prepare the next segment")
            }
        }
    }

    fn synchronous_pragma(&self) -> &'static str {
        let full: i64 = self.active.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap_or(1);
        if full >= 2 { "PRAGMA synchronous = FULL" } else { "PRAGMA synchronous = NORMAL" }
    }

    /// Joins the closing thread of the last sealed segment (when `wait`, or when it is done).
    fn reap_sealing(&mut self, wait: bool) {
        if let Some((seq, h)) = self.sealing.take() {
            if wait || h.is_finished() {
                if h.join().is_err() {
                    tracing::warn!(shard = self.shard, seq, "the segment closing thread panicked");
                }
            } else {
                self.sealing = Some((seq, h));
            }
        }
    }

    /// Seals the active segment and makes the spare the new active one. The writer stops only
    /// for the catalog transaction and a few statements: the spare was created ahead, and the
    /// sealed segment's final checkpoint and close run on a thread of their own. The previous
    /// segment becomes the sealed one (its filter moves with it); the records of DLQ files
    /// still pending are carried into the new segment, so their replay stays exactly-once.
    fn rotate(&mut self) {
        let t0 = Instant::now();
        if self.spare.is_none() {
            self.prepare_spare();
        }
        let Some(spare) = self.spare.take() else { return };
        self.reap_sealing(true);
        // dlq_applied records of pending files (ids sort by creation; see retention below).
        if let Some(oldest) = self.dlq.oldest().map(|e| e.id.clone()) {
            let carry = || -> rusqlite::Result<()> {
                let recs: Vec<(String, i64)> = self
                    .active
                    .conn
                    .prepare("SELECT id, applied_at FROM dlq_applied WHERE id >= ?1")?
                    .query_map([&oldest], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let tx = spare.conn.unchecked_transaction()?;
                for (id, at) in &recs {
                    tx.execute(
                        "INSERT OR IGNORE INTO dlq_applied (id, applied_at) VALUES (?1, ?2)",
                        (id, at),
                    )?;
                }
                tx.commit()
            };
            if let Err(e) = carry() {
                tracing::warn!(shard = self.shard, error = %e, "rotation postponed: could not carry dlq records");
                self.spare = Some(spare);
                return;
            }
        }
        let now = unix_nano_now();
        let sealed = SegmentInfo {
            sealed: true,
            min_ingested_at: self.active.extent.min_ingested_at,
            max_ingested_at: self.active.extent.max_ingested_at,
            rows: self.active.extent.rows,
            bytes: segment::segment_bytes(&self.data_dir, &self.active.info.file),
            ..self.active.info.clone()
        };
        let next = SegmentInfo::new_active(self.shard, spare.seq, spare.file.clone(), now);
        if let Err(e) = self.catalog.rotate(&sealed, &next) {
            tracing::warn!(shard = self.shard, error = %e, "rotation postponed: catalog update failed");
            self.spare = Some(spare);
            return;
        }
        let new_active = Active::new(
            &self.data_dir,
            next,
            spare.conn,
            Extent::default(),
            SpanKeys::new(self.hasher.clone()),
        );
        let old = std::mem::replace(&mut self.active, new_active);
        match PrevSegment::open(&self.data_dir, sealed.clone(), old.keys) {
            Ok(p) => self.prev = Some(p),
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "previous segment not readable: idempotency limited to the active segment");
                self.prev = None;
            }
        }
        let (shard, conn, seq) = (self.shard, old.conn, sealed.seq);
        let closer = std::thread::Builder::new().name(format!("otelring-seal-{shard}")).spawn(move || {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                tracing::debug!(shard, error = %e, "final checkpoint of a sealed segment failed");
            }
            if let Err((_, e)) = conn.close() {
                tracing::warn!(shard, error = %e, "closing a sealed segment failed");
            }
        });
        match closer {
            Ok(h) => self.sealing = Some((seq, h)),
            Err(e) => tracing::warn!(shard, error = %e, "could not start the segment closing thread"),
        }
        let pause = t0.elapsed();
        let nanos = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
        self.gauges.rotations.fetch_add(1, Ordering::Relaxed);
        self.gauges.rotation_max_pause_ns.fetch_max(nanos, Ordering::Relaxed);
        self.publish_wal();
        self.publish_segments();
        tracing::info!(shard, sealed = %sealed.file, rows = sealed.rows, bytes = sealed.bytes,
            active = %self.active.info.file, pause_us = pause.as_micros() as u64, "segment rotated");
    }
}

/// Why retention dropped a segment.
#[derive(Clone, Copy, Debug)]
enum RetentionReason {
    Age,
    Bytes,
}

impl RetentionReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Bytes => "bytes",
        }
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        self.reap_sealing(true);
    }
}

/// The SQLite sink's part of a DLQ replay: `dlq_applied` records what is settled, in the same
/// transaction as the rows, so a replay stays exactly-once across failed attempts and crashes.
impl replay::Sink for ShardWriter {
    fn dlq(&mut self) -> &mut ShardDlq {
        &mut self.dlq
    }

    fn probe_backoff(&mut self) -> &mut Backoff {
        &mut self.probe
    }

    fn probe_database(&mut self) -> Result<(), String> {
        self.probe_transaction().map_err(|e| e.to_string())
    }

    /// The file's `dlq_applied` records: the whole file, committed parts, poison units.
    fn settled(&mut self, file: &str) -> Result<replay::Settled, String> {
        let parts = self.applied_parts(file).map_err(|e| e.to_string())?;
        let range = |p: &Part| (p.first, p.last);
        Ok(replay::Settled {
            whole: parts.iter().any(|p| p.whole),
            stored: parts.iter().filter(|p| !p.whole && !p.poison).map(range).collect(),
            poison: parts.iter().filter(|p| p.poison).map(range).collect(),
        })
    }

    /// One transaction: the rows and their `dlq_applied` record (the file id when the file is
    /// whole, else `<id>:<first>-<last>`).
    fn insert_units(
        &mut self,
        file: &str,
        units: replay::Units,
        batches: &[Batch],
    ) -> Result<(), replay::Refused> {
        let tag =
            if units.whole { file.to_owned() } else { format!("{file}:{}-{}", units.first, units.last) };
        self.transaction(batches, Some(&tag))
            .map_err(|e| replay::Refused { permanent: e.permanent(), message: e.to_string() })
    }

    /// Records `<id>:<first>-<last>:poison` in `dlq_applied`.
    fn poison_found(&mut self, file: &str, first: u64, last: u64) -> Result<(), String> {
        let mark = format!("{file}:{first}-{last}:poison");
        self.active
            .conn
            .execute(
                "INSERT OR IGNORE INTO dlq_applied (id, applied_at) VALUES (?1, ?2)",
                (&mark, unix_nano_now()),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The `dlq_applied` records stay (retention ages them out): a copy of this file put back
    /// by hand, or found again after a crash before the delete, is skipped, not duplicated.
    fn finished(&mut self, _file: &str) {}
}

/// A `dlq_applied` record of one file: the whole file, a committed part, or a poison unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    whole: bool,
    first: u64,
    last: u64,
    poison: bool,
}

impl Part {
    fn parse(id: &str, rec: &str) -> Option<Part> {
        if rec == id {
            return Some(Part { whole: true, first: 0, last: 0, poison: false });
        }
        let rest = rec.strip_prefix(id)?.strip_prefix(':')?;
        let (range, poison) = match rest.strip_suffix(":poison") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let (a, b) = range.split_once('-')?;
        Some(Part { whole: false, first: a.parse().ok()?, last: b.parse().ok()?, poison })
    }
}

impl BatchWriter for ShardWriter {
    fn write(&mut self, group: &Group) -> Result<(), WriteError> {
        self.prepare();
        match self.transaction(group.batches(), None) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The database is failing: give replay a rest before it tries again.
                self.replay.postpone();
                match e {
                    TxError::Sqlite(e) if is_permanent(&e) => Err(WriteError::Refused(e.to_string())),
                    TxError::Sqlite(e) => Err(WriteError::Database(e.to_string())),
                    TxError::Panicked(m) => Err(WriteError::Panicked(m)),
                }
            }
        }
    }

    fn spill(&mut self, batches: &[Batch], cause: &WriteError) -> Result<(), WriteError> {
        self.dlq.spill_booked(batches, cause, self.shard, &self.stats, &self.gauges)
    }

    fn maintain(&mut self) -> Option<Duration> {
        self.prepare();
        self.tick()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse() {
        assert_eq!(Part::parse("x", "x"), Some(Part { whole: true, first: 0, last: 0, poison: false }));
        assert_eq!(Part::parse("x", "x:3-7"), Some(Part { whole: false, first: 3, last: 7, poison: false }));
        assert_eq!(
            Part::parse("x", "x:3-3:poison"),
            Some(Part { whole: false, first: 3, last: 3, poison: true })
        );
        assert_eq!(Part::parse("x", "y:3-3"), None);
    }

    #[test]
    fn permanent_errors_are_row_errors() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER NOT NULL)").unwrap();
        let e = c.execute("INSERT INTO t VALUES (NULL)", []).unwrap_err();
        assert!(is_permanent(&e));
        c.execute_batch("PRAGMA query_only = 1").unwrap();
        let e = c.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
        assert!(!is_permanent(&e));
    }
}

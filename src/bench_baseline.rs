//! The DESIGN 3 storage **baseline**, and the span generator the store benchmark shares with it.
//!
//! Benchmark support, not part of the server: it lives in the library (behind the default
//! `server` feature, which brings rusqlite) so that `cargo bench --bench store` and the release
//! binary (`otelring loadgen --baseline-spans 500000`, used by `benches/matrix.sh` to put a
//! ratio next to every end-to-end figure) run the very same code.
//!
//! Ids are random as the OpenTelemetry SDKs make them (W3C trace context: 128-bit trace ids and
//! 64-bit span ids from the generator, so every index takes scattered keys as from a real fleet);
//! [`Gen::ordered`] gives sequential trace ids instead, only to show the difference.
//!
//! The baseline: plain rusqlite inserting `total` spans (about 200 bytes of attribute JSON each,
//! 5 spans per trace, random trace ids) into an empty file, WAL + `synchronous=NORMAL`, a rowid
//! spans table with indexes on trace_id and on (service_name, start time), one trace upsert per
//! span, 5,000 spans per transaction, default checkpointing, and a final
//! `wal_checkpoint(TRUNCATE)` inside the timed region. Row generation is outside it.

use crate::pipeline::Group;
use crate::pipeline::batch::{
    Batch, Received, Rows, SpanId, SpanKind, SpanRow, StatusCode, TraceGroup, TraceId, TraceRow,
};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spans per measured baseline run (DESIGN 3: 500,000 into an empty file).
pub const SPANS: usize = 500_000;
/// Spans per trace (the end-to-end load of DESIGN 3).
pub const SPANS_PER_TRACE: usize = 5;
/// Spans per request (one batch): the end-to-end load's 1,000-span requests.
pub const SPANS_PER_REQUEST: usize = 1_000;
/// Baseline rows per transaction.
pub const BASELINE_TX_SPANS: usize = 5_000;
/// Name of the baseline's database file inside the directory it is given.
pub const BASELINE_FILE: &str = "baseline.db";

/// splitmix64 for deterministic ids and values; the second field is a clock that advances the
/// span start times the way a live service does (start times near "now", so time-ordered
/// indexes append); the third, with [`Gen::ordered`], the next sequential trace id.
#[derive(Debug, Clone)]
pub struct Gen(u64, i64, Option<(u64, u64)>);

impl Gen {
    /// A generator seeded with `seed`, its clock at zero: random trace and span ids.
    pub fn new(seed: u64) -> Self {
        Gen(seed, 0, None)
    }

    /// As [`Gen::new`], but trace ids `seed ‖ n` for n = 0, 1, 2...: consecutive traces sort next
    /// to each other and every index on trace ids appends at its right edge. No SDK makes such
    /// ids; only to show what random ids cost.
    pub fn ordered(seed: u64) -> Self {
        Gen(seed, 0, Some((seed, 0)))
    }

    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Strings every generated row shares (interned once, as the decoder does).
#[derive(Debug, Clone)]
pub struct Shared {
    tenant: Arc<str>,
    services: Vec<Arc<str>>,
    resource: Vec<Arc<str>>,
    scope: Arc<str>,
}

impl Default for Shared {
    fn default() -> Self {
        let services: Vec<Arc<str>> = (0..8).map(|i| Arc::from(format!("service-{i}").as_str())).collect();
        let resource = services
            .iter()
            .map(|s| {
                Arc::from(
                    format!(
                        r#"{{"service.name":"{s}","host.name":"node-7","telemetry.sdk.language":"rust"}}"#
                    )
                    .as_str(),
                )
            })
            .collect();
        Shared { tenant: Arc::from("default"), services, resource, scope: Arc::from("otelring-bench") }
    }
}

/// About 200 bytes of typed attribute JSON, 10 attributes.
fn attributes(g: &mut Gen) -> String {
    let r = g.next_u64();
    format!(
        r#"{{"http.method":"GET","http.route":"/api/v1/items/{{id}}","http.status_code":{},"net.peer.ip":"10.0.{}.{}","user.id":"u-{}","region":"eu-west-1","retry":false,"bytes":{},"db.system":"postgresql","component":"http"}}"#,
        200 + (r % 4) * 100,
        r % 256,
        (r >> 8) % 256,
        (r >> 16) % 1_000_000,
        (r >> 36) % 100_000
    )
}

/// One trace of [`SPANS_PER_TRACE`] spans (root first), with its aggregate row as the decoder
/// builds it. About 1% of traces carry an ERROR span.
pub fn trace(g: &mut Gen, s: &Shared) -> TraceGroup {
    let mut tid = [0u8; 16];
    if let Some((seed, n)) = g.2 {
        g.2 = Some((seed, n + 1));
        tid[..8].copy_from_slice(&seed.to_be_bytes());
        tid[8..].copy_from_slice(&n.to_be_bytes());
    } else {
        while tid == [0; 16] {
            tid[..8].copy_from_slice(&g.next_u64().to_le_bytes());
            tid[8..].copy_from_slice(&g.next_u64().to_le_bytes());
        }
    }
    let trace_id = TraceId(tid);
    let svc = (g.next_u64() % s.services.len() as u64) as usize;
    // Traces start 200 µs apart (5,000 traces/s), with up to 1 ms of jitter.
    g.1 += 200_000;
    let start = 1_700_000_000_000_000_000 + g.1 + (g.next_u64() % 1_000_000) as i64;
    let error = g.next_u64() % 100 == 0;
    let root = SpanId(g.next_u64().to_le_bytes());
    let spans: Vec<SpanRow> = (0..SPANS_PER_TRACE)
        .map(|i| SpanRow {
            tenant_id: s.tenant.clone(),
            trace_id,
            span_id: if i == 0 { root } else { SpanId(g.next_u64().to_le_bytes()) },
            parent_span_id: if i == 0 { None } else { Some(root) },
            name: format!("GET /api/v1/items/{i}"),
            kind: if i == 0 { SpanKind::Server } else { SpanKind::Client },
            service_name: s.services[svc].clone(),
            start_time_unix_nano: start + i as i64 * 1_000,
            end_time_unix_nano: start + 5_000_000 + i as i64 * 1_000,
            status_code: if error && i == SPANS_PER_TRACE - 1 {
                StatusCode::Error
            } else {
                StatusCode::Unset
            },
            status_message: String::new(),
            attributes: attributes(g),
            resource_attributes: s.resource[svc].clone(),
            scope_name: s.scope.clone(),
        })
        .collect();
    TraceGroup {
        trace: TraceRow {
            tenant_id: s.tenant.clone(),
            trace_id,
            service_name: s.services[svc].clone(),
            has_root: true,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 5_000_000 + (SPANS_PER_TRACE as i64 - 1) * 1_000,
            status: if error { StatusCode::Error } else { StatusCode::Unset },
            priority: error,
        },
        spans,
        logs: Vec::new(),
    }
}

/// A group of `spans` spans as [`SPANS_PER_REQUEST`]-span batches (shard 0).
pub fn group(g: &mut Gen, s: &Shared, spans: usize) -> Group {
    let mut batches = Vec::new();
    let mut left = spans;
    while left > 0 {
        let n = left.min(SPANS_PER_REQUEST);
        let traces = (0..n.div_ceil(SPANS_PER_TRACE)).map(|_| trace(g, s)).collect();
        batches.push(Batch::new(0, Rows::Traces(traces), Received::now()));
        left -= n;
    }
    Group::from(batches)
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` on the database at `path`: until the WAL is checkpointed
/// the work is not done, so every configuration of the store bench times one at its end.
pub fn final_checkpoint(path: &Path) -> rusqlite::Result<()> {
    let c = Connection::open(path)?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// The DESIGN 3 baseline: `total` spans into `dir`/[`BASELINE_FILE`] (created; it must not
/// exist), plain rusqlite, per-span trace upsert, two span indexes, [`BASELINE_TX_SPANS`] spans
/// per transaction. Returns spans/s of the timed region (transactions and the final checkpoint;
/// generation is outside it).
pub fn baseline(total: usize, dir: &Path) -> rusqlite::Result<f64> {
    let path = dir.join(BASELINE_FILE);
    let c = Connection::open(&path)?;
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    c.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE traces (trace_id TEXT PRIMARY KEY, service_name TEXT NOT NULL,
             start_time_unix_nano INTEGER NOT NULL, end_time_unix_nano INTEGER NOT NULL,
             duration_us INTEGER NOT NULL, status TEXT NOT NULL);
         CREATE TABLE spans (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, trace_id TEXT NOT NULL,
             span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
             service_name TEXT NOT NULL, start_time_unix_nano INTEGER NOT NULL,
             end_time_unix_nano INTEGER NOT NULL, duration_us INTEGER NOT NULL, status_code TEXT NOT NULL,
             status_message TEXT NOT NULL, attributes TEXT NOT NULL, resource_attributes TEXT NOT NULL,
             scope_name TEXT NOT NULL, ingested_at INTEGER NOT NULL);
         CREATE INDEX spans_trace_id ON spans (trace_id);
         CREATE INDEX spans_service_start ON spans (service_name, start_time_unix_nano);",
    )?;
    let s = Shared::default();
    let mut g = Gen::new(0x5EED);
    let mut left = total;
    let mut busy = Duration::ZERO;
    while left > 0 {
        let n = left.min(BASELINE_TX_SPANS);
        let grp = group(&mut g, &s, n);
        let t = Instant::now();
        let tx = c.unchecked_transaction()?;
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO traces VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (trace_id) DO UPDATE SET \
                 start_time_unix_nano = min(start_time_unix_nano, excluded.start_time_unix_nano), \
                 end_time_unix_nano = max(end_time_unix_nano, excluded.end_time_unix_nano), \
                 duration_us = (max(end_time_unix_nano, excluded.end_time_unix_nano) - \
                                min(start_time_unix_nano, excluded.start_time_unix_nano)) / 1000, \
                 status = CASE WHEN excluded.status = 'STATUS_CODE_ERROR' THEN excluded.status ELSE status END",
            )?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO spans VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            for sp in grp.spans() {
                let (tid, sid) = (sp.trace_id.to_hex(), sp.span_id.to_hex());
                let parent = sp.parent_span_id.map(|p| p.to_hex()).unwrap_or_default();
                up.execute((
                    &tid,
                    &*sp.service_name,
                    sp.start_time_unix_nano,
                    sp.end_time_unix_nano,
                    sp.duration_us(),
                    sp.status_code.as_str(),
                ))?;
                ins.execute(rusqlite::params![
                    &*sp.tenant_id,
                    tid,
                    sid,
                    parent,
                    sp.name,
                    sp.kind.as_str(),
                    &*sp.service_name,
                    sp.start_time_unix_nano,
                    sp.end_time_unix_nano,
                    sp.duration_us(),
                    sp.status_code.as_str(),
                    sp.status_message,
                    sp.attributes,
                    &*sp.resource_attributes,
                    &*sp.scope_name,
                    0i64
                ])?;
            }
        }
        tx.commit()?;
        busy += t.elapsed();
        left -= n;
    }
    // Checkpoint from a second connection while this one is still open, as the store bench does
    // for every configuration (closing the last connection would checkpoint untimed).
    let t = Instant::now();
    final_checkpoint(&path)?;
    busy += t.elapsed();
    drop(c);
    Ok(total as f64 / busy.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_writes_every_span() {
        let dir = tempfile::tempdir().unwrap();
        let rate = baseline(12_000, dir.path()).unwrap();
        assert!(rate > 0.0);
        let c = Connection::open(dir.path().join(BASELINE_FILE)).unwrap();
        let n: i64 = c.query_row("SELECT count(*) FROM spans", [], |r| r.get(0)).unwrap();
        let t: i64 = c.query_row("SELECT count(*) FROM traces", [], |r| r.get(0)).unwrap();
        assert_eq!((n, t), (12_000, 12_000 / SPANS_PER_TRACE as i64));
    }
}

//! Store benchmark (issue 3 item 8, DESIGN 3): spans/s into our SQLite shard writer against the
//! baseline, measured in the same run.
//!
//! - **baseline**: plain rusqlite, 500,000 spans (about 200 bytes of attribute JSON each) into an
//!   empty file, WAL + `synchronous=NORMAL`, a rowid spans table with indexes on trace_id and on
//!   (service_name, start time), one trace upsert per span, 5,000 rows per transaction;
//! - **ours**: the same spans (5 per trace, 1,000-span requests as batches) through
//!   [`ShardWriter::write`] into an empty shard, groups of 1,000, 5,000 and 20,000 spans, one
//!   shard, and two shards written in parallel (two threads, one file each);
//! - **index cost**: ours at 20,000-span groups with one index dropped at a time, and DESIGN 3's
//!   `WITHOUT ROWID` spans table for comparison.
//!
//! Every configuration runs [`ROUNDS`] times, interleaved, and the medians are printed (row
//! generation is outside the timed region). Then a short criterion group (20,000-span groups into
//! a warm file) for regression tracking. Run: `nice -n 0 cargo bench --bench store`
//! (`STORE_BENCH_SPANS=100000` for a quick look). Figures: docs/PERFORMANCE.md, "## Store".

use criterion::{Criterion, Throughput};
use otelring::config::StoreConfig;
use otelring::pipeline::batch::{
    Batch, Received, Rows, SpanId, SpanKind, SpanRow, StatusCode, TraceGroup, TraceId, TraceRow,
};
use otelring::pipeline::{BatchWriter, Group, Stats};
use otelring::store::{ShardWriter, Store, shard_file_name};
use rusqlite::Connection;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Spans per measured run (DESIGN 3: 500,000 into an empty file).
const SPANS: usize = 500_000;
/// Spans per trace (the end-to-end load of DESIGN 3).
const SPANS_PER_TRACE: usize = 5;
/// Spans per request (one batch): the end-to-end load's 1,000-span requests.
const SPANS_PER_REQUEST: usize = 1_000;
/// Baseline rows per transaction.
const BASELINE_TX_SPANS: usize = 5_000;
/// Interleaved runs per configuration; medians are reported.
const ROUNDS: usize = 3;

/// splitmix64: deterministic ids and values; `clock` advances the span start times the way a
/// live service does (start times near "now", so time-ordered indexes append).
struct Gen(u64, i64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct Shared {
    tenant: Arc<str>,
    services: Vec<Arc<str>>,
    resource: Vec<Arc<str>>,
    scope: Arc<str>,
}

fn shared() -> Shared {
    let services: Vec<Arc<str>> = (0..8).map(|i| Arc::from(format!("service-{i}").as_str())).collect();
    let resource = services
        .iter()
        .map(|s| {
            Arc::from(
                format!(r#"{{"service.name":"{s}","host.name":"node-7","telemetry.sdk.language":"rust"}}"#)
                    .as_str(),
            )
        })
        .collect();
    Shared { tenant: Arc::from("default"), services, resource, scope: Arc::from("otelring-bench") }
}

/// About 200 bytes of typed attribute JSON, 10 attributes.
fn attributes(g: &mut Gen) -> String {
    let r = g.next();
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
fn trace(g: &mut Gen, s: &Shared) -> TraceGroup {
    let mut tid = [0u8; 16];
    tid[..8].copy_from_slice(&g.next().to_le_bytes());
    tid[8..].copy_from_slice(&g.next().to_le_bytes());
    let trace_id = TraceId(tid);
    let svc = (g.next() % s.services.len() as u64) as usize;
    // Traces start 200 µs apart (5,000 traces/s), with up to 1 ms of jitter.
    g.1 += 200_000;
    let start = 1_700_000_000_000_000_000 + g.1 + (g.next() % 1_000_000) as i64;
    let error = g.next() % 100 == 0;
    let root = SpanId(g.next().to_le_bytes());
    let spans: Vec<SpanRow> = (0..SPANS_PER_TRACE)
        .map(|i| SpanRow {
            tenant_id: s.tenant.clone(),
            trace_id,
            span_id: if i == 0 { root } else { SpanId(g.next().to_le_bytes()) },
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

/// A group of `spans` spans as 1,000-span batches.
fn group(g: &mut Gen, s: &Shared, spans: usize) -> Group {
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Full,
    NoServiceIndex,
    /// Cost measurement only: without the unique index, spans are not idempotent.
    NoKeyIndex,
    NoTraceIndexes,
    /// DESIGN 3's recommended plan, which measured slower: spans `WITHOUT ROWID` keyed by
    /// (tenant_id, trace_id, span_id) plus the service index.
    WithoutRowidSpans,
}

fn open_writers(dir: &std::path::Path, shards: usize, variant: Variant) -> Vec<ShardWriter> {
    let cfg = StoreConfig { retention: Duration::ZERO, ..StoreConfig::for_data_dir(dir) };
    let st = Store::open(&cfg, shards, Arc::new(Stats::new())).expect("open store");
    for i in 0..shards {
        let c = Connection::open(dir.join(shard_file_name(i))).expect("open");
        match variant {
            Variant::Full => {}
            Variant::NoServiceIndex => c.execute_batch("DROP INDEX spans_service_start").expect("drop"),
            Variant::NoKeyIndex => c.execute_batch("DROP INDEX spans_key").expect("drop"),
            Variant::NoTraceIndexes => {
                c.execute_batch("DROP INDEX traces_errors; DROP INDEX traces_ingested").expect("drop")
            }
            Variant::WithoutRowidSpans => c
                .execute_batch(
                    "DROP TABLE spans; CREATE TABLE spans (tenant_id TEXT NOT NULL, trace_id TEXT NOT NULL, \
                     span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, \
                     service_name TEXT NOT NULL, start_time_unix_nano INTEGER NOT NULL, \
                     end_time_unix_nano INTEGER NOT NULL, duration_us INTEGER NOT NULL, \
                     status_code TEXT NOT NULL, status_message TEXT NOT NULL, attributes TEXT NOT NULL, \
                     resource_attributes TEXT NOT NULL, scope_name TEXT NOT NULL, ingested_at INTEGER NOT NULL, \
                     PRIMARY KEY (tenant_id, trace_id, span_id)) WITHOUT ROWID; \
                     CREATE INDEX spans_service_start ON spans (tenant_id, service_name, start_time_unix_nano);",
                )
                .expect("without rowid spans"),
        }
    }
    st.into_shard_writers()
}

/// Spans/s of `total` spans in groups of `group_spans` into `shards` empty shards written in
/// parallel (one thread per shard, wall clock from a barrier).
fn ours(total: usize, group_spans: usize, shards: usize, variant: Variant) -> f64 {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let writers = open_writers(dir.path(), shards, variant);
    let barrier = Arc::new(Barrier::new(shards));
    let threads: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(i, mut w)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let s = shared();
                let mut g = Gen(0x5EED + i as u64, 0);
                let mut left = total / shards;
                let mut busy = Duration::ZERO;
                barrier.wait();
                while left > 0 {
                    let n = left.min(group_spans);
                    let grp = group(&mut g, &s, n);
                    let t = Instant::now();
                    w.write(&grp).expect("write");
                    busy += t.elapsed();
                    left -= n;
                }
                busy
            })
        })
        .collect();
    // Generation runs on the writer threads outside the timed writes; the slowest thread's
    // write time is the wall time of the parallel run.
    let worst = threads.into_iter().map(|t| t.join().expect("thread")).max().unwrap_or(Duration::MAX);
    // Until the WAL is checkpointed the work is not done: a final TRUNCATE checkpoint is timed
    // too (for the baseline as well), so a larger checkpoint interval cannot hide its cost.
    let t = Instant::now();
    for i in 0..shards {
        final_checkpoint(&dir.path().join(shard_file_name(i)));
    }
    total as f64 / (worst + t.elapsed()).as_secs_f64()
}

fn final_checkpoint(path: &std::path::Path) {
    let c = Connection::open(path).expect("open");
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).expect("checkpoint");
}

/// The DESIGN 3 baseline: plain rusqlite, per-span trace upsert, two span indexes, 5,000 spans
/// per transaction.
fn baseline(total: usize) -> f64 {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let c = Connection::open(dir.path().join("baseline.db")).expect("open");
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).expect("wal");
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
    )
    .expect("schema");
    let s = shared();
    let mut g = Gen(0x5EED, 0);
    let mut left = total;
    let mut busy = Duration::ZERO;
    while left > 0 {
        let n = left.min(BASELINE_TX_SPANS);
        let grp = group(&mut g, &s, n);
        let t = Instant::now();
        let tx = c.unchecked_transaction().expect("begin");
        {
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO traces VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (trace_id) DO UPDATE SET \
                     start_time_unix_nano = min(start_time_unix_nano, excluded.start_time_unix_nano), \
                     end_time_unix_nano = max(end_time_unix_nano, excluded.end_time_unix_nano), \
                     duration_us = (max(end_time_unix_nano, excluded.end_time_unix_nano) - \
                                    min(start_time_unix_nano, excluded.start_time_unix_nano)) / 1000, \
                     status = CASE WHEN excluded.status = 'STATUS_CODE_ERROR' THEN excluded.status ELSE status END",
                )
                .expect("prepare");
            let mut ins = tx
                .prepare_cached("INSERT INTO spans VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)")
                .expect("prepare");
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
                ))
                .expect("upsert");
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
                ])
                .expect("insert");
            }
        }
        tx.commit().expect("commit");
        busy += t.elapsed();
        left -= n;
    }
    let t = Instant::now();
    final_checkpoint(&dir.path().join("baseline.db"));
    busy += t.elapsed();
    total as f64 / busy.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn headline(total: usize) {
    type Run = (&'static str, Box<dyn Fn() -> f64>);
    let runs: Vec<Run> = vec![
        ("baseline (rowid spans, 2 indexes, per-span upsert, 5k/tx)", Box::new(move || baseline(total))),
        ("ours, 1 shard, 1,000-span groups", Box::new(move || ours(total, 1_000, 1, Variant::Full))),
        ("ours, 1 shard, 5,000-span groups", Box::new(move || ours(total, 5_000, 1, Variant::Full))),
        ("ours, 1 shard, 20,000-span groups", Box::new(move || ours(total, 20_000, 1, Variant::Full))),
        (
            "ours, 2 shards in parallel, 20,000-span groups",
            Box::new(move || ours(total, 20_000, 2, Variant::Full)),
        ),
        (
            "ours, 1 shard, 20k groups, without spans_key (no idempotency: cost only)",
            Box::new(move || ours(total, 20_000, 1, Variant::NoKeyIndex)),
        ),
        (
            "ours, 1 shard, 20k groups, without spans_service_start",
            Box::new(move || ours(total, 20_000, 1, Variant::NoServiceIndex)),
        ),
        (
            "ours, 1 shard, 20k groups, without traces_errors + traces_ingested",
            Box::new(move || ours(total, 20_000, 1, Variant::NoTraceIndexes)),
        ),
        (
            "DESIGN 3 plan: spans WITHOUT ROWID, 1 shard, 20k groups",
            Box::new(move || ours(total, 20_000, 1, Variant::WithoutRowidSpans)),
        ),
    ];
    let only = std::env::var("STORE_BENCH_ONLY").unwrap_or_default();
    let runs: Vec<Run> = runs
        .into_iter()
        .filter(|(n, _)| only.is_empty() || n.contains("baseline") || n.contains(&only))
        .collect();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    for round in 0..ROUNDS {
        for (i, (name, run)) in runs.iter().enumerate() {
            let r = run();
            eprintln!("round {round}: {name}: {r:.0} spans/s");
            results[i].push(r);
        }
    }
    let base = median(results[0].clone());
    println!("\nstore: {total} spans per run, medians of {ROUNDS} interleaved runs");
    for ((name, _), r) in runs.iter().zip(results) {
        let all: Vec<String> = r.iter().map(|x| format!("{:.0}k", x / 1e3)).collect();
        let m = median(r);
        println!("{name:<70} {:>7.1}k spans/s  {:>5.2}x baseline  [{}]", m / 1e3, m / base, all.join(", "));
    }
}

fn criterion_group_20k() {
    let mut c =
        Criterion::default().sample_size(10).measurement_time(Duration::from_secs(8)).configure_from_args();
    let mut grp = c.benchmark_group("store");
    grp.throughput(Throughput::Elements(20_000));
    grp.bench_function("ours_20k_span_group_warm_file", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = open_writers(dir.path(), 1, Variant::Full).pop().expect("writer");
        let s = shared();
        let mut g = Gen(7, 0);
        b.iter_custom(|iters| {
            let mut busy = Duration::ZERO;
            for _ in 0..iters {
                let grp = group(&mut g, &s, 20_000);
                let t = Instant::now();
                w.write(&grp).expect("write");
                busy += t.elapsed();
            }
            busy
        });
    });
    grp.finish();
}

fn main() {
    let total = std::env::var("STORE_BENCH_SPANS").ok().and_then(|v| v.parse().ok()).unwrap_or(SPANS);
    let quick_only = std::env::args().any(|a| a == "--criterion-only");
    if !quick_only {
        headline(total);
    }
    criterion_group_20k();
}

//! Store benchmark (issue 3 item 8, DESIGN 3): spans/s into our SQLite shard writer against the
//! baseline, measured in the same run.
//!
//! - **baseline**: plain rusqlite, 500,000 spans (about 200 bytes of attribute JSON each) into an
//!   empty file, WAL + `synchronous=NORMAL`, a rowid spans table with indexes on trace_id and on
//!   (service_name, start time), one trace upsert per span, 5,000 rows per transaction
//!   (`otelring::bench_baseline`, shared with `otelring loadgen --baseline-spans` and the span
//!   generator used here);
//! - **ours**: the same spans (5 per trace, 1,000-span requests as batches) through
//!   [`ShardWriter::write`] into an empty shard, groups of 1,000, 5,000 and 20,000 spans, one
//!   shard, and two shards written in parallel (two threads, one file each);
//! - **index cost**: ours at 20,000-span groups with one index dropped at a time, and DESIGN 3's
//!   `WITHOUT ROWID` spans table for comparison.
//!
//! Every configuration runs [`ROUNDS`] times, interleaved, and the medians are printed (row
//! generation is outside the timed region). Trace and span ids are random, as the OpenTelemetry
//! SDKs make them (`STORE_BENCH_ORDERED_IDS=1`: sequential trace ids for "ours", only to show the
//! difference; the baseline keeps random ids). Then a short criterion group (20,000-span groups into
//! a warm file) for regression tracking. Run: `nice -n 0 cargo bench --bench store`
//! (`STORE_BENCH_SPANS=100000` for a quick look). Figures: docs/PERFORMANCE.md, "## Store".

use criterion::{Criterion, Throughput};
use otelring::bench_baseline::{Gen, SPANS, Shared, baseline, final_checkpoint, group};
use otelring::config::StoreConfig;
use otelring::pipeline::{BatchWriter, Stats};
use otelring::store::{ShardWriter, Store, shard_file_name};
use rusqlite::Connection;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Interleaved runs per configuration; medians are reported.
const ROUNDS: usize = 3;

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

/// The span generator: random ids, or sequential trace ids with `STORE_BENCH_ORDERED_IDS=1`.
fn generator(seed: u64) -> Gen {
    match std::env::var("STORE_BENCH_ORDERED_IDS") {
        Ok(v) if v != "0" => Gen::ordered(seed),
        _ => Gen::new(seed),
    }
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
                let s = Shared::default();
                let mut g = generator(0x5EED + i as u64);
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
        final_checkpoint(&dir.path().join(shard_file_name(i))).expect("checkpoint");
    }
    total as f64 / (worst + t.elapsed()).as_secs_f64()
}

/// The DESIGN 3 baseline (`otelring::bench_baseline::baseline`, the same function
/// `otelring loadgen --baseline-spans` runs) into an empty temp dir.
fn baseline_run(total: usize) -> f64 {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    baseline(total, dir.path()).expect("baseline")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn headline(total: usize) {
    type Run = (&'static str, Box<dyn Fn() -> f64>);
    let runs: Vec<Run> = vec![
        ("baseline (rowid spans, 2 indexes, per-span upsert, 5k/tx)", Box::new(move || baseline_run(total))),
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
    let ids = match std::env::var("STORE_BENCH_ORDERED_IDS") {
        Ok(v) if v != "0" => "ordered trace ids (ours), random (baseline)",
        _ => "random trace and span ids",
    };
    println!("\nstore: {total} spans per run, {ids}, medians of {ROUNDS} interleaved runs");
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
        let s = Shared::default();
        let mut g = generator(7);
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

//! The SQLite store with real files in temp dirs: schema and FK order, the trace rule, span
//! idempotency, failure injection → DLQ → replay (through the real pipeline), damaged DLQ files,
//! poison isolation, retention, `otelring sql`, the shard-count record.

use crate::util::*;
use otelring::config::{PipelineConfig, StoreConfig};
use otelring::pipeline::batch::{Batch, Received, Rows, Signal, SpanId, StatusCode, TraceGroup};
use otelring::pipeline::{BatchWriter, CommitError, LostReason, Pipeline, Stats, WriteError};
use otelring::store::{self, ShardWriter, Store, StoreError, dlq};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn scfg(dir: &Path) -> StoreConfig {
    StoreConfig::for_data_dir(dir)
}

fn open(dir: &Path, shards: usize) -> (Store, Arc<Stats>) {
    let stats = Arc::new(Stats::new());
    let s = Store::open(&scfg(dir), shards, stats.clone()).expect("open store");
    (s, stats)
}

fn writer(dir: &Path) -> (ShardWriter, Arc<Stats>) {
    let (s, stats) = open(dir, 1);
    (s.into_shard_writers().pop().expect("one writer"), stats)
}

fn db(dir: &Path, shard: usize) -> PathBuf {
    dir.join(store::shard_file_name(shard))
}

/// A row shard 0 refuses for good: a trigger aborts spans named "poison".
fn add_poison_trigger(dir: &Path) {
    Connection::open(db(dir, 0))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON span_rows WHEN NEW.name = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poison span'); END;",
        )
        .unwrap();
}

fn count(dir: &Path, shards: usize, sql: &str) -> i64 {
    (0..shards)
        .map(|i| {
            let c = Connection::open(db(dir, i)).unwrap();
            c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap()
        })
        .sum()
}

fn traces(first: u64, n: u64, spans: usize) -> Rows {
    Rows::Traces((first..first + n).map(|i| trace_group("default", i, spans, false)).collect())
}

fn assert_balanced(stats: &Stats) {
    for s in Signal::ALL {
        let b = stats.signal(s).books();
        assert!(b.balanced(), "{s} books do not balance: {b:?}");
    }
}

#[test]
fn one_group_lands_in_fk_order_with_the_documented_formats() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = writer(dir.path());
    let g = group_of(
        vec![traces(1, 3, 4), logs_request(0, 5, 9).rows, metrics_request(0, 6).rows, traces(10, 1, 2)],
        now_ns(),
    );
    w.write(&g).unwrap();
    let p = dir.path();
    assert_eq!(count(p, 1, "SELECT count(*) FROM traces"), 4);
    assert_eq!(count(p, 1, "SELECT count(*) FROM spans"), 14);
    assert_eq!(count(p, 1, "SELECT count(*) FROM logs"), 5);
    assert_eq!(count(p, 1, "SELECT count(*) FROM metric_points"), 6);
    let c = Connection::open(db(p, 0)).unwrap();
    let (tid, sid, parent, kind, status): (String, String, String, String, String) = c
        .query_row(
            "SELECT trace_id, span_id, parent_span_id, kind, status_code FROM spans WHERE parent_span_id = '' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(tid.len(), 32);
    assert_eq!(tid, tid.to_lowercase());
    assert_eq!(sid.len(), 16);
    assert_eq!(parent, "");
    assert_eq!(kind, "SPAN_KIND_SERVER");
    assert_eq!(status, "STATUS_CODE_OK");
    let m: String = c
        .query_row("SELECT json_extract(attributes, '$.\"http.method\"') FROM spans LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(m, "GET");
    let (dur, svc): (i64, String) = c
        .query_row(
            "SELECT duration_us, service_name FROM traces WHERE trace_id = ?1",
            [trace_id(1).to_hex()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(dur, (2_000_000_000 + 4 - 1_000_000_000) / 1_000);
    assert_eq!(svc, "checkout");
    // Logs without trace id are stored with '' and every row has ingested_at.
    assert_eq!(count(p, 1, "SELECT count(*) FROM logs WHERE trace_id = ''"), 2);
    assert_eq!(count(p, 1, "SELECT count(*) FROM metric_points WHERE ingested_at > 0 AND kind = 'gauge'"), 6);
}

/// A trace group whose trace row and spans are given explicitly.
#[allow(clippy::too_many_arguments)]
fn custom_group(
    tenant: &str,
    n: u64,
    span: u64,
    root: bool,
    service: &str,
    start: i64,
    end: i64,
    st: StatusCode,
) -> TraceGroup {
    let mut g = trace_group(tenant, n, 1, false);
    let s = &mut g.spans[0];
    s.span_id = SpanId(span.to_be_bytes());
    s.parent_span_id = if root { None } else { Some(SpanId(1u64.to_be_bytes())) };
    s.service_name = Arc::from(service);
    s.start_time_unix_nano = start;
    s.end_time_unix_nano = end;
    s.status_code = st;
    g.trace.service_name = Arc::from(service);
    g.trace.has_root = root;
    g.trace.start_time_unix_nano = start;
    g.trace.end_time_unix_nano = end;
    g.trace.status = st;
    g
}

fn trace_row(dir: &Path, tenant: &str, n: u64) -> (String, i64, i64, i64, String) {
    let c = Connection::open(db(dir, 0)).unwrap();
    c.query_row(
        "SELECT service_name, start_time_unix_nano, end_time_unix_nano, duration_us, status FROM traces \
         WHERE tenant_id = ?1 AND trace_id = ?2",
        (tenant, trace_id(n).to_hex()),
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .unwrap()
}

#[test]
fn trace_rule_holds_across_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = writer(dir.path());
    let t0 = now_ns();
    // Child first (a different service, later times), then the root in a later request.
    let child = custom_group("default", 7, 2, false, "db", 5_000_000, 9_000_000, StatusCode::Ok);
    w.write(&group_of(vec![Rows::Traces(vec![child])], t0)).unwrap();
    assert_eq!(
        trace_row(dir.path(), "default", 7),
        ("db".into(), 5_000_000, 9_000_000, 4_000, "STATUS_CODE_OK".into())
    );
    let root = custom_group("default", 7, 1, true, "frontend", 1_000_000, 6_000_000, StatusCode::Unset);
    w.write(&group_of(vec![Rows::Traces(vec![root])], t0)).unwrap();
    assert_eq!(
        trace_row(dir.path(), "default", 7),
        ("frontend".into(), 1_000_000, 9_000_000, 8_000, "STATUS_CODE_OK".into()),
        "root service wins, start min, end max, status never downgrades to UNSET"
    );
    // An error in a later request upgrades; a later OK does not downgrade; a later non-root
    // span does not take the service back.
    let err = custom_group("default", 7, 3, false, "db", 2_000_000, 3_000_000, StatusCode::Error);
    w.write(&group_of(vec![Rows::Traces(vec![err])], t0)).unwrap();
    let ok = custom_group("default", 7, 4, false, "cache", 2_000_000, 3_000_000, StatusCode::Ok);
    w.write(&group_of(vec![Rows::Traces(vec![ok])], t0)).unwrap();
    assert_eq!(
        trace_row(dir.path(), "default", 7),
        ("frontend".into(), 1_000_000, 9_000_000, 8_000, "STATUS_CODE_ERROR".into())
    );
    // Two tenants with one trace id stay apart.
    let other = custom_group("acme", 7, 1, true, "billing", 100, 200, StatusCode::Unset);
    w.write(&group_of(vec![Rows::Traces(vec![other])], t0)).unwrap();
    assert_eq!(trace_row(dir.path(), "acme", 7), ("billing".into(), 100, 200, 0, "STATUS_CODE_UNSET".into()));
    assert_eq!(trace_row(dir.path(), "default", 7).0, "frontend");
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM traces"), 2);
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 5);
}

#[test]
fn trace_rule_holds_within_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = writer(dir.path());
    // Three requests of one trace coalesced in one group: child, root, error child.
    let g = group_of(
        vec![
            Rows::Traces(vec![custom_group("default", 9, 2, false, "db", 5_000, 9_000, StatusCode::Ok)]),
            Rows::Traces(vec![custom_group(
                "default",
                9,
                1,
                true,
                "frontend",
                1_000,
                6_000,
                StatusCode::Unset,
            )]),
            Rows::Traces(vec![custom_group("default", 9, 3, false, "db", 2_000, 20_000, StatusCode::Error)]),
        ],
        now_ns(),
    );
    w.write(&g).unwrap();
    assert_eq!(
        trace_row(dir.path(), "default", 9),
        ("frontend".into(), 1_000, 20_000, 19, "STATUS_CODE_ERROR".into())
    );
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 3);
}

#[test]
fn the_same_span_twice_is_one_row_in_one_group_and_across_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = writer(dir.path());
    let g = group_of(vec![traces(1, 2, 3), traces(1, 2, 3)], now_ns());
    w.write(&g).unwrap();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 6);
    w.write(&group_of(vec![traces(1, 2, 3)], now_ns())).unwrap();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 6);
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM traces"), 2);
    // Enough spans for the multi-row statements, duplicated within and across groups.
    w.write(&group_of(vec![traces(100, 30, 5), traces(100, 30, 5)], now_ns())).unwrap();
    w.write(&group_of(vec![traces(100, 30, 5)], now_ns())).unwrap();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 6 + 150);
}

/// A started pipeline over a real store.
fn pipeline(
    dir: &Path,
    shards: usize,
    commit_mode: bool,
) -> (Pipeline, Arc<store::Faults>, Vec<Arc<store::ShardGauges>>) {
    let stats = Arc::new(Stats::new());
    let cfg = PipelineConfig { commit_mode, ..small_config(shards, 256, 1 << 30) };
    let st = Store::open(&scfg(dir), shards, stats.clone()).unwrap();
    let (faults, gauges) = (st.faults(), st.gauges());
    let p = Pipeline::new(cfg, stats).unwrap();
    p.start(st.into_writers()).unwrap();
    (p, faults, gauges)
}

fn submit_mix(p: &Pipeline, first: u64) -> (u64, u64, u64) {
    assert_eq!(p.submit(traces_request(first, 10, 5, &[2])).outcome.accepted_items(), 50);
    // Enough rows that every table of every shard needs new pages (the full-disk case).
    assert_eq!(p.submit(logs_request(first, 300, 9)).outcome.accepted_items(), 300);
    assert_eq!(p.submit(metrics_request(first, 300)).outcome.accepted_items(), 300);
    (50, 300, 300)
}

fn persisted(p: &Pipeline) -> u64 {
    Signal::ALL.iter().map(|&s| p.stats().signal(s).persisted_items.load(Ordering::SeqCst)).sum()
}

fn dlq_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("dlq"))
        .map(|d| {
            d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".dlq")).count()
        })
        .unwrap_or(0)
}

/// Injects a failure with `arm`, submits, checks the DLQ got the rows, heals with `heal`, and
/// checks replay restores exactly the same counts.
fn failure_then_replay(arm: impl Fn(&store::Faults, &Path), heal: impl Fn(&store::Faults)) {
    let dir = tempfile::tempdir().unwrap();
    let (p, faults, gauges) = pipeline(dir.path(), 2, false);
    arm(&faults, dir.path());
    let (spans, logs, points) = submit_mix(&p, 100);
    assert!(
        eventually(WAIT, || Signal::ALL
            .iter()
            .map(|&s| p.stats().signal(s).dlq_pending_items.load(Ordering::SeqCst))
            .sum::<i64>()
            == (spans + logs + points) as i64),
        "everything went to the DLQ: {:?}",
        Signal::ALL.map(|s| p.stats().signal(s).books())
    );
    assert!(dlq_files(dir.path()) >= 1);
    assert_eq!(persisted(&p), 0);
    heal(&faults);
    assert!(eventually(WAIT, || persisted(&p) == spans + logs + points), "replay restored everything");
    p.stop();
    let d = dir.path();
    assert_eq!(count(d, 2, "SELECT count(*) FROM spans"), spans as i64);
    assert_eq!(count(d, 2, "SELECT count(*) FROM traces"), 10);
    // 7 records + 1 synthesized log of the error trace.
    assert_eq!(count(d, 2, "SELECT count(*) FROM logs"), logs as i64 + 1);
    assert_eq!(count(d, 2, "SELECT count(*) FROM metric_points"), points as i64);
    assert_eq!(dlq_files(d), 0);
    assert_balanced(p.stats());
    for s in Signal::ALL {
        assert_eq!(p.stats().signal(s).dlq_pending_items.load(Ordering::SeqCst), 0);
        assert_eq!(p.stats().signal(s).lost_total(), 0);
    }
    assert!(gauges.iter().map(|g| g.dlq_replayed_files.load(Ordering::SeqCst)).sum::<u64>() >= 1);
    assert!(gauges.iter().map(|g| g.wal_bytes.load(Ordering::SeqCst)).sum::<u64>() > 0);
}

#[test]
fn hook_failure_goes_to_the_dlq_and_replay_restores_exact_counts() {
    failure_then_replay(|f, _| f.fail_next_commits(usize::MAX), |f| f.fail_next_commits(0));
}

#[test]
fn read_only_database_goes_to_the_dlq_and_replay_restores_exact_counts() {
    // Tests run as root here, which ignores file modes, so the read-only state is SQLite's own
    // (`query_only`), which fails writes with the same SQLITE_READONLY a read-only file gives.
    failure_then_replay(|f, _| f.run_sql("PRAGMA query_only = 1"), |f| f.run_sql("PRAGMA query_only = 0"));
}

#[test]
fn full_disk_goes_to_the_dlq_and_replay_restores_exact_counts() {
    // `max_page_count` cannot go below the current size, so 1 means "no new page": the next
    // page allocation fails with SQLITE_FULL.
    failure_then_replay(
        |f, _| f.run_sql("PRAGMA max_page_count = 1"),
        |f| f.run_sql("PRAGMA max_page_count = 1073741823"),
    );
}

#[test]
fn commit_mode_waits_for_the_commit_and_a_failure_never_spills() {
    let dir = tempfile::tempdir().unwrap();
    let (p, faults, _) = pipeline(dir.path(), 1, true);
    let ok = p.submit(traces_request(1, 3, 2, &[])).commit.expect("waiter");
    assert_eq!(ok.wait(), Ok(()));
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 6, "committed before the answer");
    faults.fail_next_commits(usize::MAX);
    let bad = p.submit(traces_request(10, 3, 2, &[])).commit.expect("waiter");
    // An I/O error is the database's state, not the rows': retryable (UNAVAILABLE).
    assert!(matches!(bad.wait(), Err(CommitError::Database(_))));
    faults.fail_next_commits(0);
    let ok = p.submit(logs_request(0, 3, 9)).commit.expect("waiter");
    assert_eq!(ok.wait(), Ok(()));
    p.stop();
    assert_eq!(dlq_files(dir.path()), 0);
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 6);
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM logs"), 3);
    assert_balanced(p.stats());
}

/// Spills a group of `traces` 3-span traces through a one-shard writer and returns the file.
fn spill_file(dir: &Path, first: u64, n: u64) -> PathBuf {
    let (mut w, _) = writer(dir);
    let g = group_of(vec![traces(first, n, 3)], now_ns());
    w.spill(g.batches(), &WriteError::Database("test".into())).unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("dlq"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "dlq"))
        .collect();
    assert_eq!(files.len(), 1);
    files.into_iter().next().unwrap()
}

#[test]
fn dlq_recovered_at_start_replays_once_even_when_the_file_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = spill_file(dir.path(), 1, 4);
    let copy = std::fs::read(&file).unwrap();
    // A restart finds the file: recovered and pending, then replayed.
    let (mut w, stats) = writer(dir.path());
    assert_eq!(stats.signal(Signal::Traces).dlq_recovered_items.load(Ordering::SeqCst), 12);
    assert_eq!(stats.signal(Signal::Traces).dlq_pending_items.load(Ordering::SeqCst), 12);
    w.maintain();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 12);
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM logs"), 0);
    assert!(!file.exists());
    assert_eq!(stats.signal(Signal::Traces).persisted_items.load(Ordering::SeqCst), 12);
    assert_balanced(&stats);
    drop(w);
    // As after a crash between the commit and the delete: the same file again. Skipped.
    std::fs::write(&file, &copy).unwrap();
    let (mut w, stats) = writer(dir.path());
    w.maintain();
    assert!(!file.exists());
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 12);
    assert_eq!(stats.signal(Signal::Traces).persisted_items.load(Ordering::SeqCst), 12);
    assert_balanced(&stats);
}

#[test]
fn replaying_logs_twice_does_not_duplicate_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = writer(dir.path());
    let g = group_of(vec![logs_request(0, 5, 9).rows], now_ns());
    w.spill(g.batches(), &WriteError::Database("test".into())).unwrap();
    let file = std::fs::read_dir(dir.path().join("dlq"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_file())
        .unwrap();
    let copy = std::fs::read(&file).unwrap();
    w.maintain();
    std::fs::write(&file, &copy).unwrap();
    drop(w);
    let (mut w, _) = writer(dir.path());
    w.maintain();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM logs"), 5);
}

#[test]
fn a_dlq_file_cut_in_half_is_set_aside_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let file = spill_file(dir.path(), 1, 4);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    let (mut w, stats) = writer(dir.path());
    w.maintain();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 0);
    assert!(!file.exists());
    assert_eq!(std::fs::read_dir(dir.path().join("dlq").join(dlq::CORRUPT_DIR)).unwrap().count(), 1);
    let st = stats.signal(Signal::Traces);
    assert_eq!(st.lost(LostReason::DlqCorrupt), 12, "the intact header names the lost items");
    assert_eq!(st.dlq_pending_items.load(Ordering::SeqCst), 0);
    assert_balanced(&stats);
}

#[test]
fn a_damaged_dlq_body_is_set_aside_at_replay() {
    let dir = tempfile::tempdir().unwrap();
    let file = spill_file(dir.path(), 1, 4);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let (mut w, stats) = writer(dir.path());
    assert_eq!(stats.signal(Signal::Traces).dlq_pending_items.load(Ordering::SeqCst), 12);
    w.maintain();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 0);
    assert_eq!(stats.signal(Signal::Traces).lost(LostReason::DlqCorrupt), 12);
    assert_balanced(&stats);
}

#[test]
fn a_half_written_temp_file_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dlq");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("shard-00-x{}", dlq::TMP_SUFFIX)), b"half").unwrap();
    let (s, _) = open(dir.path(), 1);
    assert_eq!(s.recovered().tmp_files, 1);
    assert_eq!(std::fs::read_dir(d.join(dlq::CORRUPT_DIR)).unwrap().count(), 1);
}

#[test]
fn a_poison_row_is_isolated_and_the_good_rows_land() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _faults, gauges) = {
        let stats = Arc::new(Stats::new());
        let st = Store::open(&scfg(dir.path()), 1, stats.clone()).unwrap();
        add_poison_trigger(dir.path());
        let (f, g) = (st.faults(), st.gauges());
        let p = Pipeline::new(small_config(1, 256, 1 << 30), stats).unwrap();
        p.start(st.into_writers()).unwrap();
        (p, f, g)
    };
    let mut req = traces_request(1, 9, 3, &[]);
    if let Rows::Traces(g) = &mut req.rows {
        g[4].spans[1].name = "poison".into();
    }
    assert_eq!(p.submit(req).outcome.accepted_items(), 27);
    let st = p.stats().signal(Signal::Traces);
    assert!(eventually(WAIT, || st.persisted_items.load(Ordering::SeqCst) == 24
        && st.lost(LostReason::Poison) == 3));
    p.stop();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 24);
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM traces"), 8);
    assert_eq!(std::fs::read_dir(dir.path().join("dlq").join(dlq::POISON_DIR)).unwrap().count(), 1);
    assert_eq!(dlq_files(dir.path()), 0);
    assert_eq!(gauges[0].poison_units.load(Ordering::SeqCst), 1);
    assert_balanced(p.stats());
}

#[test]
fn dlq_limits_evict_the_oldest_and_count_them_lost() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::new());
    let cfg = StoreConfig { dlq_max_files: 2, ..scfg(dir.path()) };
    let mut w = Store::open(&cfg, 1, stats.clone()).unwrap().into_shard_writers().pop().unwrap();
    for i in 0..3 {
        let g = group_of(vec![traces(i * 10, 2, 3)], now_ns());
        w.spill(g.batches(), &WriteError::Database("test".into())).unwrap();
        // What the writer loop books after a successful spill.
        stats.signal(Signal::Traces).dlq_pending_items.fetch_add(6, Ordering::SeqCst);
        stats.signal(Signal::Traces).submitted_items.fetch_add(6, Ordering::SeqCst);
    }
    assert_eq!(dlq_files(dir.path()), 2);
    let st = stats.signal(Signal::Traces);
    assert_eq!(st.lost(LostReason::DlqEvicted), 6);
    assert_eq!(st.dlq_pending_items.load(Ordering::SeqCst), 12);
    w.maintain();
    w.maintain();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 12);
    // The oldest (traces 0 and 1) went.
    assert_eq!(
        count(
            dir.path(),
            1,
            &format!("SELECT count(*) FROM spans WHERE trace_id = '{}'", trace_id(0).to_hex())
        ),
        0
    );
    assert_balanced(&stats);
}

#[test]
fn a_failing_dlq_keeps_the_group_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // DLQ_PATH is a file: every spill fails.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let stats = Arc::new(Stats::new());
    let cfg = StoreConfig { dlq_path: blocker.clone(), ..scfg(dir.path()) };
    let st = Store::open(&cfg, 1, stats.clone());
    // The DLQ directory cannot even be created: opening refuses, naming it.
    assert!(matches!(st, Err(StoreError::Io { .. })));
    std::fs::remove_file(&blocker).unwrap();
    let st = Store::open(&cfg, 1, stats.clone()).unwrap();
    let faults = st.faults();
    let p = Pipeline::new(small_config(1, 256, 1 << 30), stats).unwrap();
    p.start(st.into_writers()).unwrap();
    // Now break the DLQ too, and the database.
    std::fs::remove_dir_all(&blocker).unwrap();
    std::fs::write(&blocker, b"x").unwrap();
    faults.fail_next_commits(usize::MAX);
    p.submit(traces_request(1, 2, 2, &[]));
    std::thread::sleep(Duration::from_millis(200));
    let s = p.stats().signal(Signal::Traces);
    assert_eq!(s.in_flight_items.load(Ordering::SeqCst), 4, "the writer keeps the group");
    faults.fail_next_commits(0);
    assert!(eventually(WAIT, || s.persisted_items.load(Ordering::SeqCst) == 4), "retried into the database");
    p.stop();
    assert_balanced(p.stats());
}

#[test]
fn retention_drops_whole_old_segments_and_keeps_young_ones() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::new());
    let cfg = StoreConfig { retention: Duration::from_secs(3_600), ..scfg(dir.path()) };
    let mut w = Store::open(&cfg, 1, stats).unwrap().into_shard_writers().pop().unwrap();
    let old = now_ns() - 2 * 3_600 * 1_000_000_000;
    w.write(&group_of(
        vec![traces(1, 700, 2), logs_request(0, 2_500, 9).rows, metrics_request(0, 2_100).rows],
        old,
    ))
    .unwrap();
    let first = w.active_segment().to_owned();
    w.rotate_now();
    w.write(&group_of(
        vec![traces(5_000, 3, 2), logs_request(10_000, 4, 9).rows, metrics_request(10_000, 5).rows],
        now_ns(),
    ))
    .unwrap();
    let second = w.active_segment().to_owned();
    w.rotate_now();
    // The young segment stays; the old one goes whole, file and catalog row.
    w.retention_step().unwrap();
    assert!(!dir.path().join(&first).exists(), "old segment unlinked");
    assert!(dir.path().join(&second).exists());
    let d = dir.path();
    let q = |sql: &str| -> i64 {
        store::sql::open_read_only(d).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
    };
    assert_eq!(q("SELECT count(*) FROM traces"), 3);
    assert_eq!(q("SELECT count(*) FROM spans"), 6);
    assert_eq!(q("SELECT count(*) FROM logs"), 4);
    assert_eq!(q("SELECT count(*) FROM metric_points"), 5);
    let cat = store::catalog::Catalog::open_read_only(d).unwrap().unwrap();
    let files: Vec<String> = cat.segments(None).unwrap().into_iter().map(|s| s.file).collect();
    assert!(!files.contains(&first) && files.contains(&second), "{files:?}");
}

#[test]
fn retention_bytes_drops_the_oldest_segments_first() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::new());
    // Keep everything by age; at most ~1 segment's worth of bytes.
    let cfg = StoreConfig { retention: Duration::ZERO, retention_bytes: 1, ..scfg(dir.path()) };
    let (store, gauges) = {
        let s = Store::open(&cfg, 1, stats).unwrap();
        let g = s.gauges();
        (s, g)
    };
    let mut w = store.into_shard_writers().pop().unwrap();
    let mut files = Vec::new();
    for k in 0..3u64 {
        w.write(&group_of(vec![traces(k * 100, 50, 3)], now_ns())).unwrap();
        files.push(w.active_segment().to_owned());
        w.rotate_now();
    }
    w.retention_step().unwrap();
    // Over the limit: every sealed segment goes, oldest first; the active one always stays.
    for f in &files {
        assert!(!dir.path().join(f).exists(), "{f} dropped");
    }
    assert!(dir.path().join(w.active_segment()).exists());
    assert_eq!(gauges[0].retention_segments_bytes.load(Ordering::SeqCst), 3);
    assert_eq!(gauges[0].retention_deleted_rows.load(Ordering::SeqCst), 3 * 150);
    assert!(gauges[0].retention_dropped_bytes.load(Ordering::SeqCst) > 0);
}

#[test]
fn sql_sees_rows_from_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path(), 3);
    for (i, mut w) in s.into_shard_writers().into_iter().enumerate() {
        w.write(&group_of(
            vec![traces(i as u64 * 100, 1 + i as u64, 2), logs_request(0, 1, 9).rows],
            now_ns(),
        ))
        .unwrap();
    }
    let mut out = Vec::new();
    store::sql::run(
        dir.path(),
        "SELECT shard, count(*) AS n FROM spans GROUP BY shard ORDER BY shard",
        true,
        &mut out,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, serde_json::json!([{"shard":0,"n":2},{"shard":1,"n":4},{"shard":2,"n":6}]));
    let mut out = Vec::new();
    store::sql::run(dir.path(), "SELECT count(*) AS traces FROM traces", false, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("traces") && text.contains("\n6\n") && text.contains("(1 row)"), "{text}");
    // Read-only: writes are refused.
    let mut out = Vec::new();
    assert!(store::sql::run(dir.path(), "DELETE FROM s0.spans", false, &mut out).is_err());
    // The binary, end to end.
    let o = std::process::Command::new(crate::util::server_bin())
        .args(["sql", "--json", "SELECT count(*) AS n FROM logs"])
        .env("OTELRING_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!([{"n":3}]));
}

#[test]
fn a_shard_count_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 2));
    assert_eq!(store::recorded_shards(dir.path()).unwrap(), Some(2));
    let e = Store::open(&scfg(dir.path()), 3, Arc::new(Stats::new())).unwrap_err();
    assert!(matches!(e, StoreError::ShardMismatch { recorded: 2, requested: 3, .. }), "{e}");
    // Reopening with the recorded count works.
    drop(open(dir.path(), 2));
    // The CLI: unset workers reuse the record, an explicit different value is refused.
    let o = std::process::Command::new(crate::util::server_bin())
        .args(["config"])
        .env("OTELRING_DATA_DIR", dir.path())
        .env("INGEST_PIPELINE_WORKERS", "3")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("INGEST_PIPELINE_WORKERS"));
    let o = std::process::Command::new(crate::util::server_bin())
        .args(["config"])
        .env("OTELRING_DATA_DIR", dir.path())
        .env_remove("INGEST_PIPELINE_WORKERS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("shards: 2"));
    // Shard files without a record are refused rather than guessed.
    std::fs::remove_file(dir.path().join(store::SHARD_RECORD)).unwrap();
    assert!(matches!(store::recorded_shards(dir.path()), Err(StoreError::MissingRecord { .. })));
}

#[test]
fn what_is_left_in_the_dlq_at_stop_is_replayed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (p, faults, _) = pipeline(dir.path(), 2, false);
    faults.fail_next_commits(usize::MAX);
    let (spans, logs, points) = submit_mix(&p, 1);
    p.stop();
    assert_balanced(p.stats());
    let pending: i64 =
        Signal::ALL.iter().map(|&s| p.stats().signal(s).dlq_pending_items.load(Ordering::SeqCst)).sum();
    assert_eq!(pending, (spans + logs + points) as i64);
    drop(p);
    // Next start: recovered, pending, replayed by each shard's own writer.
    let (st, stats) = open(dir.path(), 2);
    let recovered: u64 =
        Signal::ALL.iter().map(|&s| stats.signal(s).dlq_recovered_items.load(Ordering::SeqCst)).sum();
    assert_eq!(recovered, spans + logs + points);
    for mut w in st.into_shard_writers() {
        let mine = format!("shard-{:02}-", w.shard());
        let has_files = || {
            std::fs::read_dir(dir.path().join("dlq"))
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(&mine))
        };
        // One file per tick.
        for _ in 0..100 {
            if !has_files() {
                break;
            }
            w.maintain();
        }
    }
    assert_eq!(dlq_files(dir.path()), 0);
    assert_eq!(count(dir.path(), 2, "SELECT count(*) FROM spans"), spans as i64);
    assert_eq!(count(dir.path(), 2, "SELECT count(*) FROM metric_points"), points as i64);
    assert_balanced(&stats);
}

#[test]
fn dlq_files_round_trip_every_row_type() {
    use otelring::pipeline::batch::{MetricKind, NumberValue, Temporality};
    let mut hist = metric_point(3);
    hist.kind = MetricKind::Histogram;
    hist.temporality = Some(Temporality::Cumulative);
    hist.value = None;
    hist.count = Some(u64::MAX);
    hist.sum = Some(f64::NAN);
    hist.min = Some(-1.5);
    hist.max = Some(f64::INFINITY);
    hist.bucket_counts = Some("[1,2,3]".into());
    hist.explicit_bounds = Some("[0.5,1.0]".into());
    let mut sum = metric_point(4);
    sum.kind = MetricKind::Sum;
    sum.is_monotonic = Some(true);
    sum.value = Some(NumberValue::Double(2.5));
    sum.scale = Some(-3);
    sum.zero_count = Some(7);
    sum.positive_offset = Some(-2);
    sum.negative_bucket_counts = Some("[]".into());
    sum.quantiles = Some(r#"[{"quantile":0.5,"value":1}]"#.into());
    let mut log = log_row(9, 17, true);
    log.body = None;
    let batches = vec![
        Batch::new(
            1,
            Rows::Traces(vec![trace_group("acme", 1, 3, true), trace_group("default", 2, 1, false)]),
            Received::now(),
        ),
        Batch::new(1, Rows::Logs(vec![log, log_row(10, 9, false)]), Received::now()),
        Batch::new(1, Rows::Metrics(vec![hist, sum, metric_point(5)]), Received::now()),
    ];
    let bytes = dlq::encode(&batches, 1, 42, 7, "disk full");
    let d = dlq::decode(&bytes, 1).unwrap();
    assert_eq!(d.cause, "disk full");
    assert_eq!(d.header.items, [4, 2, 3]);
    assert_eq!(d.header.units, 7);
    assert_eq!(d.batches.len(), 3);
    for (a, b) in batches.iter().zip(&d.batches) {
        assert_eq!(a.received.unix_nano, b.received.unix_nano);
        // NaN != NaN: compare the debug text.
        assert_eq!(format!("{:?}", a.rows), format!("{:?}", b.rows));
    }
    // Every truncation is refused, never half trusted.
    for cut in [0, 10, dlq::HEADER_LEN, bytes.len() / 2, bytes.len() - 1] {
        assert!(dlq::decode(&bytes[..cut], 1).is_err(), "cut at {cut}");
    }
    // Unit slices: units 1..=3 are trace 2, the first log, the second log.
    assert_eq!(dlq::items_of_units(&d.batches, 1, 3), [1, 2, 0]);
    let part = dlq::slice_units(&d.batches, 1, 3);
    assert_eq!(part.iter().map(|b| b.rows.items()).sum::<u64>(), 3);
}

#[test]
fn store_config_defaults_and_errors_name_their_variable() {
    let c = StoreConfig::default();
    assert_eq!(c.dlq_path, Path::new("./data").join("dlq"));
    assert_eq!(c.dlq_max_files, 1000);
    assert_eq!(c.dlq_max_bytes, 512 << 20);
    assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(StoreConfig { dlq_max_files: 0, ..c.clone() }.validate().unwrap_err().name, "DLQ_MAX_FILES");
    assert_eq!(StoreConfig { dlq_max_bytes: 0, ..c }.validate().unwrap_err().name, "DLQ_MAX_BYTES");
}

#[test]
fn commit_mode_only_the_failing_request_gets_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::new());
    let st = Store::open(&scfg(dir.path()), 1, stats.clone()).unwrap();
    add_poison_trigger(dir.path());
    let cfg = PipelineConfig { commit_mode: true, ..small_config(1, 256, 1 << 30) };
    let p = Pipeline::new(cfg, stats).unwrap();
    // Queue both before the writer starts, so they share one group (group commit).
    let good = p.submit(traces_request(1, 3, 2, &[])).commit.unwrap();
    let mut req = traces_request(50, 2, 2, &[]);
    if let Rows::Traces(g) = &mut req.rows {
        g[1].spans[0].name = "poison".into();
    }
    let bad = p.submit(req).commit.unwrap();
    p.start(st.into_writers()).unwrap();
    assert_eq!(good.wait(), Ok(()));
    // The trigger's ABORT is a constraint failure: the same rows fail again, so the client is
    // told not to retry (400 / INVALID_ARGUMENT), not UNAVAILABLE.
    assert!(matches!(bad.wait(), Err(CommitError::Refused(_))));
    p.stop();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 6);
    assert_eq!(dlq_files(dir.path()), 0, "commit-mode batches never go to the DLQ");
    assert_balanced(p.stats());
}

#[test]
fn sql_reads_while_the_writer_holds_the_shard_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = writer(dir.path());
    w.write(&group_of(vec![traces(1, 4, 2)], now_ns())).unwrap();
    // A reader in the middle of a statement does not stop the writer (WAL).
    let reader = store::sql::open_read_only(dir.path()).unwrap();
    let mut stmt = reader.prepare("SELECT span_id FROM spans").unwrap();
    let mut rows = stmt.query([]).unwrap();
    assert!(rows.next().unwrap().is_some());
    w.write(&group_of(vec![traces(100, 4, 2)], now_ns())).unwrap();
    drop(rows);
    drop(stmt);
    let n: i64 = reader.query_row("SELECT count(*) FROM spans", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 16);
}

// ---------------------------------------------------------------------------------------------
// Regressions of the DLQ and maintenance review (fault injection through `store::Faults` and the
// real file system).

/// A one-shard writer over `cfg` with its stats, failure hook and gauges.
fn writer_with(cfg: &StoreConfig) -> (ShardWriter, Arc<Stats>, Arc<store::Faults>, Arc<store::ShardGauges>) {
    let stats = Arc::new(Stats::new());
    let st = Store::open(cfg, 1, stats.clone()).unwrap();
    let (faults, gauges) = (st.faults(), st.gauges().remove(0));
    (st.into_shard_writers().pop().unwrap(), stats, faults, gauges)
}

/// Spills `rows` through `w` and books it as the writer loop does after a successful spill.
fn spill_booked(w: &mut ShardWriter, stats: &Stats, rows: Rows) -> Result<(), WriteError> {
    let g = group_of(vec![rows], now_ns());
    w.spill(g.batches(), &WriteError::Database("test".into()))?;
    for b in g.batches() {
        let st = stats.signal(b.signal());
        st.submitted_items.fetch_add(b.rows.items(), Ordering::SeqCst);
        st.dlq_pending_items.fetch_add(b.rows.items() as i64, Ordering::SeqCst);
    }
    Ok(())
}

/// This shard's pending DLQ files, oldest first.
fn dlq_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("dlq"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "dlq"))
        .collect();
    v.sort();
    v
}

#[test]
fn dlq_spill_that_fails_after_evicting_still_books_the_evicted_files() {
    // The write fails after the oldest file was deleted to make room.
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { dlq_max_files: 2, ..scfg(dir.path()) };
    let (mut w, stats, faults, gauges) = writer_with(&cfg);
    let tr = stats.signal(Signal::Traces);
    spill_booked(&mut w, &stats, traces(0, 2, 3)).unwrap();
    spill_booked(&mut w, &stats, traces(10, 2, 3)).unwrap();
    faults.fail_next_dlq_writes(1);
    assert!(spill_booked(&mut w, &stats, traces(20, 2, 3)).is_err());
    assert_eq!(dlq_files(dir.path()), 1, "the oldest file was evicted before the write failed");
    assert_eq!(tr.lost(LostReason::DlqEvicted), 6, "and it is counted lost");
    assert_eq!(tr.dlq_pending_items.load(Ordering::SeqCst), 6);
    assert_eq!(gauges.dlq_evicted_files.load(Ordering::SeqCst), 1);
    assert_eq!(gauges.dlq_files.load(Ordering::SeqCst), 1, "gauges published on the error path");
    assert_eq!(
        gauges.dlq_bytes.load(Ordering::SeqCst),
        std::fs::metadata(&dlq_paths(dir.path())[0]).unwrap().len()
    );
    assert_balanced(&stats);
    // The writer loop kept the group and retries: room is there now, nothing more is evicted.
    spill_booked(&mut w, &stats, traces(20, 2, 3)).unwrap();
    assert_eq!(tr.lost(LostReason::DlqEvicted), 6);
    w.maintain();
    w.maintain();
    assert_eq!(tr.persisted_items.load(Ordering::SeqCst), 12);
    assert_eq!(tr.dlq_pending_items.load(Ordering::SeqCst), 0);
    assert_balanced(&stats);

    // A later eviction fails: the ones before it are still booked. The byte limit holds two
    // small files; a big one needs both gone, and the second cannot be deleted.
    let dir = tempfile::tempdir().unwrap();
    let small = |first| group_of(vec![traces(first, 2, 3)], now_ns());
    let size =
        dlq::encode(small(0).batches(), 0, 0, 0, &WriteError::Database("test".into()).to_string()).len();
    let cfg = StoreConfig { dlq_max_bytes: (size * 5 / 2) as u64, ..scfg(dir.path()) };
    let (mut w, stats, _faults, gauges) = writer_with(&cfg);
    let tr = stats.signal(Signal::Traces);
    spill_booked(&mut w, &stats, traces(0, 2, 3)).unwrap();
    spill_booked(&mut w, &stats, traces(10, 2, 3)).unwrap();
    let files = dlq_paths(dir.path());
    assert_eq!(files.len(), 2);
    let second = std::fs::read(&files[1]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::create_dir(&files[1]).unwrap();
    std::fs::write(files[1].join("x"), b"x").unwrap();
    assert!(spill_booked(&mut w, &stats, traces(100, 8, 3)).is_err());
    assert!(!files[0].exists());
    assert_eq!(tr.lost(LostReason::DlqEvicted), 6, "the first eviction is booked");
    assert_eq!(tr.dlq_pending_items.load(Ordering::SeqCst), 6);
    assert_eq!(gauges.dlq_files.load(Ordering::SeqCst), 1);
    assert_balanced(&stats);
    std::fs::remove_dir_all(&files[1]).unwrap();
    std::fs::write(&files[1], &second).unwrap();
    spill_booked(&mut w, &stats, traces(100, 8, 3)).unwrap();
    assert_eq!(tr.lost(LostReason::DlqEvicted), 12);
    w.maintain();
    assert_eq!(tr.persisted_items.load(Ordering::SeqCst), 24);
    assert_eq!(dlq_files(dir.path()), 0);
    assert_balanced(&stats);
}

#[test]
fn dlq_dir_fsync_failure_after_the_rename_does_not_spill_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (p, faults, gauges) = pipeline(dir.path(), 1, false);
    faults.fail_next_commits(usize::MAX);
    faults.fail_next_dlq_dir_syncs(1);
    assert_eq!(p.submit(logs_request(0, 20, 9)).outcome.accepted_items(), 20);
    let logs = p.stats().signal(Signal::Logs);
    assert!(eventually(WAIT, || logs.dlq_pending_items.load(Ordering::SeqCst) == 20));
    // Give a (wrongly) failed spill time to be retried.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dlq_files(dir.path()), 1, "the renamed file counts as spilled: one file");
    assert_eq!(gauges[0].dlq_spilled_files.load(Ordering::SeqCst), 1);
    faults.fail_next_commits(0);
    assert!(eventually(WAIT, || logs.persisted_items.load(Ordering::SeqCst) == 20));
    p.stop();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM logs"), 20, "no duplicate logs");
    assert_eq!(logs.persisted_items.load(Ordering::SeqCst), 20);
    assert_eq!(dlq_files(dir.path()), 0);
    assert_balanced(p.stats());
}

#[test]
fn dlq_dir_fsync_failure_after_deleting_a_replayed_file_still_settles_the_books() {
    let dir = tempfile::tempdir().unwrap();
    let file = spill_file(dir.path(), 1, 4);
    let (mut w, stats, faults, gauges) = writer_with(&scfg(dir.path()));
    let tr = stats.signal(Signal::Traces);
    assert_eq!(tr.dlq_pending_items.load(Ordering::SeqCst), 12);
    faults.fail_next_dlq_dir_syncs(1);
    w.maintain();
    assert!(!file.exists());
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM spans"), 12);
    assert_eq!(tr.persisted_items.load(Ordering::SeqCst), 12);
    assert_eq!(tr.dlq_pending_items.load(Ordering::SeqCst), 0);
    assert_eq!(gauges.dlq_files.load(Ordering::SeqCst), 0);
    assert_eq!(gauges.dlq_replay_failures.load(Ordering::SeqCst), 0);
    assert_balanced(&stats);
}

#[test]
fn dlq_missing_or_half_set_aside_file_does_not_block_the_shard() {
    // A pending file deleted by hand: forgotten, counted lost, the next file replays.
    let dir = tempfile::tempdir().unwrap();
    let (mut w, stats, _faults, gauges) = writer_with(&scfg(dir.path()));
    spill_booked(&mut w, &stats, traces(0, 2, 3)).unwrap();
    spill_booked(&mut w, &stats, traces(10, 2, 3)).unwrap();
    std::fs::remove_file(&dlq_paths(dir.path())[0]).unwrap();
    w.maintain();
    w.maintain();
    let tr = stats.signal(Signal::Traces);
    assert_eq!(tr.lost(LostReason::DlqCorrupt), 6);
    assert_eq!(tr.persisted_items.load(Ordering::SeqCst), 6, "the file behind it was replayed");
    assert_eq!(tr.dlq_pending_items.load(Ordering::SeqCst), 0);
    assert_eq!(gauges.dlq_files.load(Ordering::SeqCst), 0);
    assert_balanced(&stats);

    // A damaged file whose move to corrupt/ succeeded but whose directory fsync failed.
    let dir = tempfile::tempdir().unwrap();
    let (mut w, stats, faults, _gauges) = writer_with(&scfg(dir.path()));
    spill_booked(&mut w, &stats, traces(0, 2, 3)).unwrap();
    spill_booked(&mut w, &stats, traces(10, 2, 3)).unwrap();
    let first = dlq_paths(dir.path())[0].clone();
    let len = std::fs::metadata(&first).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&first).unwrap().set_len(len / 2).unwrap();
    faults.fail_next_dlq_dir_syncs(1);
    w.maintain();
    w.maintain();
    assert!(!first.exists());
    assert_eq!(std::fs::read_dir(dir.path().join("dlq").join(dlq::CORRUPT_DIR)).unwrap().count(), 1);
    let tr = stats.signal(Signal::Traces);
    assert_eq!(tr.lost(LostReason::DlqCorrupt), 6);
    assert_eq!(tr.persisted_items.load(Ordering::SeqCst), 6, "the file behind it was replayed");
    assert_eq!(tr.dlq_pending_items.load(Ordering::SeqCst), 0);
    assert_eq!(dlq_files(dir.path()), 0);
    assert_balanced(&stats);
}

#[test]
fn dlq_decode_of_crafted_counts_does_not_reserve_gigabytes() {
    const CHILD: &str = "OTELRING_TEST_DECODE_CHILD";
    if std::env::var_os(CHILD).is_none() {
        // Run the check in a child with 1 GiB of address space: the counts below would make a
        // decoder that reserves by claimed count ask for over 2 GiB and abort (the machine's
        // overcommit would otherwise hide it).
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
            .arg(&exe)
            .args([
                "--exact",
                "store::dlq_decode_of_crafted_counts_does_not_reserve_gigabytes",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "child failed: {:?}\n{so}\n{se}", out.status);
        assert!(so.contains("1 passed"), "the child ran the check: {so}");
        return;
    }
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    const BODY: usize = 24 << 20;
    const CLAIMED: u64 = 16 << 20;
    let mut body = vec![0u8]; // empty cause
    varint(&mut body, 1); // one batch
    body.push(0); // traces
    body.extend_from_slice(&1i64.to_le_bytes());
    varint(&mut body, CLAIMED); // trace groups
    body.extend_from_slice(&[0, 1, b't']); // tenant
    body.extend_from_slice(&[7; 16]); // trace id
    body.extend_from_slice(&[0, 1, b's']); // service
    body.push(0); // has_root
    body.extend_from_slice(&[0; 16]); // start, end
    body.extend_from_slice(&[0, 0]); // status, priority
    varint(&mut body, CLAIMED); // spans of the first group
    varint(&mut body, 9); // the first span names an unknown string: damaged
    body.resize(BODY, 0);
    let mut file = Vec::with_capacity(dlq::HEADER_LEN + BODY);
    file.extend_from_slice(&dlq::MAGIC);
    file.extend_from_slice(&dlq::FORMAT.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes());
    file.extend_from_slice(&1i64.to_le_bytes());
    file.extend_from_slice(&1u64.to_le_bytes());
    for n in [CLAIMED, 0, 0, 1, BODY as u64] {
        file.extend_from_slice(&n.to_le_bytes());
    }
    file.extend_from_slice(&dlq::crc32(&body).to_le_bytes());
    let crc = dlq::crc32(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(file.len(), dlq::HEADER_LEN);
    file.extend_from_slice(&body);
    drop(body);
    let e = dlq::decode(&file, 0).unwrap_err();
    assert!(matches!(e, dlq::DlqError::Damaged(_)), "{e}");
}

#[test]
fn rotation_carries_the_applied_records_of_a_pending_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { retention: Duration::from_secs(3_600), ..scfg(dir.path()) };
    let (mut w, stats, _faults, _gauges) = writer_with(&cfg);
    Connection::open(db(dir.path(), 0))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON log_rows WHEN NEW.body = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poison log'); END;",
        )
        .unwrap();
    let mut rows = logs_request(0, 4, 9).rows;
    if let Rows::Logs(l) = &mut rows {
        l[3].body = Some("poison".into());
    }
    spill_booked(&mut w, &stats, rows).unwrap();
    // poison/ cannot be created: the replay commits units 0-1 and 2, then stops at the poison
    // unit with the file still pending.
    let poison = dir.path().join("dlq").join(dlq::POISON_DIR);
    std::fs::write(&poison, b"x").unwrap();
    w.maintain();
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM logs"), 3);
    assert_eq!(dlq_files(dir.path()), 1);
    assert_eq!(count(dir.path(), 1, "SELECT count(*) FROM dlq_applied"), 2);
    // A rotation while the file is still pending carries its records into the new segment.
    w.rotate_now();
    let active = dir.path().join(w.active_segment());
    let n_applied = |p: &Path| -> i64 {
        Connection::open(p).unwrap().query_row("SELECT count(*) FROM dlq_applied", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(n_applied(&active), 2, "carried: their file is pending");
    // The poison trigger lives in the first segment only: put it into the new one too.
    Connection::open(&active)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON log_rows WHEN NEW.body = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poison log'); END;",
        )
        .unwrap();
    std::fs::remove_file(&poison).unwrap();
    std::thread::sleep(shard_replay_backoff());
    w.maintain();
    assert_eq!(dlq_files(dir.path()), 0);
    let sql_logs: i64 = store::sql::open_read_only(dir.path())
        .unwrap()
        .query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sql_logs, 3, "no unit replayed twice");
    let lg = stats.signal(Signal::Logs);
    assert_eq!(lg.persisted_items.load(Ordering::SeqCst), 3);
    assert_eq!(lg.lost(LostReason::Poison), 1);
    assert_balanced(&stats);
    // Once the file is finished, its records are not carried any further.
    w.write(&group_of(vec![traces(1, 1, 1)], now_ns())).unwrap();
    w.rotate_now();
    assert_eq!(n_applied(&dir.path().join(w.active_segment())), 0);
}

/// Longer than any WAL-truncate retry (the active segment's age limit is what comes next).
const WAL_TRUNCATE_RETRY_BOUND: Duration = Duration::from_secs(60);

/// Longer than the first replay backoff after a failure.
fn shard_replay_backoff() -> Duration {
    store::shard::REPLAY_MIN_BACKOFF * 2
}

#[test]
fn wal_over_the_truncate_limit_is_retried_while_idle() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig { retention: Duration::ZERO, ..scfg(dir.path()) };
    let (mut w, _stats, faults, gauges) = writer_with(&cfg);
    faults.set_wal_truncate_bytes(1);
    w.write(&group_of(vec![traces(1, 4, 2)], now_ns())).unwrap();
    assert!(gauges.wal_bytes.load(Ordering::SeqCst) > 1);
    // A reader in a read transaction keeps the TRUNCATE checkpoint from resetting the WAL.
    let reader = Connection::open(db(dir.path(), 0)).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader.query_row("SELECT count(*) FROM spans", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 8);
    let next = w.maintain();
    assert!(gauges.wal_bytes.load(Ordering::SeqCst) > 1, "the reader is in the way");
    assert!(next.is_some(), "no DLQ, no retention, but the WAL is over its limit: come back");
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let next = w.maintain();
    assert!(next.is_none_or(|d| d > WAL_TRUNCATE_RETRY_BOUND), "truncated: no early retry ({next:?})");
    assert_eq!(gauges.wal_bytes.load(Ordering::SeqCst), 0);
}

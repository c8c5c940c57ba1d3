//! Segments (DESIGN 1.4, revised) on real files: rotation, idempotency across one rotation, logs
//! derived only from new spans, one logical trace row over segments, index use of a lookup by id,
//! the `--since` window, the legacy layout opened as the first segment, and start-up
//! reconciliation of the catalog with the files.

use crate::util::*;
use otelring::config::StoreConfig;
use otelring::pipeline::batch::{Rows, SpanId, StatusCode, TraceGroup};
use otelring::pipeline::{BatchWriter, Stats};
use otelring::store::{self, ShardGauges, ShardWriter, Store, catalog::Catalog, schema, segment, sql};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn open_writer(dir: &Path, cfg: Option<StoreConfig>) -> (ShardWriter, Arc<ShardGauges>) {
    let cfg = cfg.unwrap_or_else(|| StoreConfig::for_data_dir(dir));
    let st = Store::open(&cfg, 1, Arc::new(Stats::new())).expect("open store");
    let g = st.gauges().remove(0);
    (st.into_shard_writers().pop().expect("one writer"), g)
}

/// `SELECT count(*)`-like query through `otelring sql`'s views (every segment).
fn q(dir: &Path, query: &str) -> i64 {
    sql::open_read_only(dir).unwrap().query_row(query, [], |r| r.get(0)).unwrap()
}

fn error_trace(n: u64, spans: usize) -> Rows {
    Rows::Traces(vec![trace_group("default", n, spans, true)])
}

#[test]
fn a_retry_across_one_rotation_is_stored_once_with_its_derived_log_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, gauges) = open_writer(dir.path(), None);
    w.write(&group_of(vec![error_trace(1, 4)], now_ns())).unwrap();
    let first = w.active_segment().to_owned();
    w.rotate_now();
    assert_ne!(w.active_segment(), first);
    // The client's retry reaches the next segment: neither the spans nor the ERROR log again.
    w.write(&group_of(vec![error_trace(1, 4)], now_ns())).unwrap();
    assert_eq!(q(dir.path(), "SELECT count(*) FROM spans"), 4);
    assert_eq!(q(dir.path(), "SELECT count(*) FROM logs"), 1);
    assert_eq!(gauges.prev_segment_duplicates.load(Ordering::SeqCst), 4);
    // The documented limit: two rotations later the first copy is out of reach.
    w.rotate_now();
    w.write(&group_of(vec![traces_rows(500, 1, 1)], now_ns())).unwrap();
    w.rotate_now();
    w.write(&group_of(vec![error_trace(1, 4)], now_ns())).unwrap();
    let hex = trace_id(1).to_hex();
    assert_eq!(q(dir.path(), &format!("SELECT count(*) FROM spans WHERE trace_id = '{hex}'")), 8);
    // ... but still one logical trace row.
    assert_eq!(q(dir.path(), &format!("SELECT count(*) FROM traces WHERE trace_id = '{hex}'")), 1);
}

fn traces_rows(first: u64, n: u64, spans: usize) -> Rows {
    Rows::Traces((first..first + n).map(|i| trace_group("default", i, spans, false)).collect())
}

#[test]
fn an_error_span_posted_four_times_keeps_one_span_and_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = open_writer(dir.path(), None);
    // Twice within one group, then twice more in later groups.
    w.write(&group_of(vec![error_trace(3, 2), error_trace(3, 2)], now_ns())).unwrap();
    w.write(&group_of(vec![error_trace(3, 2)], now_ns())).unwrap();
    w.write(&group_of(vec![error_trace(3, 2)], now_ns())).unwrap();
    assert_eq!(q(dir.path(), "SELECT count(*) FROM spans"), 2);
    assert_eq!(q(dir.path(), "SELECT count(*) FROM logs"), 1);
    // Ordinary log records are never deduplicated (they have no identity).
    w.write(&group_of(vec![logs_request(0, 3, 9).rows, logs_request(0, 3, 9).rows], now_ns())).unwrap();
    assert_eq!(q(dir.path(), "SELECT count(*) FROM logs"), 7);
}

/// One span of trace 7 with the given service, times, status and root flag.
fn part(span: u64, root: bool, service: &str, start: i64, end: i64, st: StatusCode) -> Rows {
    let mut g: TraceGroup = trace_group("default", 7, 1, false);
    let s = &mut g.spans[0];
    s.span_id = SpanId(span.to_be_bytes());
    s.parent_span_id = if root { None } else { Some(SpanId(1u64.to_be_bytes())) };
    s.service_name = Arc::from(service);
    (s.start_time_unix_nano, s.end_time_unix_nano, s.status_code) = (start, end, st);
    g.trace.service_name = Arc::from(service);
    g.trace.has_root = root;
    (g.trace.start_time_unix_nano, g.trace.end_time_unix_nano, g.trace.status) = (start, end, st);
    Rows::Traces(vec![g])
}

#[test]
fn sql_presents_one_row_per_trace_split_over_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = open_writer(dir.path(), None);
    w.write(&group_of(vec![part(2, false, "db", 5_000_000, 9_000_000, StatusCode::Ok)], now_ns())).unwrap();
    w.rotate_now();
    w.write(&group_of(vec![part(3, false, "cache", 2_000_000, 3_000_000, StatusCode::Error)], now_ns()))
        .unwrap();
    // No root yet: the earliest segment's service.
    let row = |dir: &Path| -> (String, i64, i64, i64, String) {
        sql::open_read_only(dir)
            .unwrap()
            .query_row(
                "SELECT service_name, start_time_unix_nano, end_time_unix_nano, duration_us, status FROM traces",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap()
    };
    assert_eq!(row(dir.path()), ("db".into(), 2_000_000, 9_000_000, 7_000, "STATUS_CODE_ERROR".into()));
    w.rotate_now();
    w.write(&group_of(vec![part(1, true, "frontend", 1_000_000, 6_000_000, StatusCode::Unset)], now_ns()))
        .unwrap();
    assert_eq!(q(dir.path(), "SELECT count(*) FROM traces"), 1);
    assert_eq!(q(dir.path(), "SELECT count(*) FROM trace_segments"), 3);
    assert_eq!(
        row(dir.path()),
        ("frontend".into(), 1_000_000, 9_000_000, 8_000, "STATUS_CODE_ERROR".into()),
        "root service wins, start min, end max, ERROR wins"
    );
}

fn plan(conn: &Connection, query: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {query}")).unwrap();
    let rows: Vec<String> =
        stmt.query_map([], |r| r.get::<_, String>(3)).unwrap().map(Result::unwrap).collect();
    rows.join("\n")
}

#[test]
fn a_lookup_by_id_uses_the_key_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = open_writer(dir.path(), None);
    w.write(&group_of(vec![error_trace(1, 3), traces_rows(2, 50, 3)], now_ns())).unwrap();
    let first = dir.path().join(w.active_segment());
    w.rotate_now();
    w.write(&group_of(vec![traces_rows(100, 5, 3)], now_ns())).unwrap();
    let hex = trace_id(1).to_hex();
    let by_span = format!("SELECT * FROM spans WHERE trace_id = '{hex}'");
    let by_tenant_span =
        format!("SELECT count(*) FROM spans WHERE tenant_id = 'default' AND trace_id = '{hex}'");
    let by_log = format!("SELECT * FROM logs WHERE trace_id = '{hex}'");
    let by_trace = format!("SELECT * FROM trace_segments WHERE trace_id = '{hex}'");
    // One segment with the stock CLI's view of it.
    let one = Connection::open(&first).unwrap();
    assert!(
        plan(&one, &by_span).contains("USING INDEX span_rows_key (trace_id=?)"),
        "{}",
        plan(&one, &by_span)
    );
    assert!(
        plan(&one, &by_log).contains("USING INDEX log_rows_trace (trace_id=?)"),
        "{}",
        plan(&one, &by_log)
    );
    let n: i64 = one.query_row(&by_span.replace('*', "count(*)"), [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
    // Every segment through `otelring sql`: each branch of the union searches its index.
    let all = sql::open_read_only(dir.path()).unwrap();
    let p = plan(&all, &by_span);
    assert_eq!(p.matches("USING INDEX span_rows_key (trace_id=?)").count(), 2, "{p}");
    // With the tenant too (the documented form), not the service index.
    let p = plan(&all, &by_tenant_span);
    assert_eq!(p.matches("USING INDEX span_rows_key (trace_id=?)").count(), 2, "{p}");
    assert_eq!(q(dir.path(), &by_tenant_span), 3);
    let p = plan(&all, &by_trace);
    assert_eq!(p.matches("USING PRIMARY KEY (trace_id=?)").count(), 2, "{p}");
    // The merged `traces` view too: the id reaches every segment's primary key.
    let merged = format!("SELECT * FROM traces WHERE tenant_id = 'default' AND trace_id = '{hex}'");
    let p = plan(&all, &merged);
    assert_eq!(p.matches("USING PRIMARY KEY (trace_id=? AND tenant_id=?)").count(), 2, "{p}");
    // Recent errors: the partial index, in one segment and in each branch of the union.
    let errors = "SELECT trace_id FROM trace_segments WHERE tenant_id = 'default' \
                  AND status = 'STATUS_CODE_ERROR' ORDER BY start_time_unix_nano DESC LIMIT 20";
    let p = plan(&one, &errors.replace("trace_segments", "traces"));
    assert!(p.contains("INDEX trace_rows_errors (tenant_id=?)"), "{p}");
    let p = plan(&all, errors);
    assert_eq!(p.matches("INDEX trace_rows_errors (tenant_id=?)").count(), 2, "{p}");
    assert_eq!(q(dir.path(), &by_span.replace('*', "count(*)")), 3);
    assert_eq!(q(dir.path(), &by_log.replace('*', "count(*)")), 1);
    // The merged `traces` view finds it too (one row).
    assert_eq!(q(dir.path(), &format!("SELECT count(*) FROM traces WHERE trace_id = '{hex}'")), 1);
}

#[test]
fn the_since_window_skips_segments_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = open_writer(dir.path(), None);
    let hour = 3_600 * 1_000_000_000i64;
    w.write(&group_of(vec![traces_rows(1, 10, 2)], now_ns() - 3 * hour)).unwrap();
    w.rotate_now();
    w.write(&group_of(vec![traces_rows(100, 4, 2)], now_ns())).unwrap();
    let window = sql::Window { since: Some(now_ns() - hour), until: None };
    let c = sql::open_read_only_window(dir.path(), window).unwrap();
    let attached: i64 = c
        .query_row("SELECT count(*) FROM pragma_database_list WHERE name LIKE 's%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(attached, 1, "the old segment is not opened");
    let n: i64 = c.query_row("SELECT count(*) FROM spans", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 8);
    let old = sql::Window { since: None, until: Some(now_ns() - 2 * hour) };
    let n: i64 = sql::open_read_only_window(dir.path(), old)
        .unwrap()
        .query_row("SELECT count(*) FROM spans", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
    let none = sql::Window { since: Some(now_ns() + hour), until: None };
    let n: i64 = sql::open_read_only_window(dir.path(), none)
        .unwrap()
        .query_row("SELECT count(*) FROM traces", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

/// Writes a data directory as the layout before segments did: the record and one v1 file with
/// one trace of two spans (hex ids, plain tables).
fn write_legacy_dir(dir: &Path) {
    std::fs::write(dir.join(store::SHARD_RECORD), "shards = 1\n").unwrap();
    let mut c = Connection::open(dir.join(store::shard_file_name(0))).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
    schema::create_legacy(&mut c).unwrap();
    c.execute("INSERT INTO dlq_applied VALUES ('000000000001-0001', 1)", []).unwrap();
    let t = trace_id(42).to_hex();
    c.execute(
        "INSERT INTO traces VALUES ('default', ?1, 'legacy-svc', 10, 50, 0, 'STATUS_CODE_UNSET', 1, ?2)",
        (&t, now_ns()),
    )
    .unwrap();
    for (span, parent) in [(42_001u64, ""), (42_002, "000000000000a411")] {
        c.execute(
            "INSERT INTO spans VALUES ('default', ?1, ?2, ?3, 'op', 'SPAN_KIND_SERVER', 'legacy-svc', 10, 50, 0, \
             'STATUS_CODE_OK', '', '{}', '{\"service.name\":\"legacy-svc\"}', 'scope', ?4)",
            (&t, span_id(span).to_hex(), parent, now_ns()),
        )
        .unwrap();
    }
}

#[test]
fn a_legacy_data_dir_opens_as_its_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_legacy_dir(dir.path());
    let (mut w, gauges) = open_writer(dir.path(), None);
    assert_eq!(w.active_segment(), segment::segment_file_name(0, 1), "legacy file sealed as segment 0");
    // A retry of a legacy span after the upgrade: not stored again (the legacy file is the
    // previous segment).
    // Spans 42_001 (a retry) and 42_003 (new); the legacy file holds 42_001 and 42_002.
    let mut g = trace_group("default", 42, 2, false);
    g.spans[1].span_id = span_id(42_003);
    w.write(&group_of(vec![Rows::Traces(vec![g]), traces_rows(7, 1, 3)], now_ns())).unwrap();
    assert_eq!(gauges.prev_segment_duplicates.load(Ordering::SeqCst), 1);
    let d = dir.path();
    assert_eq!(q(d, "SELECT count(*) FROM spans"), 2 + 1 + 3);
    assert_eq!(q(d, "SELECT count(*) FROM traces"), 2);
    assert_eq!(q(d, &format!("SELECT count(*) FROM spans WHERE trace_id = '{}'", trace_id(42).to_hex())), 3);
    let svc: String = sql::open_read_only(d)
        .unwrap()
        .query_row("SELECT service_name FROM traces WHERE trace_id = ?1", [trace_id(42).to_hex()], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(svc, "legacy-svc", "the legacy root keeps the service");
    // Its DLQ replay records moved into the new active segment (a DLQ file pending at the
    // upgrade stays exactly-once).
    let n: i64 = Connection::open(d.join(segment::segment_file_name(0, 1)))
        .unwrap()
        .query_row("SELECT count(*) FROM dlq_applied WHERE id = '000000000001-0001'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // The legacy file itself is untouched: still version 1, still readable by the stock CLI.
    let c = Connection::open(d.join(store::shard_file_name(0))).unwrap();
    assert_eq!(schema::version(&c).unwrap(), schema::LEGACY_VERSION);
    let n: i64 = c.query_row("SELECT count(*) FROM spans", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2);
}

#[test]
fn start_up_makes_the_catalog_and_the_files_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    {
        let (mut w, _) = open_writer(d, None);
        w.write(&group_of(vec![traces_rows(1, 3, 2)], now_ns())).unwrap();
        w.rotate_now();
        w.write(&group_of(vec![traces_rows(10, 2, 2)], now_ns())).unwrap();
    }
    // A spare prepared ahead (empty, unlisted) and a crash after retention unlisted segment 0
    // but before it unlinked the file.
    let spare = d.join(segment::segment_file_name(0, 9));
    let mut c = Connection::open(&spare).unwrap();
    schema::migrate(&mut c).unwrap();
    drop(c);
    Catalog::open(d).unwrap().remove(0, 0).unwrap();
    let (w, _) = open_writer(d, None);
    assert!(!spare.exists(), "an empty unlisted file is removed");
    let segs = Catalog::open_read_only(d).unwrap().unwrap().segments(Some(0)).unwrap();
    let seqs: Vec<(u64, bool)> = segs.iter().map(|s| (s.seq, s.sealed)).collect();
    assert_eq!(seqs, vec![(0, true), (1, false)], "segment 0 adopted (sealed), segment 1 still active");
    assert_eq!(segs[0].rows, 6, "adoption counts the rows of the user tables");
    assert_eq!(w.active_segment(), segment::segment_file_name(0, 1));
    assert_eq!(q(d, "SELECT count(*) FROM spans"), 10);
}

#[test]
fn rotation_by_size_keeps_every_row_and_seals_with_exact_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_max_bytes: otelring::config::MIN_SEGMENT_BYTES,
        retention: Duration::ZERO,
        ..StoreConfig::for_data_dir(dir.path())
    };
    let (mut w, gauges) = open_writer(dir.path(), Some(cfg));
    let t0 = now_ns();
    for k in 0..40u64 {
        w.write(&group_of(vec![traces_rows(k * 1_000, 100, 5)], t0 + k as i64)).unwrap();
        w.maintain();
    }
    let rotations = gauges.rotations.load(Ordering::SeqCst);
    assert!(rotations >= 3, "1 MiB segments: {rotations} rotations");
    assert_eq!(q(dir.path(), "SELECT count(*) FROM spans"), 40 * 500);
    // Every sealed segment holds spans; the active one may be empty right after a rotation.
    let with_spans = q(dir.path(), "SELECT count(DISTINCT segment) FROM spans") as u64;
    assert!(with_spans == rotations || with_spans == rotations + 1, "{with_spans} vs {rotations}");
    let segs = Catalog::open_read_only(dir.path()).unwrap().unwrap().segments(Some(0)).unwrap();
    for s in segs.iter().filter(|s| s.sealed) {
        let (lo, hi) = (s.min_ingested_at.unwrap(), s.max_ingested_at.unwrap());
        assert!(t0 <= lo && lo <= hi && hi < t0 + 40, "{s:?}");
        let rows: i64 = Connection::open(dir.path().join(&s.file))
            .unwrap()
            .query_row("SELECT (SELECT count(*) FROM span_rows) + (SELECT count(*) FROM log_rows)", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows as u64, s.rows, "{s:?}");
    }
    assert!(gauges.rotation_max_pause_ns.load(Ordering::SeqCst) > 0);
}

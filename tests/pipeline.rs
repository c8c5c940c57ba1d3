//! The pipeline end to end in one process: admission zones, lanes, writer threads, failure
//! paths, stop and the books, with in-memory writers (`util::MemWriter`).

use crate::util::*;
use otelring::config::PipelineConfig;
use otelring::pipeline::batch::{Received, Request, Rows, Signal};
use otelring::pipeline::{CommitError, Outcome, RejectReason};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

/// The bytes a single-shard pipeline reserves for `req` (read back from the admission word).
fn est_bytes(req: Request) -> u64 {
    let (probe, _) = unstarted(small_config(1, 8, 1 << 30));
    assert!(matches!(probe.submit(req).outcome, Outcome::Accepted { .. }));
    probe.queue_bytes(Signal::Traces)
}

fn assert_balanced(p: &otelring::pipeline::Pipeline) {
    for s in Signal::ALL {
        let b = p.stats().signal(s).books();
        assert!(b.balanced(), "{s} books do not balance: {b:?}");
    }
}

#[test]
fn empty_request_is_a_no_op() {
    let (p, shared) = started(small_config(2, 8, 1 << 20));
    for rows in [Rows::Traces(vec![]), Rows::Logs(vec![]), Rows::Metrics(vec![])] {
        let s = p.submit(Request::new(rows, Received::now()));
        assert_eq!(s.outcome, Outcome::Accepted { items: 0 });
    }
    assert_eq!(p.queue_depth(Signal::Traces), 0);
    p.stop();
    assert_eq!(shared.groups.load(Ordering::SeqCst), 0);
    assert_eq!(p.stats().signal(Signal::Traces).books().submitted, 0);
}

#[test]
fn accepts_below_the_soft_threshold_and_drops_healthy_at_it_fill_driven() {
    // Writers not started: nothing pops, so fill only grows.
    let (p, shared) = unstarted(small_config(1, 10, 1 << 30));
    for i in 0..9 {
        // Before each reservation fill is i of 10 < 0.9.
        assert_eq!(p.submit(traces_request(i, 1, 2, &[])).outcome, Outcome::Accepted { items: 2 });
    }
    assert_eq!(p.queue_depth(Signal::Traces), 9);
    // 9 of 10 = 0.9: the soft zone. Healthy is dropped and reported as such.
    assert_eq!(
        p.submit(traces_request(100, 1, 2, &[])).outcome,
        Outcome::SoftDropped { kept: 0, dropped: 2 }
    );
    assert_eq!(p.queue_depth(Signal::Traces), 9);
    // Priority bypasses the soft drop.
    assert_eq!(p.submit(traces_request(200, 1, 3, &[0])).outcome, Outcome::Accepted { items: 3 });
    assert_eq!(p.queue_depth(Signal::Traces), 10);
    // Full: even priority is rejected, for a retry.
    assert_eq!(p.submit(traces_request(300, 1, 3, &[0])).outcome, Outcome::RejectedFull { items: 3 });
    let st = p.stats().signal(Signal::Traces);
    assert_eq!(st.dropped_items.load(Ordering::SeqCst), 2);
    assert_eq!(st.rejected(RejectReason::QueueFull), 3);
    start(&p, &shared);
    p.stop();
    assert_eq!(shared.spans().len(), 9 * 2 + 3);
    assert_balanced(&p);
}

#[test]
fn drops_healthy_at_the_threshold_byte_driven_and_rejects_priority_past_the_bytes() {
    let healthy = est_bytes(traces_request(0, 1, 4, &[]));
    let error = est_bytes(traces_request(0, 1, 4, &[0]));
    assert!(error > healthy, "an error trace carries a synthesized log");
    let mut cfg = small_config(1, 1_000, 4 * healthy + error);
    cfg.soft_threshold = 0.5;
    let (p, _shared) = unstarted(cfg);
    for i in 0..3 {
        assert_eq!(p.submit(traces_request(i, 1, 4, &[])).outcome, Outcome::Accepted { items: 4 });
    }
    assert_eq!(p.queue_bytes(Signal::Traces), 3 * healthy);
    // 3 of ~5 requests' bytes: above 0.5, batches far below: byte-driven soft zone.
    assert_eq!(p.submit(traces_request(10, 1, 4, &[])).outcome, Outcome::SoftDropped { kept: 0, dropped: 4 });
    assert_eq!(p.submit(traces_request(11, 1, 4, &[0])).outcome, Outcome::Accepted { items: 4 });
    // Another priority request would pass the byte capacity: rejected, retryable.
    assert_eq!(p.submit(traces_request(12, 1, 4, &[0])).outcome, Outcome::RejectedBytes { items: 4 });
    assert_eq!(p.stats().signal(Signal::Traces).rejected(RejectReason::BytesFull), 4);
}

#[test]
fn too_large_is_permanent() {
    let size = est_bytes(traces_request(0, 50, 20, &[]));
    let big = traces_request(0, 50, 20, &[]);
    let (p, _shared) = started(small_config(2, 64, size / 2));
    // Even with empty queues it can never fit.
    assert_eq!(p.submit(big).outcome, Outcome::TooLarge { items: 1_000 });
    assert_eq!(p.submit(traces_request(0, 50, 20, &[7])).outcome, Outcome::TooLarge { items: 1_000 });
    assert_eq!(p.stats().signal(Signal::Traces).rejected(RejectReason::TooLarge), 2_000);
    assert_eq!(p.queue_depth(Signal::Traces), 0);
    p.stop();
    assert_balanced(&p);
}

#[test]
fn one_error_trace_among_many_healthy_keeps_only_the_error_trace_in_the_soft_zone() {
    let (p, shared) = unstarted(small_config(4, 10, 1 << 30));
    // Fill to 9 of 10 with single-trace requests (each one batch on one shard).
    for i in 0..9 {
        assert!(matches!(p.submit(traces_request(1_000 + i, 1, 1, &[])).outcome, Outcome::Accepted { .. }));
    }
    // 100 traces × 5 spans spread over every shard; trace 42 has an error.
    let out = p.submit(traces_request(0, 100, 5, &[42])).outcome;
    assert_eq!(out, Outcome::SoftDropped { kept: 5, dropped: 495 });
    start(&p, &shared);
    p.stop();
    let kept: Vec<_> = shared.spans().into_iter().filter(|(_, t, _)| *t == trace_id(42).to_hex()).collect();
    assert_eq!(kept.len(), 5);
    assert_eq!(shared.spans().len(), 9 + 5);
    // The synthesized ERROR log rode along with its trace.
    assert_eq!(shared.count(|r| matches!(r, Stored::Log(_))), 1);
    assert_balanced(&p);
}

#[test]
fn a_request_spread_over_lanes_is_admitted_or_refused_as_a_whole() {
    let (p, _shared) = unstarted(small_config(4, 5, 1 << 30));
    // 200 traces hit all 4 shards: 4 batches, one CAS.
    assert_eq!(p.submit(traces_request(0, 200, 1, &[])).outcome, Outcome::Accepted { items: 200 });
    assert_eq!(p.queue_depth(Signal::Traces), 4);
    // 4 more batches do not fit in the last slot: the whole request is refused, none pushed.
    assert_eq!(p.submit(traces_request(1_000, 200, 1, &[])).outcome, Outcome::RejectedFull { items: 200 });
    assert_eq!(p.queue_depth(Signal::Traces), 4);
    // A single-shard request still fits.
    assert!(matches!(p.submit(traces_request(5_000, 1, 1, &[])).outcome, Outcome::Accepted { .. }));
    assert_eq!(p.queue_depth(Signal::Traces), 5);
}

#[test]
fn fk_order_and_coalescing_into_one_group() {
    let (p, shared) = unstarted(small_config(1, 64, 1 << 30));
    p.submit(metrics_request(0, 3));
    p.submit(logs_request(0, 4, 9));
    p.submit(traces_request(0, 2, 3, &[1]));
    start(&p, &shared);
    p.stop();
    assert_eq!(*shared.group_sizes.lock().unwrap(), vec![3], "three batches, one transaction");
    let rows = shared.rows.lock().unwrap();
    let rank = |r: &Stored| match r {
        Stored::Trace(_) => 0,
        Stored::Span(..) => 1,
        Stored::Log(_) => 2,
        Stored::Point(_) => 3,
    };
    let ranks: Vec<_> = rows.iter().map(|(_, r)| rank(r)).collect();
    let mut sorted = ranks.clone();
    sorted.sort();
    assert_eq!(ranks, sorted, "rows out of FK order: {rows:?}");
    assert_eq!(ranks.iter().filter(|&&r| r == 0).count(), 2);
    assert_eq!(ranks.iter().filter(|&&r| r == 1).count(), 6);
    assert_eq!(ranks.iter().filter(|&&r| r == 2).count(), 5, "4 records + 1 synthesized");
    assert_eq!(ranks.iter().filter(|&&r| r == 3).count(), 3);
}

/// Submits three one-trace requests 100 ms apart on a started single-shard pipeline whose sink
/// lingers `linger`, and returns the batches per group once all three are written.
fn groups_of_spread_requests(linger: Duration) -> (Vec<usize>, usize) {
    let (p, shared) = unstarted(small_config(1, 64, 1 << 30));
    *shared.linger.lock().unwrap() = linger;
    start(&p, &shared);
    for i in 0..3 {
        p.submit(traces_request(i * 10, 1, 2, &[]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let written_before_linger = shared.groups.load(Ordering::SeqCst);
    assert!(eventually(10 * SECOND, || shared.spans().len() == 6), "not all spans written");
    p.stop();
    assert_balanced(&p);
    (shared.group_sizes.lock().unwrap().clone(), written_before_linger)
}

#[test]
fn a_lingering_sink_gets_requests_spread_over_time_as_one_group() {
    // Without a linger (the SQLite sink) every request is written as soon as it is popped.
    let (sizes, _) = groups_of_spread_requests(Duration::ZERO);
    assert_eq!(sizes, vec![1, 1, 1]);
    // With one (the ClickHouse sink's OTELRING_CLICKHOUSE_INSERT_LINGER) the writer waits on
    // the empty lanes for more until the linger has passed since the group's first row.
    let (sizes, early) = groups_of_spread_requests(Duration::from_secs(2));
    assert_eq!(early, 0, "a group was written before its linger had passed");
    assert_eq!(sizes, vec![3], "three requests within the linger, one group");
}

#[test]
fn a_full_group_is_written_without_waiting_for_the_linger() {
    let mut cfg = small_config(1, 64, 1 << 30);
    cfg.writer_max_rows = 8;
    let (p, shared) = unstarted(cfg);
    *shared.linger.lock().unwrap() = Duration::from_secs(60);
    start(&p, &shared);
    // 1 trace row + 8 spans: past writer_max_rows.
    p.submit(traces_request(0, 1, 8, &[]));
    assert!(eventually(5 * SECOND, || shared.spans().len() == 8), "a full group waited for the linger");
    p.stop();
    assert_balanced(&p);
}

#[test]
fn a_commit_mode_group_does_not_linger() {
    let cfg = PipelineConfig { commit_mode: true, ..small_config(1, 64, 1 << 30) };
    let (p, shared) = unstarted(cfg);
    *shared.linger.lock().unwrap() = Duration::from_secs(60);
    start(&p, &shared);
    let t = std::time::Instant::now();
    for i in 0..5 {
        let s = p.submit(traces_request(i * 10, 1, 2, &[]));
        assert_eq!(s.commit.expect("commit mode gives a waiter").wait(), Ok(()));
    }
    assert!(t.elapsed() < 10 * SECOND, "commit-mode clients waited {:?} on the linger", t.elapsed());
    assert_eq!(shared.spans().len(), 10);
    p.stop();
    assert_balanced(&p);
}

#[test]
fn stop_ends_a_linger_at_once() {
    let (p, shared) = unstarted(small_config(1, 64, 1 << 30));
    *shared.linger.lock().unwrap() = Duration::from_secs(60);
    start(&p, &shared);
    p.submit(traces_request(0, 1, 2, &[]));
    assert!(eventually(5 * SECOND, || p.queue_depth(Signal::Traces) == 0), "never popped");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(shared.groups.load(Ordering::SeqCst), 0, "written before the linger passed");
    let t = std::time::Instant::now();
    p.stop();
    assert!(t.elapsed() < 5 * SECOND, "stop waited {:?} for a lingering writer", t.elapsed());
    assert_eq!(shared.spans().len(), 2);
    assert_balanced(&p);
}

#[test]
fn a_failed_write_goes_to_the_sink_and_later_batches_continue() {
    let (p, shared) = started(small_config(1, 64, 1 << 30));
    shared.fail_writes.store(1, Ordering::SeqCst);
    assert_eq!(p.submit(traces_request(0, 2, 5, &[])).outcome, Outcome::Accepted { items: 10 });
    assert!(eventually(5 * SECOND, || shared.spilled_items[0].load(Ordering::SeqCst) == 10));
    assert_eq!(p.submit(traces_request(10, 2, 5, &[])).outcome, Outcome::Accepted { items: 10 });
    p.stop();
    assert_eq!(shared.spans().len(), 10);
    let b = p.stats().signal(Signal::Traces).books();
    assert_eq!((b.persisted, b.dlq_pending, b.in_flight), (10, 10, 0));
    assert_balanced(&p);
}

#[test]
fn when_the_spill_fails_too_the_group_is_kept_and_retried() {
    let (p, shared) = started(small_config(1, 64, 1 << 30));
    shared.fail_writes.store(1, Ordering::SeqCst);
    shared.fail_spills.store(1, Ordering::SeqCst);
    p.submit(logs_request(0, 7, 9));
    p.stop();
    // Write failed, spill failed, the retried write succeeded: nothing lost, nothing spilled.
    assert_eq!(shared.count(|r| matches!(r, Stored::Log(_))), 7);
    let b = p.stats().signal(Signal::Logs).books();
    assert_eq!((b.persisted, b.dlq_pending, b.lost), (7, 0, 0));
    assert_balanced(&p);
}

#[test]
fn a_panicking_writer_is_recovered() {
    let (p, shared) = started(small_config(1, 64, 1 << 30));
    shared.panic_writes.store(1, Ordering::SeqCst);
    p.submit(metrics_request(0, 5));
    assert!(eventually(5 * SECOND, || shared.spilled_items[2].load(Ordering::SeqCst) == 5));
    // The same thread goes on.
    p.submit(metrics_request(5, 5));
    p.stop();
    assert_eq!(shared.count(|r| matches!(r, Stored::Point(_))), 5);
    let b = p.stats().signal(Signal::Metrics).books();
    assert_eq!((b.persisted, b.dlq_pending), (5, 5));
    assert_balanced(&p);
}

#[test]
fn drain_on_stop_includes_batches_submitted_before_the_writers_started() {
    let (p, shared) = unstarted(small_config(3, 256, 1 << 30));
    for i in 0..20 {
        p.submit(traces_request(i * 10, 10, 2, &[]));
        p.submit(logs_request(i * 10, 10, 5));
    }
    start(&p, &shared);
    let r = p.stop();
    assert!(r.drained_in_time);
    assert_eq!((r.spilled_items, r.lost_items), (0, 0));
    assert_eq!(shared.spans().len(), 400);
    assert_eq!(shared.count(|r| matches!(r, Stored::Log(_))), 200);
    assert_balanced(&p);
}

#[test]
fn stop_is_idempotent_and_submit_after_stop_is_refused() {
    let (p, shared) = started(small_config(2, 64, 1 << 30));
    p.submit(traces_request(0, 4, 2, &[]));
    let first = p.stop();
    let second = p.stop();
    assert_eq!(first, second);
    let out = p.submit(traces_request(100, 4, 2, &[1])).outcome;
    assert_eq!(out, Outcome::Stopped { items: 8 });
    assert_eq!(p.stats().signal(Signal::Traces).rejected(RejectReason::Stopping), 8);
    assert_eq!(shared.spans().len(), 8, "refused, never acknowledged and lost");
    assert_balanced(&p);
}

#[test]
fn at_the_drain_deadline_what_is_left_is_spilled() {
    let (p, shared) = started(small_config(1, 64, 1 << 30));
    shared.hold();
    p.submit(traces_request(0, 1, 2, &[]));
    assert!(eventually(5 * SECOND, || shared.blocked.load(Ordering::SeqCst) == 1));
    for i in 1..=5 {
        p.submit(traces_request(i * 10, 1, 3, &[]));
    }
    let releaser = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            shared.release();
        })
    };
    let r = p.stop_within(Duration::from_millis(50));
    releaser.join().unwrap();
    assert!(!r.drained_in_time);
    assert_eq!(r.spilled_items, 15);
    assert_eq!(shared.spans().len(), 2, "the group in hand was still written");
    assert_eq!(shared.spilled_items[0].load(Ordering::SeqCst), 15);
    assert_balanced(&p);
}

#[test]
fn many_threads_submitting_concurrently_keep_the_books_exact() {
    let mut cfg = small_config(3, 24, 1 << 30);
    cfg.writer_max_rows = 500;
    let (p, shared) = started(cfg);
    let p = Arc::new(p);
    let accepted = Arc::new([(); 3].map(|_| std::sync::atomic::AtomicU64::new(0)));
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let (p, accepted) = (p.clone(), accepted.clone());
            std::thread::spawn(move || {
                for i in 0..300u64 {
                    let base = t * 1_000_000 + i * 1_000;
                    let req = match i % 3 {
                        0 => traces_request(base, 1 + i % 17, 1 + (i % 4) as usize, &[i % 5]),
                        1 => logs_request(base, 1 + i % 23, if i % 4 == 0 { 17 } else { 9 }),
                        _ => metrics_request(base, 1 + i % 11),
                    };
                    let sig = req.signal();
                    let out = p.submit(req).outcome;
                    accepted[sig.index()].fetch_add(out.accepted_items(), Ordering::SeqCst);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(p.stop().drained_in_time);
    for s in Signal::ALL {
        let b = p.stats().signal(s).books();
        assert!(b.balanced(), "{s}: {b:?}");
        assert_eq!(b.in_flight, 0);
        assert_eq!(b.persisted, accepted[s.index()].load(Ordering::SeqCst), "{s}: client-side accepted");
    }
    let spans = shared.spans().len() as u64;
    assert_eq!(spans, p.stats().signal(Signal::Traces).books().persisted);
    let points = shared.count(|r| matches!(r, Stored::Point(_))) as u64;
    assert_eq!(points, p.stats().signal(Signal::Metrics).books().persisted);
    assert_eq!(p.queue_bytes(Signal::Traces), 0, "every reserved byte released");
    assert_eq!(p.queue_bytes(Signal::Logs), 0);
}

#[test]
fn the_same_tenant_and_trace_always_land_on_the_same_shard() {
    let (p, shared) = started(small_config(4, 256, 1 << 30));
    for _ in 0..3 {
        p.submit(traces_request(7, 40, 1, &[]));
    }
    p.stop();
    let spans = shared.spans();
    assert_eq!(spans.len(), 120);
    for (shard, t, _) in &spans {
        assert!(spans.iter().filter(|(_, t2, _)| t2 == t).all(|(s2, _, _)| s2 == shard));
    }
    let shards: std::collections::HashSet<_> = spans.iter().map(|(s, _, _)| *s).collect();
    assert!(shards.len() > 1, "40 traces spread over shards");
}

#[test]
fn commit_mode_answers_after_the_commit() {
    let cfg = PipelineConfig { commit_mode: true, ..small_config(2, 64, 1 << 30) };
    let (p, shared) = started(cfg);
    for i in 0..20 {
        let s = p.submit(traces_request(i * 100, 10, 2, &[]));
        assert_eq!(s.outcome, Outcome::Accepted { items: 20 });
        assert_eq!(s.commit.expect("commit mode gives a waiter").wait(), Ok(()));
        // Readable as soon as the wait returned.
        assert_eq!(shared.spans().len() as u64, (i + 1) * 20);
    }
    p.stop();
    assert_balanced(&p);
}

#[test]
fn commit_mode_retries_a_failed_group_batch_by_batch_and_never_spills() {
    let cfg = PipelineConfig { commit_mode: true, ..small_config(1, 64, 1 << 30) };
    let (p, shared) = unstarted(cfg);
    *shared.poison_trace.lock().unwrap() = Some(trace_id(500));
    let good = p.submit(traces_request(1, 2, 2, &[])).commit.unwrap();
    let bad = p.submit(traces_request(500, 1, 2, &[])).commit.unwrap();
    let good2 = p.submit(logs_request(0, 3, 9)).commit.unwrap();
    start(&p, &shared);
    assert_eq!(good.wait(), Ok(()));
    assert_eq!(good2.wait(), Ok(()));
    assert!(matches!(bad.wait(), Err(CommitError::Database(_))));
    p.stop();
    assert_eq!(shared.spans().len(), 4);
    assert_eq!(shared.spilled_items.iter().map(|c| c.load(Ordering::SeqCst)).sum::<usize>(), 0);
    let b = p.stats().signal(Signal::Traces).books();
    assert_eq!((b.persisted, b.rejected, b.dlq_pending), (4, 2, 0));
    assert_eq!(p.stats().signal(Signal::Traces).rejected(RejectReason::Unavailable), 2);
    assert_balanced(&p);
}

#[test]
fn commit_mode_rows_the_database_refuses_for_good_are_refused_not_retried() {
    let cfg = PipelineConfig { commit_mode: true, ..small_config(1, 64, 1 << 30) };
    let (p, shared) = started(cfg);
    shared.refuse_writes.store(1, Ordering::SeqCst);
    let s = p.submit(traces_request(0, 1, 3, &[]));
    assert_eq!(
        s.commit.expect("commit mode gives a waiter").wait(),
        Err(CommitError::Refused("injected refusal".into())),
        "a refusal for good is not a retryable database failure"
    );
    // Counted as invalid input, not as unavailable; nothing stored, nothing spilled.
    let st = p.stats().signal(Signal::Traces);
    assert_eq!(st.rejected(RejectReason::Invalid), 3);
    assert_eq!(st.rejected(RejectReason::Unavailable), 0);
    assert_eq!(shared.spilled_items[0].load(Ordering::SeqCst), 0);
    // The next request is stored.
    let s = p.submit(traces_request(10, 1, 2, &[]));
    assert_eq!(s.commit.unwrap().wait(), Ok(()));
    assert_eq!(shared.spans().len(), 2);
    p.stop();
    assert_balanced(&p);
}

#[test]
fn commit_mode_panic_answers_the_request_with_an_error() {
    let cfg = PipelineConfig { commit_mode: true, ..small_config(1, 64, 1 << 30) };
    let (p, shared) = started(cfg);
    shared.panic_writes.store(1, Ordering::SeqCst);
    let w = p.submit(logs_request(0, 2, 9)).commit.unwrap();
    assert_eq!(w.wait(), Err(CommitError::Panicked));
    let w = p.submit(logs_request(2, 2, 9)).commit.unwrap();
    assert_eq!(w.wait(), Ok(()));
    p.stop();
    assert_balanced(&p);
}

/// CPU time (user + system, in clock ticks) of this process's threads named `prefix*`.
fn thread_ticks(prefix: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // Fields after the command: state is field 3; utime and stime are fields 14 and 15.
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        total += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    total
}

#[test]
fn an_idle_pipeline_uses_under_two_percent_of_a_core() {
    let (p, _shared) = started(small_config(2, 64, 1 << 30));
    p.submit(traces_request(0, 10, 2, &[]));
    std::thread::sleep(Duration::from_millis(100));
    let before = thread_ticks("otelring-w");
    std::thread::sleep(Duration::from_secs(5));
    let used = thread_ticks("otelring-w") - before;
    // Clock ticks are 1/100 s on Linux: 2% of 5 s is 10 ticks.
    assert!(used < 10, "idle writers used {used} ticks in 5 s");
    p.stop();
}

#!/usr/bin/env bash
# The end-to-end benchmark matrix (DESIGN 3 "How we know", issue 6). Figures go in
# docs/PERFORMANCE.md with this command; quote the medians of its final table.
#
#   benches/matrix.sh                  # build once, then 3 interleaved runs of every scenario
#   benches/matrix.sh --quick          # smoke test: 1 run, 50 requests, a 10 s long row (~2.5 min)
#   benches/matrix.sh --rate 150       # fix the sustainable rate R (requests/s) instead of auto
#   benches/matrix.sh --only baseline,commit-w2,grpc-traces --runs 5
#   benches/matrix.sh --list | --help  # scenario definitions | every option
#   benches/matrix.sh --steady         # steady state: 150k spans/s offered for 10 minutes (below)
#   benches/matrix.sh --steady --steady-rates 60,90,120,150   # highest rate held with nothing shed
#
# Steady state (--steady; DESIGN 3, issue 11): one release server with OTELRING_RETENTION=
# --retention (default 3m) and --workers writers, `otelring loadgen --duration` at a fixed offered
# rate (--steady-rate requests/s of --items spans, default 150 x 1,000 = 150k spans/s) for
# --minutes (default 10), cycling over 100 templates whose trace and span ids are rewritten with
# fresh random ids on every send (W3C style, as the SDKs make them). Prints per minute: offered
# and persisted spans/s, shed share (partial-success drops + throttled + failed calls over
# offered), data dir size (GiB) and the server's peak RSS; then the last fifth's persisted rate /
# the first fifth's, the server's worst commit gap (from /metrics, `otelring_*commit_gap*`, when
# the binary exports one; else n/a) and the goal (<= 1% shed, ratio >= 0.9, disk flat). The
# loadgen's per-second timeline (--timeline-out) and a plot of persisted rate and disk over time
# (benches/plot.sh; --plot-with CSV[=LABEL] overlays an earlier run, e.g. "before") go to --out
# (default ${CARGO_TARGET_DIR:-target}/matrix/steady-<UTC time>/). --steady-rates R1,R2,...
# runs one steady row per rate and reports the highest with nothing shed. The data dir (tens of
# GB in 10 minutes) is removed when each row ends, also on failure or Ctrl-C, unless --keep.
#
# Every server scenario: start `otelring serve` on an empty temp data dir (ports chosen by the
# OS, OTELRING_*/INGEST_*/DLQ_* of the caller's environment removed), run `otelring loadgen`
# (it pre-encodes before its clock starts and reports when its first request went out), sample
# the server's VmHWM from /proc when the load ends, send SIGTERM, keep sampling until the exit.
# Timed from the first request to the server's exit (drain and stop included). Then count the
# rows with `otelring sql` and check:
#   - exit code 0 and every "otelring: books <signal> ... balanced" line, with lost, dlq_pending
#     and in_flight 0;
#   - per signal: the loadgen's acknowledged items minus partial-success drops == the books'
#     persisted (+ filtered, 0 unless --server-env sets a filter), and its partial-success drops
#     == the books' dropped; no failed calls;
#   - rows in SQLite == persisted (spans, metric_points; logs == persisted logs + the logs the
#     server synthesized from span events and ERROR spans, read from /metrics);
#   - overload: every priority trace of every acknowledged request is in SQLite with all its
#     spans, checked by id (`loadgen --priority-ids-out`), no acknowledged request reported more
#     dropped items than its non-priority spans, and peak RSS <= the DESIGN 1.2 budget (see
#     rss_budget below).
# The baseline row runs `otelring loadgen --baseline-spans N`, the same function as
# `cargo bench --bench store`'s baseline; every figure gets a ratio to it (logs and metric rows
# too, items/s against spans/s, for scale only).
#
# R, the sustainable rate: --rate auto (default) takes it in every run from that run's
# commit-w2 row (commit mode is closed loop, so it measures what the writers sustain with the
# decoder and the load generator on the same cores): persisted items/s / items per request,
# rounded down. Async rows at max rate would measure shedding, not throughput (the byte cap
# fills and the soft zone drops healthy traces by design). latency runs at R/2, overload at 3R.
#
# Time: estimated 3-4 minutes per run on the 2-core machines at R ~ 110 requests/s (each
# 800-request row ~10 s with start-up and row counting, latency ~16 s, the 60 s long row ~65 s,
# in every run; --long-runs first keeps it to run 1), so the default 3 runs take ~10-12 minutes.
# --quick takes under a minute once built.
# Temp data dirs go under --tmpdir (the long row writes a few GB) and are removed after each
# row unless --keep. Logs of failed rows are kept next to the results file.
#
# The binary: --bin PATH, else ${CARGO_TARGET_DIR:-<repo>/target}/release/otelring, built first
# with `cargo build --release --features loadgen` (--features to change) unless --no-build.
# Results: one JSON line per row (plus a header line: commit, load average, arguments; and a
# summary line) appended to --results FILE (default
# ${CARGO_TARGET_DIR:-<repo>/target}/matrix/results-<UTC time>.jsonl). Exit status 1 when any
# check failed.
#
# The driver is the Python program below (python3 standard library only; it reads /proc):
# process control, sub-second timing, /proc sampling, JSON and the by-id SQLite checks are
# simpler and sturdier there than in shell.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v python3 >/dev/null || { echo "matrix.sh: python3 is required" >&2; exit 2; }
export MATRIX_REPO="$repo"
exec python3 - "$@" <<'PY'
import argparse
import glob
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.environ["MATRIX_REPO"]
MIB = 1 << 20

SCENARIOS = [
    # name, one-line definition
    ("baseline", "DESIGN 3 storage baseline: `otelring loadgen --baseline-spans N` (plain rusqlite, "
                 "N spans into an empty file, WAL + NORMAL, trace_id and (service, start) indexes, "
                 "per-span trace upsert, 5,000 spans/tx); spans/s"),
    ("commit-w2", "commit mode (INGEST_ASYNC_ENABLED=false), 2 writers, gRPC traces, closed loop "
                  "(16 calls in flight): the writers' sustained rate; with --rate auto its "
                  "persisted spans/s / items per request is the run's sustainable rate R"),
    ("commit-w1", "as commit-w2 with 1 writer (writer scaling = commit-w2 / commit-w1)"),
    ("grpc-traces", "DESIGN 3 headline: async (default), 2 writers, OTLP/gRPC, N distinct "
                    "pre-encoded 1,000-span requests (10 attributes/span, 5 spans/trace) at R "
                    "requests/s, empty data dir, first request -> exit after SIGTERM"),
    ("http-traces", "as grpc-traces over OTLP/HTTP protobuf (HTTP/1.1, one connection per call)"),
    ("logs", "async, gRPC, N requests of 1,000 log records (every severity) at R requests/s"),
    ("metrics", "async, gRPC, N requests of 1,000 metric points (all five types) at R requests/s"),
    ("mixed", "async, gRPC, traces/logs/metrics requests in turn at R requests/s"),
    ("latency", "as grpc-traces at R/2 requests/s: Export latency p50/p99/p999 (open loop, "
                "measured from each request's due time)"),
    ("overload", "as grpc-traces at 3R requests/s (64 calls in flight): every priority trace "
                 "(ERROR or 600 ms span) of every acknowledged request is in SQLite with all its "
                 "spans (checked by id), no request counted priority items as dropped, and peak "
                 "RSS <= caps + documented overhead"),
    ("discard", "receive path: `serve --bench-discard` (writers discard), gRPC traces as fast as "
                "the server answers (8 in flight); compare with rotel's 342k spans/s "
                "(skipped when the binary has no --bench-discard)"),
    ("long", "async, gRPC traces at R requests/s for --duration s (60), cycling over 100 "
             "templates whose trace/span ids are rewritten on every send: overall rate and the "
             "persisted rate over the last 20% (scraped from /metrics every second)"),
]
NAMES = [n for n, _ in SCENARIOS]
SIGNALS = ("traces", "logs", "metrics")
ROWS_OF = {"traces": "spans", "logs": "logs", "metrics": "metric_points"}
ROTEL_SPANS_PER_S = 342_000  # NOTES: rotel 0.2.1 receive-and-discard on these machines


def parse_args():
    ap = argparse.ArgumentParser(
        prog="benches/matrix.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="End-to-end benchmark matrix of otelring (DESIGN 3), with the storage "
                    "baseline measured in the same run.",
        epilog="scenarios (one row each, run in this order in every run):\n"
               + "\n".join(f"  {n:<12} {d}" for n, d in SCENARIOS)
               + "\n\nR, the sustainable rate in requests/s (1 request = --items items): with "
                 "--rate auto (default) it is derived in every run from that run's commit-w2 row "
                 "(its persisted items/s / --items, rounded down; --rate-fallback when commit-w2 "
                 "did not run or failed); --rate N fixes it for every run.",
    )
    ap.add_argument("--runs", type=int, help="interleaved runs of the whole matrix (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 run, 50 requests, 50,000 baseline spans, a 10 s long run")
    ap.add_argument("--rate", default="auto", help="R in requests/s, or auto (default)")
    ap.add_argument("--rate-fallback", type=float, default=100.0,
                    help="R when --rate auto has no commit-w2 figure (default 100)")
    ap.add_argument("--requests", type=int, help="distinct requests per scenario (default 800; 50 with --quick)")
    ap.add_argument("--overload-requests", type=int,
                    help="requests of the overload row (default --requests; 300 with --quick, enough "
                         "to fill the byte cap and shed)")
    ap.add_argument("--items", type=int, default=1000, help="items per request (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="writers of the async rows (default 2)")
    ap.add_argument("--duration", type=float, help="seconds of the long row (default 60; 10 with --quick)")
    ap.add_argument("--long-runs", choices=["all", "first", "none"], default="all",
                    help="runs that include the long row (default all)")
    ap.add_argument("--baseline-spans", type=int, help="baseline spans (default 500000; 50000 with --quick)")
    ap.add_argument("--only", help="comma-separated scenarios to run (default: all)")
    ap.add_argument("--skip", help="comma-separated scenarios to leave out")
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V",
                    help="extra server environment for every scenario (repeatable)")
    ap.add_argument("--rss-base-mib", type=float, default=64.0,
                    help="fixed base of the RSS budget (DESIGN 1.2 'a fixed base'; default 64)")
    ap.add_argument("--bin", help="otelring binary (default ${CARGO_TARGET_DIR:-target}/release/otelring)")
    ap.add_argument("--server-bin",
                    help="steady state: run this otelring as the server (e.g. an older release, for a "
                         "before/after plot) while --bin's loadgen drives it")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--features", default="loadgen",
                    help="cargo features of the build (default loadgen; e.g. loadgen,mimalloc)")
    ap.add_argument("--results", help="JSON lines file to append to")
    ap.add_argument("--tmpdir", help="where the temp data dirs go (default $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep every data dir (they can be GBs)")
    ap.add_argument("--list", action="store_true", help="print the scenarios and exit")
    st = ap.add_argument_group("steady state (--steady)")
    st.add_argument("--steady", action="store_true",
                    help="run the steady-state scenario instead of the matrix (see the head of this file)")
    st.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    st.add_argument("--steady-rate", type=float, default=150.0,
                    help="offered requests/s of --items spans (default 150: 150k spans/s)")
    st.add_argument("--steady-rates",
                    help="comma-separated requests/s: one steady row each, then the highest rate held "
                         "with nothing shed")
    st.add_argument("--retention", default="3m", help="OTELRING_RETENTION of the server (default 3m)")
    st.add_argument("--templates", type=int, default=100,
                    help="distinct pre-encoded requests the loadgen cycles over (default 100)")
    st.add_argument("--concurrency", type=int, default=32, help="loadgen calls in flight (default 32)")
    st.add_argument("--ordered-ids", action="store_true",
                    help="loadgen --ordered-ids (only to show what random ids cost)")
    st.add_argument("--out", help="directory for the timeline CSVs, per-minute JSON and the plot")
    st.add_argument("--min-free-gib", type=float, default=10.0,
                    help="stop the load when the data dir's file system has less free space (default 10)")
    st.add_argument("--plot-with", action="append", default=[], metavar="CSV[=LABEL]",
                    help="earlier timeline CSV to overlay in the plot (repeatable)")
    a = ap.parse_args()
    if a.list:
        for n, d in SCENARIOS:
            print(f"{n:<12} {d}")
        sys.exit(0)
    a.runs = a.runs or (1 if a.quick else 3)
    a.requests = a.requests or (50 if a.quick else 800)
    a.overload_requests = a.overload_requests or (300 if a.quick else a.requests)
    a.duration = a.duration or (10.0 if a.quick else 60.0)
    a.baseline_spans = a.baseline_spans or (50_000 if a.quick else 500_000)
    sel = NAMES
    if a.only:
        sel = [s.strip() for s in a.only.split(",") if s.strip()]
    if a.skip:
        skip = {s.strip() for s in a.skip.split(",")}
        sel = [s for s in sel if s not in skip]
    bad = [s for s in sel if s not in NAMES]
    if bad:
        ap.error(f"unknown scenario(s) {bad}; known: {NAMES}")
    a.selected = [n for n in NAMES if n in sel]
    if a.rate != "auto":
        try:
            a.rate = float(a.rate)
        except ValueError:
            ap.error("--rate takes a number of requests/s or auto")
        if a.rate <= 0:
            ap.error("--rate must be positive")
    for kv in a.server_env:
        if "=" not in kv:
            ap.error(f"--server-env {kv!r}: expected K=V")
    return a


def fmt_rate(x):
    if x is None:
        return "n/a"
    return f"{x / 1e3:,.1f}k" if x >= 1e3 else f"{x:,.0f}"


def read_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def server_env(a, extra):
    # Reproducible: the settings of the caller's shell do not leak in (INGEST_ASYNC_ENABLED=false
    # in the environment would silently turn every async row into commit mode).
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(OTELRING_|INGEST_|DLQ_|SAMPLING_|DEFAULT_TENANT$)", k)}
    env.setdefault("RUST_LOG", "info")
    for kv in a.server_env:
        k, v = kv.split("=", 1)
        env[k] = v
    env.update(extra)
    return env


SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.I)


def parse_size(v):
    m = SIZE_RE.match(v)
    if not m:
        return None
    n, unit = int(m.group(1)), (m.group(2) or "b").lower()
    return n * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit[0]]


def rss_budget(a, env, shards, connections):
    """The documented memory bound (docs/RELIABILITY.md "Memory bound"; derived from the code in
    tests/floods.rs rss_bound): base + 3 x MAX_BYTES (rows queued per signal) + 2 x MAX_INFLIGHT
    (bodies being read or inflated, x2 for buffer growth) + 2 x cores x MAX_BYTES (decoded rows not
    yet admitted: the decode pool and inline decodes) + shards x 64 MiB (SQLite page cache) +
    connections x (4 MiB h2 connection window + streams x 64 KiB header block)."""
    max_bytes = parse_size(env.get("INGEST_PIPELINE_MAX_BYTES", "128MiB")) or 128 * MIB
    inflight = parse_size(env.get("OTELRING_MAX_INFLIGHT_BYTES", "256MiB")) or 256 * MIB
    streams = int(env.get("OTELRING_MAX_CONCURRENT_STREAMS", "256"))
    cores = os.cpu_count() or 1
    parts = {
        "queue_bytes_3_signals": 3 * max_bytes,
        "inflight_bytes_x2": 2 * inflight,
        "decoding_2_x_cores_x_max_bytes": 2 * cores * max_bytes,
        "sqlite_page_cache": shards * 64 * MIB,
        "connections_x_(h2_window+streams_x_header_block)": connections * (4 * MIB + streams * 64 * 1024),
        "base": int(a.rss_base_mib * MIB),
    }
    return sum(parts.values()), parts


BOOKS_RE = re.compile(
    r"otelring: books (\w+) received=(\d+) dlq_recovered=(\d+) persisted=(\d+) dropped=(\d+) "
    r"rejected=(\d+) filtered=(\d+) lost=(\d+) dlq_pending=(\d+) in_flight=(-?\d+) (balanced|UNBALANCED)")
BOOK_FIELDS = ("received", "dlq_recovered", "persisted", "dropped", "rejected", "filtered", "lost",
               "dlq_pending", "in_flight")


def parse_books(text):
    books = {}
    for m in BOOKS_RE.finditer(text):
        b = {k: int(v) for k, v in zip(BOOK_FIELDS, m.groups()[1:10])}
        b["balanced"] = m.group(11) == "balanced"
        books[m.group(1)] = b
    return books


def check_priority_ids(path, data_dir, tenant="default"):
    """Every `<trace id> <spans>` line: the trace has all its spans in some shard."""
    want = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                want[parts[0]] = max(want.get(parts[0], 0), int(parts[1]))
    found = {}
    for db in sorted(glob.glob(os.path.join(data_dir, "otelring-*.db"))):
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            c.execute("CREATE TEMP TABLE want (trace_id TEXT PRIMARY KEY)")
            c.executemany("INSERT INTO want VALUES (?)", ((t,) for t in want))
            # CROSS JOIN keeps `want` outer, so each id is one lookup in spans_key.
            q = ("SELECT w.trace_id, count(*) FROM want w CROSS JOIN spans s "
                 "ON s.tenant_id = ? AND s.trace_id = w.trace_id GROUP BY w.trace_id")
            for t, n in c.execute(q, (tenant,)):
                found[t] = found.get(t, 0) + n
        finally:
            c.close()
    missing = [t for t, n in want.items() if found.get(t, 0) < n]
    return len(want), sum(want.values()), missing


class Runner:
    def __init__(self, a, binary, results):
        self.a = a
        self.bin = binary
        self.results = results
        self.children = []
        help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
        self.has_discard = "--bench-discard" in help_text
        self.logs_dir = results + ".logs"

    def emit(self, obj):
        with open(self.results, "a") as f:
            f.write(json.dumps(obj, sort_keys=True) + "\n")

    def keep_logs(self, tag, files):
        os.makedirs(self.logs_dir, exist_ok=True)
        for src in files:
            if os.path.exists(src):
                dst = os.path.join(self.logs_dir, f"{tag}.{os.path.basename(src)}")
                with open(src, "rb") as i, open(dst, "wb") as o:
                    o.write(i.read())
        return self.logs_dir

    # ---- baseline -------------------------------------------------------------------------
    def baseline(self, tmp):
        out = subprocess.run(
            [self.bin, "loadgen", "--json", "--baseline-spans", str(self.a.baseline_spans),
             "--baseline-dir", tmp], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        row = {"checks": {}}
        if out.returncode != 0:
            row["checks"]["baseline"] = f"FAILED: exit {out.returncode}: {out.stderr.strip()[-300:]}"
            row["items_per_s"] = None
            return row
        r = json.loads(out.stdout)
        row.update(items_per_s=r["spans_per_s"], persisted=r["baseline_spans"], elapsed_s=r["timed_s"],
                   baseline=r)
        row["checks"]["baseline"] = "ok"
        return row

    # ---- one server scenario ---------------------------------------------------------------
    def server_run(self, name, tmp, *, workers, env, loadgen, serve_args=(), priority=False,
                   discard=False, rss_connections=None, timeout=900):
        a = self.a
        data = os.path.join(tmp, "data")
        sout, serr = os.path.join(tmp, "server.out"), os.path.join(tmp, "server.err")
        lout, lerr = os.path.join(tmp, "load.json"), os.path.join(tmp, "load.err")
        prio = os.path.join(tmp, "priority-ids.txt")
        senv = server_env(a, env)
        cmd = [self.bin, "serve", "--data-dir", data, "--grpc-addr", "127.0.0.1:0",
               "--http-addr", "127.0.0.1:0", "--workers", str(workers), *serve_args]
        row = {"checks": {}, "workers": workers, "server_env": env, "loadgen_args": loadgen}
        checks = row["checks"]
        with open(sout, "w") as so, open(serr, "w") as se:
            server = subprocess.Popen(cmd, stdout=so, stderr=se, env=senv, stdin=subprocess.DEVNULL)
        self.children.append(server)
        try:
            grpc = http = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and server.poll() is None:
                text = open(sout).read()
                m = re.search(r"OTLP/gRPC on (\S+), OTLP/HTTP on ([^;\s]+)", text)
                if m:
                    grpc, http = m.group(1), m.group(2)
                    break
                time.sleep(0.02)
            if grpc is None:
                server.kill()
                server.wait()
                self.children.remove(server)
                checks["start"] = "FAILED: server did not start: " + open(serr).read()[-400:]
                return row
            lcmd = [self.bin, "loadgen", "--target-grpc", grpc, "--target-http", http, "--json",
                    "--settle-ms", "0", *loadgen]
            if priority:
                lcmd += ["--priority-ids-out", prio]
            with open(lout, "w") as lo, open(lerr, "w") as le:
                load = subprocess.Popen(lcmd, stdout=lo, stderr=le, stdin=subprocess.DEVNULL)
                self.children.append(load)
                try:
                    load_rc = load.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    load.kill()
                    load_rc = load.wait()
                    checks["loadgen"] = f"FAILED: loadgen ran over {timeout} s"
                self.children.remove(load)
            # The load has ended: sample the peak RSS, then SIGTERM and wait for the exit, still
            # sampling (VmHWM only grows; the drain can raise it).
            hwm_before = read_hwm_kib(server.pid)
            server.send_signal(signal.SIGTERM)
            hwm = hwm_before or 0
            deadline = time.monotonic() + 180
            while server.poll() is None:
                h = read_hwm_kib(server.pid)
                if h:
                    hwm = max(hwm, h)
                if time.monotonic() > deadline:
                    server.kill()
                    checks["stop"] = "FAILED: no exit within 180 s of SIGTERM"
                    break
                time.sleep(0.01)
            end_ns = time.time_ns()
            rc = server.wait()
            self.children.remove(server)
        except BaseException:
            for p in list(self.children):
                p.kill()
                p.wait()
            self.children.clear()
            raise
        row["server_exit"] = rc
        row["rss_before_sigterm_mib"] = (hwm_before or 0) / 1024
        row["rss_peak_mib"] = hwm / 1024
        err_text = open(serr).read()
        books = parse_books(err_text)
        row["books"] = books
        try:
            lg = json.loads(open(lout).read())
        except (OSError, ValueError):
            lg = None
        if lg is None or load_rc != 0:
            checks["loadgen"] = f"FAILED: loadgen exit {load_rc}: {open(lerr).read()[-400:]}"
            row["failed_logs"] = self.keep_logs(f"{name}-{os.path.basename(tmp)}", [serr, lerr, lout])
            return row
        timeline = lg.pop("timeline", [])
        row["loadgen"] = lg
        elapsed = (end_ns - lg["start_unix_ns"]) / 1e9
        sig_used = [s for s in SIGNALS if lg["by_signal"][s]["sent_items"] > 0]
        persisted = sum(books.get(s, {}).get("persisted", 0) for s in sig_used)
        row.update(elapsed_s=elapsed, persisted=persisted, items_per_s=persisted / elapsed if elapsed > 0 else None,
                   latency_ms=lg["latency_ms"], signals=sig_used)

        # ---- checks ----
        checks["exit"] = "ok" if rc == 0 else f"FAILED: server exit code {rc}"
        if set(books) != set(SIGNALS):
            checks["books"] = f"FAILED: books lines missing (got {sorted(books)})"
        else:
            bad = [s for s, b in books.items() if not b["balanced"] or b["lost"] or b["dlq_pending"] or b["in_flight"]]
            checks["books"] = "ok" if not bad else f"FAILED: unbalanced/lost/pending books: {bad}"
        if lg["errors"]:
            checks["errors"] = f"FAILED: {lg['errors']} failed calls (first: {lg.get('first_error')})"
        else:
            checks["errors"] = "ok"
        acc = []
        for s in SIGNALS:
            b, l = books.get(s, {}), lg["by_signal"][s]
            # Filtered items (INGEST_MIN_SEVERITY, service lists: none unless --server-env sets
            # them) are acknowledged without a drop report and not stored.
            if l["accepted_items"] != b.get("persisted", 0) + b.get("filtered", 0):
                acc.append(f"{s}: loadgen accepted-dropped {l['accepted_items']} != persisted "
                           f"{b.get('persisted')} + filtered {b.get('filtered')}")
            if l["dropped_items"] != b.get("dropped", 0):
                acc.append(f"{s}: loadgen dropped {l['dropped_items']} != server dropped {b.get('dropped')}")
        checks["acked=persisted"] = "ok" if not acc else "FAILED: " + "; ".join(acc)
        if discard:
            checks["rows"] = "skipped (discard sink: nothing stored)"
        else:
            q = ("SELECT (SELECT count(*) FROM spans) AS spans, (SELECT count(*) FROM logs) AS logs, "
                 "(SELECT count(*) FROM metric_points) AS metric_points")
            out = subprocess.run([self.bin, "sql", "--json", q], capture_output=True, text=True,
                                 env={**senv, "OTELRING_DATA_DIR": data}, stdin=subprocess.DEVNULL)
            if out.returncode != 0:
                checks["rows"] = f"FAILED: otelring sql: {out.stderr.strip()[-300:]}"
            else:
                rows = json.loads(out.stdout)[0]
                row["rows"] = rows
                synth = lg.get("server_synthesized_logs_delta")
                row["synthesized_logs"] = synth
                bad = []
                for s in SIGNALS:
                    want = books.get(s, {}).get("persisted", 0)
                    if s == "logs":
                        if synth is None:
                            bad.append("logs: no synthesized-log count (the loadgen's /metrics scrape failed)")
                            continue
                        want += int(synth)  # logs made from span events / ERROR spans
                    if rows[ROWS_OF[s]] != want:
                        bad.append(f"{ROWS_OF[s]} rows {rows[ROWS_OF[s]]} != {want}")
                checks["rows"] = "ok" if not bad else "FAILED: " + "; ".join(bad)
        if priority:
            n_traces, n_spans, missing = check_priority_ids(prio, data)
            row["priority"] = {"traces": n_traces, "spans": n_spans, "missing": len(missing),
                               "violations": lg["priority_violations"]}
            problems = []
            if n_traces == 0:
                problems.append("no priority trace was acknowledged")
            if missing:
                problems.append(f"{len(missing)} of {n_traces} acknowledged priority traces missing or "
                                f"incomplete in SQLite (e.g. {missing[:3]})")
            if lg["priority_violations"]:
                problems.append(f"{lg['priority_violations']} requests counted priority items as dropped")
            if n_traces != lg["priority_traces_acked"]:
                problems.append(f"ids file {n_traces} != loadgen count {lg['priority_traces_acked']}")
            checks["priority-by-id"] = "ok" if not problems else "FAILED: " + "; ".join(problems)
            shed = books.get("traces", {}).get("dropped", 0)
            row["overloaded"] = shed > 0 or lg["throttled"] > 0
        if rss_connections:
            budget, parts = rss_budget(a, senv, workers, rss_connections)
            row["rss_budget_mib"] = budget / MIB
            row["rss_budget_parts_mib"] = {k: v / MIB for k, v in parts.items()}
            checks["rss"] = ("ok" if hwm * 1024 <= budget else
                             f"FAILED: peak RSS {hwm / 1024:.0f} MiB > budget {budget / MIB:.0f} MiB")
        if timeline:
            row["timeline"] = timeline
        if any(str(v).startswith("FAILED") for v in checks.values()):
            row["failed_logs"] = self.keep_logs(f"{name}-{os.path.basename(tmp)}", [serr, lerr, lout])
        return row


def last20(row, duration):
    """Persisted items/s over [0.8 D, D] from the loadgen's per-second /metrics scrapes."""
    lg = row.get("loadgen") or {}
    pts = [(0.0, 0.0)] + [(p["t"], p["server_persisted_items"]) for p in row.get("timeline", [])
                          if p.get("server_persisted_items") is not None]
    if lg.get("server_persisted_items_delta") is not None:
        pts.append((lg["elapsed_s"], lg["server_persisted_items_delta"]))
    if len(pts) < 3:
        return None
    t0 = 0.8 * duration
    t1, p1 = pts[-1]
    if t1 <= t0:
        return None
    for (ta, pa), (tb, pb) in zip(pts, pts[1:]):
        if ta <= t0 <= tb:
            p0 = pa + (pb - pa) * ((t0 - ta) / (tb - ta) if tb > ta else 0)
            return (p1 - p0) / (t1 - t0)
    return None


def line(run, runs, name, row, base):
    c = row.get("checks", {})
    failed = [f"{k}: {v}" for k, v in c.items() if str(v).startswith("FAILED")]
    if row.get("skipped"):
        return f"[run {run}/{runs}] {name:<12} skipped: {row['skipped']}"
    x = row.get("items_per_s")
    ratio = f"{x / base:.2f}x baseline" if x and base else "-"
    if name == "baseline":
        s = f"{fmt_rate(x)} spans/s ({row.get('persisted', 0):,} spans)"
    else:
        s = (f"persisted {row.get('persisted', 0):,} in {row.get('elapsed_s', 0):.2f} s = "
             f"{fmt_rate(x)} items/s, {ratio}")
        lg = row.get("loadgen")
        if lg:
            rr = row.get("rate_req_s")
            s += (f" | R {f'{rr:g}' if rr else 'max'} req/s, acked {sum(v['acked_items'] for v in lg['by_signal'].values()):,}"
                  f" dropped {lg['dropped_items']:,} throttled {lg['throttled']} errors {lg['errors']}")
            lat = lg["latency_ms"]
            s += f" | p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} p999 {lat['p999']:.1f} ms"
        s += f" | RSS {row.get('rss_peak_mib', 0):.0f} MiB"
        if "rss_budget_mib" in row:
            s += f" (budget {row['rss_budget_mib']:.0f})"
        if "priority" in row:
            p = row["priority"]
            s += f" | priority {p['traces']:,} traces by id, missing {p['missing']}"
            if not row.get("overloaded"):
                s += " (NOT overloaded: nothing shed or throttled)"
        if row.get("last20_items_per_s") is not None:
            s += f" | last 20% {fmt_rate(row['last20_items_per_s'])}/s"
        if name == "discard" and x:
            s += f" | {x / ROTEL_SPANS_PER_S:.2f}x rotel (342k)"
    s += " | checks " + ("ok" if not failed else "FAILED: " + "; ".join(failed))
    return f"[run {run}/{runs}] {name:<12} {s}"


def main():
    a = parse_args()
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    binary = a.bin or os.path.join(target, "release", "otelring")
    if not a.bin and not a.no_build:
        print(f"matrix: cargo build --release --features {a.features}", flush=True)
        subprocess.run(["cargo", "build", "--release", "--features", a.features], cwd=REPO, check=True)
    if not os.access(binary, os.X_OK):
        sys.exit(f"matrix: no binary at {binary} (build with --features loadgen, or pass --bin)")
    lg_help = subprocess.run([binary, "loadgen", "--help"], capture_output=True, text=True)
    if lg_help.returncode != 0 or "--baseline-spans" not in lg_help.stdout:
        sys.exit(f"matrix: {binary} has no `loadgen --baseline-spans` (build with --features loadgen)")
    if a.steady:
        sys.exit(steady_main(a, binary, target))
    results = a.results or os.path.join(target, "matrix", time.strftime("results-%Y%m%dT%H%M%SZ.jsonl", time.gmtime()))
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    r = Runner(a, binary, results)

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None
    header = {"type": "header", "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "commit": git("rev-parse", "HEAD"), "dirty_files": len((git("status", "--porcelain") or "").splitlines()),
              "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "binary": binary,
              "args": {k: v for k, v in vars(a).items() if k != "list"}}
    r.emit(header)
    print(f"matrix: {a.runs} run(s) of {', '.join(a.selected)}; {a.requests} requests x {a.items} items; "
          f"R = {a.rate}{' (from commit-w2 of each run)' if a.rate == 'auto' else ' req/s'}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; results {results}", flush=True)
    if os.getloadavg()[0] > 0.5:
        print("matrix: WARNING: the machine is busy (load average > 0.5): figures will be low and noisy", flush=True)

    tmp_root = a.tmpdir or tempfile.gettempdir()
    all_rows = []  # (run, name, row)
    failed = False
    base_q = ["--requests", str(a.requests), "--items", str(a.items)]
    for run in range(1, a.runs + 1):
        rate = a.rate if a.rate != "auto" else None
        base = None
        for name in a.selected:
            if name == "long" and (a.long_runs == "none" or (a.long_runs == "first" and run > 1)):
                continue
            if name in ("grpc-traces", "http-traces", "logs", "metrics", "mixed", "latency", "overload", "long") \
                    and rate is None:
                rate = a.rate_fallback
                print(f"matrix: run {run}: no commit-w2 figure, R = --rate-fallback {rate:g} req/s", flush=True)
            tmp = tempfile.mkdtemp(prefix=f"otelring-matrix-r{run}-{name}-", dir=tmp_root)
            t_wall = time.monotonic()
            try:
                async_rate = lambda f: ["--rate", f"{rate * f:.3f}"]  # noqa: E731
                if name == "baseline":
                    row = r.baseline(tmp)
                    base = row.get("items_per_s")
                elif name in ("commit-w2", "commit-w1"):
                    row = r.server_run(name, tmp, workers=2 if name == "commit-w2" else 1,
                                       env={"INGEST_ASYNC_ENABLED": "false"},
                                       loadgen=[*base_q, "--concurrency", "16"])
                    if name == "commit-w2" and a.rate == "auto" and row.get("items_per_s") \
                            and not any(str(v).startswith("FAILED") for v in row["checks"].values()):
                        rate = max(1.0, float(int(row["items_per_s"] / a.items)))
                elif name == "grpc-traces":
                    row = r.server_run(name, tmp, workers=a.workers, env={},
                                       loadgen=[*base_q, "--concurrency", "32", *async_rate(1)])
                elif name == "http-traces":
                    row = r.server_run(name, tmp, workers=a.workers, env={},
                                       loadgen=[*base_q, "--transport", "http", "--concurrency", "32", *async_rate(1)])
                elif name in ("logs", "metrics", "mixed"):
                    row = r.server_run(name, tmp, workers=a.workers, env={},
                                       loadgen=[*base_q, "--signal", name, "--concurrency", "32", *async_rate(1)])
                elif name == "latency":
                    row = r.server_run(name, tmp, workers=a.workers, env={},
                                       loadgen=[*base_q, "--concurrency", "32", *async_rate(0.5)])
                elif name == "overload":
                    # Connections for the RSS budget: the loadgen's 2 gRPC connections and its
                    # /metrics scrapes (one at a time), plus one spare.
                    row = r.server_run(name, tmp, workers=a.workers, env={}, priority=True, rss_connections=4,
                                       loadgen=["--requests", str(a.overload_requests), "--items", str(a.items),
                                                "--concurrency", "64", *async_rate(3)])
                elif name == "discard":
                    if not r.has_discard:
                        row = {"skipped": "this binary has no `otelring serve --bench-discard`", "checks": {}}
                    else:
                        row = r.server_run(name, tmp, workers=a.workers, env={}, serve_args=["--bench-discard"],
                                           discard=True, loadgen=[*base_q, "--concurrency", "8"])
                elif name == "long":
                    templates = min(100, a.requests)
                    row = r.server_run(name, tmp, workers=a.workers, env={},
                                       loadgen=["--requests", str(templates), "--items", str(a.items),
                                                "--duration", f"{a.duration:g}", "--concurrency", "32",
                                                *async_rate(1)],
                                       timeout=int(a.duration * 3 + 300))
                    row["duration_s"] = a.duration
                    row["last20_items_per_s"] = last20(row, a.duration)
                    lg = row.get("loadgen") or {}
                    if lg.get("elapsed_s"):
                        row["load_window_items_per_s"] = (lg.get("server_persisted_items_delta") or 0) / lg["elapsed_s"]
                else:
                    raise AssertionError(name)
            finally:
                if not a.keep:
                    shutil.rmtree(tmp, ignore_errors=True)
            if name in ("grpc-traces", "http-traces", "logs", "metrics", "mixed", "latency", "overload", "long"):
                row["rate_req_s"] = rate * {"latency": 0.5, "overload": 3}.get(name, 1)
            row["wall_s"] = time.monotonic() - t_wall
            row.update(type="row", run=run, scenario=name, baseline_this_run=base)
            if any(str(v).startswith("FAILED") for v in row.get("checks", {}).values()):
                failed = True
            r.emit(row)
            all_rows.append((run, name, row))
            print(line(run, a.runs, name, row, base), flush=True)

    # ---- summary ----
    def med(v):
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None
    by = {}
    for run, name, row in all_rows:
        by.setdefault(name, []).append(row)
    base_med = med(row.get("items_per_s") for row in by.get("baseline", []))
    print(f"\nmatrix summary: {a.runs} run(s); medians; ratios to the baseline median "
          f"({fmt_rate(base_med)} spans/s)")
    print(f"{'scenario':<12} {'runs':>4} {'median/s':>10} {'min-max':>17} {'x base':>7}  {'checks':<7} notes")
    summary = {}
    for name in a.selected:
        rows = by.get(name, [])
        if not rows:
            continue
        if all(r_.get("skipped") for r_ in rows):
            print(f"{name:<12} skipped: {rows[0]['skipped']}")
            summary[name] = {"skipped": rows[0]["skipped"]}
            continue
        vals = [r_.get("items_per_s") for r_ in rows if r_.get("items_per_s") is not None]
        m = med(vals)
        ok = all(not str(v).startswith("FAILED") for r_ in rows for v in r_.get("checks", {}).values())
        notes = []
        lat = [r_["latency_ms"] for r_ in rows if r_.get("latency_ms")]
        if name not in ("baseline",) and lat:
            notes.append("p50/p99/p999 {:.1f}/{:.1f}/{:.1f} ms".format(
                med(x["p50"] for x in lat), med(x["p99"] for x in lat), med(x["p999"] for x in lat)))
        if name not in ("baseline", "commit-w2", "commit-w1", "discard"):
            notes.append(f"R {med(r_.get('rate_req_s') for r_ in rows):g} req/s")
            d = med(r_["loadgen"]["dropped_items"] for r_ in rows if r_.get("loadgen"))
            if d:
                notes.append(f"dropped {d:,.0f}")
        if name != "baseline":
            notes.append(f"peak RSS {med(r_.get('rss_peak_mib') for r_ in rows) or 0:.0f} MiB")
        if name == "overload":
            notes.append(f"RSS budget {med(r_.get('rss_budget_mib') for r_ in rows) or 0:.0f} MiB")
            n = med(r_.get("priority", {}).get("traces") for r_ in rows) or 0
            notes.append(f"{n:,.0f} priority traces/run checked by id")
            if not all(r_.get("overloaded") for r_ in rows):
                notes.append("NOT overloaded in every run")
        if name == "long":
            l20 = med(r_.get("last20_items_per_s") for r_ in rows)
            notes.append(f"last 20% {fmt_rate(l20)}/s" + (f" ({l20 / m:.2f}x overall)" if l20 and m else ""))
        if name == "discard" and m:
            notes.append(f"{m / ROTEL_SPANS_PER_S:.2f}x rotel 342k")
        rng = f"{fmt_rate(min(vals))}-{fmt_rate(max(vals))}" if vals else "n/a"
        ratio = f"{m / base_med:.2f}x" if m and base_med else "-"
        print(f"{name:<12} {len(rows):>4} {fmt_rate(m):>10} {rng:>17} {ratio:>7}  {'ok' if ok else 'FAILED':<7} "
              + "; ".join(n for n in notes if n))
        summary[name] = {"runs": len(rows), "median_items_per_s": m, "min": min(vals) if vals else None,
                         "max": max(vals) if vals else None,
                         "ratio_to_baseline_median": m / base_med if m and base_med else None,
                         "checks_ok": ok, "notes": [n for n in notes if n]}
    w2, w1 = summary.get("commit-w2", {}), summary.get("commit-w1", {})
    if w2.get("median_items_per_s") and w1.get("median_items_per_s"):
        scale = w2["median_items_per_s"] / w1["median_items_per_s"]
        print(f"writer scaling (commit mode, 2 writers / 1 writer): {scale:.2f}x")
        summary["writer_scaling"] = scale
    r.emit({"type": "summary", "baseline_median": base_med, "scenarios": summary, "any_check_failed": failed})
    print(f"\nresults: {results}" + (f" (logs of failed rows in {r.logs_dir})" if failed else ""))
    sys.exit(1 if failed else 0)


# ---- steady state (--steady) ------------------------------------------------------------------
def read_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def scrape_metrics(http):
    import urllib.request
    try:
        return urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    except (OSError, ValueError):
        return None


def commit_gap(metrics_text, log_text):
    """The server's worst commit gap around a rotation in seconds: the longest pause a segment
    rotation caused a writer (otelring_store_rotation_max_pause_seconds), or any exported metric
    whose name contains commit_gap, else the largest 'commit gap' figure in its log, else None."""
    vals = []
    pat = r"^(otelring_\w*(?:commit_gap|rotation_max_pause)\w*)(\{[^}]*\})? (\S+)$"
    for m in re.finditer(pat, metrics_text or "", re.M):
        if not m.group(1).endswith(("_count", "_bucket")):
            try:
                vals.append(float(m.group(3)))
            except ValueError:
                pass
    if vals:
        return max(vals), "metrics"
    for m in re.finditer(r"commit[ _]gap[^0-9\n]*([0-9.]+)\s*(ms|s)\b", log_text or "", re.I):
        vals.append(float(m.group(1)) / (1000 if m.group(2).lower() == "ms" else 1))
    if vals:
        return max(vals), "log"
    return None, None


def read_timeline(path):
    import csv
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            def num(k):
                v = r.get(k, "")
                return float(v) if v not in ("", None) else None
            rows.append({k: num(k) for k in r})
    return rows


def steady_row(a, binary, out_dir, rate):
    """One steady-state run at `rate` requests/s. Returns a dict (per-minute table included)."""
    tag = f"steady-{rate:g}"
    tmp = tempfile.mkdtemp(prefix=f"otelring-{tag}-", dir=a.tmpdir or tempfile.gettempdir())
    data = os.path.join(tmp, "data")
    csv_path = os.path.join(out_dir, f"timeline-{rate:g}.csv")
    sout, serr = os.path.join(tmp, "server.out"), os.path.join(tmp, "server.err")
    lout, lerr = os.path.join(tmp, "load.json"), os.path.join(tmp, "load.err")
    env = server_env(a, {"OTELRING_RETENTION": a.retention})
    seconds = a.minutes * 60
    res = {"rate_req_s": rate, "offered_items_per_s": rate * a.items, "minutes": a.minutes,
           "retention": a.retention, "workers": a.workers, "timeline_csv": csv_path, "checks": {}}
    children = []
    try:
        with open(sout, "w") as so, open(serr, "w") as se:
            server = subprocess.Popen([a.server_bin or binary, "serve", "--data-dir", data, "--grpc-addr", "127.0.0.1:0",
                                       "--http-addr", "127.0.0.1:0", "--workers", str(a.workers)],
                                      stdout=so, stderr=se, env=env, stdin=subprocess.DEVNULL)
        children.append(server)
        grpc = http = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            m = re.search(r"OTLP/gRPC on (\S+), OTLP/HTTP on ([^;\s]+)", open(sout).read())
            if m:
                grpc, http = m.groups()
                break
            time.sleep(0.02)
        if grpc is None:
            res["checks"]["start"] = "FAILED: server did not start: " + open(serr).read()[-400:]
            return res
        lcmd = [binary, "loadgen", "--target-grpc", grpc, "--target-http", http, "--json", "--settle-ms", "0",
                "--requests", str(a.templates), "--items", str(a.items), "--duration", f"{seconds:g}",
                "--rate", f"{rate:g}", "--concurrency", str(a.concurrency),
                "--timeline-out", csv_path, "--data-dir", data]
        if a.ordered_ids:
            lcmd.append("--ordered-ids")
        with open(lout, "w") as lo, open(lerr, "w") as le:
            load = subprocess.Popen(lcmd, stdout=lo, stderr=le, stdin=subprocess.DEVNULL)
        children.append(load)
        rss = []  # (unix s, VmRSS MiB) every second
        while load.poll() is None:
            kib = read_status_kib(server.pid, "VmRSS")
            if kib:
                rss.append((time.time(), kib / 1024))
            try:
                load.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - deadline > seconds + 600:
                load.kill()
                res["checks"]["loadgen"] = "FAILED: loadgen ran 10 minutes over its duration"
            free = shutil.disk_usage(tmp).free / 2**30
            if free < a.min_free_gib and load.poll() is None:
                load.send_signal(signal.SIGINT)
                load.wait()
                res["checks"]["disk"] = (f"FAILED: load stopped early, {free:.1f} GiB free on the data dir's "
                                         f"file system (< --min-free-gib {a.min_free_gib:g})")
        hwm = read_status_kib(server.pid, "VmHWM") or 0
        metrics = scrape_metrics(http)
        server.send_signal(signal.SIGTERM)
        try:
            rc = server.wait(timeout=300)
        except subprocess.TimeoutExpired:
            server.kill()
            rc = server.wait()
            res["checks"]["stop"] = "FAILED: no exit within 300 s of SIGTERM"
        children.clear()
        log = open(serr).read()
        res["server_exit"] = rc
        res["books"] = parse_books(log)
        res["peak_rss_mib"] = hwm / 1024
        gap, gap_from = commit_gap(metrics, log)
        res["worst_commit_gap_s"], res["commit_gap_source"] = gap, gap_from
        try:
            lg = json.load(open(lout))
        except (OSError, ValueError):
            res["checks"]["loadgen"] = f"FAILED: loadgen exit {load.returncode}: {open(lerr).read()[-400:]}"
            if "disk" not in res["checks"] or not os.path.exists(csv_path):
                return res
            # Stopped for the disk: the timeline CSV (written as it goes) still gives the table.
            m = re.search(r"load started at unix_ns (\d+)", open(lerr).read())
            lg = {"start_unix_ns": int(m.group(1)) if m else int((rss[0][0] if rss else time.time()) * 1e9)}
        lg.pop("timeline", None)
        res["loadgen"] = {k: lg.get(k) for k in ("sent", "accepted_items", "dropped_items", "throttled",
                                                  "errors", "latency_ms", "start_unix_ns", "elapsed_s")}
        res["checks"].setdefault("loadgen", "ok" if load.returncode == 0 and not lg.get("errors") else
                                 f"FAILED: exit {load.returncode}, {lg.get('errors')} failed calls "
                                 f"({lg.get('first_error')})")
        books = res["books"].get("traces", {})
        res["checks"]["books"] = "ok" if books.get("balanced") and rc == 0 else f"FAILED: exit {rc}, books {books}"
        tl = read_timeline(csv_path)
        start = lg["start_unix_ns"] / 1e9
        table = []
        for m in range(int(-(-seconds // 60))):
            rows = [r for r in tl if m * 60 < (r["t_s"] or 0) <= (m + 1) * 60]
            if not rows:
                continue
            offered = sum(r["offered_items"] or 0 for r in rows)
            shed = sum((r["dropped_items"] or 0) + ((r["throttled_calls"] or 0) + (r["error_calls"] or 0)) * a.items
                       for r in rows)
            sizes = [r["data_dir_bytes"] for r in rows if r["data_dir_bytes"] is not None]
            mem = [v for t, v in rss if m * 60 < t - start <= (m + 1) * 60]
            table.append({"minute": m + 1, "seconds": len(rows),
                          "offered_per_s": offered / len(rows),
                          "persisted_per_s": sum(r["persisted_items"] or 0 for r in rows) / len(rows),
                          "shed_share": shed / offered if offered else None,
                          "data_dir_gib": sizes[-1] / 2**30 if sizes else None,
                          "rss_mib_max": max(mem) if mem else None})
        res["per_minute"] = table
        fifth = max(1, len(tl) // 5)
        p = [r["persisted_items"] or 0 for r in tl]
        first, last = sum(p[:fifth]) / fifth, sum(p[-fifth:]) / fifth
        res["first_fifth_per_s"], res["last_fifth_per_s"] = first, last
        res["last_over_first"] = last / first if first else None
        offered = sum(r["offered_items"] or 0 for r in tl)
        shed = sum((r["dropped_items"] or 0) + ((r["throttled_calls"] or 0) + (r["error_calls"] or 0)) * a.items
                   for r in tl)
        res["shed_share"] = shed / offered if offered else None
        return res
    except BaseException:
        for c in children:
            c.kill()
            c.wait()
        raise
    finally:
        if a.keep:
            print(f"matrix: kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def print_steady(res, items):
    gib = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    pct = lambda x: "n/a" if x is None else f"{x * 100:.1f}%"  # noqa: E731
    print(f"\nsteady state: {res['rate_req_s']:g} requests/s x {items} spans offered "
          f"({fmt_rate(res['offered_items_per_s'])} spans/s) for {res['minutes']:g} min, "
          f"OTELRING_RETENTION={res['retention']}, {res['workers']} writers")
    print(f"{'minute':>6} {'offered/s':>10} {'persisted/s':>12} {'shed':>7} {'data dir GiB':>13} {'RSS MiB':>8}")
    for m in res.get("per_minute", []):
        print(f"{m['minute']:>6} {fmt_rate(m['offered_per_s']):>10} {fmt_rate(m['persisted_per_s']):>12} "
              f"{pct(m['shed_share']):>7} {gib(m['data_dir_gib']):>13} "
              f"{'n/a' if m['rss_mib_max'] is None else format(m['rss_mib_max'], '.0f'):>8}")
    ratio = res.get("last_over_first")
    gap = res.get("worst_commit_gap_s")
    gap_text = "n/a" if gap is None else f"{gap * 1000:.0f} ms (from the server's {res['commit_gap_source']})"
    print(f"last fifth / first fifth persisted: {fmt_rate(res.get('last_fifth_per_s'))} / "
          f"{fmt_rate(res.get('first_fifth_per_s'))} = {'n/a' if ratio is None else f'{ratio:.2f}'}; "
          f"shed {pct(res.get('shed_share'))}; peak RSS {res.get('peak_rss_mib', 0):.0f} MiB; "
          f"worst commit gap {gap_text}")
    mins = res.get("per_minute", [])
    sizes = [m["data_dir_gib"] for m in mins if m["data_dir_gib"] is not None]
    # Disk flat: the last minute's size within 10% of the size at the start of the second half
    # (judged from 4 minutes on: a shorter run has not passed its retention).
    half = sizes[len(sizes) // 2:]
    flat = half[-1] <= half[0] * 1.10 + 0.05 if len(sizes) >= 4 else None
    goal = (res.get("shed_share") is not None and res["shed_share"] <= 0.01 and ratio is not None
            and ratio >= 0.9 and flat)
    res["disk_flat"], res["goal_met"] = flat, goal
    disk = {True: "flat", False: "growing", None: "not judged: under 4 minutes"}[flat]
    print(f"goal (<= 1% shed, last/first fifth >= 0.9, disk flat over the second half): "
          f"{'n/a' if flat is None else 'MET' if goal else 'NOT MET'} (disk {disk})")
    for k, v in res.get("checks", {}).items():
        if str(v).startswith("FAILED"):
            print(f"check {k}: {v}")


def steady_main(a, binary, target):
    out_dir = a.out or os.path.join(target, "matrix", time.strftime("steady-%Y%m%dT%H%M%SZ", time.gmtime()))
    os.makedirs(out_dir, exist_ok=True)
    rates = [float(x) for x in a.steady_rates.split(",")] if a.steady_rates else [a.steady_rate]
    print(f"matrix: steady state at {', '.join(f'{r:g}' for r in rates)} requests/s x {a.items} spans, "
          f"{a.minutes:g} min each, retention {a.retention}; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs; output in {out_dir}", flush=True)
    results, failed = [], False
    for rate in rates:
        res = steady_row(a, binary, out_dir, rate)
        if res.get("per_minute"):
            print_steady(res, a.items)
        failed |= any(str(v).startswith("FAILED") for v in res["checks"].values())
        for k, v in res["checks"].items():
            if str(v).startswith("FAILED") and not res.get("per_minute"):
                print(f"check {k}: {v}")
        results.append(res)
        with open(os.path.join(out_dir, "steady.jsonl"), "a") as f:
            f.write(json.dumps(res, sort_keys=True) + "\n")
    held = [r["rate_req_s"] for r in results if r.get("shed_share") == 0 and r["checks"].get("books") == "ok"]
    if len(rates) > 1:
        best = max(held) if held else None
        print(f"\nhighest rate held for {a.minutes:g} min with nothing shed: "
              + (f"{best:g} requests/s ({fmt_rate(best * a.items)} spans/s)" if best else "none of the rates tried"))
    csvs = [f"{r['timeline_csv']}={'ordered ids' if a.ordered_ids else 'random ids'} {r['rate_req_s']:g} req/s"
            for r in results if os.path.exists(r["timeline_csv"]) and sum(1 for _ in open(r["timeline_csv"])) > 2]
    if csvs:
        png = os.path.join(out_dir, "steady.png")
        env = dict(os.environ, PLOT_TITLE=f"otelring steady state: {a.items}-span requests, "
                                          f"OTELRING_RETENTION={a.retention}")
        p = subprocess.run([os.path.join(REPO, "benches", "plot.sh"), png, *a.plot_with, *csvs], env=env)
        print(f"plot: {png}" if p.returncode == 0 else f"plot: FAILED (plot.sh exit {p.returncode})", flush=True)
    print(f"results: {out_dir}")
    return 1 if failed else 0


def on_signal(signum, _frame):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `matrix.sh --list | head` ends quietly
main()
PY

#!/usr/bin/env bash
# The soak (issue 7 item 6; manual, figures in docs/RELIABILITY.md): steady mixed load on the
# release server for --minutes (default 10), sampling every 5 s the server's RSS, the shards' WAL
# and database bytes, the DLQ bytes and the queue depth (batches), with the loadgen's per-second Export
# latency; prints one line per minute and a verdict on whether RSS, WAL, DLQ and latency stayed
# flat (last minute against the second, after warm-up). Stops with SIGTERM and checks the books.
#
#   benches/soak.sh                         # 10 minutes, mixed signals over gRPC at 40 requests/s
#   benches/soak.sh --minutes 2 --rate 60   # shorter / faster
#
# The binary: --bin PATH, else ${CARGO_TARGET_DIR:-<repo>/target}/release/otelring, built first
# with `cargo build --release --features loadgen` unless --no-build. Data under a temp dir
# (--tmpdir), removed at the end unless --keep.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SOAK_REPO="$repo"
exec python3 - "$@" <<'PY'
import argparse, atexit, glob, json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ap = argparse.ArgumentParser(prog="benches/soak.sh")
ap.add_argument("--minutes", type=float, default=10)
ap.add_argument("--rate", type=float, default=40, help="requests/s (mixed: traces, logs, metrics in turn)")
ap.add_argument("--items", type=int, default=1000, help="items per request")
ap.add_argument("--workers", type=int, default=2)
ap.add_argument("--bin")
ap.add_argument("--no-build", action="store_true")
ap.add_argument("--tmpdir")
ap.add_argument("--keep", action="store_true")
ap.add_argument("--json", help="write the samples and the verdict here")
a = ap.parse_args()
repo = os.environ["SOAK_REPO"]
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
binary = a.bin or os.path.join(target, "release", "otelring")
if not a.bin and not a.no_build:
    subprocess.run(["cargo", "build", "--release", "--features", "loadgen"], cwd=repo, check=True)

tmp = tempfile.mkdtemp(prefix="otelring-soak-", dir=a.tmpdir)
children = []


def cleanup():
    # The data dir goes when the script ends, also on failure or a signal (unless --keep).
    for c in children:
        if c.poll() is None:
            c.kill()
            c.wait()
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
data = os.path.join(tmp, "data")
env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELRING_", "INGEST_", "DLQ_"))}
so, se = open(os.path.join(tmp, "server.out"), "w"), open(os.path.join(tmp, "server.err"), "w")
server = subprocess.Popen([binary, "serve", "--data-dir", data, "--grpc-addr", "127.0.0.1:0",
                           "--http-addr", "127.0.0.1:0", "--workers", str(a.workers)],
                          stdout=so, stderr=se, env=env, stdin=subprocess.DEVNULL)
children.append(server)
grpc = http = None
for _ in range(1500):
    m = re.search(r"OTLP/gRPC on (\S+), OTLP/HTTP on ([^;\s]+)", open(so.name).read())
    if m:
        grpc, http = m.groups()
        break
    time.sleep(0.02)
if grpc is None:
    server.kill()
    sys.exit("soak: the server did not start: " + open(se.name).read()[-400:])

def status_kib(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None

def size(pattern):
    return sum(os.path.getsize(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))

def queue_depth():
    try:
        text = urllib.request.urlopen(f"http://{http}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return sum(float(m.group(1)) for m in re.finditer(r"^otelring_ingest_pipeline_queue_depth\{[^}]*\} (\S+)$", text, re.M))

duration = a.minutes * 60
lout = os.path.join(tmp, "load.json")
load = subprocess.Popen([binary, "loadgen", "--target-grpc", grpc, "--target-http", http, "--signal", "mixed",
                         "--rate", str(a.rate), "--items", str(a.items), "--requests", "300",
                         "--duration", str(duration), "--json", "--settle-ms", "0"],
                        stdout=open(lout, "w"), stderr=open(os.path.join(tmp, "load.err"), "w"))
children.append(load)
samples, t0 = [], time.monotonic()
while load.poll() is None:
    samples.append({
        "t": time.monotonic() - t0,
        "rss_mib": (status_kib(server.pid, "VmRSS") or 0) / 1024,
        "wal_mib": size(os.path.join(data, "*.db-wal")) / 2**20,
        "db_mib": size(os.path.join(data, "*.db")) / 2**20,
        "dlq_mib": size(os.path.join(data, "dlq", "**")) / 2**20,
        "queue_batches": queue_depth(),
    })
    time.sleep(5)
hwm = status_kib(server.pid, "VmHWM") or 0
server.send_signal(signal.SIGTERM)
rc = server.wait(timeout=300)
lg = json.load(open(lout))
err = open(se.name).read()
books = [l for l in err.splitlines() if l.startswith("otelring: books")]

# Per minute: the samples and the loadgen's per-second latency (p99 of each second).
timeline = lg.get("timeline", [])
minutes = int(a.minutes)
rows = []
for m in range(max(minutes, 1)):
    lo, hi = m * 60, (m + 1) * 60
    ss = [s for s in samples if lo <= s["t"] < hi]
    ts = [t for t in timeline if lo < t["t"] <= hi and t.get("p99_ms")]
    if not ss:
        continue
    p99s = sorted(t["p99_ms"] for t in ts)
    acc = [t["accepted_items"] for t in timeline if lo < t["t"] <= hi]
    rows.append({
        "minute": m + 1,
        "rss_mib_max": max(s["rss_mib"] for s in ss),
        "wal_mib_max": max(s["wal_mib"] for s in ss),
        "db_mib_end": ss[-1]["db_mib"],
        "dlq_mib_max": max(s["dlq_mib"] for s in ss),
        "queue_batches_max": max((s["queue_batches"] or 0) for s in ss),
        "p99_ms_median_second": p99s[len(p99s) // 2] if p99s else None,
        "p99_ms_worst_second": p99s[-1] if p99s else None,
        "accepted_per_s": (acc[-1] - acc[0]) / max(len(acc) - 1, 1) if len(acc) > 1 else None,
    })
print(f"soak: {a.minutes:g} min, mixed gRPC at {a.rate:g} requests/s x {a.items} items, {a.workers} writers")
print(f"{'min':>3} {'RSS MiB':>8} {'WAL MiB':>8} {'DB MiB':>8} {'DLQ MiB':>8} {'queued':>8} "
      f"{'p99 ms (median s)':>18} {'p99 worst s':>12} {'accepted/s':>11}")
for r in rows:
    print(f"{r['minute']:>3} {r['rss_mib_max']:>8.0f} {r['wal_mib_max']:>8.1f} {r['db_mib_end']:>8.0f} "
          f"{r['dlq_mib_max']:>8.1f} {r['queue_batches_max']:>8.0f} {r['p99_ms_median_second'] or 0:>18.1f} "
          f"{r['p99_ms_worst_second'] or 0:>12.1f} {r['accepted_per_s'] or 0:>11.0f}")
ok = True
verdict = {}
if len(rows) >= 3:
    first, last = rows[1], rows[-1]
    for k, slack in (("rss_mib_max", 1.25), ("wal_mib_max", 1.25), ("p99_ms_median_second", 2.0)):
        f, l = first[k] or 0, last[k] or 0
        flat = l <= f * slack + (1 if k != "rss_mib_max" else 16)
        verdict[k] = {"minute_2": f, "last_minute": l, "flat": flat}
        ok &= flat
verdict["dlq_empty"] = all(r["dlq_mib_max"] == 0 for r in rows)
ok &= verdict["dlq_empty"]
balanced = len(books) == 3 and all(l.endswith(" balanced") and " lost=0 " in l for l in books)
ok &= balanced and rc == 0 and lg.get("errors", 1) == 0
print(f"peak RSS {hwm / 1024:.0f} MiB; accepted {lg['accepted_items']:,} items, dropped {lg['dropped_items']:,}, "
      f"throttled {lg['throttled']}, errors {lg['errors']}; Export p50 {lg['latency_ms']['p50']:.2f} "
      f"p99 {lg['latency_ms']['p99']:.2f} p999 {lg['latency_ms']['p999']:.2f} max {lg['latency_ms']['max']:.1f} ms")
print(f"server exit {rc}; books:")
for l in books:
    print("  " + l)
print("verdict:", json.dumps(verdict), "->", "FLAT" if ok else "NOT FLAT / FAILED")
if a.json:
    json.dump({"args": vars(a), "samples": samples, "minutes": rows, "verdict": verdict, "ok": ok,
               "peak_rss_mib": hwm / 1024, "loadgen": {k: v for k, v in lg.items() if k != "timeline"},
               "books": books, "exit": rc}, open(a.json, "w"), indent=1)
if not a.keep:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(0 if ok else 1)
PY

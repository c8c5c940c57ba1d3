#!/usr/bin/env bash
# One end-to-end scenario, as DESIGN 3 times it: start the release server on an empty temp data
# dir, drive it with `otelring loadgen`, send SIGTERM when the load ends, and time from the first
# request to the server's exit (drain and stop included). Prints one line.
#
#   benches/e2e.sh <label> "<server env>" "<loadgen args>"
#   e.g. benches/e2e.sh async "" "--transport grpc --requests 800 --items 1000"
#        benches/e2e.sh commit "INGEST_ASYNC_ENABLED=false" "--requests 800 --items 1000 --concurrency 16"
#
# Build once first: cargo build --release --features loadgen. The binary: $OTELRING_BIN, else
# ${CARGO_TARGET_DIR:-<repo>/target}/release/otelring; $OTELRING_SERVER_BIN runs another build as
# the server (an older release for a before/after figure) under this one's loadgen. The whole matrix (every scenario, the
# baseline in the same run, checks, medians): benches/matrix.sh.
set -euo pipefail
label=$1; server_env=$2; loadgen_args=$3
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${OTELRING_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/otelring}"
dir=$(mktemp -d)
pid=
# The data dir goes when the script ends, also on failure (a server left running is killed first).
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
grpc=127.0.0.1:$((20000 + RANDOM % 20000)); http=127.0.0.1:$((40000 + RANDOM % 20000))
# shellcheck disable=SC2086 # the env and loadgen arguments are word lists
env $server_env "${OTELRING_SERVER_BIN:-$bin}" --data-dir "$dir/data" --grpc-addr "$grpc" --http-addr "$http" >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
# The loadgen pre-encodes before its clock starts and reports when its first request went out
# (start_unix_ns); --settle-ms 0: SIGTERM as soon as the load ends.
# shellcheck disable=SC2086
"$bin" loadgen --target-grpc "$grpc" --target-http "$http" --json --settle-ms 0 $loadgen_args >"$dir/load.json" 2>"$dir/load.err"
kill -TERM $pid
wait $pid || true
end=$(date +%s.%N)
start=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["start_unix_ns"] / 1e9)' "$dir/load.json")
persisted=$(grep -o 'books traces [^ ]* [^ ]* persisted=[0-9]*' "$dir/err" | grep -o '[0-9]*$' || echo 0)
for s in logs metrics; do
  p=$(grep -o "books $s [^ ]* [^ ]* persisted=[0-9]*" "$dir/err" | grep -o '[0-9]*$' || echo 0)
  persisted=$((persisted + p))
done
python3 - "$label" "$start" "$end" "$persisted" "$dir/load.json" <<'PY'
import json, sys
label, start, end, persisted, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = json.load(open(path))
secs = end - start
print(f"{label}: persisted {persisted} items in {secs:.2f} s = {persisted / secs:,.0f} items/s "
      f"(accepted {r['accepted_items']}, dropped {r['dropped_items']}, throttled {r['throttled']}, errors {r['errors']}; "
      f"export p50 {r['latency_ms']['p50']:.1f} ms p99 {r['latency_ms']['p99']:.1f} ms)")
PY

#!/usr/bin/env bash
# The ClickHouse sink against its baseline, in one run, on one 2-node cluster (docs/CLICKHOUSE.md,
# issue "scale out"):
#
#   ours:     the release binary (OTELRING_SINK=clickhouse, 2 workers: shard i -> node i) under
#             `otelring loadgen`; persisted spans/s from the first request to the server's exit
#             after SIGTERM (drain included), as benches/e2e.sh times it.
#   baseline: the very rows ours stored, exported from each node's local table in batches of
#             INGEST_WRITER_MAX_ROWS (20,000, otelring's coalescing limit) in the order otelring
#             received them (IngestedAtNs: each batch spans the whole random key range, as ours
#             did), as RowBinary files, the table truncated, then the files POSTed straight back
#             (plain RowBinary over HTTP, one sequential stream per otelring writer): no otelring.
#   cpu:      CPU seconds per span of otelring (until SIGTERM), of the load generator, and of the
#             ClickHouse nodes in each phase, counted until their merges have settled
#             (system.merges empty), so both phases pay for the merges they cause.
#
#   CH_NODES=1|2 (default 2): with 1, both writers (and both baseline streams) go to one node.
#   CH_BASELINE=0: skip the baseline (a long run: its export re-sorts the table per batch).
#   OTELRING_PERF=FILE: `perf record -g` of the otelring server while the load runs, into FILE.
#
#   benches/clickhouse.sh [rounds] [loadgen args...]
#   e.g. benches/clickhouse.sh 3 --requests 800 --items 1000 --concurrency 8      (a measurement)
#        benches/clickhouse.sh 1 --requests 20 --items 1000                         (a smoke)
#
# Needs /usr/sbin/clickhouse-server (apt-get install -y clickhouse-server clickhouse-client) and a
# release build with the load generator (cargo build --release --features loadgen). The binary:
# $OTELRING_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/otelring. Everything it starts
# is stopped by pid and its temp dir removed on exit, also on failure.
set -euo pipefail
rounds=${1:-1}; shift || true
loadgen_args=("$@")
[ ${#loadgen_args[@]} -gt 0 ] || loadgen_args=(--requests 800 --items 1000 --concurrency 8)
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${OTELRING_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/otelring}"
batch=20000
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=(); tcp=()
for i in 0 1; do http+=("$(port)"); tcp+=("$(port)"); done
for i in 0 1; do
  d="$dir/ch$i"; mkdir -p "$d/data" "$d/tmp"
  cat >"$d/config.xml" <<X
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>${http[$i]}</http_port><tcp_port>${tcp[$i]}</tcp_port>
  <interserver_http_port>$(port)</interserver_http_port>
  <path>$d/data/</path><tmp_path>$d/tmp/</tmp_path>
  <users_config>$d/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>5368709120</mark_cache_size>
  <remote_servers><bench>
    <shard><replica><host>127.0.0.1</host><port>${tcp[0]}</port></replica></shard>
    <shard><replica><host>127.0.0.1</host><port>${tcp[1]}</port></replica></shard>
  </bench></remote_servers>
</yandex>
X
  cat >"$d/users.xml" <<X
<yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>
X
  /usr/sbin/clickhouse-server --config-file="$d/config.xml" >"$d/log" 2>&1 &
  pids+=($!)
done
# CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
chcpu() { python3 -c "print(f'{$(cpu "${pids[0]}") + $(cpu "${pids[1]}"):.2f}')"; }
us_per() { python3 -c "print(f'{$1 * 1e6 / max($2, 1):.1f}')"; }
q() { curl -sS --fail-with-body "http://127.0.0.1:${http[$1]}/" --data-binary "$2"; }
for i in 0 1; do
  for _ in $(seq 300); do q "$i" "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
done
nodes=${CH_NODES:-2}
case "$nodes" in
  1) urls="http://127.0.0.1:${http[0]}" ;;
  2) urls="http://127.0.0.1:${http[0]},http://127.0.0.1:${http[1]}" ;;
  *) echo "CH_NODES must be 1 or 2" >&2; exit 2 ;;
esac
# Waits (up to 300 s) until neither node runs a merge.
settle() {
  for _ in $(seq 600); do
    [ "$(q 0 "SELECT count() FROM system.merges")$(q 1 "SELECT count() FROM system.merges")" = 00 ] && return
    sleep 0.5
  done
}

for round in $(seq "$rounds"); do
  for i in 0 1; do q "$i" "DROP DATABASE IF EXISTS otel" >/dev/null; done
  run="$dir/run$round"; mkdir -p "$run"
  grpc=127.0.0.1:$(port); ohttp=127.0.0.1:$(port)
  OTELRING_SINK=clickhouse OTELRING_CLICKHOUSE_URLS="$urls" "$bin" --data-dir "$run/data" --workers 2 \
    --grpc-addr "$grpc" --http-addr "$ohttp" >"$run/out" 2>"$run/err" &
  opid=$!; pids+=("$opid")
  for _ in $(seq 200); do grep -q listening "$run/out" 2>/dev/null && break; sleep 0.05; done
  settle; ch0=$(chcpu); o0=$(cpu "$opid")
  perf_pid=
  if [ -n "${OTELRING_PERF:-}" ]; then
    perf record ${OTELRING_PERF_ARGS:--g -F 999} -p "$opid" -o "$OTELRING_PERF" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  /usr/bin/time -f '%U %S' -o "$run/load.time" "$bin" loadgen --target-grpc "$grpc" --target-http "$ohttp" --json --settle-ms 0 "${loadgen_args[@]}" \
    >"$run/load.json" 2>"$run/load.err"
  metrics=$(curl -sS "http://$ohttp/metrics" || true)
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  o1=$(cpu "$opid")
  kill -TERM "$opid"; wait "$opid" || true
  end=$(date +%s.%N)
  settle; ch1=$(chcpu)
  load_cpu=$(awk '{ print $1 + $2 }' "$run/load.time")
  commits=$(grep -o '^otelring_writer_rows_per_commit_count [0-9.e+]*' <<<"$metrics" | cut -d' ' -f2 || echo 0)
  commit_rows=$(grep -o '^otelring_writer_rows_per_commit_sum [0-9.e+]*' <<<"$metrics" | cut -d' ' -f2 || echo 0)
  start=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["start_unix_ns"] / 1e9)' "$run/load.json")
  persisted=$(grep -o 'books traces [^ ]* [^ ]* persisted=[0-9]*' "$run/err" | grep -o '[0-9]*$' || echo 0)
  ours=$(python3 -c "print(f'{$persisted / ($end - $start):.0f}')")

  sent=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["by_signal"]["traces"]["sent_items"])' "$run/load.json")
  otel_cpu=$(python3 -c "print($o1 - $o0)")
  cpu_line="otelring $(us_per "$otel_cpu" "$persisted") us/persisted span, $(us_per "$otel_cpu" "$sent") us/sent span; loadgen $(us_per "$load_cpu" "$sent") us/sent span; clickhouse ours $(us_per "$(python3 -c "print($ch1 - $ch0)")" "$persisted") us/span"
  commit_line="commits $commits of $(python3 -c "print(f'{float($commit_rows or 0) / max(float($commits or 0), 1):.0f}')") rows on average"
  if [ "${CH_BASELINE:-1}" = 0 ]; then
    echo "round $round: ours $ours spans/s (persisted $persisted of $sent sent, $(python3 -c "print(f'{100 * (1 - $persisted / max($sent, 1)):.2f}')")% not persisted); no baseline"
    echo "round $round cpu: $cpu_line; $commit_line"
    rm -rf "$run"
    continue
  fi
  # Baseline: the same rows, batch by batch, exported per node (untimed), then POSTed back: each
  # node's spans in batches of $batch rows, each followed by its share of the node's logs (the
  # logs otelring made from span events, inserted with their spans as otelring's groups are).
  declare -A cols insert
  for t in traces logs; do
    cols[$t]=$(q 0 "DESCRIBE TABLE otel.otel_${t}_local" | cut -f1 | sed 's/.*/`&`/' | paste -sd, -)
    insert[$t]=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' \
      "INSERT INTO otel.otel_${t}_local (${cols[$t]}) FORMAT RowBinary")
  done
  rows_total=0; logs_total=0
  for ((i = 0; i < nodes; i++)); do
    n=$(q "$i" "SELECT count() FROM otel.otel_traces_local")
    nl=$(q "$i" "SELECT count() FROM otel.otel_logs_local")
    rows_total=$((rows_total + n)); logs_total=$((logs_total + nl))
    parts=$(((n + batch - 1) / batch)); lbatch=$(((nl + parts - 1) / (parts > 0 ? parts : 1)))
    for ((k = 0; k < parts; k++)); do
      # With one node, alternate batches between two streams (one per otelring writer).
      s=$i; [ "$nodes" = 1 ] && s=$((k % 2))
      mkdir -p "$run/stream$s"
      f="$run/stream$s/$i-$(printf %06d "$k")"
      q "$i" "SELECT ${cols[traces]} FROM otel.otel_traces_local ORDER BY IngestedAtNs, TraceId, SpanId LIMIT $((k * batch)), $batch FORMAT RowBinary" >"$f-traces.bin"
      [ "$lbatch" -gt 0 ] && q "$i" "SELECT ${cols[logs]} FROM otel.otel_logs_local ORDER BY IngestedAtNs, LogId LIMIT $((k * lbatch)), $lbatch FORMAT RowBinary" >"$f-logs.bin"
    done
    q "$i" "TRUNCATE TABLE otel.otel_traces_local" >/dev/null
    q "$i" "TRUNCATE TABLE otel.otel_logs_local" >/dev/null
  done
  settle
  chb0=$(chcpu)
  t0=$(date +%s.%N)
  bp=()
  for s in 0 1; do
    [ -d "$run/stream$s" ] || continue
    (for f in "$run/stream$s"/*.bin; do
       i=$(basename "$f" | cut -d- -f1); t=$(basename "$f" .bin | cut -d- -f3)
       [ -s "$f" ] || continue
       curl -sS --fail-with-body "http://127.0.0.1:${http[$i]}/?query=${insert[$t]}" --data-binary "@$f" >/dev/null
     done) &
    bp+=($!)
  done
  wait "${bp[@]}"
  t1=$(date +%s.%N)
  settle; chb1=$(chcpu)
  back=0; back_logs=0
  for ((i = 0; i < nodes; i++)); do
    back=$((back + $(q "$i" "SELECT count() FROM otel.otel_traces_local")))
    back_logs=$((back_logs + $(q "$i" "SELECT count() FROM otel.otel_logs_local")))
  done
  base=$(python3 -c "print(f'{$rows_total / ($t1 - $t0):.0f}')")
  echo "round $round: ours $ours spans/s (persisted $persisted of $sent sent); baseline $base spans/s ($back of $rows_total spans and $back_logs of $logs_total logs re-inserted, spans in $batch-row batches); ratio $(python3 -c "print(f'{$ours / max($base, 1):.2f}')")"
  # CPU per span: otelring until SIGTERM (the drain's share is small) per persisted and per
  # received span (shed spans are decoded too), the load generator per span it sent, both
  # ClickHouse nodes per stored span (its logs included) in each phase (merges until settled included).
  echo "round $round cpu: $cpu_line, baseline $(us_per "$(python3 -c "print($chb1 - $chb0)")" "$rows_total") us/span; $commit_line"
  rm -rf "$run"
done

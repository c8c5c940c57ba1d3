#!/usr/bin/env bash
# Plots one or more `otelring loadgen --timeline-out` CSVs: the server's persisted spans/s (10 s
# moving average, offered rate dashed) and the data dir's size over time (or, when no CSV has a
# data dir size, e.g. the ClickHouse sink, the spans shed per second), one curve per CSV
# (e.g. "before" and "after" overlaid). gnuplot renders it; the script installs gnuplot-nox with
# apt-get when it is missing.
#
#   benches/plot.sh OUT.png|OUT.svg TIMELINE.csv[=LABEL] [TIMELINE.csv[=LABEL] ...]
#   e.g. benches/plot.sh docs/steady-state.png before.csv=before after.csv=after
#
# Options (environment): PLOT_TITLE (the title line), PLOT_AVG (seconds of the moving average,
# default 10).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
out=$1; shift
if ! command -v gnuplot >/dev/null; then
  echo "plot.sh: installing gnuplot-nox (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q gnuplot-nox >/dev/null \
    || { $sudo apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q gnuplot-nox >/dev/null; }
fi
avg=${PLOT_AVG:-10}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plots_rate=(); plots_disk=(); plots_shed=(); has_disk=; i=0
colors=("#1f77b4" "#d62728" "#2ca02c" "#ff7f0e" "#9467bd" "#8c564b")
for arg in "$@"; do
  csv=${arg%%=*}
  label=$(basename "$csv" .csv)
  [ "$arg" != "$csv" ] && label=${arg#*=}
  [ -r "$csv" ] || { echo "plot.sh: cannot read $csv" >&2; exit 2; }
  dat="$tmp/$i.dat"
  # Columns of the CSV (loadgen's TIMELINE_HEADER): second,t_s,offered_items,accepted_items,
  # dropped_items,throttled_calls,error_calls,p50_ms,p99_ms,persisted_items,data_dir_bytes.
  # Out: minutes, persisted k/s (moving average), offered k/s (moving average), data dir GiB,
  # shed k/s (moving average).
  awk -F, -v n="$avg" 'NR > 1 {
      k = NR - 2; p[k % n] = ($10 == "" ? 0 : $10); o[k % n] = $3; x[k % n] = $5; m = (k + 1 < n ? k + 1 : n)
      sp = 0; so = 0; sx = 0; for (j = 0; j < m; j++) { sp += p[j]; so += o[j]; sx += x[j] }
      d = ($11 == "" ? "NaN" : $11 / 1073741824)
      printf "%.4f %.3f %.3f %s %.3f\n", $2 / 60, sp / m / 1000, so / m / 1000, d, sx / m / 1000
    }' "$csv" >"$dat"
  awk '$4 != "NaN" { found = 1 } END { exit !found }' "$dat" && has_disk=1
  c=${colors[$((i % ${#colors[@]}))]}
  plots_rate+=("'$dat' using 1:2 with lines lw 2 lc rgb '$c' title '$label persisted'")
  plots_rate+=("'$dat' using 1:3 with lines lw 1 dt 2 lc rgb '$c' title '$label offered'")
  plots_disk+=("'$dat' using 1:4 with lines lw 2 lc rgb '$c' title '$label'")
  plots_shed+=("'$dat' using 1:5 with lines lw 2 lc rgb '$c' title '$label'")
  i=$((i + 1))
done
join() { local IFS=,; echo "$*"; }
case "$out" in
  *.svg) term="set terminal svg size 1000,760 dynamic noenhanced background rgb 'white' font 'Helvetica,12'" ;;
  *) term="set terminal pngcairo size 1000,760 noenhanced font 'Helvetica,11'" ;;
esac
gnuplot <<EOF
$term
set output '$out'
set datafile missing 'NaN'
set multiplot layout 2,1 title "${PLOT_TITLE:-otelring: persisted rate and data dir over time}"
set grid
set key below
set lmargin at screen 0.08
set rmargin at screen 0.97
set xlabel 'minutes since the load started'
set ylabel 'spans/s (thousands, ${avg} s average)'
set yrange [0:*]
plot $(join "${plots_rate[@]}")
$(if [ -n "$has_disk" ]; then
    echo "set ylabel 'data dir (GiB)'"; echo "plot $(join "${plots_disk[@]}")"
  else
    echo "set ylabel 'shed spans/s (thousands, ${avg} s average)'"; echo "plot $(join "${plots_shed[@]}")"
  fi)
unset multiplot
EOF
echo "plot.sh: wrote $out" >&2

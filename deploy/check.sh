#!/usr/bin/env bash
# Checks what deploy/ ships with the real tools (run by .ci/test; needs Debian's `prometheus` and
# `systemd` packages, which .ci/run installs):
# - the Prometheus rules: `promtool check rules` and their unit tests (`promtool test rules`);
# - the systemd unit: `systemd-analyze verify`.
set -euo pipefail
cd "$(dirname "$0")"

promtool check rules prometheus/otelring.rules.yml
promtool test rules prometheus/otelring.rules.test.yml

# verify requires ExecStart='s program to exist on this machine: check a copy whose ExecStart runs
# /bin/true instead of /usr/local/bin/otelring (every other line as shipped). verify exits 0 on
# warnings (an unknown key, a bad value), so any output fails the check.
unit_dir="$(mktemp -d)"
trap 'rm -rf "$unit_dir"' EXIT
sed 's|^ExecStart=/usr/local/bin/otelring |ExecStart=/bin/true |' systemd/otelring.service >"$unit_dir/otelring.service"
grep -q '^ExecStart=/bin/true serve$' "$unit_dir/otelring.service"
out="$(systemd-analyze verify "$unit_dir/otelring.service" 2>&1)" || { printf '%s\n' "$out"; exit 1; }
if [[ -n "$out" ]]; then
  printf 'systemd-analyze verify warned:\n%s\n' "$out"
  exit 1
fi
echo "systemd-analyze verify systemd/otelring.service: OK"

#!/usr/bin/env bash
# Trace markers (docs/BENCHMARKS.md, "Trace markers"): the cost of one marker
# write, and a polyglot pipeline's wall time with markers on against off,
# alternated in one run (median of 15 each), while an ftrace instance records
# the markers as a profiler would. Needs root for tracefs; mounts it when it
# is not mounted and leaves everything as it found it.
#
#   scripts/bench-markers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench-markers: skipped (tracefs needs root)"
  exit 0
fi
mounted=""
if ! awk '$3 == "tracefs" { found = 1 } END { exit !found }' /proc/mounts; then
  if ! mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then
    echo "bench-markers: skipped (no tracefs and it cannot be mounted)"
    exit 0
  fi
  mounted=1
fi
T=$(awk '$3 == "tracefs" { print $2; exit }' /proc/mounts)
inst="$T/instances/pipehost-bench-$$"
mkdir "$inst"
cleanup() {
  echo 0 > "$inst/tracing_on"
  : > "$inst/trace"
  rmdir "$inst"
  if [ -n "$mounted" ]; then
    # Our markers also reached the top-level buffer of the tracefs we mounted.
    : > "$T/trace"
    umount "$T"
  fi
}
trap cleanup EXIT
echo mono > "$inst/trace_clock"
if [ -e "$inst/options/copy_trace_marker" ]; then
  echo 1 > "$inst/options/copy_trace_marker"
fi
echo 1 > "$inst/tracing_on"

echo "# $(date -u +%FT%TZ) $(go version | cut -d' ' -f3) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -r)"
PIPEHOST_BENCH_TRACE_MARKER="$inst/trace_marker" \
  go test -run '^$' -bench 'Marker' -benchtime 1000000x -count 5 ./internal/tracemark/ | grep -E '^(Benchmark|ok|FAIL)'
go test -run '^$' -bench 'TraceMarkersOnOff' -benchtime 1x -timeout 30m ./host/runner/ | grep -E '^(Benchmark|ok|FAIL)'

#!/usr/bin/env bash
# Engine and data-plane micro-benchmarks, through real plugin processes where a plugin is
# involved; each figure is the median of COUNT runs (default 5):
# seal and producer unmap per GiB, SHA-256 digest per core and on every core, framework
# overhead (12 stages of 250 ms CPU work) with the cache off and cold (alternated within each
# run), plugin launch, planning 10,000 stages, the run log writer, topology lookups.
# Per-stage overhead of whole commands is scripts/bench-stages.sh.
#
#   scripts/bench-engine.sh
#   COUNT=9 SHM_SIZE=256MiB scripts/bench-engine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
count="${COUNT:-5}"
run() { go test -run '^$' -count "$count" "$@" | grep -E '^(Benchmark|ok|FAIL)' ; }
echo "# $(date -u +%FT%TZ) $(go version | cut -d' ' -f3) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
PIPEHOST_SHM_BENCH_SIZE="${SHM_SIZE:-1GiB}" run -bench 'SealWrite' -benchtime 1x ./shm/
run -bench 'Digest' -benchtime 1x ./host/cache/
# One invocation, COUNT alternated pairs of runs: the benchmark reports medians itself.
go test -run '^$' -count 1 -bench 'FrameworkOverhead' -benchtime "${count}x" ./host/runner/ | grep -E '^(Benchmark|ok|FAIL)'
run -bench 'Launch' -benchtime 10x ./host/pluginmgr/
run -bench 'Build10k' -benchtime 5x ./host/plan/
run -bench 'Log|Sustained|Append' -benchtime 1000000x ./host/runlog/
run -bench '.' -benchtime 200000x ./topology/
echo "# load $(cut -d' ' -f1-3 /proc/loadavg) at the end"

#!/usr/bin/env bash
# Engine benchmarks, side by side in one run, through real plugin processes:
# plugin launch (one and ten at once), per-stage overhead of no-op DAGs
# (chain and wide, 1,000 and 10,000 stages), planning 10,000 stages,
# framework overhead on 12 stages of 250 ms CPU work, a cached rerun of a
# 1 GiB pipeline, the run log writer, and topology lookups.
#
#   scripts/bench-engine.sh            # everything (about 3 minutes)
#   COUNT=3 scripts/bench-engine.sh    # repeat each benchmark 3 times
set -euo pipefail
cd "$(dirname "$0")/.."
count="${COUNT:-1}"
run() { go test -run '^$' -count "$count" "$@" | grep -E '^(Benchmark|ok|FAIL)' ; }
echo "# $(date -u +%FT%TZ) $(go version | cut -d' ' -f3) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
run -bench 'Launch' -benchtime 20x ./host/pluginmgr/
run -bench 'PerStageOverhead' -benchtime 1x -timeout 30m ./host/runner/
run -bench 'FrameworkOverhead|CachedRerun' -benchtime 2x ./host/runner/
run -bench 'NoopStagePerLanguage' -benchtime 3x ./host/runner/
run -bench 'Prefault' -benchtime 4x ./host/runner/
run -bench 'Build10k' -benchtime 10x ./host/plan/
run -bench 'Log|Sustained|Append' -benchtime 2000000x ./host/runlog/
run -bench '.' -benchtime 1s ./topology/

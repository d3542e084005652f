#!/usr/bin/env bash
# Producer plugin → consumer plugin hand-off of one float32 grid, the ways interleaved in every
# round of one run: `pipehost run` on the default path (cache on, a fresh cache directory each
# round) and with --no-cache, the harness's zero-copy hand-off (a), gRPC streaming through the
# host (b) and an .npy file (c). Prints Markdown tables of medians on stdout and progress on
# stderr. Arguments go to the harness:
#
#   scripts/bench-handoff.sh                      # 64 MiB, 1 GiB, and 4 GiB if memory allows; 5 rounds
#   scripts/bench-handoff.sh -sizes 64MiB -rounds 9 -ways run,run-no-cache
#   scripts/bench-handoff.sh -h                   # every flag
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
go build -o "$work/plugins/benchxfer" ./testplugins/go/benchxfer
go build -o "$work/pipehost" ./cmd/pipehost
go build -o "$work/handoff" ./bench/handoff
"$work/handoff" -plugin "$work/plugins/benchxfer" -pipehost "$work/pipehost" -plugin-dir "$work/plugins" "$@"

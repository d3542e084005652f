#!/usr/bin/env bash
# Zero-copy hand-off benchmark: one float32 grid from a producer plugin process to a consumer
# plugin process, (a) through a sealed shared memory segment (with and without prefaulting it),
# (b) streamed over gRPC through the host, (c) as an .npy file, interleaved in one run. Prints
# Markdown tables of medians on stdout and progress on stderr. Arguments go to the harness:
#
#   scripts/bench-handoff.sh                      # 1 MiB, 64 MiB, 1 GiB, and 4 GiB if memory allows
#   scripts/bench-handoff.sh -sizes 64MiB -rounds 9 -chunk 4MiB
#   scripts/bench-handoff.sh -h                   # every flag
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/benchxfer" ./testplugins/go/benchxfer
go build -o "$work/handoff" ./bench/handoff
"$work/handoff" -plugin "$work/benchxfer" "$@"

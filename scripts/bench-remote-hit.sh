#!/usr/bin/env bash
# A remote-cache hit of a 1 GiB output against recomputing it: a run of
# ref.noise-go (16384×16384 f32) and a consumer, recomputed without a cache,
# recomputed with a local cache, and served from a bazel-remote by a host
# whose local cache is empty, alternated round by round (medians). The test
# package starts and stops its own servers (internal/remotetest).
#
#   scripts/bench-remote-hit.sh            # 5 rounds, 1 GiB
#   ROUNDS=9 SIDE=8192 scripts/bench-remote-hit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIPEHOST_BENCH_REMOTE_HIT="${ROUNDS:-5}" PIPEHOST_BENCH_SIDE="${SIDE:-16384}" \
	go test ./host/remote/runtest -run '^TestRemoteHitBench$' -count=1 -v -timeout 90m

#!/usr/bin/env bash
# The time one remotely executed stage adds, through the engine: ref.blur-go
# run here and as an action on a local Buildbarn worker (remote.kinds), side
# by side round by round, medians. The test package starts and stops its
# own servers (internal/remotetest).
#
#   scripts/bench-remote-exec.sh                 # 5 rounds, 512×256 and 2048×1024
#   ROUNDS=9 GRIDS=4096x2048 scripts/bench-remote-exec.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIPEHOST_BENCH_REMOTE_STAGE="${ROUNDS:-5}" PIPEHOST_BENCH_GRIDS="${GRIDS:-512x256,2048x1024}" \
	go test ./host/remote/runtest -run '^TestRemoteStageBench$' -count=1 -v -timeout 60m

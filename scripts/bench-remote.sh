#!/usr/bin/env bash
# Remote cache throughput: a 1 GiB blob uploaded to and downloaded from the
# CAS of bazel-remote and of Buildbarn (bb_storage), against a plain loopback
# TCP copy of the same bytes, alternated round by round; and the time a
# remote stage adds: one small stage run by pipehost-stage here against the
# same stage as an action on the Buildbarn worker. Starts its own
# servers (scripts/remote-servers.sh) and stops them. Arguments go to the
# harness:
#
#   scripts/bench-remote.sh                        # 1 GiB, 5 rounds
#   scripts/bench-remote.sh -size 256MiB -rounds 9
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-remote-servers.sh
work=$(mktemp -d)
state="$work/servers"
trap 'scripts/remote-servers.sh stop "$state" >/dev/null; rm -rf "$work"' EXIT
go build -o "$work/bench-remote" ./bench/remote
go build -o "$work/pipehost-stage" ./cmd/pipehost-stage
mkdir -p "$work/plugins"
go build -o "$work/plugins/ref-go" ./plugins/go/ref-go
eval "$(scripts/remote-servers.sh start "$state")"
"$work/bench-remote" -targets "bazel-remote=$PIPEHOST_TEST_REMOTE_CACHE,Buildbarn=$PIPEHOST_TEST_REMOTE_EXECUTOR" \
	-executor "$PIPEHOST_TEST_REMOTE_EXECUTOR" -platform "$PIPEHOST_TEST_REMOTE_PLATFORM" \
	-runner "$work/pipehost-stage" -plugins "$work/plugins" "$@"

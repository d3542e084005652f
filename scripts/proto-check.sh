#!/usr/bin/env bash
# Fails when the committed generated code differs from what `make proto` produces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh protoc
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
protoc -I proto --go_out="$tmp" --go_opt=module=github.com/pipehost/pipehost/proto \
  --go-grpc_out="$tmp" --go-grpc_opt=module=github.com/pipehost/pipehost/proto \
  proto/pipehost/v1/stage.proto
if ! diff -r "$tmp/pipehostv1" proto/pipehostv1 >/dev/null; then
  echo "proto-check: generated code in proto/pipehostv1 is stale; run 'make proto' and commit" >&2
  diff -r "$tmp/pipehostv1" proto/pipehostv1 | head -20 >&2
  exit 1
fi
echo "proto-check: generated code is fresh"

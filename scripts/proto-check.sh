#!/usr/bin/env bash
# Fails when the committed generated code differs from what `make proto` produces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh protoc
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
protoc -I proto --go_out="$tmp" --go_opt=module=github.com/pipehost/pipehost/proto \
  --go-grpc_out="$tmp" --go-grpc_opt=module=github.com/pipehost/pipehost/proto \
  proto/pipehost/v1/stage.proto
protoc -I proto --go_out="$tmp" --go_opt=module=github.com/pipehost/pipehost/proto \
  --go-grpc_out="$tmp" --go-grpc_opt=module=github.com/pipehost/pipehost/proto \
  proto/bench/v1/transfer.proto
for pkg in pipehostv1 benchv1; do
  if ! diff -r "$tmp/$pkg" "proto/$pkg" >/dev/null; then
    echo "proto-check: generated code in proto/$pkg is stale; run 'make proto' and commit" >&2
    diff -r "$tmp/$pkg" "proto/$pkg" | head -20 >&2
    exit 1
  fi
done
# The Python SDK's generated modules, by the pinned grpcio-tools.
scripts/proto-python.sh "$tmp/py"
if ! diff -r -x __pycache__ "$tmp/py/pipehost/_proto" sdk/python/src/pipehost/_proto >/dev/null; then
  echo "proto-check: generated code in sdk/python/src/pipehost/_proto is stale; run 'make proto' and commit" >&2
  diff -r -x __pycache__ "$tmp/py/pipehost/_proto" sdk/python/src/pipehost/_proto | head -20 >&2
  exit 1
fi
# The shared vectors generated from the Go implementation (docs/protocol.md):
# their generator's test fails while a committed file is stale.
if ! go test -count=1 -run '^TestVectorsAreUpToDate$' ./sdk/internal/genvectors >"$tmp/vectors.log" 2>&1; then
  echo "proto-check: testdata vectors are stale; run 'go run ./sdk/internal/genvectors' and commit" >&2
  cat "$tmp/vectors.log" >&2
  exit 1
fi
echo "proto-check: generated code and vectors are fresh"

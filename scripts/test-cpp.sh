#!/usr/bin/env bash
# Runs the C++ SDK's own tests (GoogleTest under ctest): the shared vectors
# in testdata/ (seeds, topology, handles), shared memory and the fd channel,
# and the plugin process itself. Builds what changed first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh cpp
scripts/build-cpp.sh
ctest --test-dir build/cpp --output-on-failure --no-tests=error -j"${PIPEHOST_JOBS:-2}" --timeout 120

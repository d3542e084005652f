#!/usr/bin/env bash
# Every benchmark, one after the other: `make bench`. Each part prints the
# numbers recorded in docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bench-engine.sh
scripts/bench-handoff.sh
scripts/bench-cog.sh
scripts/bench-remote.sh
scripts/bench-remote-hit.sh
scripts/bench-markers.sh
scripts/bench-setup.sh
scripts/bench-python.sh

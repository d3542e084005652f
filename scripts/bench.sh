#!/usr/bin/env bash
# Every benchmark, one after the other: `make bench`. Each part prints the
# numbers recorded in docs/BENCHMARKS.md, with the load average beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bench-handoff.sh
scripts/bench-stages.sh
scripts/bench-native-runs.sh
scripts/bench-engine.sh
scripts/bench-cog.sh
scripts/bench-remote.sh
scripts/bench-remote-hit.sh
scripts/bench-remote-exec.sh
scripts/bench-markers.sh
scripts/bench-setup.sh
scripts/bench-python.sh
scripts/bench-planet.sh

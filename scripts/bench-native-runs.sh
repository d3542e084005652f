#!/usr/bin/env bash
# Runs on the fd channel against runs over the gRPC Run call, per SDK
# (docs/BENCHMARKS.md, "Per-stage overhead"): BenchmarkNativeStageOverhead's
# noop rows (20 independent no-op stages through the real host, host µs per
# stage) for the Go, C++, Rust and Python SDKs, each SDK's plugin taking its
# runs on the fd channel (noop/*) and, with PIPEHOST_RUN_OVER_GRPC=1, over the
# gRPC call (noop-grpc/*). ROUNDS rounds, every row once per round, so the two
# paths of one SDK are measured side by side; medians, and gRPC / channel.
#
#   scripts/bench-native-runs.sh
#   ROUNDS=3 BENCHTIME=10x scripts/bench-native-runs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PIPEHOST_REQUIRE_NATIVE=1
ROUNDS=${ROUNDS:-5}
BENCHTIME=${BENCHTIME:-20x}
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
out=$(mktemp); trap 'rm -f "$out"' EXIT
go test -c -o "$out.test" ./host/runner/
trap 'rm -f "$out" "$out.test"' EXIT
for ((r = 0; r < ROUNDS; r++)); do
  (cd host/runner && "$out.test" -test.run '^$' -test.bench 'NativeStageOverhead/(noop|noop-grpc)/(go|cpp|rust|py)$' \
    -test.benchtime "$BENCHTIME" -test.count 1) | grep 'µs/stage' >>"$out"
done
python3 - "$out" <<'PY'
import collections, statistics, sys
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    name = f[0].split("/", 1)[1].rsplit("-", 1)[0]  # noop/cpp, noop-grpc/cpp
    v[name].append(float(f[f.index("µs/stage") - 1]))
print("| SDK | fd channel µs/stage | gRPC call µs/stage | gRPC / channel | runs (channel; gRPC) |")
print("| --- | ---: | ---: | ---: | --- |")
for lang in ("go", "cpp", "rust", "py"):
    ch, g = v.get("noop/" + lang), v.get("noop-grpc/" + lang)
    if not ch or not g:
        continue
    mc, mg = statistics.median(ch), statistics.median(g)
    print("| %s | %.0f | %.0f | %.2f× | %s; %s |" % (lang, mc, mg, mg / mc,
          " ".join("%.0f" % x for x in ch), " ".join("%.0f" % x for x in g)))
PY
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

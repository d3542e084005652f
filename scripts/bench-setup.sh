#!/usr/bin/env bash
# Setup time of the demo (examples/dummy.toml, 5 stages, 4 plugins used)
# with 20 installed plugins: the demo's four and 16 distinct variants
# (testplugins/variant, ~20 MB each). Three ways, alternated, RUNS times
# each, through the real CLI:
#
#   none   --cache-dir "": no plugin catalog, every plugin launched to be
#          described (what every run did before the catalog)
#   first  a fresh cache directory: every plugin hashed, launched,
#          described and recorded
#   warm   the catalog knows every binary: only the 4 used plugins launch
#
# Prints the medians of plan + descriptors (describe_ns + plan_ns of the
# run log's plugin_setup record), of launching the used plugins
# (launch_ns), and of the whole command's wall time.
#
#   scripts/bench-setup.sh           # RUNS=7 (about 1 minute)
#   RUNS=11 scripts/bench-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-7}"
export PIPEHOST_PLUGIN_PATH=  # only the benchmark's plugins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A copy of pipehost, so plugins/ beside it (part of the search path) is
# the benchmark's own directory and holds exactly the 20 plugins.
mkdir -p "$work/bin"
cp bin/pipehost "$work/bin/pipehost"
plugins="$work/bin/plugins"
mkdir -p "$plugins"
for p in source transform sink probe; do cp bin/testplugins/$p "$plugins/"; done
for i in $(seq -w 1 16); do
  go build -ldflags "-X main.name=fill$i" -o "$plugins/fill$i" ./testplugins/variant
done
# Binaries changed in the last 2 s are hashed again on every run (their
# stat could hide a same-tick rewrite); installed plugins are older.
sleep 2.1
echo "# $(date -u +%FT%TZ) $(go version | cut -d' ' -f3) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(ls "$plugins" | wc -l) plugins installed, $(du -sh "$plugins" | cut -f1)"

one() { # mode index
  local mode=$1 i=$2 cachedir out
  out="$work/out-$mode-$i"
  case $mode in
    none) cachedir="" ;;
    first) cachedir="$work/cache-first-$i" ;;
    warm) cachedir="$work/cache-warm" ;;
  esac
  local t0 t1
  t0=$(date +%s%N)
  "$work/bin/pipehost" run examples/dummy.toml --cache-dir "$cachedir" --no-cache \
    --out "$out" --quiet
  t1=$(date +%s%N)
  python3 - "$mode" "$(( (t1 - t0) ))" "$out"/logs/run_*.jsonl >>"$work/results" <<'EOF'
import json, sys
mode, wall, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for line in open(log):
    r = json.loads(line)
    if r["type"] == "plugin_setup":
        d = r["data"]
        print(mode, (d["describe_ns"] + d["plan_ns"]) / 1e6, d["launch_ns"] / 1e6, wall / 1e6,
              len(d["described"]), len(d["started"]), d["hashed"])
EOF
}

one warm 0 # fills the warm catalog
: >"$work/results"
for i in $(seq 1 "$runs"); do
  for mode in none first warm; do one "$mode" "$i"; done
done
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
print("%-6s %5s %22s %18s %16s %10s %8s %7s" % ("mode", "runs", "plan+descriptors ms", "launch used ms", "whole run ms", "described", "started", "hashed"))
for mode in ("none", "first", "warm"):
    r = rows[mode]
    med = lambda k: statistics.median(x[k] for x in r)
    print("%-6s %5d %22.1f %18.1f %16.1f %10d %8d %7d" % (mode, len(r), med(0), med(1), med(2), med(3), med(4), med(5)))
EOF

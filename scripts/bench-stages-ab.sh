#!/usr/bin/env bash
# Per-stage overhead of two revisions side by side: a 1,000-stage no-op chain
# (probe.sleep, 0 ms) with --no-cache, the whole `pipehost run` command, the
# two builds alternated ROUNDS times. Prints, per revision, the medians of
# the command time per stage and of one stage's parts from the run log
# (host start → stage function, the function, its end → host sealed, the
# gap to the next stage), as in scripts/bench-stages.sh. CACHE=cold runs
# with the cache on instead, each run in a cache directory of its own
# (removed at exit, never just before a run: see scripts/bench-stages.sh).
#
#   scripts/bench-stages-ab.sh                 # HEAD~1 against the working tree
#   scripts/bench-stages-ab.sh OLD_REV NEW_REV
#   CACHE=cold scripts/bench-stages-ab.sh OLD_REV NEW_REV
#   STAGES=300 ROUNDS=3 scripts/bench-stages-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
old_rev=${1:-HEAD~1}
new_rev=${2:-}
STAGES=${STAGES:-1000}
ROUNDS=${ROUNDS:-5}
CACHE=${CACHE:-off}
case $CACHE in off | cold) ;; *) echo "bench-stages-ab: CACHE is off or cold, not $CACHE" >&2; exit 2 ;; esac
work=$(mktemp -d)
cleanup() {
  git worktree remove --force "$work/src-old" 2>/dev/null || true
  [ -n "$new_rev" ] && { git worktree remove --force "$work/src-new" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

build() { # build SIDE SRC
  mkdir -p "$work/$1/plugins"
  (cd "$2" && go build -o "$work/$1/pipehost" ./cmd/pipehost && go build -o "$work/$1/plugins/probe" ./testplugins/go/probe)
}
git worktree add -q --detach "$work/src-old" "$old_rev"
build old "$work/src-old"
if [ -n "$new_rev" ]; then
  git worktree add -q --detach "$work/src-new" "$new_rev"
  build new "$work/src-new"
else
  new_rev="the working tree"
  build new "$PWD"
fi

{
  printf '[grid]\nwidth = 8\nheight = 8\n'
  for ((i = 0; i < STAGES; i++)); do
    printf '[stages.s%d]\nkind = "probe.sleep"\nparams = { ms = 0 }\n' "$i"
    if [ "$i" -gt 0 ]; then printf 'inputs = { in = "s%d.out" }\n' $((i - 1)); fi
  done
} >"$work/chain.toml"

# once SIDE ROUND: one run; appends "side cmd_us dispatch run return gap" (µs) to results.
once() {
  local out="$work/out-$1" t0 t1 args=(--no-cache)
  [ "$CACHE" = cold ] && args=(--cache-dir "$work/cache-$1-$2")
  rm -rf "$out"
  t0=$(date +%s%N)
  "$work/$1/pipehost" run "$work/chain.toml" --plugin-dir "$work/$1/plugins" --out "$out" --quiet "${args[@]}"
  t1=$(date +%s%N)
  python3 - "$1" $(((t1 - t0) / 1000 / STAGES)) "$out"/logs/run_*.jsonl <<'PY' | tee -a "$work/results" >&2
import json, statistics, sys
side, cmd, logs = sys.argv[1], sys.argv[2], sys.argv[3:]
v = {}
for f in logs:
    for line in open(f):
        r = json.loads(line)
        if r.get("type") == "stage_end":
            v[int(r["stage"][1:])] = r["data"]
n = len(v)
med = lambda xs: statistics.median(xs) / 1000
parts = [med([v[i]["plugin_start_ns"] - v[i]["start_ns"] for i in range(n)]),
         med([v[i]["plugin_end_ns"] - v[i]["plugin_start_ns"] for i in range(n)]),
         med([v[i]["end_ns"] - v[i]["plugin_end_ns"] for i in range(n)]),
         med([v[i]["start_ns"] - v[i - 1]["end_ns"] for i in range(1, n)])]
print(side, cmd, " ".join("%.0f" % p for p in parts))
PY
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg) at the start; old = $old_rev, new = $new_rev"
for ((r = 0; r < ROUNDS; r++)); do
  if ((r % 2 == 0)); then once old "$r"; once new "$r"; else once new "$r"; once old "$r"; fi
done
echo "# load $(cut -d' ' -f1-3 /proc/loadavg) at the end; medians of $ROUNDS alternated runs, $STAGES-stage chain, cache $CACHE"
echo
echo "| build | command µs/stage | host start → stage function | stage function | its end → host sealed | gap to the next stage |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
for side in ("old", "new"):
    cols = list(zip(*rows[side]))
    print("| %s | %s |" % (side, " | ".join("%.0f" % statistics.median(c) for c in cols)))
PY

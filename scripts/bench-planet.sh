#!/usr/bin/env bash
# Planet pipeline benchmark (examples/planet.toml, docs/planet.md), cache on as
# by default. Per round, side by side: a cold run (empty cache), a cached rerun,
# and a rerun after changing one river param (hydro.river_area), which must
# rerun hydro.flow and what depends on it only. Reports medians of wall time
# (the engine's, from the run log, and the whole process including the
# datasets), framework overhead (wall minus the critical path's stage time),
# and memory: the live shared grids (arena peak) against each process's peak RSS.
#
#   scripts/bench-planet.sh [ROUNDS] [WIDTHxHEIGHT] [--set stage.param=value]...
#   defaults: 5 rounds at the config's size (2048x1024)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SIZE=${2:-}
shift $(( $# > 2 ? 2 : $# )) || true
EXTRA=("$@")
PY=${PIPEHOST_PYTHON:-.tools/venv/bin/python}
[ -x "$PY" ] || PY=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" - "$ROUNDS" "$SIZE" "$work" "${EXTRA[@]}" <<'PYEOF'
import glob, json, os, statistics, subprocess, sys, time

rounds, size, work, extra = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
sets = []
if size:
    w, h = size.split("x")
    sets += ["--set", "grid.width=" + w, "--set", "grid.height=" + h]
for e in extra:
    sets += ["--set", e]

def run(cache, out, more=()):
    cmd = ["bin/pipehost", "run", "examples/planet.toml", "--out", out, "--cache-dir", cache,
           "--plugin-dir", "bin/plugins"] + sets + list(more)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = time.monotonic() - t0
    log = max(glob.glob(os.path.join(out, "logs", "run_*.jsonl")), key=os.path.getmtime)
    stages, end = {}, None
    for line in open(log):
        r = json.loads(line)
        if r["type"] == "stage_end":
            d = r["data"]
            stages[r["stage"]] = {"cache": d.get("cache"), "rss": d.get("peak_rss_bytes", 0), "pid": d.get("pid"),
                                  "dur": d.get("dur_ns", 0), "cpu": d.get("cpu_ns", 0) / 1e9, "out": {k: v.get("sha256") for k, v in d.get("outputs", {}).items()}}
        elif r["type"] == "run_end":
            end = r["data"]
    return {"total": total, "wall": end["wall_ns"] / 1e9, "crit": end["critical_path_ns"] / 1e9,
            "arena": end["arena_peak_bytes"], "host": end["host_peak_rss_bytes"], "stages": stages}

rows = []
for i in range(rounds):
    cache, out = os.path.join(work, "cache%d" % i), os.path.join(work, "out")
    cold = run(cache, out)
    cached = run(cache, out)
    river = run(cache, out, ["--set", "hydro.river_area=%d" % (30000 + 1000 * i)])
    rows.append((cold, cached, river))
    rerun = sorted(s for s, v in river["stages"].items() if v["cache"] != "hit")
    cutoff = [p for p in ("accum", "filled") if river["stages"]["hydro"]["out"].get(p) == cold["stages"]["hydro"]["out"].get(p)]
    print("round %d: cold %.2f s (process %.2f s), cached %.3f s (%.2f%%; process %.2f s), river param %.2f s rerunning %s; "
          "hydro.%s byte-identical (early cutoff for their consumers)" % (
              i + 1, cold["wall"], cold["total"], cached["wall"], 100 * cached["wall"] / cold["wall"], cached["total"],
              river["wall"], ",".join(rerun), " and hydro.".join(cutoff)))

med = lambda xs: statistics.median(xs)
cold = [r[0] for r in rows]
print("\nmedians of %d rounds%s:" % (rounds, (" at " + size) if size else ""))
print("  cold run           wall %.2f s (process incl. datasets %.2f s); stage CPU %.2f s (%s)" % (
    med([c["wall"] for c in cold]), med([c["total"] for c in cold]),
    med([sum(v["cpu"] for v in c["stages"].values()) for c in cold]),
    ", ".join("%s %.2f s" % (s, med([c["stages"][s]["cpu"] for c in cold])) for s in sorted(cold[0]["stages"]))))
print("  load average at the end: %s" % " ".join(open("/proc/loadavg").read().split()[:3]))
print("  cached rerun       wall %.3f s = %.2f%% of cold; whole process %.3f s = %.2f%% of the cold process" % (
    med([r[1]["wall"] for r in rows]), med([100 * r[1]["wall"] / r[0]["wall"] for r in rows]),
    med([r[1]["total"] for r in rows]), med([100 * r[1]["total"] / r[0]["total"] for r in rows])))
print("  river param rerun  wall %.2f s = %.1f%% of cold" % (med([r[2]["wall"] for r in rows]), med([100 * r[2]["wall"] / r[0]["wall"] for r in rows])))
ov = [c["wall"] - c["crit"] for c in cold]
print("  framework overhead %.1f ms = %.3f%% of cold wall (wall minus critical-path stage time)" % (
    1000 * med(ov), med([100 * (c["wall"] - c["crit"]) / c["wall"] for c in cold])))
c = cold[-1]
per_pid = {}
for s, v in c["stages"].items():
    per_pid[v["pid"]] = max(per_pid.get(v["pid"], 0), v["rss"])
mib = lambda b: b / 2**20
print("  memory (last cold run): live shared grids peak %.1f MiB; host RSS %.1f MiB; per stage peak RSS %s; "
      "all processes together at most %.1f MiB (sum of each process's peak)" % (
          mib(c["arena"]), mib(c["host"]),
          ", ".join("%s %.1f MiB" % (s, mib(v["rss"])) for s, v in sorted(c["stages"].items())),
          mib(c["host"] + sum(per_pid.values()))))
PYEOF

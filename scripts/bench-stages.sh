#!/usr/bin/env bash
# Per-stage overhead of 1,000-stage no-op DAGs (chain and wide; probe.sleep with ms = 0, one
# 256-byte grid output each) as a user sees it: the wall time of the whole `pipehost run`
# command, divided by the number of stages, with the cache on and cold (an empty stage cache),
# on and warm (the same directory again: every stage hits) and off (--no-cache); off again with
# every run sent over the gRPC Run call (PIPEHOST_RUN_OVER_GRPC) instead of the fd channel, the
# path before runs moved to the channel; and cold in a new cache directory, where the plugin
# catalog is empty too (the binary is hashed and launched to be described: a first run ever).
# Every other mode sees the same plugin catalog, filled once before the rounds, so off and cold
# differ only in the stage cache. Also the engine-only figure (run_end.wall_ns: first admission
# to last stage done). The modes alternate within every round, in an order that rotates from
# round to round.
#
#   scripts/bench-stages.sh            # 1,000 stages, 5 rounds
#   STAGES=200 ROUNDS=3 scripts/bench-stages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES=${STAGES:-1000}
ROUNDS=${ROUNDS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
go build -o "$work/pipehost" ./cmd/pipehost
go build -o "$work/plugins/probe" ./testplugins/go/probe

for shape in chain wide; do
  {
    printf '[grid]\nwidth = 8\nheight = 8\n'
    for ((i = 0; i < STAGES; i++)); do
      printf '[stages.s%d]\nkind = "probe.sleep"\nparams = { ms = 0 }\n' "$i"
      if [ "$shape" = chain ] && [ "$i" -gt 0 ]; then printf 'inputs = { in = "s%d.out" }\n' $((i - 1)); fi
    done
  } >"$work/$shape.toml"
done

# once SHAPE MODE: one `pipehost run`; appends "shape mode command_ms engine_ms" to results.
once() {
  local shape=$1 mode=$2 out="$work/out" args=() env=()
  rm -rf "$out"
  case $mode in
    off) args=(--no-cache --cache-dir "$work/catalog") ;;
    grpc) args=(--no-cache --cache-dir "$work/catalog") env=(PIPEHOST_RUN_OVER_GRPC=1) ;;
    # A cache directory of its own per round, never one just emptied: ext4
    # without a journal (as here) passes over inodes freed in the last minute
    # when it allocates one, so deleting the last round's files right before
    # a cold run would time that, not the cache. They all go at exit with
    # $work. The stage cache starts empty; the plugin catalog is the one the
    # off runs use.
    cold) mkdir -p "$work/cache-$shape-$r/v1"; cp -r "$work/catalog/v1/plugins" "$work/cache-$shape-$r/v1/"
      args=(--cache-dir "$work/cache-$shape-$r") ;;
    warm) args=(--cache-dir "$work/cache-$shape-$r") ;;
    new) args=(--cache-dir "$work/new-$shape-$r") ;;
  esac
  local t0 t1
  t0=$(date +%s%N)
  env "${env[@]}" "$work/pipehost" run "$work/$shape.toml" --plugin-dir "$work/plugins" --out "$out" --quiet "${args[@]}"
  t1=$(date +%s%N)
  local engine
  engine=$(grep -ho '"wall_ns":[0-9]*' "$out"/logs/run_*.jsonl | tail -1 | cut -d: -f2)
  local hits
  hits=$(grep -ho '"cache_hits":[0-9]*' "$out"/logs/run_*.jsonl | tail -1 | cut -d: -f2)
  if [ "$mode" = warm ] && [ "$hits" != "$STAGES" ]; then
    echo "bench-stages: warm $shape run hit $hits of $STAGES stages" >&2; exit 1
  fi
  if [ "$mode" != warm ] && [ "$hits" != 0 ]; then
    echo "bench-stages: $mode $shape run hit $hits stages" >&2; exit 1
  fi
  echo "$shape $mode $(((t1 - t0) / 1000)) $((engine / 1000))" | tee -a "$work/results" >&2
}

echo "# $(date -u +%FT%TZ) $(go version | cut -d' ' -f3) $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg) at the start"
# The plugin catalog every mode but "new" starts from (kept as runs leave it).
# The catalog does not remember the digest of a binary changed less than 2 s
# before it hashed it (docs/cache.md, "Plugin catalog"): the plugin was just
# built, so wait, as any installed plugin is older than that.
sleep 2.5
"$work/pipehost" run "$work/chain.toml" --plugin-dir "$work/plugins" --out "$work/out" --quiet --no-cache --cache-dir "$work/catalog"
# Warm needs the cold run's cache, so each round runs cold then warm, the others before or after.
for ((r = 0; r < ROUNDS; r++)); do
  for shape in chain wide; do
    if ((r % 2 == 0)); then once "$shape" off; once "$shape" cold; once "$shape" warm; once "$shape" grpc; once "$shape" new
    else once "$shape" new; once "$shape" grpc; once "$shape" cold; once "$shape" warm; once "$shape" off; fi
  done
done
echo "# load $(cut -d' ' -f1-3 /proc/loadavg) at the end; medians of $ROUNDS rounds, $STAGES stages"
echo
echo "| DAG | cache | command ms/stage | engine ms/stage | command ms |"
echo "| --- | --- | ---: | ---: | ---: |"
med() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for shape in chain wide; do
  for mode in off cold warm grpc new; do
    cmd=$(awk -v s="$shape" -v m="$mode" '$1 == s && $2 == m { print $3 }' "$work/results" | med)
    eng=$(awk -v s="$shape" -v m="$mode" '$1 == s && $2 == m { print $4 }' "$work/results" | med)
    label=$mode; [ "$mode" = off ] && label="off (--no-cache)"
    [ "$mode" = grpc ] && label="off, runs over the gRPC call"
    [ "$mode" = new ] && label="cold, in a new cache directory"
    awk -v s="$shape" -v l="$label" -v c="$cmd" -v e="$eng" -v n="$STAGES" \
      'BEGIN { printf "| %s | %s | %.3f | %.3f | %.0f |\n", s, l, c / 1000 / n, e / 1000 / n, c / 1000 }'
  done
done

# Where one no-op stage's time goes, from the run log of one more chain run
# with --no-cache (medians over the stages; the host and the plugin share
# CLOCK_MONOTONIC): host stage start → the plugin's stage function starts
# (the Run call crossing to the plugin, binding, its accounting), the
# function itself, its end → the host has the Result and has sealed, and
# the host's gap until the next stage starts.
rm -rf "$work/out"
"$work/pipehost" run "$work/chain.toml" --plugin-dir "$work/plugins" --out "$work/out" --quiet --no-cache --cache-dir "$work/catalog"
echo
echo "One chain stage, --no-cache (µs, medians of $STAGES stages):"
echo
cat "$work"/out/logs/run_*.jsonl | awk '
  /"type":"stage_end"/ {
    match($0, /"stage":"s[0-9]+"/); i = substr($0, RSTART + 10, RLENGTH - 11) + 0
    split("start_ns plugin_start_ns plugin_end_ns end_ns", k, " ")
    for (j = 1; j <= 4; j++) { match($0, "\"" k[j] "\":[0-9]+"); v[i, j] = substr($0, RSTART + length(k[j]) + 3, RLENGTH - length(k[j]) - 3) }
    n = i > n ? i : n
  }
  END {
    for (i = 0; i <= n; i++) {
      print "dispatch", (v[i, 2] - v[i, 1]) / 1000
      print "run", (v[i, 3] - v[i, 2]) / 1000
      print "return", (v[i, 4] - v[i, 3]) / 1000
      if (i > 0) print "gap", (v[i, 1] - v[i - 1, 4]) / 1000
    }
  }' >"$work/parts"
echo "| host start → stage function | stage function | its end → host sealed | host gap to the next stage |"
echo "| ---: | ---: | ---: | ---: |"
row=""
for part in dispatch run return gap; do
  row="$row | $(awk -v p="$part" '$1 == p { print $2 }' "$work/parts" | med)"
done
echo "${row# } |"

# The floor under every figure above: one Run call between two processes
# through gRPC alone (empty request, one Result, the stream's end; no fds,
# no engine), with pipehost's gRPC options and with gRPC's defaults (BDP
# estimation on), alternated; medians of 5.
echo
echo "gRPC Run round trip between two processes (µs, medians of 5):"
echo
go test -run '^$' -bench RunRoundTrip -benchtime 2000x -count 5 ./internal/wire/ | awk '
  /^BenchmarkRunRoundTrip/ { split($1, n, "/"); sub(/-[0-9]+$/, "", n[2]); v[n[2]] = v[n[2]] " " $3 }
  END {
    print "| gRPC options | round trip |"
    print "| --- | ---: |"
    for (k in v) {
      c = split(substr(v[k], 2), a, " ")
      for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      printf "| %s | %.0f |\n", k, a[int((c + 1) / 2)] / 1000
    }
  }'

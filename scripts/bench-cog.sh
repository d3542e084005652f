#!/usr/bin/env bash
# COG writer benchmark: pipehost's dataset writer against GDAL's `gdal_translate -of COG` on
# the same raster with the same codec, level, predictor, tile size and overview resampling,
# run alternately. Prints wall time, throughput (MB/s of input) and peak RSS for each run and
# the median per writer.
#
#   scripts/bench-cog.sh [SIZE] [ROUNDS]      # defaults: 4096 5
#   COMPRESSIONS="deflate zstd" TILE=512 scripts/bench-cog.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-4096}
ROUNDS=${2:-${ROUNDS:-5}}
TILE=${TILE:-512}
COMPRESSIONS=${COMPRESSIONS:-deflate zstd}

command -v gdal_translate >/dev/null || scripts/ensure-deps.sh python
[ -x /usr/bin/time ] || { echo "bench-cog: /usr/bin/time (Debian package 'time') is needed for peak RSS" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/cogbench" ./host/dataset/cmd/cogbench
"$work/cogbench" gen -width "$SIZE" -height "$SIZE" -out "$work/in.f32"
bytes=$((SIZE * SIZE * 4))

# run LABEL OUT CMD...: one timed run; appends "label seconds MB/s cpu_s rss_MiB out_MiB" to
# results. CPU time (user + system) shows the work done, whatever other load the machine has.
run() {
  local label=$1 out=$2; shift 2
  rm -f "$out"
  /usr/bin/time -f "%e %M %U %S" -o "$work/time" "$@" >/dev/null
  read -r secs rss_kb user sys <"$work/time"
  local size; size=$(stat -c %s "$out")
  awk -v l="$label" -v s="$secs" -v b="$bytes" -v c="$user" -v k="$sys" -v r="$rss_kb" -v o="$size" \
    'BEGIN { printf "%-22s %8.2f %9.1f %7.2f %9.1f %9.2f\n", l, s, b/1e6/s, c+k, r/1024, o/1048576 }' | tee -a "$work/results"
}

echo "load $(cut -d" " -f1-3 /proc/loadavg) at the start"
echo "raster: ${SIZE}x${SIZE} float32 ($((bytes / 1048576)) MiB), tile ${TILE}, predictor 3, average overviews, $(nproc) CPUs"
header() { printf "%-22s %8s %9s %7s %9s %9s\n" writer seconds "MB/s" "CPU s" "RSS MiB" "out MiB"; }
header
for comp in $COMPRESSIONS; do
  case $comp in
    deflate) gdal_co=(-co COMPRESS=DEFLATE -co LEVEL=6) ;;
    zstd) gdal_co=(-co COMPRESS=ZSTD -co LEVEL=9) ;;
    *) echo "bench-cog: unknown compression $comp" >&2; exit 2 ;;
  esac
  gdal=(gdal_translate -q -of COG "${gdal_co[@]}" -co PREDICTOR=YES -co BLOCKSIZE="$TILE" -co OVERVIEW_RESAMPLING=AVERAGE)
  for r in $(seq "$ROUNDS"); do
    run "pipehost $comp" "$work/ours.tif" "$work/cogbench" write -in "$work/in.f32" -width "$SIZE" -height "$SIZE" \
      -tile "$TILE" -compression "$comp" -out "$work/ours.tif"
    run "gdal $comp" "$work/gdal.tif" "${gdal[@]}" "$work/in.f32" "$work/gdal.tif"
    run "gdal $comp 2 threads" "$work/gdal.tif" "${gdal[@]}" -co NUM_THREADS=ALL_CPUS "$work/in.f32" "$work/gdal.tif"
  done
  # The file measured must also be a valid COG.
  py=.tools/venv/bin/python
  [ -x "$py" ] || py=/usr/bin/python3
  "$py" -m osgeo_utils.samples.validate_cloud_optimized_geotiff -q --full-check=yes "$work/ours.tif" ||
    { echo "bench-cog: our $comp output is not a valid COG" >&2; exit 1; }
done
echo
echo "medians over $ROUNDS rounds; load $(cut -d" " -f1-3 /proc/loadavg) at the end:"
header
# Labels are the first 22 columns; the medians of time, CPU time and RSS are taken separately.
cut -c1-22 "$work/results" | awk '!seen[$0]++' | while IFS= read -r label; do
  awk -v l="$label" 'substr($0, 1, 22) == sprintf("%-22s", l)' "$work/results" >"$work/sel"
  n=$(wc -l <"$work/sel")
  mid=$(((n + 1) / 2))
  secs=$(awk '{ print $(NF-4) }' "$work/sel" | sort -n | sed -n "${mid}p")
  cpu=$(awk '{ print $(NF-2) }' "$work/sel" | sort -n | sed -n "${mid}p")
  rss=$(awk '{ print $(NF-1) }' "$work/sel" | sort -n | sed -n "${mid}p")
  out=$(awk '{ print $NF }' "$work/sel" | tail -1)
  awk -v l="$label" -v s="$secs" -v b="$bytes" -v c="$cpu" -v r="$rss" -v o="$out" \
    'BEGIN { printf "%-22s %8.2f %9.1f %7.2f %9.1f %9.2f\n", l, s, b/1e6/s, c, r, o }'
done

#!/usr/bin/env bash
# Builds the Remote Execution API servers the scale-out tests and benchmarks
# run against, pinned by the tools modules under tools/remote:
#   bazel-remote (cache)                  tools/remote/bazel-remote
#   Buildbarn storage, scheduler, worker, runner    tools/remote/buildbarn
# into .tools/remote/bin. Quick when the binaries match the pins already.
#
# Buildbarn's worker needs the go-fuse patches that bb-remote-execution
# carries in its own patches/ folder (its Bazel build applies them), and
# bb-storage registers ByteStream through a grpc.ServiceRegistrar where the
# resolved genproto wants a *grpc.Server. Both fixes are applied to copies
# of the downloaded modules under .tools/remote/src, which a copy of the
# tools module replaces the originals with; nothing upstream is committed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/.tools/remote"
BIN="$OUT/bin"
GO="${GO:-go}"
# Version listings and checksum-database lookups are refused for some of
# these modules: exact versions are pinned and go.sum is committed instead.
export GONOSUMDB="github.com/buchgr,github.com/buildbarn${GONOSUMDB:+,$GONOSUMDB}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED="${CGO_ENABLED:-1}"

BUILDBARN_CMDS=(
	github.com/buildbarn/bb-storage/cmd/bb_storage
	github.com/buildbarn/bb-remote-execution/cmd/bb_scheduler
	github.com/buildbarn/bb-remote-execution/cmd/bb_worker
	github.com/buildbarn/bb-remote-execution/cmd/bb_runner
)

stamp() {
	cat "$ROOT"/tools/remote/*/go.mod "$ROOT"/tools/remote/*/go.sum "$0" | sha256sum | cut -d' ' -f1
}

want="$(stamp)"
have_all=1
for b in bazel-remote bb_storage bb_scheduler bb_worker bb_runner; do
	[[ -x "$BIN/$b" ]] || have_all=0
done
if [[ $have_all == 1 && -f "$BIN/.stamp" && "$(cat "$BIN/.stamp")" == "$want" ]]; then
	exit 0
fi

mkdir -p "$BIN" "$OUT/build" "$OUT/src"
log="$OUT/build.log"
: >"$log"
fail() {
	echo "build-remote-servers: $1 (log: $log)" >&2
	tail -n 20 "$log" >&2
	exit 1
}

# A private copy of a tools module: go.sum may gain entries for the replaced
# modules there without touching the committed one.
copy_module() {
	local name="$1" dst="$OUT/build/$1"
	rm -rf "$dst"
	mkdir -p "$dst"
	cp "$ROOT/tools/remote/$name/go.mod" "$ROOT/tools/remote/$name/go.sum" "$dst/"
	echo "$dst"
}

echo "build-remote-servers: building bazel-remote" >&2
dir="$(copy_module bazel-remote)"
(cd "$dir" && "$GO" build -o "$BIN/bazel-remote" github.com/buchgr/bazel-remote/v2) >>"$log" 2>&1 ||
	fail "bazel-remote did not build"

echo "build-remote-servers: building Buildbarn (a few minutes on 2 cores)" >&2
dir="$(copy_module buildbarn)"
(cd "$dir" && "$GO" mod download all) >>"$log" 2>&1 || fail "Buildbarn modules did not download"
modpath() { (cd "$dir" && "$GO" list -m -f '{{.Dir}}' "$1"); }
bbre="$(modpath github.com/buildbarn/bb-remote-execution)"
bbst="$(modpath github.com/buildbarn/bb-storage)"
fuse="$(modpath github.com/hanwen/go-fuse/v2)"
[[ -d "$bbre/patches/com_github_hanwen_go_fuse_v2" ]] || fail "no go-fuse patches in $bbre"

# Patched go-fuse: every diff bb-remote-execution applies to it.
rm -rf "$OUT/src/go-fuse" "$OUT/src/bb-storage"
cp -r "$fuse" "$OUT/src/go-fuse"
cp -r "$bbst" "$OUT/src/bb-storage"
chmod -R u+w "$OUT/src/go-fuse" "$OUT/src/bb-storage"
for p in "$bbre"/patches/com_github_hanwen_go_fuse_v2/*.diff; do
	patch -s -p0 -d "$OUT/src/go-fuse" <"$p" >>"$log" 2>&1 || fail "go-fuse patch $(basename "$p") did not apply"
done

# bb-storage: the ByteStream registration gets the concrete server type.
main="$OUT/src/bb-storage/cmd/bb_storage/main.go"
python3 - "$main" >>"$log" 2>&1 <<'PY' || fail "bb_storage main.go did not take the ByteStream edit"
import re, sys
path = sys.argv[1]
src = open(path).read()
new, n = re.subn(r"bytestream\.RegisterByteStreamServer\(\s*s,", "bytestream.RegisterByteStreamServer(\n\t\t\t\t\t\ts.(*grpc.Server),", src)
if n != 1:
    sys.exit("expected one ByteStream registration, found %d" % n)
open(path, "w").write(new)
PY

(cd "$dir" &&
	"$GO" mod edit -replace "github.com/hanwen/go-fuse/v2=$OUT/src/go-fuse" \
		-replace "github.com/buildbarn/bb-storage=$OUT/src/bb-storage") >>"$log" 2>&1
for cmd in "${BUILDBARN_CMDS[@]}"; do
	(cd "$dir" && "$GO" build -o "$BIN/$(basename "$cmd")" "$cmd") >>"$log" 2>&1 ||
		fail "$(basename "$cmd") did not build"
done

echo "$want" >"$BIN/.stamp"
echo "build-remote-servers: built into $BIN" >&2

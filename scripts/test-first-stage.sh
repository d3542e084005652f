#!/usr/bin/env bash
# Runs the commands of docs/first-stage.md for one language, exactly as a
# reader would type them: every ```sh first-stage-LANG block, in order, in
# one shell, in a fresh empty directory, with this checkout's bin/ first on
# PATH. A failing command fails the test, so the guide cannot drift.
#
#   scripts/test-first-stage.sh go|rust|cpp|python|all
#
# Needs `make build` (bin/pipehost and bin/plugins). PIPEHOST_KEEP=1 keeps
# the directory for a look afterwards.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
doc="$root/docs/first-stage.md"
langs=(go rust cpp python)

usage() { echo "usage: $0 go|rust|cpp|python|all" >&2; exit 2; }
[ $# -eq 1 ] || usage
if [ "$1" = all ]; then
  for l in "${langs[@]}"; do "$0" "$l"; done
  exit 0
fi
lang="$1"
case " ${langs[*]} " in *" $lang "*) ;; *) usage ;; esac

if [ ! -x "$root/bin/pipehost" ] || [ ! -d "$root/bin/plugins" ]; then
  echo "first-stage $lang: $root/bin/pipehost or bin/plugins is missing: run 'make build' first" >&2
  exit 1
fi

# The blocks, in order: from a line "```sh first-stage-LANG" to the next "```".
script="$(awk -v tag="first-stage-$lang" '
  $0 ~ "^```sh[ \t]+" tag "[ \t]*$" { inside = 1; n++; print "# --- block " n; next }
  inside && /^```[ \t]*$/ { inside = 0; next }
  inside { print }
  END { if (inside) { print "unterminated block " n > "/dev/stderr"; exit 1 } }
' "$doc")"
if ! grep -q '^# --- block' <<<"$script"; then
  echo "first-stage $lang: no \`\`\`sh first-stage-$lang block in $doc" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/first-stage-$lang-XXXXXX")"
if [ "${PIPEHOST_KEEP:-}" = 1 ]; then
  echo "first-stage $lang: working in $work (kept)"
else
  trap 'rm -rf "$work"' EXIT
fi
mkdir "$work/home"

# A fresh reader: empty directory, this checkout's pipehost first on PATH,
# its own stage cache. Go's build and module caches stay shared (they are
# content-addressed), so the run does not rebuild the world.
export GOCACHE="$(go env GOCACHE)" GOMODCACHE="$(go env GOMODCACHE)"
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
export XDG_CACHE_HOME="$work/home/.cache"
export PIPEHOST="$root/bin/pipehost"
export PATH="$root/bin:$PATH"
export PIPEHOST_PLUGIN_PATH=
mkdir "$work/run"
cd "$work/run"
echo "== first-stage $lang: $(grep -c '^# --- block' <<<"$script") block(s) from docs/first-stage.md in $work/run"
# -x echoes each command as it runs, so a failure shows which one.
bash -euo pipefail -x -c "$script"
echo "== first-stage $lang: passed"

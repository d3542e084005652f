#!/usr/bin/env bash
# The Python SDK's own tests (sdk/python/tests): the shared vectors in
# testdata/ (seeds, handles, topology), params, runs through the SDK with
# real memfds and a real fd channel, and the stage test harness. Then the
# example stages of examples/stages/python: their unit tests, and each
# example's pipeline run with the built plugins, its dataset read back with
# NumPy. The host-side tests of the Python plugins are Go tests
# (host/runner/native_test.go, native_py_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh python
py="$PWD/.tools/venv/bin/python"

# pytest_run WHAT ARGS...: pytest's exit status, spelled out.
pytest_run() {
  local what=$1; shift
  set +e
  # This checkout's SDK, whichever checkout the venv's editable install names.
  PYTHONPATH="$PWD/sdk/python/src" PYTHONDONTWRITEBYTECODE=1 "$py" -m pytest -q -p no:cacheprovider "$@"
  local rc=$?
  set -e
  case $rc in
    0) echo "test-python: $what: all passed" ;;
    5) echo "test-python: $what: pytest collected no tests (exit 5)" >&2; exit 1 ;;
    1) echo "test-python: $what: tests failed (pytest exit 1)" >&2; exit 1 ;;
    *) echo "test-python: $what: pytest could not run the tests (exit $rc)" >&2; exit "$rc" ;;
  esac
}

pytest_run "sdk/python/tests" sdk/python/tests "$@"
[ $# -eq 0 ] || exit 0  # a selection of SDK tests was asked for

for ex in examples/stages/python/*/; do
  ex=${ex%/}
  name=$(basename "$ex")
  pytest_run "$ex" --rootdir "$ex" "$ex"
  if [ ! -x bin/pipehost ] || [ ! -x "bin/examples/$name-py" ]; then
    echo "test-python: bin/pipehost or bin/examples/$name-py is missing: run make build first" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  bin/pipehost run "$ex/pipeline.toml" --plugin-dir bin/examples --out "$tmp/out" --cache-dir "$tmp/cache" --quiet
  # Every saved grid is read back by NumPy, and must not be empty or constant.
  "$py" - "$tmp/out" "$ex" <<'PY'
import glob, os, sys
import numpy as np
out, ex = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(os.path.join(out, "data", "*.npz")))
if not files:
    sys.exit(f"test-python: {ex}: the pipeline saved no NPZ under {out}/data")
for f in files:
    with np.load(f) as z:
        for k in z.files:
            a = z[k]
            if a.size == 0 or not np.isfinite(a).all() or a.min() == a.max():
                sys.exit(f"test-python: {ex}: {os.path.basename(f)}[{k}] is empty, not finite or constant")
            print(f"test-python: {ex}: {os.path.basename(f)}[{k}] {a.dtype} {a.shape} in [{a.min():.1f}, {a.max():.1f}]")
PY
  rm -rf "$tmp"
  trap - EXIT
done
echo "test-python: all passed"

#!/usr/bin/env bash
# The Python SDK's own tests (sdk/python/tests): the shared vectors in
# testdata/ (seeds, handles, topology), params, and runs through the SDK with
# real memfds and a real fd channel. The host-side tests of the Python
# plugins are Go tests (host/runner/native_test.go, native_py_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh python
py="$PWD/.tools/venv/bin/python"
set +e
PYTHONDONTWRITEBYTECODE=1 "$py" -m pytest -q -p no:cacheprovider sdk/python/tests "$@"
rc=$?
set -e
case $rc in
  0) echo "test-python: all passed" ;;
  5) echo "test-python: pytest collected no tests (exit 5)" >&2; exit 1 ;;
  1) echo "test-python: tests failed (pytest exit 1)" >&2; exit 1 ;;
  *) echo "test-python: pytest could not run the tests (exit $rc)" >&2; exit "$rc" ;;
esac

#!/usr/bin/env bash
# Installs the Python SDK into the project's venv (.tools/venv, editable, so
# the venv always sees this checkout's sdk/python) and writes the Python
# plugins' launchers into bin/plugins, bin/testplugins, bin/examples (and bin/badplugins): small executable
# scripts whose shebang is the venv's python and which run one module of
# plugins/python or testplugins/python. Quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
py="$root/.tools/venv/bin/python"
scripts/ensure-deps.sh python

# Editable install, redone only when the venv's pipehost is another checkout
# or the package metadata changed.
want="$root/sdk/python/src"
stamp=$(sha256sum sdk/python/pyproject.toml | cut -d' ' -f1)
have=$("$py" - <<'PY' 2>/dev/null || true
import importlib.util, os, sys
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
spec = importlib.util.find_spec("pipehost")
print(os.path.dirname(os.path.dirname(spec.origin)) if spec and spec.origin else "")
PY
)
if [ "$have" != "$want" ] || [ "$(cat "$root/.tools/venv/.pipehost-sdk.sha256" 2>/dev/null)" != "$stamp:$want" ]; then
  "$py" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e sdk/python >&2
  echo "$stamp:$want" > "$root/.tools/venv/.pipehost-sdk.sha256"
fi

mkdir -p bin/plugins bin/testplugins bin/badplugins bin/examples
# The launchers start the interpreter with -I -S (isolated, no site module)
# and set sys.path themselves: the site module's .pth processing costs more
# than the rest of a start-up on a busy machine, and a plugin needs none of it.
# They also pause the garbage collector while the modules load: every object
# the imports make lives as long as the process, so the collections the
# allocations would trigger find nothing (about 5 % of a launch).
paths=$("$py" -c 'import sys; print(repr([p for p in sys.path if p and not p.endswith("sdk/python/src")]))')
# launcher NAME MODULE DEST [sdk-first|as-written]: bin/DEST/NAME runs MODULE
# with the venv's python. sdk-first (the default) imports the SDK before the
# module, whatever the module imports first: under the host the SDK then
# defers numpy until the plugin has described itself (pipehost._lazy).
launcher() {
  local name=$1 module=$2 dest=$3 order=${4:-sdk-first}
  local tmp="bin/$dest/.$name.tmp.$$" first=""
  [ "$order" = sdk-first ] && first="import pipehost  # before the module: see scripts/build-python.sh"
  cat > "$tmp" <<PY
#!$py -IS
# pipehost plugin $name: runs $module with the project's venv
# (written by scripts/build-python.sh; the SDK is this checkout's sdk/python).
import gc
gc.disable()  # the imports below only allocate; pipehost.serve() resumes collection
import sys
sys.path[:] = ["$root/sdk/python/src"] + $paths
$first
# Run the module as __main__ through its file loader, which uses the
# bytecode compiled below (runpy.run_path would compile the source anew).
import importlib.util
spec = importlib.util.spec_from_file_location("__main__", "$root/$module")
main = importlib.util.module_from_spec(spec)
sys.modules["__main__"] = main
spec.loader.exec_module(main)
PY
  chmod 755 "$tmp"
  if cmp -s "$tmp" "bin/$dest/$name"; then rm -f "$tmp"; else mv -f "$tmp" "bin/$dest/$name"; fi
}
launcher ref-py plugins/python/ref_py.py plugins
launcher planet-py plugins/python/planet_py.py plugins
launcher misbehave-py testplugins/python/misbehave_py.py testplugins
# The example stages (examples/stages/python), outside the directories runs
# search by default.
launcher terrace-py examples/stages/python/terrace/terrace.py examples
# Not a working plugin (it prints over its handshake): kept out of the
# plugin directories runs use, for the host's tests only.
launcher garbage-py testplugins/python/garbage_py.py badplugins as-written
# Bytecode for the SDK and the plugins' modules now, so no plugin start
# compiles a source file (unchanged files are skipped).
"$py" -m compileall -q sdk/python/src plugins/python testplugins/python examples/stages/python >/dev/null
echo "build-python: bin/plugins/ref-py bin/plugins/planet-py bin/testplugins/misbehave-py bin/examples/terrace-py bin/badplugins/garbage-py"

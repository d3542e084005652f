#!/usr/bin/env bash
# Generates the Python SDK's protocol code into DIR (default: the SDK's
# source tree) with the pinned grpcio-tools of .tools/venv. The protos keep
# their wire names (pipehost.v1, plugin, grpc.health.v1); their files are
# mapped under pipehost/_proto so the modules live inside the package.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-sdk/python/src}"
py="$PWD/.tools/venv/bin/python"
scripts/ensure-deps.sh python
inc=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
v="pipehost/_proto"
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I "$v=proto" -I "$inc" \
  --python_out="$out" --grpc_python_out="$out" \
  "$v/pipehost/v1/stage.proto" "$v/goplugin/controller.proto" "$v/goplugin/stdio.proto" \
  "$v/grpc/health/v1/health.proto"
# Packages for the generated modules (regular packages, so any installer finds them).
for d in "$v" "$v/pipehost" "$v/pipehost/v1" "$v/goplugin" "$v/grpc" "$v/grpc/health" "$v/grpc/health/v1"; do
  [ -e "$out/$d/__init__.py" ] || : > "$out/$d/__init__.py"
done

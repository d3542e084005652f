#!/usr/bin/env bash
# Builds the C++ SDK and its plugins (CMake, Debian's gRPC and protobuf) into
# build/cpp and installs the executables into bin/plugins and bin/testplugins.
# Incremental: a second run with nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/cpp
JOBS="${PIPEHOST_JOBS:-2}"

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S sdk/cpp -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DPIPEHOST_BUILD_PLUGINS=ON -DPIPEHOST_BUILD_TESTS=ON >/dev/null
fi
cmake --build "$BUILD" -j"$JOBS" -- --no-print-directory | { grep -vE '^\[ *[0-9]+%\] (Built|Building|Linking|Generating)|^Consolidate|^Scanning' || true; }

mkdir -p bin/plugins bin/testplugins bin/examples
# install -C leaves an unchanged file (and its mtime) alone.
install -C -m 0755 "$BUILD/plugins/ref/ref-cpp" bin/plugins/ref-cpp
install -C -m 0755 "$BUILD/plugins/hydro/hydro-cpp" bin/plugins/hydro-cpp
install -C -m 0755 "$BUILD/testplugins/misbehave/misbehave-cpp" bin/testplugins/misbehave-cpp
install -C -m 0755 "$BUILD/testplugins/minimal/minimal-cpp" bin/testplugins/minimal-cpp
# Example stages (examples/stages/cpp): not shipped, but runnable from bin/examples.
install -C -m 0755 "$BUILD/examples/slope/slope-cpp" bin/examples/slope-cpp

#!/usr/bin/env bash
# Builds the cpp SDK and its plugins into bin/plugins and bin/testplugins.
set -euo pipefail
echo "build-cpp: nothing to build yet"

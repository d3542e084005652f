#!/usr/bin/env bash
# Installs what the build and the tests need, only when it is missing, so a second call is
# quick. Groups: protoc, cpp, python, all (default). Debian packages via apt-get, Python
# wheels into .tools/venv, Go modules via `go mod download`.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"

apt_ensure() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "ensure-deps: installing Debian packages: ${missing[*]}" >&2
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # apt-get update only when the package lists are missing or older than a day.
  mkdir -p "$TOOLS"
  local log="$TOOLS/apt.log"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    $sudo apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; return 1; }
  fi
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    return 1
  fi
}

ensure_protoc() { apt_ensure protobuf-compiler libprotobuf-dev; }

ensure_cpp() { apt_ensure build-essential cmake pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler googletest libgtest-dev nlohmann-json3-dev libssl-dev; }

# Python readers nobody here wrote: NumPy, pyarrow, GeoPandas, rasterio, rio-cogeo, GDAL's
# COG validator (Debian's python3-gdal, seen through --system-site-packages), Perfetto.
PY_REQS="$PWD/scripts/requirements-test.txt"
ensure_python() {
  apt_ensure python3-venv python3-gdal gdal-bin
  local venv="$TOOLS/venv" stamp="$TOOLS/venv/.reqs.sha256"
  local want; want=$(sha256sum "$PY_REQS" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv" >&2
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$PY_REQS" >&2
    echo "$want" > "$stamp"
  fi
}

# Rust comes from rustup on this kind of machine; cargo fetches crates itself.
ensure_rust() {
  ensure_protoc
  apt_ensure build-essential # cargo links through the system C compiler
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      echo "ensure-deps: cargo is in $HOME/.cargo/bin; add it to PATH" >&2
    else
      echo "ensure-deps: cargo not found: install a stable Rust toolchain (rustup)" >&2
    fi
    exit 1
  fi
}

group="${1:-all}"
case "$group" in
  protoc) ensure_protoc ;;
  cpp) ensure_cpp ;;
  rust) ensure_rust ;;
  python) ensure_python ;;
  all) ensure_protoc; ensure_cpp; ensure_rust; ensure_python ;;
  *) echo "ensure-deps: unknown group $group" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Builds the Rust SDK and its plugins (cargo workspace at the repository root)
# and installs the executables into bin/plugins and bin/testplugins. Quick
# when nothing changed: cargo rebuilds nothing and files are copied only when
# they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -j2 --quiet
mkdir -p bin/plugins bin/testplugins bin/examples
install_if_changed() {
  local src=$1 dst=$2
  if ! cmp -s "$src" "$dst"; then
    # Copy then rename, so a running host never sees a half-written binary.
    cp "$src" "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst"
  fi
}
install_if_changed target/release/ref-rust bin/plugins/ref-rust
install_if_changed target/release/planet-rust bin/plugins/planet-rust
install_if_changed target/release/misbehave-rust bin/testplugins/misbehave-rust
# Example stages stay out of bin/plugins: a pipeline names them with --plugin-dir bin/examples.
install_if_changed target/release/terrace-rust bin/examples/terrace-rust
echo "build-rust: bin/plugins/ref-rust bin/plugins/planet-rust bin/testplugins/misbehave-rust bin/examples/terrace-rust"

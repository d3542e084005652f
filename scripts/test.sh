#!/usr/bin/env bash
# The whole test suite: formatting and vet, Go tests (race detector on for the
# host, shm and SDK), brief fuzzing, the native SDKs, and the readers nobody
# here wrote (GDAL, rasterio, NumPy, pyarrow, Perfetto). `make test` runs it
# after installing what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIPEHOST_REQUIRE_READERS=1
export PIPEHOST_REQUIRE_NATIVE=1
export PIPEHOST_PYTHON="$PWD/.tools/venv/bin/python"
# Empty: each target runs its own count of inputs (below). A count, not a
# duration: with a duration, Go's fuzzing coordinator can fail a clean run with
# "context deadline exceeded" when a starved worker is mid-input at the deadline.
FUZZTIME="${FUZZTIME:-}"

step() { printf '\n== %s\n' "$*"; }

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' | grep -v '^proto/pipehostv1/') || true)
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

step "REAPI servers (bazel-remote, Buildbarn)"
# Started once for every package that needs them, stopped by pid on exit.
# They must run here: tests fail rather than skip without them.
scripts/build-remote-servers.sh
remote_state="$(mktemp -u -d "${TMPDIR:-/tmp}/pipehost-remote-XXXXXX")"
trap 'scripts/remote-servers.sh stop "$remote_state"' EXIT
set -a
eval "$(scripts/remote-servers.sh start "$remote_state")"
set +a
export PIPEHOST_REQUIRE_REMOTE=1

step "go vet"
go vet ./...

step "go test (race detector on)"
race_pkgs=$(go list ./... | grep -v -e '/host/dataset' -e '/topology' -e '/sdk/seed')
plain_pkgs=$(go list ./... | grep -e '/host/dataset' -e '/topology' -e '/sdk/seed')
go test -race -count=1 -timeout 15m $race_pkgs
step "go test"
go test -count=1 -timeout 15m $plain_pkgs
# Peak RSS is measured on plugins built without -race (see the tests).
go test -count=1 -timeout 5m -run '^(TestPeakRSSOfAShortSpike|TestMixedPipelineIsZeroCopy|TestMixedPipelineWithPythonIsZeroCopy)$' ./host/runner

# Six targets, each given about 8 s of inputs on a 2-core machine, about a
# minute in all. An input that fails is written to the package's
# testdata/fuzz/<Target>/: commit it, it then runs with every go test.
step "fuzz (${FUZZTIME:-a fixed count of inputs} each)"
fuzz() { go test -run '^$' -fuzz "^$1\$" -fuzztime "${FUZZTIME:-$3}" "$2"; }
fuzz FuzzValidate ./shm 40000x              # handle validation
fuzz FuzzDecodeHeader ./shm 50000x          # fd-channel framing
fuzz FuzzParse ./host/config 30000x         # TOML, JSON and YAML configs
fuzz FuzzAppendDecodes ./host/runlog 100000x # run-log lines decode and round trip
fuzz FuzzNPYHeader ./host/dataset 15000x    # NPY header round trip
fuzz FuzzTIFFIFDs ./host/dataset 5000x      # TIFF / BigTIFF IFD round trip

step "soak (${SOAK_RUNS:-30} runs with faults injected)"
PIPEHOST_SOAK="${SOAK_RUNS:-30}" go test -count=1 -timeout 15m -run '^TestSoak$' ./host/runner

for extra in scripts/test-*.sh; do
  [ -e "$extra" ] || continue
  [ "$extra" = scripts/test-first-stage.sh ] && continue  # takes a language: below
  step "$extra"
  "$extra"
done

# docs/first-stage.md, run as written: a new project per language, built,
# tested and run in a pipeline.
step "first stage: go"
scripts/test-first-stage.sh go
step "first stage: rust"
scripts/test-first-stage.sh rust
step "first stage: cpp"
scripts/test-first-stage.sh cpp
step "first stage: python"
scripts/test-first-stage.sh python

step "all tests passed"

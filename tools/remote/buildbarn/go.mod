// Pins the Buildbarn cluster (storage, scheduler, worker, runner) used by the
// remote-execution tests. A module of its own so its dependencies resolve to
// Buildbarn's own pins, untouched by bazel-remote's.
// scripts/build-remote-servers.sh builds it from a copy that replaces
// go-fuse and bb-storage with locally patched copies.
module pipehost.tools/remote/buildbarn

go 1.26.0

require (
	github.com/buildbarn/bb-remote-execution v0.0.0-20241215094620-d03d5e3708ed
	github.com/buildbarn/bb-storage v0.0.0-20240918135726-256ec6c483a0
)

// Pins the bazel-remote cache server used by the scale-out tests and
// benchmarks; scripts/build-remote-servers.sh builds it from here.
module pipehost.tools/remote/bazel-remote

go 1.26.0

require github.com/buchgr/bazel-remote/v2 v2.6.2

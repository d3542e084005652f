#!/usr/bin/env bash
# Starts and stops the Remote Execution API servers the scale-out tests and
# benchmarks use, all on 127.0.0.1, each with its config and state in one
# temporary directory:
#   bazel-remote      a cache (CAS, action cache, ByteStream)
#   Buildbarn         bb_storage (CAS, action cache, ByteStream, Execute front
#                     end), bb_scheduler, bb_runner (unix socket) and
#                     bb_worker (plain build directory, no FUSE)
#
#   scripts/remote-servers.sh start [STATE_DIR]   prints the endpoints as
#                                                 shell assignments
#   scripts/remote-servers.sh stop  [STATE_DIR]
#
# STATE_DIR defaults to $PIPEHOST_REMOTE_STATE, else /tmp/pipehost-remote-$UID.
# `start` writes STATE_DIR/env (the assignments) and STATE_DIR/*.pid; `stop`
# ends exactly those processes (bb_worker ignores SIGTERM: it gets SIGKILL
# after a grace period) and removes STATE_DIR. Binaries come from
# scripts/build-remote-servers.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${PIPEHOST_REMOTE_BIN:-$ROOT/.tools/remote/bin}"
cmd="${1:-}"
STATE="${2:-${PIPEHOST_REMOTE_STATE:-/tmp/pipehost-remote-$(id -u)}}"

# The platform every local worker announces; an action must name exactly
# these properties to be scheduled on it (docs/scale-out.md).
PLATFORM_OS="linux"
PLATFORM_POOL="pipehost-test"

die() { echo "remote-servers: $*" >&2; exit 1; }

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for DESC TIMEOUT_S PIDFILE CHECK... : runs CHECK until it succeeds,
# failing early when the process behind PIDFILE has died.
wait_for() {
	local desc="$1" timeout="$2" pidfile="$3"
	shift 3
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
			echo "remote-servers: $desc exited; last log lines:" >&2
			tail -n 15 "$STATE/$(basename "$pidfile" .pid).log" >&2 || true
			return 1
		fi
		if ((SECONDS >= deadline)); then
			echo "remote-servers: $desc not ready after ${timeout}s; last log lines:" >&2
			tail -n 15 "$STATE/$(basename "$pidfile" .pid).log" >&2 || true
			return 1
		fi
		sleep 0.2
	done
}

port_open() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1).close()' "$1"; }

# launch NAME ARGS...: starts a server in its own session, logs to NAME.log.
launch() {
	local name="$1"
	shift
	setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
	echo $! >"$STATE/$name.pid"
}

stop_pid() {
	local name="$1" grace="$2" pidfile="$STATE/$1.pid" pid
	[[ -f "$pidfile" ]] || return 0
	pid="$(cat "$pidfile")"
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + grace))
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
		while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
	fi
	rm -f "$pidfile"
}

stop_all() {
	# Worker first (it holds the runner's socket), storage last.
	stop_pid bb_worker 2
	stop_pid bb_runner 5
	stop_pid bb_scheduler 5
	stop_pid bb_storage 5
	stop_pid bazel-remote 5
}

start() {
	for b in bazel-remote bb_storage bb_scheduler bb_worker bb_runner; do
		[[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run scripts/build-remote-servers.sh"
	done
	if [[ -f "$STATE/env" ]]; then
		die "servers already started in $STATE (stop them first: $0 stop $STATE)"
	fi
	if [[ -e "$STATE" && ! -f "$STATE/.pipehost-remote" ]]; then
		die "$STATE exists and was not made by this script; pick another STATE_DIR"
	fi
	rm -rf "$STATE"
	mkdir -p "$STATE"/{bazel-remote,storage,worker/build,worker/cache}
	touch "$STATE/.pipehost-remote"
	trap 'stop_all' ERR

	local br_grpc br_http st_grpc sch_client sch_worker sch_admin
	br_grpc=$(free_port) br_http=$(free_port) st_grpc=$(free_port)
	sch_client=$(free_port) sch_worker=$(free_port) sch_admin=$(free_port)

	# Uncompressed storage keeps blobs as plain files (tests corrupt one on
	# purpose to check that downloads are verified).
	launch bazel-remote "$BIN/bazel-remote" --dir "$STATE/bazel-remote" --max_size 8 --storage_mode uncompressed \
		--grpc_address "127.0.0.1:$br_grpc" --http_address "127.0.0.1:$br_http"

	# Buildbarn configs are Jsonnet; plain JSON is valid Jsonnet.
	cat >"$STATE/storage.jsonnet" <<EOF
{
  grpcServers: [{ listenAddresses: ['127.0.0.1:$st_grpc'], authenticationPolicy: { allow: {} } }],
  maximumMessageSizeBytes: 16777216,
  schedulers: { '': { endpoint: { address: '127.0.0.1:$sch_client' } } },
  executeAuthorizer: { allow: {} },
  contentAddressableStorage: {
    backend: { 'local': {
      keyLocationMapInMemory: { entries: 1048576 },
      keyLocationMapMaximumGetAttempts: 8,
      keyLocationMapMaximumPutAttempts: 32,
      oldBlocks: 1, currentBlocks: 4, newBlocks: 1,
      blocksOnBlockDevice: {
        source: { file: { path: '$STATE/storage/cas-blocks', sizeBytes: 10737418240 } },
        spareBlocks: 2,
      },
    } },
    getAuthorizer: { allow: {} }, putAuthorizer: { allow: {} }, findMissingAuthorizer: { allow: {} },
  },
  actionCache: {
    backend: { 'local': {
      keyLocationMapInMemory: { entries: 65536 },
      keyLocationMapMaximumGetAttempts: 8,
      keyLocationMapMaximumPutAttempts: 32,
      oldBlocks: 1, currentBlocks: 2, newBlocks: 1,
      blocksInMemory: { blockSizeBytes: 4194304 },
    } },
    getAuthorizer: { allow: {} }, putAuthorizer: { allow: {} },
  },
}
EOF
	cat >"$STATE/scheduler.jsonnet" <<EOF
{
  adminHttpServers: [{ listenAddresses: ['127.0.0.1:$sch_admin'], authenticationPolicy: { allow: {} } }],
  clientGrpcServers: [{ listenAddresses: ['127.0.0.1:$sch_client'], authenticationPolicy: { allow: {} } }],
  workerGrpcServers: [{ listenAddresses: ['127.0.0.1:$sch_worker'], authenticationPolicy: { allow: {} } }],
  browserUrl: 'http://127.0.0.1/',
  contentAddressableStorage: { grpc: { address: '127.0.0.1:$st_grpc' } },
  maximumMessageSizeBytes: 16777216,
  executeAuthorizer: { allow: {} },
  modifyDrainsAuthorizer: { allow: {} },
  killOperationsAuthorizer: { allow: {} },
  actionRouter: { simple: {
    platformKeyExtractor: { actionAndCommand: {} },
    invocationKeyExtractors: [{ toolInvocationId: {} }],
    initialSizeClassAnalyzer: { defaultExecutionTimeout: '600s', maximumExecutionTimeout: '3600s' },
  } },
  platformQueueWithNoWorkersTimeout: '900s',
}
EOF
	cat >"$STATE/runner.jsonnet" <<EOF
{
  buildDirectoryPath: '$STATE/worker/build',
  grpcServers: [{ listenPaths: ['$STATE/worker/runner.sock'], authenticationPolicy: { allow: {} } }],
}
EOF
	cat >"$STATE/worker.jsonnet" <<EOF
{
  blobstore: {
    contentAddressableStorage: { grpc: { address: '127.0.0.1:$st_grpc' } },
    actionCache: { grpc: { address: '127.0.0.1:$st_grpc' } },
  },
  browserUrl: 'http://127.0.0.1/',
  maximumMessageSizeBytes: 16777216,
  scheduler: { address: '127.0.0.1:$sch_worker' },
  buildDirectories: [{
    native: {
      buildDirectoryPath: '$STATE/worker/build',
      cacheDirectoryPath: '$STATE/worker/cache',
      maximumCacheFileCount: 10000,
      maximumCacheSizeBytes: 4294967296,
      cacheReplacementPolicy: 'LEAST_RECENTLY_USED',
    },
    runners: [{
      endpoint: { address: 'unix:$STATE/worker/runner.sock' },
      concurrency: 2,
      platform: { properties: [
        { name: 'OSFamily', value: '$PLATFORM_OS' },
        { name: 'pool', value: '$PLATFORM_POOL' },
      ] },
      workerId: { host: 'localhost' },
    }],
  }],
  outputUploadConcurrency: 4,
  inputDownloadConcurrency: 4,
}
EOF
	launch bb_storage "$BIN/bb_storage" "$STATE/storage.jsonnet"
	launch bb_scheduler "$BIN/bb_scheduler" "$STATE/scheduler.jsonnet"
	launch bb_runner "$BIN/bb_runner" "$STATE/runner.jsonnet"
	wait_for "bazel-remote (127.0.0.1:$br_grpc)" 30 "$STATE/bazel-remote.pid" port_open "$br_grpc"
	wait_for "bb_storage (127.0.0.1:$st_grpc)" 30 "$STATE/bb_storage.pid" port_open "$st_grpc"
	wait_for "bb_scheduler (127.0.0.1:$sch_worker)" 30 "$STATE/bb_scheduler.pid" port_open "$sch_worker"
	wait_for "bb_runner ($STATE/worker/runner.sock)" 30 "$STATE/bb_runner.pid" test -S "$STATE/worker/runner.sock"
	launch bb_worker "$BIN/bb_worker" "$STATE/worker.jsonnet"
	# The worker is usable once its platform queue shows on the admin page.
	wait_for "bb_worker's platform queue on the scheduler (http://127.0.0.1:$sch_admin/)" 60 "$STATE/bb_worker.pid" \
		bash -c "curl -sf http://127.0.0.1:$sch_admin/ | grep -q '$PLATFORM_POOL'"
	trap - ERR

	cat >"$STATE/env" <<EOF
PIPEHOST_TEST_REMOTE_CACHE=grpc://127.0.0.1:$br_grpc
PIPEHOST_TEST_REMOTE_EXECUTOR=grpc://127.0.0.1:$st_grpc
PIPEHOST_TEST_REMOTE_PLATFORM=OSFamily=$PLATFORM_OS,pool=$PLATFORM_POOL
PIPEHOST_TEST_BUILDBARN_ADMIN=http://127.0.0.1:$sch_admin/
PIPEHOST_TEST_BAZEL_REMOTE_DIR=$STATE/bazel-remote
EOF
	cat "$STATE/env"
}

case "$cmd" in
start) start ;;
stop)
	stop_all
	# Only a directory this script made is removed.
	if [[ -f "$STATE/.pipehost-remote" ]]; then rm -rf "$STATE"; fi
	;;
*) die "usage: $0 start|stop [STATE_DIR]" ;;
esac

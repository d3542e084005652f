"""The plugin process: go-plugin handshake, the gRPC services, the fd
channel, and running stages on their own threads."""

from __future__ import annotations

import gc
import os
import queue
import resource
import signal
import sys
import threading
import time
import traceback
from concurrent import futures

from ._lazy import defer_asyncio_and_grpc_aio, defer_numpy, ensure_loaded

defer_asyncio_and_grpc_aio()
if os.environ.get("PIPEHOST_PLUGIN_COOKIE"):
    # Under the host only: numpy loads on a thread once the plugin has
    # described itself, and every Run waits for it (Plugin.execute).
    defer_numpy()
from google.protobuf.message import DecodeError  # noqa: E402
import grpc  # noqa: E402

from . import log, shm, trace_marker  # noqa: E402
from ._proto.goplugin import controller_pb2, controller_pb2_grpc, stdio_pb2_grpc
from ._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from ._proto.pipehost.v1 import stage_pb2 as pb
from ._proto.pipehost.v1 import stage_pb2_grpc
from .context import FD_WAIT, Context, RunData
from .seed import mix64
from .stage import REGISTRY, Cancelled, ParamError, StageError, arg_name

COOKIE_KEY = "PIPEHOST_PLUGIN_COOKIE"
COOKIE_VALUE = "8f3c1e2a-pipehost-stage-plugin-v1"
CORE_PROTOCOL_VERSION = 1
APP_PROTOCOL_VERSION = 1
PROTOCOL_REVISION = 1
MAX_RECV = 64 << 20
_WORKERS = 64  # gRPC handlers, and threads that run stages
SDK_VERSION = "0.1.0"

_socket_path = None
# The real stdout, kept for the handshake line: `import pipehost` under the
# host points fd 1 at stderr at once, so stray prints never reach the protocol.
_handshake_fd = None


def _redirect_stdout():
    global _handshake_fd
    if _handshake_fd is None and os.environ.get(COOKIE_KEY):
        try:
            _handshake_fd = os.dup(1)
            os.dup2(2, 1)
        except OSError:
            _handshake_fd = None


def _exit_now(code: int):
    """Leaves at once: removes the socket and _exits without waiting for threads."""
    if _socket_path:
        try:
            os.unlink(_socket_path)
        except OSError:
            pass
    os._exit(code)


def _fail_start(msg: str):
    sys.stderr.write(f"pipehost plugin: {msg}\n")
    sys.stderr.flush()
    sys.exit(1)


def _cpu_ns() -> int:
    return time.process_time_ns()


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


_PAGE = os.sysconf("SC_PAGESIZE")


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss() -> int:
    """VmRSS from /proc/self/statm: a few µs, against tens for /proc/self/status."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return int(os.read(fd, 128).split()[1]) * _PAGE
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return 0


def _peak_since(start_kb: int, rss: int, end_kb: int) -> int:
    """VmHWM at the end of a span that began with ru_maxrss start_kb and then
    an RSS reading rss. ru_maxrss is max(VmHWM, the peak at exec and at each
    thread's exit), which the reset does not touch: it is exact when it grew
    during the span or was within rss at its start; otherwise
    /proc/self/status is read. The Go SDK applies the same rule."""
    if end_kb > start_kb or start_kb * 1024 <= rss:
        return end_kb * 1024
    return _peak_rss()


class Plugin:
    def __init__(self, stages, mailbox):
        self.order = list(stages)
        self.by_kind = {s.kind: s for s in self.order}
        self.mailbox = mailbox
        self._active = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            self._active += 1
            if self._active == 1:
                _reset_peak_rss()
                return False
            return True

    def leave(self) -> bool:
        with self._lock:
            self._active -= 1
            return self._active > 0

    def discard(self, req):
        if self.mailbox is not None:
            self.mailbox.discard([b.fd_token for b in list(req.inputs) + list(req.outputs)])

    def execute(self, stage, req, sink, cancelled):
        """Runs one stage on the calling thread; returns None or (code, message)."""
        ensure_loaded("numpy")  # whole before any array is made (see defer_numpy)
        name, kind = req.stage, req.kind
        data = RunData(stage, self.mailbox)
        try:
            try:
                data.bind(req, FD_WAIT)
            except StageError as e:
                return grpc.StatusCode.INVALID_ARGUMENT, f"stage {name} ({kind}): {e}"
            ctx = Context(req, stage, data, sink, cancelled)
            shared_before = self.enter()
            # The stage's slice, begun and ended on this thread (B/E nest per
            # thread); with no path in the request it costs one check.
            marker = trace_marker.MARKER if req.trace_marker and trace_marker.MARKER.open(req.trace_marker) else None
            ctx._marker = marker
            if marker:
                marker.begin(name)
            maxrss0 = _maxrss_kb()
            rss = _rss()  # after maxrss0: _peak_since relies on the order
            start = time.monotonic_ns()
            cpu0 = _cpu_ns()
            failure = None
            try:
                ctx.params = {p.name: p.decode(req.params) for p in stage.params}
                kwargs = {arg_name(p.name): v for p, v in zip(stage.params, ctx.params.values())}
                for p in stage.inputs:
                    kwargs[arg_name(p.name)] = ctx.input(p.name)
                stage.fn(ctx, **kwargs)
            except Cancelled as e:
                failure = grpc.StatusCode.CANCELLED, str(e)
            except ParamError as e:
                failure = grpc.StatusCode.INVALID_ARGUMENT, str(e)
            except StageError as e:
                failure = grpc.StatusCode.ABORTED, str(e)
            except Exception as e:  # noqa: BLE001 - any error in user code fails the stage, not the plugin
                tb = traceback.format_exc()
                log.error(f"exception in stage {name} ({kind}):\n{tb}")
                where = ""
                frames = traceback.extract_tb(e.__traceback__)
                if frames:
                    f = frames[-1]
                    where = f" (at {os.path.basename(f.filename)}:{f.lineno} in {f.name})"
                failure = grpc.StatusCode.ABORTED, f"stage raised {type(e).__name__}: {e}{where}"
                # The traceback's frames hold the stage's locals (its arrays): let them go.
                traceback.clear_frames(e.__traceback__)
                e.__traceback__ = None
            finally:
                kwargs = None
                end = time.monotonic_ns()
                if marker:
                    marker.end()
            cpu1 = _cpu_ns()
            peak = _peak_since(maxrss0, rss, _maxrss_kb())
            shared = self.leave() or shared_before
            if failure:
                return failure
            try:
                dynamic = data.finish()
            except StageError as e:
                return grpc.StatusCode.FAILED_PRECONDITION, f"stage {name} ({kind}): {e}"
            stats = pb.StageStats(peak_rss_bytes=peak, peak_shared=shared, start_ns=start, end_ns=end,
                                  cpu_ns=max(0, cpu1 - cpu0))
            sink(pb.RunEvent(result=pb.Result(dynamic_outputs=dynamic, stats=stats, metrics=ctx._metrics)))
            return None
        finally:
            data.release()


_DONE = object()
_preloading = threading.Lock()
_preload_started = False


def _preload():
    """Starts loading a deferred numpy on its own thread, once, after the
    first Describe: the host describes a plugin it is about to run, so the
    load overlaps what the host does next, and a plugin only listed or
    checked never needs numpy (it is stopped before the load matters)."""
    global _preload_started
    with _preloading:
        if _preload_started:
            return
        _preload_started = True
    threading.Thread(target=_load_quietly, name="preload numpy", daemon=True).start()


def _load_quietly():
    try:
        ensure_loaded("numpy")
    except BaseException:  # noqa: BLE001 - kept by the placeholder: the first Run raises it and reports it
        pass


class StageService(stage_pb2_grpc.StageServicer):
    def __init__(self, plugin: Plugin):
        self.plugin = plugin
        # Stages run on pooled threads: starting a thread per run costs more
        # than a no-op stage. As many as the gRPC server has handlers.
        self.pool = futures.ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="stage")
        # Runs on the fd channel in flight: token → their cancelled event.
        self._runs = {}
        self._runs_lock = threading.Lock()

    def Describe(self, request, context):
        # Once the reply is out: loading numpy now would hold the GIL while
        # the reply is serialized and sent.
        if not context.add_callback(_preload):
            _preload()
        return pb.DescribeResponse(stages=[s.descriptor() for s in self.plugin.order], sdk="python",
                                   sdk_version=SDK_VERSION, protocol_revision=PROTOCOL_REVISION,
                                   channel_runs=True)

    def Run(self, request, context):
        plugin = self.plugin
        stage = plugin.by_kind.get(request.kind)
        if stage is None:
            plugin.discard(request)
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(f"this plugin has no stage kind {request.kind!r}")
            return
        events = queue.SimpleQueue()
        cancelled = threading.Event()
        context.add_callback(cancelled.set)  # the RPC ended: cancelled, unless we finished first
        outcome = []

        def work():
            threading.current_thread().name = f"stage {request.stage}"
            try:
                outcome.append(plugin.execute(stage, request, events.put, cancelled))
            except BaseException as e:  # noqa: BLE001 - report, never kill the serving thread silently
                log.error(f"stage {request.stage} ({request.kind}): internal error: {traceback.format_exc()}")
                outcome.append((grpc.StatusCode.INTERNAL, f"pipehost SDK error: {type(e).__name__}: {e}"))
            finally:
                events.put(_DONE)

        self.pool.submit(work)
        while True:
            ev = events.get()
            if ev is _DONE:
                break
            yield ev
        err = outcome[0] if outcome else None
        if err:
            context.set_code(err[0])
            context.set_details(err[1])

    def channel_run(self, token, payload):
        """A RUN from the fd channel (on its reader thread): the run is filed
        for CANCEL at once, so a CANCEL right behind it finds it, and runs on
        a pooled thread."""
        cancelled = threading.Event()
        with self._runs_lock:
            if token in self._runs:
                raise shm.ShmError(f"fd channel: RUN for token {token:#x}, which is already running")
            self._runs[token] = cancelled
        self.pool.submit(self._channel_run, token, payload, cancelled)

    def channel_cancel(self, token):
        """A CANCEL from the fd channel; one for a run that already ended is ignored."""
        with self._runs_lock:
            cancelled = self._runs.get(token)
        if cancelled is not None:
            cancelled.set()

    def _channel_run(self, token, payload, cancelled):
        """Runs as ``Run`` does, but each event goes out as an EVENT message
        from the thread that made it, and the outcome as END."""
        plugin = self.plugin
        channel = plugin.mailbox.channel
        lost = False

        def send(typ, message):
            nonlocal lost
            if lost:
                return
            try:
                channel.send_payload(typ, token, message.SerializeToString())
            except OSError as e:
                # The host is gone: the fd channel's end exits the process.
                lost = True
                cancelled.set()
                log.error(f"fd channel: run {token:#x}: cannot send to the host: {e}")

        err = None
        try:
            try:
                req = pb.RunRequest.FromString(payload)
            except DecodeError as e:
                err = grpc.StatusCode.INVALID_ARGUMENT, f"RUN message for token {token:#x}: not a RunRequest ({e})"
            else:
                stage = plugin.by_kind.get(req.kind)
                if stage is None:
                    plugin.discard(req)
                    err = grpc.StatusCode.NOT_FOUND, f"this plugin has no stage kind {req.kind!r}"
                else:
                    threading.current_thread().name = f"stage {req.stage}"
                    err = plugin.execute(stage, req, lambda ev: send(shm.EVENT, ev), cancelled)
        except BaseException as e:  # noqa: BLE001 - report, never kill the serving thread silently
            log.error(f"fd channel run {token:#x}: internal error: {traceback.format_exc()}")
            err = grpc.StatusCode.INTERNAL, f"pipehost SDK error: {type(e).__name__}: {e}"
        # Forgotten before the END goes out: once the host has it, a CANCEL
        # for the token is one for a run that ended.
        with self._runs_lock:
            del self._runs[token]
        send(shm.END, pb.RunEnd(code=err[0].value[0], message=err[1]) if err else pb.RunEnd())


class Health(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        if request.service in ("", "plugin"):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")

    def Watch(self, request, context):
        st = (health_pb2.HealthCheckResponse.SERVING if request.service in ("", "plugin")
              else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        yield health_pb2.HealthCheckResponse(status=st)
        done = threading.Event()
        context.add_callback(done.set)
        done.wait()


class Controller(controller_pb2_grpc.GRPCControllerServicer):
    def Shutdown(self, request, context):
        # Exit right after the reply is on its way.
        threading.Timer(0.005, _exit_now, args=(0,)).start()
        return controller_pb2.Empty()


class Stdio(stdio_pb2_grpc.GRPCStdioServicer):
    def StreamStdio(self, request, context):
        """Stays open and silent: plugins log to stderr, which the host reads."""
        done = threading.Event()
        context.add_callback(done.set)
        done.wait()
        return
        yield  # a generator: a server stream with no messages


def _bind_path(directory: str) -> str:
    x = (os.getpid() << 32) | (time.time_ns() % 1_000_000_000)
    for _ in range(100):
        x = mix64(x)
        p = os.path.join(directory, f"plugin{x % 1_000_000_000:09d}")
        if not os.path.exists(p):
            return p
    raise OSError(f"no free socket name in {directory}")


def serve(stages=None):
    """Runs the plugin until the host stops it; never returns. Serves every
    stage registered with ``@stage`` (or the given list).

    Started by hand (without the host's handshake cookie) it explains what
    it is on stderr and exits with status 1."""
    global _socket_path
    stages = list(REGISTRY if stages is None else stages)
    if not stages:
        _fail_start("serve was called with no stages (decorate functions with @pipehost.stage)")
    kinds = [s.kind for s in stages]
    if len(set(kinds)) != len(kinds):
        _fail_start("a stage kind is registered twice")
    if os.environ.get(COOKIE_KEY) != COOKIE_VALUE:
        sys.stderr.write(
            f"This program is a pipehost stage plugin (it offers {', '.join(kinds)}). It is not meant to be run "
            "by hand: pipehost starts it, talks to it over a private socket and hands it shared memory, so on "
            "its own it has nothing to do. Put it in a plugin directory (bin/plugins, a --plugin-dir or a "
            "directory in PIPEHOST_PLUGIN_PATH) and run a pipeline with `pipehost run CONFIG`; "
            "`pipehost plugins` lists the stages it offers.\n")
        sys.exit(1)
    if os.environ.get("PLUGIN_CLIENT_CERT"):
        _fail_start("the host asked for mutual TLS (PLUGIN_CLIENT_CERT is set), which pipehost plugins do not "
                    "support: they listen on a unix socket in a private directory instead")
    versions = os.environ.get("PLUGIN_PROTOCOL_VERSIONS")
    if versions is not None:
        ok = any(v.strip() == str(APP_PROTOCOL_VERSION) for v in versions.split(","))
        if not ok:
            _fail_start(f'the host speaks plugin protocol versions "{versions}"; this plugin speaks '
                        f"{APP_PROTOCOL_VERSION}: update it to a matching SDK")
    try:
        channel = shm.Channel.from_env()
    except shm.ShmError as e:
        _fail_start(str(e))
    os.environ.pop(shm.ENV_FD_CHANNEL, None)
    _redirect_stdout()

    directory = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or os.environ.get("TMPDIR") or "/tmp"

    def on_end(kind, why):
        if kind == "closed":
            _exit_now(0)
        if kind == "gone":
            log.error("host is gone (fd channel EOF); exiting")
        else:
            log.error(f"fd channel: {why}; exiting")
        _exit_now(3)

    mailbox = shm.Mailbox(channel, on_end)
    plugin = Plugin(stages, mailbox)
    service = StageService(plugin)
    mailbox.accept_runs(service.channel_run, service.channel_cancel)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="grpc"),
        # No BDP probing: it answers each message with a ping the host must
        # wake up to acknowledge; a local socket has no bandwidth-delay to learn.
        options=[("grpc.max_receive_message_length", MAX_RECV), ("grpc.max_send_message_length", -1),
                 ("grpc.http2.bdp_probe", 0)])
    stage_pb2_grpc.add_StageServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    controller_pb2_grpc.add_GRPCControllerServicer_to_server(Controller(), server)
    stdio_pb2_grpc.add_GRPCStdioServicer_to_server(Stdio(), server)
    try:
        path = _bind_path(directory)
        if server.add_insecure_port("unix:" + path) == 0:
            raise OSError(f"cannot listen on {path}")
    except (OSError, RuntimeError) as e:
        _fail_start(f"listening in {directory}: {e}")
    _socket_path = path
    server.start()

    # The handshake line is the first and only thing on stdout.
    line = f"{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{path}|grpc\n".encode()
    fd = _handshake_fd if _handshake_fd is not None else 1
    try:
        os.write(fd, line)
    except OSError:
        _exit_now(1)
    if _handshake_fd is not None:
        os.close(_handshake_fd)
    else:
        sys.stdout.flush()
        os.dup2(2, 1)  # from here on stray prints go to stderr
    # A launcher pauses the garbage collector while the interpreter imports
    # (scripts/build-python.sh). What the imports made lives as long as the
    # process: it goes to the permanent generation, out of every later
    # collection's way, and collection resumes.
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
    # Like go-plugin's own servers: a Ctrl-C at a terminal is the host's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server.wait_for_termination()
    _exit_now(0)

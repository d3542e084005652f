"""The stage test harness: run a stage function in-process, under pytest or
anywhere, on real memfd segments sealed exactly as the host seals them, and
look at what it produced::

    from pipehost.testing import run
    import my_stages

    def test_smooth_keeps_a_flat_grid_flat():
        r = run(my_stages.smooth, inputs={"in": np.ones((64, 128), np.float32)},
                params={"strength": 0.5}, topology="torus")
        r.check()                       # raises StageFailed with the stage's error
        assert (r.outputs["out"] == 1).all()

What the host does, the harness does: each grid input is copied into a new
memfd, size-sealed and write-sealed (F_SEAL_WRITE|F_SEAL_SEAL) before the
stage sees it, and handed over through a real fd channel (a SOCK_SEQPACKET
socketpair, SCM_RIGHTS); each grid output is a pre-allocated, size-sealed
memfd the stage writes in place. After the stage returns, every output is
write-sealed: if the stage (or a process it started) still holds a writable
mapping, sealing fails with EBUSY and the run fails naming the output, as
under the host. Dynamic outputs (tables, blobs) arrive as ADOPT messages and
are checked to be sealed. The stage's seed is derived from the run seed and
the stage instance name, and the topology and pyramid levels are built from
the same values as a pipeline config's ``[grid]``.

Outputs come back read-only: grids and blobs as numpy arrays over a
``PROT_READ`` mapping of the sealed segment (a consumer's view), tables as
pyarrow Tables. Logs, spans, progress, metrics, trace markers, stats and the
error come back too. Nothing outlives :meth:`Result.close` (or the ``with``
block), except mappings whose arrays the test still holds, which go when
those arrays do.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
import threading
from dataclasses import dataclass

import numpy as np

from . import handle as hd
from . import shm, trace_marker
from ._proto.pipehost.v1 import stage_pb2 as pb
from .seed import stage_seed
from .stage import REGISTRY, Stage, value_to_proto
from .topology import Topology, levels as make_levels

__all__ = ["run", "Result", "StageFailed", "LogLine", "Span", "Progress"]

_LEVEL_NAMES = {pb.LOG_LEVEL_TRACE: "trace", pb.LOG_LEVEL_DEBUG: "debug", pb.LOG_LEVEL_INFO: "info",
                pb.LOG_LEVEL_WARN: "warn", pb.LOG_LEVEL_ERROR: "error"}
_PY_TYPES = {bool: bool, int: int, float: float, str: str}
# How long the harness waits for a dynamic output's fd (sent before the Result).
_ADOPT_WAIT = 10.0


class StageFailed(AssertionError):
    """The stage failed: ``code`` is the gRPC status name the host would see
    (ABORTED for an exception or StageError, INVALID_ARGUMENT for a bad param
    or buffer, FAILED_PRECONDITION for a kept output, CANCELLED), ``message``
    the error text. An AssertionError, so pytest shows it as a test failure."""

    def __init__(self, stage: str, kind: str, code: str, message: str):
        super().__init__(f"stage {stage} ({kind}) failed [{code}]: {message}")
        self.stage, self.kind, self.code, self.message = stage, kind, code, message


@dataclass(frozen=True)
class LogLine:
    level: str  # trace, debug, info, warn, error
    message: str


@dataclass(frozen=True)
class Span:
    """A ``ctx.timed`` block: ids are per run, parent 0 is the stage itself."""
    id: int
    parent_id: int
    name: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class Progress:
    fraction: float
    message: str


class Result:
    """What one run of a stage produced. ``outputs`` maps each output port
    to a read-only value (empty when the stage failed); ``error`` is None or
    a :class:`StageFailed`. Use it as a context manager, or call
    :meth:`close`, to unmap the outputs."""

    def __init__(self, stage, kind, seed):
        self.stage, self.kind, self.seed = stage, kind, seed
        self.outputs = {}
        self.error = None
        self.logs = []
        self.spans = []
        self.progress = []
        self.markers = []
        self.metrics = {}
        self.stats = None
        self._maps = []

    def check(self) -> "Result":
        """Raises the stage's :class:`StageFailed`, if any; returns self."""
        if self.error is not None:
            raise self.error
        return self

    def span(self, name: str) -> Span:
        """The one span called ``name`` (AssertionError when there is not exactly one)."""
        got = [s for s in self.spans if s.name == name]
        if len(got) != 1:
            raise AssertionError(f"want one span {name!r}, have {len(got)} (spans: {[s.name for s in self.spans]})")
        return got[0]

    def close(self) -> None:
        self.outputs = {}
        maps, self._maps = self._maps, []
        for m in maps:
            try:
                m.close()
            except BufferError:
                pass  # the test still holds an array over it: it unmaps when that array goes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _find_stage(stage) -> Stage:
    if isinstance(stage, Stage):
        return stage
    if isinstance(stage, str):
        for s in REGISTRY:
            if s.kind == stage:
                return s
        raise ValueError(f"pipehost.testing: no stage of kind {stage!r} is registered "
                         f"(registered: {', '.join(s.kind for s in REGISTRY) or 'none'}; import its module first)")
    raise TypeError(f"pipehost.testing: {stage!r} is not a stage (decorate the function with @pipehost.stage)")


def _param_value(st: Stage, name, v):
    for p in st.params:
        if p.name == name:
            break
    else:
        raise ValueError(f"pipehost.testing: stage {st.kind} has no param {name!r} "
                         f"(its params: {', '.join(p.name for p in st.params) or 'none'})")
    if isinstance(v, pb.Value):
        return v
    # As the config loader types values: bool, int, float and str as written;
    # the stage's own conversion then accepts or refuses them.
    for t in (bool, int, float, str):
        if isinstance(v, t):
            return value_to_proto(t, v)
    if isinstance(v, np.generic):
        return _param_value(st, name, v.item())
    raise ValueError(f"pipehost.testing: param {name!r}: {type(v).__name__} is not a bool, int, float or str")


def _ipc_bytes(table):
    import pyarrow as pa
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return memoryview(sink.getvalue())


class _Host:
    """The host's side of one run: segments, the fd channel, the ledger of
    fds it must close."""

    def __init__(self):
        self.sock, plugin_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ends = []
        self.mailbox = shm.Mailbox(shm.Channel(plugin_end), lambda kind, why: self.ends.append((kind, why)))
        self.token = 0
        self.segment_id = 0
        self.fds = []

    def new_segment(self, size: int) -> int:
        # The host's own flags and size seals (shm.create_memfd mirrors them).
        fd = shm.create_memfd("pipehost-test", size)
        self.fds.append(fd)
        return fd

    def filled(self, data, size: int) -> int:
        fd = self.new_segment(size)
        mv = memoryview(data).cast("B")
        off = 0
        while off < mv.nbytes:
            off += os.pwrite(fd, mv[off:off + (1 << 30)], off)
        fcntl.fcntl(fd, shm.F_ADD_SEALS, shm.F_SEAL_WRITE | shm.F_SEAL_SEAL)
        return fd

    def bind(self, port: str, fd: int, h) -> pb.Binding:
        self.token += 1
        self.sock.sendmsg([shm.Message(shm.SEGMENT, self.token, h.segment_id, h.segment_size).encode()],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_bytes(fd))])
        return pb.Binding(port=port, handle=h, fd_token=self.token)

    def next_id(self) -> int:
        self.segment_id += 1
        return self.segment_id

    def adopted(self, timeout: float):
        """The next ADOPT message and its fd."""
        self.sock.settimeout(timeout)
        try:
            msg, fds = shm.Channel(self.sock).recv()
        finally:
            self.sock.settimeout(None)
        if msg is None:
            raise shm.ShmError("fd channel closed before a dynamic output arrived")
        self.fds.extend(fds)
        if msg.type != shm.ADOPT:
            raise shm.ShmError(f"fd channel: message type {msg.type} from the stage, want ADOPT")
        return msg, fds[0]

    def close(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.sock.close()  # the mailbox thread files what is queued, reads EOF and ends
        self.mailbox._thread.join(5)
        self.mailbox.discard(list(range(1, self.token + 1)))  # fds the stage never took
        self.mailbox.channel.sock.close()


def _fd_bytes(fd):
    import array
    return array.array("i", [fd]).tobytes()


def run(stage, inputs=None, params=None, *, topology: str = "torus", width: int | None = None,
        height: int | None = None, levels: int = 0, edge: str | None = None, radius: float = 0.0,
        minor_radius: float = 0.0, seed: int = 0, name: str = "stage", run_id: str = "test",
        cancel_after: float | None = None, markers: bool = True) -> Result:
    """Runs ``stage`` (a function decorated with ``@pipehost.stage``, or its
    kind) once, in this process, and returns its :class:`Result`.

    ``inputs``: port name → numpy array (grid; cast to the port's dtype
    within a kind or losslessly: float64 → f32 and u8 → f32 are, int64 → f32
    is refused), pyarrow Table (table) or
    bytes-like (blob). ``params``: name → value, typed as a pipeline config
    would type them (the stage checks them as under the host). The grid is
    ``topology`` ("sphere", "cylinder", "torus", "plane") of ``width`` ×
    ``height`` (default: the first grid input's shape) with ``levels``
    downsampled pyramid levels; ``edge``, ``radius`` and ``minor_radius`` as
    in a config's ``[grid]``. ``seed`` is the run seed and ``name`` the
    stage instance name: ``ctx.seed()`` is derived from both, as the host
    derives it. ``cancel_after`` cancels the run after that many seconds
    (as a host timeout does). ``markers`` records the stage's trace markers
    (``Result.markers``) in memory instead of the kernel's trace_marker file.

    A stage that fails does not raise here: the failure is ``Result.error``
    (``Result.check()`` raises it). A call the host would refuse before
    starting the stage (unknown port or param, a missing input, a grid of
    the wrong size) raises ValueError.
    """
    from .serve import Plugin  # the plugin's own run path, not a copy of it

    st = _find_stage(stage)
    inputs = dict(inputs or {})
    params = dict(params or {})
    in_ports = {p.name: p for p in st.inputs}
    for k in inputs:
        if k not in in_ports:
            raise ValueError(f"pipehost.testing: stage {st.kind} has no input {k!r} "
                             f"(its inputs: {', '.join(in_ports) or 'none'})")
    for p in st.inputs:
        if p.name not in inputs and not p.optional:
            raise ValueError(f"pipehost.testing: stage {st.kind} needs input {p.name!r}")
    if width is None or height is None:
        grids = [np.asarray(inputs[p.name]) for p in st.inputs if p.kind == pb.PORT_KIND_GRID and p.name in inputs]
        first = next((a for a in grids if a.ndim == 2), None)
        if first is None:
            raise ValueError("pipehost.testing: give width and height (no 2-D grid input to take them from)")
        height = first.shape[0] if height is None else height
        width = first.shape[1] if width is None else width
    topo = Topology.load(topology, width, height, radius, minor_radius, edge)
    lvls = make_levels(topology, width, height, levels)

    req = pb.RunRequest(run_id=run_id, stage=name, kind=st.kind, seed=stage_seed(seed, name))
    req.topology.CopyFrom(topo.to_proto())
    req.levels.extend(lv.to_proto() for lv in lvls)
    for k, v in params.items():
        req.params[k].CopyFrom(_param_value(st, k, v))

    result = Result(name, st.kind, req.seed)
    host = _Host()
    recorder = None
    saved_marker = trace_marker.MARKER
    out_fds = {}
    try:
        for p in st.outputs:
            if p.kind != pb.PORT_KIND_GRID:
                continue
            if p.level >= len(lvls):
                raise ValueError(f"pipehost.testing: output {p.name!r} is at pyramid level {p.level}; "
                                 f"pass levels={p.level} or more")
            lv = lvls[p.level]
            dt = hd.DTYPE_BY_NAME[p.dtype]
            h = hd.grid_handle(host.next_id(), 0, 0, dt, lv.height, lv.width, p.level)
            h.segment_size = h.nbytes
            fd = host.new_segment(h.nbytes)
            out_fds[p.name] = (fd, h)
            req.outputs.append(host.bind(p.name, fd, h))
        for k, v in inputs.items():
            p = in_ports[k]
            if p.kind == pb.PORT_KIND_GRID:
                if p.level >= len(lvls):
                    raise ValueError(f"pipehost.testing: input {k!r} is at pyramid level {p.level}; "
                                     f"pass levels={p.level} or more")
                lv = lvls[p.level]
                want = hd.numpy_dtype(hd.DTYPE_BY_NAME[p.dtype])
                a = np.asarray(v)
                if a.shape != (lv.height, lv.width):
                    raise ValueError(f"pipehost.testing: input {k!r} has shape {a.shape}; level {p.level} of the "
                                     f"{width}×{height} grid is (height, width) = ({lv.height}, {lv.width})")
                # Within a kind (float64 → f32) or losslessly (u8 → f32); never int64 → f32.
                if a.dtype.kind != want.kind and not np.can_cast(a.dtype, want, casting="safe"):
                    raise ValueError(f"pipehost.testing: input {k!r} is {a.dtype}, port is {p.dtype}")
                a = np.ascontiguousarray(a, dtype=want)
                h = hd.grid_handle(host.next_id(), a.nbytes, 0, hd.DTYPE_BY_NAME[p.dtype], lv.height, lv.width,
                                   p.level)
                req.inputs.append(host.bind(k, host.filled(a, a.nbytes), h))
            elif p.kind == pb.PORT_KIND_TABLE:
                data = _ipc_bytes(v)
                h = pb.Handle(segment_id=host.next_id(), segment_size=data.nbytes, nbytes=data.nbytes,
                              kind=pb.PORT_KIND_TABLE, format=pb.FORMAT_ARROW_IPC)
                req.inputs.append(host.bind(k, host.filled(data, data.nbytes), h))
            else:
                data = memoryview(v).cast("B")
                h = pb.Handle(segment_id=host.next_id(), segment_size=data.nbytes, nbytes=data.nbytes,
                              kind=pb.PORT_KIND_BLOB, format=pb.FORMAT_RAW, dtype=pb.DTYPE_U8,
                              shape=[data.nbytes], strides=[1])
                req.inputs.append(host.bind(k, host.filled(data, data.nbytes), h))

        if markers:
            recorder = _Recorder()
            req.trace_marker = "pipehost.testing"  # any path: the recorder opens nothing
            trace_marker.MARKER = recorder
        events = []
        cancelled = threading.Event()
        timer = None
        if cancel_after is not None:
            timer = threading.Timer(cancel_after, cancelled.set)
            timer.daemon = True
            timer.start()
        try:
            failure = Plugin([st], host.mailbox).execute(st, req, events.append, cancelled)
        finally:
            if timer is not None:
                timer.cancel()
        _collect(result, events)
        if failure is not None:
            result.error = StageFailed(name, st.kind, failure[0].name, failure[1])
            return result
        # The host's seal, at once: EBUSY means a writable mapping survived.
        for port, (fd, h) in out_fds.items():
            try:
                fcntl.fcntl(fd, shm.F_ADD_SEALS, shm.F_SEAL_WRITE | shm.F_SEAL_SEAL)
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                result.error = StageFailed(
                    name, st.kind, "FAILED_PRECONDITION",
                    f"output {port!r}: stage {name!r} kept a writable mapping of its output {port!r} after its "
                    "Result (a writable shared mapping of the segment still exists: EBUSY on F_SEAL_WRITE)")
                result.close()
                return result
            result.outputs[port] = _map_ro(result, fd, h, hd.numpy_dtype(h.dtype))
        res = next(e.result for e in events if e.HasField("result"))
        declared = {p.name: p for p in st.outputs}
        for b in res.dynamic_outputs:
            msg, fd = host.adopted(_ADOPT_WAIT)
            if msg.token != b.fd_token or b.port not in declared:
                raise shm.ShmError(f"dynamic output {b.port!r}: ADOPT token {msg.token}, Result names {b.fd_token}")
            seals = shm.seals(fd)
            if not seals & shm.F_SEAL_WRITE:
                result.error = StageFailed(name, st.kind, "FAILED_PRECONDITION",
                                           f"dynamic output {b.port!r} arrived without F_SEAL_WRITE")
                return result
            hd.validate(b.handle, os.fstat(fd).st_size)
            result.outputs[b.port] = _dynamic_value(result, fd, b.handle)
        return result
    finally:
        trace_marker.MARKER = saved_marker
        if recorder is not None:
            result.markers = [m.decode("utf-8", "replace") for m in recorder.lines]
        host.close()


class _Recorder(trace_marker.Marker):
    """Keeps each marker the SDK would write to tracefs (one write(2) each,
    e.g. ``B|pid|name`` and ``E|pid``) in a list instead."""

    def __init__(self):
        super().__init__()
        self.lines = []
        self._pid = str(os.getpid()).encode()

    def open(self, path: str) -> bool:
        return True

    def _emit(self, marker: bytes) -> None:
        with self._lock:
            self.lines.append(marker)


def _collect(result, events):
    for e in events:
        which = e.WhichOneof("event")
        if which == "log":
            result.logs.append(LogLine(_LEVEL_NAMES.get(e.log.level, str(e.log.level)), e.log.message))
        elif which == "span":
            s = e.span
            result.spans.append(Span(s.id, s.parent_id, s.name, s.start_ns, s.end_ns))
        elif which == "progress":
            result.progress.append(Progress(e.progress.fraction, e.progress.message))
        elif which == "result":
            result.metrics = dict(e.result.metrics)
            st = e.result.stats
            result.stats = {"start_ns": st.start_ns, "end_ns": st.end_ns, "cpu_ns": st.cpu_ns,
                            "peak_rss_bytes": st.peak_rss_bytes}


def _map_ro(result, fd, h, dtype):
    if h.nbytes == 0:
        a = np.zeros(tuple(h.shape), dtype=dtype)
    else:
        m = mmap.mmap(fd, h.segment_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        result._maps.append(m)
        a = np.frombuffer(m, dtype=dtype, count=int(np.prod(h.shape)), offset=h.offset).reshape(tuple(h.shape))
    a.flags.writeable = False
    return a


def _dynamic_value(result, fd, h):
    if h.kind == pb.PORT_KIND_TABLE:
        import pyarrow as pa
        if h.nbytes == 0:
            raise shm.ShmError("an empty table output is not an Arrow IPC file")
        m = mmap.mmap(fd, h.segment_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        result._maps.append(m)
        return pa.ipc.open_file(pa.py_buffer(memoryview(m)[h.offset:h.offset + h.nbytes])).read_all()
    return _map_ro(result, fd, pb.Handle(segment_size=h.segment_size, nbytes=h.nbytes, offset=h.offset,
                                         shape=[h.nbytes]), np.uint8)

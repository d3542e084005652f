"""What a run sees: its identity, seed, topology, buffers and the events it
streams to the host; and the binding and release of its buffers."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import threading
import time

import numpy as np

from . import handle as hd
from . import log
from . import shm
from ._proto.pipehost.v1 import stage_pb2 as pb
from .seed import Stream
from .stage import Cancelled, StageError
from .topology import Level, Topology

#: How long a run waits for an fd the host has sent (normally already there).
FD_WAIT = 10.0
#: Progress updates are rate-limited to one per 50 ms (plus the final 1.0).
PROGRESS_INTERVAL_NS = 50_000_000

_LEVELS = {"trace": pb.LOG_LEVEL_TRACE, "debug": pb.LOG_LEVEL_DEBUG, "info": pb.LOG_LEVEL_INFO,
           "warn": pb.LOG_LEVEL_WARN, "error": pb.LOG_LEVEL_ERROR}


def _kind_name(k):
    return {pb.PORT_KIND_GRID: "grid", pb.PORT_KIND_TABLE: "table", pb.PORT_KIND_BLOB: "blob"}.get(k, f"kind {k}")


def _close_map(m) -> bool:
    """munmap through mmap.close(); False while a buffer exported from it
    (a numpy array, memoryview or Arrow buffer) is still alive."""
    if m is None or m.closed:
        return True
    try:
        m.close()
        return True
    except BufferError:
        pass
    gc.collect()  # a view held only by a reference cycle goes now
    try:
        m.close()
        return True
    except BufferError:
        return False


class _Buf:
    __slots__ = ("port", "binding", "seg", "map", "value", "kind")

    def __init__(self, port, binding, seg, kind):
        self.port, self.binding, self.seg, self.kind = port, binding, seg, kind
        self.map = None
        self.value = None


class _Dyn:
    __slots__ = ("port", "kind", "fd", "size", "map", "value")

    def __init__(self, port, kind, fd, size):
        self.port, self.kind, self.fd, self.size = port, kind, fd, size
        self.map = None
        self.value = None


class RunData:
    """The buffers of one run: inputs mapped read-only at bind time,
    pre-allocated outputs mapped read-write on first use, dynamic outputs
    created by the stage. ``finish`` unmaps every writable mapping before
    the Result is sent; ``release`` closes everything."""

    def __init__(self, stage, mailbox):
        self.stage = stage
        self.mailbox = mailbox
        self.inputs = {}
        self.outputs = {}
        self.dynamic = {}
        self.lock = threading.Lock()

    def bind(self, req, wait=FD_WAIT):
        if (req.inputs or req.outputs) and self.mailbox is None:
            raise StageError("the run has buffers but this plugin has no fd channel")
        deadline = time.monotonic() + wait
        in_ports = {p.name: p for p in self.stage.inputs}
        out_ports = {p.name: p for p in self.stage.outputs}
        for lst, is_input in ((req.inputs, True), (req.outputs, False)):
            for b in lst:
                what = "input" if is_input else "output"
                port = (in_ports if is_input else out_ports).get(b.port)
                if port is None:
                    raise StageError(f"the host bound {what} {b.port!r}, which stage {self.stage.kind} does not declare")
                try:
                    msg, fd = self.mailbox.take(b.fd_token, max(0.0, deadline - time.monotonic()))
                except shm.ShmError as e:
                    raise StageError(f"{what} {b.port!r}: {e}") from None
                try:
                    seg = shm.Segment(fd)
                except shm.ShmError as e:
                    raise StageError(f"{what} {b.port!r}: {e}") from None
                buf = _Buf(b.port, b, seg, port.kind)
                (self.inputs if is_input else self.outputs)[b.port] = buf
                if msg.size != seg.size:
                    raise StageError(f"{what} {b.port!r}: the fd channel announced {msg.size} bytes but the segment has {seg.size}")
                try:
                    hd.validate(b.handle if b.HasField("handle") else None, seg.size)
                except hd.InvalidHandle as e:
                    raise StageError(f"{what} {b.port!r}: {e}") from None
                if port.kind == pb.PORT_KIND_GRID:
                    self._check_grid(b.handle, port, what)
                if is_input:
                    try:
                        buf.map = seg.map_ro()
                    except shm.ShmError as e:
                        raise StageError(f"input {b.port!r}: {e}") from None
                    buf.value = self._input_value(buf)

    @staticmethod
    def _check_grid(h, port, what):
        if h.kind != pb.PORT_KIND_GRID or len(h.shape) != 2 or not hd.is_dense(h):
            raise StageError(f"{what} {port.name!r} is not a dense 2-D grid")
        if hd.dtype_name(h.dtype) != port.dtype:
            raise StageError(f"{what} {port.name!r} holds {hd.dtype_name(h.dtype)}, not {port.dtype}")

    @staticmethod
    def _array(m, h, dtype):
        n = int(np.prod(h.shape)) if h.shape else 1
        if m is None or n == 0:
            return np.zeros(tuple(h.shape), dtype=dtype)
        return np.frombuffer(m, dtype=dtype, count=n, offset=h.offset).reshape(tuple(h.shape))

    def _input_value(self, buf):
        h = buf.binding.handle
        if buf.kind == pb.PORT_KIND_GRID:
            a = self._array(buf.map, h, hd.numpy_dtype(h.dtype))
            a.flags.writeable = False  # already read-only: the buffer is PROT_READ
            return a
        if buf.kind == pb.PORT_KIND_TABLE:
            return None  # decoded on first use (pyarrow is optional)
        if buf.map is None or h.nbytes == 0:
            a = np.zeros(0, dtype=np.uint8)
            a.flags.writeable = False
            return a
        return np.frombuffer(buf.map, dtype=np.uint8, count=h.nbytes, offset=h.offset)

    def input_table(self, name):
        buf = self.inputs[name]
        if buf.value is None:
            pa = _pyarrow()
            h = buf.binding.handle
            if h.format != pb.FORMAT_ARROW_IPC:
                raise StageError(f"input {name!r} is not an Arrow IPC buffer (format {h.format})")
            if buf.map is None:
                raise StageError(f"input {name!r} is an empty buffer, not an Arrow IPC file")
            data = pa.py_buffer(memoryview(buf.map)[h.offset:h.offset + h.nbytes])
            buf.value = pa.ipc.open_file(data).read_all()  # zero-copy: its buffers are the mapping
        return buf.value

    def input_bytes(self, name):
        """A read-only uint8 array over any input's bytes, and its handle."""
        buf = self.inputs[name]
        h = buf.binding.handle
        if buf.map is None or h.nbytes == 0:
            a = np.zeros(0, dtype=np.uint8)
        else:
            a = np.frombuffer(buf.map, dtype=np.uint8, count=h.nbytes, offset=h.offset)
        return a, h

    def output(self, name):
        with self.lock:
            buf = self.outputs.get(name)
            if buf is None:
                if name in {p.name for p in self.stage.outputs}:
                    raise StageError(f"output {name!r} is a {_kind_name(self._port(name).kind)}: "
                                     "write it with ctx.write_table, ctx.write_bytes or ctx.dynamic_output")
                raise StageError(f"stage {self.stage.kind} has no output {name!r}")
            if buf.value is None:
                h = buf.binding.handle
                try:
                    buf.map = buf.seg.map_rw()
                except OSError as e:
                    raise StageError(f"output {name!r}: mapping it: {e}") from None
                buf.value = self._array(buf.map, h, hd.numpy_dtype(h.dtype))
            return buf.value

    def _port(self, name):
        for p in self.stage.outputs:
            if p.name == name:
                return p
        raise StageError(f"stage {self.stage.kind} has no output {name!r}")

    def _new_dynamic(self, name, nbytes):
        port = self._port(name)
        if port.kind not in (pb.PORT_KIND_TABLE, pb.PORT_KIND_BLOB):
            raise StageError(f"output {name!r} is a grid: the host allocates it; write it through ctx.output({name!r})")
        with self.lock:
            if name in self.dynamic:
                raise StageError(f"dynamic output {name!r} was already written in this run")
            fd = shm.create_memfd(f"{self.stage.kind}.{name}", nbytes)
            d = _Dyn(name, port.kind, fd, nbytes)
            self.dynamic[name] = d
            return d

    def dynamic_output(self, name, nbytes):
        d = self._new_dynamic(name, int(nbytes))
        if nbytes == 0:
            d.value = np.zeros(0, dtype=np.uint8)
            return d.value
        import mmap
        d.map = mmap.mmap(d.fd, d.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if d.size >= shm.POPULATE_MIN:
            shm.populate(d.fd, d.map, d.size)
        d.value = np.frombuffer(d.map, dtype=np.uint8)
        return d.value

    def write_bytes(self, name, data):
        """Writes ``data`` (any buffer) into a new segment with write(2): no
        mapping of the segment ever exists in this process."""
        mv = memoryview(data).cast("B")
        d = self._new_dynamic(name, mv.nbytes)
        off = 0
        while off < mv.nbytes:
            off += os.pwrite(d.fd, mv[off:off + (1 << 30)], off)

    def write_table(self, name, table):
        pa = _pyarrow()
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        self.write_bytes(name, sink.getvalue())

    def finish(self, mailbox_needed=True):
        """Unmaps every writable mapping of the outputs (the hand-off
        contract: nothing writable may remain when the Result is sent), seals
        and sends the dynamic outputs, and returns their bindings. Raises
        StageError naming an output whose view the stage kept."""
        kept = []
        for buf in self.outputs.values():
            buf.value = None
            if not _close_map(buf.map):
                kept.append(buf.port)
        for d in self.dynamic.values():
            d.value = None
            if not _close_map(d.map):
                kept.append(d.port)
        if kept:
            names = ", ".join(repr(k) for k in kept)
            raise StageError(
                f"the stage kept a reference to its output {names} after returning (a numpy array or view of it "
                "is still alive: stored in a global, an attribute, a closure or a cache). Output arrays are valid "
                "only while the stage function runs; keep a .copy() if you need the data later")
        missing = [p.name for p in self.stage.outputs
                   if p.kind != pb.PORT_KIND_GRID and p.name not in self.dynamic]
        if missing:
            raise StageError(f"the stage did not write its output {', '.join(repr(m) for m in missing)} "
                             "(use ctx.write_table, ctx.write_bytes or ctx.dynamic_output)")
        bindings = []
        for d in self.dynamic.values():
            # Write-seal it ourselves: no mapping is left, so this cannot be EBUSY.
            fcntl.fcntl(d.fd, shm.F_ADD_SEALS, shm.F_SEAL_WRITE | shm.F_SEAL_SEAL)
            h = hd.adopted_handle(d.kind, d.size)
            token = self.mailbox.new_token()
            try:
                self.mailbox.channel.send(shm.Message(shm.ADOPT, token, 0, d.size), d.fd)
            except OSError as e:
                raise StageError(f"dynamic output {d.port!r}: sending it to the host: {e}") from None
            os.close(d.fd)
            d.fd = -1
            bindings.append(pb.Binding(port=d.port, handle=h, fd_token=token))
        return bindings

    def release(self):
        """Unmaps and closes every buffer of the run (after the Result, or
        after a failure). A kept input view only delays its unmapping."""
        for buf in self.inputs.values():
            buf.value = None
            if not _close_map(buf.map):
                log.warn(f"stage {self.stage.kind}: input {buf.port!r} is still referenced after the run; "
                         "its read-only mapping stays until that object is freed")
            buf.seg.close()
        for buf in self.outputs.values():
            buf.value = None
            if not _close_map(buf.map):
                log.error(f"stage {self.stage.kind}: output {buf.port!r} is still referenced after the run")
            buf.seg.close()
        for d in self.dynamic.values():
            d.value = None
            _close_map(d.map)
            if d.fd >= 0:
                os.close(d.fd)
                d.fd = -1


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
    except ImportError:
        raise StageError("tables need pyarrow (pip install pyarrow)") from None
    return pa


class Context:
    """The run context a stage function receives as its first argument."""

    def __init__(self, req, stage, data: RunData, sink, cancelled: threading.Event):
        self._req = req
        self._stage = stage
        self._data = data
        self._sink = sink
        self._cancelled = cancelled
        self._span_ids = 0
        self._span_lock = threading.Lock()
        self._local = threading.local()
        self._last_progress = 0
        self._metrics = {}
        self._topology = None
        self._marker = None  # the trace_marker file while the host asked for markers
        self.params = {}

    # Identity.
    @property
    def stage(self) -> str:
        """The stage instance name from the pipeline config."""
        return self._req.stage

    @property
    def kind(self) -> str:
        return self._req.kind

    @property
    def run_id(self) -> str:
        return self._req.run_id

    @property
    def attempt(self) -> int:
        return self._req.attempt

    # Seeds.
    def seed(self) -> int:
        """The stage's 64-bit seed (docs/seeds.md)."""
        return self._req.seed

    def rng(self) -> Stream:
        """A fresh SplitMix64 stream of the stage's seed (the same values as
        every other SDK's); fork it per row or tile for order independence."""
        return Stream(self._req.seed)

    # The grid.
    @property
    def levels(self):
        """The grid pyramid, level 0 first."""
        return [Level.from_proto(g) for g in self._req.levels]

    @property
    def topology(self) -> Topology:
        """The surface at the native (level 0) size."""
        if self._topology is None:
            if not self._req.levels:
                raise StageError("the run has no grid levels")
            g = self._req.levels[0]
            self._topology = Topology.from_proto(self._req.topology, g.width, g.height)
        return self._topology

    def topology_at(self, level: int) -> Topology:
        for g in self._req.levels:
            if g.level == level:
                return self.topology.with_size(g.width, g.height)
        raise StageError(f"the run has no pyramid level {level}")

    # Buffers.
    def has_input(self, name: str) -> bool:
        return name in self._data.inputs

    def input(self, name: str):
        """An input: a read-only numpy array (grid), a pyarrow Table (table)
        or a read-only uint8 array (blob); None for an unwired optional one."""
        buf = self._data.inputs.get(name)
        if buf is None:
            if name in {p.name for p in self._stage.inputs}:
                return None
            raise StageError(f"stage {self._stage.kind} has no input {name!r}")
        if buf.kind == pb.PORT_KIND_TABLE:
            return self._data.input_table(name)
        return buf.value

    def input_bytes(self, name: str):
        """The raw bytes of any input as a read-only uint8 array, and its handle."""
        if name not in self._data.inputs:
            raise StageError(f"stage {self._stage.kind} has no input {name!r} bound in this run")
        return self._data.input_bytes(name)

    def output(self, name: str) -> np.ndarray:
        """A grid output: a writable (height, width) numpy array over the
        host's pre-allocated shared memory. Write into it in place
        (``out[...] = ...``, ``np.add(a, b, out=out)``); do not keep it
        after the stage function returns."""
        return self._data.output(name)

    def dynamic_output(self, name: str, nbytes: int) -> np.ndarray:
        """A new zero-filled segment of ``nbytes`` for a table or blob output,
        as a writable uint8 array (valid until the stage returns)."""
        return self._data.dynamic_output(name, nbytes)

    def write_bytes(self, name: str, data) -> None:
        """Writes a blob output (any bytes-like object)."""
        self._data.write_bytes(name, data)

    def write_table(self, name: str, table) -> None:
        """Writes a table output: a pyarrow Table or RecordBatch, stored as an
        Arrow IPC file."""
        self._data.write_table(name, table)

    # Events.
    def progress(self, fraction: float, message: str = "") -> None:
        """Reports progress in [0, 1]; at most one update per 50 ms, plus 1.0."""
        now = time.monotonic_ns()
        if fraction < 1.0 and now - self._last_progress < PROGRESS_INTERVAL_NS:
            return
        self._last_progress = now
        self._sink(pb.RunEvent(progress=pb.Progress(fraction=float(fraction), message=str(message))))

    def log(self, level: str, message: str) -> None:
        """A log line attributed to the stage (trace, debug, info, warn, error)."""
        lv = _LEVELS.get(level)
        if lv is None:
            raise ValueError(f"unknown log level {level!r} (want {', '.join(_LEVELS)})")
        self._sink(pb.RunEvent(log=pb.LogLine(level=lv, message=str(message), time_ns=time.monotonic_ns())))

    def debug(self, message):
        self.log("debug", message)

    def info(self, message):
        self.log("info", message)

    def warn(self, message):
        self.log("warn", message)

    def error(self, message):
        self.log("error", message)

    def metric(self, name: str, value: float) -> None:
        """A number for the run log (the last value of a name wins)."""
        self._metrics[str(name)] = float(value)

    def _stack(self):
        s = getattr(self._local, "stack", None)
        if s is None:
            s = self._local.stack = []
        return s

    def _new_span_id(self):
        with self._span_lock:
            self._span_ids += 1
            return self._span_ids

    @contextlib.contextmanager
    def timed(self, name: str, parent: int | None = None):
        """Times a subtask: ``with ctx.timed("erode"):``. Nested blocks on one
        thread nest; work on another thread can pass ``parent`` (the id the
        outer block yields)."""
        stack = self._stack()
        pid = parent if parent is not None else (stack[-1] if stack else 0)
        sid = self._new_span_id()
        marker = self._marker
        if marker:
            marker.begin(name)  # ended below, on this same thread
        start = time.monotonic_ns()
        stack.append(sid)
        try:
            yield sid
        finally:
            end = time.monotonic_ns()
            if marker:
                marker.end()
            stack.pop()
            self._sink(pb.RunEvent(span=pb.Span(id=sid, parent_id=pid, name=str(name), start_ns=start,
                                                end_ns=end)))

    # Cancellation.
    @property
    def cancelled(self) -> bool:
        """The host cancelled the stage (timeout, Ctrl-C, another stage failed)."""
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raises :class:`Cancelled` when the host cancelled the stage; call it
        between chunks of work."""
        if self._cancelled.is_set():
            raise Cancelled()

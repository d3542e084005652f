"""Runs through the SDK's own run machinery with real memfds and a real
SOCK_SEQPACKET fd channel, this test playing the host: zero-copy views,
read-only inputs, the unmap-before-Result contract, dynamic outputs sealed
and adopted, params, spans, progress and failures."""

import array
import fcntl
import os
import socket
import threading

import grpc
import numpy as np
import pytest

import pipehost
from pipehost import blob, grid, param, shm, table
from pipehost._proto.pipehost.v1 import stage_pb2 as pb
from pipehost.handle import grid_handle
from pipehost.serve import Plugin
from pipehost.stage import Stage

W, H = 64, 32


class Host:
    """The host's side: its end of the fd channel and the segments it made."""

    def __init__(self):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = a
        self.ends = []
        self.mailbox = shm.Mailbox(shm.Channel(b), lambda kind, why: self.ends.append((kind, why)))
        self.token = 0
        self.fds = []

    def segment(self, data: bytes, size=None, seal=True):
        size = len(data) if size is None else size
        fd = shm.create_memfd("test", size)
        os.pwrite(fd, data, 0)
        if seal:
            fcntl.fcntl(fd, shm.F_ADD_SEALS, shm.F_SEAL_WRITE | shm.F_SEAL_SEAL)
        self.fds.append(fd)
        return fd

    def send(self, fd, size, segment_id):
        self.token += 1
        msg = shm.Message(shm.SEGMENT, self.token, segment_id, size).encode()
        self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
        return self.token

    def grid_binding(self, port, fd, seg_id, dtype=pb.DTYPE_F32):
        h = grid_handle(seg_id, os.fstat(fd).st_size, 0, dtype, H, W)
        return pb.Binding(port=port, handle=h, fd_token=self.send(fd, h.segment_size, seg_id))

    def adopted(self):
        """The next ADOPT message from the plugin and its fd."""
        data, anc, _, _ = self.sock.recvmsg(32, socket.CMSG_SPACE(4 * 4))
        msg = shm.Message.decode(data)
        fds = array.array("i")
        fds.frombytes(anc[0][2])
        return msg, fds[0]


def request(kind, inputs=(), outputs=(), params=None, seed=7, topology="torus"):
    req = pb.RunRequest(run_id="r1", stage="s", kind=kind, seed=seed, inputs=list(inputs), outputs=list(outputs))
    req.topology.CopyFrom(pipehost.topology.Topology(topology, W, H).to_proto())
    req.levels.append(pb.GridInfo(level=0, width=W, height=H))
    for k, v in (params or {}).items():
        req.params[k].CopyFrom(v)
    return req


def run(host, st, req):
    events = []
    err = Plugin([st], host.mailbox).execute(st, req, events.append, threading.Event())
    return err, events


def mapped_inodes():
    """Inodes of memfd mappings in this process, with their permissions."""
    out = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/memfd:"):
                out.setdefault(int(parts[4]), set()).add(parts[1])
    return out


def make(fn, **kw):
    kw.setdefault("version", "1.0.0")
    return Stage(fn, kw.pop("kind", "t.stage"), kw.pop("version"), kw.pop("inputs", ()), kw.pop("outputs", ()),
                 kw.pop("params", ()), None, True, 1, None)


def test_grids_are_zero_copy_and_outputs_unmapped_before_the_result():
    host = Host()
    src = np.arange(W * H, dtype=np.float32).reshape(H, W)
    fin = host.segment(src.tobytes())
    fout = host.segment(b"", size=W * H * 4, seal=False)
    seen = {}

    def double(ctx, in_):
        seen["ro"] = not in_.flags.writeable
        with pytest.raises(ValueError):
            in_[0, 0] = 1.0
        out = ctx.output("out")
        seen["rw"] = out.flags.writeable
        seen["same"] = ctx.output("out") is out
        # Both arrays are views of the shared mappings, not copies.
        seen["in_mapped"] = os.fstat(fin).st_ino in mapped_inodes()
        seen["out_mapped"] = "rw-s" in mapped_inodes().get(os.fstat(fout).st_ino, set())
        np.multiply(in_, 2, out=out)
        with ctx.timed("outer") as outer:
            with ctx.timed("inner"):
                pass
        seen["outer"] = outer
        ctx.metric("cells", out.size)
        ctx.progress(0.5, "half")
        ctx.progress(0.6, "rate-limited away")
        ctx.progress(1.0, "done")

    st = make(double, inputs=[grid("in", "f32")], outputs=[grid("out", "f32")])
    req = request("t.stage", [host.grid_binding("in", fin, 1)], [host.grid_binding("out", fout, 2)])
    err, events = run(host, st, req)
    assert err is None, err
    assert seen == {"ro": True, "rw": True, "same": True, "in_mapped": True, "out_mapped": True, "outer": 1}
    # Nothing of the run stays mapped, and the output takes F_SEAL_WRITE at
    # once: no writable mapping was left when the Result went out.
    inodes = mapped_inodes()
    assert os.fstat(fin).st_ino not in inodes and os.fstat(fout).st_ino not in inodes
    fcntl.fcntl(fout, shm.F_ADD_SEALS, shm.F_SEAL_WRITE | shm.F_SEAL_SEAL)
    got = np.frombuffer(os.pread(fout, W * H * 4, 0), dtype=np.float32).reshape(H, W)
    assert np.array_equal(got, src * 2)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["span", "span", "progress", "progress", "result"], kinds
    inner, outer = events[0].span, events[1].span
    assert (inner.name, inner.parent_id, outer.name, outer.parent_id) == ("inner", outer.id, "outer", 0)
    assert outer.start_ns <= inner.start_ns <= inner.end_ns <= outer.end_ns
    res = events[-1].result
    assert res.metrics["cells"] == W * H
    assert res.stats.start_ns <= outer.start_ns and res.stats.end_ns >= outer.end_ns
    assert res.stats.peak_rss_bytes > 0
    assert host.ends == []


def test_a_kept_output_view_fails_the_stage_naming_the_output():
    host = Host()
    fout = host.segment(b"", size=W * H * 4, seal=False)
    kept = []

    def keeper(ctx):
        kept.append(ctx.output("out")[2:])

    st = make(keeper, outputs=[grid("out", "f32")])
    err, events = run(host, st, request("t.stage", outputs=[host.grid_binding("out", fout, 3)]))
    assert err is not None and err[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert "kept a reference to its output 'out'" in err[1]
    assert not any(e.HasField("result") for e in events)
    # Dropping the view lets the mapping go.
    kept.clear()
    import gc
    gc.collect()
    fcntl.fcntl(fout, shm.F_ADD_SEALS, shm.F_SEAL_WRITE)


def test_an_exception_frees_the_views_and_names_itself():
    host = Host()
    fout = host.segment(b"", size=W * H * 4, seal=False)

    def buggy(ctx):
        out = ctx.output("out")  # noqa: F841 - held by the traceback's frame
        raise ZeroDivisionError("boom")

    st = make(buggy, outputs=[grid("out", "f32")])
    err, _ = run(host, st, request("t.stage", outputs=[host.grid_binding("out", fout, 4)]))
    assert err[0] == grpc.StatusCode.ABORTED and "stage raised ZeroDivisionError: boom" in err[1]
    assert "test_runs.py:" in err[1]
    assert os.fstat(fout).st_ino not in mapped_inodes()


def test_inputs_must_be_write_sealed():
    host = Host()
    fin = host.segment(np.zeros(W * H, np.float32).tobytes(), seal=False)
    st = make(lambda ctx, in_: None, inputs=[grid("in", "f32")])
    err, _ = run(host, st, request("t.stage", [host.grid_binding("in", fin, 5)]))
    assert err[0] == grpc.StatusCode.INVALID_ARGUMENT and "not write-sealed" in err[1] and "'in'" in err[1]


def test_a_grid_of_another_dtype_is_refused():
    host = Host()
    fin = host.segment(np.zeros(W * H, np.uint8).tobytes())
    st = make(lambda ctx, in_: None, inputs=[grid("in", "f32")])
    err, _ = run(host, st, request("t.stage", [host.grid_binding("in", fin, 6, pb.DTYPE_U8)]))
    assert "holds u8, not f32" in err[1]


def test_dynamic_outputs_are_sealed_and_adopted_before_the_result():
    pa = pytest.importorskip("pyarrow")
    host = Host()

    def writer(ctx):
        ctx.write_bytes("raw", b"hello world")
        buf = ctx.dynamic_output("mapped", 1000)
        buf[:] = np.arange(1000) % 251
        ctx.write_table("rows", pa.table({"a": np.arange(50, dtype=np.int64)}))

    st = make(writer, outputs=[blob("raw"), blob("mapped"), table("rows")])
    err, events = run(host, st, request("t.stage"))
    assert err is None, err
    res = events[-1].result
    by_port = {b.port: b for b in res.dynamic_outputs}
    assert set(by_port) == {"raw", "mapped", "rows"}
    for _ in range(3):
        msg, fd = host.adopted()
        assert msg.type == shm.ADOPT and msg.token >= shm.PLUGIN_TOKEN_BASE
        b = next(b for b in res.dynamic_outputs if b.fd_token == msg.token)
        seals = fcntl.fcntl(fd, shm.F_GET_SEALS)
        want = shm.F_SEAL_WRITE | shm.F_SEAL_SEAL | shm.F_SEAL_SHRINK | shm.F_SEAL_GROW
        assert seals & want == want, (b.port, hex(seals))
        assert os.fstat(fd).st_size == msg.size == b.handle.segment_size == b.handle.nbytes
        data = os.pread(fd, msg.size, 0)
        if b.port == "raw":
            assert data == b"hello world" and b.handle.format == pb.FORMAT_RAW
            assert list(b.handle.shape) == [11] and b.handle.dtype == pb.DTYPE_U8
        elif b.port == "mapped":
            assert data == (np.arange(1000) % 251).astype(np.uint8).tobytes()
        else:
            assert b.handle.format == pb.FORMAT_ARROW_IPC and not b.handle.shape
            t = pa.ipc.open_file(pa.py_buffer(data)).read_all()
            assert t.column("a").to_pylist() == list(range(50))
        os.close(fd)


def test_table_and_blob_inputs():
    pa = pytest.importorskip("pyarrow")
    host = Host()
    sink = pa.BufferOutputStream()
    tbl = pa.table({"x": [1.5, 2.5, 3.5]})
    with pa.ipc.new_file(sink, tbl.schema) as w:
        w.write_table(tbl)
    raw = sink.getvalue().to_pybytes()
    ft, fb = host.segment(raw), host.segment(b"\x01\x02\x03")
    seen = {}

    def reader(ctx, rivers, data):
        seen["x"] = rivers.column("x").to_pylist()
        seen["b"] = data.tolist()
        seen["ro"] = not data.flags.writeable

    st = make(reader, inputs=[table("rivers"), blob("data")])
    th = pb.Handle(segment_id=8, segment_size=len(raw), nbytes=len(raw), kind=pb.PORT_KIND_TABLE,
                   format=pb.FORMAT_ARROW_IPC)
    bh = pb.Handle(segment_id=9, segment_size=3, nbytes=3, kind=pb.PORT_KIND_BLOB, format=pb.FORMAT_RAW,
                   dtype=pb.DTYPE_U8, shape=[3], strides=[1])
    req = request("t.stage", [pb.Binding(port="rivers", handle=th, fd_token=host.send(ft, len(raw), 8)),
                              pb.Binding(port="data", handle=bh, fd_token=host.send(fb, 3, 9))])
    err, _ = run(host, st, req)
    assert err is None, err
    assert seen == {"x": [1.5, 2.5, 3.5], "b": [1, 2, 3], "ro": True}


def test_params_are_typed_and_checked():
    got = {}

    def f(ctx, factor, n, name, on):
        got.update(factor=factor, n=n, name=name, on=on)

    params = [param("factor", float, default=2.0), param("n", int), param("name", str, default="x"),
              param("on", bool, default=False)]
    st = make(f, params=params)
    host = Host()
    err, _ = run(host, st, request("t.stage", params={"n": pb.Value(int_value=3), "factor": pb.Value(int_value=4)}))
    assert err is None and got == {"factor": 4.0, "n": 3, "name": "x", "on": False}
    assert isinstance(got["factor"], float)
    for bad, says in [({"n": pb.Value(float_value=3.0)}, 'param "n": expected an integer, got float 3.0'),
                      ({"n": pb.Value(bool_value=True)}, 'param "n": expected an integer, got boolean true'),
                      ({}, 'param "n": is required'),
                      ({"n": pb.Value(int_value=1), "on": pb.Value(int_value=1)}, 'param "on": expected a boolean')]:
        err, _ = run(host, st, request("t.stage", params=bad))
        assert err[0] == grpc.StatusCode.INVALID_ARGUMENT and says in err[1], (bad, err)
    desc = st.descriptor()
    assert [p.name for p in desc.params] == ["factor", "n", "name", "on"]
    assert desc.params[0].default.float_value == 2.0 and not desc.params[1].HasField("default")


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="version is required"):
        make(lambda ctx: None, version="")
    with pytest.raises(ValueError, match="used twice"):
        make(lambda ctx, a: None, inputs=[grid("a", "f32")], params=[param("a", int, default=1)])
    with pytest.raises(ValueError, match="unknown dtype"):
        grid("g", "float32")
    with pytest.raises(ValueError, match="default is wrong"):
        param("p", int, default=1.5)
    with pytest.raises(ValueError, match="no argument for in_"):
        make(lambda ctx: None, inputs=[grid("in", "f32")])
    with pytest.raises(ValueError, match="dotted"):
        make(lambda ctx: None, kind="nodot")


def test_the_channel_rejects_malformed_messages():
    for data, nfds, says in [(b"\0" * 32, 1, "bad magic"), (b"x" * 40, 0, "longer than 32"),
                             (shm.Message(shm.SEGMENT, 1, 1, 8).encode(), 2, "carries 2 fds"),
                             (shm.Message(shm.SEGMENT, 1 << 63, 1, 8).encode(), 1, "is not a host token")]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ends = []
        done = threading.Event()
        shm.Mailbox(shm.Channel(b), lambda kind, why: (ends.append((kind, why)), done.set()))
        fd = shm.create_memfd("rejectme", 8)
        a.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd] * nfds).tobytes())] if nfds else [])
        assert done.wait(5)
        assert ends[0][0] == "broken" and says in ends[0][1], ends
        # The rejected fds were closed: only ours holds the memfd.
        assert sum(1 for n in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{n}").startswith("/memfd:rejectme")) == 1
        os.close(fd)
        a.close()
        b.close()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends = []
    done = threading.Event()
    shm.Mailbox(shm.Channel(b), lambda kind, why: (ends.append(kind), done.set()))
    a.close()
    assert done.wait(5) and ends == ["gone"]


def test_rng_and_seed():
    seen = {}

    def f(ctx):
        seen["seed"] = ctx.seed()
        seen["draw"] = ctx.rng().next_u64()
        seen["kind"] = ctx.topology.kind

    host = Host()
    err, _ = run(host, make(f), request("t.stage", seed=0))
    assert err is None
    assert seen == {"seed": 0, "draw": 0xE220A8397B1DCDAF, "kind": "torus"}

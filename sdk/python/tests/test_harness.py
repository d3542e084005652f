"""The stage test harness (pipehost.testing): stages run in-process on real
memfds sealed as the host seals them; outputs, logs, spans, markers,
metrics and errors come back."""

import fcntl
import os
import time

import numpy as np
import pytest

import pipehost
from pipehost import blob, grid, param, shm, table
from pipehost.seed import stage_seed
from pipehost.testing import LogLine, StageFailed, run


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def memfd_maps():
    """(inode, perms) of this process's memfd mappings."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/memfd:"):
                out.add((int(parts[4]), parts[1]))
    return out


@pipehost.stage("harness.smooth", version="1.0.0", inputs=[grid("in", "f32")], outputs=[grid("out", "f32")],
                params=[param("strength", float, default=0.5, doc="blend towards the 3×3 mean")])
def smooth(ctx, in_, strength):
    if not 0 <= strength <= 1:
        raise pipehost.ParamError("strength", f"{strength} is outside 0..1")
    out = ctx.output("out")
    g = ctx.topology.grid
    ys = np.arange(g.height)[:, None]
    xs = np.arange(g.width)[None, :]
    acc = np.zeros(out.shape, np.float64)
    with ctx.timed("mean"):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                rx, ry = g.resolve_clamped_arrays(xs + dx, ys + dy)
                acc += in_[ry, rx]
    with ctx.timed("blend"):
        out[...] = in_ + np.float32(strength) * (acc / 9.0 - in_).astype(np.float32)
    ctx.info(f"smoothed {out.size} cells")
    ctx.metric("cells", out.size)
    ctx.progress(1.0, "done")


def test_a_stage_runs_on_sealed_memfds_and_returns_read_only_outputs():
    src = np.zeros((8, 16), np.float32)
    src[0, 0] = 9.0
    before = open_fds()
    with run(smooth, inputs={"in": src}, params={"strength": 1.0}, topology="torus", name="sm") as r:
        r.check()
        out = r.outputs["out"]
        assert out.shape == (8, 16) and out.dtype == np.float32
        assert not out.flags.writeable
        with pytest.raises(ValueError):
            out[0, 0] = 1.0
        # The spike spreads over its 3×3 neighbourhood, across both wraps.
        want = np.zeros((8, 16), np.float32)
        for y in (-1, 0, 1):
            for x in (-1, 0, 1):
                want[y % 8, x % 16] = 1.0
        assert np.array_equal(out, want)
        assert r.metrics == {"cells": 128.0}
        assert r.logs == [LogLine("info", "smoothed 128 cells")]
        assert [p.fraction for p in r.progress] == [1.0]
        mean, blend = r.span("mean"), r.span("blend")
        assert mean.parent_id == blend.parent_id == 0 and mean.end_ns <= blend.start_ns
        pid = os.getpid()
        assert r.markers == [f"B|{pid}|sm", f"B|{pid}|mean", f"E|{pid}", f"B|{pid}|blend", f"E|{pid}", f"E|{pid}"]
        assert r.stats["start_ns"] <= mean.start_ns and r.stats["end_ns"] >= blend.end_ns
        # The result's view is a read-only mapping of the sealed output.
        assert any(perms.startswith("r--s") for _, perms in memfd_maps())
        kept = out[:2]
        del out
    # Closing unmaps what no array uses any more; an array the test still
    # holds keeps its mapping (and the mmap's fd) until it goes.
    assert len(memfd_maps()) == 1
    del kept
    assert memfd_maps() == set() and open_fds() == before


def test_inputs_are_write_sealed_before_the_stage_sees_them():
    got = {}

    @pipehost.stage("harness.seals", version="1", inputs=[grid("in", "f32")])
    def seals(ctx, in_):
        # The fd of the input is open in this process: find it by size and look at its seals.
        for n in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{n}").startswith("/memfd:pipehost-test") and \
                        os.fstat(int(n)).st_size == in_.nbytes:
                    got["seals"] = fcntl.fcntl(int(n), shm.F_GET_SEALS)
            except OSError:
                pass
        got["perms"] = {p for _, p in memfd_maps()}
        with pytest.raises(ValueError):
            in_[0, 0] = 1.0

    run(seals, inputs={"in": np.ones((4, 8), np.float32)}).check()
    want = shm.F_SEAL_WRITE | shm.F_SEAL_SEAL | shm.F_SEAL_SHRINK | shm.F_SEAL_GROW
    assert got["seals"] & want == want
    assert got["perms"] == {"r--s"}


def test_seed_and_topology_are_the_hosts():
    got = {}

    @pipehost.stage("harness.seed", version="1", outputs=[grid("out", "u8", level=1)])
    def seeded(ctx):
        got.update(seed=ctx.seed(), draw=ctx.rng().next_u64(), kind=ctx.topology.kind,
                   levels=[(lv.level, lv.width, lv.height) for lv in ctx.levels], shape=ctx.output("out").shape)

    r = run(seeded, topology="sphere", width=64, height=32, levels=2, seed=42, name="terrain").check()
    assert got["seed"] == stage_seed(42, "terrain") == r.seed
    assert got["draw"] == pipehost.seed.Stream(stage_seed(42, "terrain")).next_u64()
    assert got["kind"] == "sphere" and got["levels"] == [(0, 64, 32), (1, 32, 16), (2, 16, 8)]
    assert got["shape"] == (16, 32) and r.outputs["out"].shape == (16, 32)
    other = run(seeded, topology="sphere", width=64, height=32, levels=1, seed=42, name="erode").check()
    assert other.seed != r.seed


def test_a_kept_output_view_fails_the_stage():
    kept = []

    @pipehost.stage("harness.keep", version="1", outputs=[grid("out", "f32")])
    def keep(ctx):
        kept.append(ctx.output("out")[1:])

    r = run(keep, width=8, height=4)
    assert r.error is not None and r.error.code == "FAILED_PRECONDITION"
    assert "kept a reference to its output 'out'" in r.error.message and r.outputs == {}
    with pytest.raises(StageFailed, match=r"stage stage \(harness.keep\) failed \[FAILED_PRECONDITION\]"):
        r.check()
    kept.clear()


def test_a_forked_child_with_a_writable_mapping_is_refused_like_under_the_host():
    # The SDK unmaps its own view; the child's copy of the mapping remains,
    # and only the seal (EBUSY) can see it.
    pids = []

    @pipehost.stage("harness.fork", version="1", outputs=[grid("out", "f32")])
    def fork(ctx):
        out = ctx.output("out")
        out[...] = 1.0
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # until the parent closes its end
            os._exit(0)
        os.close(r)
        pids.append((pid, w))

    r = run(fork, width=1024, height=512)
    pid, w = pids[0]
    os.close(w)
    os.waitpid(pid, 0)
    assert r.error is not None and r.error.code == "FAILED_PRECONDITION", r.error
    assert "kept a writable mapping of its output 'out'" in r.error.message and "EBUSY" in r.error.message


def test_exceptions_and_bad_params_are_the_stages_errors():
    src = np.ones((4, 8), np.float32)
    r = run(smooth, inputs={"in": src}, params={"strength": 2.0})
    assert r.error.code == "INVALID_ARGUMENT" and 'param "strength": 2.0 is outside 0..1' in r.error.message
    r = run(smooth, inputs={"in": src}, params={"strength": "high"})
    assert r.error.code == "INVALID_ARGUMENT" and "expected a number, got string 'high'" in r.error.message

    @pipehost.stage("harness.raise", version="1")
    def boom(ctx):
        {}["missing"]

    r = run(boom, width=4, height=4)
    assert r.error.code == "ABORTED" and "stage raised KeyError: 'missing'" in r.error.message
    assert "test_harness.py" in r.error.message
    # What the host would refuse before the stage starts is the test's mistake.
    with pytest.raises(ValueError, match="has no param 'strenght'"):
        run(smooth, inputs={"in": src}, params={"strenght": 1.0})
    with pytest.raises(ValueError, match="needs input 'in'"):
        run(smooth, width=8, height=4)
    with pytest.raises(ValueError, match=r"has shape \(4, 8\)"):
        run(smooth, inputs={"in": src}, width=16, height=4)
    with pytest.raises(ValueError, match="is int64, port is f32"):
        run(smooth, inputs={"in": np.ones((4, 8), np.int64)})


def test_cancellation():
    @pipehost.stage("harness.slow", version="1")
    def slow(ctx):
        for _ in range(500):
            ctx.check_cancelled()
            time.sleep(0.01)

    t0 = time.monotonic()
    r = run(slow, width=4, height=4, cancel_after=0.05)
    assert r.error.code == "CANCELLED" and time.monotonic() - t0 < 3


def test_tables_and_blobs_in_and_out():
    pa = pytest.importorskip("pyarrow")
    pc = pytest.importorskip("pyarrow.compute")

    @pipehost.stage("harness.tables", version="1", inputs=[table("rows"), blob("raw", optional=True)],
                    outputs=[table("doubled"), blob("note")])
    def tables(ctx, rows, raw):
        ctx.write_table("doubled", pa.table({"v": pc.multiply(rows.column("v"), 2)}))
        ctx.write_bytes("note", b"raw: " + (bytes(raw) if raw is not None else b"none"))

    before = open_fds()
    with run(tables, inputs={"rows": pa.table({"v": [1, 2, 3]}), "raw": b"\x01\x02"}, width=4, height=4) as r:
        r.check()
        assert r.outputs["doubled"].column("v").to_pylist() == [2, 4, 6]
        assert bytes(r.outputs["note"]) == b"raw: \x01\x02" and not r.outputs["note"].flags.writeable
    with run(tables, inputs={"rows": pa.table({"v": [5]})}, width=4, height=4) as r:
        assert bytes(r.check().outputs["note"]) == b"raw: none"
    assert open_fds() == before


def test_a_stage_can_be_named_by_its_kind():
    r = run("harness.smooth", inputs={"in": np.full((4, 8), 3.0)}).check()
    assert np.array_equal(r.outputs["out"], np.full((4, 8), 3.0, np.float32))
    with pytest.raises(ValueError, match="no stage of kind 'harness.nope'"):
        run("harness.nope")

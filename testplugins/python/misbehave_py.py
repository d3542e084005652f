"""Python stages that break the rules on purpose, for the host's tests, and
probes of dynamic outputs:

- ``bad-py.keepview`` keeps a numpy view of its output after returning (the
  SDK fails the stage, naming the output);
- ``bad-py.keepmap`` maps its output segment itself and keeps the mapping
  (the host's hand-off check fails the stage);
- ``bad-py.forkmap`` forks a child that inherits the writable mapping of the
  output, and writes into it after the stage returned (the host's seal sees
  the child's mapping and fails the stage);
- ``bad-py.writeinput`` writes to its read-only input: numpy refuses, then a
  raw write through ctypes faults (SIGSEGV);
- ``bad-py.crash`` aborts the process; ``bad-py.hang`` sleeps forever and
  ignores cancellation; ``bad-py.raise`` raises an exception;
- ``probe-py.*`` write and read blobs and Arrow tables through the fd channel.
"""

import ctypes
import fcntl
import mmap
import os
import select
import time

import numpy as np

import pipehost
from pipehost import blob, grid, log, param, table
from pipehost import shm

_kept = []


@pipehost.stage("bad-py.keepview", version="1.0.0", outputs=[grid("out", "f32")],
                doc="Keeps a numpy view of its output after returning.")
def keepview(ctx):
    out = ctx.output("out")
    out[...] = 1.0
    _kept.append(out[1:])  # a view in a global outlives the stage


@pipehost.stage("bad-py.keepmap", version="1.0.0", outputs=[grid("out", "f32")],
                doc="Keeps a writable mapping of its output after returning.")
def keepmap(ctx):
    out = ctx.output("out")
    out[...] = 1.0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            seals = fcntl.fcntl(fd, shm.F_GET_SEALS)
            if seals & shm.F_SEAL_WRITE or os.fstat(fd).st_size != out.nbytes:
                continue
            _kept.append(mmap.mmap(fd, out.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE))
        except OSError:
            continue
        log.warn("bad-py.keepmap: keeping a writable mapping of the output on purpose")
        return
    raise pipehost.StageError("bad-py.keepmap: found no writable segment to map")


# The write ends of the forked children's lifelines: open as long as the
# plugin lives, so a child reads EOF (and exits) when the plugin is gone.
_lifelines = []
_CHILD_LIFE_MS = 10000  # bounds a child's life


def _note(path, line):
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _wait_byte(fd, ms):
    """A byte from fd within ms, or None on EOF, an error or the timeout."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    if not p.poll(ms):
        return None
    try:
        return os.read(fd, 1) or None
    except OSError:
        return None


def _forkmap_child(note, out, ready, go):
    # Only system calls from here: other threads of the plugin may have held
    # Python-level locks (stderr's, logging's) at the fork.
    try:
        _note(note, f"child {os.getpid()} mapped {out.nbytes} bytes writable (fork)\n")
        os.write(ready, b"r")
        if _wait_byte(go, _CHILD_LIFE_MS) is None:
            os._exit(0)
        time.sleep(0.02)
        out[0, 0] = -7.0  # through the mapping the child inherited
        _note(note, f"child {os.getpid()} wrote after the stage returned\n")
        while _wait_byte(go, _CHILD_LIFE_MS) is not None:
            pass
    finally:
        os._exit(0)


@pipehost.stage("bad-py.forkmap", version="1.0.0", outputs=[grid("out", "f32")],
                params=[param("note", str, default="", doc="file the child notes its pid and late write in")],
                doc="Forks a child that keeps the writable mapping of the output and writes after the Result.")
def forkmap(ctx, note):
    out = ctx.output("out")
    out[...] = 1.0
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _forkmap_child(note, out, ready_w, go_r)
    os.close(ready_w)
    os.close(go_r)
    ok = _wait_byte(ready_r, 5000) == b"r"
    os.close(ready_r)
    if not ok:
        os.close(go_w)
        raise pipehost.StageError("bad-py.forkmap: the forked child did not get ready")
    _lifelines.append(go_w)
    os.write(go_w, b"g")
    log.warn("bad-py.forkmap: returning while a forked child maps my output writable")


@pipehost.stage("bad-py.writeinput", version="1.0.0", inputs=[grid("in", "f32")],
                doc="Writes to its read-only input: numpy refuses, a raw write dies of SIGSEGV.")
def writeinput(ctx, in_):
    try:
        in_[0, 0] = -1.0
        raise pipehost.StageError("bad-py.writeinput: numpy wrote to a sealed input")
    except ValueError as e:
        log.warn(f"bad-py.writeinput: numpy refused the write: {e}")
    log.warn("bad-py.writeinput: writing to a read-only input on purpose")
    ctypes.memmove(in_.ctypes.data, np.float32(-1.0).tobytes(), 4)
    raise pipehost.StageError("bad-py.writeinput: the write to a sealed input went through")


@pipehost.stage("bad-py.crash", version="1.0.0", outputs=[grid("out", "f32")], doc="Aborts the plugin process.")
def crash(ctx):
    log.error("bad-py.crash: aborting on purpose")
    os.abort()


@pipehost.stage("bad-py.hang", version="1.0.0", outputs=[grid("out", "f32")],
                doc="Never returns and ignores cancellation.")
def hang(ctx):
    log.warn("bad-py.hang: sleeping forever, ignoring cancellation")
    while True:
        time.sleep(3600)


@pipehost.stage("bad-py.raise", version="1.0.0", outputs=[grid("out", "f32")],
                params=[param("what", str, default="a bug", doc="the exception's message")],
                doc="Raises an exception in the stage.")
def raises(ctx, what):
    out = ctx.output("out")
    out[...] = 2.0
    return {"x": 1}[what]  # KeyError: an ordinary bug in user code


@pipehost.stage("probe-py.blob", version="1.0.0", outputs=[blob("out")],
                params=[param("n", int, default=1000, doc="bytes to write")],
                doc="Creates a blob output of n bytes (a dynamic output, mapped and written in place).")
def probe_blob(ctx, n):
    out = ctx.dynamic_output("out", n)
    out[:] = (np.arange(n, dtype=np.uint64) * 7 % 251).astype(np.uint8)
    ctx.metric("sum", float(out.sum(dtype=np.uint64)))
    ctx.metric("n", float(n))


@pipehost.stage("probe-py.blobsum", version="1.0.0", inputs=[blob("in")], doc="Sums the bytes of a blob input.")
def probe_blobsum(ctx, in_):
    ctx.metric("sum", float(in_.sum(dtype=np.uint64)))
    ctx.metric("n", float(in_.size))


@pipehost.stage("probe-py.tablebytes", version="1.0.0", inputs=[table("in")],
                doc="Reads a table input with pyarrow (zero-copy) and looks at its raw bytes.")
def probe_tablebytes(ctx, in_):
    raw, h = ctx.input_bytes("in")
    ctx.metric("n", float(raw.size))
    b = raw.tobytes()
    ctx.metric("arrow", 1.0 if b.startswith(b"ARROW1") and b.endswith(b"ARROW1") else 0.0)
    ctx.metric("format", float(h.format))
    ctx.metric("rows", float(in_.num_rows))
    ctx.metric("columns", float(in_.num_columns))


@pipehost.stage("probe-py.table", version="1.0.0", outputs=[table("rows")],
                params=[param("rows", int, default=100, doc="rows to write")],
                doc="Writes an Arrow table (id int64, value float64) with pyarrow.")
def probe_table(ctx, rows):
    import pyarrow as pa
    ids = np.arange(rows, dtype=np.int64)
    ctx.write_table("rows", pa.table({"id": ids, "value": ids * 0.5}))
    ctx.metric("rows", float(rows))


@pipehost.stage("probe-py.stdout", version="1.0.0", outputs=[blob("text")],
                doc="Prints a stray line on stdout, logs through the host and writes the line as a blob.")
def probe_stdout(ctx):
    line = "probe-py: a stray line on stdout"
    print(line, flush=True)
    ctx.info("logged through the host")
    ctx.write_bytes("text", line.encode())


def kernel(x):
    """The benchmark's numpy kernel: three full passes over the grid."""
    return float(x.sum(dtype=np.float64)), float(x.max()), int(np.count_nonzero(x > 0.5))


@pipehost.stage("probe-py.kernel", version="1.0.0", inputs=[grid("in", "f32")],
                params=[param("repeats", int, default=5, doc="timed passes of each kind"),
                        param("report", str, default="", doc="file to write the timings to (JSON)")],
                doc="Times a numpy kernel over its input view against the same kernel over in-process copies.")
def probe_kernel(ctx, in_, repeats, report):
    import json
    with ctx.timed("copy"):
        # Like with like first: a memfd of this process, mapped shared and
        # advised as the SDK advises an output (the same kind of memory as
        # the input's segment). Then numpy's own allocation (anonymous
        # memory numpy advises into transparent huge pages), and anonymous
        # memory held to 4 KiB pages.
        mfd = shm.create_memfd("probe-py.kernel", in_.nbytes)
        shared = mmap.mmap(mfd, in_.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(mfd)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                shared.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        same = np.frombuffer(shared, dtype=in_.dtype).reshape(in_.shape)
        same[...] = in_
        private = np.array(in_)
        anon = mmap.mmap(-1, in_.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            anon.madvise(mmap.MADV_NOHUGEPAGE)
        small = np.frombuffer(anon, dtype=in_.dtype).reshape(in_.shape)
        small[...] = in_
    first = time.monotonic_ns()
    want = kernel(in_)  # the first pass also maps the pages of the view
    first = time.monotonic_ns() - first
    arrays = (("shared", in_), ("memfd", same), ("private", private), ("private_4k", small))
    times = {name: [] for name, _ in arrays}
    for r in range(repeats):  # alternate, starting each round with the next array: all see the same machine
        for name, arr in arrays[r % len(arrays):] + arrays[:r % len(arrays)]:
            t0 = time.monotonic_ns()
            got = kernel(arr)
            times[name].append(time.monotonic_ns() - t0)
            if got != want:
                raise pipehost.StageError(f"the kernel gave another result on the {name} array")
    del small, same, arr, arrays  # the views of the in-process mappings, before those are closed
    anon.close()
    shared.close()
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            shmem_thp = f.read().strip()
    except OSError:
        shmem_thp = "unknown"
    res = {"bytes": int(in_.nbytes), "first_pass_ns": first, "view_is_readonly": not in_.flags.writeable,
           "view_owns_data": bool(in_.flags.owndata), "shmem_enabled": shmem_thp}
    for name, v in times.items():
        res[name + "_ns"] = v
        res[name + "_median_ns"] = med(v)
        ctx.metric(name + "_median_ns", med(v))
    res["ratio_memfd"] = res["shared_median_ns"] / res["memfd_median_ns"]
    res["ratio"] = res["shared_median_ns"] / res["private_median_ns"]
    res["ratio_4k"] = res["shared_median_ns"] / res["private_4k_median_ns"]
    if report:
        with open(report, "w") as f:
            json.dump(res, f, indent=1)


@pipehost.stage("probe-py.gc", version="1.0.0",
                doc="Fails unless the garbage collector runs again and holds the start-up's objects frozen.")
def probe_gc(ctx):
    import gc
    if not gc.isenabled():
        raise pipehost.StageError("the garbage collector is still off")
    if gc.get_freeze_count() == 0:
        raise pipehost.StageError("nothing was frozen after start-up")


@pipehost.stage("probe-py.noop", version="1.0.0", doc="Does nothing: the per-run cost of the SDK.")
def probe_noop(ctx):
    pass


if __name__ == "__main__":
    pipehost.serve()

"""Trace markers (docs/protocol.md, "Trace markers"): the exact bytes of each
marker, name cleaning, one open per process, one write per marker, and runs
through the SDK's run machinery with markers on and off. A regular file
stands in for tracefs' trace_marker: it keeps every write's bytes in order."""

import os
import threading

import pytest

from pipehost import trace_marker
from pipehost.stage import StageError
from pipehost.trace_marker import Marker, clean_name

from test_runs import Host, make, request, run

PID = str(os.getpid()).encode()


@pytest.fixture
def writes(monkeypatch):
    """Every os.write (fd, bytes, thread), passed on to the real os.write."""
    seen = []
    real = os.write

    def write(fd, data):
        seen.append((fd, bytes(data), threading.get_ident()))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return seen


@pytest.fixture
def fresh(monkeypatch):
    """A marker file not yet opened, as in a new plugin process."""
    m = Marker()
    monkeypatch.setattr(trace_marker, "MARKER", m)
    return m


def test_names_are_cleaned_and_cut_at_512_bytes():
    assert clean_name("a|b\nc\rd") == b"a_b_c_d"
    assert clean_name("erode") == b"erode"
    assert clean_name("x" * 600) == b"x" * 512
    # Cut in bytes like the Go, C++ and Rust SDKs, even inside a character.
    cut = clean_name("é" * 300)
    assert len(cut) == 512 and cut == ("é" * 300).encode()[:512]
    assert clean_name("ab|" + "é" * 300)[:3] == b"ab_"


def test_markers_are_exact_bytes_one_write_each(tmp_path, writes):
    path = tmp_path / "trace_marker"
    path.write_bytes(b"")
    m = Marker()
    assert m.open(str(path))
    m.begin("stage|one")
    m.begin("sub\n")
    m.end()
    m.end()
    want = [b"B|" + PID + b"|stage_one", b"B|" + PID + b"|sub_", b"E|" + PID, b"E|" + PID]
    assert [w for fd, w, _ in writes if fd == m.fd] == want
    assert path.read_bytes() == b"".join(want)  # no line breaks: the kernel ends the line


def test_the_file_is_opened_once_per_process(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"")
    second.write_bytes(b"")
    m = Marker()
    assert m.open(str(first))
    fd = m.fd
    assert m.open(str(second)) and m.fd == fd
    m.begin("s")
    assert first.read_bytes() == b"B|" + PID + b"|s"
    assert second.read_bytes() == b""
    os.close(m.fd)


def test_an_open_failure_is_one_stderr_line_and_no_markers(tmp_path, capfd, writes):
    m = Marker()
    missing = tmp_path / "no" / "trace_marker"
    assert not m.open(str(missing))
    good = tmp_path / "good"
    good.write_bytes(b"")
    assert not m.open(str(good))  # the first result stands
    m.begin("s")
    m.end()
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and "trace markers: open " + str(missing) in err[0] and "No such file" in err[0]
    assert good.read_bytes() == b""
    assert not any(w.startswith((b"B|", b"E|")) for _, w, _ in writes)


def test_write_errors_are_ignored(tmp_path):
    m = Marker()
    path = tmp_path / "tm"
    path.write_bytes(b"")
    assert m.open(str(path))
    os.close(m.fd)  # every write now fails with EBADF
    m.begin("s")
    m.end()


def test_a_run_writes_the_stage_and_its_subtasks_on_its_thread(tmp_path, fresh, writes):
    path = tmp_path / "trace_marker"
    path.write_bytes(b"")

    def fn(ctx):
        with ctx.timed("outer"):
            with ctx.timed("in|ner"):
                pass

    req = request("t.stage")
    req.stage = "my|stage"
    req.trace_marker = str(path)
    err, events = run(Host(), make(fn), req)
    assert err is None and events[-1].HasField("result")
    want = [b"B|" + PID + b"|my_stage", b"B|" + PID + b"|outer", b"B|" + PID + b"|in_ner", b"E|" + PID,
            b"E|" + PID, b"E|" + PID]
    mine = [(w, tid) for fd, w, tid in writes if fd == fresh.fd]
    assert [w for w, _ in mine] == want
    assert {tid for _, tid in mine} == {threading.get_ident()}  # execute runs the stage on this thread
    assert path.read_bytes() == b"".join(want)
    # The run log's spans are the ones marked.
    assert sorted(e.span.name for e in events if e.HasField("span")) == ["in|ner", "outer"]

    # A second run in the same process reuses the open file.
    fd = fresh.fd
    err, _ = run(Host(), make(fn), req)
    assert err is None and fresh.fd == fd
    assert path.read_bytes() == b"".join(want) * 2


def test_a_failing_stage_still_ends_its_slices(tmp_path, fresh):
    path = tmp_path / "trace_marker"
    path.write_bytes(b"")

    def fn(ctx):
        with ctx.timed("sub"):
            raise StageError("no")

    req = request("t.stage")
    req.trace_marker = str(path)
    err, _ = run(Host(), make(fn), req)
    assert err is not None
    assert path.read_bytes() == b"B|" + PID + b"|s" + b"B|" + PID + b"|sub" + b"E|" + PID + b"E|" + PID


def test_markers_off_open_nothing(fresh, writes, monkeypatch):
    opened = []
    real = os.open
    monkeypatch.setattr(os, "open", lambda *a, **kw: opened.append(a) or real(*a, **kw))

    def fn(ctx):
        with ctx.timed("sub"):
            pass

    err, events = run(Host(), make(fn), request("t.stage"))
    assert err is None and any(e.HasField("span") for e in events)
    # The run's own accounting reads /proc/self; no marker file is opened.
    assert [a for a in opened if not str(a[0]).startswith("/proc/self/")] == [] and fresh.fd == -1
    assert not any(w.startswith((b"B|", b"E|")) for _, w, _ in writes)

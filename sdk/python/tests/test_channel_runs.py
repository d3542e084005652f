"""Runs on the fd channel, on a real SOCK_SEQPACKET socket pair with real
memfds, this test playing the host: payload framing, every protocol error
of the framing (and the fds that came with it closed), and runs driven
through the Mailbox and the StageService as a plugin process drives them."""

import array
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict

import grpc
import numpy as np
import pytest
from conftest import open_count
from test_runs import H, W, Host, make, request

from pipehost import grid, param, shm
from pipehost._proto.pipehost.v1 import stage_pb2 as pb
from pipehost.serve import Plugin, StageService

SRC = os.path.join(os.path.dirname(__file__), "..", "src")
OK, CANCELLED, INVALID_ARGUMENT, NOT_FOUND, ABORTED = 0, 1, 3, 5, 10


def frame(typ, token, total, size, body=None):
    """One datagram's bytes: a header and (by default) size zero bytes."""
    return shm.Message(typ, token, total, size).encode() + (bytes(size) if body is None else body)


def fd_rights(fd, n=1):
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd] * n).tobytes())] if n else []


def in_background(fn, *args):
    t = threading.Thread(target=fn, args=args)
    t.start()
    return t


def raw_frames(sock):
    """The frames of one payload as they are on the wire: (header, body) each."""
    out = []
    while True:
        data = sock.recv(shm.MSG_SIZE + shm.MAX_FRAME + 1)
        out.append((shm.Message.decode(data[:shm.MSG_SIZE], runs=True), data[shm.MSG_SIZE:]))
        if sum(m.size for m, _ in out) == out[0][0].segment_id:
            return out


@pytest.mark.parametrize("n", [0, 1, shm.MAX_FRAME, shm.MAX_FRAME + 1, 200_000])
def test_payloads_are_cut_into_frames_and_come_back_whole(n):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        payload = os.urandom(n)
        send, recv = shm.Channel(a, runs=True), shm.Channel(b, runs=True)
        b.settimeout(30)
        sending = in_background(send.send_payload, shm.EVENT, 7, payload)  # more than the socket buffers
        frames = raw_frames(b)
        sending.join()
        assert len(frames) == max(1, -(-n // shm.MAX_FRAME))
        for i, (m, body) in enumerate(frames):
            assert (m.type, m.token, m.segment_id) == (shm.EVENT, 7, n)
            assert m.size == len(body) == min(shm.MAX_FRAME, n - i * shm.MAX_FRAME)
        assert b"".join(body for _, body in frames) == payload
        sending = in_background(send.send_payload, shm.EVENT, 7, payload)
        msg, fds = recv.recv()
        sending.join()
        assert (msg.type, msg.token, msg.payload, fds) == (shm.EVENT, 7, payload, [])
    finally:
        a.close()
        b.close()


def test_the_frames_of_one_payload_are_never_interleaved_with_another_senders():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        send, recv = shm.Channel(a, runs=True), shm.Channel(b, runs=True)
        b.settimeout(30)
        payloads = {t: bytes([t]) * 150_000 for t in (1, 2, 3, 4)}
        threads = [in_background(send.send_payload, shm.EVENT, t, p) for t, p in payloads.items()]
        got = {}
        for _ in payloads:
            msg, _ = recv.recv()
            got[msg.token] = msg.payload
        for t in threads:
            t.join()
        assert got == payloads
    finally:
        a.close()
        b.close()


def test_a_payload_over_the_limit_is_not_sent():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(shm.ShmError, match="over the limit of 67108864 bytes"):
            shm.Channel(a).send_payload(shm.EVENT, 1, bytearray(shm.MAX_PAYLOAD + 1))
        with pytest.raises(ValueError, match="carries no payload"):
            shm.Channel(a).send_payload(shm.CANCEL, 1, b"")
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(64)
    finally:
        a.close()
        b.close()


BIG = 40_000  # two frames: MAX_FRAME, then BIG - MAX_FRAME
REST = BIG - shm.MAX_FRAME
FIRST = (frame(shm.EVENT, 1, BIG, shm.MAX_FRAME), 0)
INCOMPLETE = "while the 40000-byte EVENT payload for token 0x1 is incomplete (32768 bytes arrived)"

# (name, the datagrams sent: (bytes, fds) each, what the error says). Every
# datagram that should fail carries an fd unless the case is about its fd count.
PROTOCOL_ERRORS = [
    ("datagram not 32 + size", [(frame(shm.EVENT, 1, 10, 10, bytes(5)), 1)], "is 37 bytes, want 32 + its size 10"),
    ("size over a frame", [(frame(shm.EVENT, 1, BIG, shm.MAX_FRAME + 1, bytes(shm.MAX_FRAME)), 1)],
     "says it carries 32769 bytes, more than a frame's 32768"),
    ("datagram over a frame", [(frame(shm.EVENT, 1, BIG, shm.MAX_FRAME + 1), 1)], "message longer than 32800 bytes"),
    ("total over the limit", [(frame(shm.RUN, 1, shm.MAX_PAYLOAD + 1, 1), 1)],
     "is 67108865 bytes, more than the limit of 67108864"),
    ("first frame over the total", [(frame(shm.END, 1, 3, 5), 1)], "carries 5 bytes, but only 3 of its 3-byte"),
    ("later frame over what is missing", [FIRST, (frame(shm.EVENT, 1, BIG, REST + 1), 1)],
     f"carries {REST + 1} bytes, but only {REST} of its {BIG}-byte"),
    ("empty frame of a payload", [(frame(shm.RUN, 1, 5, 0), 1)], "is empty, but its 5-byte payload is not"),
    ("empty later frame", [FIRST, (frame(shm.EVENT, 1, BIG, 0), 1)], "is empty, but its 40000-byte payload"),
    ("another token inside a payload", [FIRST, (frame(shm.EVENT, 2, BIG, REST), 1)], INCOMPLETE),
    ("another type inside a payload", [FIRST, (frame(shm.END, 1, BIG, REST), 1)], INCOMPLETE),
    ("another total inside a payload", [FIRST, (frame(shm.EVENT, 1, BIG + 1, REST), 1)], INCOMPLETE),
    ("a SEGMENT inside a payload", [FIRST, (frame(shm.SEGMENT, 9, 1, 8, b""), 1)], INCOMPLETE),
    ("a CANCEL inside a payload", [FIRST, (frame(shm.CANCEL, 1, 0, 0), 1)], INCOMPLETE),
    ("an fd on RUN", [(frame(shm.RUN, 1, 2, 2), 1)], "RUN message for token 0x1 carries 1 fds, want 0"),
    ("an fd on EVENT", [(frame(shm.EVENT, 1, 0, 0), 1)], "EVENT message for token 0x1 carries 1 fds, want 0"),
    ("an fd on END", [(frame(shm.END, 1, 0, 0), 2)], "END message for token 0x1 carries 2 fds, want 0"),
    ("an fd on CANCEL", [(frame(shm.CANCEL, 1, 0, 0), 1)], "CANCEL message for token 0x1 carries 1 fds, want 0"),
    ("an fd on a later frame", [FIRST, (frame(shm.EVENT, 1, BIG, REST), 1)], "carries 1 fds, want 0"),
    ("CANCEL with a total", [(frame(shm.CANCEL, 1, 4, 0), 1)], "has total 4 and size 0, want 0 and 0"),
    ("CANCEL with a size", [(frame(shm.CANCEL, 1, 0, 8, b""), 1)], "has total 0 and size 8, want 0 and 0"),
    ("CANCEL with bytes", [(frame(shm.CANCEL, 1, 0, 8), 1)], "CANCEL message is 40 bytes, want 32"),
    ("RUN token 0", [(frame(shm.RUN, 0, 0, 0), 1)], "RUN token 0x0 is not a host token"),
    ("EVENT plugin token", [(frame(shm.EVENT, 1 << 63, 0, 0), 1)], "EVENT token 0x8000000000000000 is not a host"),
    ("END token 2^64-1", [(frame(shm.END, (1 << 64) - 1, 0, 0), 1)], "END token 0xffffffffffffffff is not a host"),
    ("CANCEL token 0", [(frame(shm.CANCEL, 0, 0, 0), 1)], "CANCEL token 0x0 is not a host token"),
    ("SEGMENT with bytes after it", [(frame(shm.SEGMENT, 1, 1, 1), 1)], "SEGMENT message is 33 bytes, want 32"),
    ("type 8", [(frame(8, 1, 0, 0), 1)], "unknown message type 8"),
]


@pytest.mark.parametrize("datagrams,says", [c[1:] for c in PROTOCOL_ERRORS], ids=[c[0] for c in PROTOCOL_ERRORS])
def test_each_framing_error_is_caught_and_its_fds_closed(datagrams, says):
    mem = os.memfd_create("proto", os.MFD_CLOEXEC)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for data, nfds in datagrams:
            assert a.sendmsg([data], fd_rights(mem, nfds)) == len(data)
        with pytest.raises(shm.ShmError) as e:
            shm.Channel(b, runs=True).recv()
        assert "fd channel protocol violation: " in str(e.value) and says in str(e.value), str(e.value)
        assert open_count("proto") == 1, "every fd that came with the message is closed"
    finally:
        os.close(mem)
        a.close()
        b.close()


def test_the_end_of_the_channel_inside_a_payload_is_an_error():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        a.send(FIRST[0])
        a.close()
        with pytest.raises(shm.ShmError, match="the channel ended inside the 40000-byte EVENT payload for token 0x1 "
                                               r"\(32768 bytes arrived\)"):
            shm.Channel(b, runs=True).recv()
    finally:
        b.close()


def test_run_types_are_unknown_where_runs_were_not_negotiated():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends = []
    done = threading.Event()
    mailbox = shm.Mailbox(shm.Channel(b), lambda kind, why: (ends.append((kind, why)), done.set()))
    try:
        shm.Channel(a).send_payload(shm.RUN, 1, b"")
        assert done.wait(5)
        assert ends == [("broken", "fd channel protocol violation: unknown message type 4")]
    finally:
        a.close()
        mailbox._thread.join(5)
        b.close()


def test_a_bad_run_message_breaks_the_mailbox_and_its_fd_is_closed():
    mem = os.memfd_create("badrun", os.MFD_CLOEXEC)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends, runs = [], []
    done = threading.Event()
    mailbox = shm.Mailbox(shm.Channel(b), lambda kind, why: (ends.append((kind, why)), done.set()))
    mailbox.accept_runs(lambda token, payload: runs.append((token, payload)), runs.append)
    try:
        shm.Channel(a).send_payload(shm.RUN, 1, b"abc")
        a.sendmsg([frame(shm.RUN, 2, 3, 3)], fd_rights(mem))
        assert done.wait(5)
        assert runs == [(1, b"abc")]
        assert ends[0][0] == "broken" and "RUN message for token 0x2 carries 1 fds, want 0" in ends[0][1]
        assert open_count("badrun") == 1
    finally:
        os.close(mem)
        a.close()
        mailbox._thread.join(5)
        b.close()


class ChannelHost(Host):
    """The host's side of runs on the fd channel, with the plugin's
    Mailbox and StageService wired as ``serve`` wires them."""

    def __init__(self, *stages):
        super().__init__()
        self.service = StageService(Plugin(stages, self.mailbox))
        self.mailbox.accept_runs(self.service.channel_run, self.service.channel_cancel)
        self.chan = shm.Channel(self.sock, runs=True)
        self.sock.settimeout(30)
        self.events = defaultdict(list)
        self.ended = {}

    def start(self, req) -> int:
        self.token += 1  # the counter of the SEGMENT tokens
        self.chan.send_payload(shm.RUN, self.token, req if isinstance(req, bytes) else req.SerializeToString())
        return self.token

    def cancel(self, token):
        self.chan.send(shm.Message(shm.CANCEL, token))

    def read(self):
        """Files the next message from the plugin: an EVENT or an END."""
        msg, fds = self.chan.recv()
        assert msg is not None and fds == [], msg
        assert msg.token not in self.ended, "nothing comes after a run's END"
        if msg.type == shm.EVENT:
            self.events[msg.token].append(pb.RunEvent.FromString(msg.payload))
        else:
            assert msg.type == shm.END, msg.type
            self.ended[msg.token] = pb.RunEnd.FromString(msg.payload)

    def until(self, token, kind):
        """Reads until the run has sent an event of this kind."""
        while not any(e.WhichOneof("event") == kind for e in self.events[token]):
            self.read()

    def end(self, token):
        """The run's events and its END."""
        while token not in self.ended:
            self.read()
        return self.events[token], self.ended[token]

    def close(self):
        self.sock.close()
        self.mailbox._thread.join(5)
        self.service.pool.shutdown(wait=True)
        self.mailbox.discard(list(range(1, self.token + 1)))
        self.mailbox.channel.sock.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def channel_host():
    made = []

    def new(*stages):
        made.append(ChannelHost(*stages))
        return made[-1]

    yield new
    for h in made:
        h.close()


def test_a_run_writes_its_output_grid_and_ends_ok(channel_host):
    want = np.arange(W * H, dtype=np.float32).reshape(H, W) * 3

    def fill(ctx):
        ctx.output("out")[:] = want

    host = channel_host(make(fill, outputs=[grid("out", "f32")]))
    fout = host.segment(b"", size=W * H * 4, seal=False)
    token = host.start(request("t.stage", outputs=[host.grid_binding("out", fout, 2)]))
    events, end = host.end(token)
    assert (end.code, end.message) == (OK, "")
    assert [e.WhichOneof("event") for e in events] == ["result"]
    assert events[0].result.stats.end_ns >= events[0].result.stats.start_ns > 0
    got = np.frombuffer(os.pread(fout, W * H * 4, 0), dtype=np.float32).reshape(H, W)
    assert np.array_equal(got, want)
    assert host.service._runs == {} and host.ends == []


def test_an_unknown_kind_ends_not_found_and_its_fds_are_let_go(channel_host):
    host = channel_host(make(lambda ctx: None))
    fout = host.segment(b"", size=W * H * 4, seal=False)
    token = host.start(request("t.nope", outputs=[host.grid_binding("out", fout, 2)]))
    events, end = host.end(token)
    assert events == [] and (end.code, end.message) == (NOT_FOUND, "this plugin has no stage kind 't.nope'")
    assert host.mailbox._fds == {}


def test_a_run_request_that_does_not_decode_ends_invalid_argument(channel_host):
    host = channel_host(make(lambda ctx: None))
    token = host.start(b"\xff\xff\xff")
    events, end = host.end(token)
    assert events == [] and end.code == INVALID_ARGUMENT
    assert end.message.startswith(f"RUN message for token {token:#x}: not a RunRequest")


def test_a_stage_that_raises_ends_aborted_with_its_message(channel_host):
    def bad(ctx):
        ctx.log("info", "about to fail")
        raise ValueError("bad input")

    host = channel_host(make(bad))
    events, end = host.end(host.start(request("t.stage")))
    assert [e.WhichOneof("event") for e in events] == ["log"]
    assert end.code == ABORTED and "stage raised ValueError: bad input" in end.message


def test_cancel_reaches_the_running_stage_and_it_ends_cancelled(channel_host):
    def waiter(ctx):
        ctx.log("info", "waiting")
        while not ctx.cancelled:
            time.sleep(0.005)
        ctx.check_cancelled()

    host = channel_host(make(waiter))
    token = host.start(request("t.stage"))
    host.cancel(token + 100)  # no such run: ignored
    host.until(token, "log")
    host.cancel(token)
    events, end = host.end(token)
    assert end.code == CANCELLED and end.message == "stage cancelled"
    host.cancel(token)  # after its END: ignored too
    events, end = host.end(host.start(request("t.nope")))  # the channel carries on
    assert end.code == NOT_FOUND and host.ends == []


def test_an_event_larger_than_a_frame_arrives_whole(channel_host):
    line = "".join(f"{i:07d}," for i in range(20_000))  # 160000 bytes: five frames

    host = channel_host(make(lambda ctx: ctx.log("warn", line)))
    events, end = host.end(host.start(request("t.stage")))
    assert end.code == OK and [e.WhichOneof("event") for e in events] == ["log", "result"]
    assert events[0].log.message == line and events[0].log.level == pb.LOG_LEVEL_WARN


def test_two_runs_are_in_flight_at_once(channel_host):
    both = threading.Barrier(2, timeout=20)  # each run waits for the other to have started

    def pair(ctx, n):
        ctx.log("info", f"run {n} started")
        both.wait()
        ctx.metric("n", n)

    host = channel_host(make(pair, params=[param("n", int)]))
    t1 = host.start(request("t.stage", params={"n": pb.Value(int_value=1)}))
    t2 = host.start(request("t.stage", params={"n": pb.Value(int_value=2)}))
    for token, n in ((t1, 1), (t2, 2)):
        events, end = host.end(token)
        assert (end.code, end.message) == (OK, "")
        assert events[0].log.message == f"run {n} started" and events[-1].result.metrics["n"] == n


PLUGIN = textwrap.dedent("""
    import pipehost
    from pipehost import stage

    @stage("chan.hello", version="1.0.0")
    def hello(ctx):
        ctx.log("info", "hello from " + ctx.stage)

    pipehost.serve()
""")


def test_a_plugin_process_offers_channel_runs_and_still_serves_grpc_runs(tmp_path):
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o700)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.path.abspath(SRC),
           "PIPEHOST_PLUGIN_COOKIE": "8f3c1e2a-pipehost-stage-plugin-v1", "PLUGIN_PROTOCOL_VERSIONS": "1",
           "PLUGIN_UNIX_SOCKET_DIR": str(sock_dir), "PIPEHOST_FD_CHANNEL": "3"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            close_fds=False, preexec_fn=lambda: os.dup2(b.fileno(), 3))
    b.close()
    try:
        address = proc.stdout.readline().decode().rstrip("\n").split("|")[3]
        with grpc.insecure_channel("unix:" + address) as ch:
            describe = ch.unary_unary("/pipehost.v1.Stage/Describe",
                                      request_serializer=pb.DescribeRequest.SerializeToString,
                                      response_deserializer=pb.DescribeResponse.FromString)
            assert describe(pb.DescribeRequest(), timeout=30).channel_runs
            chan = shm.Channel(a, runs=True)
            a.settimeout(60)
            req = pb.RunRequest(run_id="r", stage="over-channel", kind="chan.hello")
            chan.send_payload(shm.RUN, 1, req.SerializeToString())
            got = []
            while True:
                msg, _ = chan.recv()
                assert msg.token == 1
                if msg.type == shm.END:
                    break
                got.append(pb.RunEvent.FromString(msg.payload))
            assert pb.RunEnd.FromString(msg.payload) == pb.RunEnd()
            assert got[0].log.message == "hello from over-channel" and got[1].HasField("result")
            run = ch.unary_stream("/pipehost.v1.Stage/Run", request_serializer=pb.RunRequest.SerializeToString,
                                  response_deserializer=pb.RunEvent.FromString)
            got = list(run(pb.RunRequest(run_id="r", stage="over-grpc", kind="chan.hello"), timeout=30))
            assert got[0].log.message == "hello from over-grpc" and got[1].HasField("result")
        chan.send(shm.Message(shm.CLOSE, 0))
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        a.close()

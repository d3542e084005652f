"""The shared vectors of testdata/ that pin behaviour the Go SDK defines:
param conversion (params.json), fd channel framing on a real socket pair
with real fds (fdchannel.json), the handle of an adopted dynamic output
(adopted.json) and the go-plugin handshake of a real plugin process
(handshake.json)."""

import array
import contextlib
import hashlib
import importlib
import math
import os
import socket
import struct
import subprocess
import sys
import textwrap

import grpc
import pytest
from conftest import ROOT, hx, load, open_count

from pipehost import handle, shm
from pipehost._proto.grpc.health.v1 import health_pb2
from pipehost._proto.pipehost.v1 import stage_pb2 as pb
from pipehost.stage import ParamError, param

serve_mod = importlib.import_module("pipehost.serve")

# Python reads params as its own four types.
PY_TYPES = {"bool": bool, "i64": int, "f64": float, "string": str}
PARAM_PHRASES = {"no_value": "has no value", "type": "expected ", "range": "does not fit"}
FRAME_PHRASES = {
    "too_many_fds": "control data truncated", "long": "longer than 32 bytes", "short": "bytes, want 32",
    "bad_magic": "bad magic", "bad_version": "header version", "unknown_type": "unknown message type",
    "host_token": "is not a host token", "plugin_token": "is not a plugin token", "fd_count": "fds, want",
}


def wire_value(j):
    if "bool" in j:
        return pb.Value(bool_value=j["bool"])
    if "int" in j:
        return pb.Value(int_value=int(j["int"]))
    if "float_bits" in j:
        return pb.Value(float_value=struct.unpack("<d", struct.pack("<Q", hx(j["float_bits"])))[0])
    if "string" in j:
        return pb.Value(string_value=j["string"])
    return pb.Value()


def encode(type_, x):
    if type_ is bool:
        return {"bool": x}
    if type_ is int:
        return {"int": str(x)}
    if type_ is float:
        return {"f64_bits": "0x%016x" % struct.unpack("<Q", struct.pack("<d", x))[0]}
    return {"string": x}


def test_param_vectors():
    v = load("params.json")
    assert v["schema"] == "pipehost.params/1"
    assert set(v["reasons"]) == set(PARAM_PHRASES)
    ran = 0
    for c in v["cases"]:
        type_ = PY_TYPES.get(c["type"])
        if type_ is None:
            continue
        ran += 1
        p = param("v", type_)
        if c["accept"]:
            got = encode(type_, p.decode({"v": wire_value(c["value"])}))
            want = c["result"]
            if "f64_bits" in want and math.isnan(struct.unpack("<d", struct.pack("<Q", hx(want["f64_bits"])))[0]):
                assert math.isnan(p.decode({"v": wire_value(c["value"])})), c["name"]
            else:
                assert got == want, c["name"]
        else:
            with pytest.raises(ParamError) as e:
                p.decode({"v": wire_value(c["value"])})
            msg = str(e.value)
            assert msg.startswith('param "v": ') and PARAM_PHRASES[c["reason"]] in msg, (c["name"], msg)
    assert ran > 100


@contextlib.contextmanager
def memfd_and_pair(name):
    """A memfd called name (the fd every case sends) and a SOCK_SEQPACKET pair."""
    mem = os.memfd_create(name, os.MFD_CLOEXEC)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        yield mem, a, b
    finally:
        os.close(mem)
        a.close()
        b.close()


def send_case(a, mem, data, fds):
    """One sendmsg of data with fds copies of mem."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [mem] * fds).tobytes())] if fds else []
    assert a.sendmsg([data], anc) == len(data)


def test_fdchannel_vectors():
    v = load("fdchannel.json")
    assert v["schema"] == "pipehost.fdchannel/1"
    assert set(v["reasons"]) == set(FRAME_PHRASES)
    seen = set()
    for i, c in enumerate(v["cases"]):
        name = f"py-frame-{i}"
        with memfd_and_pair(name) as (mem, a, b):
            send_case(a, mem, bytes.fromhex(c["data"]), c["fds"])
            ch = shm.Channel(b)
            if c["outcome"] == "eof":
                assert ch.recv() == (None, []), c["name"]
            elif c["outcome"] == "message":
                msg, fds = ch.recv()
                m = c["message"]
                assert (str(msg.type), msg.token, msg.segment_id, msg.size) == (
                    m["type"], hx(m["token"]), hx(m["segment_id"]), hx(m["size"])), c["name"]
                assert len(fds) == (0 if msg.type == shm.CLOSE else 1), c["name"]
                assert open_count(name) == 1 + len(fds), c["name"]
                for fd in fds:
                    os.close(fd)
            else:
                seen.add(c["reason"])
                with pytest.raises(shm.ShmError) as e:
                    ch.recv()
                assert FRAME_PHRASES[c["reason"]] in str(e.value), (c["name"], str(e.value))
            assert open_count(name) == 1, f"{c['name']}: every received fd is closed"
    assert seen == set(v["reasons"])


# The same reasons for a receiver that takes runs, in this SDK's words.
RUN_PHRASES = {
    "long": ("longer than 32800 bytes",), "short": ("bytes, want 32",), "unknown_type": ("unknown message type",),
    "run_token": ("is not a host token",), "cancel_fields": ("want 0 and 0",),
    "payload_too_big": ("more than the limit of",), "frame_size": ("more than a frame's", "are missing"),
    "empty_frame": ("is empty, but its",), "length": ("want 32 + its size",), "interleaved": ("is incomplete",),
    "truncated": ("the channel ended inside",), "fd_count": ("fds, want 0",),
}


def test_fdchannel_runs_vectors():
    v = load("fdchannel-runs.json")
    assert v["schema"] == "pipehost.fdchannel-runs/1"
    assert set(v["reasons"]) == set(RUN_PHRASES)
    seen = set()
    for i, c in enumerate(v["cases"]):
        name = f"py-run-frame-{i}"
        with memfd_and_pair(name) as (mem, a, b):
            for d in c["datagrams"]:
                send_case(a, mem, bytes.fromhex(d["data"]) + b"\xa5" * d.get("fill", 0), d.get("fds", 0))
            if c.get("close"):
                a.close()
            ch = shm.Channel(b, runs=True)
            if c["outcome"] == "message":
                msg, fds = ch.recv()
                m = c["message"]
                payload = msg.payload or b""
                assert (str(msg.type), msg.token, len(payload)) == (m["type"], hx(m["token"]), int(m["length"])), c["name"]
                assert hashlib.sha256(payload).hexdigest() == m["sha256"], c["name"]
                assert fds == [], c["name"]
            else:
                seen.add(c["reason"])
                with pytest.raises(shm.ShmError) as e:
                    ch.recv()
                assert any(p in str(e.value) for p in RUN_PHRASES[c["reason"]]), (c["name"], str(e.value))
            assert open_count(name) == 1, f"{c['name']}: every received fd is closed"
    assert seen == set(v["reasons"])


def test_adopted_vectors():
    v = load("adopted.json")
    assert v["schema"] == "pipehost.adopted/1"
    assert len(v["cases"]) >= 5
    for c in v["cases"]:
        kind = pb.PORT_KIND_TABLE if c["kind"] == "table" else pb.PORT_KIND_BLOB
        size = hx(c["size"])
        h = handle.adopted_handle(kind, size)
        w = c["handle"]
        want = pb.Handle(segment_id=hx(w["segment_id"]), segment_size=hx(w["segment_size"]), offset=hx(w["offset"]),
                         nbytes=hx(w["nbytes"]), dtype=w["dtype"], shape=[hx(x) for x in w["shape"]],
                         strides=[hx(x) for x in w["strides"]], kind=w["kind"], level=w["level"],
                         format=w["format"], digest=bytes.fromhex(w["digest"]))
        assert h == want, c["name"]
        assert h.SerializeToString(deterministic=True) == bytes.fromhex(c["wire"]), c["name"]
        handle.validate(h, size)  # what the host does with it next


PLUGIN = textwrap.dedent("""
    import pipehost
    from pipehost import stage

    @stage("vectors.noop", version="1.0.0")
    def noop(ctx):
        pass

    pipehost.serve()
""")


def start_plugin(tmp_path, env):
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    full = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.path.join(ROOT, "sdk", "python", "src"), **env}
    # fd 3 in the child is b, as the host passes the fd channel; every other
    # fd of this process is close-on-exec (PEP 446).
    proc = subprocess.Popen([sys.executable, str(script)], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            close_fds=False, preexec_fn=lambda: os.dup2(b.fileno(), 3))
    b.close()
    return proc, a


def test_handshake_vectors(tmp_path):
    v = load("handshake.json")
    assert v["schema"] == "pipehost.handshake/1"
    # The SDK's own constants.
    assert (serve_mod.COOKIE_KEY, serve_mod.COOKIE_VALUE) == (v["magic_cookie_key"], v["magic_cookie_value"])
    assert (serve_mod.CORE_PROTOCOL_VERSION, serve_mod.APP_PROTOCOL_VERSION) == (
        v["core_protocol_version"], v["app_protocol_version"])
    assert serve_mod.MAX_RECV >= v["max_receive_message_bytes"]
    assert shm.ENV_FD_CHANNEL == v["env"]["fd_channel"]

    env = v["env"]
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o700)
    base = {v["magic_cookie_key"]: v["magic_cookie_value"], env["protocol_versions"]: str(v["app_protocol_version"]),
            env["unix_socket_dir"]: str(sock_dir), env["fd_channel"]: str(v["fd_channel_fd"]),
            env["min_port"]: "0", env["max_port"]: "0"}

    # A process started without the cookie explains itself and exits.
    proc, chan = start_plugin(tmp_path, {k: val for k, val in base.items() if k != v["magic_cookie_key"]})
    out, err = proc.communicate(timeout=60)
    chan.close()
    assert proc.returncode != 0 and out == b"" and b"pipehost" in err, (proc.returncode, out, err)

    # A host that speaks only another app protocol version is refused.
    proc, chan = start_plugin(tmp_path, {**base, env["protocol_versions"]: str(v["app_protocol_version"] + 1)})
    out, err = proc.communicate(timeout=60)
    chan.close()
    assert proc.returncode != 0 and out == b"", (proc.returncode, out, err)

    proc, chan = start_plugin(tmp_path, base)
    try:
        line = proc.stdout.readline().decode()
        core, app, network, address, protocol = line.rstrip("\n").split("|")
        assert line == v["handshake_line"].format(core=v["core_protocol_version"], app=v["app_protocol_version"],
                                                  address=address)
        assert (network, protocol) == (v["network"], v["protocol"])
        assert os.path.dirname(address) == str(sock_dir)
        assert len(os.path.basename(address).encode()) <= v["socket_name_max_bytes"]
        with grpc.insecure_channel("unix:" + address) as ch:
            check = ch.unary_unary(v["health_check_path"],
                                   request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                   response_deserializer=health_pb2.HealthCheckResponse.FromString)
            resp = check(health_pb2.HealthCheckRequest(service=v["health_service_name"]), timeout=30)
            assert health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status) == v["health_status"]
            describe = ch.unary_unary(f"/{v['stage_service']}/Describe",
                                      request_serializer=pb.DescribeRequest.SerializeToString,
                                      response_deserializer=pb.DescribeResponse.FromString)
            d = describe(pb.DescribeRequest(), timeout=30)
            assert d.protocol_revision == v["protocol_revision"] and d.stages[0].kind == "vectors.noop"
            # StreamStdio exists: it answers (or keeps streaming) rather than UNIMPLEMENTED.
            stdio = ch.unary_stream(v["stdio_stream_path"], request_serializer=lambda _: b"",
                                    response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as e:
                for _ in stdio(None, timeout=0.5):
                    pass
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
            shutdown = ch.unary_unary(v["controller_shutdown_path"], request_serializer=lambda _: b"",
                                      response_deserializer=lambda b: b)
            shutdown(None, timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        chan.close()

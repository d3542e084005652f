"""testdata/handles.json: the Go host's accept/reject decisions, each rule."""

import pytest
from conftest import hx, load

from pipehost import handle
from pipehost._proto.pipehost.v1 import stage_pb2 as pb

V = load("handles.json")


def mk(h):
    return pb.Handle(segment_id=hx(h["segment_id"]), segment_size=hx(h["segment_size"]), offset=hx(h["offset"]),
                     nbytes=hx(h["nbytes"]), dtype=h["dtype"], shape=[hx(x) for x in h["shape"]],
                     strides=[hx(x) for x in h["strides"]], kind=h["kind"], level=h["level"], format=h["format"],
                     digest=bytes.fromhex(h["digest"]))


def test_shared_vectors():
    cases = V["cases"]
    assert len(cases) >= 50
    seen = set()
    for c in cases:
        h = mk(c["handle"])
        size = hx(c["real_size"])
        if c["accept"]:
            handle.validate(h, size)
            assert handle.is_dense(h) == c["dense"], c["name"]
        else:
            with pytest.raises(handle.InvalidHandle) as e:
                handle.validate(h, size)
            assert e.value.reason == c["reason"], c["name"]
            assert f"segment {h.segment_id}" in str(e.value)
            seen.add(c["reason"])
    assert seen == set(V["reasons"]) - {"missing"} or seen == set(V["reasons"])


def test_missing_and_grid_handle():
    with pytest.raises(handle.InvalidHandle) as e:
        handle.validate(None, 64)
    assert e.value.reason == "missing"
    h = handle.grid_handle(3, 4096, 64, pb.DTYPE_U16, 8, 16)
    handle.validate(h, 4096)
    assert handle.is_dense(h) and h.nbytes == 256 and list(h.strides) == [32, 2]

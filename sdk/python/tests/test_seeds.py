"""testdata/seeds.json: every seed operation, bit for bit (docs/seeds.md)."""

import struct

import numpy as np
from conftest import hx, load

from pipehost import seed


V = load("seeds.json")


def test_schema():
    assert V["schema"] == "pipehost.seeds/1"


def test_splitmix64():
    assert V["splitmix64"]
    for c in V["splitmix64"]:
        g = seed.SplitMix64(hx(c["seed"]))
        assert [g.next_u64() for _ in c["outputs"]] == [hx(o) for o in c["outputs"]]


def test_fnv1a64():
    for c in V["fnv1a64"]:
        assert bytes.fromhex(c["name_hex"]) == c["name"].encode()
        assert seed.fnv1a64(c["name"]) == hx(c["hash"]), c["name"]
        assert seed.fnv1a64(bytes.fromhex(c["name_hex"])) == hx(c["hash"])


def test_stage_seeds():
    for c in V["stage_seeds"]:
        s = seed.stage_seed(hx(c["run_seed"]), c["stage"])
        assert s == hx(c["stage_seed"]), c
        st = seed.Stream.for_stage(hx(c["run_seed"]), c["stage"])
        assert [st.next_u64() for _ in c["first_outputs"]] == [hx(o) for o in c["first_outputs"]]


def test_streams():
    for c in V["streams"]:
        s = seed.Stream(hx(c["seed"]))
        assert [s.next_u64() for _ in c["uint64"]] == [hx(o) for o in c["uint64"]]
        s = seed.Stream(hx(c["seed"]))
        for f in c["float64"]:
            got = s.next_f64()
            assert struct.unpack("<Q", struct.pack("<d", got))[0] == hx(f["bits"])
            assert got == f["value"]
        for u in c["uint64n"]:
            s = seed.Stream(hx(c["seed"]))
            assert [s.below(hx(u["n"])) for _ in u["values"]] == [hx(x) for x in u["values"]], u["n"]
        # The vectorised draws are the same numbers.
        s1, s2 = seed.Stream(hx(c["seed"])), seed.Stream(hx(c["seed"]))
        assert s1.u64_array(len(c["uint64"])).tolist() == [hx(o) for o in c["uint64"]]
        assert s1.next_u64() == (s2.u64_array(len(c["uint64"]) + 1)[-1])
        s3 = seed.Stream(hx(c["seed"]))
        assert s3.f64_array(len(c["float64"])).tolist() == [f["value"] for f in c["float64"]]


def test_forks_and_children():
    for c in V["forks"]:
        f = seed.Stream(hx(c["seed"])).fork(hx(c["index"]))
        assert f.seed == hx(c["derived_seed"])
        assert [f.next_u64() for _ in c["first_outputs"]] == [hx(o) for o in c["first_outputs"]]
        words = np.array([hx(c["index"])], dtype=np.uint64)
        assert int(seed.derive_array(hx(c["seed"]), words)[0]) == hx(c["derived_seed"])
    for c in V["children"]:
        ch = seed.Stream(hx(c["seed"])).child(c["label"])
        assert ch.seed == hx(c["derived_seed"])
        assert [ch.next_u64() for _ in c["first_outputs"]] == [hx(o) for o in c["first_outputs"]]


def test_fork_ignores_draws():
    s = seed.Stream(42)
    a = s.fork(3).next_u64()
    s.next_u64()
    assert s.fork(3).next_u64() == a

"""testdata/topology/*.json: edges, neighbours, transforms, geometry,
sampling, loading and the pyramid (docs/topology.md)."""

import math

import numpy as np
import pytest
from conftest import load

from pipehost import topology as T
from pipehost._proto.pipehost.v1 import stage_pb2 as pb

TOL = 1e-12


def vec(name):
    v = load(f"topology/{name}.json")
    assert v["schema"] == f"pipehost.topology.{name}/1"
    assert v["cases"]
    return v


def topo(t):
    return T.Topology(t["kind"], t["width"], t["height"], T.parse_wrap(t["wrap_x"]), T.parse_wrap(t["wrap_y"]),
                      t["radius"], t["minor_radius"])


def close(got, want, scale=1.0, what=""):
    s = max(abs(want), scale, 1.0)
    assert abs(got - want) <= TOL * s, f"{what}: got {got!r}, want {want!r}"


def close_vec(got, want, what=""):
    assert len(got) == len(want), what
    s = max([abs(x) for x in want] + [1.0])
    for g, w in zip(got, want):
        assert abs(g - w) <= TOL * s, f"{what}: got {got}, want {want}"


def opt(i):
    return None if i < 0 else i


def test_neighbours():
    v = vec("neighbours")
    assert [tuple(o) for o in v["offsets8"]] == list(T.OFFSETS8)
    assert [tuple(o) for o in v["offsets4"]] == list(T.OFFSETS4)
    for c in v["cases"]:
        t = topo(c["topology"])
        g = t.grid
        assert len(c["cells"]) == len(g)
        for cell in c["cells"]:
            i = cell["index"]
            assert g.xy(i) == (cell["x"], cell["y"])
            w4 = [opt(n) for n in cell["n4"]]
            w8 = [opt(n) for n in cell["n8"]]
            assert g.neighbors4(i) == w4, (c["topology"], i)
            assert g.neighbors8(i) == w8, (c["topology"], i)
            x, y = g.xy(i)
            for k, (dx, dy) in enumerate(T.OFFSETS8):
                r = g.resolve(x + dx, y + dy)
                assert (None if r is None else g.index(*r)) == w8[k]
                if w8[k] is not None:
                    assert g.index(*g.resolve_clamped(x + dx, y + dy)) == w8[k]
                    rx, ry = g.resolve_clamped_arrays(np.array([x + dx]), np.array([y + dy]))
                    assert g.index(int(rx[0]), int(ry[0])) == w8[k]


def test_resolve_clamped_arrays_agrees_with_the_scalar_rule():
    for c in vec("neighbours")["cases"]:
        g = topo(c["topology"]).grid
        xs = np.arange(-3 * g.width - 2, 3 * g.width + 3)
        ys = np.arange(-3 * g.height - 2, 3 * g.height + 3)
        rx, ry = g.resolve_clamped_arrays(xs[None, :], ys[:, None])
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                assert (int(rx[j, i]), int(ry[j, i])) == g.resolve_clamped(int(x), int(y)), (g, x, y)


def test_transforms():
    for c in vec("transforms")["cases"]:
        t = topo(c["topology"])
        g = t.grid
        what = str(c["topology"])
        assert t.embed_dim == c["embed_dim"]
        sphere = t.kind == "sphere"
        for cell in c["cells"]:
            x, y = cell["x"], cell["y"]
            assert g.index(x, y) == cell["index"]
            fx, fy = g.center(x, y)
            close(fx, cell["fx"], what=what)
            close(fy, cell["fy"], what=what)
            u, vv = g.uv(x, y)
            close(u, cell["u"], what=what)
            close(vv, cell["v"], what=what)
            assert g.cell_at_uv(u, vv) == (x, y)
            if sphere:
                lon, lat = t.lon_lat(x, y)
                close(lon, cell["lon"], what=what)
                close(lat, cell["lat"], what=what)
                close_vec(T.unit_vector(lon, lat), cell["unit"], what)
                assert t.cell_of(lon, lat) == (x, y)
            else:
                assert t.lon_lat(x, y) is None
            close_vec(t.embed(fx, fy)[: t.embed_dim], cell["embed"], what)
        for p in c["points"]:
            fx, fy = p["fx"], p["fy"]
            close(fx / g.width, p["u"], what=what)
            close(fy / g.height, p["v"], what=what)
            if sphere:
                lon, lat = t.lon_lat_at(fx, fy)
                close(lon, p["lon"], what=what)
                close(lat, p["lat"], what=what)
                close_vec(T.unit_vector(lon, lat), p["unit"], what)
            close_vec(t.embed(fx, fy)[: t.embed_dim], p["embed"], what)
        if sphere:
            assert c["cell_of"]
            for q in c["cell_of"]:
                assert t.cell_of(q["lon"], q["lat"]) == (q["x"], q["y"]), (what, q)


def test_areas():
    for c in vec("areas")["cases"]:
        t = topo(c["topology"])
        assert len(c["row_areas"]) == t.height
        total = 0.0
        for y, a in enumerate(c["row_areas"]):
            close(t.row_area(y), a)
            close(t.cell_area(y * t.width), a)
            total += t.row_area(y) * t.width
        close(t.area(), c["total_area"])
        assert abs(total - t.area()) <= 1e-9 * t.area()


def test_distances():
    for c in vec("distances")["cases"]:
        t = topo(c["topology"])
        scale = math.sqrt(t.area())
        assert c["pairs"]
        for p in c["pairs"]:
            close(t.distance(p["a"], p["b"]), p["distance"], scale, f"{c['topology']} {p['a']}-{p['b']}")


def test_sampling():
    for c in vec("sampling")["cases"]:
        t = topo(c["topology"])
        data = np.array(c["data"], dtype=np.float32)
        for s in c["samples"]:
            got = t.grid.sample(data, s["fx"], s["fy"])
            want = s["value"]
            if want is None or want == "NaN":
                assert math.isnan(got)
            else:
                close(got, want, what=f"{c['topology']} ({s['fx']}, {s['fy']})")
        assert math.isnan(t.grid.sample(data, math.nan, 0.5))
        assert math.isnan(t.grid.sample(data, 0.5, math.inf))
        cx, cy = t.grid.center(1, 1)
        assert t.grid.sample(data.reshape(t.height, t.width), cx, cy) == float(data[t.width + 1])


def test_loading():
    for c in vec("load")["cases"]:
        o = c["options"]
        if c["error"]:
            with pytest.raises(T.TopologyError):
                T.Topology.load(c["kind"], c["width"], c["height"], o["radius"], o["minor_radius"], o["edge"] or None)
            continue
        t = T.Topology.load(c["kind"], c["width"], c["height"], o["radius"], o["minor_radius"], o["edge"] or None)
        want = topo(c["topology"])
        assert (t.kind, t.width, t.height) == (want.kind, want.width, want.height)
        assert (t.grid.wrap_x, t.grid.wrap_y) == (want.grid.wrap_x, want.grid.wrap_y), c
        close(t.radius, want.radius)
        close(t.minor_radius, want.minor_radius)
        back = T.Topology.from_proto(t.to_proto(), t.width, t.height)
        assert back == t
    with pytest.raises(T.TopologyError):
        T.Topology.from_proto(pb.Topology(kind="torus", wrap_x=99), 8, 8)
    assert T.Topology.from_proto(pb.Topology(kind="plane"), 8, 8).grid.wrap_x == T.CLAMP


def test_pyramid():
    v = vec("pyramid")
    for c in v["cases"]:
        kind, w, h = c["kind"], c["width"], c["height"]
        assert T.max_levels(kind, w, h) == c["max_levels"]
        lv = T.levels(kind, w, h, c["max_levels"])
        assert lv == [T.Level(x["level"], x["width"], x["height"]) for x in c["levels"]]
        for lvl in lv:
            assert T.Level.from_proto(lvl.to_proto()) == lvl
        for m in c.get("mappings") or []:
            fine, coarse = lv[m["fine"]], lv[m["coarse"]]
            assert len(m["parents"]) == fine.width * fine.height
            for i, p in enumerate(m["parents"]):
                assert T.parent_index(fine, coarse, i) == p
            assert len(m["children"]) == coarse.width * coarse.height
            for j, ch in enumerate(m["children"]):
                assert T.child_indices(fine, coarse, j) == ch
    assert v["invalid"]
    for c in v["invalid"]:
        with pytest.raises(T.TopologyError):
            T.levels(c["kind"], c["width"], c["height"], c["levels"])

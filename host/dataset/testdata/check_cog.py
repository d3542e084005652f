"""Reads COGs back with rasterio and rio-cogeo and compares them with what was written.

Usage: check_cog.py cases.json
cases.json is a list of cases; each names the file, the raw bytes of the grid and of any
overview given to the writer, and what the file must declare. Exits non-zero on the first
mismatch, naming the case.
"""
import json
import sys
import warnings

import numpy as np
import pyproj
import rasterio
from rio_cogeo.cogeo import cog_validate

warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)

NP = {"float32": "<f4", "float64": "<f8", "int8": "i1", "int16": "<i2", "int32": "<i4",
      "uint8": "u1", "uint16": "<u2", "uint32": "<u4"}


def fail(case, msg):
    sys.exit("%s: %s" % (case["name"], msg))


def bits(a):
    """Views an array as unsigned integers so that comparison is bit for bit, NaNs included."""
    return a.view("u%d" % a.dtype.itemsize)


def next_level(a, nodata):
    """2x2 mean of the valid (not NaN, not nodata) samples; odd edges average what exists."""
    h, w = a.shape
    f = a.astype(np.float64)
    valid = ~np.isnan(f)
    if nodata is not None and not np.isnan(nodata):
        valid &= f != nodata
    f = np.where(valid, f, 0.0)
    H, W = (h + 1) // 2, (w + 1) // 2
    s = np.zeros((2 * H, 2 * W))
    n = np.zeros((2 * H, 2 * W))
    s[:h, :w] = f
    n[:h, :w] = valid
    s = s.reshape(H, 2, W, 2).sum(axis=(1, 3))
    n = n.reshape(H, 2, W, 2).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = s / n
    empty = np.nan if nodata is None else nodata
    m = np.where(n > 0, m, empty)
    if np.issubdtype(a.dtype, np.integer):
        m = np.sign(m) * np.floor(np.abs(m) + 0.5)
    return m.astype(a.dtype)


def check(case):
    path = case["path"]
    dt = np.dtype(NP[case["dtype"]])
    h, w = case["height"], case["width"]
    want = np.fromfile(case["raw"], dtype=dt).reshape(h, w)
    nodata = case.get("nodata")
    if nodata == "nan":
        nodata = float("nan")

    ok, errs, warns = cog_validate(path, strict=True, quiet=True)
    if not ok:
        fail(case, "rio-cogeo: not a valid COG: %s %s" % (errs, warns))

    with rasterio.open(path) as ds:
        if (ds.count, ds.width, ds.height, ds.dtypes[0]) != (1, w, h, case["dtype"]):
            fail(case, "shape/dtype: %s" % ((ds.count, ds.width, ds.height, ds.dtypes),))
        if ds.block_shapes[0] != (case["tile"], case["tile"]):
            fail(case, "block shape %s, want %s" % (ds.block_shapes[0], case["tile"]))
        st = ds.tags(ns="IMAGE_STRUCTURE")
        if st.get("COMPRESSION") != case["compression"].upper():
            fail(case, "compression %s" % st)
        if st.get("PREDICTOR", "1") != str(case["predictor"]):
            fail(case, "predictor %s" % st)
        if st.get("LAYOUT") != "COG":
            fail(case, "GDAL does not see the COG layout: %s" % st)
        got = ds.read(1)
        if not np.array_equal(bits(got), bits(want)):
            bad = np.argwhere(bits(got) != bits(want))[0]
            fail(case, "pixel %s: got %r want %r" % (tuple(bad), got[tuple(bad)], want[tuple(bad)]))

        if nodata is None:
            if ds.nodata is not None:
                fail(case, "unexpected nodata %r" % ds.nodata)
        elif not (ds.nodata == nodata or (np.isnan(nodata) and np.isnan(ds.nodata))):
            fail(case, "nodata %r, want %r" % (ds.nodata, nodata))

        crs = case.get("crs")
        if crs is None:
            if ds.crs is not None:
                fail(case, "unexpected CRS %s" % ds.crs)
        else:
            if ds.crs is None:
                fail(case, "no CRS")
            c = pyproj.CRS.from_wkt(ds.crs.to_wkt())
            if crs["kind"] == "sphere":
                e = c.ellipsoid
                if not c.is_geographic or e.semi_major_metre != crs["radius"] or e.semi_minor_metre != crs["radius"]:
                    fail(case, "CRS %s is not a sphere of radius %s" % (c.to_wkt(), crs["radius"]))
                if c.to_epsg() == 4326:
                    fail(case, "sphere CRS read back as WGS 84")
                names = (c.name, c.datum.name, e.name)
                if names != (crs["name"], crs["name"] + " datum", crs["name"]):
                    fail(case, "CRS, datum and ellipsoid names %s, want %r" % (names, crs["name"]))
            elif crs["kind"] == "wgs84":
                if c.to_epsg() != 4326:
                    fail(case, "CRS %s is not EPSG:4326" % c.to_wkt())
            elif crs["kind"] == "local":
                wkt = ds.crs.to_wkt()
                if not (wkt.startswith("LOCAL_CS") or wkt.startswith("ENGCRS")):
                    fail(case, "CRS is not a local engineering CRS: %s" % wkt)
                if crs["name"] not in wkt:
                    fail(case, "CRS name %r not in %s" % (crs["name"], wkt))
                units = {a.unit_name for a in c.axis_info}
                if units != {"metre"}:
                    fail(case, "axis units %s in %s" % (units, wkt))
        if "transform" in case:
            t = ds.transform
            got_t = [t.c, t.a, t.b, t.f, t.d, t.e]
            if not np.allclose(got_t, case["transform"], rtol=1e-12, atol=0):
                fail(case, "transform %s, want %s" % (got_t, case["transform"]))
        tags = ds.tags()
        for k, v in case.get("tags", {}).items():
            if tags.get(k) != v:
                fail(case, "tag %s = %r, want %r (all: %s)" % (k, tags.get(k), v, tags))
        ovr = ds.overviews(1)
        if len(ovr) != len(case["overviews"]):
            fail(case, "overview factors %s, want %d levels" % (ovr, len(case["overviews"])))

    prev = want
    for i, o in enumerate(case["overviews"]):
        with rasterio.open(path, OVERVIEW_LEVEL=i) as od:
            got = od.read(1)
        if got.shape != (o["height"], o["width"]):
            fail(case, "overview %d is %s, want %dx%d" % (i, got.shape, o["height"], o["width"]))
        if o.get("raw"):
            exp = np.fromfile(o["raw"], dtype=dt).reshape(o["height"], o["width"])
            if not np.array_equal(bits(got), bits(exp)):
                fail(case, "overview %d differs from the level given" % i)
        else:
            exp = next_level(prev, nodata)
            if np.issubdtype(dt, np.integer):
                same = np.array_equal(got, exp)
            else:
                same = np.allclose(got, exp, rtol=1e-6, atol=0, equal_nan=True)
            if not same:
                bad = np.argwhere(~np.isclose(got, exp, rtol=1e-6, equal_nan=True))[0]
                fail(case, "overview %d pixel %s: got %r, 2x2 mean is %r" % (i, tuple(bad), got[tuple(bad)], exp[tuple(bad)]))
        prev = got
    print("%s: ok (%d overviews)" % (case["name"], len(case["overviews"])))


for c in json.load(open(sys.argv[1])):
    check(c)

"""Reads GeoParquet with pyarrow and GeoPandas, and Arrow IPC with pyarrow, and compares them
with what was written.

Usage: check_tables.py cases.json
Geometries are given as coordinates and rebuilt here with shapely, so the comparison does not
rely on the writer's WKB.
"""
import json
import sys

import geopandas as gpd
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon


def fail(case, msg):
    sys.exit("%s: %s" % (case["path"], msg))


def build(g):
    if g is None:
        return None
    kind, c = g["type"], g["coords"]
    if kind == "Point":
        return Point(c)
    if kind == "LineString":
        return LineString(c)
    if kind == "Polygon":
        return Polygon(c[0], c[1:])
    if kind == "MultiPolygon":
        return MultiPolygon([Polygon(p[0], p[1:]) for p in c])
    raise ValueError(kind)


def check_geoparquet(case):
    path = case["path"]
    geo = json.loads(pq.read_metadata(path).metadata[b"geo"])
    if geo["version"] != "1.1.0" or geo["primary_column"] != "geometry":
        fail(case, "geo metadata %s" % geo)
    col = geo["columns"]["geometry"]
    if col["encoding"] != "WKB":
        fail(case, "encoding %s" % col["encoding"])
    if sorted(col["geometry_types"]) != sorted(case["geometry_types"]):
        fail(case, "geometry_types %s, want %s" % (col["geometry_types"], case["geometry_types"]))
    want_cov = {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}
    if col["covering"] != {"bbox": want_cov}:
        fail(case, "covering %s" % col["covering"])

    geoms = [build(g) for g in case["geometries"]]
    bounds = [g.bounds for g in geoms if g is not None and not g.is_empty]
    total = [min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds), max(b[3] for b in bounds)]
    if col["bbox"] != total:
        fail(case, "bbox %s, want %s" % (col["bbox"], total))

    t = pq.read_table(path)
    # The geo key is in the stored Arrow schema too, so Arrow-level readers see it.
    if t.schema.metadata is None or b"geo" not in t.schema.metadata:
        fail(case, "no geo key in the Arrow schema metadata of read_table: %s" % t.schema.metadata)
    if json.loads(t.schema.metadata[b"geo"]) != geo:
        fail(case, "geo in the Arrow schema differs from the file's: %s" % t.schema.metadata[b"geo"])
    fa = gpd.GeoDataFrame.from_arrow(t)
    if fa.geometry.name != "geometry" or len(fa) != len(geoms):
        fail(case, "from_arrow: geometry column %r, %d rows" % (fa.geometry.name, len(fa)))
    if fa.crs != gpd.read_parquet(path).crs:
        fail(case, "from_arrow CRS %s, read_parquet %s" % (fa.crs, gpd.read_parquet(path).crs))
    for i, (got, want) in enumerate(zip(fa.geometry, geoms)):
        if want is None:
            if got is not None:
                fail(case, "from_arrow row %d: %s for a null geometry" % (i, got))
        elif not shapely.equals_exact(got, want, tolerance=0):
            fail(case, "from_arrow row %d: %s, want %s" % (i, got.wkt, want.wkt))
    if t.schema.field("bbox").type != pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]):
        fail(case, "bbox column type %s" % t.schema.field("bbox").type)
    for i, (g, b) in enumerate(zip(geoms, t.column("bbox").to_pylist())):
        if g is None:
            if b is not None:
                fail(case, "row %d: bbox %s for a null geometry" % (i, b))
            continue
        if [b["xmin"], b["ymin"], b["xmax"], b["ymax"]] != list(g.bounds):
            fail(case, "row %d: bbox %s, want %s" % (i, b, g.bounds))
    for name, values in case["columns"].items():
        if t.column(name).to_pylist() != values:
            fail(case, "column %s: %s" % (name, t.column(name).to_pylist()))

    df = gpd.read_parquet(path)
    for i, (got, want) in enumerate(zip(df.geometry, geoms)):
        if want is None:
            if got is not None:
                fail(case, "row %d: %s for a null geometry" % (i, got))
        elif not shapely.equals_exact(got, want, tolerance=0):
            fail(case, "row %d: %s, want %s" % (i, got.wkt, want.wkt))
    crs = case.get("crs")
    if crs is None:
        if df.crs is None or df.crs.to_string() != "OGC:CRS84":
            fail(case, "CRS %s, want the OGC:CRS84 default" % df.crs)
    elif crs["kind"] == "sphere":
        e = df.crs.ellipsoid
        if not df.crs.is_geographic or e.semi_major_metre != crs["radius"] or e.semi_minor_metre != crs["radius"]:
            fail(case, "CRS %s is not a sphere of radius %s" % (df.crs, crs["radius"]))
    elif crs["kind"] == "local":
        if df.crs.type_name != "Engineering CRS" or df.crs.name != crs["name"]:
            fail(case, "CRS %s (%s) is not engineering CRS %r" % (df.crs.name, df.crs.type_name, crs["name"]))
        if {a.unit_name for a in df.crs.axis_info} != {"metre"}:
            fail(case, "CRS axis units %s" % [a.unit_name for a in df.crs.axis_info])

    # GeoPandas filters row groups and rows through the bbox covering.
    q = case.get("query")
    if q:
        sub = gpd.read_parquet(path, bbox=tuple(q["bbox"]))
        if sorted(sub[q["key"]].tolist()) != sorted(q["want"]):
            fail(case, "bbox query %s gave %s, want %s" % (q["bbox"], sub[q["key"]].tolist(), q["want"]))


def check_ipc(case):
    with pa.memory_map(case["path"]) as src:
        t = pa.ipc.open_file(src).read_all()
    if t.num_rows != case["rows"]:
        fail(case, "%d rows, want %d" % (t.num_rows, case["rows"]))
    for name, values in case["columns"].items():
        got = t.column(name).to_pylist()
        if got != values:
            fail(case, "column %s: %s, want %s" % (name, got, values))


for c in json.load(open(sys.argv[1])):
    {"geoparquet": check_geoparquet, "ipc": check_ipc}[c["kind"]](c)
    print("%s: ok" % c["path"])

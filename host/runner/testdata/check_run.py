"""Checks a run's output directory with readers nobody here wrote.

Usage: check_run.py OUT_DIR
Reads OUT_DIR/metadata.json and, for every artifact: the file's SHA-256 and
size; COGs with GDAL's validator (full check), rio-cogeo and rasterio
(values equal to the stage output's bytes, whose digest metadata.json gives);
NPZ with NumPy (same values; member data 64-byte aligned); GeoParquet with
GeoPandas and pyarrow; Arrow IPC with pyarrow; PNG with GDAL. Prints a JSON
summary; exits non-zero naming the first problem.
"""
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import geopandas
import numpy as np
import pyarrow.ipc
import pyarrow.parquet
import rasterio
from osgeo import gdal
from rio_cogeo.cogeo import cog_validate

out = sys.argv[1]
meta = json.load(open(os.path.join(out, "metadata.json")))
seen = {}


def fail(msg):
    sys.exit(msg)


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def grid_digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).hexdigest()


for art in meta["artifacts"]:
    path = os.path.join(out, art["path"])
    if sha(path) != art["sha256"] or os.path.getsize(path) != art["size"]:
        fail("%s: digest or size differs from metadata.json" % art["path"])
    want = meta["stages"][art["stage"]]["outputs"][art["port"]]["sha256"]
    fmt = art["format"]
    if fmt == "cog":
        r = subprocess.run([sys.executable, "-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff", "--full-check=yes", path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail("%s: GDAL's COG validator: %s%s" % (path, r.stdout, r.stderr))
        ok, errors, _ = cog_validate(path, quiet=True)
        if not ok:
            fail("%s: rio cogeo: %s" % (path, errors))
        with rasterio.open(path) as ds:
            a = ds.read(1)
            if grid_digest(a) != want:
                fail("%s: pixels differ from the stage output" % path)
            if ds.tags().get("PIPEHOST_SHA256") != want:
                fail("%s: PIPEHOST_SHA256 tag differs" % path)
            seen[path] = {"crs": ds.crs.to_wkt()[:40], "overviews": ds.overviews(1), "wrap": [ds.tags().get("PIPEHOST_WRAP_X"), ds.tags().get("PIPEHOST_WRAP_Y")]}
    elif fmt == "npz":
        z = np.load(path)
        a = z[art["port"]]
        if grid_digest(a) != want:
            fail("%s: array differs from the stage output" % path)
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with open(path, "rb") as f:
                    f.seek(info.header_offset + 26)
                    n, m = np.frombuffer(f.read(4), "<u2")
                    data = info.header_offset + 30 + n + m
                    f.seek(data)
                    head = f.read(10)
                    hlen = int.from_bytes(head[8:10], "little")
                    if (data + 10 + hlen) % 64:
                        fail("%s: member %s data at offset %d, not 64-byte aligned" % (path, info.filename, data + 10 + hlen))
        seen[path] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    elif fmt == "geoparquet":
        g = geopandas.read_parquet(path)
        geo = json.loads(pyarrow.parquet.read_metadata(path).metadata[b"geo"])
        if geo["version"] != "1.1.0" or "bbox" not in geo["columns"][geo["primary_column"]]:
            fail("%s: geo metadata %s" % (path, geo))
        b = g.total_bounds
        gb = geo["columns"]["geometry"]["bbox"]
        if any(abs(x - y) > 1e-9 for x, y in zip(b, gb)):
            fail("%s: bbox %s, geometries span %s" % (path, gb, list(b)))
        seen[path] = {"rows": len(g), "crs": g.crs.name if g.crs else None}
    elif fmt == "arrow-ipc":
        t = pyarrow.ipc.open_file(path).read_all()
        seen[path] = {"rows": t.num_rows}
    elif fmt == "png":
        ds = gdal.Open(path)
        seen[path] = {"size": [ds.RasterXSize, ds.RasterYSize], "bands": ds.RasterCount}
print(json.dumps(seen))

"""Reads PNG previews with GDAL (through rasterio) and checks size and transparency against
the grid they were made from.

Usage: check_png.py cases.json
Each case gives the PNG, the raw grid, the reduction factor and the nodata value. A pixel must
be transparent exactly when every cell it covers is NaN or nodata.
"""
import json
import sys
import warnings

import numpy as np
import rasterio

warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)

NP = {"float32": "<f4", "float64": "<f8", "int16": "<i2", "uint8": "u1"}

for case in json.load(open(sys.argv[1])):
    name = case["path"]
    a = np.fromfile(case["raw"], dtype=NP[case["dtype"]]).reshape(case["height"], case["width"]).astype(np.float64)
    valid = ~np.isnan(a)
    if case.get("nodata") is not None:
        valid &= a != case["nodata"]
    f = case["factor"]
    H, W = -(-a.shape[0] // f), -(-a.shape[1] // f)
    pv = np.zeros((H * f, W * f), dtype=bool)
    pv[: a.shape[0], : a.shape[1]] = valid
    any_valid = pv.reshape(H, f, W, f).any(axis=(1, 3))
    with rasterio.open(name) as ds:
        if ds.driver != "PNG" or ds.count not in (3, 4) or (ds.height, ds.width) != (H, W):
            sys.exit("%s: %s %d bands %dx%d, want PNG RGB(A) %dx%d" % (name, ds.driver, ds.count, ds.width, ds.height, W, H))
        img = ds.read()
    # An image without transparent pixels may be stored as plain RGB.
    alpha = img[3] if ds.count == 4 else np.full(img.shape[1:], 255, dtype=img.dtype)
    if not np.array_equal(alpha == 255, any_valid) or not np.all((alpha == 0) | (alpha == 255)):
        bad = np.argwhere((alpha == 255) != any_valid)
        sys.exit("%s: alpha wrong at %d pixels, first %s" % (name, len(bad), bad[:1].tolist()))
    rgb = img[:3].astype(np.int64)
    if rgb[:, any_valid].std() < 10:
        sys.exit("%s: visible pixels are nearly uniform" % name)
    if case["style"] == "ramp":
        # Low values are blue, high values near white.
        s = np.zeros((H * f, W * f))
        n = np.zeros((H * f, W * f))
        s[: a.shape[0], : a.shape[1]] = np.where(valid, a, 0)
        n[: a.shape[0], : a.shape[1]] = valid
        with np.errstate(invalid="ignore"):
            m = s.reshape(H, f, W, f).sum(axis=(1, 3)) / n.reshape(H, f, W, f).sum(axis=(1, 3))
        lo = np.unravel_index(np.nanargmin(m), m.shape)
        hi = np.unravel_index(np.nanargmax(m), m.shape)
        r, g, b = rgb[:, lo[0], lo[1]]
        if not (b > r + 50 and b > g + 50):
            sys.exit("%s: lowest pixel %s is not blue: %s" % (name, lo, (r, g, b)))
        if min(rgb[:, hi[0], hi[1]]) < 230:
            sys.exit("%s: highest pixel %s is not near white: %s" % (name, hi, rgb[:, hi[0], hi[1]]))
    print("%s: ok (%dx%d)" % (name, W, H))

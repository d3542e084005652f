"""Reads NPZ files back with numpy and checks the layout of their members from the zip's own
local headers.

Usage: check_npz.py cases.json
Each case names the file, whether it is compressed, and its members (name, dtype, shape, the
raw bytes written). Exits non-zero on the first mismatch.
"""
import json
import struct
import sys
import zipfile

import numpy as np

NP = {"float32": "<f4", "float64": "<f8", "int8": "i1", "int16": "<i2", "int32": "<i4",
      "int64": "<i8", "uint8": "u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8"}


def fail(case, msg):
    sys.exit("%s: %s" % (case["path"], msg))


for case in json.load(open(sys.argv[1])):
    with np.load(case["path"]) as z:
        names = sorted(z.files)
        if names != sorted(m["name"] for m in case["members"]):
            fail(case, "members %s" % names)
        for m in case["members"]:
            a = z[m["name"]]
            want = np.fromfile(m["raw"], dtype=NP[m["dtype"]]).reshape(m["shape"])
            if a.dtype != want.dtype or a.shape != want.shape or not a.flags.c_contiguous:
                fail(case, "%s: dtype %s shape %s" % (m["name"], a.dtype, a.shape))
            u = "u%d" % a.dtype.itemsize
            if not np.array_equal(a.view(u), want.view(u)):
                fail(case, "%s: values differ" % m["name"])

    with zipfile.ZipFile(case["path"]) as zf, open(case["path"], "rb") as f:
        for info in zf.infolist():
            want_method = zipfile.ZIP_DEFLATED if case["compressed"] else zipfile.ZIP_STORED
            if info.compress_type != want_method:
                fail(case, "%s: compression method %d" % (info.filename, info.compress_type))
            if case["compressed"]:
                continue
            f.seek(info.header_offset)
            sig, _, _, method, _, _, _, _, _, nlen, elen = struct.unpack("<4s5H3L2H", f.read(30))
            if sig != b"PK\x03\x04":
                fail(case, "%s: no local header at %d" % (info.filename, info.header_offset))
            start = info.header_offset + 30 + nlen + elen
            f.seek(start)
            pre = f.read(10)
            if pre[:8] != b"\x93NUMPY\x01\x00":
                fail(case, "%s: not an NPY 1.0 header: %r" % (info.filename, pre))
            (hlen,) = struct.unpack("<H", pre[8:10])
            header = f.read(hlen)
            if b"'fortran_order': False" not in header or not header.endswith(b"\n"):
                fail(case, "%s: header does not end with a newline" % info.filename)
            data = start + 10 + hlen
            if start % 64 or data % 64:
                fail(case, "%s: member starts at %d, array data at %d: not 64-byte aligned" % (info.filename, start, data))
            m = next(m for m in case["members"] if m["name"] + ".npy" == info.filename)
            raw = open(m["raw"], "rb").read()
            if f.read(len(raw)) != raw:
                fail(case, "%s: bytes at the aligned offset differ from the array" % info.filename)
    print("%s: ok (%d members)" % (case["path"], len(case["members"])))

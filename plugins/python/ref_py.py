"""The reference stages in Python, ``ref.noise-py`` and ``ref.blur-py``
(docs/reference-stage.md): vectorised numpy whose arithmetic follows the
spec step for step, so the outputs equal the Go, C++ and Rust stages bit for
bit."""

import numpy as np

import pipehost
from pipehost import ParamError, grid, param
from pipehost.seed import derive, derive_array

# Cells per chunk of rows: temporaries stay a few MiB whatever the grid's
# size, and progress and cancellation are checked between chunks.
CHUNK_CELLS = 1 << 16


def rows_per_chunk(width):
    return max(1, CHUNK_CELLS // width)


def noise_config(octaves, cell, width, height):
    """Checks the params against the spec and the grid; errors name the param."""
    if not 1 <= octaves <= 8:
        raise ParamError("octaves", f"{octaves} is out of range 1..8")
    min_cell = 1 << (octaves - 1)
    if cell < 1 or cell & (cell - 1):
        raise ParamError("cell", f"{cell} is not a power of two")
    if cell < min_cell:
        raise ParamError("cell", f"{cell} is smaller than 2^(octaves-1) = {min_cell}")
    if width % cell or height % cell:
        raise ParamError("cell", f"the {width}x{height} grid is not a multiple of cell {cell} in both dimensions")


def lattice(seed, octave, nx, ny):
    """The ny × nx lattice of one octave, values in 0..65535 (uint64)."""
    key = derive(seed, octave)
    i = np.arange(nx, dtype=np.uint64)
    j = np.arange(ny, dtype=np.uint64)
    words = (j[:, None] << np.uint64(32)) | i[None, :]
    return derive_array(key, words) >> np.uint64(48)


def axis(n, s, k, count):
    """Per coordinate: lattice index, next index (periodic) and weight 0..65535."""
    c = np.arange(n, dtype=np.uint64)
    i0 = c >> np.uint64(k)
    f = c & np.uint64(s - 1)
    w = f << np.uint64(16 - k) if k <= 16 else f >> np.uint64(k - 16)
    return i0.astype(np.intp), ((i0 + np.uint64(1)) % np.uint64(count)).astype(np.intp), w


@pipehost.stage("ref.noise-py", version="1.0.0", outputs=[grid("out", "f32")],
                params=[param("octaves", int, default=4, doc="number of octaves, 1..8"),
                        param("cell", int, default=16,
                              doc="lattice spacing of octave 0 in cells: a power of two ≥ 2^(octaves-1) "
                                  "dividing width and height")],
                doc="Integer value noise (docs/reference-stage.md), bit-identical with ref.noise-go, "
                    "ref.noise-cpp and ref.noise-rust.")
def noise(ctx, octaves, cell):
    out = ctx.output("out")
    h, w = out.shape
    noise_config(octaves, cell, w, h)
    octs = []
    with ctx.timed("lattice"):
        for o in range(octaves):
            s = cell >> o
            k = s.bit_length() - 1
            nx, ny = w // s, h // s
            octs.append((o, lattice(ctx.seed(), o, nx, ny), axis(w, s, k, nx), axis(h, s, k, ny)))
    one = np.uint64(65536)
    rows = rows_per_chunk(w)
    with ctx.timed("fill"):
        for y0 in range(0, h, rows):
            ctx.check_cancelled()
            ctx.progress(y0 / h, "noise")
            y1 = min(h, y0 + rows)
            acc = np.zeros((y1 - y0, w), dtype=np.uint64)
            for o, lat, (i0, i1, wx), (j0, j1, wy) in octs:
                r0, r1 = lat[j0[y0:y1]], lat[j1[y0:y1]]
                wyc = wy[y0:y1, None]
                top = r0[:, i0] * (one - wx) + r0[:, i1] * wx
                bottom = r1[:, i0] * (one - wx) + r1[:, i1] * wx
                val = (top * (one - wyc) + bottom * wyc) >> np.uint64(32)
                acc += val >> np.uint64(o)
            # Exact: acc < 2^17, and dividing by a power of two rounds nothing.
            out[y0:y1] = acc.astype(np.float32) / np.float32(65536)
    ctx.progress(1.0, "noise")


@pipehost.stage("ref.blur-py", version="1.0.0", inputs=[grid("in", "f32")], outputs=[grid("out", "f32")],
                params=[param("radius", int, default=1, doc="half-width of the box, 0..16")],
                doc="Box blur that respects the topology (docs/reference-stage.md), bit-identical with "
                    "ref.blur-go, ref.blur-cpp and ref.blur-rust.")
def blur(ctx, in_, radius):
    if not 0 <= radius <= 16:
        raise ParamError("radius", f"{radius} is out of range 0..16")
    out = ctx.output("out")
    g = ctx.topology.grid
    if in_.shape != (g.height, g.width) or out.shape != (g.height, g.width):
        raise pipehost.StageError(f"grid sizes differ: input {in_.shape[1]}x{in_.shape[0]}, output "
                                  f"{out.shape[1]}x{out.shape[0]}, topology {g.width}x{g.height}")
    n = float((2 * radius + 1) ** 2)
    xs = np.arange(g.width, dtype=np.int64)[None, :]
    rows = rows_per_chunk(g.width)
    with ctx.timed("blur"):
        for y0 in range(0, g.height, rows):
            ctx.check_cancelled()
            ctx.progress(y0 / g.height, "blur")
            y1 = min(g.height, y0 + rows)
            ys = np.arange(y0, y1, dtype=np.int64)[:, None]
            acc = np.zeros((y1 - y0, g.width), dtype=np.float64)
            # The spec's order for every cell: dy outer, dx inner, float64 sums.
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    rx, ry = g.resolve_clamped_arrays(xs + dx, ys + dy)
                    acc += in_[ry, rx]
            out[y0:y1] = (acc / n).astype(np.float32)
    ctx.progress(1.0, "blur")


if __name__ == "__main__":
    pipehost.serve()

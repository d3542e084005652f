"""A pipehost plugin offering ``terrain.terrace``: land cut into terraces, like
rice paddies or eroded mesas, from an elevation grid in metres."""

import pipehost  # before numpy: the plugin then answers the host before numpy has loaded
from pipehost import ParamError, grid, param

import numpy as np


@pipehost.stage(
    "terrain.terrace",           # unique across all plugins of a run
    version="1.0.0",             # bump when outputs change: it is part of the cache key
    inputs=[grid("elevation", "f32")],
    outputs=[grid("terraced", "f32")],
    params=[param("step", float, default=250.0, doc="height of one terrace, metres (> 0)"),
            param("sharpness", float, default=0.8,
                  doc="0 leaves the slope as it is, 1 makes flat treads and vertical risers")],
)
def terrace(ctx, elevation, step, sharpness):
    """Cuts land (elevation > 0) into terraces of `step` metres; the sea floor is left as it is."""
    if not step > 0:
        raise ParamError("step", f"{step} is not a positive height")
    if not 0.0 <= sharpness <= 1.0:
        raise ParamError("sharpness", f"{sharpness} is outside 0..1")
    out = ctx.output("terraced")  # writable view of the host's shared memory
    rows = max(1, (1 << 20) // out.shape[1])  # ~4 MiB of temporaries at a time
    levels = 0
    with ctx.timed("terrace"):
        for y0 in range(0, out.shape[0], rows):
            ctx.check_cancelled()
            h = elevation[y0:y0 + rows]  # read-only view, no copy
            t = h / np.float32(step)
            floor = np.floor(t)
            # Within a terrace, the slope is squeezed towards the riser.
            frac = (t - floor) ** np.float32(1.0 / (1.0 - 0.95 * sharpness))
            cut = (floor + frac) * np.float32(step)
            out[y0:y0 + rows] = np.where(h > 0, cut, h)
            if (h > 0).any():
                levels = max(levels, int(floor[h > 0].max()) + 1)
            ctx.progress(min(1.0, (y0 + rows) / out.shape[0]), "terrace")
    ctx.metric("terraces", levels)


if __name__ == "__main__":
    pipehost.serve()

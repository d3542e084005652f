"""The planet's Python stage, ``terrain.hillshade``: a shaded relief of the
eroded elevation, lit from the north-west, seamless across the topology's
wraps and poles (docs/planet.md). Vectorised numpy over the sealed input;
the u8 output is written in place into its shared-memory segment."""

import numpy as np

import pipehost
from pipehost import ParamError, grid, param, table


@pipehost.stage(
    "terrain.hillshade",
    version="1.0.0",
    doc="Shaded relief of an elevation grid (u8, 0 dark to 255 lit), sea cells flat.",
    inputs=[grid("elevation", "f32"), table("rivers", optional=True)],
    outputs=[grid("shade", "u8")],
    params=[
        param("azimuth", float, default=315.0, doc="direction the light comes from, degrees clockwise from north"),
        param("altitude", float, default=40.0, doc="height of the light above the horizon, degrees"),
        param("cell_size", float, default=19500.0, doc="metres per cell at the equator (about 40,000 km / width for an Earth-sized sphere)"),
        param("exaggeration", float, default=12.0, doc="vertical exaggeration of the slopes"),
        param("sea_level", float, default=0.0, doc="elevation below which a cell is sea and drawn flat"),
    ],
)
def hillshade(ctx, elevation, rivers, azimuth, altitude, cell_size, exaggeration, sea_level):
    if not 0.0 < altitude <= 90.0:
        raise ParamError("altitude", f"{altitude} is not in (0, 90]")
    if cell_size <= 0:
        raise ParamError("cell_size", f"{cell_size} is not positive")
    shade = ctx.output("shade")
    g = ctx.topology.grid
    xs = np.arange(g.width)[None, :]
    sea = np.float32(sea_level)
    scale = np.float32(exaggeration / (2.0 * cell_size))
    az, alt = np.radians(azimuth), np.radians(altitude)
    # Light vector in grid axes (x east, y south).
    lx, ly, lz = np.cos(alt) * np.sin(az), -np.cos(alt) * np.cos(az), np.sin(alt)
    # Bands of rows keep the working arrays (neighbour indices, slopes) a
    # few MiB whatever the grid's size: the input is read in place and never
    # copied whole.
    band = max(1, (4 << 20) // (8 * g.width))
    with ctx.timed("shade"):
        for y0 in range(0, g.height, band):
            ys = np.arange(y0, min(y0 + band, g.height))[:, None]
            # Neighbours by the topology's own edge rules: wrap, pole, clamp.
            ex, ey = g.resolve_clamped_arrays(xs + 1, ys)
            wx, wy = g.resolve_clamped_arrays(xs - 1, ys)
            nx, ny = g.resolve_clamped_arrays(xs, ys - 1)
            sx, sy = g.resolve_clamped_arrays(xs, ys + 1)
            dzdx = (np.maximum(elevation[ey, ex], sea) - np.maximum(elevation[wy, wx], sea)) * scale
            dzdy = (np.maximum(elevation[sy, sx], sea) - np.maximum(elevation[ny, nx], sea)) * scale
            lit = (lz - lx * dzdx - ly * dzdy) / np.sqrt(1.0 + dzdx * dzdx + dzdy * dzdy)
            np.clip(lit * 255.0, 0.0, 255.0, out=lit)
            shade[y0 : y0 + len(ys)] = lit.astype(np.uint8)
            ctx.progress((y0 + len(ys)) / g.height)
    if rivers is not None:
        ctx.metric("rivers", rivers.num_rows)


if __name__ == "__main__":
    pipehost.serve()

"""The surfaces grids live on (sphere, cylinder, torus, plane), their edge
rules, neighbours, sampling, geometry and the grid pyramid (docs/topology.md;
pinned by testdata/topology/*.json). The same functions as the Go, C++ and
Rust SDKs.

Cell (x, y) has index ``y * width + x``; row 0 is the top (north) row. Grid
coordinates (fx, fy) are continuous: cell (x, y) covers [x, x+1) × [y, y+1).

``Grid.resolve_clamped_arrays`` resolves whole numpy index arrays at once,
for vectorised kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._proto.pipehost.v1 import stage_pb2 as pb

#: The default sphere radius in metres (the mean Earth radius).
EARTH_RADIUS = 6_371_000.0
#: Widths and heights are in 1..MAX_SIZE.
MAX_SIZE = 1 << 30

CLAMP, REPEAT, REFLECT, POLE = "clamp", "repeat", "reflect", "pole"
WRAPS = (CLAMP, REPEAT, REFLECT, POLE)
_WRAP_TO_PB = {CLAMP: pb.WRAP_CLAMP, REPEAT: pb.WRAP_REPEAT, REFLECT: pb.WRAP_REFLECT, POLE: pb.WRAP_POLE}
_WRAP_FROM_PB = {v: k for k, v in _WRAP_TO_PB.items()}

#: Offsets of ``Grid.neighbors4``, in order N, E, S, W (dy < 0 is north).
OFFSETS4 = ((0, -1), (1, 0), (0, 1), (-1, 0))
#: Offsets of ``Grid.neighbors8``, clockwise from north.
OFFSETS8 = ((0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1))

_MAX_COORD = float(1 << 40)


class TopologyError(ValueError):
    pass


def parse_wrap(s: str) -> str:
    if s not in WRAPS:
        raise TopologyError(f"topology: unknown wrap {s!r} (want clamp, repeat, reflect or pole)")
    return s


def wrap_from_proto(w: int) -> str | None:
    if w == pb.WRAP_UNSPECIFIED:
        return None
    if w not in _WRAP_FROM_PB:
        raise TopologyError(f"topology: unknown wrap value {w}")
    return _WRAP_FROM_PB[w]


def _mirror(a: int, n: int):
    m = a % (2 * n)
    return (2 * n - 1 - m, True) if m >= n else (m, False)


def _in_range(f: float) -> bool:
    return -_MAX_COORD < f < _MAX_COORD


class Grid:
    """The lattice of a topology: size and per-axis wrap rules."""

    __slots__ = ("width", "height", "wrap_x", "wrap_y")

    def __init__(self, width: int, height: int, wrap_x: str, wrap_y: str):
        if width < 1 or height < 1:
            raise TopologyError(f"topology: empty grid {width}×{height}")
        self.width, self.height = int(width), int(height)
        self.wrap_x, self.wrap_y = parse_wrap(wrap_x), parse_wrap(wrap_y)

    def __eq__(self, o):
        return isinstance(o, Grid) and (self.width, self.height, self.wrap_x, self.wrap_y) == (
            o.width, o.height, o.wrap_x, o.wrap_y)

    def __repr__(self):
        return f"Grid({self.width}, {self.height}, {self.wrap_x!r}, {self.wrap_y!r})"

    def __len__(self):
        return self.width * self.height

    def index(self, x: int, y: int) -> int:
        return y * self.width + x

    def xy(self, i: int):
        return i % self.width, i // self.width

    def center(self, x: int, y: int):
        return x + 0.5, y + 0.5

    def uv(self, x: int, y: int):
        return (x + 0.5) / self.width, (y + 0.5) / self.height

    def cell_at_uv(self, u: float, v: float):
        fx, fy = u * self.width, v * self.height
        if not _in_range(fx) or not _in_range(fy):
            return None
        return self.resolve(math.floor(fx), math.floor(fy))

    def resolve(self, x: int, y: int):
        """Maps integer cell coordinates onto the grid by the wrap rules, y
        first (crossing a pole moves x by width/2); None past a clamp edge."""
        if 0 <= x < self.width and 0 <= y < self.height:
            return x, y
        return self._resolve(x, y, False)

    def resolve_clamped(self, x: int, y: int):
        """``resolve`` with clamp edges clamped to the edge cell: always a cell."""
        if 0 <= x < self.width and 0 <= y < self.height:
            return x, y
        return self._resolve(x, y, True)

    def _resolve(self, x, y, clamp):
        w, h = self.width, self.height
        if not 0 <= y < h:
            if self.wrap_y == REPEAT:
                y %= h
            elif self.wrap_y == REFLECT:
                y = _mirror(y, h)[0]
            elif self.wrap_y == POLE:
                y, crossed = _mirror(y, h)
                if crossed:
                    x += w // 2
            else:
                if not clamp:
                    return None
                y = min(max(y, 0), h - 1)
        if not 0 <= x < w:
            if self.wrap_x == REPEAT:
                x %= w
            elif self.wrap_x == REFLECT:
                x = _mirror(x, w)[0]
            else:  # clamp, and pole (a y rule only: nothing beyond on x)
                if not clamp:
                    return None
                x = min(max(x, 0), w - 1)
        return x, y

    def resolve_clamped_arrays(self, x, y):
        """``resolve_clamped`` of integer numpy arrays (broadcast together):
        returns the arrays (rx, ry) of int64 cell coordinates."""
        w, h = self.width, self.height
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        x, y = np.broadcast_arrays(x, y)
        x, y = x.copy(), y.copy()
        if self.wrap_y == REPEAT:
            y = np.mod(y, h)
        elif self.wrap_y in (REFLECT, POLE):
            m = np.mod(y, 2 * h)
            crossed = m >= h
            y = np.where(crossed, 2 * h - 1 - m, m)
            if self.wrap_y == POLE:
                x = x + np.where(crossed, w // 2, 0)
        else:
            y = np.clip(y, 0, h - 1)
        if self.wrap_x == REPEAT:
            x = np.mod(x, w)
        elif self.wrap_x == REFLECT:
            m = np.mod(x, 2 * w)
            x = np.where(m >= w, 2 * w - 1 - m, m)
        else:
            x = np.clip(x, 0, w - 1)
        return x, y

    def step(self, i: int, dx: int, dy: int):
        x, y = self.xy(i)
        r = self.resolve(x + dx, y + dy)
        return None if r is None else self.index(*r)

    def neighbors4(self, i: int):
        return [self.step(i, dx, dy) for dx, dy in OFFSETS4]

    def neighbors8(self, i: int):
        return [self.step(i, dx, dy) for dx, dy in OFFSETS8]

    def sample(self, data, fx: float, fy: float) -> float:
        """Bilinear interpolation of ``data`` (one value per cell, row-major,
        flat or height × width) between cell centres at grid coordinates
        (fx, fy), the four cells found with ``resolve_clamped``. NaN for
        non-finite coordinates or ones more than 2^40 cells away."""
        flat = np.asarray(data).reshape(-1)
        if flat.size != len(self):
            raise TopologyError(f"topology: sample: {flat.size} values for a {self.width}×{self.height} grid")
        px, py = fx - 0.5, fy - 0.5
        if not _in_range(px) or not _in_range(py):
            return math.nan
        xf, yf = math.floor(px), math.floor(py)
        tx, ty = px - xf, py - yf
        x0, y0 = int(xf), int(yf)

        def at(x, y):
            x, y = self.resolve_clamped(x, y)
            return float(flat[y * self.width + x])

        a, b = at(x0, y0), at(x0 + 1, y0)
        c, d = at(x0, y0 + 1), at(x0 + 1, y0 + 1)
        top = a + tx * (b - a)
        bottom = c + tx * (d - c)
        return top + ty * (bottom - top)

    def sample_uv(self, data, u: float, v: float) -> float:
        return self.sample(data, u * self.width, v * self.height)


def _check_size(kind, width, height):
    if kind not in ("sphere", "cylinder", "torus", "plane"):
        raise TopologyError(f"topology: unknown kind {kind!r} (want sphere, cylinder, torus or plane)")
    if width < 1 or height < 1 or width > MAX_SIZE or height > MAX_SIZE:
        raise TopologyError(f"topology {kind}: grid {width}×{height}: width and height must be in 1..{MAX_SIZE}")
    if kind == "sphere" and width % 2:
        raise TopologyError(f"topology sphere: width {width} is odd: crossing a pole moves half the width, so it must be even")


def _length(kind, what, v):
    if not math.isfinite(v) or v < 0:
        raise TopologyError(f"topology {kind}: {what} {v}: must be a positive number of metres (0 for the default)")
    return float(v)


def _want_wrap(kind, axis, w, ok):
    if w is not None and w not in ok:
        raise TopologyError(f"topology {kind}: wrap {axis} {w} not allowed (want {' or '.join(ok)})")


@dataclass(frozen=True)
class Level:
    """One level of the grid pyramid; level 0 is the native grid."""
    level: int
    width: int
    height: int

    @staticmethod
    def from_proto(g) -> "Level":
        return Level(g.level, g.width, g.height)

    def to_proto(self):
        return pb.GridInfo(level=self.level, width=self.width, height=self.height)


class Topology:
    """A grid on a surface. Lengths in metres, areas in square metres.

    ``kind`` is "sphere", "cylinder", "torus" or "plane"; ``grid`` its
    lattice; ``radius``, ``minor_radius``, ``length`` (cylinder) and
    ``extent_x``/``extent_y`` (plane) its lengths."""

    def __init__(self, kind, width, height, wrap_x=None, wrap_y=None, radius=0.0, minor_radius=0.0):
        width, height = int(width), int(height)
        _check_size(kind, width, height)
        r = _length(kind, "radius", radius)
        wf, hf = float(width), float(height)
        self.kind = kind
        self.radius = 0.0
        self.minor_radius = 0.0
        self.length = 0.0
        self.extent_x = self.extent_y = 0.0
        if kind == "sphere":
            _want_wrap(kind, "x", wrap_x, (REPEAT,))
            _want_wrap(kind, "y", wrap_y, (POLE,))
            self.grid = Grid(width, height, REPEAT, POLE)
            self.radius = r or EARTH_RADIUS
        elif kind == "cylinder":
            _want_wrap(kind, "x", wrap_x, (REPEAT,))
            _want_wrap(kind, "y", wrap_y, (CLAMP, REFLECT))
            self.radius = r or wf / (2 * math.pi)
            self.grid = Grid(width, height, REPEAT, wrap_y or CLAMP)
            self.length = hf * 2.0 * math.pi * self.radius / wf
        elif kind == "torus":
            _want_wrap(kind, "x", wrap_x, (REPEAT,))
            _want_wrap(kind, "y", wrap_y, (REPEAT,))
            mr = _length(kind, "minor radius", minor_radius)
            self.grid = Grid(width, height, REPEAT, REPEAT)
            self.radius = r or wf / (2 * math.pi)
            self.minor_radius = mr or hf / (2 * math.pi)
        else:
            _want_wrap(kind, "x", wrap_x, (CLAMP, REFLECT))
            _want_wrap(kind, "y", wrap_y, (CLAMP, REFLECT))
            self.grid = Grid(width, height, wrap_x or CLAMP, wrap_y or CLAMP)
            self.extent_x, self.extent_y = wf, hf

    @classmethod
    def load(cls, kind, width, height, radius=0.0, minor_radius=0.0, edge=None) -> "Topology":
        """Builds a topology from configuration values; ``edge`` is the policy
        at non-periodic edges (cylinder caps, both plane axes)."""
        edge = parse_wrap(edge) if edge else None
        wx = wy = None
        if kind == "cylinder":
            wy = edge
        elif kind == "plane":
            wx = wy = edge
        elif kind in ("sphere", "torus") and edge:
            raise TopologyError(f"topology {kind!r}: edge policy {edge} set, but only a cylinder or a plane has edges")
        return cls(kind, width, height, wx, wy, radius, minor_radius)

    @classmethod
    def from_proto(cls, t, width: int, height: int) -> "Topology":
        """Rebuilds a topology from its wire form and the native (level 0) size."""
        return cls(t.kind, width, height, wrap_from_proto(t.wrap_x), wrap_from_proto(t.wrap_y),
                   t.radius, t.minor_radius)

    def to_proto(self):
        return pb.Topology(kind=self.kind, wrap_x=_WRAP_TO_PB[self.grid.wrap_x],
                           wrap_y=_WRAP_TO_PB[self.grid.wrap_y], radius=self.radius,
                           minor_radius=self.minor_radius)

    def with_size(self, width: int, height: int) -> "Topology":
        """The same surface on a grid of another size (a pyramid level)."""
        _check_size(self.kind, width, height)
        t = object.__new__(Topology)
        t.__dict__.update(self.__dict__)
        t.grid = Grid(width, height, self.grid.wrap_x, self.grid.wrap_y)
        return t

    def __eq__(self, o):
        return isinstance(o, Topology) and self.__dict__ == o.__dict__

    def __repr__(self):
        return f"Topology({self.kind!r}, {self.width}×{self.height}, radius={self.radius})"

    @property
    def width(self):
        return self.grid.width

    @property
    def height(self):
        return self.grid.height

    def _cell_size(self):
        w, h = float(self.grid.width), float(self.grid.height)
        if self.kind == "sphere":
            return math.nan, math.nan
        if self.kind == "cylinder":
            return 2.0 * math.pi * self.radius / w, self.length / h
        if self.kind == "torus":
            return 2.0 * math.pi * self.radius / w, 2.0 * math.pi * self.minor_radius / h
        return self.extent_x / w, self.extent_y / h

    def lon_lat_at(self, fx, fy):
        """Longitude and latitude in degrees at grid coordinates (sphere only)."""
        if self.kind != "sphere":
            return None
        return -180.0 + 360.0 * fx / self.grid.width, 90.0 - 180.0 * fy / self.grid.height

    def lon_lat(self, x, y):
        return self.lon_lat_at(x + 0.5, y + 0.5)

    def grid_at(self, lon, lat):
        """Grid coordinates of a longitude and latitude (sphere only), fx in [0, W)."""
        if self.kind != "sphere":
            return None
        w = float(self.grid.width)
        fx = math.fmod((lon + 180.0) / 360.0 * w, w)
        if fx < 0:
            fx += w
        if fx >= w:
            fx = 0.0
        return fx, (90.0 - lat) / 180.0 * self.grid.height

    def cell_of(self, lon, lat):
        """The cell containing a longitude and latitude (sphere only)."""
        g = self.grid_at(lon, lat)
        if g is None:
            return None
        fx, fy = g
        x = min(math.floor(fx), self.grid.width - 1)
        y = min(max(math.floor(fy), 0), self.grid.height - 1)
        return x, y

    def row_area(self, y):
        """The area of one cell of row ``y``."""
        if self.kind == "sphere":
            h = float(self.grid.height)
            phi = (0.5 - (y + 0.5) / h) * math.pi
            return (self.radius * self.radius * (2.0 * math.pi / self.grid.width) * 2.0
                    * math.cos(phi) * math.sin(math.pi / (2.0 * h)))
        cw, ch = self._cell_size()
        return cw * ch

    def cell_area(self, i):
        return self.row_area(i // self.grid.width)

    def area(self):
        if self.kind == "sphere":
            return 4.0 * math.pi * self.radius * self.radius
        if self.kind == "cylinder":
            return 2.0 * math.pi * self.radius * self.length
        if self.kind == "torus":
            return 4.0 * math.pi * math.pi * self.radius * self.minor_radius
        return self.extent_x * self.extent_y

    def distance(self, a, b):
        """Shortest distance along the surface between the centres of cells a and b."""
        ax, ay = self.grid.xy(a)
        bx, by = self.grid.xy(b)
        return self.distance_at(ax + 0.5, ay + 0.5, bx + 0.5, by + 0.5)

    def distance_at(self, fx1, fy1, fx2, fy2):
        w, h = float(self.grid.width), float(self.grid.height)
        if self.kind == "sphere":
            p = unit_vector(*self.lon_lat_at(fx1, fy1))
            q = unit_vector(*self.lon_lat_at(fx2, fy2))
            cx = p[1] * q[2] - p[2] * q[1]
            cy = p[2] * q[0] - p[0] * q[2]
            cz = p[0] * q[1] - p[1] * q[0]
            cross = math.sqrt(cx * cx + cy * cy + cz * cz)
            return self.radius * math.atan2(cross, p[0] * q[0] + p[1] * q[1] + p[2] * q[2])
        cw, ch = self._cell_size()
        if self.kind == "cylinder":
            return math.hypot(_wrapped(fx1 - fx2, w) * cw, (fy1 - fy2) * ch)
        if self.kind == "torus":
            return math.hypot(_wrapped(fx1 - fx2, w) * cw, _wrapped(fy1 - fy2, h) * ch)
        return math.hypot((fx1 - fx2) * cw, (fy1 - fy2) * ch)

    @property
    def embed_dim(self):
        """How many components of ``embed`` count: 3, 3, 4 or 2."""
        return {"sphere": 3, "cylinder": 3, "torus": 4, "plane": 2}[self.kind]

    def embed(self, fx, fy):
        """A point in metres, continuous across every seam (for seamless
        noise); 4 components, the unused ones 0."""
        w, h = float(self.grid.width), float(self.grid.height)
        if self.kind == "sphere":
            v = unit_vector(*self.lon_lat_at(fx, fy))
            return [self.radius * v[0], self.radius * v[1], self.radius * v[2], 0.0]
        if self.kind == "cylinder":
            t = 2.0 * math.pi * fx / w
            return [self.radius * math.cos(t), self.radius * math.sin(t), self.length * (0.5 - fy / h), 0.0]
        if self.kind == "torus":
            t = 2.0 * math.pi * fx / w
            p = 2.0 * math.pi * fy / h
            return [self.radius * math.cos(t), self.radius * math.sin(t),
                    self.minor_radius * math.cos(p), self.minor_radius * math.sin(p)]
        cw, ch = self._cell_size()
        return [fx * cw, fy * ch, 0.0, 0.0]


def unit_vector(lon, lat):
    """The point of the unit sphere at a longitude and latitude in degrees."""
    lo, la = lon * math.pi / 180.0, lat * math.pi / 180.0
    cp = math.cos(la)
    return [cp * math.cos(lo), cp * math.sin(lo), math.sin(la)]


def _wrapped(d, n):
    d = math.fmod(d, n)
    if d > n / 2.0:
        return d - n
    if d < -n / 2.0:
        return d + n
    return d


def next_size(kind, width, height):
    """The size of the level below: each dimension halves rounding up; a
    sphere's width then rounds up to even."""
    w, h = (width + 1) // 2, (height + 1) // 2
    if kind == "sphere":
        w += w % 2
    return w, h


def max_levels(kind, width, height):
    """How many downsampled levels a grid supports (while both dimensions shrink)."""
    n = 0
    while True:
        w, h = next_size(kind, width, height)
        if w >= width or h >= height:
            return n
        width, height = w, h
        n += 1


def levels(kind, width, height, count):
    """The native level and ``count`` downsampled ones."""
    _check_size(kind, width, height)
    m = max_levels(kind, width, height)
    if count < 0 or count > m:
        raise TopologyError(
            f"topology {kind}: {count} pyramid levels requested for a {width}×{height} grid: want 0..{m} "
            "(each level halves both dimensions, and both must still shrink)")
    out = [Level(0, width, height)]
    for i in range(1, count + 1):
        w, h = next_size(kind, out[-1].width, out[-1].height)
        out.append(Level(i, w, h))
    return out


def _parent_axis(x, n, m):
    return (2 * x + 1) * m // (2 * n)


def _children_axis(p, n, m):
    def first(q):
        return (2 * n * q + m - 1) // (2 * m)
    return first(p), min(first(p + 1), n)


def parent(fine: Level, coarse: Level, x, y):
    """The cell of ``coarse`` containing the centre of cell (x, y) of ``fine``."""
    return _parent_axis(x, fine.width, coarse.width), _parent_axis(y, fine.height, coarse.height)


def parent_index(fine: Level, coarse: Level, i):
    px, py = parent(fine, coarse, i % fine.width, i // fine.width)
    return py * coarse.width + px


def children(fine: Level, coarse: Level, px, py):
    """The cells of ``fine`` whose parent is (px, py): half-open (x0, y0, x1, y1)."""
    x0, x1 = _children_axis(px, fine.width, coarse.width)
    y0, y1 = _children_axis(py, fine.height, coarse.height)
    return x0, y0, x1, y1


def child_indices(fine: Level, coarse: Level, j):
    x0, y0, x1, y1 = children(fine, coarse, j % coarse.width, j // coarse.width)
    return [y * fine.width + x for y in range(y0, y1) for x in range(x0, x1)]

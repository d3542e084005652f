//! The surfaces grids live on — sphere, cylinder, torus, plane — their edge
//! rules, neighbours, sampling, geometry and the grid pyramid
//! (docs/topology.md; pinned by testdata/topology/*.json).
//!
//! Cell (x, y) has index `y * width + x`; row 0 is the top (north) row. Grid
//! coordinates (fx, fy) are continuous: cell (x, y) covers [x, x+1) × [y, y+1).

use std::f64::consts::PI;

use crate::pb;
use crate::Error;

/// The default sphere radius in metres (the mean Earth radius).
pub const EARTH_RADIUS: f64 = 6_371_000.0;

/// Widths and heights are in `1..=MAX_SIZE`.
pub const MAX_SIZE: i64 = 1 << 30;

/// What lies past a grid edge on one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wrap {
    /// Nothing: neighbour lookups report none; sampling uses the edge cell.
    Clamp,
    /// Periodic: the far edge is the neighbour.
    Repeat,
    /// Mirrored, the edge cell repeated (-1 is cell 0, -2 is cell 1).
    Reflect,
    /// Sphere latitude: past a pole, the same row at longitude + 180°.
    Pole,
}

impl Wrap {
    /// The short lower-case name used in configs and test vectors.
    pub fn name(self) -> &'static str {
        match self {
            Wrap::Clamp => "clamp",
            Wrap::Repeat => "repeat",
            Wrap::Reflect => "reflect",
            Wrap::Pole => "pole",
        }
    }

    /// Parses a name written by [`Wrap::name`].
    pub fn parse(s: &str) -> Result<Wrap, Error> {
        match s {
            "clamp" => Ok(Wrap::Clamp),
            "repeat" => Ok(Wrap::Repeat),
            "reflect" => Ok(Wrap::Reflect),
            "pole" => Ok(Wrap::Pole),
            _ => Err(Error::new(format!(
                "topology: unknown wrap {s:?} (want clamp, repeat, reflect or pole)"
            ))),
        }
    }

    /// The wire value, `pb::Wrap` as i32.
    pub fn to_proto(self) -> pb::Wrap {
        match self {
            Wrap::Clamp => pb::Wrap::Clamp,
            Wrap::Repeat => pb::Wrap::Repeat,
            Wrap::Reflect => pb::Wrap::Reflect,
            Wrap::Pole => pb::Wrap::Pole,
        }
    }

    /// Reads a wire value; `None` for `WRAP_UNSPECIFIED`.
    pub fn from_proto(w: i32) -> Result<Option<Wrap>, Error> {
        match pb::Wrap::try_from(w) {
            Ok(pb::Wrap::Unspecified) => Ok(None),
            Ok(pb::Wrap::Clamp) => Ok(Some(Wrap::Clamp)),
            Ok(pb::Wrap::Repeat) => Ok(Some(Wrap::Repeat)),
            Ok(pb::Wrap::Reflect) => Ok(Some(Wrap::Reflect)),
            Ok(pb::Wrap::Pole) => Ok(Some(Wrap::Pole)),
            Err(_) => Err(Error::new(format!("topology: unknown wrap value {w}"))),
        }
    }
}

/// Offsets of [`Grid::neighbors4`], in order N, E, S, W (dy < 0 is north).
pub const OFFSETS4: [(i64, i64); 4] = [(0, -1), (1, 0), (0, 1), (-1, 0)];
/// Offsets of [`Grid::neighbors8`], clockwise from north.
pub const OFFSETS8: [(i64, i64); 8] = [
    (0, -1),
    (1, -1),
    (1, 0),
    (1, 1),
    (0, 1),
    (-1, 1),
    (-1, 0),
    (-1, -1),
];

/// The lattice of a topology: size and per-axis wrap rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    w: usize,
    h: usize,
    wrap_x: Wrap,
    wrap_y: Wrap,
}

fn modulo(a: i64, n: i64) -> i64 {
    a.rem_euclid(n)
}

/// Folds `a` onto [0, n) with the edge cell repeated (period 2n); reports
/// whether the mirror applied.
fn mirror(a: i64, n: i64) -> (i64, bool) {
    let m = modulo(a, 2 * n);
    if m >= n {
        (2 * n - 1 - m, true)
    } else {
        (m, false)
    }
}

impl Grid {
    /// A grid of `width × height` cells with the given wrap rules. Sizes must
    /// be at least 1 (a [`Topology`] checks everything else).
    pub fn new(width: usize, height: usize, wrap_x: Wrap, wrap_y: Wrap) -> Grid {
        assert!(
            width >= 1 && height >= 1,
            "topology: empty grid {width}×{height}"
        );
        Grid {
            w: width,
            h: height,
            wrap_x,
            wrap_y,
        }
    }

    pub fn width(&self) -> usize {
        self.w
    }
    pub fn height(&self) -> usize {
        self.h
    }
    /// The number of cells.
    pub fn len(&self) -> usize {
        self.w * self.h
    }
    /// Always false: a grid has at least one cell.
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn wrap_x(&self) -> Wrap {
        self.wrap_x
    }
    pub fn wrap_y(&self) -> Wrap {
        self.wrap_y
    }

    /// The index of cell (x, y), which must be on the grid.
    #[inline]
    pub fn index(&self, x: usize, y: usize) -> usize {
        y * self.w + x
    }

    /// The column and row of cell index `i`.
    #[inline]
    pub fn xy(&self, i: usize) -> (usize, usize) {
        (i % self.w, i / self.w)
    }

    /// Grid coordinates of the centre of cell (x, y).
    pub fn center(&self, x: usize, y: usize) -> (f64, f64) {
        (x as f64 + 0.5, y as f64 + 0.5)
    }

    /// Normalised coordinates of the centre of cell (x, y), in (0, 1).
    pub fn uv(&self, x: usize, y: usize) -> (f64, f64) {
        (
            (x as f64 + 0.5) / self.w as f64,
            (y as f64 + 0.5) / self.h as f64,
        )
    }

    /// The cell containing normalised coordinates (u, v); positions outside
    /// [0, 1) follow [`Grid::resolve`], so `None` past a clamp edge.
    pub fn cell_at_uv(&self, u: f64, v: f64) -> Option<(usize, usize)> {
        let fx = u * self.w as f64;
        let fy = v * self.h as f64;
        if !in_range(fx) || !in_range(fy) {
            return None;
        }
        self.resolve(fx.floor() as i64, fy.floor() as i64)
    }

    /// Maps any integer cell coordinates onto the grid by the wrap rules, y
    /// first (crossing a pole moves x by width/2). `None` past a clamp edge.
    #[inline]
    pub fn resolve(&self, x: i64, y: i64) -> Option<(usize, usize)> {
        if (x as u64) < self.w as u64 && (y as u64) < self.h as u64 {
            return Some((x as usize, y as usize));
        }
        self.resolve_slow(x, y, false)
    }

    /// [`Grid::resolve`] with clamp edges clamped to the edge cell (the rule
    /// sampling and the reference blur use): always a cell.
    #[inline]
    pub fn resolve_clamped(&self, x: i64, y: i64) -> (usize, usize) {
        if (x as u64) < self.w as u64 && (y as u64) < self.h as u64 {
            return (x as usize, y as usize);
        }
        self.resolve_slow(x, y, true)
            .expect("clamped resolution always finds a cell")
    }

    fn resolve_slow(&self, mut x: i64, mut y: i64, clamp: bool) -> Option<(usize, usize)> {
        let (w, h) = (self.w as i64, self.h as i64);
        if !(0..h).contains(&y) {
            match self.wrap_y {
                Wrap::Repeat => y = modulo(y, h),
                Wrap::Reflect => y = mirror(y, h).0,
                Wrap::Pole => {
                    let (m, crossed) = mirror(y, h);
                    y = m;
                    if crossed {
                        x += w / 2;
                    }
                }
                Wrap::Clamp => {
                    if !clamp {
                        return None;
                    }
                    y = y.clamp(0, h - 1);
                }
            }
        }
        if !(0..w).contains(&x) {
            match self.wrap_x {
                Wrap::Repeat => x = modulo(x, w),
                Wrap::Reflect => x = mirror(x, w).0,
                // A pole is a y rule only; on x it has no cell beyond, like clamp.
                Wrap::Clamp | Wrap::Pole => {
                    if !clamp {
                        return None;
                    }
                    x = x.clamp(0, w - 1);
                }
            }
        }
        Some((x as usize, y as usize))
    }

    /// The cell reached from cell `i` by (dx, dy); `None` past a clamp edge.
    pub fn step(&self, i: usize, dx: i64, dy: i64) -> Option<usize> {
        let (x, y) = self.xy(i);
        self.resolve(x as i64 + dx, y as i64 + dy)
            .map(|(x, y)| self.index(x, y))
    }

    /// The N, E, S, W neighbours of cell `i` ([`OFFSETS4`]); `None` past a
    /// clamp edge. On small grids an entry may repeat or be `i` itself.
    pub fn neighbors4(&self, i: usize) -> [Option<usize>; 4] {
        OFFSETS4.map(|(dx, dy)| self.step(i, dx, dy))
    }

    /// The 8 neighbours of cell `i` clockwise from north ([`OFFSETS8`]).
    pub fn neighbors8(&self, i: usize) -> [Option<usize>; 8] {
        OFFSETS8.map(|(dx, dy)| self.step(i, dx, dy))
    }

    /// Bilinear interpolation of `data` (one value per cell, row-major)
    /// between cell centres at grid coordinates (fx, fy); the four cells are
    /// found with [`Grid::resolve_clamped`]. NaN for non-finite coordinates or
    /// ones more than 2^40 cells away.
    ///
    /// # Panics
    /// If `data.len()` is not the number of cells.
    pub fn sample<T: Number>(&self, data: &[T], fx: f64, fy: f64) -> f64 {
        assert_eq!(
            data.len(),
            self.len(),
            "topology: sample: {} values for a {}×{} grid",
            data.len(),
            self.w,
            self.h
        );
        let (px, py) = (fx - 0.5, fy - 0.5);
        if !in_range(px) || !in_range(py) {
            return f64::NAN;
        }
        let (xf, yf) = (px.floor(), py.floor());
        let (tx, ty) = (px - xf, py - yf);
        let (x0, y0) = (xf as i64, yf as i64);
        let at = |x: i64, y: i64| {
            let (x, y) = self.resolve_clamped(x, y);
            data[y * self.w + x].to_f64()
        };
        let (a, b) = (at(x0, y0), at(x0 + 1, y0));
        let (c, d) = (at(x0, y0 + 1), at(x0 + 1, y0 + 1));
        let top = a + tx * (b - a);
        let bottom = c + tx * (d - c);
        top + ty * (bottom - top)
    }

    /// [`Grid::sample`] at normalised coordinates.
    pub fn sample_uv<T: Number>(&self, data: &[T], u: f64, v: f64) -> f64 {
        self.sample(data, u * self.w as f64, v * self.h as f64)
    }
}

const MAX_COORD: f64 = (1u64 << 40) as f64;

fn in_range(f: f64) -> bool {
    f > -MAX_COORD && f < MAX_COORD
}

/// Element types [`Grid::sample`] reads.
pub trait Number: Copy {
    fn to_f64(self) -> f64;
}

macro_rules! number {
    ($($t:ty),*) => {$(
        impl Number for $t {
            #[inline]
            fn to_f64(self) -> f64 { self as f64 }
        }
    )*};
}
number!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize, f32, f64);

/// The surface kind and its lengths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Surface {
    /// An equirectangular lon/lat grid on a sphere of this radius.
    Sphere { radius: f64 },
    /// x around the cylinder, y along its axis; `length` is fixed at load.
    Cylinder { radius: f64, length: f64 },
    /// A flat (Clifford) torus: a 2πR × 2πr rectangle with edges glued.
    Torus { radius: f64, minor_radius: f64 },
    /// A flat rectangle of `extent_x × extent_y` metres.
    Plane { extent_x: f64, extent_y: f64 },
}

/// A grid on a surface. Lengths in metres, areas in square metres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Topology {
    grid: Grid,
    surface: Surface,
}

/// Settings of [`Topology::load`] beyond kind and size; zero values take
/// the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Options {
    /// Sphere radius (default [`EARTH_RADIUS`]), cylinder radius or torus major
    /// radius (default width/2π).
    pub radius: f64,
    /// Torus minor radius (default height/2π).
    pub minor_radius: f64,
    /// The policy at non-periodic edges (cylinder caps, both plane axes):
    /// clamp (default) or reflect.
    pub edge: Option<Wrap>,
}

fn check_size(kind: &str, width: i64, height: i64) -> Result<(), Error> {
    if !matches!(kind, "sphere" | "cylinder" | "torus" | "plane") {
        return Err(Error::new(format!(
            "topology: unknown kind {kind:?} (want sphere, cylinder, torus or plane)"
        )));
    }
    if width < 1 || height < 1 || width > MAX_SIZE || height > MAX_SIZE {
        return Err(Error::new(format!(
            "topology {kind}: grid {width}×{height}: width and height must be in 1..{MAX_SIZE}"
        )));
    }
    if kind == "sphere" && width % 2 != 0 {
        return Err(Error::new(format!(
            "topology sphere: width {width} is odd: crossing a pole moves half the width, so it must be even"
        )));
    }
    Ok(())
}

fn length(kind: &str, what: &str, v: f64) -> Result<f64, Error> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::new(format!(
            "topology {kind}: {what} {v}: must be a positive number of metres (0 for the default)"
        )));
    }
    Ok(v)
}

fn or_default(v: f64, def: f64) -> f64 {
    if v == 0.0 {
        def
    } else {
        v
    }
}

fn want_wrap(kind: &str, axis: &str, w: Option<Wrap>, ok: &[Wrap]) -> Result<(), Error> {
    match w {
        None => Ok(()),
        Some(w) if ok.contains(&w) => Ok(()),
        Some(w) => {
            let names: Vec<&str> = ok.iter().map(|o| o.name()).collect();
            Err(Error::new(format!(
                "topology {kind}: wrap {axis} {} not allowed (want {})",
                w.name(),
                names.join(" or ")
            )))
        }
    }
}

impl Topology {
    /// Builds a topology from configuration values (`docs/topology.md`).
    pub fn load(kind: &str, width: i64, height: i64, opts: Options) -> Result<Topology, Error> {
        let (mut wx, mut wy) = (None, None);
        match kind {
            "cylinder" => wy = opts.edge,
            "plane" => (wx, wy) = (opts.edge, opts.edge),
            "sphere" | "torus" => {
                if let Some(e) = opts.edge {
                    return Err(Error::new(format!(
                        "topology {kind:?}: edge policy {} set, but only a cylinder or a plane has edges",
                        e.name()
                    )));
                }
            }
            _ => {}
        }
        Topology::new(kind, width, height, wx, wy, opts.radius, opts.minor_radius)
    }

    /// Rebuilds a topology from its wire form and the **native** (level 0)
    /// grid size; use [`Topology::with_size`] for a pyramid level.
    pub fn from_proto(t: &pb::Topology, width: u32, height: u32) -> Result<Topology, Error> {
        Topology::new(
            &t.kind,
            i64::from(width),
            i64::from(height),
            Wrap::from_proto(t.wrap_x)?,
            Wrap::from_proto(t.wrap_y)?,
            t.radius,
            t.minor_radius,
        )
    }

    /// The general constructor: unset wraps and zero radii take the defaults.
    pub fn new(
        kind: &str,
        width: i64,
        height: i64,
        wrap_x: Option<Wrap>,
        wrap_y: Option<Wrap>,
        radius: f64,
        minor_radius: f64,
    ) -> Result<Topology, Error> {
        check_size(kind, width, height)?;
        let r = length(kind, "radius", radius)?;
        let (w, h) = (width as usize, height as usize);
        let (wf, hf) = (width as f64, height as f64);
        let t = match kind {
            "sphere" => {
                want_wrap(kind, "x", wrap_x, &[Wrap::Repeat])?;
                want_wrap(kind, "y", wrap_y, &[Wrap::Pole])?;
                Topology {
                    grid: Grid::new(w, h, Wrap::Repeat, Wrap::Pole),
                    surface: Surface::Sphere {
                        radius: or_default(r, EARTH_RADIUS),
                    },
                }
            }
            "cylinder" => {
                want_wrap(kind, "x", wrap_x, &[Wrap::Repeat])?;
                want_wrap(kind, "y", wrap_y, &[Wrap::Clamp, Wrap::Reflect])?;
                let r = or_default(r, wf / (2.0 * PI));
                Topology {
                    grid: Grid::new(w, h, Wrap::Repeat, wrap_y.unwrap_or(Wrap::Clamp)),
                    surface: Surface::Cylinder {
                        radius: r,
                        length: hf * 2.0 * PI * r / wf,
                    },
                }
            }
            "torus" => {
                want_wrap(kind, "x", wrap_x, &[Wrap::Repeat])?;
                want_wrap(kind, "y", wrap_y, &[Wrap::Repeat])?;
                let mr = length(kind, "minor radius", minor_radius)?;
                Topology {
                    grid: Grid::new(w, h, Wrap::Repeat, Wrap::Repeat),
                    surface: Surface::Torus {
                        radius: or_default(r, wf / (2.0 * PI)),
                        minor_radius: or_default(mr, hf / (2.0 * PI)),
                    },
                }
            }
            _ => {
                want_wrap(kind, "x", wrap_x, &[Wrap::Clamp, Wrap::Reflect])?;
                want_wrap(kind, "y", wrap_y, &[Wrap::Clamp, Wrap::Reflect])?;
                Topology {
                    grid: Grid::new(
                        w,
                        h,
                        wrap_x.unwrap_or(Wrap::Clamp),
                        wrap_y.unwrap_or(Wrap::Clamp),
                    ),
                    surface: Surface::Plane {
                        extent_x: wf,
                        extent_y: hf,
                    },
                }
            }
        };
        Ok(t)
    }

    /// "sphere", "cylinder", "torus" or "plane".
    pub fn kind(&self) -> &'static str {
        match self.surface {
            Surface::Sphere { .. } => "sphere",
            Surface::Cylinder { .. } => "cylinder",
            Surface::Torus { .. } => "torus",
            Surface::Plane { .. } => "plane",
        }
    }

    pub fn grid(&self) -> &Grid {
        &self.grid
    }
    pub fn surface(&self) -> Surface {
        self.surface
    }
    pub fn width(&self) -> usize {
        self.grid.w
    }
    pub fn height(&self) -> usize {
        self.grid.h
    }

    /// Sphere radius, cylinder radius or torus major radius; 0 for a plane.
    pub fn radius(&self) -> f64 {
        match self.surface {
            Surface::Sphere { radius }
            | Surface::Cylinder { radius, .. }
            | Surface::Torus { radius, .. } => radius,
            Surface::Plane { .. } => 0.0,
        }
    }

    /// Torus minor radius; 0 for other kinds.
    pub fn minor_radius(&self) -> f64 {
        match self.surface {
            Surface::Torus { minor_radius, .. } => minor_radius,
            _ => 0.0,
        }
    }

    /// The same surface on a grid of another size (a pyramid level).
    pub fn with_size(&self, width: usize, height: usize) -> Result<Topology, Error> {
        check_size(self.kind(), width as i64, height as i64)?;
        Ok(Topology {
            grid: Grid {
                w: width,
                h: height,
                ..self.grid
            },
            surface: self.surface,
        })
    }

    /// The wire form (rebuild with [`Topology::from_proto`] and the native size).
    pub fn to_proto(&self) -> pb::Topology {
        pb::Topology {
            kind: self.kind().to_string(),
            wrap_x: self.grid.wrap_x.to_proto() as i32,
            wrap_y: self.grid.wrap_y.to_proto() as i32,
            radius: self.radius(),
            minor_radius: self.minor_radius(),
        }
    }

    fn cell_size(&self) -> (f64, f64) {
        let (w, h) = (self.grid.w as f64, self.grid.h as f64);
        match self.surface {
            Surface::Sphere { .. } => (f64::NAN, f64::NAN),
            Surface::Cylinder { radius, length } => (2.0 * PI * radius / w, length / h),
            Surface::Torus {
                radius,
                minor_radius,
            } => (2.0 * PI * radius / w, 2.0 * PI * minor_radius / h),
            Surface::Plane { extent_x, extent_y } => (extent_x / w, extent_y / h),
        }
    }

    /// Longitude and latitude in degrees at grid coordinates (sphere only).
    pub fn lon_lat_at(&self, fx: f64, fy: f64) -> Option<(f64, f64)> {
        match self.surface {
            Surface::Sphere { .. } => Some((
                -180.0 + 360.0 * fx / self.grid.w as f64,
                90.0 - 180.0 * fy / self.grid.h as f64,
            )),
            _ => None,
        }
    }

    /// Longitude and latitude in degrees of the centre of cell (x, y) (sphere only).
    pub fn lon_lat(&self, x: usize, y: usize) -> Option<(f64, f64)> {
        self.lon_lat_at(x as f64 + 0.5, y as f64 + 0.5)
    }

    /// Grid coordinates of a longitude and latitude (sphere only), fx in [0, W).
    pub fn grid_at(&self, lon: f64, lat: f64) -> Option<(f64, f64)> {
        if !matches!(self.surface, Surface::Sphere { .. }) {
            return None;
        }
        let w = self.grid.w as f64;
        let mut fx = ((lon + 180.0) / 360.0 * w) % w;
        if fx < 0.0 {
            fx += w;
        }
        if fx >= w {
            fx = 0.0;
        }
        Some((fx, (90.0 - lat) / 180.0 * self.grid.h as f64))
    }

    /// The cell containing a longitude and latitude (sphere only); any finite
    /// longitude, latitudes clamped so each pole belongs to its polar row.
    pub fn cell_of(&self, lon: f64, lat: f64) -> Option<(usize, usize)> {
        let (fx, fy) = self.grid_at(lon, lat)?;
        let (w, h) = (self.grid.w as i64, self.grid.h as i64);
        let x = (fx.floor() as i64).min(w - 1);
        let y = (fy.floor() as i64).clamp(0, h - 1);
        Some((x as usize, y as usize))
    }

    /// The area of one cell of row `y`.
    pub fn row_area(&self, y: usize) -> f64 {
        match self.surface {
            Surface::Sphere { radius } => {
                let h = self.grid.h as f64;
                let phi = (0.5 - (y as f64 + 0.5) / h) * PI;
                radius
                    * radius
                    * (2.0 * PI / self.grid.w as f64)
                    * 2.0
                    * phi.cos()
                    * (PI / (2.0 * h)).sin()
            }
            _ => {
                let (cw, ch) = self.cell_size();
                cw * ch
            }
        }
    }

    /// The area of cell `i`.
    pub fn cell_area(&self, i: usize) -> f64 {
        self.row_area(i / self.grid.w)
    }

    /// The area of the whole surface.
    pub fn area(&self) -> f64 {
        match self.surface {
            Surface::Sphere { radius } => 4.0 * PI * radius * radius,
            Surface::Cylinder { radius, length } => 2.0 * PI * radius * length,
            Surface::Torus {
                radius,
                minor_radius,
            } => 4.0 * PI * PI * radius * minor_radius,
            Surface::Plane { extent_x, extent_y } => extent_x * extent_y,
        }
    }

    /// Shortest distance along the surface between the centres of cells a and b.
    pub fn distance(&self, a: usize, b: usize) -> f64 {
        let (ax, ay) = self.grid.xy(a);
        let (bx, by) = self.grid.xy(b);
        self.distance_at(
            ax as f64 + 0.5,
            ay as f64 + 0.5,
            bx as f64 + 0.5,
            by as f64 + 0.5,
        )
    }

    /// Shortest distance along the surface between two points in grid coordinates.
    pub fn distance_at(&self, fx1: f64, fy1: f64, fx2: f64, fy2: f64) -> f64 {
        let (w, h) = (self.grid.w as f64, self.grid.h as f64);
        match self.surface {
            Surface::Sphere { radius } => {
                let (lon1, lat1) = self.lon_lat_at(fx1, fy1).unwrap();
                let (lon2, lat2) = self.lon_lat_at(fx2, fy2).unwrap();
                let p = unit_vector(lon1, lat1);
                let q = unit_vector(lon2, lat2);
                let cx = p[1] * q[2] - p[2] * q[1];
                let cy = p[2] * q[0] - p[0] * q[2];
                let cz = p[0] * q[1] - p[1] * q[0];
                let cross = (cx * cx + cy * cy + cz * cz).sqrt();
                radius * cross.atan2(p[0] * q[0] + p[1] * q[1] + p[2] * q[2])
            }
            Surface::Cylinder { .. } => {
                let (cw, ch) = self.cell_size();
                (wrapped(fx1 - fx2, w) * cw).hypot((fy1 - fy2) * ch)
            }
            Surface::Torus { .. } => {
                let (cw, ch) = self.cell_size();
                (wrapped(fx1 - fx2, w) * cw).hypot(wrapped(fy1 - fy2, h) * ch)
            }
            Surface::Plane { .. } => {
                let (cw, ch) = self.cell_size();
                ((fx1 - fx2) * cw).hypot((fy1 - fy2) * ch)
            }
        }
    }

    /// How many components of [`Topology::embed`] count: 3, 3, 4 or 2.
    pub fn embed_dim(&self) -> usize {
        match self.surface {
            Surface::Sphere { .. } | Surface::Cylinder { .. } => 3,
            Surface::Torus { .. } => 4,
            Surface::Plane { .. } => 2,
        }
    }

    /// A point, in metres, continuous across every seam (for seamless noise);
    /// unused components are 0.
    pub fn embed(&self, fx: f64, fy: f64) -> [f64; 4] {
        let (w, h) = (self.grid.w as f64, self.grid.h as f64);
        match self.surface {
            Surface::Sphere { radius } => {
                let (lon, lat) = self.lon_lat_at(fx, fy).unwrap();
                let v = unit_vector(lon, lat);
                [radius * v[0], radius * v[1], radius * v[2], 0.0]
            }
            Surface::Cylinder { radius, length } => {
                let (st, ct) = (2.0 * PI * fx / w).sin_cos();
                [radius * ct, radius * st, length * (0.5 - fy / h), 0.0]
            }
            Surface::Torus {
                radius,
                minor_radius,
            } => {
                let (st, ct) = (2.0 * PI * fx / w).sin_cos();
                let (sp, cp) = (2.0 * PI * fy / h).sin_cos();
                [
                    radius * ct,
                    radius * st,
                    minor_radius * cp,
                    minor_radius * sp,
                ]
            }
            Surface::Plane { .. } => {
                let (cw, ch) = self.cell_size();
                [fx * cw, fy * ch, 0.0, 0.0]
            }
        }
    }
}

/// The point of the unit sphere at a longitude and latitude in degrees:
/// (cos lat cos lon, cos lat sin lon, sin lat); z points to the north pole.
pub fn unit_vector(lon: f64, lat: f64) -> [f64; 3] {
    let (sl, cl) = (lon * PI / 180.0).sin_cos();
    let (sp, cp) = (lat * PI / 180.0).sin_cos();
    [cp * cl, cp * sl, sp]
}

/// The shortest signed separation on an axis of period n.
fn wrapped(d: f64, n: f64) -> f64 {
    let d = d % n;
    if d > n / 2.0 {
        d - n
    } else if d < -n / 2.0 {
        d + n
    } else {
        d
    }
}

/// One level of the grid pyramid; level 0 is the native grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub level: u32,
    pub width: usize,
    pub height: usize,
}

impl Level {
    pub fn from_proto(g: &pb::GridInfo) -> Level {
        Level {
            level: g.level,
            width: g.width as usize,
            height: g.height as usize,
        }
    }
    pub fn to_proto(&self) -> pb::GridInfo {
        pb::GridInfo {
            level: self.level,
            width: self.width as u32,
            height: self.height as u32,
        }
    }
}

/// The size of the level below a `width × height` level: each dimension
/// halves rounding up; a sphere's width then rounds up to even.
pub fn next_size(kind: &str, width: usize, height: usize) -> (usize, usize) {
    let (mut w, h) = (width.div_ceil(2), height.div_ceil(2));
    if kind == "sphere" {
        w += w % 2;
    }
    (w, h)
}

/// How many downsampled levels a grid supports (while both dimensions shrink).
pub fn max_levels(kind: &str, mut width: usize, mut height: usize) -> usize {
    let mut n = 0;
    loop {
        let (w, h) = next_size(kind, width, height);
        if w >= width || h >= height {
            return n;
        }
        (width, height) = (w, h);
        n += 1;
    }
}

/// The native level and `levels` downsampled ones.
pub fn levels(kind: &str, width: i64, height: i64, levels: i64) -> Result<Vec<Level>, Error> {
    check_size(kind, width, height)?;
    let m = max_levels(kind, width as usize, height as usize);
    if levels < 0 || levels as usize > m {
        return Err(Error::new(format!(
            "topology {kind}: {levels} pyramid levels requested for a {width}×{height} grid: want 0..{m} (each level halves both dimensions, and both must still shrink)"
        )));
    }
    let mut out = vec![Level {
        level: 0,
        width: width as usize,
        height: height as usize,
    }];
    for i in 1..=levels as u32 {
        let prev = out[out.len() - 1];
        let (w, h) = next_size(kind, prev.width, prev.height);
        out.push(Level {
            level: i,
            width: w,
            height: h,
        });
    }
    Ok(out)
}

fn parent_axis(x: usize, n: usize, m: usize) -> usize {
    (2 * x + 1) * m / (2 * n)
}

/// [lo, hi): the fine x with parent p, i.e. 2np ≤ (2x+1)m < 2n(p+1).
fn children_axis(p: usize, n: usize, m: usize) -> (usize, usize) {
    // Smallest x with (2x+1)m ≥ 2nq.
    let first = |q: usize| (2 * n * q + m - 1) / (2 * m);
    (first(p), first(p + 1).min(n))
}

/// The cell of `coarse` containing the centre of cell (x, y) of `fine`.
pub fn parent(fine: Level, coarse: Level, x: usize, y: usize) -> (usize, usize) {
    (
        parent_axis(x, fine.width, coarse.width),
        parent_axis(y, fine.height, coarse.height),
    )
}

/// [`parent`] on cell indices.
pub fn parent_index(fine: Level, coarse: Level, i: usize) -> usize {
    let (px, py) = parent(fine, coarse, i % fine.width, i / fine.width);
    py * coarse.width + px
}

/// The cells of `fine` whose parent is (px, py) of `coarse`, as half-open
/// ranges `(x0, y0, x1, y1)`.
pub fn children(fine: Level, coarse: Level, px: usize, py: usize) -> (usize, usize, usize, usize) {
    let (x0, x1) = children_axis(px, fine.width, coarse.width);
    let (y0, y1) = children_axis(py, fine.height, coarse.height);
    (x0, y0, x1, y1)
}

/// The indices of the children of coarse cell `j`, row by row.
pub fn child_indices(fine: Level, coarse: Level, j: usize) -> Vec<usize> {
    let (x0, y0, x1, y1) = children(fine, coarse, j % coarse.width, j / coarse.width);
    let mut out = Vec::with_capacity((x1 - x0) * (y1 - y0));
    for y in y0..y1 {
        for x in x0..x1 {
            out.push(y * fine.width + x);
        }
    }
    out
}

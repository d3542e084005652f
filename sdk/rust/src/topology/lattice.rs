//! Cell lattices and their edge rules: wraps, neighbours and sampling.

use crate::pb;
use crate::Error;

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
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) wrap_x: Wrap,
    pub(super) wrap_y: Wrap,
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

//! The surfaces grids live on — sphere, cylinder, torus, plane — their edge
//! rules, neighbours, sampling, geometry and the grid pyramid
//! (docs/topology.md; pinned by testdata/topology/*.json).
//!
//! Cell (x, y) has index `y * width + x`; row 0 is the top (north) row. Grid
//! coordinates (fx, fy) are continuous: cell (x, y) covers [x, x+1) × [y, y+1).

mod lattice;
mod pyramid;

use std::f64::consts::PI;

use crate::pb;
use crate::Error;

pub use lattice::{Grid, Number, Wrap, OFFSETS4, OFFSETS8};
pub use pyramid::{
    child_indices, children, levels, max_levels, next_size, parent, parent_index, Level,
};

/// The default sphere radius in metres (the mean Earth radius).
pub const EARTH_RADIUS: f64 = 6_371_000.0;

/// Widths and heights are in `1..=MAX_SIZE`.
pub const MAX_SIZE: i64 = 1 << 30;

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

//! `terrain.erode`: hydraulic erosion by rain droplets (docs/planet.md).
//!
//! Droplets run in batches. Within a batch every droplet reads the heights
//! as they were when the batch started and adds its changes, in fixed-point
//! integers, to a shared accumulator. Integer addition is associative, so the
//! sum (and therefore every output byte) is the same whatever the thread
//! count and whatever order the threads run in. Each droplet draws from its
//! own stream, `derive(seed, droplet index)`.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use pipehost::seed::derive;
use pipehost::topology::{Grid, Wrap};
use pipehost::{serve, DType, Error, Port, RunContext, Stage};

/// Fixed-point unit of the accumulator, in metres: 0.1 mm.
const QUANTUM: f64 = 1e-4;
/// Largest change of one cell by one batch, in metres.
const MAX_BATCH_CHANGE: f64 = 20.0;

pipehost::params! {
    #[derive(Clone, Debug)]
    struct Erode {
        /// rain droplets per land cell, 0..16
        droplets_per_cell: f64 = 0.3,
        /// steps a droplet lives at most, 1..1024
        max_steps: i64 = 64,
        /// how much a droplet keeps its direction, 0..1
        inertia: f64 = 0.1,
        /// sediment a droplet carries per unit of speed, water and slope
        capacity: f64 = 6.0,
        /// fraction of free capacity taken from the ground per step, 0..1
        erosion: f64 = 0.3,
        /// fraction of excess sediment dropped per step, 0..1
        deposition: f64 = 0.3,
        /// fraction of water lost per step, 0..1
        evaporation: f64 = 0.02,
        /// erosion brush radius in cells, 1..8
        radius: i64 = 2,
        /// worker threads; 0 means one per core. The output does not depend on it
        threads: i64 = 0,
    }
}

impl Erode {
    /// The ranges the docs promise, checked before any work.
    fn check(&self) -> Result<(), Error> {
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::param(name, format!("{v} is out of range 0..1")))
            }
        };
        unit("inertia", self.inertia)?;
        unit("erosion", self.erosion)?;
        unit("deposition", self.deposition)?;
        unit("evaporation", self.evaporation)?;
        if !(0.0..=16.0).contains(&self.droplets_per_cell) {
            return Err(Error::param(
                "droplets_per_cell",
                format!("{} is out of range 0..16", self.droplets_per_cell),
            ));
        }
        if !(1..=1024).contains(&self.max_steps) {
            return Err(Error::param(
                "max_steps",
                format!("{} is out of range 1..1024", self.max_steps),
            ));
        }
        if !(0.0..=1000.0).contains(&self.capacity) {
            return Err(Error::param(
                "capacity",
                format!("{} is out of range 0..1000", self.capacity),
            ));
        }
        if !(1..=8).contains(&self.radius) {
            return Err(Error::param(
                "radius",
                format!("{} is out of range 1..8", self.radius),
            ));
        }
        if !(0..=256).contains(&self.threads) {
            return Err(Error::param(
                "threads",
                format!("{} is out of range 0..256", self.threads),
            ));
        }
        Ok(())
    }
}

/// Where droplets move: the lattice of cell centres, with the surface's
/// wrap rules for positions (a droplet crossing a pole comes back down the
/// other side, half the width away) and for cell lookups.
struct Surface {
    grid: Grid,
    w: f64,
    h: f64,
}

impl Surface {
    /// Brings a position back onto the lattice; `None` if it left the surface
    /// (a clamped edge). Flips the direction's y when it crosses a pole.
    fn wrap(&self, mut x: f64, mut y: f64, dy: &mut f64) -> Option<(f64, f64)> {
        let top = -0.5;
        let bottom = self.h - 0.5;
        if y < top || y >= bottom {
            match self.grid.wrap_y() {
                Wrap::Repeat => y = (y + 0.5).rem_euclid(self.h) - 0.5,
                Wrap::Pole => {
                    y = if y < top {
                        2.0 * top - y
                    } else {
                        2.0 * bottom - y
                    };
                    x += self.w / 2.0;
                    *dy = -*dy;
                    if !(top..bottom).contains(&y) {
                        return None;
                    }
                }
                Wrap::Reflect => {
                    y = if y < top {
                        2.0 * top - y
                    } else {
                        2.0 * bottom - y
                    };
                    *dy = -*dy;
                    if !(top..bottom).contains(&y) {
                        return None;
                    }
                }
                Wrap::Clamp => return None,
            }
        }
        if x < -0.5 || x >= self.w - 0.5 {
            match self.grid.wrap_x() {
                Wrap::Repeat => x = (x + 0.5).rem_euclid(self.w) - 0.5,
                _ => return None,
            }
        }
        Some((x, y))
    }

    #[inline]
    fn cell(&self, x: i64, y: i64) -> usize {
        let (cx, cy) = self.grid.resolve_clamped(x, y);
        cy * self.grid.width() + cx
    }

    /// Height and gradient at (x, y), bilinear between the 4 surrounding
    /// cell centres; also their indices and weights.
    fn sample(&self, hgt: &[f32], x: f64, y: f64) -> (f64, f64, f64, [usize; 4], [f64; 4]) {
        let (x0, y0) = (x.floor(), y.floor());
        let (u, v) = (x - x0, y - y0);
        let (ix, iy) = (x0 as i64, y0 as i64);
        let idx = [
            self.cell(ix, iy),
            self.cell(ix + 1, iy),
            self.cell(ix, iy + 1),
            self.cell(ix + 1, iy + 1),
        ];
        let [a, b, c, d] = idx.map(|i| f64::from(hgt[i]));
        let gx = (b - a) * (1.0 - v) + (d - c) * v;
        let gy = (c - a) * (1.0 - u) + (d - b) * u;
        let h = a * (1.0 - u) * (1.0 - v) + b * u * (1.0 - v) + c * (1.0 - u) * v + d * u * v;
        let wts = [(1.0 - u) * (1.0 - v), u * (1.0 - v), (1.0 - u) * v, u * v];
        (h, gx, gy, idx, wts)
    }
}

fn add(acc: &[AtomicI32], touched: &mut Vec<u32>, i: usize, metres: f64) {
    let q = (metres / QUANTUM).round() as i32;
    if q != 0 {
        if acc[i].fetch_add(q, Ordering::Relaxed) == 0 {
            touched.push(i as u32);
        }
    }
}

/// Runs droplet `id` over the batch's heights, adding its changes to `acc`.
#[allow(clippy::too_many_arguments)]
fn droplet(
    s: &Surface,
    p: &Erode,
    brush: &[(i64, i64, f64)],
    hgt: &[f32],
    seed: u64,
    id: u64,
    acc: &[AtomicI32],
    touched: &mut Vec<u32>,
) {
    let r = derive(seed, id);
    let mut x = (r >> 40) as f64 / (1u64 << 24) as f64 * s.w - 0.5;
    let mut y = (r & 0xFF_FFFF) as f64 / (1u64 << 24) as f64 * s.h - 0.5;
    let (mut dx, mut dy) = (0.0f64, 0.0f64);
    let (mut speed, mut water, mut sediment) = (1.0f64, 1.0f64, 0.0f64);
    // Heights are in metres; the droplet works in units of 5 km (a planet's
    // relief) so that the classic constants apply.
    let k = 2e-4;
    let (mut h, mut gx, mut gy, mut idx, mut wts) = s.sample(hgt, x, y);
    if h <= 0.0 {
        return; // rain over the sea does nothing here
    }
    for _ in 0..p.max_steps {
        dx = dx * p.inertia - gx * k * (1.0 - p.inertia);
        dy = dy * p.inertia - gy * k * (1.0 - p.inertia);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-12 {
            break;
        }
        dx /= len;
        dy /= len;
        let Some((nx, ny)) = s.wrap(x + dx, y + dy, &mut dy) else {
            break;
        };
        let (nh, ngx, ngy, nidx, nwts) = s.sample(hgt, nx, ny);
        let dh = (nh - h) * k;
        let cap = (-dh * speed * water * p.capacity).max(0.01 * water * p.capacity * 0.01);
        if nh <= 0.0 {
            // Reached the sea: the load settles at the coast.
            for j in 0..4 {
                add(acc, touched, idx[j], sediment / k * wts[j]);
            }
            return;
        }
        if sediment > cap || dh > 0.0 {
            // Uphill: fill at most half the step, so a droplet that cannot
            // see its own deposits (it reads the batch's heights) never
            // builds a spike bouncing in a pit.
            let drop = if dh > 0.0 {
                (0.5 * dh).min(sediment)
            } else {
                (sediment - cap) * p.deposition
            };
            sediment -= drop;
            for j in 0..4 {
                add(acc, touched, idx[j], drop / k * wts[j]);
            }
        } else {
            let take = ((cap - sediment) * p.erosion).min(-0.5 * dh);
            let (cx, cy) = (x.round() as i64, y.round() as i64);
            for &(ox, oy, wgt) in brush {
                add(acc, touched, s.cell(cx + ox, cy + oy), -take / k * wgt);
            }
            sediment += take;
        }
        speed = (speed * speed - dh * 9.81).max(0.0).sqrt();
        water *= 1.0 - p.evaporation;
        (x, y, h, gx, gy, idx, wts) = (nx, ny, nh, ngx, ngy, nidx, nwts);
    }
}

fn erode(ctx: &RunContext, p: Erode) -> Result<(), Error> {
    p.check()?;
    let input = ctx.input::<f32>("elevation")?;
    let mut out = ctx.output::<f32>("eroded")?;
    let topo = ctx.topology()?;
    let grid = *topo.grid();
    let (w, h) = (grid.width(), grid.height());
    if (input.width(), input.height()) != (w, h) || (out.width(), out.height()) != (w, h) {
        return Err(Error::new(format!(
            "grid sizes differ: input {}x{}, output {}x{}, topology {w}x{h}",
            input.width(),
            input.height(),
            out.width(),
            out.height()
        )));
    }
    {
        let _s = ctx.timed("copy");
        for y in 0..h {
            out.row_mut(y).copy_from_slice(input.row(y));
        }
    }
    let surface = Surface {
        grid,
        w: w as f64,
        h: h as f64,
    };
    // A cone-shaped brush, weights summing to 1.
    let mut brush = Vec::new();
    let r = p.radius;
    for oy in -r..=r {
        for ox in -r..=r {
            let d = ((ox * ox + oy * oy) as f64).sqrt();
            if d <= r as f64 {
                brush.push((ox, oy, r as f64 + 1.0 - d));
            }
        }
    }
    let total: f64 = brush.iter().map(|b| b.2).sum();
    for b in &mut brush {
        b.2 /= total;
    }
    let cells = w * h;
    let droplets = (cells as f64 * p.droplets_per_cell).round() as u64;
    // The batch size depends on the grid only, never on the thread count:
    // a batch is 1/256 of the grid's cells, so few droplets of one batch
    // meet.
    let batch = ((cells / 256) as u64).max(1024);
    let threads = if p.threads > 0 {
        p.threads as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let acc: Vec<AtomicI32> = (0..cells).map(|_| AtomicI32::new(0)).collect();
    let seed = ctx.seed();
    let _s = ctx.timed("droplets");
    let mut start = 0u64;
    while start < droplets {
        ctx.check_cancelled()?;
        ctx.progress(start as f64 / droplets.max(1) as f64, "eroding");
        let end = (start + batch).min(droplets);
        let hgt: &[f32] = &out;
        let next = AtomicUsize::new(0);
        const CHUNK: u64 = 256;
        let touched: Vec<Vec<u32>> = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    sc.spawn(|| {
                        let mut t = Vec::new();
                        loop {
                            let c = next.fetch_add(1, Ordering::Relaxed) as u64;
                            let a = start + c * CHUNK;
                            if a >= end {
                                break;
                            }
                            for id in a..(a + CHUNK).min(end) {
                                droplet(&surface, &p, &brush, hgt, seed, id, &acc, &mut t);
                            }
                        }
                        t
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|h| h.join().expect("erosion worker panicked"))
                .collect()
        });
        // Apply: each cell's integer total once, whichever list names it.
        for list in &touched {
            for &i in list {
                let q = acc[i as usize].swap(0, Ordering::Relaxed);
                if q != 0 {
                    // Droplets of one batch do not see each other: bound what
                    // they can do together to one cell in one batch.
                    let d = (q as f64 * QUANTUM).clamp(-MAX_BATCH_CHANGE, MAX_BATCH_CHANGE);
                    let v = &mut out.row_mut(i as usize / w)[i as usize % w];
                    *v = (f64::from(*v) + d) as f32;
                }
            }
        }
        start = end;
    }
    ctx.progress(1.0, "eroding");
    ctx.metric("droplets", droplets as f64);
    ctx.metric("threads", threads as f64);
    Ok(())
}

fn main() {
    serve(vec![Stage::new("terrain.erode", "1.0.0", erode)
        .doc("Hydraulic erosion by rain droplets, wrap-aware; the same bytes for a seed whatever the thread count.")
        .input(Port::grid("elevation", DType::F32))
        .output(Port::grid("eroded", DType::F32))
        .concurrent(true)])
}

//! The arithmetic of the reference stages, on plain slices
//! (docs/reference-stage.md). Every step is specified exactly: integer
//! arithmetic for the noise, float64 additions in a fixed order for the blur.

use pipehost::seed::derive;
use pipehost::topology::Grid;
use pipehost::Error;

/// Checked settings of `ref.noise-*` for one grid size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseConfig {
    pub octaves: u32,
    pub cell: u64,
    pub width: usize,
    pub height: usize,
}

impl NoiseConfig {
    /// Checks the params against the spec and the grid; errors name the param.
    pub fn new(octaves: i64, cell: i64, width: usize, height: usize) -> Result<NoiseConfig, Error> {
        if !(1..=8).contains(&octaves) {
            return Err(Error::param(
                "octaves",
                format!("{octaves} is out of range 1..8"),
            ));
        }
        let min_cell = 1i64 << (octaves - 1);
        if cell < 1 || cell.count_ones() != 1 {
            return Err(Error::param(
                "cell",
                format!("{cell} is not a power of two"),
            ));
        }
        if cell < min_cell {
            return Err(Error::param(
                "cell",
                format!("{cell} is smaller than 2^(octaves-1) = {min_cell}"),
            ));
        }
        let c = cell as u64;
        if !(width as u64).is_multiple_of(c) || !(height as u64).is_multiple_of(c) {
            return Err(Error::param(
                "cell",
                format!(
                    "the {width}x{height} grid is not a multiple of cell {cell} in both dimensions"
                ),
            ));
        }
        Ok(NoiseConfig {
            octaves: octaves as u32,
            cell: c,
            width,
            height,
        })
    }
}

/// The lattice of one octave: `nx × ny` values in 0..65535, periodic.
pub struct Lattice {
    k: u32,
    nx: usize,
    ny: usize,
    values: Vec<u64>,
}

/// `lattice(i, j) = Derive(Derive(S, o), (j << 32) | i) >> 48` for every octave.
pub fn lattices(seed: u64, cfg: &NoiseConfig) -> Vec<Lattice> {
    (0..cfg.octaves)
        .map(|o| {
            let s = cfg.cell >> o;
            let k = s.trailing_zeros();
            let (nx, ny) = (cfg.width / s as usize, cfg.height / s as usize);
            let key = derive(seed, u64::from(o));
            let mut values = Vec::with_capacity(nx * ny);
            for j in 0..ny as u64 {
                for i in 0..nx as u64 {
                    values.push(derive(key, (j << 32) | i) >> 48);
                }
            }
            Lattice { k, nx, ny, values }
        })
        .collect()
}

/// Fills row `y` of the noise.
pub fn noise_row(cfg: &NoiseConfig, lattices: &[Lattice], y: usize, row: &mut [f32]) {
    debug_assert_eq!(row.len(), cfg.width);
    for (x, out) in row.iter_mut().enumerate() {
        let mut acc: u64 = 0;
        for (o, l) in lattices.iter().enumerate() {
            let k = l.k;
            let mask = (1usize << k) - 1;
            let (i0, fx) = (x >> k, (x & mask) as u64);
            let (j0, fy) = (y >> k, (y & mask) as u64);
            let i1 = (i0 + 1) % l.nx;
            let j1 = (j0 + 1) % l.ny;
            let (wx, wy) = if k <= 16 {
                (fx << (16 - k), fy << (16 - k))
            } else {
                (fx >> (k - 16), fy >> (k - 16))
            };
            let at = |i: usize, j: usize| l.values[j * l.nx + i];
            let top = at(i0, j0) * (65536 - wx) + at(i1, j0) * wx;
            let bottom = at(i0, j1) * (65536 - wx) + at(i1, j1) * wx;
            let val = (top * (65536 - wy) + bottom * wy) >> 32;
            acc += val >> o;
        }
        *out = acc as f32 / 65536.0;
    }
}

/// Fills row `y` of the box blur of `input` with the given radius.
pub fn blur_row(grid: &Grid, input: &[f32], radius: usize, y: usize, row: &mut [f32]) {
    let (w, h) = (grid.width(), grid.height());
    let r = radius as i64;
    let n = ((2 * radius + 1) * (2 * radius + 1)) as f64;
    let inner_y = y >= radius && y + radius < h;
    for (x, out) in row.iter_mut().enumerate() {
        let mut sum = 0.0f64;
        if inner_y && x >= radius && x + radius < w {
            // Same cells in the same order, without edge rules.
            for yy in y - radius..=y + radius {
                let line = &input[yy * w..(yy + 1) * w];
                for &v in &line[x - radius..=x + radius] {
                    sum += f64::from(v);
                }
            }
        } else {
            for dy in -r..=r {
                for dx in -r..=r {
                    let (nx, ny) = grid.resolve_clamped(x as i64 + dx, y as i64 + dy);
                    sum += f64::from(input[ny * w + nx]);
                }
            }
        }
        *out = (sum / n) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipehost::topology::{Topology, Wrap};

    /// The spec's pseudo-code, literally, with the lattice computed per use.
    fn noise_naive(seed: u64, octaves: u32, cell: u64, w: u64, h: u64) -> Vec<f32> {
        let mut out = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0u64;
                for o in 0..octaves {
                    let s = cell >> o;
                    let k = s.trailing_zeros();
                    let (nx, ny) = (w / s, h / s);
                    let lattice =
                        |i: u64, j: u64| derive(derive(seed, u64::from(o)), (j << 32) | i) >> 48;
                    let (i0, fx, i1) = (x >> k, x & (s - 1), ((x >> k) + 1) % nx);
                    let (j0, fy, j1) = (y >> k, y & (s - 1), ((y >> k) + 1) % ny);
                    let (wx, wy) = (fx << (16 - k), fy << (16 - k));
                    let top = lattice(i0, j0) * (65536 - wx) + lattice(i1, j0) * wx;
                    let bottom = lattice(i0, j1) * (65536 - wx) + lattice(i1, j1) * wx;
                    acc += ((top * (65536 - wy) + bottom * wy) >> 32) >> o;
                }
                out.push(acc as f32 / 65536.0);
            }
        }
        out
    }

    fn noise(seed: u64, octaves: i64, cell: i64, w: usize, h: usize) -> Vec<f32> {
        let cfg = NoiseConfig::new(octaves, cell, w, h).unwrap();
        let l = lattices(seed, &cfg);
        let mut out = vec![0f32; w * h];
        for (y, row) in out.chunks_exact_mut(w).enumerate() {
            noise_row(&cfg, &l, y, row);
        }
        out
    }

    #[test]
    fn noise_matches_the_spec_pseudocode() {
        for (seed, oct, cell, w, h) in [
            (7u64, 4, 16, 64, 32),
            (0x1234_5678_9abc_def0, 1, 2, 6, 4),
            (99, 8, 128, 256, 128),
        ] {
            let got = noise(seed, oct, cell, w, h);
            let want = noise_naive(seed, oct as u32, cell as u64, w as u64, h as u64);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn noise_is_exact_lattice_at_lattice_points_and_in_range() {
        let (seed, w, h) = (42u64, 32usize, 16usize);
        let out = noise(seed, 1, 8, w, h);
        // One octave: at lattice points the value is lattice/65536 exactly.
        for j in 0..h / 8 {
            for i in 0..w / 8 {
                let want =
                    (derive(derive(seed, 0), ((j as u64) << 32) | i as u64) >> 48) as f32 / 65536.0;
                assert_eq!(out[j * 8 * w + i * 8].to_bits(), want.to_bits());
            }
        }
        let out = noise(seed, 4, 16, w, h);
        assert!(out.iter().all(|&v| (0.0..2.0).contains(&v)));
        // Different seeds differ.
        assert_ne!(out, noise(seed + 1, 4, 16, w, h));
    }

    #[test]
    fn noise_rejects_bad_params_naming_them() {
        let e = NoiseConfig::new(0, 16, 64, 64).unwrap_err();
        assert!(e.message().contains("\"octaves\""), "{e}");
        let e = NoiseConfig::new(9, 256, 256, 256).unwrap_err();
        assert!(e.message().contains("\"octaves\""), "{e}");
        let e = NoiseConfig::new(4, 12, 48, 48).unwrap_err();
        assert!(
            e.message().contains("\"cell\"") && e.message().contains("power of two"),
            "{e}"
        );
        let e = NoiseConfig::new(4, 4, 64, 64).unwrap_err();
        assert!(e.message().contains("\"cell\""), "{e}");
        let e = NoiseConfig::new(4, 16, 40, 64).unwrap_err();
        assert!(
            e.message().contains("\"cell\"") && e.message().contains("40x64"),
            "{e}"
        );
        assert!(NoiseConfig::new(8, 128, 128, 256).is_ok());
    }

    fn blur(t: &Topology, input: &[f32], radius: usize) -> Vec<f32> {
        let g = *t.grid();
        let mut out = vec![0f32; input.len()];
        for (y, row) in out.chunks_exact_mut(g.width()).enumerate() {
            blur_row(&g, input, radius, y, row);
        }
        out
    }

    fn blur_naive(g: &Grid, input: &[f32], radius: i64) -> Vec<f32> {
        let mut out = Vec::new();
        for y in 0..g.height() as i64 {
            for x in 0..g.width() as i64 {
                let mut sum = 0.0f64;
                for dy in -radius..=radius {
                    for dx in -radius..=radius {
                        let (nx, ny) = g.resolve_clamped(x + dx, y + dy);
                        sum += f64::from(input[ny * g.width() + nx]);
                    }
                }
                out.push((sum / ((2 * radius + 1) * (2 * radius + 1)) as f64) as f32);
            }
        }
        out
    }

    #[test]
    fn blur_matches_the_spec_on_every_topology() {
        let data: Vec<f32> = (0..12 * 8)
            .map(|i| ((i * 37) % 101) as f32 * 0.37 - 11.0)
            .collect();
        for t in [
            Topology::load("sphere", 12, 8, Default::default()).unwrap(),
            Topology::load("torus", 12, 8, Default::default()).unwrap(),
            Topology::load("cylinder", 12, 8, Default::default()).unwrap(),
            Topology::new(
                "plane",
                12,
                8,
                Some(Wrap::Clamp),
                Some(Wrap::Reflect),
                0.0,
                0.0,
            )
            .unwrap(),
        ] {
            for r in [0usize, 1, 2, 5] {
                let got = blur(&t, &data, r);
                let want = blur_naive(t.grid(), &data, r as i64);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} r={r}",
                    t.kind()
                );
            }
            assert_eq!(blur(&t, &data, 0), data, "radius 0 is the identity");
        }
    }

    #[test]
    fn blur_crosses_the_pole_to_the_opposite_longitude() {
        // A 4x2 sphere: the only non-zero cell is (2, 0). Blurring cell (0, 0)
        // with radius 1 sees it across the north pole (x + W/2), nowhere else.
        let t = Topology::load("sphere", 4, 2, Default::default()).unwrap();
        let mut data = vec![0f32; 8];
        data[2] = 9.0;
        let out = blur(&t, &data, 1);
        // (0,0): the row above is row 0 again at x+2: cells 1,2,3 → sees (2,0) once.
        // (1,0): directly and across the pole → twice. (2,0): directly only.
        // (3,0): directly and across the pole (x = 0,1,2). Row 1 sees row 0
        // directly above, and its own row across the south pole.
        assert_eq!(out, vec![1.0, 2.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0]);
    }
}

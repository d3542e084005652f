//! The grid pyramid: level sizes and the parent/child maps between levels.

use super::check_size;
use crate::pb;
use crate::Error;

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

//! Typed, zero-copy views of grid buffers. Their lifetimes are tied to the
//! [`RunContext`](crate::RunContext), so a view cannot outlive the run whose
//! shared memory it points into.

use std::ops::{Deref, DerefMut};

use crate::DType;

mod sealed {
    pub trait Sealed {}
}

/// The element types a grid can be viewed as; each matches one [`DType`].
/// Every bit pattern of these types is a valid value, which is what makes a
/// view of raw shared memory sound.
pub trait Elem: sealed::Sealed + Copy + Send + Sync + 'static {
    const DTYPE: DType;
}

macro_rules! elem {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Elem for $t { const DTYPE: DType = DType::$d; }
    )*};
}
elem!(f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
      u8 => U8, u16 => U16, u32 => U32, u64 => U64);

/// A read-only grid: `height` rows of `width` elements, row-major. Input
/// grids are write-sealed memory: writing through a cast pointer faults the
/// process with SIGSEGV.
#[derive(Clone, Copy, Debug)]
pub struct Grid<'a, T> {
    data: &'a [T],
    width: usize,
    height: usize,
    level: u32,
}

impl<'a, T: Elem> Grid<'a, T> {
    pub(crate) fn new(data: &'a [T], width: usize, height: usize, level: u32) -> Self {
        debug_assert_eq!(data.len(), width * height);
        Grid { data, width, height, level }
    }
    pub fn width(&self) -> usize {
        self.width
    }
    pub fn height(&self) -> usize {
        self.height
    }
    /// The pyramid level (0 = native).
    pub fn level(&self) -> u32 {
        self.level
    }
    /// The element at column x, row y.
    #[inline]
    pub fn at(&self, x: usize, y: usize) -> T {
        self.data[y * self.width + x]
    }
    /// Row y.
    pub fn row(&self, y: usize) -> &'a [T] {
        &self.data[y * self.width..(y + 1) * self.width]
    }
    /// All elements, row-major, for the view's whole lifetime.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
}

impl<T> Deref for Grid<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.data
    }
}

/// A writable grid (an output): valid until the stage function returns,
/// after which the SDK unmaps it and the host seals it.
#[derive(Debug)]
pub struct GridMut<'a, T> {
    data: &'a mut [T],
    width: usize,
    height: usize,
    level: u32,
}

impl<'a, T: Elem> GridMut<'a, T> {
    pub(crate) fn new(data: &'a mut [T], width: usize, height: usize, level: u32) -> Self {
        debug_assert_eq!(data.len(), width * height);
        GridMut { data, width, height, level }
    }
    pub fn width(&self) -> usize {
        self.width
    }
    pub fn height(&self) -> usize {
        self.height
    }
    pub fn level(&self) -> u32 {
        self.level
    }
    #[inline]
    pub fn at(&self, x: usize, y: usize) -> T {
        self.data[y * self.width + x]
    }
    /// Stores v at column x, row y.
    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: T) {
        self.data[y * self.width + x] = v;
    }
    pub fn row_mut(&mut self, y: usize) -> &mut [T] {
        &mut self.data[y * self.width..(y + 1) * self.width]
    }
    /// Rows as disjoint mutable slices, e.g. for scoped threads.
    pub fn rows_mut(&mut self) -> std::slice::ChunksExactMut<'_, T> {
        self.data.chunks_exact_mut(self.width.max(1))
    }
}

impl<T> Deref for GridMut<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.data
    }
}

impl<T> DerefMut for GridMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.data
    }
}

//! Typed, zero-copy views of grid buffers. Their lifetimes are tied to the
//! [`RunContext`](crate::RunContext), so a view cannot outlive the run whose
//! shared memory it points into.

use std::ops::{Deref, DerefMut};

use crate::pb;

/// The element type of a grid (little-endian on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

impl DType {
    /// The size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The lower-case name: "f32", "u8", ...
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
        }
    }

    /// The wire enum.
    pub fn to_proto(self) -> pb::DType {
        match self {
            DType::F32 => pb::DType::DtypeF32,
            DType::F64 => pb::DType::DtypeF64,
            DType::I8 => pb::DType::DtypeI8,
            DType::I16 => pb::DType::DtypeI16,
            DType::I32 => pb::DType::DtypeI32,
            DType::I64 => pb::DType::DtypeI64,
            DType::U8 => pb::DType::DtypeU8,
            DType::U16 => pb::DType::DtypeU16,
            DType::U32 => pb::DType::DtypeU32,
            DType::U64 => pb::DType::DtypeU64,
        }
    }

    /// Reads a wire value; `None` for unspecified or unknown values.
    pub fn from_proto(v: i32) -> Option<DType> {
        Some(match pb::DType::try_from(v).ok()? {
            pb::DType::DtypeF32 => DType::F32,
            pb::DType::DtypeF64 => DType::F64,
            pb::DType::DtypeI8 => DType::I8,
            pb::DType::DtypeI16 => DType::I16,
            pb::DType::DtypeI32 => DType::I32,
            pb::DType::DtypeI64 => DType::I64,
            pb::DType::DtypeU8 => DType::U8,
            pb::DType::DtypeU16 => DType::U16,
            pb::DType::DtypeU32 => DType::U32,
            pb::DType::DtypeU64 => DType::U64,
            pb::DType::DtypeUnspecified => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
        Grid {
            data,
            width,
            height,
            level,
        }
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
        GridMut {
            data,
            width,
            height,
            level,
        }
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

//! The Rust SDK for pipehost stage plugins.
//!
//! A plugin is a program whose `main` hands its stages to [`serve`]:
//!
//! ```no_run
//! use pipehost::{serve, DType, Error, Port, RunContext, Stage};
//!
//! pipehost::params! {
//!     struct Scale {
//!         /// The multiplier.
//!         factor: f64 = 2.0,
//!     }
//! }
//!
//! fn scale(ctx: &RunContext, p: Scale) -> Result<(), Error> {
//!     let _span = ctx.timed("scale");
//!     let input = ctx.input::<f32>("in")?;
//!     let mut out = ctx.output::<f32>("out")?;
//!     for (o, i) in out.iter_mut().zip(input.iter()) {
//!         *o = (f64::from(*i) * p.factor) as f32;
//!     }
//!     Ok(())
//! }
//!
//! fn main() {
//!     serve(vec![Stage::new("demo.scale", "1.0.0", scale)
//!         .doc("Multiplies a grid by a constant.")
//!         .input(Port::grid("in", DType::F32))
//!         .output(Port::grid("out", DType::F32))])
//! }
//! ```
//!
//! The SDK speaks the go-plugin handshake, answers Describe, decodes params,
//! maps inputs read-only and outputs read-write (zero-copy, straight from the
//! host's sealed shared memory), and reports progress, logs, timed spans,
//! peak memory and CPU time to the host. [`testing::Harness`] runs a stage
//! the same way in a unit test. The guide is docs/sdk-rust.md.

#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;

// What a stage author uses is re-exported below; `handle` and `shm` are the
// wire-level pieces, public for tools and the shared-vector tests.
mod context;
mod grid;
pub mod handle;
pub mod log;
mod params;
mod run;
pub mod seed;
mod serve;
pub mod shm;
mod stage;
pub mod testing;
pub mod topology;
mod trace_marker;

/// The generated protocol types (`proto/pipehost/v1/stage.proto`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/pipehost.v1.rs"));
}

/// go-plugin's own services (`proto/goplugin/*.proto`), served by `serve`.
#[allow(clippy::all, missing_docs, dead_code, unreachable_pub)]
pub(crate) mod goplugin {
    include!(concat!(env!("OUT_DIR"), "/plugin.rs"));
}

pub use context::{OutputWriter, RunContext, Span};
pub use grid::{DType, Elem, Grid, GridMut};
#[doc(hidden)]
pub use params::doc_text as __doc_text;
pub use params::{FromValue, ParamKind, ParamSpec, ParamType, ParamValues, Params, Value};
pub use pb::LogLevel;
pub use seed::Stream;
pub use serve::serve;
pub use stage::{Port, Stage};

/// The SDK's version, reported to the host in Describe.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What went wrong, in words for the user. A stage returns it to fail; the
/// host adds the stage name, the plugin and its last stderr lines.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// The broad class of an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The stage failed (bad input, a bug, an I/O error...).
    Failed,
    /// A parameter is missing, of the wrong type or out of range.
    InvalidParam,
    /// The host cancelled the stage (timeout, another stage failed, Ctrl-C).
    Cancelled,
}

impl Error {
    /// A stage failure with this message.
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }

    /// A parameter error; the message names the parameter.
    pub fn param(name: &str, message: impl fmt::Display) -> Error {
        Error {
            kind: ErrorKind::InvalidParam,
            message: format!("param {name:?}: {message}"),
        }
    }

    /// The error [`RunContext::check_cancelled`] returns.
    pub fn cancelled() -> Error {
        Error {
            kind: ErrorKind::Cancelled,
            message: "stage cancelled by the host".into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with context: `"{what}: {message}"`.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {})", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(e.to_string())
    }
}

impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::new(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Error {
        Error::new(s)
    }
}

impl From<handle::InvalidHandle> for Error {
    fn from(e: handle::InvalidHandle) -> Error {
        Error::new(e.message)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the host and every plugin on
/// a machine share, so spans from different processes line up.
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

//! The run context a stage function gets: identity, seed, topology, the
//! run's buffers as typed views, and reporting (progress, logs, spans,
//! metrics, cancellation). Its buffers live in `buffers`, its spans in
//! `span`.

mod buffers;
mod span;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::grid::{Grid, GridMut};
use crate::pb;
use crate::seed::Stream;
use crate::topology::{Level, Topology};
use crate::{Error, LogLevel};

pub use buffers::OutputWriter;
pub(crate) use buffers::{DataPlane, RunData, FD_WAIT};
pub use span::Span;

/// Receives the events a run streams to the host.
pub(crate) type EventSink = Arc<dyn Fn(pb::RunEvent) + Send + Sync>;

/// How often progress updates go out at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything a stage function can ask about and do in one run.
///
/// Views returned by [`input`](RunContext::input) and
/// [`output`](RunContext::output) borrow the context, so the compiler keeps
/// them from outliving the run: when the stage function returns, the SDK
/// unmaps every writable view before the host seals the outputs.
pub struct RunContext {
    req: pb::RunRequest,
    sink: EventSink,
    cancelled: Arc<AtomicBool>,
    data: RunData,
    span_next: AtomicU64,
    span_stack: Mutex<Vec<u64>>,
    /// The host asked for trace markers and the file is open; `marker_base`
    /// makes async-slice cookies unique in the process.
    markers: bool,
    marker_base: u64,
    last_progress: Mutex<Option<Instant>>,
    metrics: Mutex<HashMap<String, f64>>,
}

impl RunContext {
    pub(crate) fn new(
        req: pb::RunRequest,
        sink: EventSink,
        cancelled: Arc<AtomicBool>,
        data: RunData,
    ) -> Self {
        RunContext {
            req,
            sink,
            cancelled,
            data,
            span_next: AtomicU64::new(0),
            span_stack: Mutex::new(Vec::new()),
            markers: false,
            marker_base: 0,
            last_progress: Mutex::new(None),
            metrics: Mutex::new(HashMap::new()),
        }
    }

    /// The id of the pipeline run.
    pub fn run_id(&self) -> &str {
        &self.req.run_id
    }
    /// The stage instance name from the pipeline config.
    pub fn stage(&self) -> &str {
        &self.req.stage
    }
    /// The stage kind being run.
    pub fn kind(&self) -> &str {
        &self.req.kind
    }
    /// The stage's 64-bit seed, derived by the host from the run seed and the
    /// stage name; the same in every SDK. [`rng`](Self::rng) is its stream.
    pub fn seed(&self) -> u64 {
        self.req.seed
    }
    /// The stage's random stream: SplitMix64 seeded with [`seed`](Self::seed),
    /// the same numbers as `ctx.Rand()` in Go, `ctx.rng()` in C++ and
    /// Python (docs/seeds.md). Each call starts the stream afresh; use
    /// [`Stream::fork`] or [`Stream::child`] for parallel work.
    pub fn rng(&self) -> Stream {
        Stream::new(self.seed())
    }
    /// 0 for the first attempt of this stage in a run.
    pub fn attempt(&self) -> u32 {
        self.req.attempt
    }
    /// The grid pyramid, level 0 (native) first.
    pub fn levels(&self) -> Vec<Level> {
        self.req.levels.iter().map(Level::from_proto).collect()
    }
    /// The run's request as the host sent it.
    pub fn request(&self) -> &pb::RunRequest {
        &self.req
    }

    /// The run's topology at the native grid size.
    pub fn topology(&self) -> Result<Topology, Error> {
        self.topology_at(0)
    }

    /// The run's topology on pyramid level `level`.
    pub fn topology_at(&self, level: u32) -> Result<Topology, Error> {
        let t = self
            .req
            .topology
            .as_ref()
            .ok_or_else(|| Error::new("the run request has no topology"))?;
        let native = self
            .req
            .levels
            .first()
            .ok_or_else(|| Error::new("the run request has no grid levels"))?;
        let topo = Topology::from_proto(t, native.width, native.height)?;
        if level == 0 {
            return Ok(topo);
        }
        let l = self
            .req
            .levels
            .iter()
            .find(|l| l.level == level)
            .ok_or_else(|| Error::new(format!("the run has no pyramid level {level}")))?;
        topo.with_size(l.width as usize, l.height as usize)
    }

    /// True once the host cancelled the stage (timeout, another stage failed,
    /// Ctrl-C). Check it between chunks of work.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// `Err(Error::cancelled())` once the host cancelled the stage: use
    /// `ctx.check_cancelled()?` between chunks of work.
    pub fn check_cancelled(&self) -> Result<(), Error> {
        if self.is_cancelled() {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }

    /// Reports the fraction (0..=1) of the work done. Cheap to call often:
    /// at most one update goes out every 50 ms, plus the final one (1.0).
    pub fn progress(&self, fraction: f64, message: &str) {
        {
            let mut last = lock(&self.last_progress);
            let now = Instant::now();
            if fraction < 1.0 && last.is_some_and(|l| now.duration_since(l) < PROGRESS_EVERY) {
                return;
            }
            *last = Some(now);
        }
        (self.sink)(pb::RunEvent {
            event: Some(pb::run_event::Event::Progress(pb::Progress {
                fraction,
                message: message.to_string(),
            })),
        });
    }

    /// Sends a log line to the host's run log, attributed to this stage.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        (self.sink)(pb::RunEvent {
            event: Some(pb::run_event::Event::Log(pb::LogLine {
                level: level as i32,
                message: message.into(),
                time_ns: crate::monotonic_ns(),
            })),
        });
    }
    pub fn debug(&self, message: impl Into<String>) {
        self.log(LogLevel::Debug, message)
    }
    pub fn info(&self, message: impl Into<String>) {
        self.log(LogLevel::Info, message)
    }
    pub fn warn(&self, message: impl Into<String>) {
        self.log(LogLevel::Warn, message)
    }
    pub fn error(&self, message: impl Into<String>) {
        self.log(LogLevel::Error, message)
    }

    /// Records a number for the run log (the last value per name wins).
    pub fn metric(&self, name: &str, value: f64) {
        lock(&self.metrics).insert(name.to_string(), value);
    }

    pub(crate) fn take_metrics(&self) -> HashMap<String, f64> {
        std::mem::take(&mut *lock(&self.metrics))
    }
}

/// Compile-time checks: the context can be shared with scoped threads and
/// views can be sent to them.
#[allow(dead_code)]
fn _assert_thread_safety() {
    fn sync<T: Sync>() {}
    fn send<T: Send>() {}
    sync::<RunContext>();
    send::<Grid<'static, f32>>();
    send::<GridMut<'static, f64>>();
    sync::<Span<'static>>();
}

//! Running one request on the calling thread: bind its buffers, run the
//! stage (panics caught), unmap every writable view, hand dynamic outputs
//! to the host and send the Result. The plugin server and the test harness
//! both run stages through here, so a stage under test sees exactly what it
//! sees in a pipeline.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::context::{DataPlane, EventSink, RunContext, RunData};
use crate::params::ParamValues;
use crate::pb;
use crate::{log, Error, Stage};

/// Why a run produced no Result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request's buffers could not be bound (a host or protocol fault).
    Bind(Error),
    /// The stage function returned this error.
    Stage(Error),
    /// The stage function panicked with this message.
    Panic(String),
    /// Unmapping or handing back the outputs failed.
    Finish(Error),
}

/// Counts the runs in progress in this process: the first one resets the
/// peak RSS, and a run that overlapped another reports it shared the peak.
#[derive(Default)]
pub(crate) struct ActiveRuns(Mutex<u32>);

impl ActiveRuns {
    /// Marks a run active; reports whether another one already was.
    fn enter(&self) -> bool {
        let mut n = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        if *n == 1 {
            reset_peak_rss();
            false
        } else {
            true
        }
    }

    /// Marks a run done; reports whether another one is still active.
    fn leave(&self) -> bool {
        let mut n = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        *n > 0
    }
}

/// Executes `req` with `stage`. On success the Result event has gone to
/// `sink`; on failure every fd of the request is released.
pub(crate) fn execute(
    stage: &Stage,
    plane: Option<Arc<DataPlane>>,
    req: pb::RunRequest,
    sink: EventSink,
    cancelled: Arc<AtomicBool>,
    wait: Duration,
    active: &ActiveRuns,
) -> Result<(), Failure> {
    let (name, kind) = (req.stage.clone(), req.kind.clone());
    let data = match RunData::bind(plane.clone(), &req, &stage.descriptor().outputs, wait) {
        Ok(d) => d,
        Err(e) => {
            if let Some(plane) = &plane {
                plane
                    .mailbox
                    .discard(req.inputs.iter().chain(&req.outputs).map(|b| b.fd_token));
            }
            return Err(Failure::Bind(e));
        }
    };
    let params = req.params.clone();
    let mut ctx = RunContext::new(req, sink.clone(), cancelled, data);

    let shared_before = active.enter();
    // The stage's slice, on the thread that runs it, around its subtasks.
    let markers = ctx.begin_stage_marker();
    let u0 = usage();
    let rss = rss_bytes(); // after u0: peak_since relies on the order
    let start = crate::monotonic_ns();
    let values = ParamValues::new(&params, stage.specs());
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.call(&ctx, &values)));
    let end = crate::monotonic_ns();
    if markers {
        crate::trace_marker::end();
    }
    let u1 = usage();
    let peak = peak_since(u0, rss, u1);
    let shared = active.leave() || shared_before;

    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::Stage(e)),
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            log::error(&format!("panic in stage {name} ({kind}): {what}"));
            return Err(Failure::Panic(what));
        }
    }
    let dynamic = ctx.data_mut().finish().map_err(Failure::Finish)?;
    let metrics = ctx.take_metrics();
    // Every input and output is unmapped and closed before the Result, so
    // the Run's end follows it at once.
    drop(ctx);
    sink(pb::RunEvent {
        event: Some(pb::run_event::Event::Result(pb::Result {
            dynamic_outputs: dynamic,
            metrics,
            stats: Some(pb::StageStats {
                peak_rss_bytes: peak,
                peak_shared: shared,
                start_ns: start,
                end_ns: end,
                cpu_ns: u1.cpu_ns.saturating_sub(u0.cpu_ns),
            }),
        })),
    });
    Ok(())
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

/// getrusage's CPU time (ns) and ru_maxrss (KiB).
#[derive(Clone, Copy)]
struct Usage {
    cpu_ns: u64,
    maxrss_kb: i64,
}

fn usage() -> Usage {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    Usage {
        cpu_ns: t(ru.ru_utime) + t(ru.ru_stime),
        maxrss_kb: ru.ru_maxrss as i64,
    }
}

/// VmHWM at the end of a span that began with `start` and then an RSS
/// reading `rss`. ru_maxrss is max(VmHWM, the peak at exec and at each
/// thread's exit), which the reset does not touch: it is exact when it grew
/// during the span or was within `rss` at its start; otherwise
/// /proc/self/status is read. The Go SDK applies the same rule.
fn peak_since(start: Usage, rss: u64, end: Usage) -> u64 {
    if end.maxrss_kb > start.maxrss_kb || (start.maxrss_kb.max(0) as u64) * 1024 <= rss {
        return end.maxrss_kb.max(0) as u64 * 1024;
    }
    peak_rss()
}

/// VmRSS in bytes from /proc/self/statm (a few µs, against tens for
/// /proc/self/status); 0 when unavailable.
fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

/// Resets VmHWM to the current RSS (Linux clear_refs = 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// VmHWM in bytes; 0 when unavailable.
fn peak_rss() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

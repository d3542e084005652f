//! The run context a stage function gets: identity, seed, topology, the
//! run's buffers as typed views, and reporting (progress, logs, spans,
//! metrics, cancellation).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::grid::{Elem, Grid, GridMut};
use crate::handle;
use crate::pb;
use crate::shm::{Channel, Mailbox, Mapping, Message, MsgType, Segment, PLUGIN_TOKEN_BIT};
use crate::topology::{Level, Topology};
use crate::{Error, LogLevel};

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
    /// stage name; the same in every SDK. Start streams with
    /// [`seed::Stream::new`](crate::seed::Stream::new).
    pub fn seed(&self) -> u64 {
        self.req.seed
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

    /// Starts a timed subtask nested under the innermost `timed` span still
    /// open (or at the top); it ends when the guard is dropped:
    ///
    /// ```
    /// # fn erode(ctx: &pipehost::RunContext) {
    /// let _s = ctx.timed("erode");
    /// // ... work; the span ends at the end of the scope
    /// # }
    /// ```
    ///
    /// For spans on several threads use [`RunContext::span`] and
    /// [`Span::child`], whose parents are explicit.
    pub fn timed(&self, name: &str) -> Span<'_> {
        let mut stack = lock(&self.span_stack);
        let parent = stack.last().copied().unwrap_or(0);
        let s = self.new_span(name, parent, true);
        stack.push(s.id);
        s
    }

    /// Starts a top-level span with an explicit lifetime (ends on drop).
    pub fn span(&self, name: &str) -> Span<'_> {
        self.new_span(name, 0, false)
    }

    fn new_span(&self, name: &str, parent: u64, nested: bool) -> Span<'_> {
        let id = self.span_next.fetch_add(1, Ordering::Relaxed) + 1;
        if self.markers {
            // A nested span ends on its thread (B/E nest per thread); an
            // explicit one may end on another thread, so it is an async slice.
            if nested {
                crate::trace_marker::begin(name);
            } else {
                crate::trace_marker::async_begin(name, self.marker_base | id);
            }
        }
        Span {
            ctx: self,
            id,
            parent,
            name: name.to_string(),
            start: crate::monotonic_ns(),
            nested,
        }
    }

    /// Writes the stage's begin marker when the host asked for trace
    /// markers and reports whether it did (the caller then writes the end,
    /// on the same thread).
    pub(crate) fn begin_stage_marker(&mut self) -> bool {
        if self.req.trace_marker.is_empty() || !crate::trace_marker::open(&self.req.trace_marker) {
            return false;
        }
        self.markers = true;
        self.marker_base = crate::trace_marker::next_base();
        crate::trace_marker::begin(&self.req.stage);
        true
    }

    /// The read-only view of input grid `name`. Inputs are write-sealed
    /// shared memory: the kernel refuses every write.
    pub fn input<T: Elem>(&self, name: &str) -> Result<Grid<'_, T>, Error> {
        let b = self.data.input(self.stage(), name)?;
        let h = grid_handle::<T>(&b.binding, "input", name)?;
        let bytes = &b.map.bytes()[h.offset as usize..(h.offset + h.nbytes) as usize];
        let data = view::<T>(bytes.as_ptr(), bytes.len(), "input", name)?;
        // SAFETY: the mapping lives as long as self (inputs are dropped only
        // with the context), the range was validated against the segment
        // size, and every bit pattern is a valid T.
        let data = unsafe { std::slice::from_raw_parts(data, bytes.len() / size_of::<T>()) };
        Ok(Grid::new(
            data,
            h.shape[1] as usize,
            h.shape[0] as usize,
            h.level,
        ))
    }

    /// The raw bytes and handle of any input (grid, table or blob), read-only.
    pub fn input_bytes(&self, name: &str) -> Result<(&[u8], &pb::Handle), Error> {
        let b = self.data.input(self.stage(), name)?;
        let h = b.binding.handle.as_ref().expect("validated at bind");
        Ok((
            &b.map.bytes()[h.offset as usize..(h.offset + h.nbytes) as usize],
            h,
        ))
    }

    /// Whether an (optional) input is wired in this run.
    pub fn has_input(&self, name: &str) -> bool {
        self.data.inputs.contains_key(name)
    }

    /// The writable view of output grid `name`, mapped on first use. Take
    /// each output once per run; the view is valid until the stage function
    /// returns.
    pub fn output<T: Elem>(&self, name: &str) -> Result<GridMut<'_, T>, Error> {
        let mut outs = lock(&self.data.outputs);
        let Some(b) = outs.get_mut(name) else {
            return Err(Error::new(format!(
                "stage {} has no output {name:?} bound in this run",
                self.stage()
            )));
        };
        if b.taken {
            return Err(Error::new(format!(
                "output {name:?} is already in use in this run (take each output view once)"
            )));
        }
        let h = grid_handle::<T>(&b.binding, "output", name)?.clone();
        if b.map.is_none() {
            b.map = Some(
                b.seg
                    .map_rw()
                    .map_err(|e| e.context(format!("output {name:?}")))?,
            );
        }
        let m = b.map.as_ref().expect("mapped above");
        // SAFETY: offset + nbytes ≤ segment size (validated at bind).
        let ptr = unsafe { m.as_ptr().add(h.offset as usize) };
        let ptr = view::<T>(ptr, h.nbytes as usize, "output", name)?.cast_mut();
        b.taken = true;
        // SAFETY: the mapping stays until `finish(&mut self)` runs after the
        // stage function returned, so it outlives this borrow of self;
        // `taken` makes this the only live view of the buffer.
        let data =
            unsafe { std::slice::from_raw_parts_mut(ptr, h.nbytes as usize / size_of::<T>()) };
        Ok(GridMut::new(
            data,
            h.shape[1] as usize,
            h.shape[0] as usize,
            h.level,
        ))
    }

    /// Creates the segment of dynamic output `name` (a table or blob port)
    /// with `nbytes` bytes, zero-filled and writable until the stage function
    /// returns; the SDK then hands it to the host. For a table, write an
    /// Arrow IPC file (with footer).
    pub fn dynamic_output(&self, name: &str, nbytes: u64) -> Result<&mut [u8], Error> {
        self.data.dynamic_output(self.stage(), name, nbytes)
    }
}

/// Checks that a binding is a dense 2-D grid of T.
fn grid_handle<'b, T: Elem>(
    b: &'b pb::Binding,
    what: &str,
    name: &str,
) -> Result<&'b pb::Handle, Error> {
    let h = b
        .handle
        .as_ref()
        .ok_or_else(|| Error::new(format!("{what} {name:?} has no handle")))?;
    if h.kind != pb::PortKind::Grid as i32 || h.shape.len() != 2 || !handle::is_dense(h) {
        return Err(Error::new(format!(
            "{what} {name:?} is not a dense 2-D grid"
        )));
    }
    if h.dtype != T::DTYPE.to_proto() as i32 {
        let got = crate::DType::from_proto(h.dtype).map_or("an unknown dtype", |d| d.name());
        return Err(Error::new(format!(
            "{what} {name:?} holds {got}, not {}",
            T::DTYPE
        )));
    }
    Ok(h)
}

fn view<T>(ptr: *const u8, len: usize, what: &str, name: &str) -> Result<*const T, Error> {
    if !len.is_multiple_of(size_of::<T>()) {
        return Err(Error::new(format!(
            "{what} {name:?}: {len} bytes is not a whole number of elements"
        )));
    }
    if !(ptr as usize).is_multiple_of(align_of::<T>()) {
        return Err(Error::new(format!(
            "{what} {name:?}: buffer is not aligned for its dtype"
        )));
    }
    Ok(ptr.cast())
}

/// A timed subtask; sent to the host when dropped (or [`Span::end`]ed).
pub struct Span<'c> {
    ctx: &'c RunContext,
    id: u64,
    parent: u64,
    name: String,
    start: i64,
    nested: bool,
}

impl<'c> Span<'c> {
    /// A span whose parent is this one.
    pub fn child(&self, name: &str) -> Span<'c> {
        self.ctx.new_span(name, self.id, false)
    }
    /// The span's id within the run (1, 2, ...).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Ends the span now (same as dropping it).
    pub fn end(self) {}
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let end = crate::monotonic_ns();
        if self.ctx.markers {
            if self.nested {
                crate::trace_marker::end();
            } else {
                crate::trace_marker::async_end(&self.name, self.ctx.marker_base | self.id);
            }
        }
        if self.nested {
            let mut stack = lock(&self.ctx.span_stack);
            if let Some(i) = stack.iter().rposition(|&id| id == self.id) {
                stack.remove(i);
            }
        }
        (self.ctx.sink)(pb::RunEvent {
            event: Some(pb::run_event::Event::Span(pb::Span {
                id: self.id,
                parent_id: self.parent,
                name: std::mem::take(&mut self.name),
                start_ns: self.start,
                end_ns: end,
            })),
        });
    }
}

// ------------------------------------------------------------- run buffers

/// How long a Run waits for an fd the host announced (it is sent before the
/// Run call, so only a broken host makes this expire).
pub(crate) const FD_WAIT: Duration = Duration::from_secs(10);

/// The plugin's end of the fd channel, shared by all runs.
pub(crate) struct DataPlane {
    pub(crate) channel: Arc<Channel>,
    pub(crate) mailbox: Mailbox,
    next_token: AtomicU64,
}

impl DataPlane {
    pub(crate) fn new(channel: Arc<Channel>, mailbox: Mailbox) -> DataPlane {
        DataPlane {
            channel,
            mailbox,
            next_token: AtomicU64::new(0),
        }
    }
    /// A fresh plugin token: 2^63 + 1, 2^63 + 2, ...
    fn token(&self) -> u64 {
        PLUGIN_TOKEN_BIT | (self.next_token.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

struct InBuf {
    binding: pb::Binding,
    map: Mapping,
    _seg: Segment,
}

struct OutBuf {
    binding: pb::Binding,
    seg: Segment,
    map: Option<Mapping>,
    taken: bool,
}

struct DynBuf {
    port: String,
    kind: pb::PortKind,
    seg: Segment,
    map: Option<Mapping>,
}

/// A run's buffers. Dropping it unmaps and closes everything.
pub(crate) struct RunData {
    plane: Option<Arc<DataPlane>>,
    inputs: HashMap<String, InBuf>,
    outputs: Mutex<HashMap<String, OutBuf>>,
    dynamic: Mutex<Vec<DynBuf>>,
    declared: Vec<pb::Port>,
}

impl RunData {
    /// Takes every fd the request names from the mailbox, checks each
    /// segment and handle, and maps the inputs read-only.
    pub(crate) fn bind(
        plane: Option<Arc<DataPlane>>,
        req: &pb::RunRequest,
        declared: &[pb::Port],
        wait: Duration,
    ) -> Result<RunData, Error> {
        let mut rd = RunData {
            plane: plane.clone(),
            inputs: HashMap::new(),
            outputs: Mutex::new(HashMap::new()),
            dynamic: Mutex::new(Vec::new()),
            declared: declared.to_vec(),
        };
        if req.inputs.is_empty() && req.outputs.is_empty() {
            return Ok(rd);
        }
        let Some(plane) = plane else {
            return Err(Error::new(
                "the run has buffers but this plugin has no fd channel",
            ));
        };
        let deadline = Instant::now() + wait;
        let mut outs = HashMap::new();
        for (list, input) in [(&req.inputs, true), (&req.outputs, false)] {
            for b in list {
                let what = if input { "input" } else { "output" };
                let port = &b.port;
                let left = deadline.saturating_duration_since(Instant::now());
                let (msg, fd) = plane
                    .mailbox
                    .take(b.fd_token, left)
                    .map_err(|e| e.context(format!("{what} {port:?}")))?;
                let seg = Segment::open(fd).map_err(|e| e.context(format!("{what} {port:?}")))?;
                if msg.size != seg.size() {
                    return Err(Error::new(format!(
                        "{what} {port:?}: the fd channel announced {} bytes but the segment has {}",
                        msg.size,
                        seg.size()
                    )));
                }
                handle::validate(b.handle.as_ref(), seg.size())
                    .map_err(|e| Error::new(format!("{what} {port:?}: {e}")))?;
                if input {
                    // Inputs are sealed by the host; map_ro refuses anything else.
                    let map = seg
                        .map_ro()
                        .map_err(|e| e.context(format!("input {port:?}")))?;
                    rd.inputs.insert(
                        port.clone(),
                        InBuf {
                            binding: b.clone(),
                            map,
                            _seg: seg,
                        },
                    );
                } else {
                    outs.insert(
                        port.clone(),
                        OutBuf {
                            binding: b.clone(),
                            seg,
                            map: None,
                            taken: false,
                        },
                    );
                }
            }
        }
        rd.outputs = Mutex::new(outs);
        Ok(rd)
    }

    fn input(&self, stage: &str, name: &str) -> Result<&InBuf, Error> {
        self.inputs.get(name).ok_or_else(|| {
            Error::new(format!(
                "stage {stage} has no input {name:?} bound in this run"
            ))
        })
    }

    #[allow(clippy::mut_from_ref)]
    fn dynamic_output(&self, stage: &str, name: &str, nbytes: u64) -> Result<&mut [u8], Error> {
        let port = self
            .declared
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::new(format!("stage {stage} declares no output {name:?}")))?;
        let kind = pb::PortKind::try_from(port.kind).unwrap_or(pb::PortKind::Unspecified);
        if !matches!(kind, pb::PortKind::Table | pb::PortKind::Blob) {
            return Err(Error::new(format!(
                "output {name:?} is a grid: the host allocates it (use output::<T>)"
            )));
        }
        let mut dyns = lock(&self.dynamic);
        if dyns.iter().any(|d| d.port == name) {
            return Err(Error::new(format!(
                "dynamic output {name:?} was already created in this run"
            )));
        }
        let seg = Segment::create(&format!("{stage}.{name}"), nbytes)?;
        let map = seg
            .map_rw()
            .map_err(|e| e.context(format!("dynamic output {name:?}")))?;
        let (ptr, len) = (map.as_ptr(), map.len());
        dyns.push(DynBuf {
            port: name.to_string(),
            kind,
            seg,
            map: Some(map),
        });
        // SAFETY: the mapping lives until finish(&mut self), after the stage
        // function returned; each port gets one segment, so this is the only
        // view of it.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }

    /// Unmaps every writable view and hands the dynamic outputs to the host
    /// (ADOPT before the Result). Returns their bindings.
    pub(crate) fn finish(&mut self) -> Result<Vec<pb::Binding>, Error> {
        for b in self
            .outputs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
        {
            b.map = None; // munmap
        }
        let mut out = Vec::new();
        let dyns = std::mem::take(self.dynamic.get_mut().unwrap_or_else(|e| e.into_inner()));
        for mut d in dyns {
            d.map = None;
            let plane = self.plane.as_ref().ok_or_else(|| {
                Error::new("dynamic outputs need the fd channel, and this plugin has none")
            })?;
            let size = d.seg.size();
            let h = crate::handle::adopted_handle(d.kind, size);
            let token = plane.token();
            let msg = Message {
                kind: MsgType::Adopt,
                token,
                segment_id: 0,
                size,
            };
            plane
                .channel
                .send(&msg, Some(d.seg.fd()))
                .map_err(|e| e.context(format!("dynamic output {:?}: sending to host", d.port)))?;
            out.push(pb::Binding {
                port: d.port,
                handle: Some(h),
                fd_token: token,
            });
        }
        Ok(out)
    }
}

impl RunContext {
    pub(crate) fn data_mut(&mut self) -> &mut RunData {
        &mut self.data
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::grid_handle;
    use crate::shm::Received;
    use crate::DType;

    struct Host {
        ch: Channel,
        plane: Arc<DataPlane>,
        segs: Vec<Segment>,
    }

    impl Host {
        fn new() -> Host {
            let (host, plugin) = Channel::pair().unwrap();
            let plugin = Arc::new(plugin);
            let mailbox = Mailbox::start(plugin.clone(), |_| {});
            Host {
                ch: host,
                plane: Arc::new(DataPlane::new(plugin, mailbox)),
                segs: Vec::new(),
            }
        }

        /// Makes a 64x32 f32 grid segment, optionally filled and sealed, and
        /// sends it under `token`; returns its binding.
        fn grid(&mut self, port: &str, token: u64, fill: Option<f32>) -> pb::Binding {
            let size = 64 * 32 * 4;
            let seg = Segment::create(port, size).unwrap();
            if let Some(v) = fill {
                let mut m = seg.map_rw().unwrap();
                for c in m.bytes_mut().chunks_exact_mut(4) {
                    c.copy_from_slice(&v.to_le_bytes());
                }
                drop(m);
                seg.seal_write().unwrap();
            }
            let msg = Message {
                kind: MsgType::Segment,
                token,
                segment_id: token,
                size,
            };
            self.ch.send(&msg, Some(seg.fd())).unwrap();
            self.segs.push(seg);
            pb::Binding {
                port: port.into(),
                handle: Some(grid_handle(token, size, 0, DType::F32, 32, 64, 0)),
                fd_token: token,
            }
        }
    }

    fn request(inputs: Vec<pb::Binding>, outputs: Vec<pb::Binding>) -> pb::RunRequest {
        pb::RunRequest {
            stage: "s".into(),
            kind: "test.kind".into(),
            seed: 42,
            topology: Some(pb::Topology {
                kind: "torus".into(),
                ..Default::default()
            }),
            levels: vec![pb::GridInfo {
                level: 0,
                width: 64,
                height: 32,
            }],
            inputs,
            outputs,
            ..Default::default()
        }
    }

    fn declared() -> Vec<pb::Port> {
        vec![
            pb::Port {
                name: "out".into(),
                kind: pb::PortKind::Grid as i32,
                dtype: 1,
                ..Default::default()
            },
            pb::Port {
                name: "tbl".into(),
                kind: pb::PortKind::Table as i32,
                ..Default::default()
            },
            pb::Port {
                name: "raw".into(),
                kind: pb::PortKind::Blob as i32,
                ..Default::default()
            },
        ]
    }

    fn context(host: &Host, req: pb::RunRequest) -> (RunContext, Arc<Mutex<Vec<pb::RunEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |ev| events.lock().unwrap().push(ev))
        };
        let data = RunData::bind(
            Some(host.plane.clone()),
            &req,
            &declared(),
            Duration::from_secs(5),
        )
        .unwrap();
        (
            RunContext::new(req, sink, Arc::new(AtomicBool::new(false)), data),
            events,
        )
    }

    #[test]
    fn views_are_zero_copy_and_writable_views_go_before_the_result() {
        let mut host = Host::new();
        let input = host.grid("in", 1, Some(2.5));
        let output = host.grid("out", 2, None);
        let (mut ctx, _) = context(&host, request(vec![input], vec![output]));
        assert_eq!(ctx.topology().unwrap().kind(), "torus");
        assert_eq!(ctx.seed(), 42);

        let g = ctx.input::<f32>("in").unwrap();
        assert_eq!((g.width(), g.height(), g.len()), (64, 32, 64 * 32));
        assert!(g.iter().all(|&v| v == 2.5));
        let e = ctx.input::<f64>("in").unwrap_err();
        assert!(e.message().contains("holds f32, not f64"), "{e}");
        assert!(ctx.input::<f32>("nope").is_err());
        assert!(ctx.has_input("in") && !ctx.has_input("nope"));

        {
            let mut out = ctx.output::<f32>("out").unwrap();
            for (i, v) in out.iter_mut().enumerate() {
                *v = i as f32;
            }
            out.set(3, 1, -1.0);
            let e = ctx.output::<f32>("out").unwrap_err();
            assert!(e.message().contains("already in use"), "{e}");
        }
        // The view is gone but the SDK still maps the output: the host cannot seal yet.
        assert!(host.segs[1].seal_write().is_err());
        assert!(ctx.data_mut().finish().unwrap().is_empty());
        host.segs[1]
            .seal_write()
            .expect("no writable mapping after finish");
        let m = host.segs[1].map_ro().unwrap();
        let vals: Vec<f32> = m
            .bytes()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals[5], 5.0);
        assert_eq!(vals[64 + 3], -1.0);
    }

    #[test]
    fn dynamic_outputs_are_adopted_before_the_result() {
        let host = Host::new();
        let (mut ctx, _) = context(&host, request(vec![], vec![]));
        let t = ctx.dynamic_output("tbl", 100).unwrap();
        t[..5].copy_from_slice(b"ARROW");
        let b = ctx.dynamic_output("raw", 3).unwrap();
        b.copy_from_slice(&[1, 2, 3]);
        assert!(
            ctx.dynamic_output("raw", 3).is_err(),
            "one segment per port"
        );
        assert!(
            ctx.dynamic_output("out", 8).is_err(),
            "grids are host-allocated"
        );
        assert!(ctx.dynamic_output("none", 8).is_err());
        let bindings = ctx.data_mut().finish().unwrap();
        assert_eq!(bindings.len(), 2);
        for b in &bindings {
            let Received::Message(m, Some(fd)) = host.ch.recv().unwrap() else {
                panic!("no ADOPT")
            };
            assert_eq!(m.kind, MsgType::Adopt);
            assert_eq!(m.token, b.fd_token);
            assert!(m.token & PLUGIN_TOKEN_BIT != 0);
            let seg = Segment::open(fd).unwrap();
            let h = b.handle.as_ref().unwrap();
            assert_eq!((seg.size(), m.size), (h.segment_size, h.segment_size));
            handle::validate(Some(h), seg.size()).unwrap();
            // The plugin kept no writable mapping.
            seg.seal_write().unwrap();
            let bytes = seg.map_ro().unwrap().bytes().to_vec();
            if b.port == "tbl" {
                assert_eq!(h.format, pb::Format::ArrowIpc as i32);
                assert_eq!(&bytes[..5], b"ARROW");
                assert_eq!(bytes.len(), 100);
            } else {
                assert_eq!(
                    (h.kind, h.format),
                    (pb::PortKind::Blob as i32, pb::Format::Raw as i32)
                );
                assert_eq!(bytes, vec![1, 2, 3]);
            }
        }
        assert_ne!(bindings[0].fd_token, bindings[1].fd_token);
    }

    #[test]
    fn bind_checks_seals_handles_and_sizes() {
        let bind = |host: &Host, req: &pb::RunRequest| {
            RunData::bind(
                Some(host.plane.clone()),
                req,
                &declared(),
                Duration::from_millis(200),
            )
            .map(|_| ())
        };
        // An input that is not write-sealed is refused.
        let mut host = Host::new();
        let b = host.grid("in", 1, None);
        let e = bind(&host, &request(vec![b], vec![])).unwrap_err();
        assert!(
            e.message().contains("input \"in\"") && e.message().contains("not write-sealed"),
            "{e}"
        );
        // A handle that does not fit its segment.
        let mut b = host.grid("in", 2, Some(1.0));
        b.handle.as_mut().unwrap().nbytes += 64;
        b.handle.as_mut().unwrap().shape = vec![33, 64];
        let e = bind(&host, &request(vec![b], vec![])).unwrap_err();
        assert!(e.message().contains("invalid handle for segment 2"), "{e}");
        // A token that never arrives.
        let b = pb::Binding {
            fd_token: 99,
            ..host.grid("out", 3, None)
        };
        let e = bind(&host, &request(vec![], vec![b])).unwrap_err();
        assert!(
            e.message().contains("output \"out\"") && e.message().contains("timed out"),
            "{e}"
        );
        // A SEGMENT whose announced size is not the segment's.
        let seg = Segment::create("odd", 4096).unwrap();
        host.ch
            .send(
                &Message {
                    kind: MsgType::Segment,
                    token: 4,
                    segment_id: 4,
                    size: 8192,
                },
                Some(seg.fd()),
            )
            .unwrap();
        let b = pb::Binding {
            port: "out".into(),
            handle: Some(grid_handle(4, 4096, 0, DType::F32, 32, 32, 0)),
            fd_token: 4,
        };
        let e = bind(&host, &request(vec![], vec![b])).unwrap_err();
        assert!(e.message().contains("announced 8192 bytes"), "{e}");
        // Buffers without an fd channel.
        let req = request(
            vec![],
            vec![pb::Binding {
                fd_token: 5,
                ..Default::default()
            }],
        );
        assert!(RunData::bind(None, &req, &declared(), Duration::from_millis(10)).is_err());
    }

    #[test]
    fn spans_nest_and_progress_is_rate_limited() {
        let host = Host::new();
        let (ctx, events) = context(&host, request(vec![], vec![]));
        {
            let _a = ctx.timed("a");
            {
                let _b = ctx.timed("b");
            }
            let _c = ctx.timed("c");
        }
        let top = ctx.span("d");
        top.child("e").end();
        drop(top);
        ctx.progress(0.1, "x");
        ctx.progress(0.2, "x");
        ctx.progress(1.0, "done");
        ctx.info("hello");
        ctx.metric("m", 1.5);
        ctx.metric("m", 2.5);
        let evs = events.lock().unwrap();
        let spans: Vec<&pb::Span> = evs
            .iter()
            .filter_map(|e| match &e.event {
                Some(pb::run_event::Event::Span(s)) => Some(s),
                _ => None,
            })
            .collect();
        let by_name = |n: &str| *spans.iter().find(|s| s.name == n).unwrap();
        let (a, b, c, d, e) = (
            by_name("a"),
            by_name("b"),
            by_name("c"),
            by_name("d"),
            by_name("e"),
        );
        assert_eq!(a.parent_id, 0);
        assert_eq!(b.parent_id, a.id);
        assert_eq!(c.parent_id, a.id, "b had ended, so c nests under a");
        assert_eq!((d.parent_id, e.parent_id), (0, d.id));
        assert!(a.start_ns <= b.start_ns && b.end_ns <= a.end_ns && a.start_ns > 0);
        let progress: Vec<f64> = evs
            .iter()
            .filter_map(|e| match &e.event {
                Some(pb::run_event::Event::Progress(p)) => Some(p.fraction),
                _ => None,
            })
            .collect();
        assert_eq!(progress, vec![0.1, 1.0]);
        assert!(evs.iter().any(|e| matches!(&e.event, Some(pb::run_event::Event::Log(l)) if l.message == "hello" && l.level == LogLevel::Info as i32)));
        drop(evs);
        assert_eq!(ctx.take_metrics().get("m"), Some(&2.5));
        assert!(!ctx.is_cancelled() && ctx.check_cancelled().is_ok());
        ctx.cancelled.store(true, Ordering::Relaxed);
        assert_eq!(
            ctx.check_cancelled().unwrap_err().kind(),
            crate::ErrorKind::Cancelled
        );
    }
}

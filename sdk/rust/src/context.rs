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
    last_progress: Mutex<Option<Instant>>,
    metrics: Mutex<HashMap<String, f64>>,
}

impl RunContext {
    pub(crate) fn new(req: pb::RunRequest, sink: EventSink, cancelled: Arc<AtomicBool>, data: RunData) -> Self {
        RunContext {
            req,
            sink,
            cancelled,
            data,
            span_next: AtomicU64::new(0),
            span_stack: Mutex::new(Vec::new()),
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
        let t = self.req.topology.as_ref().ok_or_else(|| Error::new("the run request has no topology"))?;
        let native = self.req.levels.first().ok_or_else(|| Error::new("the run request has no grid levels"))?;
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
            event: Some(pb::run_event::Event::Progress(pb::Progress { fraction, message: message.to_string() })),
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
    /// ```ignore
    /// let _s = ctx.timed("erode");
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
        Span {
            ctx: self,
            id: self.span_next.fetch_add(1, Ordering::Relaxed) + 1,
            parent,
            name: name.to_string(),
            start: crate::monotonic_ns(),
            nested,
        }
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
        Ok(Grid::new(data, h.shape[1] as usize, h.shape[0] as usize, h.level))
    }

    /// The raw bytes and handle of any input (grid, table or blob), read-only.
    pub fn input_bytes(&self, name: &str) -> Result<(&[u8], &pb::Handle), Error> {
        let b = self.data.input(self.stage(), name)?;
        let h = b.binding.handle.as_ref().expect("validated at bind");
        Ok((&b.map.bytes()[h.offset as usize..(h.offset + h.nbytes) as usize], h))
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
            return Err(Error::new(format!("stage {} has no output {name:?} bound in this run", self.stage())));
        };
        if b.taken {
            return Err(Error::new(format!(
                "output {name:?} is already in use in this run (take each output view once)"
            )));
        }
        let h = grid_handle::<T>(&b.binding, "output", name)?.clone();
        if b.map.is_none() {
            b.map = Some(b.seg.map_rw().map_err(|e| e.context(format!("output {name:?}")))?);
        }
        let m = b.map.as_ref().expect("mapped above");
        // SAFETY: offset + nbytes ≤ segment size (validated at bind).
        let ptr = unsafe { m.as_ptr().add(h.offset as usize) };
        let ptr = view::<T>(ptr, h.nbytes as usize, "output", name)?.cast_mut();
        b.taken = true;
        // SAFETY: the mapping stays until `finish(&mut self)` runs after the
        // stage function returned, so it outlives this borrow of self;
        // `taken` makes this the only live view of the buffer.
        let data = unsafe { std::slice::from_raw_parts_mut(ptr, h.nbytes as usize / size_of::<T>()) };
        Ok(GridMut::new(data, h.shape[1] as usize, h.shape[0] as usize, h.level))
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
fn grid_handle<'b, T: Elem>(b: &'b pb::Binding, what: &str, name: &str) -> Result<&'b pb::Handle, Error> {
    let h = b.handle.as_ref().ok_or_else(|| Error::new(format!("{what} {name:?} has no handle")))?;
    if h.kind != pb::PortKind::Grid as i32 || h.shape.len() != 2 || !handle::is_dense(h) {
        return Err(Error::new(format!("{what} {name:?} is not a dense 2-D grid")));
    }
    if h.dtype != T::DTYPE as i32 {
        let got = pb::DType::try_from(h.dtype).map(|d| d.as_str_name()).unwrap_or("an unknown dtype");
        return Err(Error::new(format!("{what} {name:?} holds {got}, not {}", T::DTYPE.as_str_name())));
    }
    Ok(h)
}

fn view<T>(ptr: *const u8, len: usize, what: &str, name: &str) -> Result<*const T, Error> {
    if len % size_of::<T>() != 0 {
        return Err(Error::new(format!("{what} {name:?}: {len} bytes is not a whole number of elements")));
    }
    if (ptr as usize) % align_of::<T>() != 0 {
        return Err(Error::new(format!("{what} {name:?}: buffer is not aligned for its dtype")));
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
        DataPlane { channel, mailbox, next_token: AtomicU64::new(0) }
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
            return Err(Error::new("the run has buffers but this plugin has no fd channel"));
        };
        let deadline = Instant::now() + wait;
        let mut outs = HashMap::new();
        for (list, input) in [(&req.inputs, true), (&req.outputs, false)] {
            for b in list {
                let what = if input { "input" } else { "output" };
                let port = &b.port;
                let left = deadline.saturating_duration_since(Instant::now());
                let (msg, fd) = plane.mailbox.take(b.fd_token, left).map_err(|e| e.context(format!("{what} {port:?}")))?;
                let seg = Segment::open(fd).map_err(|e| e.context(format!("{what} {port:?}")))?;
                if msg.size != seg.size() {
                    return Err(Error::new(format!(
                        "{what} {port:?}: the fd channel announced {} bytes but the segment has {}",
                        msg.size,
                        seg.size()
                    )));
                }
                handle::validate(b.handle.as_ref(), seg.size()).map_err(|e| Error::new(format!("{what} {port:?}: {e}")))?;
                if input {
                    // Inputs are sealed by the host; map_ro refuses anything else.
                    let map = seg.map_ro().map_err(|e| e.context(format!("input {port:?}")))?;
                    rd.inputs.insert(port.clone(), InBuf { binding: b.clone(), map, _seg: seg });
                } else {
                    outs.insert(port.clone(), OutBuf { binding: b.clone(), seg, map: None, taken: false });
                }
            }
        }
        rd.outputs = Mutex::new(outs);
        Ok(rd)
    }

    fn input(&self, stage: &str, name: &str) -> Result<&InBuf, Error> {
        self.inputs
            .get(name)
            .ok_or_else(|| Error::new(format!("stage {stage} has no input {name:?} bound in this run")))
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
            return Err(Error::new(format!("dynamic output {name:?} was already created in this run")));
        }
        let seg = Segment::create(&format!("{stage}.{name}"), nbytes)?;
        let map = seg.map_rw().map_err(|e| e.context(format!("dynamic output {name:?}")))?;
        let (ptr, len) = (map.as_ptr(), map.len());
        dyns.push(DynBuf { port: name.to_string(), kind, seg, map: Some(map) });
        // SAFETY: the mapping lives until finish(&mut self), after the stage
        // function returned; each port gets one segment, so this is the only
        // view of it.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }

    /// Unmaps every writable view and hands the dynamic outputs to the host
    /// (ADOPT before the Result). Returns their bindings.
    pub(crate) fn finish(&mut self) -> Result<Vec<pb::Binding>, Error> {
        for b in self.outputs.get_mut().unwrap_or_else(|e| e.into_inner()).values_mut() {
            b.map = None; // munmap
        }
        let mut out = Vec::new();
        let dyns = std::mem::take(self.dynamic.get_mut().unwrap_or_else(|e| e.into_inner()));
        for mut d in dyns {
            d.map = None;
            let plane = self
                .plane
                .as_ref()
                .ok_or_else(|| Error::new("dynamic outputs need the fd channel, and this plugin has none"))?;
            let size = d.seg.size();
            let mut h = pb::Handle {
                segment_size: size,
                nbytes: size,
                kind: d.kind as i32,
                ..Default::default()
            };
            if d.kind == pb::PortKind::Table {
                h.format = pb::Format::ArrowIpc as i32;
            } else {
                h.format = pb::Format::Raw as i32;
                h.dtype = pb::DType::U8 as i32;
                h.shape = vec![size];
                h.strides = vec![1];
            }
            let token = plane.token();
            let msg = Message { kind: MsgType::Adopt, token, segment_id: 0, size };
            plane
                .channel
                .send(&msg, Some(d.seg.fd()))
                .map_err(|e| e.context(format!("dynamic output {:?}: sending to host", d.port)))?;
            out.push(pb::Binding { port: d.port, handle: Some(h), fd_token: token });
        }
        Ok(out)
    }
}

impl RunContext {
    pub(crate) fn data_mut(&mut self) -> &mut RunData {
        &mut self.data
    }
}

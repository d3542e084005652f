//! A run's buffers: the inputs mapped read-only, the outputs mapped
//! writable on first use, dynamic outputs (tables, blobs) created by the
//! stage, and the hand-back of all of them before the Result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, RunContext};
use crate::grid::{Elem, Grid, GridMut};
use crate::handle;
use crate::pb;
use crate::shm::{Channel, Mailbox, Mapping, Message, MsgType, Segment, Writer, PLUGIN_TOKEN_BIT};
use crate::Error;

impl RunContext {
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

    /// A writer for dynamic output `name` (a table or blob port) whose size
    /// is not known in advance: it implements [`std::io::Write`], appends
    /// straight into a shared-memory segment (no copy, no writable mapping)
    /// and is handed to the host when the stage function returns. For a
    /// table, write an Arrow IPC file (with footer).
    pub fn output_writer(&self, name: &str) -> Result<OutputWriter<'_>, Error> {
        let w = self.data.output_writer(self.stage(), name)?;
        Ok(OutputWriter {
            port: name.to_string(),
            w,
            _run: std::marker::PhantomData,
        })
    }

    pub(crate) fn data_mut(&mut self) -> &mut RunData {
        &mut self.data
    }
}

/// The streaming writer of a dynamic output
/// ([`RunContext::output_writer`]); it borrows the context, so it cannot
/// outlive the run.
pub struct OutputWriter<'c> {
    port: String,
    w: Arc<Mutex<Option<Writer>>>,
    _run: std::marker::PhantomData<&'c RunContext>,
}

impl OutputWriter<'_> {
    /// The bytes written so far.
    pub fn len(&self) -> u64 {
        lock(&self.w).as_ref().map_or(0, Writer::len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::io::Write for OutputWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match lock(&self.w).as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other(format!(
                "output {:?}: the run has ended; its writer is closed",
                self.port
            ))),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
    body: DynBody,
}

/// Where a dynamic output's bytes are: a segment of a size given up front,
/// mapped writable until the run ends, or a growing segment the stage
/// appends to through an [`OutputWriter`] (never mapped).
enum DynBody {
    Mapped { seg: Segment, map: Option<Mapping> },
    Stream(Arc<Mutex<Option<Writer>>>),
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

    /// Checks that `name` is a table or blob output of the stage not yet
    /// produced in this run, and returns its kind.
    fn dynamic_port(
        &self,
        dyns: &[DynBuf],
        stage: &str,
        name: &str,
    ) -> Result<pb::PortKind, Error> {
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
        if dyns.iter().any(|d| d.port == name) {
            return Err(Error::new(format!(
                "dynamic output {name:?} was already created in this run"
            )));
        }
        Ok(kind)
    }

    fn output_writer(&self, stage: &str, name: &str) -> Result<Arc<Mutex<Option<Writer>>>, Error> {
        let mut dyns = lock(&self.dynamic);
        let kind = self.dynamic_port(&dyns, stage, name)?;
        let w = Writer::new(&format!("{stage}.{name}"))
            .map_err(|e| e.context(format!("dynamic output {name:?}")))?;
        let w = Arc::new(Mutex::new(Some(w)));
        dyns.push(DynBuf {
            port: name.to_string(),
            kind,
            body: DynBody::Stream(w.clone()),
        });
        Ok(w)
    }

    #[allow(clippy::mut_from_ref)]
    fn dynamic_output(&self, stage: &str, name: &str, nbytes: u64) -> Result<&mut [u8], Error> {
        let mut dyns = lock(&self.dynamic);
        let kind = self.dynamic_port(&dyns, stage, name)?;
        let seg = Segment::create(&format!("{stage}.{name}"), nbytes)?;
        let map = seg
            .map_rw()
            .map_err(|e| e.context(format!("dynamic output {name:?}")))?;
        let (ptr, len) = (map.as_ptr(), map.len());
        dyns.push(DynBuf {
            port: name.to_string(),
            kind,
            body: DynBody::Mapped {
                seg,
                map: Some(map),
            },
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
        for d in dyns {
            let seg = match d.body {
                DynBody::Mapped { seg, map } => {
                    drop(map); // munmap
                    seg
                }
                DynBody::Stream(w) => lock(&w)
                    .take()
                    .ok_or_else(|| {
                        Error::new(format!(
                            "dynamic output {:?}: writer already finished",
                            d.port
                        ))
                    })?
                    .finish()
                    .map_err(|e| e.context(format!("dynamic output {:?}", d.port)))?,
            };
            let plane = self.plane.as_ref().ok_or_else(|| {
                Error::new("dynamic outputs need the fd channel, and this plugin has none")
            })?;
            let size = seg.size();
            let h = handle::adopted_handle(d.kind, size);
            let token = plane.token();
            let msg = Message {
                kind: MsgType::Adopt,
                token,
                segment_id: 0,
                size,
            };
            plane
                .channel
                .send(&msg, Some(seg.fd()))
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

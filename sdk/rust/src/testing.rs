//! The stage test harness: runs a stage in-process, the way the host runs
//! it, and hands back everything the host would see.
//!
//! ```
//! use pipehost::testing::Harness;
//! use pipehost::{DType, Error, Port, RunContext, Stage};
//!
//! fn double(ctx: &RunContext, _: ()) -> Result<(), Error> {
//!     let input = ctx.input::<f32>("in")?;
//!     let mut out = ctx.output::<f32>("out")?;
//!     for (o, i) in out.iter_mut().zip(input.iter()) {
//!         *o = 2.0 * i;
//!     }
//!     ctx.info("doubled");
//!     Ok(())
//! }
//!
//! let stage = Stage::new("demo.double", "1.0.0", double)
//!     .input(Port::grid("in", DType::F32))
//!     .output(Port::grid("out", DType::F32));
//! let out = Harness::new(stage)
//!     .grid("torus", 8, 4)
//!     .input("in", &[1.5f32; 32])
//!     .run()
//!     .ok()
//!     .unwrap();
//! assert!(out.output::<f32>("out").unwrap().iter().all(|&v| v == 3.0));
//! assert_eq!(out.logs()[0].message, "doubled");
//! ```
//!
//! Everything is real: each input is a memfd filled, unmapped and sealed
//! `F_SEAL_WRITE | F_SEAL_SEAL` before the stage sees it; each grid output
//! is a memfd of the declared size that the stage maps writable; the fds
//! travel over a real `SOCK_SEQPACKET` pair with `SCM_RIGHTS`; the stage
//! runs through the same code as under `serve`. After it returns, the
//! harness seals every output as the host does: an output the stage (or a
//! child of it) still maps writable fails the run, as it would in a
//! pipeline. Dynamic outputs arrive over the fd channel (ADOPT) and are
//! sealed too. The seed is the host's ([`stage_seed`](crate::seed::stage_seed)
//! of the run seed and the stage name) and the topology and pyramid are
//! built by the same code as the host's.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::context::{DataPlane, EventSink};
use crate::grid::{Elem, Grid};
use crate::handle;
use crate::params::Value;
use crate::pb;
use crate::run::{self, ActiveRuns, Failure};
use crate::seed::stage_seed;
use crate::shm::{Channel, Mailbox, Mapping, Message, MsgType, Received, Segment};
use crate::topology::{self, Options, Topology};
use crate::{DType, Error, LogLevel, Stage};

/// How long a run waits for its fds; they are all sent before it starts.
const FD_WAIT: Duration = Duration::from_secs(5);

/// One run of one stage, set up with builder methods and started with
/// [`Harness::run`]. Misuse of the harness itself (an undeclared port or
/// param, data of the wrong size) panics with a message saying what to fix,
/// like a failed assertion.
pub struct Harness {
    stage: Stage,
    name: String,
    run_seed: u64,
    topology: String,
    width: usize,
    height: usize,
    levels: usize,
    params: HashMap<String, pb::Value>,
    inputs: Vec<(String, InputData)>,
    cancelled: bool,
}

struct InputData {
    dtype: Option<DType>,
    bytes: Vec<u8>,
}

impl Harness {
    /// A run of `stage` as stage instance `"test"` with run seed 0 on a
    /// 64×32 torus with one pyramid level (as in the other SDKs' harnesses);
    /// change any of them below.
    pub fn new(stage: Stage) -> Harness {
        Harness {
            stage,
            name: "test".into(),
            run_seed: 0,
            topology: "torus".into(),
            width: 64,
            height: 32,
            levels: 1,
            params: HashMap::new(),
            inputs: Vec::new(),
            cancelled: false,
        }
    }

    /// The stage instance name (the key of its `[stages.NAME]` table); the
    /// stage's seed derives from it.
    pub fn name(mut self, name: &str) -> Harness {
        self.name = name.to_string();
        self
    }

    /// The run seed (`[run] seed`); the stage sees
    /// `stage_seed(run_seed, name)` as [`RunContext::seed`](crate::RunContext::seed).
    pub fn seed(mut self, run_seed: u64) -> Harness {
        self.run_seed = run_seed;
        self
    }

    /// The topology (`sphere`, `cylinder`, `torus`, `plane`) and the native
    /// grid size.
    pub fn grid(mut self, topology: &str, width: usize, height: usize) -> Harness {
        self.topology = topology.to_string();
        self.width = width;
        self.height = height;
        self
    }

    /// The number of pyramid levels, the native one included (`[grid] levels`).
    pub fn levels(mut self, levels: usize) -> Harness {
        self.levels = levels;
        self
    }

    /// Sets parameter `name` (others take their defaults).
    ///
    /// # Panics
    /// If the stage declares no such parameter (the host refuses it too).
    pub fn param(mut self, name: &str, value: impl Into<Value>) -> Harness {
        assert!(
            self.stage.specs().iter().any(|s| s.name() == name),
            "pipehost harness: stage {} declares no param {name:?}",
            self.stage.kind()
        );
        self.params
            .insert(name.to_string(), value.into().to_proto());
        self
    }

    /// The grid on input port `name`, row-major at the port's pyramid level.
    pub fn input<T: Elem>(mut self, name: &str, data: &[T]) -> Harness {
        // SAFETY: Elem types are plain numbers: every byte of them is
        // initialised and reading them as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        };
        self.inputs.push((
            name.to_string(),
            InputData {
                dtype: Some(T::DTYPE),
                bytes: bytes.to_vec(),
            },
        ));
        self
    }

    /// The bytes on a table (an Arrow IPC file) or blob input port `name`.
    pub fn input_bytes(mut self, name: &str, bytes: &[u8]) -> Harness {
        self.inputs.push((
            name.to_string(),
            InputData {
                dtype: None,
                bytes: bytes.to_vec(),
            },
        ));
        self
    }

    /// Starts the run already cancelled, as after a timeout or Ctrl-C, to
    /// test the stage's cancellation path.
    pub fn cancelled(mut self) -> Harness {
        self.cancelled = true;
        self
    }

    /// Runs the stage and collects what it produced.
    ///
    /// # Panics
    /// On harness misuse: a missing or undeclared input, data whose size does
    /// not match the grid, a bad topology or size.
    pub fn run(self) -> Outcome {
        let kind = self.stage.kind().to_string();
        let desc = self.stage.descriptor().clone();
        macro_rules! misuse {
            ($($t:tt)*) => {
                panic!("pipehost harness: stage {kind}: {}", format!($($t)*))
            };
        }

        let topo = Topology::load(
            &self.topology,
            self.width as i64,
            self.height as i64,
            Options::default(),
        )
        .unwrap_or_else(|e| misuse!("{e}"));
        let levels = topology::levels(
            &self.topology,
            self.width as i64,
            self.height as i64,
            self.levels.max(1) as i64 - 1,
        )
        .unwrap_or_else(|e| misuse!("{e}"));
        let level_size = |level: u32| {
            levels
                .iter()
                .find(|l| l.level == level)
                .map(|l| (l.width as u64, l.height as u64))
                .unwrap_or_else(|| {
                    misuse!(
                        "a port is at pyramid level {level}, but the run has {} levels (use .levels(n))",
                        levels.len()
                    )
                })
        };

        let (host, plugin) = Channel::pair().unwrap_or_else(|e| misuse!("{e}"));
        let plugin = Arc::new(plugin);
        let mailbox = Mailbox::start(plugin.clone(), |_| {});
        let plane = Arc::new(DataPlane::new(plugin, mailbox));
        let mut next_token = 0u64;
        let mut send = |seg: &Segment| -> u64 {
            next_token += 1;
            let msg = Message {
                kind: MsgType::Segment,
                token: next_token,
                segment_id: next_token,
                size: seg.size(),
            };
            host.send(&msg, Some(seg.fd()))
                .unwrap_or_else(|e| misuse!("{e}"));
            next_token
        };

        // Inputs: filled, unmapped and write-sealed before the stage runs.
        let mut in_bindings = Vec::new();
        for (port_name, data) in &self.inputs {
            let port = desc
                .inputs
                .iter()
                .find(|p| &p.name == port_name)
                .unwrap_or_else(|| misuse!("declares no input {port_name:?}"));
            let seg = Segment::create(
                &format!("{}.{port_name}", self.name),
                data.bytes.len() as u64,
            )
            .unwrap_or_else(|e| misuse!("{e}"));
            if !data.bytes.is_empty() {
                let mut m = seg.map_rw().unwrap_or_else(|e| misuse!("{e}"));
                m.bytes_mut().copy_from_slice(&data.bytes);
            }
            seg.seal_write().unwrap_or_else(|e| misuse!("{e}"));
            let size = seg.size();
            let h = if port.kind == pb::PortKind::Grid as i32 {
                let want = DType::from_proto(port.dtype);
                if data.dtype != want {
                    misuse!(
                        "input {port_name:?} is declared {}, but the harness was given {}",
                        want.map_or("?", DType::name),
                        data.dtype.map_or("bytes", DType::name)
                    );
                }
                let dtype = want.expect("checked above");
                let (w, h) = level_size(port.level);
                if w * h * dtype.size() as u64 != size {
                    misuse!(
                        "input {port_name:?} has {} elements; its grid (level {}) is {w}×{h}",
                        size / dtype.size() as u64,
                        port.level
                    );
                }
                handle::grid_handle(0, size, 0, dtype, h, w, port.level)
            } else {
                // Shaped like the handle of a dynamic output, as the host hands it on.
                handle::adopted_handle(
                    pb::PortKind::try_from(port.kind).unwrap_or(pb::PortKind::Blob),
                    size,
                )
            };
            let token = send(&seg);
            in_bindings.push(pb::Binding {
                port: port_name.clone(),
                handle: Some(pb::Handle {
                    segment_id: token,
                    ..h
                }),
                fd_token: token,
            });
            // The harness keeps no fd of an input: the stage's is the only one.
        }
        for p in &desc.inputs {
            if !p.optional && !self.inputs.iter().any(|(n, _)| n == &p.name) {
                misuse!("input {:?} is required: give it with .input(...)", p.name);
            }
        }

        // Grid outputs: pre-allocated at their declared size, unsealed.
        let mut out_bindings = Vec::new();
        let mut out_segs = Vec::new();
        for p in desc
            .outputs
            .iter()
            .filter(|p| p.kind == pb::PortKind::Grid as i32)
        {
            let dtype = DType::from_proto(p.dtype).expect("grid ports have a dtype");
            let (w, h) = level_size(p.level);
            let size = w * h * dtype.size() as u64;
            let seg = Segment::create(&format!("{}.{}", self.name, p.name), size)
                .unwrap_or_else(|e| misuse!("{e}"));
            let token = send(&seg);
            out_bindings.push(pb::Binding {
                port: p.name.clone(),
                handle: Some(handle::grid_handle(token, size, 0, dtype, h, w, p.level)),
                fd_token: token,
            });
            out_segs.push((
                p.name.clone(),
                seg,
                out_bindings.last().unwrap().handle.clone().unwrap(),
            ));
        }

        let req = pb::RunRequest {
            run_id: "harness".into(),
            stage: self.name.clone(),
            kind: kind.clone(),
            params: self.params.clone(),
            seed: stage_seed(self.run_seed, &self.name),
            topology: Some(topo.to_proto()),
            levels: levels.iter().map(|l| l.to_proto()).collect(),
            inputs: in_bindings,
            outputs: out_bindings,
            ..Default::default()
        };
        let seed = req.seed;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |ev| events.lock().unwrap_or_else(|e| e.into_inner()).push(ev))
        };
        let result = run::execute(
            &self.stage,
            Some(plane),
            req,
            sink,
            Arc::new(AtomicBool::new(self.cancelled)),
            FD_WAIT,
            &ActiveRuns::default(),
        );

        let mut out = Outcome {
            error: None,
            seed,
            outputs: HashMap::new(),
            logs: Vec::new(),
            spans: Vec::new(),
            progress: Vec::new(),
            metrics: HashMap::new(),
            stats: None,
        };
        let mut result_event = None;
        for ev in std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner())) {
            use pb::run_event::Event;
            match ev.event {
                Some(Event::Log(l)) => out.logs.push(LogLine {
                    level: LogLevel::try_from(l.level).unwrap_or(LogLevel::Info),
                    message: l.message,
                }),
                Some(Event::Span(s)) => out.spans.push(SpanRecord {
                    id: s.id,
                    parent: s.parent_id,
                    name: s.name,
                    start_ns: s.start_ns,
                    end_ns: s.end_ns,
                }),
                Some(Event::Progress(p)) => out.progress.push((p.fraction, p.message)),
                Some(Event::Result(r)) => result_event = Some(r),
                None => {}
            }
        }
        let result = match result {
            Ok(()) => result_event.ok_or_else(|| Error::new("the run sent no Result")),
            Err(Failure::Bind(e)) => Err(e.context("binding the run's buffers")),
            Err(Failure::Stage(e)) => Err(e),
            Err(Failure::Panic(what)) => Err(Error::new(format!("stage panicked: {what}"))),
            Err(Failure::Finish(e)) => Err(e.context("handing back the outputs")),
        };
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        out.metrics = r.metrics;
        out.stats = r.stats;

        // The host's side of the hand-off: seal, then map read-only.
        let mut failed = Vec::new();
        for (port, seg, h) in out_segs {
            if let Err(e) = seg.seal_write() {
                failed.push(format!(
                    "output {port:?} is still mapped writable after the stage returned, in this \
                     process or another (sealing it failed: {e}); unmap every view of it before \
                     returning"
                ));
                continue;
            }
            match seg.map_ro() {
                Ok(map) => {
                    out.outputs.insert(
                        port,
                        OutputData {
                            _seg: seg,
                            map,
                            handle: h,
                        },
                    );
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        for b in r.dynamic_outputs {
            match adopt(&host, &b) {
                Ok(d) => {
                    out.outputs.insert(b.port, d);
                }
                Err(e) => failed.push(format!("dynamic output {:?}: {e}", b.port)),
            }
        }
        if !failed.is_empty() {
            out.error = Some(Error::new(failed.join("; ")));
        }
        out
        // host drops here: the plugin end sees EOF and its reader thread ends.
    }
}

/// Receives the ADOPT of dynamic output `b`, checks it like the host and
/// seals it.
fn adopt(host: &Channel, b: &pb::Binding) -> Result<OutputData, Error> {
    let Received::Message(m, Some(fd)) = host.recv()? else {
        return Err(Error::new("no ADOPT message on the fd channel"));
    };
    if m.kind != MsgType::Adopt || m.token != b.fd_token {
        return Err(Error::new(format!(
            "expected ADOPT of token {:#x}, got {:?} of {:#x}",
            b.fd_token, m.kind, m.token
        )));
    }
    let seg = Segment::open(fd)?;
    let h = b
        .handle
        .clone()
        .ok_or_else(|| Error::new("the binding has no handle"))?;
    handle::validate(Some(&h), seg.size())?;
    seg.seal_write().map_err(|e| {
        e.context("still mapped writable after the stage returned; unmap it before returning")
    })?;
    let map = seg.map_ro()?;
    Ok(OutputData {
        _seg: seg,
        map,
        handle: h,
    })
}

struct OutputData {
    _seg: Segment,
    map: Mapping,
    handle: pb::Handle,
}

/// A log line the stage sent.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// A span the stage reported ([`RunContext::timed`](crate::RunContext::timed),
/// [`RunContext::span`](crate::RunContext::span)); `parent` is 0 at the top.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub id: u64,
    pub parent: u64,
    pub name: String,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// What a run produced: its error, or its sealed outputs; and in both
/// cases its logs, spans and progress. Outputs are read-only mappings of
/// write-sealed memory, as every consumer in a pipeline sees them.
pub struct Outcome {
    error: Option<Error>,
    seed: u64,
    outputs: HashMap<String, OutputData>,
    logs: Vec<LogLine>,
    spans: Vec<SpanRecord>,
    progress: Vec<(f64, String)>,
    metrics: HashMap<String, f64>,
    stats: Option<pb::StageStats>,
}

impl Outcome {
    /// The run's error (the stage's own, a panic, or an output the stage
    /// did not hand back properly); `None` when it succeeded.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// The outcome of a successful run, or its error: `harness.run().ok()?`.
    pub fn ok(self) -> Result<Outcome, Error> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }

    /// The seed the stage was given.
    pub fn stage_seed(&self) -> u64 {
        self.seed
    }

    /// Grid output `port`, read-only.
    pub fn output<T: Elem>(&self, port: &str) -> Result<Grid<'_, T>, Error> {
        let d = self.get(port)?;
        let h = &d.handle;
        if h.kind != pb::PortKind::Grid as i32 || h.shape.len() != 2 {
            return Err(Error::new(format!("output {port:?} is not a grid")));
        }
        if h.dtype != T::DTYPE.to_proto() as i32 {
            return Err(Error::new(format!(
                "output {port:?} holds {}, not {}",
                DType::from_proto(h.dtype).map_or("?", DType::name),
                T::DTYPE
            )));
        }
        let bytes = &d.map.bytes()[h.offset as usize..(h.offset + h.nbytes) as usize];
        if !(bytes.as_ptr() as usize).is_multiple_of(align_of::<T>()) {
            return Err(Error::new(format!(
                "output {port:?} is not aligned for {}",
                T::DTYPE
            )));
        }
        // SAFETY: the range lies in the mapping (validated when sent), is
        // aligned, lives as long as self, and every bit pattern is a valid T.
        let data = unsafe {
            std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size_of::<T>())
        };
        Ok(Grid::new(
            data,
            h.shape[1] as usize,
            h.shape[0] as usize,
            h.level,
        ))
    }

    /// The bytes of any output (a grid's raw bytes, a table's Arrow IPC
    /// file, a blob), read-only.
    pub fn output_bytes(&self, port: &str) -> Result<&[u8], Error> {
        let d = self.get(port)?;
        let h = &d.handle;
        Ok(&d.map.bytes()[h.offset as usize..(h.offset + h.nbytes) as usize])
    }

    /// The handle the output was described by.
    pub fn output_handle(&self, port: &str) -> Result<&pb::Handle, Error> {
        Ok(&self.get(port)?.handle)
    }

    /// Every log line, in order.
    pub fn logs(&self) -> &[LogLine] {
        &self.logs
    }

    /// Every span, in the order they ended.
    pub fn spans(&self) -> &[SpanRecord] {
        &self.spans
    }

    /// The span named `name` (the first one to end).
    pub fn span(&self, name: &str) -> Option<&SpanRecord> {
        self.spans.iter().find(|s| s.name == name)
    }

    /// Every progress update that went out: (fraction, message).
    pub fn progress(&self) -> &[(f64, String)] {
        &self.progress
    }

    /// The metrics of the Result (empty after a failure).
    pub fn metrics(&self) -> &HashMap<String, f64> {
        &self.metrics
    }

    /// Timings, CPU time and peak memory of the run (after a success).
    pub fn stats(&self) -> Option<&pb::StageStats> {
        self.stats.as_ref()
    }

    fn get(&self, port: &str) -> Result<&OutputData, Error> {
        self.outputs.get(port).ok_or_else(|| match &self.error {
            Some(e) => Error::new(format!("output {port:?}: the run failed: {e}")),
            None => Error::new(format!("the run produced no output {port:?}")),
        })
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ports: Vec<&String> = self.outputs.keys().collect();
        ports.sort();
        f.debug_struct("Outcome")
            .field("error", &self.error)
            .field("outputs", &ports)
            .field("logs", &self.logs)
            .field("spans", &self.spans.len())
            .finish()
    }
}

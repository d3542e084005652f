//! The plugin process: go-plugin handshake, the gRPC services, the fd
//! channel, and running stages on their own threads, for the gRPC `Run`
//! call and for runs on the fd channel (`chanrun`) alike.

mod chanrun;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{UnboundedReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use crate::context::{DataPlane, EventSink, FD_WAIT};
use crate::goplugin;
use crate::pb;
use crate::run::{self, ActiveRuns, Failure};
use crate::shm::{Channel, ChannelEnd, Mailbox, ENV_FD_CHANNEL};
use crate::{log, Error, ErrorKind, Stage};
use chanrun::ChannelRuns;

/// The go-plugin handshake cookie: it tells a program started by hand that
/// it is not being run by pipehost. Not a security measure.
const COOKIE_KEY: &str = "PIPEHOST_PLUGIN_COOKIE";
const COOKIE_VALUE: &str = "8f3c1e2a-pipehost-stage-plugin-v1";
/// go-plugin's core protocol version and pipehost's application version.
const CORE_PROTOCOL_VERSION: u32 = 1;
const APP_PROTOCOL_VERSION: u32 = 1;
/// The additive revision of pipehost.v1 exchanged in Describe.
const PROTOCOL_REVISION: u32 = 1;
/// gRPC's 4 MiB default receive limit, raised like the Go SDK's.
const MAX_RECV: usize = 64 << 20;

static SOCKET_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Leaves the process at once: removes the socket file and `_exit`s,
/// without unwinding or waiting for any thread.
fn exit_now(code: i32) -> ! {
    if let Some(p) = SOCKET_PATH.get() {
        let _ = std::fs::remove_file(p);
    }
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

fn fail_start(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "pipehost plugin: {msg}");
    std::process::exit(1)
}

/// Runs the plugin until the host stops it; never returns. Call it from
/// `main` with every stage kind the executable offers.
///
/// Started by hand (without the host's handshake cookie) it explains what it
/// is on stderr and exits with status 1.
pub fn serve(stages: Vec<Stage>) -> ! {
    if stages.is_empty() {
        fail_start("serve was called with no stages");
    }
    let by_kind = index(&stages).unwrap_or_else(|e| fail_start(&e));
    let kinds: Vec<&str> = stages.iter().map(Stage::kind).collect();

    if std::env::var(COOKIE_KEY).ok().as_deref() != Some(COOKIE_VALUE) {
        let _ = writeln!(
            std::io::stderr(),
            "This program is a pipehost stage plugin (it offers {}). It is not meant to be run \
             by hand: pipehost starts it, talks to it over a private socket and hands it shared \
             memory, so on its own it has nothing to do. Put it in a plugin directory (bin/plugins, \
             a --plugin-dir or a directory in PIPEHOST_PLUGIN_PATH) and run a pipeline with \
             `pipehost run CONFIG`; `pipehost plugins` lists the stages it offers.",
            kinds.join(", ")
        );
        std::process::exit(1);
    }
    if std::env::var_os("PLUGIN_CLIENT_CERT").is_some() {
        fail_start(
            "the host asked for mutual TLS (PLUGIN_CLIENT_CERT is set), which pipehost plugins do \
             not support: they listen on a unix socket in a private directory instead",
        );
    }
    if let Ok(v) = std::env::var("PLUGIN_PROTOCOL_VERSIONS") {
        let ok = v
            .split(',')
            .any(|s| s.trim().parse::<u32>() == Ok(APP_PROTOCOL_VERSION));
        if !ok {
            fail_start(&format!(
                "the host speaks plugin protocol versions {v:?}; this plugin speaks {APP_PROTOCOL_VERSION}: \
                 rebuild it against a matching SDK"
            ));
        }
    }

    // Still single-threaded: safe to edit the environment.
    let channel = Channel::from_env().unwrap_or_else(|e| fail_start(&e.to_string()));
    std::env::remove_var(ENV_FD_CHANNEL);
    let channel = Arc::new(channel);

    let dir = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let (listener, path) = bind_socket(&dir).unwrap_or_else(|e| fail_start(&e.to_string()));
    let _ = SOCKET_PATH.set(path.clone());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail_start(&format!("starting the runtime: {e}")));
    // The host's end closing (EOF) means the host is gone: nobody will read
    // our results, so leave at once. CLOSE is a clean stop.
    let plugin = Plugin::on_channel(
        stages,
        by_kind,
        channel,
        rt.handle().clone(),
        |end| match end {
            ChannelEnd::Closed => exit_now(0),
            ChannelEnd::Gone => {
                log::error("host is gone (fd channel EOF); exiting");
                exit_now(3)
            }
            ChannelEnd::Broken(why) => {
                log::error(&format!("fd channel: {why}; exiting"));
                exit_now(3)
            }
        },
    );

    rt.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)
            .unwrap_or_else(|e| fail_start(&format!("socket {}: {e}", path.display())));
        let (health, health_svc) = tonic_health::server::health_reporter();
        health
            .set_service_status("plugin", tonic_health::ServingStatus::Serving)
            .await;

        // The handshake line is the first and only thing on stdout.
        let line = format!(
            "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc\n",
            path.display()
        );
        let mut out = std::io::stdout().lock();
        if out
            .write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            exit_now(1);
        }
        drop(out);
        // From here on stray prints go to stderr, never into the protocol.
        // SAFETY: dup2 on the standard descriptors; signal with SIG_IGN.
        unsafe {
            libc::dup2(2, 1);
            // Like go-plugin's own servers: a Ctrl-C at a terminal is the
            // host's to handle; the plugin ends when the host stops it.
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }

        let stage_svc = pb::stage_server::StageServer::new(StageService(plugin))
            .max_decoding_message_size(MAX_RECV)
            .max_encoding_message_size(usize::MAX);
        let result = tonic::transport::Server::builder()
            .add_service(health_svc)
            .add_service(stage_svc)
            .add_service(goplugin::grpc_controller_server::GrpcControllerServer::new(
                Controller,
            ))
            .add_service(goplugin::grpc_stdio_server::GrpcStdioServer::new(Stdio))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
        if let Err(e) = result {
            log::error(&format!("gRPC server: {e}"));
            exit_now(1);
        }
        exit_now(0)
    })
}

/// Listens on a fresh socket in `dir`, named like go-plugin's own
/// ("plugin" and 9 digits), which keeps the path as short as theirs.
fn bind_socket(dir: &Path) -> Result<(StdUnixListener, PathBuf), Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(std::process::id()) << 32 | u64::from(nanos);
    for _ in 0..100 {
        x = crate::seed::mix64(x);
        let path = dir.join(format!("plugin{:09}", x % 1_000_000_000));
        match StdUnixListener::bind(&path) {
            Ok(l) => {
                l.set_nonblocking(true)
                    .map_err(|e| Error::new(format!("socket {}: {e}", path.display())))?;
                return Ok((l, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(Error::new(format!("listening on {}: {e}", path.display()))),
        }
    }
    Err(Error::new(format!(
        "no free socket name in {}",
        dir.display()
    )))
}

/// Indexes stages by kind; a kind offered twice is an error.
fn index(stages: &[Stage]) -> Result<HashMap<String, Stage>, String> {
    let mut by_kind = HashMap::new();
    for s in stages {
        if by_kind.insert(s.kind().to_string(), s.clone()).is_some() {
            return Err(format!("stage kind {:?} is registered twice", s.kind()));
        }
    }
    Ok(by_kind)
}

pub(crate) struct Plugin {
    stages: HashMap<String, Stage>,
    order: Vec<Stage>,
    plane: Option<Arc<DataPlane>>,
    active: ActiveRuns,
    /// The runs in flight on the fd channel.
    runs: ChannelRuns,
}

impl Plugin {
    /// A plugin whose fd channel is `channel`: its reader files the fds the
    /// host sends and takes runs, each run going to a blocking thread of
    /// `runner`. `on_end` runs on the reader once the channel ends.
    fn on_channel(
        order: Vec<Stage>,
        stages: HashMap<String, Stage>,
        channel: Arc<Channel>,
        runner: tokio::runtime::Handle,
        on_end: impl FnOnce(ChannelEnd) + Send + 'static,
    ) -> Arc<Plugin> {
        // The reader holds the plugin weakly: the plugin holds the reader's
        // mailbox, and the channel must close when the plugin goes.
        Arc::new_cyclic(|me: &Weak<Plugin>| {
            let route = chanrun::Route::new(me.clone(), channel.clone(), runner);
            let mailbox = Mailbox::start_taking_runs(channel.clone(), Box::new(route), on_end);
            Plugin {
                stages,
                order,
                plane: Some(Arc::new(DataPlane::new(channel, mailbox))),
                active: ActiveRuns::default(),
                runs: ChannelRuns::default(),
            }
        })
    }

    /// The stage that runs `req`: `NotFound` when the plugin has no such
    /// kind, and then the request's fds are let go.
    fn stage_for(&self, req: &pb::RunRequest) -> Result<Stage, Status> {
        self.stages.get(&req.kind).cloned().ok_or_else(|| {
            self.discard(req);
            Status::not_found(format!("this plugin has no stage kind {:?}", req.kind))
        })
    }

    /// Closes the fds of a run that will not use them (taken ones are closed
    /// already), so a failed run leaks nothing.
    fn discard(&self, req: &pb::RunRequest) {
        if let Some(plane) = &self.plane {
            plane
                .mailbox
                .discard(req.inputs.iter().chain(&req.outputs).map(|b| b.fd_token));
        }
    }

    /// Executes one run on the calling (blocking) thread and turns a failure
    /// into the gRPC status the host reads.
    fn execute(
        &self,
        stage: &Stage,
        req: pb::RunRequest,
        sink: EventSink,
        cancelled: Arc<AtomicBool>,
    ) -> Result<(), Status> {
        let (name, kind) = (req.stage.clone(), req.kind.clone());
        let plane = self.plane.clone();
        run::execute(stage, plane, req, sink, cancelled, FD_WAIT, &self.active).map_err(|f| match f
        {
            Failure::Bind(e) => Status::invalid_argument(format!("stage {name} ({kind}): {e}")),
            Failure::Stage(e) => match e.kind() {
                ErrorKind::Cancelled => Status::cancelled(e.message()),
                ErrorKind::InvalidParam => Status::invalid_argument(e.message()),
                ErrorKind::Failed => Status::aborted(e.message()),
            },
            Failure::Panic(what) => Status::aborted(format!("stage panicked: {what}")),
            Failure::Finish(e) => {
                Status::failed_precondition(format!("stage {name} ({kind}): {e}"))
            }
        })
    }
}

struct StageService(Arc<Plugin>);

type RunItem = Result<pb::RunEvent, Status>;

#[tonic::async_trait]
impl pb::stage_server::Stage for StageService {
    async fn describe(
        &self,
        _req: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        Ok(Response::new(pb::DescribeResponse {
            stages: self
                .0
                .order
                .iter()
                .map(|s| s.descriptor().clone())
                .collect(),
            sdk: "rust".into(),
            sdk_version: crate::VERSION.into(),
            protocol_revision: PROTOCOL_REVISION,
            // Runs on the fd channel need the channel; the gRPC Run call
            // stays for hosts that ask for it (PIPEHOST_RUN_OVER_GRPC).
            channel_runs: self.0.plane.is_some(),
        }))
    }

    type RunStream = UnboundedReceiverStream<RunItem>;

    async fn run(&self, req: Request<pb::RunRequest>) -> Result<Response<Self::RunStream>, Status> {
        let req = req.into_inner();
        let plugin = self.0.clone();
        let stage = plugin.stage_for(&req)?;
        let (tx, rx) = mpsc::unbounded_channel::<RunItem>();
        let cancelled = Arc::new(AtomicBool::new(false));
        let events = tx.clone();
        let sink: EventSink = Arc::new(move |ev| {
            let _ = events.send(Ok(ev));
        });
        let errors = tx.clone();
        let flag = cancelled.clone();
        let job = tokio::task::spawn_blocking(move || {
            if let Err(st) = plugin.execute(&stage, req, sink, flag) {
                let _ = errors.send(Err(st));
            }
        });
        // The host cancels by dropping the call, which closes the stream:
        // flag it for the stage. Once the job is done this sender goes too,
        // which ends the stream.
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => cancelled.store(true, Ordering::Relaxed),
                _ = job => {}
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct Controller;

#[tonic::async_trait]
impl goplugin::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(
        &self,
        _req: Request<goplugin::Empty>,
    ) -> Result<Response<goplugin::Empty>, Status> {
        // Exit right after the reply is on its way.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            exit_now(0)
        });
        Ok(Response::new(goplugin::Empty {}))
    }
}

struct Stdio;

#[tonic::async_trait]
impl goplugin::grpc_stdio_server::GrpcStdio for Stdio {
    type StreamStdioStream = tokio_stream::Pending<Result<goplugin::StdioData, Status>>;

    /// Stays open and silent: plugins log to stderr, which the host reads.
    async fn stream_stdio(
        &self,
        _req: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(tokio_stream::pending()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::stage_server::Stage as _;
    use crate::{DType, Port, RunContext};
    use std::sync::atomic::AtomicU32;
    use tokio_stream::StreamExt;

    static SAW_CANCEL: AtomicBool = AtomicBool::new(false);
    static STARTED: AtomicU32 = AtomicU32::new(0);

    fn plugin() -> Arc<Plugin> {
        let stages = vec![
            Stage::new("t.ok", "1", |ctx: &RunContext, _: ()| {
                let _s = ctx.timed("work");
                ctx.metric("x", 1.0);
                Ok(())
            }),
            Stage::new("t.param", "1", |_: &RunContext, _: ()| {
                Err(Error::param("n", "too big"))
            }),
            Stage::new(
                "t.panic",
                "1",
                |_: &RunContext, _: ()| -> Result<(), Error> { panic!("boom {}", 7) },
            ),
            Stage::new("t.wait", "1", |ctx: &RunContext, _: ()| {
                STARTED.fetch_add(1, Ordering::SeqCst);
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::time::Instant::now() < deadline {
                    if ctx.check_cancelled().is_err() {
                        SAW_CANCEL.store(true, Ordering::SeqCst);
                        return Err(Error::cancelled());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            }),
            Stage::new("t.grid", "1", |_: &RunContext, _: ()| Ok(()))
                .output(Port::grid("out", DType::F32)),
        ];
        Arc::new(Plugin {
            stages: stages
                .iter()
                .map(|s| (s.kind().to_string(), s.clone()))
                .collect(),
            order: stages,
            plane: None,
            active: ActiveRuns::default(),
            runs: ChannelRuns::default(),
        })
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn run(svc: &StageService, kind: &str) -> Result<Vec<pb::RunEvent>, Status> {
        let req = pb::RunRequest {
            stage: "s".into(),
            kind: kind.into(),
            ..Default::default()
        };
        let mut stream = svc.run(Request::new(req)).await?.into_inner();
        let mut events = Vec::new();
        while let Some(ev) = stream.next().await {
            events.push(ev?);
        }
        Ok(events)
    }

    #[test]
    fn describe_lists_every_stage() {
        let svc = StageService(plugin());
        let resp = rt().block_on(svc.describe(Request::new(pb::DescribeRequest {
            protocol_revision: 1,
        })));
        let resp = resp.unwrap().into_inner();
        assert_eq!((resp.sdk.as_str(), resp.protocol_revision), ("rust", 1));
        let kinds: Vec<&str> = resp.stages.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["t.ok", "t.param", "t.panic", "t.wait", "t.grid"]);
        assert!(!resp.channel_runs, "no fd channel, and runs offered on it");
    }

    #[test]
    fn a_run_streams_its_events_and_ends_with_one_result() {
        let svc = StageService(plugin());
        let events = rt().block_on(run(&svc, "t.ok")).unwrap();
        let last = events.last().unwrap();
        let Some(pb::run_event::Event::Result(res)) = &last.event else {
            panic!("last event {last:?}")
        };
        assert!(
            matches!(events[0].event, Some(pb::run_event::Event::Span(ref s)) if s.name == "work")
        );
        assert_eq!(events.len(), 2);
        assert_eq!(res.metrics.get("x"), Some(&1.0));
        let st = res.stats.unwrap();
        assert!(st.start_ns > 0 && st.end_ns >= st.start_ns && st.peak_rss_bytes > 0);
    }

    #[test]
    fn failures_become_statuses() {
        let svc = StageService(plugin());
        let rt = rt();
        let e = rt.block_on(run(&svc, "t.none")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = rt.block_on(run(&svc, "t.param")).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "param \"n\": too big")
        );
        let e = rt.block_on(run(&svc, "t.panic")).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::Aborted, "stage panicked: boom 7")
        );
        // Buffers without an fd channel cannot be bound.
        let req = pb::RunRequest {
            kind: "t.grid".into(),
            outputs: vec![pb::Binding {
                port: "out".into(),
                fd_token: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = rt
            .block_on(async {
                let mut s = svc.run(Request::new(req)).await?.into_inner();
                s.next().await.unwrap()
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("no fd channel"), "{}", e.message());
    }

    #[test]
    fn dropping_the_call_cancels_the_stage() {
        let svc = StageService(plugin());
        let rt = rt();
        rt.block_on(async {
            let req = pb::RunRequest {
                kind: "t.wait".into(),
                ..Default::default()
            };
            let stream = svc.run(Request::new(req)).await.unwrap().into_inner();
            while STARTED.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            drop(stream); // what the host's cancellation does to the server side
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !SAW_CANCEL.load(Ordering::SeqCst) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the stage never saw the cancellation"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
}

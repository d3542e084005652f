//! Runs on the fd channel over a real SOCK_SEQPACKET pair with real memfds,
//! this test playing the host: the plugin is wired as `serve` wires it (its
//! mailbox takes the runs, each runs on a blocking thread).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use prost::Message as _;

use super::super::{index, Plugin};
use crate::handle::grid_handle;
use crate::pb;
use crate::shm::{Channel, ChannelEnd, Message, MsgType, Received, Segment};
use crate::{DType, Error, Port, RunContext, Stage};

// The integration tests' helpers (fd counts, raw sends).
#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{open_count, send_raw};

const OK: i32 = 0;
const CANCELLED: i32 = 1;
const INVALID_ARGUMENT: i32 = 3;
const NOT_FOUND: i32 = 5;
const ABORTED: i32 = 10;

const W: u64 = 16;
const H: u64 = 8;

struct Host {
    ch: Channel,
    plugin: Arc<Plugin>,
    ends: mpsc::Receiver<ChannelEnd>,
    next: u64,
    segs: Vec<Segment>,
    events: HashMap<u64, Vec<pb::RunEvent>>,
    ended: HashMap<u64, pb::RunEnd>,
    /// ADOPT messages as they came: (token, fd), and how many events of
    /// any run had arrived before each.
    adopted: Vec<(u64, OwnedFd, usize)>,
    // Last: its blocking threads are joined after the plugin is gone.
    rt: tokio::runtime::Runtime,
}

impl Host {
    fn new(stages: Vec<Stage>) -> Host {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (host, plugin) = Channel::pair().unwrap();
        let (tx, ends) = mpsc::channel();
        let by_kind = index(&stages).unwrap();
        let plugin = Plugin::on_channel(
            stages,
            by_kind,
            Arc::new(plugin),
            rt.handle().clone(),
            move |end| {
                let _ = tx.send(end);
            },
        );
        Host {
            ch: host,
            plugin,
            ends,
            next: 0,
            segs: Vec::new(),
            events: HashMap::new(),
            ended: HashMap::new(),
            adopted: Vec::new(),
            rt,
        }
    }

    fn token(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Sends a writable W×H f32 segment named `name`; returns its binding.
    fn output(&mut self, port: &str, name: &str) -> pb::Binding {
        let size = W * H * 4;
        let seg = Segment::create(name, size).unwrap();
        let token = self.token();
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
            handle: Some(grid_handle(token, size, 0, DType::F32, H, W, 0)),
            fd_token: token,
        }
    }

    /// Sends a RUN with these payload bytes; returns its token.
    fn start_raw(&mut self, payload: &[u8]) -> u64 {
        let token = self.token();
        self.ch.send_payload(MsgType::Run, token, payload).unwrap();
        token
    }

    fn start(&mut self, req: &pb::RunRequest) -> u64 {
        self.start_raw(&req.encode_to_vec())
    }

    fn cancel(&self, token: u64) {
        let m = Message {
            kind: MsgType::Cancel,
            token,
            segment_id: 0,
            size: 0,
        };
        self.ch.send(&m, None).unwrap();
    }

    /// Files the next message from the plugin: an EVENT, an END or an ADOPT.
    fn read(&mut self) {
        match self.ch.recv_payload().unwrap() {
            Received::Payload(m, p) => {
                assert!(
                    !self.ended.contains_key(&m.token),
                    "nothing comes after a run's END"
                );
                match m.kind {
                    MsgType::Event => self
                        .events
                        .entry(m.token)
                        .or_default()
                        .push(pb::RunEvent::decode(p.as_slice()).unwrap()),
                    MsgType::End => {
                        self.ended
                            .insert(m.token, pb::RunEnd::decode(p.as_slice()).unwrap());
                    }
                    k => panic!("the plugin sent {k}"),
                }
            }
            Received::Message(m, Some(fd)) if m.kind == MsgType::Adopt => {
                let seen = self.events.values().map(Vec::len).sum();
                self.adopted.push((m.token, fd, seen));
            }
            other => panic!("the plugin sent {other:?}"),
        }
    }

    /// Reads until the run has sent an event that `what` picks.
    fn until(&mut self, token: u64, what: impl Fn(&pb::run_event::Event) -> bool) {
        while !self
            .events
            .get(&token)
            .is_some_and(|evs| evs.iter().any(|e| e.event.as_ref().is_some_and(&what)))
        {
            self.read();
        }
    }

    /// The run's events and its END.
    fn end(&mut self, token: u64) -> (Vec<pb::RunEvent>, pb::RunEnd) {
        while !self.ended.contains_key(&token) {
            self.read();
        }
        (
            self.events.remove(&token).unwrap_or_default(),
            self.ended[&token].clone(),
        )
    }

    /// No channel end so far.
    fn still_open(&self) -> bool {
        self.ends.try_recv().is_err()
    }
}

fn request(kind: &str, outputs: Vec<pb::Binding>) -> pb::RunRequest {
    pb::RunRequest {
        run_id: "r".into(),
        stage: "s".into(),
        kind: kind.into(),
        levels: vec![pb::GridInfo {
            level: 0,
            width: W as u32,
            height: H as u32,
        }],
        outputs,
        ..Default::default()
    }
}

fn kinds(events: &[pb::RunEvent]) -> Vec<&'static str> {
    use pb::run_event::Event;
    events
        .iter()
        .map(|e| match e.event {
            Some(Event::Progress(_)) => "progress",
            Some(Event::Log(_)) => "log",
            Some(Event::Span(_)) => "span",
            Some(Event::Result(_)) => "result",
            _ => "other",
        })
        .collect()
}

fn result(ev: &pb::RunEvent) -> &pb::Result {
    match &ev.event {
        Some(pb::run_event::Event::Result(r)) => r,
        e => panic!("not a result: {e:?}"),
    }
}

fn fill(ctx: &RunContext, _: ()) -> Result<(), Error> {
    let mut out = ctx.output::<f32>("out")?;
    for (i, v) in out.iter_mut().enumerate() {
        *v = i as f32 * 3.0;
    }
    Ok(())
}

#[test]
fn a_run_writes_its_output_and_ends_ok_with_its_result() {
    let stage = Stage::new("t.fill", "1", fill).output(Port::grid("out", DType::F32));
    let mut host = Host::new(vec![stage]);
    let out = host.output("out", "chan-fill");
    let token = host.start(&request("t.fill", vec![out]));
    let (events, end) = host.end(token);
    assert_eq!((end.code, end.message.as_str()), (OK, ""));
    assert_eq!(kinds(&events), ["result"]);
    let stats = result(&events[0]).stats.unwrap();
    assert!(stats.start_ns > 0 && stats.end_ns >= stats.start_ns && stats.peak_rss_bytes > 0);
    // The plugin unmapped and closed the output before the Result: the host
    // can seal it, and holds the only fd.
    host.segs[0]
        .seal_write()
        .expect("a writable mapping is left after the Result");
    assert_eq!(
        open_count("chan-fill"),
        1,
        "the plugin kept the output's fd"
    );
    let m = host.segs[0].map_ro().unwrap();
    let vals: Vec<f32> = m
        .bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(vals.iter().enumerate().all(|(i, &v)| v == i as f32 * 3.0));
    assert!(host.plugin.runs.lock().is_empty(), "the run is still filed");
    assert!(host.still_open());
}

#[test]
fn a_dynamic_output_is_adopted_before_the_event_with_the_result() {
    let stage = Stage::new("t.blob", "1", |ctx: &RunContext, _: ()| {
        ctx.info("making a blob");
        ctx.dynamic_output("raw", 5)?.copy_from_slice(b"hello");
        Ok(())
    })
    .output(Port::blob("raw"));
    let mut host = Host::new(vec![stage]);
    let token = host.start(&request("t.blob", vec![]));
    let (events, end) = host.end(token);
    assert_eq!(end.code, OK, "{}", end.message);
    assert_eq!(kinds(&events), ["log", "result"]);
    let dynamic = &result(&events[1]).dynamic_outputs;
    assert_eq!(dynamic.len(), 1);
    assert_eq!(host.adopted.len(), 1);
    let (adopt_token, fd, events_before) = host.adopted.pop().unwrap();
    assert_eq!(adopt_token, dynamic[0].fd_token);
    assert_eq!(
        events_before, 1,
        "the ADOPT came after the log line and before the Result"
    );
    let seg = Segment::open(fd).unwrap();
    seg.seal_write()
        .expect("the plugin still maps the blob writable");
    assert_eq!(seg.map_ro().unwrap().bytes(), b"hello");
}

#[test]
fn payloads_of_several_frames_arrive_whole_both_ways() {
    // 160000 bytes: five frames.
    let line: String = (0..20_000).map(|i| format!("{i:07},")).collect();
    let stage = Stage::new("t.echo", "1", {
        let line = line.clone();
        move |ctx: &RunContext, _: ()| {
            ctx.metric("run_id_bytes", ctx.run_id().len() as f64);
            ctx.warn(line.clone());
            Ok(())
        }
    });
    let mut host = Host::new(vec![stage]);
    let mut req = request("t.echo", vec![]);
    req.run_id = "x".repeat(100_000); // a RUN of four frames
    let token = host.start(&req);
    let (events, end) = host.end(token);
    assert_eq!(end.code, OK, "{}", end.message);
    assert_eq!(kinds(&events), ["log", "result"]);
    let Some(pb::run_event::Event::Log(log)) = &events[0].event else {
        unreachable!()
    };
    assert!(log.message == line, "the long log line came back different");
    assert_eq!(log.level, pb::LogLevel::Warn as i32);
    assert_eq!(result(&events[1]).metrics["run_id_bytes"], 100_000.0);
}

#[test]
fn cancel_reaches_the_stage_and_the_run_ends_cancelled() {
    let stage = Stage::new("t.wait", "1", |ctx: &RunContext, _: ()| {
        ctx.info("waiting");
        wait_for_cancel(ctx)?;
        ctx.check_cancelled()
    });
    let mut host = Host::new(vec![stage]);
    let token = host.start(&request("t.wait", vec![]));
    host.cancel(token + 100); // no such run: ignored
    host.until(token, |e| matches!(e, pb::run_event::Event::Log(_)));
    host.cancel(token);
    let (_, end) = host.end(token);
    assert_eq!(
        (end.code, end.message.as_str()),
        (CANCELLED, "stage cancelled by the host")
    );
    host.cancel(token); // after its END: ignored too
    let next = host.start(&request("t.nope", vec![]));
    let (_, end) = host.end(next);
    assert_eq!(end.code, NOT_FOUND, "the channel carries on");
    assert!(host.still_open());
}

#[test]
fn an_unknown_kind_ends_not_found_and_its_fds_are_let_go() {
    let mut host = Host::new(vec![Stage::new(
        "t.ok",
        "1",
        |_: &RunContext, _: ()| Ok(()),
    )]);
    let out = host.output("out", "chan-nope");
    let token = host.start(&request("t.nope", vec![out]));
    let (events, end) = host.end(token);
    assert!(events.is_empty());
    assert_eq!(
        (end.code, end.message.as_str()),
        (NOT_FOUND, "this plugin has no stage kind \"t.nope\"")
    );
    assert_eq!(open_count("chan-nope"), 1, "the plugin kept the run's fd");
}

#[test]
fn a_run_request_that_does_not_decode_ends_invalid_argument() {
    let mut host = Host::new(vec![Stage::new(
        "t.ok",
        "1",
        |_: &RunContext, _: ()| Ok(()),
    )]);
    let token = host.start_raw(b"\xff\xff\xff");
    let (events, end) = host.end(token);
    assert!(events.is_empty());
    assert_eq!(end.code, INVALID_ARGUMENT);
    assert!(
        end.message.starts_with(&format!(
            "RUN message for token {token:#x}: not a RunRequest"
        )),
        "{}",
        end.message
    );
    assert!(host.still_open());
}

#[test]
fn a_stage_error_ends_aborted_with_its_message() {
    let stage = Stage::new("t.bad", "1", |ctx: &RunContext, _: ()| {
        ctx.info("about to fail");
        Err(Error::new("bad input"))
    });
    let mut host = Host::new(vec![stage]);
    let token = host.start(&request("t.bad", vec![]));
    let (events, end) = host.end(token);
    assert_eq!(kinds(&events), ["log"]);
    assert_eq!((end.code, end.message.as_str()), (ABORTED, "bad input"));
}

#[test]
fn two_runs_are_in_flight_at_once() {
    // Each run waits for the other to have started; one alone gives up.
    let started = Arc::new((Mutex::new(0), Condvar::new()));
    let stage = Stage::new("t.pair", "1", move |ctx: &RunContext, _: ()| {
        ctx.info(format!("run {} started", ctx.run_id()));
        let (n, cv) = &*started;
        let mut n = n.lock().unwrap();
        *n += 1;
        cv.notify_all();
        let (n, _) = cv
            .wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2)
            .unwrap();
        if *n < 2 {
            return Err(Error::new("the other run never started"));
        }
        ctx.metric("n", ctx.run_id().parse::<f64>().unwrap());
        Ok(())
    })
    .concurrent(true);
    let mut host = Host::new(vec![stage]);
    let mut tokens = Vec::new();
    for n in [1, 2] {
        let mut req = request("t.pair", vec![]);
        req.run_id = n.to_string();
        tokens.push((host.start(&req), n));
    }
    for (token, n) in tokens {
        let (events, end) = host.end(token);
        assert_eq!((end.code, end.message.as_str()), (OK, ""));
        assert_eq!(kinds(&events), ["log", "result"]);
        let Some(pb::run_event::Event::Log(log)) = &events[0].event else {
            unreachable!()
        };
        assert_eq!(log.message, format!("run {n} started"));
        assert_eq!(result(&events[1]).metrics["n"], f64::from(n));
    }
}

#[test]
fn a_protocol_violation_ends_the_channel_closes_its_fds_and_cancels_runs() {
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let stage = Stage::new("t.wait", "1", {
        let saw_cancel = saw_cancel.clone();
        move |ctx: &RunContext, _: ()| {
            ctx.info("waiting");
            wait_for_cancel(ctx)?;
            saw_cancel.store(true, Ordering::SeqCst);
            Err(Error::cancelled())
        }
    });
    let mut host = Host::new(vec![stage]);
    let token = host.start(&request("t.wait", vec![]));
    host.until(token, |e| matches!(e, pb::run_event::Event::Log(_)));
    // A RUN frame with an fd attached.
    let name = CString::new("chan-violation").unwrap();
    // SAFETY: memfd_create returns a fresh fd or -1.
    let mem = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC)) };
    let bad = crate::shm::encode_header(&Message {
        kind: MsgType::Run,
        token: 99,
        segment_id: 2,
        size: 2,
    });
    send_raw(
        host.ch.as_fd().as_raw_fd(),
        &[&bad[..], b"ab"].concat(),
        &[mem.as_raw_fd()],
    );
    let why = broken(&host);
    assert!(
        why.contains("RUN message for token 0x63 carries 1 fds, want 0"),
        "{why}"
    );
    assert_eq!(
        open_count("chan-violation"),
        1,
        "the received fd is still open"
    );
    // The run in flight was cancelled, and still ends.
    let (_, end) = host.end(token);
    assert_eq!(end.code, CANCELLED);
    assert!(saw_cancel.load(Ordering::SeqCst));
}

/// Waits until the run is cancelled; fails after 20 s.
fn wait_for_cancel(ctx: &RunContext) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if ctx.is_cancelled() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(Error::new("never cancelled"))
}

fn waiter() -> Stage {
    Stage::new("t.wait", "1", |ctx: &RunContext, _: ()| {
        wait_for_cancel(ctx)?;
        Err(Error::cancelled())
    })
}

/// Why the plugin's channel ended; it must have broken.
fn broken(host: &Host) -> String {
    match host.ends.recv_timeout(Duration::from_secs(10)).unwrap() {
        ChannelEnd::Broken(why) => why,
        end => panic!("the channel ended with {end:?}, want a protocol violation"),
    }
}

#[test]
fn an_event_sent_to_the_plugin_is_a_protocol_violation() {
    let host = Host::new(vec![waiter()]);
    host.ch.send_payload(MsgType::Event, 1, b"").unwrap();
    let why = broken(&host);
    assert!(
        why.contains("a plugin never receives EVENT (token 0x1)"),
        "{why}"
    );
}

#[test]
fn a_run_token_in_flight_twice_is_a_protocol_violation() {
    let host = Host::new(vec![waiter()]);
    let req = request("t.wait", vec![]).encode_to_vec();
    host.ch.send_payload(MsgType::Run, 5, &req).unwrap();
    host.ch.send_payload(MsgType::Run, 5, &req).unwrap();
    let why = broken(&host);
    assert!(
        why.contains("RUN for token 0x5, which is already running"),
        "{why}"
    );
}

#[test]
fn describe_offers_runs_on_the_channel() {
    use crate::pb::stage_server::Stage as _;
    let host = Host::new(vec![waiter()]);
    let svc = super::super::StageService(host.plugin.clone());
    let resp = host
        .rt
        .block_on(svc.describe(tonic::Request::new(pb::DescribeRequest::default())))
        .unwrap()
        .into_inner();
    assert!(resp.channel_runs);
}

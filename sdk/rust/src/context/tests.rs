//! The context on real memfds and a real fd channel pair.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::handle;
use crate::handle::grid_handle;
use crate::shm::Received;
use crate::shm::{Channel, Mailbox, Message, MsgType, Segment, PLUGIN_TOKEN_BIT};
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

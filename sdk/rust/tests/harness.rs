//! The stage test harness (pipehost::testing) on real stages: real memfds,
//! real seals, the real fd channel, the same run path as a plugin.

use std::io::Write;
use std::os::fd::RawFd;

use pipehost::testing::Harness;
use pipehost::{DType, Error, ErrorKind, LogLevel, Port, RunContext, Stage};
use serde_json::Value as Json;

pipehost::params! {
    struct Smooth {
        /// How much of the 3×3 mean to blend in, 0..1.
        strength: f64 = 0.5,
    }
}

/// A wrap-aware 3×3 mean blended by strength, the stage the template makes.
fn smooth(ctx: &RunContext, p: Smooth) -> Result<(), Error> {
    if !(0.0..=1.0).contains(&p.strength) {
        return Err(Error::param(
            "strength",
            format!("{} is out of range 0..1", p.strength),
        ));
    }
    let input = ctx.input::<f32>("in")?;
    let mut out = ctx.output::<f32>("out")?;
    let topo = ctx.topology()?;
    let grid = topo.grid();
    let _s = ctx.timed("smooth");
    for i in 0..grid.len() {
        let mut sum = f64::from(input[i]);
        let mut n = 1.0;
        for j in grid.neighbors8(i).into_iter().flatten() {
            sum += f64::from(input[j]);
            n += 1.0;
        }
        let v = f64::from(input[i]);
        out[i] = (v + p.strength * (sum / n - v)) as f32;
    }
    ctx.metric("cells", grid.len() as f64);
    ctx.progress(1.0, "smoothed");
    Ok(())
}

fn smooth_stage() -> Stage {
    Stage::new("test.smooth", "1.0.0", smooth)
        .input(Port::grid("in", DType::F32))
        .output(Port::grid("out", DType::F32))
}

#[test]
fn a_stage_runs_on_sealed_memory_and_its_outputs_come_back_sealed() {
    let (w, h) = (16usize, 8usize);
    let input: Vec<f32> = (0..w * h).map(|i| ((i * 7919) % 23) as f32).collect();
    let out = Harness::new(smooth_stage())
        .grid("torus", w, h)
        .param("strength", 0.25)
        .input("in", &input)
        .run()
        .ok()
        .unwrap();
    let g = out.output::<f32>("out").unwrap();
    assert_eq!((g.width(), g.height()), (w, h));
    // Recomputed here by hand, with the torus wrap written out.
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0.0;
            for dy in [-1i64, 0, 1] {
                for dx in [-1i64, 0, 1] {
                    let xx = (x as i64 + dx).rem_euclid(w as i64) as usize;
                    let yy = (y as i64 + dy).rem_euclid(h as i64) as usize;
                    sum += f64::from(input[yy * w + xx]);
                }
            }
            let v = f64::from(input[y * w + x]);
            let want = (v + 0.25 * (sum / 9.0 - v)) as f32;
            assert_eq!(g.at(x, y), want, "cell {x},{y}");
        }
    }
    assert_eq!(out.metrics().get("cells"), Some(&((w * h) as f64)));
    let span = out.span("smooth").expect("the timed span came back");
    assert!(span.end_ns >= span.start_ns && span.parent == 0);
    assert_eq!(out.progress().last().unwrap().0, 1.0);
    let stats = out.stats().unwrap();
    assert!(stats.end_ns >= stats.start_ns && stats.peak_rss_bytes > 0);
    // The output is write-sealed memory: the kernel refuses a writable map.
    let bytes = out.output_bytes("out").unwrap();
    assert_eq!(bytes.len(), w * h * 4);
    assert!(out
        .output::<f64>("out")
        .unwrap_err()
        .message()
        .contains("holds f32"));
}

#[test]
fn defaults_clamped_edges_and_param_errors() {
    let input = vec![1.0f32; 8 * 4];
    let out = Harness::new(smooth_stage())
        .grid("plane", 8, 4)
        .input("in", &input)
        .run()
        .ok()
        .unwrap();
    assert!(out.output::<f32>("out").unwrap().iter().all(|&v| v == 1.0));

    let out = Harness::new(smooth_stage())
        .param("strength", 2.0)
        .input("in", &vec![0.0f32; 64 * 32])
        .run();
    let e = out.error().expect("strength 2 is refused");
    assert_eq!(e.kind(), ErrorKind::InvalidParam);
    assert!(e.message().contains("out of range"), "{e}");
    assert!(out
        .output::<f32>("out")
        .unwrap_err()
        .message()
        .contains("the run failed"));

    let e = Harness::new(smooth_stage())
        .param("strength", "much")
        .input("in", &vec![0.0f32; 64 * 32])
        .run()
        .ok()
        .unwrap_err();
    assert_eq!(
        e.message(),
        "param \"strength\": expected a number, got string \"much\""
    );
}

#[test]
#[should_panic(expected = "declares no param \"strenght\"")]
fn an_undeclared_param_is_harness_misuse() {
    let _ = Harness::new(smooth_stage()).param("strenght", 1.0);
}

#[test]
#[should_panic(expected = "input \"in\" has 10 elements; its grid (level 0) is 64×32")]
fn input_of_the_wrong_size_is_harness_misuse() {
    let _ = Harness::new(smooth_stage()).input("in", &[0f32; 10]).run();
}

#[test]
#[should_panic(expected = "a version is required")]
fn a_stage_without_a_version_is_refused_at_declaration() {
    let _ = Stage::new("test.noversion", "", |_: &RunContext, _: ()| Ok(()));
}

fn vectors() -> Json {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/seeds.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex(v: &Json) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn the_stage_seed_and_rng_are_the_hosts() {
    let v = vectors();
    let cases = v["stage_seeds"].as_array().unwrap();
    let mut checked = 0;
    for c in cases {
        let name = c["stage"].as_str().unwrap();
        if name.is_empty() {
            continue; // a config cannot name a stage ""
        }
        let stage = Stage::new("test.rng", "1.0.0", |ctx: &RunContext, _: ()| {
            let mut rng = ctx.rng();
            let mut out = ctx.output::<u64>("out")?;
            for v in out.iter_mut() {
                *v = rng.next_u64();
            }
            Ok(())
        })
        .output(Port::grid("out", DType::U64));
        let out = Harness::new(stage)
            .name(name)
            .seed(hex(&c["run_seed"]))
            .grid("plane", 2, 2)
            .run()
            .ok()
            .unwrap();
        assert_eq!(out.stage_seed(), hex(&c["stage_seed"]), "stage {name:?}");
        let want: Vec<u64> = c["first_outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(hex)
            .collect();
        assert_eq!(
            out.output::<u64>("out").unwrap().to_vec(),
            want,
            "stage {name:?}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} stage seed vectors checked");
}

#[test]
fn dynamic_outputs_stream_or_map_and_arrive_sealed() {
    let stage = Stage::new("test.dyn", "1.0.0", |ctx: &RunContext, _: ()| {
        let mut w = ctx.output_writer("log")?;
        for i in 0..1000u32 {
            w.write_all(&i.to_le_bytes())?;
        }
        assert_eq!(w.len(), 4000);
        let t = ctx.dynamic_output("table", 6)?;
        t.copy_from_slice(b"ARROW1");
        Ok(())
    })
    .output(Port::blob("log"))
    .output(Port::table("table"));
    let out = Harness::new(stage).run().ok().unwrap();
    let log = out.output_bytes("log").unwrap();
    assert_eq!(log.len(), 4000);
    let got: Vec<u32> = log
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..1000).collect::<Vec<u32>>());
    assert_eq!(out.output_bytes("table").unwrap(), b"ARROW1");
    let h = out.output_handle("table").unwrap();
    assert_eq!(h.format, pipehost::pb::Format::ArrowIpc as i32);
}

#[test]
fn a_second_writer_for_one_port_is_refused() {
    let stage = Stage::new("test.dyn2", "1.0.0", |ctx: &RunContext, _: ()| {
        let _a = ctx.output_writer("log")?;
        let e = ctx.output_writer("log").err().unwrap();
        assert!(e.message().contains("already created"), "{e}");
        let e = ctx.output_writer("nope").err().unwrap();
        assert!(e.message().contains("declares no output"), "{e}");
        Err(Error::new("checked"))
    })
    .output(Port::blob("log"));
    let out = Harness::new(stage).run();
    assert_eq!(out.error().unwrap().message(), "checked");
}

/// Maps the one unsealed segment of `len` bytes this process holds (the
/// output the harness handed over) writable, and never unmaps it.
fn leak_writable_mapping(len: usize) -> bool {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse::<RawFd>()
        else {
            continue;
        };
        // SAFETY: fcntl/fstat/mmap on descriptors of this process.
        unsafe {
            let seals = libc::fcntl(fd, libc::F_GET_SEALS);
            if seals < 0 || seals & libc::F_SEAL_WRITE != 0 {
                continue;
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 || st.st_size as usize != len {
                continue;
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            return p != libc::MAP_FAILED;
        }
    }
    false
}

#[test]
fn a_stage_that_keeps_a_writable_mapping_fails_like_in_a_pipeline() {
    // An odd size no other test's segment has, so the stage finds its own.
    let stage = Stage::new("test.keepmap", "1.0.0", |ctx: &RunContext, _: ()| {
        let mut out = ctx.output::<f32>("out")?;
        out.fill(1.0);
        if !leak_writable_mapping(out.len() * 4) {
            return Err(Error::new("found no output segment to map"));
        }
        Ok(())
    })
    .output(Port::grid("out", DType::F32));
    let out = Harness::new(stage).grid("plane", 37, 3).run();
    let e = out
        .error()
        .expect("the harness refuses to seal a mapped output");
    assert!(
        e.message()
            .contains("output \"out\" is still mapped writable"),
        "{e}"
    );
}

#[test]
fn failures_panics_cancellation_and_logs_come_back() {
    let stage = Stage::new(
        "test.panic",
        "1.0.0",
        |ctx: &RunContext, _: ()| -> Result<(), Error> {
            ctx.warn("about to fail");
            panic!("boom {}", 7)
        },
    );
    let out = Harness::new(stage).run();
    assert_eq!(out.error().unwrap().message(), "stage panicked: boom 7");
    assert_eq!(out.logs()[0].level, LogLevel::Warn);
    assert_eq!(out.logs()[0].message, "about to fail");

    let stage = Stage::new("test.cancel", "1.0.0", |ctx: &RunContext, _: ()| {
        let _s = ctx.timed("outer");
        ctx.check_cancelled()?;
        Ok(())
    });
    let out = Harness::new(stage.clone()).cancelled().run();
    assert_eq!(out.error().unwrap().kind(), ErrorKind::Cancelled);
    assert!(
        out.span("outer").is_some(),
        "spans come back after a failure too"
    );
    assert!(Harness::new(stage).run().error().is_none());
}

#[test]
fn inputs_are_write_sealed_before_the_stage_sees_them() {
    let stage = Stage::new("test.seals", "1.0.0", |ctx: &RunContext, _: ()| {
        let (bytes, h) = ctx.input_bytes("in")?;
        assert_eq!(bytes.len() as u64, h.nbytes);
        // Every segment this process holds for the input carries the
        // host's seals.
        let mut sealed = 0;
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let Ok(fd) = entry?.file_name().to_string_lossy().parse::<RawFd>() else {
                continue;
            };
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            if !link.to_string_lossy().contains("memfd:seal-check.in") {
                continue;
            }
            // SAFETY: F_GET_SEALS on our own descriptor.
            let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
            let want =
                libc::F_SEAL_WRITE | libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
            if seals & want != want {
                return Err(Error::new(format!("input seals {seals:#x}")));
            }
            sealed += 1;
        }
        ctx.metric("sealed", f64::from(sealed));
        Ok(())
    })
    .input(Port::blob("in"));
    let out = Harness::new(stage)
        .name("seal-check")
        .input_bytes("in", b"hello")
        .run()
        .ok()
        .unwrap();
    assert_eq!(out.metrics().get("sealed"), Some(&1.0));
}

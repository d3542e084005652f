//! A test plugin whose stages break the rules on purpose, so tests can check
//! that the host catches each kind of misbehaviour of a Rust plugin:
//!
//! - `bad-rust.keepmap` keeps a writable mapping of its output after returning
//!   (the way a native library that maps the fd itself would);
//! - `bad-rust.writeinput` writes to its read-only input (faults: SIGSEGV);
//! - `bad-rust.crash` aborts the process;
//! - `bad-rust.hang` sleeps forever and ignores cancellation.
//!
//! It also offers well-behaved probes of the dynamic-output path:
//! `probe-rust.blob` creates a blob output, `probe-rust.blobsum` and
//! `probe-rust.tablebytes` read a blob or an (Arrow) table input.

use std::os::fd::RawFd;

use pipehost::{log, serve, DType, Error, ParamSpec, ParamValues, Params, Port, RunContext, Stage};

/// Finds a segment of this process that is not write-sealed (an output the
/// host handed us) and maps it writable, never to unmap it.
fn leak_writable_mapping(len: usize) -> Result<(), Error> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = entry?.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // SAFETY: fcntl/fstat/mmap on descriptors of our own process.
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
            if p != libc::MAP_FAILED {
                log::warn("bad-rust.keepmap: keeping a writable mapping of the output on purpose");
                return Ok(());
            }
        }
    }
    Err(Error::new(
        "bad-rust.keepmap: found no writable segment to map",
    ))
}

fn keepmap(ctx: &RunContext, _: ()) -> Result<(), Error> {
    let mut out = ctx.output::<f32>("out")?;
    out.fill(1.0);
    leak_writable_mapping(out.len() * 4)
}

fn writeinput(ctx: &RunContext, _: ()) -> Result<(), Error> {
    let input = ctx.input::<f32>("in")?;
    log::warn("bad-rust.writeinput: writing to a read-only input on purpose");
    let p = input.as_ptr().cast_mut();
    // SAFETY: it is not; the kernel refuses the write (SIGSEGV), which is
    // what this stage exists to show.
    unsafe { p.write_volatile(-1.0) };
    Err(Error::new(
        "bad-rust.writeinput: the write to a sealed input went through",
    ))
}

fn crash(_: &RunContext, _: ()) -> Result<(), Error> {
    log::error("bad-rust.crash: aborting on purpose");
    std::process::abort()
}

fn hang(_: &RunContext, _: ()) -> Result<(), Error> {
    log::warn("bad-rust.hang: sleeping forever, ignoring cancellation");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

struct BlobParams {
    n: u64,
}

impl Params for BlobParams {
    fn specs() -> Vec<ParamSpec> {
        vec![ParamSpec::int("n").default(1000).doc("bytes to write")]
    }
    fn decode(p: &ParamValues) -> Result<Self, Error> {
        Ok(BlobParams { n: p.get("n")? })
    }
}

fn blob(ctx: &RunContext, p: BlobParams) -> Result<(), Error> {
    let out = ctx.dynamic_output("out", p.n)?;
    let mut sum = 0u64;
    for (i, b) in out.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
        sum += u64::from(*b);
    }
    ctx.metric("sum", sum as f64);
    Ok(())
}

fn blobsum(ctx: &RunContext, _: ()) -> Result<(), Error> {
    let (bytes, _) = ctx.input_bytes("in")?;
    ctx.metric(
        "sum",
        bytes.iter().map(|&b| u64::from(b)).sum::<u64>() as f64,
    );
    ctx.metric("n", bytes.len() as f64);
    Ok(())
}

fn tablebytes(ctx: &RunContext, _: ()) -> Result<(), Error> {
    let (bytes, h) = ctx.input_bytes("in")?;
    ctx.metric("n", bytes.len() as f64);
    let arrow = bytes.starts_with(b"ARROW1") && bytes.ends_with(b"ARROW1");
    ctx.metric("arrow", if arrow { 1.0 } else { 0.0 });
    ctx.metric("format", f64::from(h.format));
    Ok(())
}

fn main() {
    serve(vec![
        Stage::new("bad-rust.keepmap", "1.0.0", keepmap)
            .doc("Keeps a writable mapping of its output after returning.")
            .output(Port::grid("out", DType::F32)),
        Stage::new("bad-rust.writeinput", "1.0.0", writeinput)
            .doc("Writes to its read-only input: dies of SIGSEGV.")
            .input(Port::grid("in", DType::F32)),
        Stage::new("bad-rust.crash", "1.0.0", crash)
            .doc("Aborts the plugin process.")
            .output(Port::grid("out", DType::F32)),
        Stage::new("bad-rust.hang", "1.0.0", hang)
            .doc("Never returns and ignores cancellation.")
            .output(Port::grid("out", DType::F32)),
        Stage::new("probe-rust.blob", "1.0.0", blob)
            .doc("Creates a blob output of n bytes (a dynamic output).")
            .output(Port::blob("out"))
            .concurrent(true),
        Stage::new("probe-rust.blobsum", "1.0.0", blobsum)
            .doc("Sums the bytes of a blob input.")
            .input(Port::blob("in"))
            .concurrent(true),
        Stage::new("probe-rust.tablebytes", "1.0.0", tablebytes)
            .doc("Looks at the raw bytes of a table input.")
            .input(Port::table("in"))
            .concurrent(true),
    ])
}

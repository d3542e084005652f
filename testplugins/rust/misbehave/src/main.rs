//! A test plugin whose stages break the rules on purpose, so tests can check
//! that the host catches each kind of misbehaviour of a Rust plugin:
//!
//! - `bad-rust.keepmap` keeps a writable mapping of its output after returning
//!   (the way a native library that maps the fd itself would);
//! - `bad-rust.forkmap` forks a child that keeps the writable mapping of the
//!   output it inherited, and writes into it after the stage returned;
//! - `bad-rust.writeinput` writes to its read-only input (faults: SIGSEGV);
//! - `bad-rust.crash` aborts the process;
//! - `bad-rust.hang` sleeps forever and ignores cancellation.
//!
//! It also offers well-behaved probes of the dynamic-output path:
//! `probe-rust.blob` creates a blob output, `probe-rust.blobsum` and
//! `probe-rust.tablebytes` read a blob or an (Arrow) table input; and of a
//! run itself: `probe-rust.noop` does nothing (what a run costs),
//! `probe-rust.wait` waits until the host cancels it.

use std::os::fd::RawFd;

use std::io::Write;

use pipehost::{log, serve, DType, Error, Port, RunContext, Stage};

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

pipehost::params! {
    struct NoteParams {
        /// file to append progress lines to
        note: String = "",
    }
}

/// Bounds the forked child's life, whatever happens to the plugin.
const CHILD_LIFE_MS: i32 = 10_000;

/// Appends `line` to the file at `path` (a NUL-terminated C string).
/// Async-signal-safe: the forked child may only make system calls.
fn note_raw(path: &[u8], line: &[u8]) {
    if path.len() <= 1 {
        return;
    }
    // SAFETY: path is NUL-terminated; plain system calls.
    unsafe {
        let fd = libc::open(
            path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        );
        if fd >= 0 {
            libc::write(fd, line.as_ptr().cast(), line.len());
            libc::close(fd);
        }
    }
}

/// A note line built without allocating (the forked child must not).
struct Line {
    buf: [u8; 128],
    n: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 128],
            n: 0,
        }
    }
    fn text(&mut self, s: &[u8]) -> &mut Line {
        self.buf[self.n..self.n + s.len()].copy_from_slice(s);
        self.n += s.len();
        self
    }
    fn num(&mut self, mut v: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut d = 0;
        loop {
            digits[d] = b'0' + (v % 10) as u8;
            d += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while d > 0 {
            d -= 1;
            self.buf[self.n] = digits[d];
            self.n += 1;
        }
        self
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.n]
    }
}

/// Waits up to `ms` for a byte on `fd`: true with one, false on EOF (the
/// plugin is gone), an error or the timeout.
fn wait_byte(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut c = 0u8;
    // SAFETY: plain system calls on our own descriptors.
    unsafe { libc::poll(&mut p, 1, ms) == 1 && libc::read(fd, (&mut c as *mut u8).cast(), 1) == 1 }
}

/// The forked child: holds the writable mapping it inherited, writes the
/// marker a moment after the stage returned (`go`), and exits once the
/// plugin is gone (`go` reads EOF) or after CHILD_LIFE_MS.
fn forkmap_child(path: &[u8], cells: *mut f32, bytes: usize, ready: RawFd, go: RawFd) -> ! {
    // SAFETY: only system calls and writes into the inherited mapping.
    unsafe {
        let pid = libc::getpid() as u64;
        note_raw(
            path,
            Line::new()
                .text(b"child ")
                .num(pid)
                .text(b" mapped ")
                .num(bytes as u64)
                .text(b" bytes writable (fork)\n")
                .bytes(),
        );
        libc::write(ready, b"r".as_ptr().cast(), 1);
        if !wait_byte(go, CHILD_LIFE_MS) {
            libc::_exit(0);
        }
        let late = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        libc::nanosleep(&late, std::ptr::null_mut());
        cells.write_volatile(-7.0);
        note_raw(
            path,
            Line::new()
                .text(b"child ")
                .num(pid)
                .text(b" wrote after the stage returned\n")
                .bytes(),
        );
        while wait_byte(go, CHILD_LIFE_MS) {}
        libc::_exit(0)
    }
}

/// Fills the output, then forks: the child inherits the SDK's writable
/// mapping of the output (fork copies shared mappings) and keeps it after
/// the SDK unmaps its own view before the Result.
fn forkmap(ctx: &RunContext, p: NoteParams) -> Result<(), Error> {
    let mut out = ctx.output::<f32>("out")?;
    out.fill(1.0);
    let cells = out.as_mut_ptr();
    let bytes = out.len() * 4;
    let mut path = p.note.into_bytes();
    path.push(0);
    let (mut ready, mut go) = ([0 as RawFd; 2], [0 as RawFd; 2]);
    // SAFETY: pipes and fork; the child only makes system calls.
    unsafe {
        if libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(Error::new("bad-rust.forkmap: pipe"));
        }
        if libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            libc::close(ready[0]);
            libc::close(ready[1]);
            return Err(Error::new("bad-rust.forkmap: pipe"));
        }
        let pid = libc::fork();
        if pid == 0 {
            libc::close(ready[0]);
            libc::close(go[1]);
            forkmap_child(&path, cells, bytes, ready[1], go[0]);
        }
        libc::close(ready[1]);
        libc::close(go[0]);
        let ok = pid > 0 && wait_byte(ready[0], 5000);
        libc::close(ready[0]);
        if !ok {
            libc::close(go[1]);
            return Err(Error::new(
                "bad-rust.forkmap: the forked child did not get ready",
            ));
        }
        // go[1] stays open as long as the plugin lives: the child's lifeline.
        libc::write(go[1], b"g".as_ptr().cast(), 1);
    }
    log::warn("bad-rust.forkmap: returning while a forked child maps my output writable");
    Ok(())
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

pipehost::params! {
    struct BlobParams {
        /// bytes to write
        n: u64 = 1000,
        /// write through the streaming writer instead of a sized segment
        stream: bool = false,
    }
}

fn blob(ctx: &RunContext, p: BlobParams) -> Result<(), Error> {
    let byte = |i: u64| (i * 7 % 251) as u8;
    let sum: u64 = (0..p.n).map(|i| u64::from(byte(i))).sum();
    if p.stream {
        // In uneven pieces, as an encoder would write.
        let mut w = ctx.output_writer("out")?;
        let bytes: Vec<u8> = (0..p.n).map(byte).collect();
        for piece in bytes.chunks(997) {
            w.write_all(piece)?;
        }
    } else {
        let out = ctx.dynamic_output("out", p.n)?;
        for (i, b) in out.iter_mut().enumerate() {
            *b = byte(i as u64);
        }
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

fn wait(ctx: &RunContext, _: ()) -> Result<(), Error> {
    ctx.info("probe-rust.wait: waiting for the host to cancel the run");
    loop {
        ctx.check_cancelled()?;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn main() {
    serve(vec![
        Stage::new("bad-rust.keepmap", "1.0.0", keepmap)
            .doc("Keeps a writable mapping of its output after returning.")
            .output(Port::grid("out", DType::F32)),
        Stage::new("bad-rust.forkmap", "1.0.0", forkmap)
            .doc("Forks a child that keeps a writable mapping of the output.")
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
        Stage::new("probe-rust.noop", "1.0.0", |_: &RunContext, _: ()| Ok(()))
            .doc("Does nothing: what a run itself costs.")
            .concurrent(true),
        Stage::new("probe-rust.wait", "1.0.0", wait)
            .doc("Waits until the host cancels the run.")
            .concurrent(true),
    ])
}

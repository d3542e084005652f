//! Trace markers: stage and subtask begin/end written to the kernel's tracefs
//! `trace_marker` in the systrace text format Perfetto and trace-cmd read
//! (docs/protocol.md, "Trace markers"). The host names the file in the Run
//! request; nothing is opened or written unless it does.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The kernel cuts a marker at 4 KiB; names are cut well below.
const MAX_NAME: usize = 512;

struct Marker {
    file: File,
    pid: String,
}

static MARKER: OnceLock<Option<Marker>> = OnceLock::new();
static BASES: AtomicU64 = AtomicU64::new(0);

/// Opens `path` once per process (later calls return the first call's
/// result) and reports whether markers can be written. A failure is reported
/// once on stderr.
pub(crate) fn open(path: &str) -> bool {
    MARKER
        .get_or_init(|| match OpenOptions::new().write(true).open(path) {
            Ok(file) => Some(Marker {
                file,
                pid: std::process::id().to_string(),
            }),
            Err(e) => {
                crate::log::warn(&format!(
                    "trace markers: open {path}: {e}; no trace markers from this plugin"
                ));
                None
            }
        })
        .is_some()
}

/// A process-unique base for one Run's async-slice cookies.
pub(crate) fn next_base() -> u64 {
    (BASES.fetch_add(1, Ordering::Relaxed) + 1) << 32
}

/// Begins a slice on the calling thread; [`end`] on the same thread ends it.
pub(crate) fn begin(name: &str) {
    emit(b'B', Some(name), None)
}
pub(crate) fn end() {
    emit(b'E', None, None)
}
/// An async slice: paired by name and cookie, from any thread.
pub(crate) fn async_begin(name: &str, cookie: u64) {
    emit(b'S', Some(name), Some(cookie))
}
pub(crate) fn async_end(name: &str, cookie: u64) {
    emit(b'F', Some(name), Some(cookie))
}

struct Buf {
    b: [u8; MAX_NAME + 64],
    n: usize,
}

impl Buf {
    fn put(&mut self, s: &[u8]) {
        self.b[self.n..self.n + s.len()].copy_from_slice(s);
        self.n += s.len();
    }
    fn put_u64(&mut self, mut v: u64) {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&tmp[i..]);
    }
}

fn emit(kind: u8, name: Option<&str>, num: Option<u64>) {
    let Some(Some(m)) = MARKER.get() else { return };
    let mut buf = Buf {
        b: [0; MAX_NAME + 64],
        n: 0,
    };
    buf.put(&[kind, b'|']);
    buf.put(m.pid.as_bytes());
    if let Some(name) = name {
        buf.put(b"|");
        // '|' and line breaks would split the marker's fields or lines.
        for &c in name.as_bytes().iter().take(MAX_NAME) {
            buf.put(&[if c == b'|' || c == b'\n' || c == b'\r' {
                b'_'
            } else {
                c
            }]);
        }
    }
    if let Some(v) = num {
        buf.put(b"|");
        buf.put_u64(v);
    }
    // One write(2) is one trace event. A full or stopped trace is not the
    // stage's problem: the result is ignored.
    let _ = (&m.file).write(&buf.b[..buf.n]);
}

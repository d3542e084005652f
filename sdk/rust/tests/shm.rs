//! The data plane on real memfds and a real SOCK_SEQPACKET socket pair:
//! seals, mappings, fd channel framing and every rejection rule of
//! docs/protocol.md.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipehost::shm::{
    decode_header, encode_header, Channel, ChannelEnd, Mailbox, Message, MsgType, Received,
    Segment, HEADER_SIZE, MAGIC, PLUGIN_TOKEN_BIT,
};

mod common;
use common::send_raw;

/// The tests count this process's open fds, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn seals(fd: BorrowedFd<'_>) -> i32 {
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) }
}

fn inode(fd: RawFd) -> u64 {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    st.st_ino
}

#[test]
fn segments_are_size_sealed_from_birth() {
    let _serial = serial();
    let seg = Segment::create("test.size", 4096 * 3).unwrap();
    assert_eq!(seg.size(), 4096 * 3);
    let s = seals(seg.fd());
    assert_eq!(
        s & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
    );
    assert_eq!(s & libc::F_SEAL_WRITE, 0);
    // The size can never change.
    assert_ne!(unsafe { libc::ftruncate(seg.fd().as_raw_fd(), 1) }, 0);
    assert_ne!(unsafe { libc::ftruncate(seg.fd().as_raw_fd(), 1 << 20) }, 0);
    // Close-on-exec.
    assert_ne!(
        unsafe { libc::fcntl(seg.fd().as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC,
        0
    );
    assert!(pipehost::shm::seal_string(s).contains("shrink,grow"));
}

#[test]
fn write_seal_waits_for_writable_mappings_and_read_only_maps_need_it() {
    let _serial = serial();
    let seg = Segment::create("test.seal", 8192).unwrap();
    let err = seg.map_ro().unwrap_err();
    assert!(err.message().contains("not write-sealed"), "{err}");
    let mut m = seg.map_rw().unwrap();
    m.bytes_mut()[100] = 7;
    // A writable shared mapping exists: the kernel refuses the write seal.
    let err = seg.seal_write().unwrap_err();
    assert!(err.message().contains("busy"), "{err}");
    drop(m);
    seg.seal_write().unwrap();
    seg.seal_write().unwrap(); // idempotent
    assert!(seg.map_rw().is_err());
    let ro = seg.map_ro().unwrap();
    assert_eq!(ro.bytes()[100], 7);
    assert!(!ro.writable());
    // mprotect back to writable is refused.
    let rc = unsafe {
        libc::mprotect(
            ro.as_ptr().cast(),
            ro.len(),
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EACCES)
    );
}

#[test]
fn writing_to_a_read_only_mapping_faults() {
    let _serial = serial();
    let seg = Segment::create("test.fault", 4096).unwrap();
    seg.seal_write().unwrap();
    let ro = seg.map_ro().unwrap();
    let p = ro.as_ptr();
    // The fault happens in a child process, as it would in a plugin.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            p.write_volatile(1);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status),
        "child exited normally: the write went through"
    );
    assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
    assert_eq!(ro.bytes()[0], 0);
}

#[test]
fn empty_segments_map_to_empty_views() {
    let _serial = serial();
    let seg = Segment::create("", 0).unwrap();
    assert_eq!(seg.size(), 0);
    assert!(seg.map_rw().unwrap().is_empty());
    seg.seal_write().unwrap();
    assert!(seg.map_ro().unwrap().bytes().is_empty());
}

/// RssShmem of this process in bytes: the shared pages it has mapped.
fn rss_shmem() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssShmem:"))
        .expect("no RssShmem in /proc/self/status");
    let kb: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A writable mapping of 1 MiB or more has every page present at once
/// (zero), before the stage writes anything; a smaller one is left to the
/// faults.
#[test]
fn large_writable_mappings_are_populated() {
    let _serial = serial();
    let size: u64 = 32 << 20;
    let seg = Segment::create("populate", size).unwrap();
    let before = rss_shmem();
    let m = seg.map_rw().unwrap();
    let grew = rss_shmem() - before;
    assert!(
        grew >= (size * 9 / 10) as i64,
        "RssShmem grew by {grew} on mapping, want about {size}"
    );
    assert_eq!(m.len(), size as usize);
    let small = Segment::create("small", 256 << 10).unwrap();
    let mid = rss_shmem();
    let _ms = small.map_rw().unwrap();
    assert!(rss_shmem() - mid < 128 << 10);
}

fn memfd(flags: libc::c_uint, size: i64) -> OwnedFd {
    let fd = unsafe { libc::memfd_create(c"raw".as_ptr(), flags) };
    assert!(fd >= 0);
    assert_eq!(unsafe { libc::ftruncate(fd, size) }, 0);
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn open_accepts_only_size_sealed_memfds() {
    let _serial = serial();
    // Not a regular file.
    let mut p = [0; 2];
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    assert!(Segment::open(r)
        .unwrap_err()
        .message()
        .contains("not a memfd"));
    drop(w);
    // A file on disk knows no seals at all.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("not-a-memfd");
    let file = std::fs::File::create(&path).unwrap();
    let e = Segment::open(OwnedFd::from(file)).unwrap_err();
    assert!(e.message().contains("not a sealable memfd"), "{e}");
    let _ = std::fs::remove_file(&path);
    // A memfd made without MFD_ALLOW_SEALING (its seals are frozen empty).
    let e = Segment::open(memfd(libc::MFD_CLOEXEC, 64)).unwrap_err();
    assert!(e.message().contains("size is not sealed"), "{e}");
    // A sealable memfd whose size is not sealed.
    let e = Segment::open(memfd(libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING, 64)).unwrap_err();
    assert!(e.message().contains("size is not sealed"), "{e}");
    // Size sealed: accepted, size from fstat, name from /proc.
    let fd = memfd(libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING, 4096);
    unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    let seg = Segment::open(fd).unwrap();
    assert_eq!(seg.size(), 4096);
    assert_eq!(seg.name(), "raw");
}

#[test]
fn header_layout_is_little_endian_32_bytes() {
    let _serial = serial();
    let m = Message {
        kind: MsgType::Segment,
        token: 0x0102_0304_0506_0708,
        segment_id: 9,
        size: 1 << 40,
    };
    let b = encode_header(&m);
    assert_eq!(&b[0..4], b"PHFD");
    assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), MAGIC);
    assert_eq!(&b[4..8], &[1, 0, 1, 0]);
    assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 9);
    assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 1 << 40);
    assert_eq!(decode_header(&b).unwrap(), m);
    assert!(decode_header(&b[..31]).is_err());
}

#[test]
fn segments_travel_with_their_fd() {
    let _serial = serial();
    let (host, plugin) = Channel::pair().unwrap();
    let seg = Segment::create("test.travel", 4096).unwrap();
    let msg = Message {
        kind: MsgType::Segment,
        token: 5,
        segment_id: 77,
        size: 4096,
    };
    host.send(&msg, Some(seg.fd())).unwrap();
    let Received::Message(got, Some(fd)) = plugin.recv().unwrap() else {
        panic!("no fd")
    };
    assert_eq!(got, msg);
    assert_ne!(fd.as_raw_fd(), seg.fd().as_raw_fd());
    assert_eq!(inode(fd.as_raw_fd()), inode(seg.fd().as_raw_fd()));
    // MSG_CMSG_CLOEXEC: received fds never leak into children.
    assert_ne!(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC,
        0
    );
    // ADOPT goes the other way with a plugin token; CLOSE carries nothing.
    let adopt = Message {
        kind: MsgType::Adopt,
        token: PLUGIN_TOKEN_BIT | 1,
        segment_id: 0,
        size: 4096,
    };
    plugin.send(&adopt, Some(fd.as_fd())).unwrap();
    assert!(matches!(host.recv().unwrap(), Received::Message(m, Some(_)) if m == adopt));
    let close = Message {
        kind: MsgType::Close,
        token: 0,
        segment_id: 0,
        size: 0,
    };
    plugin.send(&close, None).unwrap();
    assert!(matches!(host.recv().unwrap(), Received::Message(m, None) if m.kind == MsgType::Close));
    // The sender refuses to break the rules itself.
    assert!(plugin.send(&close, Some(fd.as_fd())).is_err());
    assert!(host.send(&msg, None).is_err());
    assert!(host
        .send(
            &Message {
                token: PLUGIN_TOKEN_BIT | 3,
                ..msg
            },
            Some(seg.fd())
        )
        .is_err());
    drop(host);
    assert!(matches!(plugin.recv().unwrap(), Received::Eof));
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn malformed_messages_are_rejected_and_their_fds_closed() {
    let _serial = serial();
    let good = |kind: MsgType, token: u64| {
        encode_header(&Message {
            kind,
            token,
            segment_id: 1,
            size: 64,
        })
    };
    let mut bad_magic = good(MsgType::Segment, 1);
    bad_magic[0] = b'X';
    let mut bad_version = good(MsgType::Segment, 1);
    bad_version[4] = 2;
    let mut bad_type = good(MsgType::Segment, 1);
    bad_type[6] = 4;
    let long = [good(MsgType::Segment, 1).as_slice(), &[0u8]].concat();
    let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
        (
            "short",
            good(MsgType::Segment, 1)[..31].to_vec(),
            1,
            "31 bytes",
        ),
        ("long", long, 1, "longer than 32"),
        ("magic", bad_magic.to_vec(), 1, "bad magic"),
        ("version", bad_version.to_vec(), 1, "version 2"),
        ("type", bad_type.to_vec(), 1, "unknown message type 4"),
        (
            "segment token 0",
            good(MsgType::Segment, 0).to_vec(),
            1,
            "not a host token",
        ),
        (
            "segment plugin token",
            good(MsgType::Segment, PLUGIN_TOKEN_BIT | 1).to_vec(),
            1,
            "not a host token",
        ),
        (
            "adopt host token",
            good(MsgType::Adopt, 7).to_vec(),
            1,
            "not a plugin token",
        ),
        (
            "segment without fd",
            good(MsgType::Segment, 2).to_vec(),
            0,
            "carries 0 fds",
        ),
        (
            "segment with two fds",
            good(MsgType::Segment, 3).to_vec(),
            2,
            "carries 2 fds",
        ),
        (
            "close with an fd",
            good(MsgType::Close, 0).to_vec(),
            1,
            "carries 1 fds",
        ),
        (
            "too many fds",
            good(MsgType::Segment, 4).to_vec(),
            17,
            "truncated",
        ),
    ];
    let (host, plugin) = Channel::pair().unwrap();
    let seg = Segment::create("test.bad", 64).unwrap();
    let before = open_fds();
    for (name, data, nfds, want) in cases {
        let fds = vec![seg.fd().as_raw_fd(); nfds];
        send_raw(host.as_fd().as_raw_fd(), &data, &fds);
        let err = plugin.recv().expect_err(name);
        assert!(err.message().contains(want), "{name}: {err}");
        assert_eq!(open_fds(), before, "{name}: received fds leaked");
    }
    // The channel still works after rejections.
    host.send(
        &Message {
            kind: MsgType::Segment,
            token: 9,
            segment_id: 1,
            size: 64,
        },
        Some(seg.fd()),
    )
    .unwrap();
    assert!(matches!(plugin.recv().unwrap(), Received::Message(m, Some(_)) if m.token == 9));
}

fn mailbox() -> (Channel, Mailbox, mpsc::Receiver<ChannelEnd>) {
    let (host, plugin) = Channel::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let mb = Mailbox::start(Arc::new(plugin), move |end| tx.send(end).unwrap());
    (host, mb, rx)
}

#[test]
fn mailbox_files_fds_by_token_and_waits_for_late_ones() {
    let _serial = serial();
    let (host, mb, ends) = mailbox();
    let seg = Segment::create("test.mb", 128).unwrap();
    let seg_msg = |token| Message {
        kind: MsgType::Segment,
        token,
        segment_id: token,
        size: 128,
    };
    host.send(&seg_msg(2), Some(seg.fd())).unwrap();
    host.send(&seg_msg(1), Some(seg.fd())).unwrap();
    // Out of order is fine: each fd is filed under its token.
    assert_eq!(mb.take(1, Duration::from_secs(5)).unwrap().0.segment_id, 1);
    assert_eq!(mb.take(2, Duration::from_secs(5)).unwrap().0.segment_id, 2);
    // A token that arrives while someone waits for it.
    let late = std::thread::spawn({
        let mb = mb.clone();
        move || mb.take(3, Duration::from_secs(5))
    });
    std::thread::sleep(Duration::from_millis(50));
    host.send(&seg_msg(3), Some(seg.fd())).unwrap();
    let (m, fd) = late.join().unwrap().unwrap();
    assert_eq!(m.token, 3);
    assert_eq!(inode(fd.as_raw_fd()), inode(seg.fd().as_raw_fd()));
    // A token that never comes times out.
    let t = Instant::now();
    let err = mb.take(4, Duration::from_millis(100)).unwrap_err();
    assert!(err.message().contains("timed out"), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(mb.end().is_none());
    // Discarded tokens: an fd already here is closed at once, a late one on arrival.
    let before = open_fds();
    host.send(&seg_msg(6), Some(seg.fd())).unwrap();
    while open_fds() == before {
        std::thread::sleep(Duration::from_millis(1));
    }
    mb.discard([6, 7]);
    assert_eq!(open_fds(), before);
    host.send(&seg_msg(7), Some(seg.fd())).unwrap();
    host.send(&seg_msg(8), Some(seg.fd())).unwrap();
    mb.take(8, Duration::from_secs(5)).unwrap();
    assert_eq!(open_fds(), before, "the discarded token's fd was kept");
    assert!(mb.take(7, Duration::from_millis(10)).is_err());
    // CLOSE ends the mailbox cleanly, and waiting takers learn it.
    host.send(
        &Message {
            kind: MsgType::Close,
            token: 0,
            segment_id: 0,
            size: 0,
        },
        None,
    )
    .unwrap();
    assert_eq!(
        ends.recv_timeout(Duration::from_secs(5)).unwrap(),
        ChannelEnd::Closed
    );
    assert!(mb
        .take(5, Duration::from_secs(5))
        .unwrap_err()
        .message()
        .contains("never arrived"));
}

#[test]
fn mailbox_reports_eof_and_duplicate_tokens() {
    let _serial = serial();
    let (host, _mb, ends) = mailbox();
    drop(host);
    assert_eq!(
        ends.recv_timeout(Duration::from_secs(5)).unwrap(),
        ChannelEnd::Gone
    );

    let (host, _mb, ends) = mailbox();
    let seg = Segment::create("test.dup", 64).unwrap();
    let m = Message {
        kind: MsgType::Segment,
        token: 8,
        segment_id: 1,
        size: 64,
    };
    host.send(&m, Some(seg.fd())).unwrap();
    host.send(&m, Some(seg.fd())).unwrap();
    match ends.recv_timeout(Duration::from_secs(5)).unwrap() {
        ChannelEnd::Broken(why) => assert!(why.contains("received twice"), "{why}"),
        e => panic!("{e:?}"),
    }

    let (host, _mb, ends) = mailbox();
    send_raw(host.as_fd().as_raw_fd(), &[0u8; HEADER_SIZE], &[]);
    assert!(
        matches!(ends.recv_timeout(Duration::from_secs(5)).unwrap(), ChannelEnd::Broken(w) if w.contains("magic"))
    );
}

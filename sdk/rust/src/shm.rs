//! The data plane (docs/protocol.md): memfd segments with kernel seals,
//! their mappings, and the fd channel that carries segment descriptors
//! between the host and this plugin with `SCM_RIGHTS`.
//!
//! Stage code never needs this module: [`RunContext`](crate::RunContext)
//! hands out typed views. It is public for tools and tests.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::Error;

// ---------------------------------------------------------------- segments

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the memfd can never be made executable.
const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;
/// The seals every segment carries from birth: its size never changes.
pub const SIZE_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

fn errno(what: impl std::fmt::Display) -> Error {
    Error::new(format!("{what}: {}", io::Error::last_os_error()))
}

/// One memfd segment. Owns its descriptor.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    size: u64,
    name: String,
}

impl Segment {
    /// Creates a sealable memfd of `size` bytes and seals its size at once:
    /// `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)` (retried
    /// without `MFD_NOEXEC_SEAL` on kernels before 6.3), `ftruncate`,
    /// `F_ADD_SEALS(F_SEAL_SHRINK | F_SEAL_GROW)`.
    pub fn create(name: &str, size: u64) -> Result<Segment, Error> {
        let mut mem_name: String = name.chars().filter(|&c| c != '\0').collect();
        if mem_name.len() > 249 {
            let mut cut = 249;
            while !mem_name.is_char_boundary(cut) {
                cut -= 1;
            }
            mem_name.truncate(cut);
        }
        if mem_name.is_empty() {
            mem_name = "pipehost".into();
        }
        let cname = CString::new(mem_name).expect("NUL bytes were removed");
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: cname is a valid NUL-terminated string.
        let mut fd = unsafe { libc::memfd_create(cname.as_ptr(), flags | MFD_NOEXEC_SEAL) };
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // SAFETY: as above.
            fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        }
        if fd < 0 {
            return Err(errno(format!("create segment {name:?}: memfd_create")));
        }
        // SAFETY: fd was just returned by memfd_create and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = libc::off_t::try_from(size).map_err(|_| {
            Error::new(format!("create segment {name:?}: size {size} is too large"))
        })?;
        // SAFETY: plain syscalls on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(errno(format!(
                "create segment {name:?}: ftruncate to {size} bytes"
            )));
        }
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) } != 0 {
            return Err(errno(format!("create segment {name:?}: sealing its size")));
        }
        Ok(Segment {
            fd,
            size,
            name: name.to_string(),
        })
    }

    /// Adopts a received descriptor: it must be a sealable memfd (a regular
    /// file with seals) that already carries `F_SEAL_SHRINK | F_SEAL_GROW`.
    /// Its size comes from `fstat`. On error the descriptor is closed.
    pub fn open(fd: OwnedFd) -> Result<Segment, Error> {
        let raw = fd.as_raw_fd();
        // SAFETY: fstat fills a plain struct; fd is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            return Err(errno(format!("open segment fd {raw}: fstat")));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::new(format!(
                "open segment fd {raw}: not a memfd (not a regular file, mode {:#o})",
                st.st_mode & libc::S_IFMT
            )));
        }
        let seals = get_seals(fd.as_fd()).map_err(|e| {
            Error::new(format!(
                "open segment fd {raw}: not a sealable memfd (F_GET_SEALS: {e})"
            ))
        })?;
        if seals & SIZE_SEALS != SIZE_SEALS {
            return Err(Error::new(format!(
                "open segment fd {raw}: size is not sealed (seals {}; need shrink,grow)",
                seal_string(seals)
            )));
        }
        let name = std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("/memfd:")
                    .map(|n| n.trim_end_matches(" (deleted)").to_string())
            })
            .unwrap_or_else(|| format!("fd {raw}"));
        Ok(Segment {
            fd,
            size: st.st_size as u64,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The size in bytes, fixed for the segment's whole life.
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The current `F_GET_SEALS` bit set.
    pub fn seals(&self) -> Result<i32, Error> {
        get_seals(self.fd.as_fd())
            .map_err(|e| Error::new(format!("segment {:?}: F_GET_SEALS: {e}", self.name)))
    }

    /// Adds `F_SEAL_WRITE | F_SEAL_SEAL` (a no-op when already write-sealed).
    /// Fails (EBUSY) while any process holds a writable shared mapping.
    pub fn seal_write(&self) -> Result<(), Error> {
        let seals = self.seals()?;
        if seals & libc::F_SEAL_WRITE != 0 {
            return Ok(());
        }
        // SAFETY: plain fcntl on an fd we own.
        if unsafe {
            libc::fcntl(
                self.fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
            )
        } != 0
        {
            return Err(errno(format!("seal segment {:?}", self.name)));
        }
        Ok(())
    }

    /// Maps the segment shared and read-only, for a consumer. Refuses a
    /// segment without `F_SEAL_WRITE`: only that seal makes the bytes
    /// immutable for every process (docs/protocol.md, "Hand-off").
    pub fn map_ro(&self) -> Result<Mapping, Error> {
        let seals = self.seals()?;
        if seals & libc::F_SEAL_WRITE == 0 {
            return Err(Error::new(format!(
                "map segment {:?} read-only: segment is not write-sealed (seals {})",
                self.name,
                seal_string(seals)
            )));
        }
        self.mmap(libc::PROT_READ)
    }

    /// Maps the segment shared and writable, for its producer; asks for
    /// transparent huge pages where the system's shmem setting allows them.
    pub fn map_rw(&self) -> Result<Mapping, Error> {
        let seals = self.seals()?;
        if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) != 0 {
            return Err(Error::new(format!(
                "map segment {:?} read-write: it is write-sealed; map it read-only",
                self.name
            )));
        }
        let m = self.mmap(libc::PROT_READ | libc::PROT_WRITE)?;
        if m.len > 0 && huge_pages() {
            // Advice only. SAFETY: the range is our own fresh mapping.
            unsafe { libc::madvise(m.ptr.cast(), m.len, libc::MADV_HUGEPAGE) };
        }
        Ok(m)
    }

    fn mmap(&self, prot: i32) -> Result<Mapping, Error> {
        let writable = prot & libc::PROT_WRITE != 0;
        if self.size == 0 {
            // mmap refuses length 0: an empty segment is an empty view.
            return Ok(Mapping {
                ptr: std::ptr::NonNull::<u64>::dangling().as_ptr().cast(),
                len: 0,
                writable,
            });
        }
        let len = usize::try_from(self.size).map_err(|_| {
            Error::new(format!(
                "map segment {:?}: size {} does not fit in memory",
                self.name, self.size
            ))
        })?;
        // SAFETY: a fresh shared mapping of an fd we own; the size is sealed,
        // so the mapping can never fault with SIGBUS.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let what = if writable { "read-write" } else { "read-only" };
            return Err(errno(format!(
                "map segment {:?} {what} ({} bytes)",
                self.name, self.size
            )));
        }
        Ok(Mapping {
            ptr: p.cast(),
            len,
            writable,
        })
    }
}

fn get_seals(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: plain fcntl.
    let s = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if s < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(s)
    }
}

/// Renders a seal bit set for messages, e.g. "shrink,grow,write".
pub fn seal_string(mut seals: i32) -> String {
    let names = [
        (libc::F_SEAL_SEAL, "seal"),
        (libc::F_SEAL_SHRINK, "shrink"),
        (libc::F_SEAL_GROW, "grow"),
        (libc::F_SEAL_WRITE, "write"),
        (libc::F_SEAL_FUTURE_WRITE, "future-write"),
        (0x0020, "exec"),
    ];
    let mut parts = Vec::new();
    for (bit, name) in names {
        if seals & bit != 0 {
            parts.push(name.to_string());
            seals &= !bit;
        }
    }
    if seals != 0 {
        parts.push(format!("{seals:#x}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

fn huge_pages() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .map(|s| shmem_thp_allows(&s))
            .unwrap_or(false)
    })
}

/// Reads the shmem_enabled format, where the active value is bracketed:
/// "always within_size advise [never] deny force".
fn shmem_thp_allows(s: &str) -> bool {
    let Some((_, rest)) = s.split_once('[') else {
        return false;
    };
    let Some((mode, _)) = rest.split_once(']') else {
        return false;
    };
    matches!(mode, "always" | "within_size" | "advise" | "force")
}

/// A shared mapping of a whole segment, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory; access is governed by the
// borrows handed out (`bytes`, `bytes_mut`).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn writable(&self) -> bool {
        self.writable
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is mapped for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    /// The mapped bytes, writable.
    ///
    /// # Panics
    /// If the mapping is read-only.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(self.writable, "shm: bytes_mut on a read-only mapping");
        // SAFETY: as above, and &mut self makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: ptr/len came from our own mmap and are unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

// -------------------------------------------------------------- fd channel

/// Names the environment variable holding the fd channel's fd number.
pub const ENV_FD_CHANNEL: &str = "PIPEHOST_FD_CHANNEL";
/// "PHFD" as a little-endian u32.
pub const MAGIC: u32 = 0x4446_4850;
/// The header version spoken here.
pub const VERSION: u16 = 1;
/// The exact size of every fd channel message.
pub const HEADER_SIZE: usize = 32;
/// Set in every plugin-allocated token (ADOPT), clear in host tokens.
pub const PLUGIN_TOKEN_BIT: u64 = 1 << 63;
/// How many fds a receive makes room for, so too many are seen, not cut.
const MAX_FDS: usize = 16;

/// The type field of an fd channel header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    /// Host → plugin: the fd of the binding with this token.
    Segment,
    /// Plugin → host: a plugin-created segment for a dynamic output.
    Adopt,
    /// Either way, no fd: the sender is shutting down cleanly.
    Close,
}

impl MsgType {
    fn code(self) -> u16 {
        match self {
            MsgType::Segment => 1,
            MsgType::Adopt => 2,
            MsgType::Close => 3,
        }
    }
    fn carries_fd(self) -> bool {
        self != MsgType::Close
    }
}

/// A decoded fd channel header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: MsgType,
    pub token: u64,
    /// The host's arena id (SEGMENT); 0 otherwise.
    pub segment_id: u64,
    /// The segment's size in bytes (SEGMENT, ADOPT); 0 for CLOSE.
    pub size: u64,
}

/// Lays a message out as the 32-byte little-endian wire header.
pub fn encode_header(m: &Message) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[6..8].copy_from_slice(&m.kind.code().to_le_bytes());
    b[8..16].copy_from_slice(&m.token.to_le_bytes());
    b[16..24].copy_from_slice(&m.segment_id.to_le_bytes());
    b[24..32].copy_from_slice(&m.size.to_le_bytes());
    b
}

fn protocol(msg: String) -> Error {
    Error::new(format!("fd channel protocol violation: {msg}"))
}

/// Parses one header and checks what the header alone can tell: length,
/// magic, version, type and the token space of the type.
pub fn decode_header(b: &[u8]) -> Result<Message, Error> {
    if b.len() != HEADER_SIZE {
        return Err(protocol(format!(
            "message is {} bytes, want {HEADER_SIZE}",
            b.len()
        )));
    }
    let u16at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u64at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
    if magic != MAGIC {
        return Err(protocol(format!(
            "bad magic {magic:#010x}, want {MAGIC:#010x} (\"PHFD\")"
        )));
    }
    let v = u16at(4);
    if v != VERSION {
        return Err(protocol(format!(
            "header version {v}, this side speaks {VERSION}"
        )));
    }
    let kind = match u16at(6) {
        1 => MsgType::Segment,
        2 => MsgType::Adopt,
        3 => MsgType::Close,
        t => return Err(protocol(format!("unknown message type {t}"))),
    };
    let m = Message {
        kind,
        token: u64at(8),
        segment_id: u64at(16),
        size: u64at(24),
    };
    check_token(&m)?;
    Ok(m)
}

fn check_token(m: &Message) -> Result<(), Error> {
    match m.kind {
        MsgType::Segment if m.token == 0 || m.token & PLUGIN_TOKEN_BIT != 0 => {
            Err(protocol(format!(
                "SEGMENT token {:#x} is not a host token (1 ≤ token < 2^63)",
                m.token
            )))
        }
        MsgType::Adopt if m.token & PLUGIN_TOKEN_BIT == 0 => Err(protocol(format!(
            "ADOPT token {:#x} is not a plugin token (top bit set)",
            m.token
        ))),
        _ => Ok(()),
    }
}

/// What one receive produced.
#[derive(Debug)]
pub enum Received {
    /// A well-formed message and the fd it carried (SEGMENT, ADOPT).
    Message(Message, Option<OwnedFd>),
    /// The peer closed its end or died.
    Eof,
}

/// One end of an fd channel: an `AF_UNIX` `SOCK_SEQPACKET` socket. Sends are
/// serialised; one thread receives.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    send_lock: Mutex<()>,
}

impl Channel {
    /// Opens the plugin's end: the fd named by `PIPEHOST_FD_CHANNEL`. Checks it
    /// is a `SOCK_SEQPACKET` socket and marks it close-on-exec. The caller
    /// removes the variable from the environment (while single-threaded).
    pub fn from_env() -> Result<Channel, Error> {
        let v = std::env::var(ENV_FD_CHANNEL).map_err(|_| {
            Error::new(format!(
                "fd channel: {ENV_FD_CHANNEL} is not set; this program is a pipehost plugin and must be started by pipehost"
            ))
        })?;
        let fd: RawFd = v
            .parse()
            .ok()
            .filter(|&fd: &RawFd| fd >= 0)
            .ok_or_else(|| {
                Error::new(format!(
                    "fd channel: {ENV_FD_CHANNEL}={v:?} is not an fd number"
                ))
            })?;
        let mut typ: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one int.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut typ as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(errno(format!(
                "fd channel: fd {fd} from {ENV_FD_CHANNEL} is not a socket"
            )));
        }
        if typ != libc::SOCK_SEQPACKET {
            return Err(Error::new(format!(
                "fd channel: fd {fd} from {ENV_FD_CHANNEL} is a socket of type {typ}, want SOCK_SEQPACKET"
            )));
        }
        // SAFETY: the fd is ours from here on (handed to us by the host).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Channel::from_fd(owned))
    }

    /// Wraps a channel end the caller already owns.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            send_lock: Mutex::new(()),
        }
    }

    /// A connected pair (both ends close-on-exec), for tests.
    pub fn pair() -> Result<(Channel, Channel), Error> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair fills two fds.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(errno("fd channel: socketpair"));
        }
        // SAFETY: both fds are fresh and ours.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel::from_fd(a), Channel::from_fd(b)))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends one message; `fd` must be given for SEGMENT and ADOPT and not
    /// for CLOSE. The kernel passes a duplicate; the caller keeps its fd.
    pub fn send(&self, m: &Message, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        check_token(m)?;
        if m.kind.carries_fd() != fd.is_some() {
            return Err(Error::new(format!(
                "fd channel: {:?} message for token {:#x} {}",
                m.kind,
                m.token,
                if fd.is_some() {
                    "must not carry an fd"
                } else {
                    "needs an fd"
                }
            )));
        }
        let hdr = encode_header(m);
        let mut iov = libc::iovec {
            iov_base: hdr.as_ptr() as *mut _,
            iov_len: HEADER_SIZE,
        };
        // u64 storage keeps the control buffer aligned for cmsghdr.
        let mut cbuf = [0u64; 8];
        // SAFETY: msghdr is plain data; every pointer in it outlives sendmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            unsafe {
                let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
                msg.msg_control = cbuf.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
            }
        }
        let _g = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // SAFETY: msg is fully initialised above.
            let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::new(format!(
                    "fd channel: send {:?} token {:#x}: {e}",
                    m.kind, m.token
                )));
            }
        }
    }

    /// Receives one message (blocking). Malformed messages are errors, and
    /// every fd that came with them is closed.
    pub fn recv(&self) -> Result<Received, Error> {
        let mut buf = [0u8; HEADER_SIZE];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: HEADER_SIZE,
        };
        // Room for MAX_FDS descriptors, u64-aligned.
        let mut cbuf = [0u64; 16];
        // SAFETY: plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen =
            unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as _;
        debug_assert!(msg.msg_controllen as usize <= std::mem::size_of_val(&cbuf));
        let n = loop {
            // SAFETY: every buffer in msg outlives the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::new(format!("fd channel: receive: {e}")));
            }
        };
        // Collect every fd first, so nothing leaks whatever is wrong below.
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut bad_cmsg = None;
        // SAFETY: walking the control messages the kernel wrote.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c);
                    let bytes = (*c).cmsg_len as usize - (data as usize - c as usize);
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                } else {
                    bad_cmsg = Some(((*c).cmsg_level, (*c).cmsg_type));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let flags = msg.msg_flags;
        if let Some((level, typ)) = bad_cmsg {
            return Err(protocol(format!(
                "unexpected control message level {level} type {typ}"
            )));
        }
        if n == 0 && fds.is_empty() && flags & libc::MSG_TRUNC == 0 {
            return Ok(Received::Eof);
        }
        if flags & libc::MSG_CTRUNC != 0 {
            return Err(protocol(format!(
                "control data truncated (more than {MAX_FDS} fds, or the fd limit is reached)"
            )));
        }
        if flags & libc::MSG_TRUNC != 0 {
            return Err(protocol(format!("message longer than {HEADER_SIZE} bytes")));
        }
        let m = decode_header(&buf[..n])?;
        let want = usize::from(m.kind.carries_fd());
        if fds.len() != want {
            return Err(protocol(format!(
                "{:?} message for token {:#x} carries {} fds, want {want}",
                m.kind,
                m.token,
                fds.len()
            )));
        }
        Ok(Received::Message(m, fds.pop()))
    }
}

/// Why a mailbox stopped reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEnd {
    /// The peer sent CLOSE: it is shutting down cleanly.
    Closed,
    /// EOF: the peer's end is closed; for a plugin, the host is gone.
    Gone,
    /// A malformed message or a receive error.
    Broken(String),
}

#[derive(Default)]
struct Pending {
    parcels: HashMap<u64, (Message, OwnedFd)>,
    /// Tokens of failed runs whose fds are closed as soon as they arrive.
    unwanted: std::collections::HashSet<u64>,
    end: Option<ChannelEnd>,
}

/// Reads a channel on a background thread and files each fd under its
/// token until a Run takes it (the fd and the Run race on two sockets).
#[derive(Clone)]
pub struct Mailbox {
    shared: Arc<(Mutex<Pending>, Condvar)>,
}

impl Mailbox {
    /// Starts the reader thread. `on_end` runs on it once the channel ends.
    pub fn start(ch: Arc<Channel>, on_end: impl FnOnce(ChannelEnd) + Send + 'static) -> Mailbox {
        let shared = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let mb = Mailbox {
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("pipehost-fd-channel".into())
            .spawn(move || {
                let end = loop {
                    match ch.recv() {
                        Ok(Received::Eof) => break ChannelEnd::Gone,
                        Ok(Received::Message(m, _)) if m.kind == MsgType::Close => {
                            break ChannelEnd::Closed
                        }
                        Ok(Received::Message(m, Some(fd))) => {
                            let (lock, cv) = &*shared;
                            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                            if p.parcels.contains_key(&m.token) {
                                drop(p);
                                break ChannelEnd::Broken(format!(
                                    "fd channel protocol violation: token {:#x} received twice",
                                    m.token
                                ));
                            }
                            if p.unwanted.remove(&m.token) {
                                drop(fd);
                                continue;
                            }
                            p.parcels.insert(m.token, (m, fd));
                            cv.notify_all();
                        }
                        Ok(Received::Message(..)) => unreachable!("recv checks the fd count"),
                        Err(e) => break ChannelEnd::Broken(e.to_string()),
                    }
                };
                {
                    let (lock, cv) = &*shared;
                    lock.lock().unwrap_or_else(|e| e.into_inner()).end = Some(end.clone());
                    cv.notify_all();
                }
                on_end(end);
            })
            .expect("starting the fd channel reader");
        mb
    }

    /// Waits up to `timeout` for the fd sent under `token` and hands it over.
    pub fn take(&self, token: u64, timeout: Duration) -> Result<(Message, OwnedFd), Error> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(parcel) = p.parcels.remove(&token) {
                return Ok(parcel);
            }
            if let Some(end) = &p.end {
                return Err(Error::new(format!(
                    "fd channel: token {token:#x} never arrived: channel ended ({end:?})"
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(format!(
                    "fd channel: waiting for token {token:#x}: timed out after {timeout:?} (the host sends every fd before the Run)"
                )));
            }
            p = cv
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Gives up on `tokens` (a run that failed before taking them): fds
    /// already here are closed now, the others as soon as they arrive.
    pub fn discard(&self, tokens: impl IntoIterator<Item = u64>) {
        let mut p = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        for t in tokens {
            if p.parcels.remove(&t).is_none() {
                p.unwanted.insert(t);
            }
        }
    }

    /// Why the channel ended, or `None` while it is open.
    pub fn end(&self) -> Option<ChannelEnd> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .end
            .clone()
    }
}

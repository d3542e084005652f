//! The fd channel: the 32-byte message header and one `SOCK_SEQPACKET`
//! end that sends and receives it with the segment's fd (`SCM_RIGHTS`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::segment::errno;
use crate::Error;

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

//! The fd channel: the 32-byte message header and one `SOCK_SEQPACKET`
//! end that sends and receives it with the segment's fd (`SCM_RIGHTS`), or,
//! for runs on the channel, with a payload cut into frames.

use std::fmt;
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
/// The most payload bytes one datagram carries after its header: far below
/// any socket buffer, so a send never fails for size.
pub const MAX_FRAME: usize = 32 << 10;
/// The largest payload (a serialized RunRequest or RunEvent).
pub const MAX_PAYLOAD: usize = 64 << 20;
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
    /// Host → plugin: a serialized RunRequest; the token names the run.
    Run,
    /// Plugin → host: a serialized RunEvent of a run.
    Event,
    /// Plugin → host: the serialized RunEnd of a run, its last message.
    End,
    /// Host → plugin, no payload: cancel the run.
    Cancel,
}

impl MsgType {
    /// The type's number on the wire.
    pub fn code(self) -> u16 {
        match self {
            MsgType::Segment => 1,
            MsgType::Adopt => 2,
            MsgType::Close => 3,
            MsgType::Run => 4,
            MsgType::Event => 5,
            MsgType::End => 6,
            MsgType::Cancel => 7,
        }
    }

    fn from_code(code: u16, runs: bool) -> Option<MsgType> {
        Some(match code {
            1 => MsgType::Segment,
            2 => MsgType::Adopt,
            3 => MsgType::Close,
            4 if runs => MsgType::Run,
            5 if runs => MsgType::Event,
            6 if runs => MsgType::End,
            7 if runs => MsgType::Cancel,
            _ => return None,
        })
    }

    /// SEGMENT and ADOPT carry exactly one fd; every other type none.
    fn carries_fd(self) -> bool {
        matches!(self, MsgType::Segment | MsgType::Adopt)
    }

    /// RUN, EVENT and END carry a payload.
    pub fn carries_payload(self) -> bool {
        matches!(self, MsgType::Run | MsgType::Event | MsgType::End)
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MsgType::Segment => "SEGMENT",
            MsgType::Adopt => "ADOPT",
            MsgType::Close => "CLOSE",
            MsgType::Run => "RUN",
            MsgType::Event => "EVENT",
            MsgType::End => "END",
            MsgType::Cancel => "CANCEL",
        })
    }
}

/// A decoded fd channel header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: MsgType,
    pub token: u64,
    /// The host's arena id (SEGMENT); 0 for ADOPT and CLOSE. In a frame of a
    /// payload, the whole payload's length.
    pub segment_id: u64,
    /// The segment's size in bytes (SEGMENT, ADOPT); 0 for CLOSE. In a
    /// frame of a payload, the payload bytes the frame carries.
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
/// magic, version, type and the token space of the type. It speaks the base
/// protocol (SEGMENT, ADOPT, CLOSE); [`decode_run_header`] also takes the
/// messages of runs on the channel.
pub fn decode_header(b: &[u8]) -> Result<Message, Error> {
    decode(b, false)
}

/// [`decode_header`] for a side that takes runs on the channel: RUN, EVENT,
/// END and CANCEL are known types too, and for RUN, EVENT and END the last
/// two fields are a payload's length and the bytes of it this frame
/// carries, checked against [`MAX_FRAME`] and [`MAX_PAYLOAD`].
pub fn decode_run_header(b: &[u8]) -> Result<Message, Error> {
    decode(b, true)
}

fn decode(b: &[u8], runs: bool) -> Result<Message, Error> {
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
    let t = u16at(6);
    let kind =
        MsgType::from_code(t, runs).ok_or_else(|| protocol(format!("unknown message type {t}")))?;
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
        MsgType::Segment | MsgType::Adopt | MsgType::Close => Ok(()),
        MsgType::Run | MsgType::Event | MsgType::End | MsgType::Cancel => check_run_fields(m),
    }
}

/// The header checks of RUN, EVENT, END and CANCEL: a host token, and a
/// frame that fits its payload (CANCEL has none).
fn check_run_fields(m: &Message) -> Result<(), Error> {
    let (kind, total, size) = (m.kind, m.segment_id, m.size);
    if m.token == 0 || m.token & PLUGIN_TOKEN_BIT != 0 {
        return Err(protocol(format!(
            "{kind} token {:#x} is not a run token (1 ≤ token < 2^63)",
            m.token
        )));
    }
    if kind == MsgType::Cancel {
        if total != 0 || size != 0 {
            return Err(protocol(format!(
                "CANCEL carries no payload, but its header has length {total} and frame size {size}"
            )));
        }
        return Ok(());
    }
    if total > MAX_PAYLOAD as u64 {
        return Err(protocol(format!(
            "{kind} payload of {total} bytes is over the limit of {MAX_PAYLOAD} bytes"
        )));
    }
    if size > MAX_FRAME as u64 || size > total {
        return Err(protocol(format!(
            "{kind} frame of {size} bytes does not fit its {total}-byte payload (a frame holds at most {MAX_FRAME} bytes)"
        )));
    }
    if size == 0 && total > 0 {
        return Err(protocol(format!(
            "{kind} message for token {:#x} is an empty frame of a {total}-byte payload",
            m.token
        )));
    }
    Ok(())
}

/// What one receive produced.
#[derive(Debug)]
pub enum Received {
    /// A well-formed message and the fd it carried (SEGMENT, ADOPT).
    Message(Message, Option<OwnedFd>),
    /// A RUN, EVENT or END with its whole payload, its frames joined
    /// ([`Channel::recv_payload`] only). The message's `segment_id` is the
    /// payload's length and its `size` 0.
    Payload(Message, Vec<u8>),
    /// The peer closed its end or died.
    Eof,
}

/// One message to send with [`Channel::send_batch`].
#[derive(Clone, Copy, Debug)]
pub enum Outgoing<'a> {
    /// A SEGMENT or ADOPT with its fd, or a CLOSE or CANCEL without one.
    Message(Message, Option<BorrowedFd<'a>>),
    /// A RUN, EVENT or END of the run `token`, with its payload.
    Payload(MsgType, u64, &'a [u8]),
}

/// One datagram on the wire: a header, the payload bytes of its frame, and
/// the fd it carries.
struct Datagram<'a> {
    header: [u8; HEADER_SIZE],
    body: &'a [u8],
    fd: Option<RawFd>,
}

/// What one datagram was: a message whose frame (if it carries a payload) is
/// the `usize` bytes after the header in the receive buffer, or EOF.
enum Frame {
    Message(Message, Option<OwnedFd>, usize),
    Eof,
}

/// One end of an fd channel: an `AF_UNIX` `SOCK_SEQPACKET` socket. Sends are
/// serialised; one thread receives.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    send_lock: Mutex<()>,
    /// The frame buffer of [`recv_payload`](Channel::recv_payload), kept
    /// between calls; the lock also keeps a payload's frames in one reader.
    recv_buf: Mutex<Vec<u8>>,
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
            recv_buf: Mutex::new(Vec::new()),
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
    /// for CLOSE or CANCEL. The kernel passes a duplicate; the caller keeps
    /// its fd. RUN, EVENT and END go with [`send_payload`](Self::send_payload).
    pub fn send(&self, m: &Message, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        self.send_batch(&[Outgoing::Message(*m, fd)])
    }

    /// Sends a RUN, EVENT or END: `payload` cut into frames of at most
    /// [`MAX_FRAME`] bytes, sent back to back with nothing else of this side
    /// between them.
    pub fn send_payload(&self, kind: MsgType, token: u64, payload: &[u8]) -> Result<(), Error> {
        self.send_batch(&[Outgoing::Payload(kind, token, payload)])
    }

    /// Sends every message of `batch` with one `sendmmsg(2)` (more when the
    /// socket takes them in parts), in order and with no other message of
    /// this side between them. The peer sees the same datagrams as from one
    /// send each, but its reader can take them in one wake-up: a Result and
    /// the END after it travel together.
    pub fn send_batch(&self, batch: &[Outgoing<'_>]) -> Result<(), Error> {
        let mut grams = Vec::new();
        for o in batch {
            datagrams(o, &mut grams)?;
        }
        if grams.is_empty() {
            return Ok(());
        }
        let fd_space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        // u64 storage keeps each control buffer aligned for cmsghdr.
        let mut cbufs = vec![[0u64; 4]; grams.len()];
        debug_assert!(fd_space <= std::mem::size_of::<[u64; 4]>());
        let mut iovs: Vec<[libc::iovec; 2]> = grams
            .iter()
            .map(|g| {
                [
                    libc::iovec {
                        iov_base: g.header.as_ptr() as *mut _,
                        iov_len: HEADER_SIZE,
                    },
                    libc::iovec {
                        iov_base: g.body.as_ptr() as *mut _,
                        iov_len: g.body.len(),
                    },
                ]
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(grams.len());
        for ((g, iov), cbuf) in grams.iter().zip(&mut iovs).zip(&mut cbufs) {
            // SAFETY: msghdr is plain data; every pointer in it (headers,
            // bodies, iovecs, control buffers) outlives the sends below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = if g.body.is_empty() { 1 } else { 2 };
            if let Some(fd) = g.fd {
                msg.msg_control = cbuf.as_mut_ptr().cast();
                msg.msg_controllen = fd_space as _;
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
                }
            }
            hdrs.push(libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            });
        }
        let _g = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent = 0;
        while sent < hdrs.len() {
            // SAFETY: hdrs[sent..] are initialised above; the kernel takes
            // at most that many.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    hdrs[sent..].as_mut_ptr(),
                    (hdrs.len() - sent) as _,
                    libc::MSG_NOSIGNAL as _,
                )
            };
            if n >= 0 {
                sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let (kind, token) = batch[0].what();
            let more = match batch.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            return Err(Error::new(format!(
                "fd channel: send {kind} token {token:#x}{more}: {e}"
            )));
        }
        Ok(())
    }

    /// Receives one message of the base protocol (blocking); RUN, EVENT,
    /// END and CANCEL are unknown types here (see
    /// [`recv_payload`](Self::recv_payload)). Malformed messages are errors,
    /// and every fd that came with them is closed.
    pub fn recv(&self) -> Result<Received, Error> {
        let mut buf = [0u8; HEADER_SIZE];
        Ok(match self.recv_frame(&mut buf, false)? {
            Frame::Eof => Received::Eof,
            Frame::Message(m, fd, _) => Received::Message(m, fd),
        })
    }

    /// [`recv`](Self::recv) for a side that takes runs on the channel: a
    /// RUN, EVENT or END comes whole, its frames joined, as
    /// [`Received::Payload`]. Anything that breaks the framing (see
    /// docs/protocol.md, "Runs on the fd channel") is an error, and every fd
    /// that came with the offending datagram is closed.
    pub fn recv_payload(&self) -> Result<Received, Error> {
        let mut buf = self.recv_buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.is_empty() {
            buf.resize(HEADER_SIZE + MAX_FRAME, 0);
        }
        let (m, fd, n) = match self.recv_frame(&mut buf, true)? {
            Frame::Eof => return Ok(Received::Eof),
            Frame::Message(m, fd, n) => (m, fd, n),
        };
        if !m.kind.carries_payload() {
            return Ok(Received::Message(m, fd));
        }
        // The header checks bound the length by MAX_PAYLOAD.
        let total = m.segment_id as usize;
        let mut payload = Vec::with_capacity(total);
        payload.extend_from_slice(&buf[HEADER_SIZE..HEADER_SIZE + n]);
        while payload.len() < total {
            let incomplete = |payload: &Vec<u8>| {
                format!(
                    "the {total}-byte {} payload for token {:#x} ({} bytes arrived)",
                    m.kind,
                    m.token,
                    payload.len()
                )
            };
            let (next, n) = match self.recv_frame(&mut buf, true)? {
                Frame::Eof => {
                    return Err(protocol(format!(
                        "the channel ended inside {}",
                        incomplete(&payload)
                    )))
                }
                // An fd that came with the datagram closes here.
                Frame::Message(next, _fd, n) => (next, n),
            };
            if next.kind != m.kind || next.token != m.token || next.segment_id != m.segment_id {
                return Err(protocol(format!(
                    "a {} message for token {:#x} came inside {}",
                    next.kind,
                    next.token,
                    incomplete(&payload)
                )));
            }
            let missing = total - payload.len();
            if n > missing {
                return Err(protocol(format!(
                    "{} frame of {n} bytes does not fit its {total}-byte payload: only {missing} bytes are missing",
                    m.kind
                )));
            }
            payload.extend_from_slice(&buf[HEADER_SIZE..HEADER_SIZE + n]);
        }
        Ok(Received::Payload(Message { size: 0, ..m }, payload))
    }

    /// Reads one datagram into `buf` (its header, then at most a frame) and
    /// checks it, in the order the shared vectors pin
    /// (testdata/fdchannel.json, testdata/fdchannel-runs.json).
    fn recv_frame(&self, buf: &mut [u8], runs: bool) -> Result<Frame, Error> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
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
            return Ok(Frame::Eof);
        }
        if flags & libc::MSG_CTRUNC != 0 {
            return Err(protocol(format!(
                "control data truncated (more than {MAX_FDS} fds, or the fd limit is reached)"
            )));
        }
        if flags & libc::MSG_TRUNC != 0 {
            return Err(protocol(format!("message longer than {} bytes", buf.len())));
        }
        if n < HEADER_SIZE {
            return Err(protocol(format!(
                "message is {n} bytes, want {HEADER_SIZE}"
            )));
        }
        let m = decode(&buf[..HEADER_SIZE], runs)?;
        let body = if m.kind.carries_payload() {
            m.size as usize
        } else {
            0
        };
        if n != HEADER_SIZE + body {
            return Err(protocol(format!(
                "{} message is {n} bytes, its header says {}",
                m.kind,
                HEADER_SIZE + body
            )));
        }
        let want = usize::from(m.kind.carries_fd());
        if fds.len() != want {
            return Err(protocol(format!(
                "{} message for token {:#x} carries {} fds, want {want}",
                m.kind,
                m.token,
                fds.len()
            )));
        }
        Ok(Frame::Message(m, fds.pop(), body))
    }
}

impl Outgoing<'_> {
    /// The type and token, for messages about a failed send.
    fn what(&self) -> (MsgType, u64) {
        match *self {
            Outgoing::Message(m, _) => (m.kind, m.token),
            Outgoing::Payload(kind, token, _) => (kind, token),
        }
    }
}

/// Checks `o` as every receiver would and lays it out: one datagram for a
/// message, one frame per [`MAX_FRAME`] bytes (at least one) for a payload.
fn datagrams<'a>(o: &Outgoing<'a>, out: &mut Vec<Datagram<'a>>) -> Result<(), Error> {
    match *o {
        Outgoing::Message(m, fd) => {
            if m.kind.carries_payload() {
                return Err(Error::new(format!(
                    "fd channel: a {} message is sent with its payload (send_payload)",
                    m.kind
                )));
            }
            check_token(&m)?;
            if m.kind.carries_fd() != fd.is_some() {
                return Err(Error::new(format!(
                    "fd channel: {} message for token {:#x} {}",
                    m.kind,
                    m.token,
                    if fd.is_some() {
                        "must not carry an fd"
                    } else {
                        "needs an fd"
                    }
                )));
            }
            out.push(Datagram {
                header: encode_header(&m),
                body: &[],
                fd: fd.map(|fd| fd.as_raw_fd()),
            });
        }
        Outgoing::Payload(kind, token, payload) => {
            if !kind.carries_payload() {
                return Err(Error::new(format!(
                    "fd channel: a {kind} message has no payload"
                )));
            }
            let total = payload.len() as u64;
            let frame = |size: usize| Message {
                kind,
                token,
                segment_id: total,
                size: size as u64,
            };
            check_token(&frame(payload.len().min(MAX_FRAME)))
                .map_err(|e| e.context(format!("not sending {kind} for token {token:#x}")))?;
            let mut chunks = payload.chunks(MAX_FRAME);
            // An empty payload is one frame of no bytes.
            let first = chunks.next().unwrap_or(&[]);
            for body in std::iter::once(first).chain(chunks) {
                out.push(Datagram {
                    header: encode_header(&frame(body.len())),
                    body,
                    fd: None,
                });
            }
        }
    }
    Ok(())
}

"""The data plane (docs/protocol.md): memfd segments, their seals, and the
fd channel, a SOCK_SEQPACKET socket whose 32-byte messages carry one fd each
as SCM_RIGHTS. Where the plugin offers channel runs, the channel also carries
the runs themselves: RUN, EVENT and END messages with a protobuf payload cut
into frames after the header, and CANCEL.

Mapping is explicit: ``Segment.map_ro`` / ``map_rw`` return ``mmap.mmap``
objects the caller closes (which unmaps them); numpy arrays are views over
those mappings, never copies.
"""

from __future__ import annotations

import array
import errno
import fcntl
import mmap
import os
import socket
import stat
import struct
import threading
import time

MAGIC = 0x44464850  # "PHFD" little-endian
VERSION = 1
SEGMENT, ADOPT, CLOSE = 1, 2, 3
RUN, EVENT, END, CANCEL = 4, 5, 6, 7
MSG_SIZE = 32
MAX_FRAME = 32768  # payload bytes in one datagram, after the header
MAX_PAYLOAD = 64 << 20
MAX_FDS = 16
PLUGIN_TOKEN_BASE = 1 << 63
ENV_FD_CHANNEL = "PIPEHOST_FD_CHANNEL"
_HEADER = struct.Struct("<IHHQQQ")
_VIOLATION = "fd channel protocol violation: "
_NAMES = {1: "SEGMENT", 2: "ADOPT", 3: "CLOSE", 4: "RUN", 5: "EVENT", 6: "END", 7: "CANCEL"}
_PAYLOAD_TYPES = (RUN, EVENT, END)

# Linux values; Python's fcntl module lacks some of them.
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_NOEXEC_SEAL = 0x0008


class ShmError(Exception):
    pass


class Message:
    """One message. For RUN, EVENT and END the header's segment_id and size
    fields frame the payload: its total length, and the bytes of this frame.
    ``Channel.recv`` returns them whole: ``payload`` holds all of it (and
    size is the total too); it is None for the other types."""

    __slots__ = ("type", "token", "segment_id", "size", "payload")

    def __init__(self, type_: int, token: int, segment_id: int = 0, size: int = 0, payload: bytes | None = None):
        self.type, self.token, self.segment_id, self.size = type_, token, segment_id, size
        self.payload = payload

    def encode(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.type, self.token, self.segment_id, self.size)

    @staticmethod
    def decode(data: bytes, runs: bool = False) -> "Message":
        """Checks what the header alone can tell, in the order of
        docs/protocol.md: length, magic, version, type, token space. The run
        types are known only with ``runs`` (see ``Channel``)."""
        if len(data) != MSG_SIZE:
            raise ShmError(f"{_VIOLATION}message is {len(data)} bytes, want {MSG_SIZE}")
        magic, version, typ, token, seg, size = _HEADER.unpack(data)
        if magic != MAGIC:
            raise ShmError(f"{_VIOLATION}bad magic {magic:#010x}, want {MAGIC:#010x} (\"PHFD\")")
        if version != VERSION:
            raise ShmError(f"{_VIOLATION}header version {version}, this side speaks {VERSION}")
        if not (SEGMENT <= typ <= CLOSE or runs and RUN <= typ <= CANCEL):
            raise ShmError(f"{_VIOLATION}unknown message type {typ}")
        if typ == ADOPT:
            if token < PLUGIN_TOKEN_BASE:
                raise ShmError(f"{_VIOLATION}ADOPT token {token:#x} is not a plugin token (top bit set)")
        elif typ != CLOSE and not 1 <= token < PLUGIN_TOKEN_BASE:
            raise ShmError(f"{_VIOLATION}{_NAMES[typ]} token {token:#x} is not a host token (1 ≤ token < 2^63)")
        return Message(typ, token, seg, size)


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """One end of the fd channel. ``send`` calls are serialised, and the
    frames of one payload go out back to back.

    ``runs``: the channel carries runs (RUN, EVENT, END, CANCEL), as it does
    once the plugin has offered ``channel_runs``; without it those are
    unknown types, as on a channel where they were never negotiated. The
    attribute may be set later: it is read for each message received."""

    def __init__(self, sock: socket.socket, runs: bool = False):
        self.sock = sock
        self.runs = runs
        self._send_lock = threading.Lock()

    @classmethod
    def from_env(cls) -> "Channel":
        v = os.environ.get(ENV_FD_CHANNEL)
        if not v:
            raise ShmError(f"{ENV_FD_CHANNEL} is not set: this program must be started by pipehost")
        try:
            fd = int(v)
        except ValueError:
            raise ShmError(f"{ENV_FD_CHANNEL}={v!r} is not a file descriptor number") from None
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise ShmError(f"{ENV_FD_CHANNEL}={fd}: {e.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise ShmError(f"{ENV_FD_CHANNEL}={fd} is not a socket")
        sock = socket.socket(fileno=fd)
        typ = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        if typ != socket.SOCK_SEQPACKET:
            sock.detach()
            raise ShmError(f"{ENV_FD_CHANNEL}={fd} is not a SOCK_SEQPACKET socket (SO_TYPE {typ})")
        os.set_inheritable(fd, False)  # our own children must not hold it
        return cls(sock)

    def send(self, msg: Message, fd: int | None = None) -> None:
        anc = []
        if fd is not None:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        with self._send_lock:
            self.sock.sendmsg([msg.encode()], anc)

    def send_payload(self, type_: int, token: int, payload: bytes) -> None:
        """Sends a RUN, EVENT or END message: the payload in frames of at most
        MAX_FRAME bytes, each after a header with the payload's total length
        (@16) and its own (@24), under one hold of the send lock."""
        if type_ not in _PAYLOAD_TYPES:
            raise ValueError(f"message type {type_} carries no payload")
        mv = memoryview(payload).cast("B")
        total = mv.nbytes
        if total > MAX_PAYLOAD:
            raise ShmError(f"fd channel: a {_NAMES[type_]} payload of {total} bytes is over the limit of "
                           f"{MAX_PAYLOAD} bytes")
        with self._send_lock:
            off = 0
            while True:
                frame = mv[off:off + MAX_FRAME]
                self.sock.sendmsg([_HEADER.pack(MAGIC, VERSION, type_, token, total, frame.nbytes), frame])
                off += frame.nbytes
                if off >= total:
                    return

    def _recv1(self):
        """One datagram: (data, fds, flags, odd control message or None)."""
        data, anc, flags, _ = self.sock.recvmsg(
            MSG_SIZE + MAX_FRAME, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
        fds = []
        odd = None
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
            else:
                odd = (level, typ)
        return data, fds, flags, odd

    def recv(self):
        """One message and its fds; (None, []) at EOF. A RUN, EVENT or END
        comes whole, its frames reassembled into ``payload``. Raises ShmError
        on a malformed message after closing every fd that came with it."""
        data, fds, flags, odd = self._recv1()
        if not data and not fds and odd is None:
            return None, []
        try:
            msg = self._check(data, fds, flags, odd, None)
        except ShmError:
            _close_all(fds)
            raise
        if msg.type not in _PAYLOAD_TYPES or msg.size == msg.segment_id:
            return msg, fds
        parts = [msg.payload]
        got = msg.size
        while got < msg.segment_id:
            data, fds, flags, odd = self._recv1()
            if not data and not fds and odd is None:
                raise ShmError(f"{_VIOLATION}the channel ended inside the {msg.segment_id}-byte "
                               f"{_NAMES[msg.type]} payload for token {msg.token:#x} ({got} bytes arrived)")
            try:
                part = self._check(data, fds, flags, odd, (msg, got))
            except ShmError:
                _close_all(fds)
                raise
            parts.append(part.payload)
            got += part.size
        msg.size = got
        msg.payload = b"".join(parts)
        return msg, []

    def _check(self, data, fds, flags, odd, pending) -> Message:
        """Decodes one datagram: the checks in the order of docs/protocol.md,
        as every SDK makes them, then those of a payload's framing. pending:
        (first frame, bytes so far) of a payload still incomplete, or None."""
        if odd is not None:
            raise ShmError(f"{_VIOLATION}unexpected control message level {odd[0]} type {odd[1]}")
        if flags & socket.MSG_CTRUNC:
            raise ShmError(f"{_VIOLATION}control data truncated "
                           f"(more than {MAX_FDS} fds, or the fd limit is reached)")
        n = len(data)
        longest = MSG_SIZE + MAX_FRAME if self.runs else MSG_SIZE
        if flags & socket.MSG_TRUNC or n > longest:
            raise ShmError(f"{_VIOLATION}message longer than {longest} bytes")
        msg = Message.decode(data[:MSG_SIZE], self.runs)
        name = _NAMES[msg.type]
        if pending is not None:
            first, got = pending
            if (msg.type, msg.token, msg.segment_id) != (first.type, first.token, first.segment_id):
                what = (f"{name} frame for token {msg.token:#x} of a {msg.segment_id}-byte payload"
                        if msg.type in _PAYLOAD_TYPES else f"{name} message")
                raise ShmError(f"{_VIOLATION}{what} while the {first.segment_id}-byte {_NAMES[first.type]} "
                               f"payload for token {first.token:#x} is incomplete ({got} bytes arrived)")
        if msg.type in _PAYLOAD_TYPES:
            total, size = msg.segment_id, msg.size
            missing = total - (pending[1] if pending else 0)
            if size > MAX_FRAME:
                raise ShmError(f"{_VIOLATION}{name} frame for token {msg.token:#x} says it carries {size} bytes, "
                               f"more than a frame's {MAX_FRAME}")
            if total > MAX_PAYLOAD:
                raise ShmError(f"{_VIOLATION}{name} payload for token {msg.token:#x} is {total} bytes, "
                               f"more than the limit of {MAX_PAYLOAD}")
            if n != MSG_SIZE + size:
                raise ShmError(f"{_VIOLATION}{name} frame for token {msg.token:#x} is {n} bytes, want "
                               f"{MSG_SIZE} + its size {size}")
            if size > missing:
                raise ShmError(f"{_VIOLATION}{name} frame for token {msg.token:#x} carries {size} bytes, "
                               f"but only {missing} of its {total}-byte payload are missing")
            if size == 0 and total > 0:
                raise ShmError(f"{_VIOLATION}{name} frame for token {msg.token:#x} is empty, but its "
                               f"{total}-byte payload is not")
            msg.payload = data[MSG_SIZE:]
        elif n != MSG_SIZE:
            raise ShmError(f"{_VIOLATION}{name} message is {n} bytes, want {MSG_SIZE}")
        elif msg.type == CANCEL and (msg.segment_id or msg.size):
            raise ShmError(f"{_VIOLATION}CANCEL message for token {msg.token:#x} has total {msg.segment_id} "
                           f"and size {msg.size}, want 0 and 0")
        want = 1 if msg.type in (SEGMENT, ADOPT) else 0
        if len(fds) != want:
            raise ShmError(f"{_VIOLATION}{name} message for token {msg.token:#x} "
                           f"carries {len(fds)} fds, want {want}")
        return msg


class Mailbox:
    """Reads the fd channel on a background thread and files each fd under
    its token until a run takes it. ``on_end(kind, why)`` is called when the
    channel ends: kind "closed" (CLOSE), "gone" (EOF) or "broken"."""

    def __init__(self, channel: Channel, on_end):
        self.channel = channel
        self._fds = {}
        self._cond = threading.Condition()
        self._on_end = on_end
        self._on_run = self._on_cancel = None
        self._next = PLUGIN_TOKEN_BASE
        self._token_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="pipehost-fd-channel", daemon=True)
        self._thread.start()

    def _loop(self):
        while True:
            try:
                msg, fds = self.channel.recv()
            except ShmError as e:
                self._on_end("broken", str(e))
                return
            except OSError as e:
                self._on_end("broken", str(e))
                return
            if msg is None:
                self._on_end("gone", "EOF")
                return
            if msg.type == CLOSE:
                self._on_end("closed", "")
                return
            if msg.type in (RUN, CANCEL) and self._on_run is not None:
                try:
                    if msg.type == RUN:
                        self._on_run(msg.token, msg.payload)
                    else:
                        self._on_cancel(msg.token)
                except ShmError as e:
                    self._on_end("broken", str(e))
                    return
                continue
            if msg.type != SEGMENT:
                _close_all(fds)
                self._on_end("broken", f"fd channel: unexpected message type {msg.type} from the host")
                return
            with self._cond:
                if msg.token in self._fds:
                    _close_all(fds)
                    self._on_end("broken", f"fd channel: token {msg.token} arrived twice")
                    return
                self._fds[msg.token] = (msg, fds[0])
                self._cond.notify_all()

    def accept_runs(self, on_run, on_cancel):
        """Takes runs on the channel from now on (call it before the plugin
        says ``channel_runs``): each whole RUN goes to ``on_run(token,
        payload)``, each CANCEL to ``on_cancel(token)``. Both are called on
        the reader thread, so they must hand the work on and return; a
        ShmError from either breaks the channel."""
        self._on_run, self._on_cancel = on_run, on_cancel
        self.channel.runs = True

    def take(self, token: int, timeout: float):
        """Waits up to ``timeout`` s for the fd filed under ``token``: (msg, fd)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while token not in self._fds:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ShmError(f"fd token {token} did not arrive on the fd channel within {timeout:g} s")
                self._cond.wait(left)
            return self._fds.pop(token)

    def discard(self, tokens):
        """Closes the fds of tokens a run will not use (waiting for none)."""
        with self._cond:
            for t in tokens:
                got = self._fds.pop(t, None)
                if got:
                    _close_all([got[1]])

    def new_token(self) -> int:
        with self._token_lock:
            self._next += 1
            return self._next


def create_memfd(name: str, size: int) -> int:
    """A new segment: memfd with sealing allowed, sized and size-sealed at once."""
    name = name[:200]
    try:
        fd = os.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)
    except OSError as e:
        if e.errno != errno.EINVAL:  # kernels before 6.3 lack MFD_NOEXEC_SEAL
            raise
        fd = os.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)
    except BaseException:
        os.close(fd)
        raise
    return fd


# MADV_POPULATE_WRITE (Linux 5.14), which the mmap module may not name.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)

# The smallest output map_rw populates: a smaller one takes few page faults.
POPULATE_MIN = 1 << 20


def populate(fd: int, m, size: int) -> None:
    """Makes every page of the writable mapping m of segment fd present now:
    fallocate for the pages the segment lacks (skipped when fstat shows it
    has them all, as after the host prefaulted it), then
    madvise(MADV_POPULATE_WRITE), instead of a page fault per 4 KiB page as
    the stage first writes each (the Go SDK's shm.Mapping.Populate). Best
    effort: an older kernel, or memory too short to allocate everything at
    once, leaves the pages to the faults."""
    try:
        if os.fstat(fd).st_blocks * 512 < size:
            os.posix_fallocate(fd, 0, size)
    except OSError:
        pass
    try:
        m.madvise(_MADV_POPULATE_WRITE)
    except (OSError, ValueError):
        pass


def seals(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, F_GET_SEALS)
    except OSError as e:
        raise ShmError(f"fd {fd} is not a memfd that allows sealing ({e.strerror})") from None


class Segment:
    """A received segment fd: checked to be a size-sealed memfd; owns the fd."""

    def __init__(self, fd: int):
        self.fd = fd
        try:
            s = seals(fd)
            if s & (F_SEAL_SHRINK | F_SEAL_GROW) != F_SEAL_SHRINK | F_SEAL_GROW:
                raise ShmError(f"segment is not size-sealed (seals {s:#x}): a mapping could fault")
            self.seals = s
            self.size = os.fstat(fd).st_size
        except BaseException:
            self.close()
            raise

    @property
    def write_sealed(self) -> bool:
        return bool(self.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))

    def map_ro(self):
        """A PROT_READ MAP_SHARED mapping of the whole write-sealed segment
        (None for an empty one)."""
        self.seals = seals(self.fd)
        if not self.write_sealed:
            raise ShmError(f"input segment is not write-sealed (seals {self.seals:#x})")
        if self.size == 0:
            return None
        return mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)

    def map_rw(self):
        """A read-write MAP_SHARED mapping of the whole segment (None if empty).
        An output of POPULATE_MIN bytes or more has its pages made present
        here (populate)."""
        if self.size == 0:
            return None
        m = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if self.size >= 2 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                m.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        if self.size >= POPULATE_MIN:
            populate(self.fd, m, self.size)
        return m

    def close(self):
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

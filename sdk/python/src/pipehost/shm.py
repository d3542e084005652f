"""The data plane (docs/protocol.md): memfd segments, their seals, and the
fd channel, a SOCK_SEQPACKET socket whose 32-byte messages carry one fd each
as SCM_RIGHTS.

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
MSG_SIZE = 32
MAX_FDS = 16
PLUGIN_TOKEN_BASE = 1 << 63
ENV_FD_CHANNEL = "PIPEHOST_FD_CHANNEL"
_HEADER = struct.Struct("<IHHQQQ")
_VIOLATION = "fd channel protocol violation: "
_NAMES = {1: "SEGMENT", 2: "ADOPT", 3: "CLOSE"}

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
    __slots__ = ("type", "token", "segment_id", "size")

    def __init__(self, type_: int, token: int, segment_id: int = 0, size: int = 0):
        self.type, self.token, self.segment_id, self.size = type_, token, segment_id, size

    def encode(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.type, self.token, self.segment_id, self.size)

    @staticmethod
    def decode(data: bytes) -> "Message":
        """Checks what the header alone can tell, in the order of
        docs/protocol.md: length, magic, version, type, token space."""
        if len(data) != MSG_SIZE:
            raise ShmError(f"{_VIOLATION}message is {len(data)} bytes, want {MSG_SIZE}")
        magic, version, typ, token, seg, size = _HEADER.unpack(data)
        if magic != MAGIC:
            raise ShmError(f"{_VIOLATION}bad magic {magic:#010x}, want {MAGIC:#010x} (\"PHFD\")")
        if version != VERSION:
            raise ShmError(f"{_VIOLATION}header version {version}, this side speaks {VERSION}")
        if typ not in (SEGMENT, ADOPT, CLOSE):
            raise ShmError(f"{_VIOLATION}unknown message type {typ}")
        if typ == SEGMENT and not 1 <= token < PLUGIN_TOKEN_BASE:
            raise ShmError(f"{_VIOLATION}SEGMENT token {token:#x} is not a host token (1 ≤ token < 2^63)")
        if typ == ADOPT and token < PLUGIN_TOKEN_BASE:
            raise ShmError(f"{_VIOLATION}ADOPT token {token:#x} is not a plugin token (top bit set)")
        return Message(typ, token, seg, size)


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """One end of the fd channel. ``send`` calls are serialised."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
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

    def recv(self):
        """One message and its fds; (None, []) at EOF. Raises ShmError on a
        malformed message after closing every fd that came with it."""
        data, anc, flags, _ = self.sock.recvmsg(
            MSG_SIZE + 1, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
        fds = []
        odd = None
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
            else:
                odd = (level, typ)
        if not data and not fds and odd is None:
            return None, []
        try:
            if odd is not None:
                raise ShmError(f"{_VIOLATION}unexpected control message level {odd[0]} type {odd[1]}")
            # The checks in the order of docs/protocol.md, as every SDK makes them.
            if flags & socket.MSG_CTRUNC:
                raise ShmError(f"{_VIOLATION}control data truncated "
                               f"(more than {MAX_FDS} fds, or the fd limit is reached)")
            if flags & socket.MSG_TRUNC or len(data) > MSG_SIZE:
                raise ShmError(f"{_VIOLATION}message longer than {MSG_SIZE} bytes")
            msg = Message.decode(data)
            want = 0 if msg.type == CLOSE else 1
            if len(fds) != want:
                raise ShmError(f"{_VIOLATION}{_NAMES[msg.type]} message for token {msg.token:#x} "
                               f"carries {len(fds)} fds, want {want}")
        except ShmError:
            _close_all(fds)
            raise
        return msg, fds


class Mailbox:
    """Reads the fd channel on a background thread and files each fd under
    its token until a run takes it. ``on_end(kind, why)`` is called when the
    channel ends: kind "closed" (CLOSE), "gone" (EOF) or "broken"."""

    def __init__(self, channel: Channel, on_end):
        self.channel = channel
        self._fds = {}
        self._cond = threading.Condition()
        self._on_end = on_end
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
        """A read-write MAP_SHARED mapping of the whole segment (None if empty)."""
        if self.size == 0:
            return None
        m = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if self.size >= 2 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                m.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        return m

    def close(self):
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

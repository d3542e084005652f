"""Trace markers: stage and subtask begin/end written to the kernel's tracefs
``trace_marker`` in the systrace text format Perfetto and trace-cmd read
(docs/protocol.md, "Trace markers"). The host names the file in the Run
request; nothing is opened or written unless it does."""

from __future__ import annotations

import os
import threading

from . import log

#: The kernel cuts a marker at 4 KiB; names are cut well below, in bytes.
MAX_NAME = 512

# '|' and line breaks would split the marker's fields or lines.
_CLEAN = bytes.maketrans(b"|\n\r", b"___")


def clean_name(name) -> bytes:
    """``name`` as UTF-8, cut at 512 bytes (as the Go, C++ and Rust SDKs
    cut: a multi-byte character may be split), ``|``, ``\\n`` and ``\\r``
    replaced by ``_``."""
    return str(name).encode("utf-8", "replace")[:MAX_NAME].translate(_CLEAN)


class Marker:
    """The process's trace_marker file, opened at most once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._opened = False
        self.fd = -1
        self._pid = b""

    def open(self, path: str) -> bool:
        """Opens ``path`` once per process (later calls return the first
        call's result, whatever path they name) and reports whether markers
        can be written. A failure is reported once on stderr."""
        with self._lock:
            if not self._opened:
                self._opened = True
                try:
                    self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                    self._pid = str(os.getpid()).encode()
                except OSError as e:
                    log.warn(f"trace markers: open {path}: {e.strerror or e}; no trace markers from this plugin")
            return self.fd >= 0

    def _emit(self, marker: bytes) -> None:
        if self.fd < 0:
            return
        # One write(2) is one trace event, never interleaved with another
        # thread's. A full or stopped trace is not the stage's problem.
        try:
            os.write(self.fd, marker)
        except OSError:
            pass

    def begin(self, name) -> None:
        """Begins a slice on the calling thread; :meth:`end`, on the same
        thread, ends it."""
        self._emit(b"B|" + self._pid + b"|" + clean_name(name))

    def end(self) -> None:
        self._emit(b"E|" + self._pid)


#: This process's marker file (looked up at each use, so a test can swap in
#: a fresh one).
MARKER = Marker()


"""Process-level log lines on stderr as hclog JSON, which the host parses
(docs/protocol.md). Inside a run prefer ``ctx.info(...)``: those lines are
attributed to the stage in the run log."""

from __future__ import annotations

import json
import sys
import time


def _line(level: str, msg: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    rec = {"@level": level, "@message": str(msg), "@timestamp": stamp}
    try:
        sys.stderr.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def debug(msg: str) -> None:
    _line("debug", msg)


def info(msg: str) -> None:
    _line("info", msg)


def warn(msg: str) -> None:
    _line("warn", msg)


def error(msg: str) -> None:
    _line("error", msg)

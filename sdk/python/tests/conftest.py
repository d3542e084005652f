import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "sdk", "python", "src"))


def load(rel):
    with open(os.path.join(ROOT, "testdata", rel)) as f:
        return json.load(f)


def hx(s):
    return int(s, 16)


def open_count(name):
    """How many fds of this process are the memfd called name."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{name} "):
                n += 1
        except OSError:
            pass
    return n

"""Plugin start-up: asyncio and grpc's asyncio API are not loaded unless used."""

import os
import subprocess
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def test_asyncio_and_grpc_aio_load_only_when_used():
    code = """
import sys
import pipehost
assert "grpc" in sys.modules and "grpc.aio._server" not in sys.modules, sorted(m for m in sys.modules if "aio" in m)
assert "asyncio.base_events" not in sys.modules
import asyncio
assert asyncio.run(asyncio.sleep(0, result=5)) == 5 and "asyncio.base_events" in sys.modules
import grpc
from grpc import aio
assert aio is grpc.aio is sys.modules["grpc.aio"]
server = aio.server            # first use: the real module runs, into the same object
assert "grpc.aio._server" in sys.modules and callable(server)
from grpc.aio import insecure_channel
import grpc.aio._channel
assert insecure_channel is grpc.aio.insecure_channel and grpc.aio.__name__ == "grpc.aio"
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    env.pop("PIPEHOST_PLUGIN_COOKIE", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr

"""Plugin start-up: asyncio and grpc's asyncio API are not loaded unless
used, and under the host numpy loads only once the plugin has described
itself (pipehost._lazy)."""

import os
import subprocess
import sys
import textwrap

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


def _run(code, cookie, extra_path=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*extra_path, os.path.abspath(SRC)]))
    env.pop("PIPEHOST_PLUGIN_COOKIE", None)
    if cookie:
        env["PIPEHOST_PLUGIN_COOKIE"] = "8f3c1e2a-pipehost-stage-plugin-v1"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                       timeout=120)
    # Under the host's cookie, `import pipehost` points stdout at stderr.
    lines = (r.stdout + r.stderr).strip().splitlines()
    return r.returncode, lines[-1] if lines else "", r.stdout + r.stderr


def test_numpy_is_deferred_under_the_host_and_whole_at_first_use():
    code = """
    import sys, threading
    import pipehost
    import numpy as np                      # the placeholder: nothing of numpy has run
    assert not any(m.startswith("numpy.") for m in sys.modules), sorted(m for m in sys.modules if "numpy" in m)
    from pipehost import handle
    assert handle.dtype_size(handle.DTYPE_BY_NAME["f32"]) == 4  # describing needs no numpy
    assert "numpy._core" not in sys.modules
    # Two threads at once: both wait for the one load, neither sees a half-made numpy.
    out = []
    ts = [threading.Thread(target=lambda: out.append(np.arange(4, dtype=np.float32).sum())) for _ in range(2)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert out == [6.0, 6.0], out
    from pipehost._lazy import ensure_loaded
    ensure_loaded("numpy")                  # loaded: returns at once
    import numpy.linalg                     # submodules, from-imports, numpy's own lazy attributes
    from numpy import float64
    assert sys.modules["numpy"] is np and np.linalg is numpy.linalg and float64 is np.float64
    assert np.random.default_rng(1).integers(10) >= 0 and handle.numpy_dtype(handle.DTYPE_BY_NAME["u16"]) == np.dtype("<u2")
    print("ok")
    """
    rc, last, out = _run(code, cookie=True)
    assert rc == 0 and last == "ok", out


def test_numpy_is_imported_as_usual_outside_the_host():
    rc, last, out = _run("import sys, pipehost; assert 'numpy._core' in sys.modules; print('ok')", cookie=False)
    assert rc == 0 and last == "ok", out


def test_a_numpy_that_fails_to_import_fails_every_use(tmp_path):
    broken = tmp_path / "numpy"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('this numpy is broken')\n")
    code = """
    import sys
    import pipehost
    import numpy as np
    from pipehost._lazy import ensure_loaded
    for attempt in range(2):
        try:
            ensure_loaded("numpy")
        except BaseException as e:
            assert "this numpy is broken" in str(e), repr(e)
        else:
            raise AssertionError("ensure_loaded succeeded")
    try:
        np.zeros
    except ImportError as e:
        assert "this numpy is broken" in str(e), repr(e)
    assert "numpy" not in sys.modules       # as after a failed import: not left half-made
    print("ok")
    """
    rc, last, out = _run(code, cookie=True, extra_path=[str(tmp_path)])
    assert rc == 0 and last == "ok", out

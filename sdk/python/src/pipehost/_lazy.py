"""Start-up: what a plugin's handshake does not need is not imported.

``import grpc`` ends with ``from grpc import aio``, which loads grpc's
asyncio API (half a dozen modules, a tenth of grpc's import time) that a
plugin never uses. Before grpc is imported, ``grpc.aio`` is registered as a
placeholder module carrying the real module's spec and path; the first
attribute anyone asks of it runs the real ``grpc/aio/__init__.py`` in the
placeholder's own namespace, so code that uses ``grpc.aio`` still gets the
real module (the same object, now filled in).

(importlib's LazyLoader does not do here: the import system reads
``__spec__`` of a module it finds in ``sys.modules``, which makes a lazy
module load at once.)
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types


def defer_grpc_aio() -> None:
    if "grpc" in sys.modules or "grpc.aio" in sys.modules:
        return  # grpc came first: nothing left to save
    try:
        grpc_spec = importlib.util.find_spec("grpc")  # finds, does not import
        if grpc_spec is None or not grpc_spec.submodule_search_locations:
            return
        spec = importlib.machinery.PathFinder.find_spec("grpc.aio", list(grpc_spec.submodule_search_locations))
    except (ImportError, ValueError):
        return
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return
    mod = types.ModuleType("grpc.aio")
    mod.__spec__, mod.__loader__, mod.__file__ = spec, spec.loader, spec.origin
    mod.__package__ = "grpc.aio"
    if spec.submodule_search_locations is not None:
        mod.__path__ = list(spec.submodule_search_locations)
    lock = threading.RLock()

    def __getattr__(name):
        with lock:
            if mod.__dict__.get("__getattr__") is __getattr__:
                del mod.__dict__["__getattr__"]  # from here on, plain attribute lookups
                spec.loader.exec_module(mod)
        try:
            return mod.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'grpc.aio' has no attribute {name!r}") from None

    mod.__getattr__ = __getattr__
    sys.modules["grpc.aio"] = mod

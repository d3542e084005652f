"""Start-up: what a plugin's handshake does not need is not imported.

``import grpc`` ends with ``from grpc import aio``, grpc's asyncio API, and
grpc's compiled core imports ``asyncio``; a plugin (a synchronous gRPC
server) uses neither, and the two are about a third of the SDK's import
time. Before grpc is imported, both are registered as placeholder modules
carrying the real module's spec and path; the first attribute anyone asks
of one runs the real module's code in the placeholder's own namespace, so
code that does use ``asyncio`` or ``grpc.aio`` still gets the real module
(the same object, now filled in).

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


def _placeholder(name: str, spec) -> None:
    mod = types.ModuleType(name)
    mod.__spec__, mod.__loader__, mod.__file__ = spec, spec.loader, spec.origin
    mod.__package__ = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
    if spec.submodule_search_locations is not None:
        mod.__path__ = list(spec.submodule_search_locations)
    lock = threading.RLock()

    def __getattr__(attr):
        with lock:
            if mod.__dict__.get("__getattr__") is __getattr__:
                del mod.__dict__["__getattr__"]  # from here on, plain attribute lookups
                spec.loader.exec_module(mod)
        try:
            return mod.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    mod.__getattr__ = __getattr__
    sys.modules[name] = mod


def _usable(spec) -> bool:
    return spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module")


def defer_asyncio_and_grpc_aio() -> None:
    if "grpc" in sys.modules:
        return  # grpc came first: nothing left to save
    try:
        grpc_spec = importlib.util.find_spec("grpc")  # finds, does not import
        if grpc_spec is None or not grpc_spec.submodule_search_locations:
            return
        aio = importlib.machinery.PathFinder.find_spec("grpc.aio", list(grpc_spec.submodule_search_locations))
        aio_ok = "grpc.aio" not in sys.modules and _usable(aio)
        asyncio = None if "asyncio" in sys.modules else importlib.util.find_spec("asyncio")
    except (ImportError, ValueError):
        return
    if not aio_ok:
        return  # grpc.aio would touch asyncio at once: deferring asyncio alone saves nothing
    _placeholder("grpc.aio", aio)
    if _usable(asyncio):
        _placeholder("asyncio", asyncio)

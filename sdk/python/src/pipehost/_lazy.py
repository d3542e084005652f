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


# Loaders of modules deferred by defer_numpy, by name: ensure_loaded runs one.
_pending: dict = {}


def defer_numpy() -> None:
    """Registers ``numpy`` as a placeholder, so that a plugin's handshake and
    Describe (which never touch an array) do not wait for numpy's import,
    the largest part of a Python plugin's start-up.

    Unlike the placeholders above, this one has no ``__path__``:
    importing a numpy submodule asks for it, which loads numpy first, so
    numpy's own ``__init__`` always runs before any part of it. The load
    holds a lock from start to end: ``ensure_loaded("numpy")`` returns only
    once numpy is whole, which the SDK calls before any stage runs."""
    if "numpy" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("numpy")
    except (ImportError, ValueError):
        return
    if not _usable(spec) or spec.submodule_search_locations is None:
        return
    mod = types.ModuleType("numpy")
    mod.__spec__, mod.__loader__, mod.__file__ = spec, spec.loader, spec.origin
    mod.__package__ = "numpy"
    if spec.cached:
        mod.__cached__ = spec.cached
    lock = threading.RLock()
    state = {"begun": False, "error": None}

    def load():
        with lock:
            if state["error"] is not None:
                raise ImportError(f"numpy could not be imported: {state['error']}") from state["error"]
            if state["begun"]:
                return  # loaded, or being loaded by this very thread (numpy's own imports)
            state["begun"] = True
            mod.__path__ = list(spec.submodule_search_locations)
            try:
                spec.loader.exec_module(mod)
            except BaseException as e:
                # As a failed import would: numpy is not left half-made in
                # sys.modules; every later use of this placeholder raises.
                state["error"] = e
                if sys.modules.get("numpy") is mod:
                    del sys.modules["numpy"]
                raise
            _pending.pop("numpy", None)
            if mod.__dict__.get("__getattr__") is __getattr__:
                del mod.__dict__["__getattr__"]

    def __getattr__(attr):
        load()
        try:
            return mod.__dict__[attr]
        except KeyError:
            pass
        own = mod.__dict__.get("__getattr__")
        if own is not None and own is not __getattr__:
            return own(attr)  # numpy's module __getattr__ (lazy submodules, deprecations)
        raise AttributeError(f"module 'numpy' has no attribute {attr!r}")

    mod.__getattr__ = __getattr__
    _pending["numpy"] = load
    sys.modules["numpy"] = mod


def ensure_loaded(name: str) -> None:
    """Loads a module deferred by defer_numpy, if it is not yet; returns when
    it is whole (waiting for a load another thread has begun)."""
    load = _pending.get(name)
    if load is not None:
        load()

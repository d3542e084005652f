"""Start-up: what a plugin's handshake does not need is not imported.

``import grpc`` ends with ``from grpc import aio``, which loads grpc's
asyncio API (a dozen modules on top of asyncio itself) that a plugin never
uses. Before grpc is imported, ``grpc.aio`` is registered as a lazy module:
found on disk but executed only when one of its attributes is first used,
so code that does use it still gets the real module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys


def defer_grpc_aio() -> None:
    if "grpc" in sys.modules or "grpc.aio" in sys.modules:
        return  # grpc came first: nothing left to save
    try:
        grpc_spec = importlib.util.find_spec("grpc")
        if grpc_spec is None or not grpc_spec.submodule_search_locations:
            return
        spec = importlib.machinery.PathFinder.find_spec("grpc.aio", list(grpc_spec.submodule_search_locations))
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules["grpc.aio"] = module
        spec.loader.exec_module(module)  # lazy: runs on first attribute access
    except (ImportError, ValueError, AttributeError):
        sys.modules.pop("grpc.aio", None)  # grpc imports its own, eagerly

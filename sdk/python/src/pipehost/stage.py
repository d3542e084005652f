"""Declaring stages: ports, params and the ``@stage`` decorator."""

from __future__ import annotations

import inspect
import keyword
import math
import re

from ._proto.pipehost.v1 import stage_pb2 as pb
from .handle import DTYPE_BY_NAME

_REQUIRED = object()
_KIND_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")


class StageError(Exception):
    """Fails the stage with this message (the host adds the stage name)."""


class ParamError(StageError):
    """A bad parameter value: the message names the parameter."""

    def __init__(self, name: str, why: str):
        super().__init__(f'param "{name}": {why}')
        self.param = name


class Cancelled(StageError):
    """The host cancelled the run (timeout, Ctrl-C, another stage failed)."""

    def __init__(self, msg: str = "stage cancelled"):
        super().__init__(msg)


def arg_name(name: str) -> str:
    """The keyword argument a port or param is passed as: its name, with a
    trailing underscore when that is a Python keyword ("in" → "in_") and
    other characters than letters, digits and _ replaced by _."""
    a = re.sub(r"\W", "_", name)
    if keyword.iskeyword(a) or not a.isidentifier():
        a += "_"
    return a


class Port:
    """A declared input or output: a grid (dtype, pyramid level), an Arrow
    table or a blob. Make them with :func:`grid`, :func:`table`, :func:`blob`."""

    __slots__ = ("name", "kind", "dtype", "level", "optional", "doc")

    def __init__(self, name, kind, dtype=None, level=0, optional=False, doc=""):
        if not name or not isinstance(name, str):
            raise ValueError("pipehost: a port needs a non-empty name")
        self.name, self.kind, self.dtype = name, kind, dtype
        self.level, self.optional, self.doc = int(level), bool(optional), doc

    def to_proto(self):
        return pb.Port(name=self.name, kind=self.kind, dtype=DTYPE_BY_NAME.get(self.dtype, 0),
                       level=self.level, optional=self.optional, doc=self.doc)

    def __repr__(self):
        k = {pb.PORT_KIND_GRID: "grid", pb.PORT_KIND_TABLE: "table", pb.PORT_KIND_BLOB: "blob"}[self.kind]
        return f"{k}({self.name!r}{', ' + repr(self.dtype) if self.dtype else ''})"


def grid(name: str, dtype: str, level: int = 0, optional: bool = False, doc: str = "") -> Port:
    """A grid port: ``dtype`` is one of f32 f64 i8 i16 i32 i64 u8 u16 u32 u64;
    ``level`` the pyramid level (0 = native resolution)."""
    if dtype not in DTYPE_BY_NAME:
        raise ValueError(f"pipehost: grid port {name!r}: unknown dtype {dtype!r} (want one of {', '.join(DTYPE_BY_NAME)})")
    if level < 0:
        raise ValueError(f"pipehost: grid port {name!r}: level {level} is negative")
    return Port(name, pb.PORT_KIND_GRID, dtype, level, optional, doc)


def table(name: str, optional: bool = False, doc: str = "") -> Port:
    """An Arrow table port (Arrow IPC file format; read and written with pyarrow)."""
    return Port(name, pb.PORT_KIND_TABLE, None, 0, optional, doc)


def blob(name: str, optional: bool = False, doc: str = "") -> Port:
    """A port of opaque bytes."""
    return Port(name, pb.PORT_KIND_BLOB, None, 0, optional, doc)


_PTYPES = {bool: pb.PARAM_TYPE_BOOL, int: pb.PARAM_TYPE_INT, float: pb.PARAM_TYPE_FLOAT, str: pb.PARAM_TYPE_STRING}
_PNAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _describe(v) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"integer {v}"
    if isinstance(v, float):
        return f"float {v!r}"
    return f"string {v!r}"


def convert(type_, v):
    """The value ``v`` (bool, int, float or str, as decoded from the wire)
    as a parameter of ``type_``: an integer is accepted for a float, nothing
    else crosses types. Raises ValueError saying what was expected."""
    if type_ is float:
        if isinstance(v, float):
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return float(v)
    elif type_ is int:
        if isinstance(v, int) and not isinstance(v, bool):
            if not -(1 << 63) <= v < (1 << 63):
                raise ValueError(f"{v} does not fit in a 64-bit integer")
            return v
    elif type_ is bool:
        if isinstance(v, bool):
            return v
    elif type_ is str:
        if isinstance(v, str):
            return v
    raise ValueError(f"expected {_PNAMES[type_]}, got {_describe(v)}")


def value_from_proto(v):
    """A ``pb.Value`` as a Python value, or None when unset."""
    which = v.WhichOneof("kind")
    return None if which is None else getattr(v, which)


def value_to_proto(type_, v):
    if type_ is bool:
        return pb.Value(bool_value=v)
    if type_ is int:
        return pb.Value(int_value=v)
    if type_ is float:
        return pb.Value(float_value=v)
    return pb.Value(string_value=v)


class Param:
    """A declared parameter; without a default it is required."""

    __slots__ = ("name", "type", "default", "doc")

    def __init__(self, name, type_, default=_REQUIRED, doc=""):
        if not name or not isinstance(name, str):
            raise ValueError("pipehost: a param needs a non-empty name")
        if type_ not in _PTYPES:
            raise ValueError(f"pipehost: param {name!r}: type {type_!r} is not bool, int, float or str")
        if default is not _REQUIRED:
            try:
                default = convert(type_, default)
            except ValueError as e:
                raise ValueError(f"pipehost: param {name!r} is {type_.__name__} but its default is wrong: {e}") from None
        self.name, self.type, self.default, self.doc = name, type_, default, doc

    @property
    def required(self):
        return self.default is _REQUIRED

    def to_proto(self):
        p = pb.ParamSpec(name=self.name, type=_PTYPES[self.type], doc=self.doc)
        if not self.required:
            p.default.CopyFrom(value_to_proto(self.type, self.default))
        return p

    def decode(self, values):
        """This parameter's value from a run's ``map<string, Value>``."""
        v = values.get(self.name)
        got = None if v is None else value_from_proto(v)
        if got is None:
            if v is not None:
                raise ParamError(self.name, "has no value")
            if self.required:
                raise ParamError(self.name, "is required")
            return self.default
        try:
            return convert(self.type, got)
        except ValueError as e:
            raise ParamError(self.name, str(e)) from None


def param(name: str, type_: type, default=_REQUIRED, doc: str = "") -> Param:
    """A parameter of ``type_`` (bool, int, float or str). Without a default
    it is required. Integers are accepted for float parameters."""
    return Param(name, type_, default, doc)


class Stage:
    """A registered stage kind (see :func:`stage`)."""

    def __init__(self, fn, kind, version, inputs, outputs, params, doc, concurrent, threads, resources):
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise ValueError(f"pipehost: stage kind {kind!r} must be dotted, like 'climate.biome'")
        if not isinstance(version, str) or not version.strip():
            # Checked here rather than left to Python's "missing argument":
            # the message says what to write and why.
            raise ValueError(f"pipehost: stage {kind}: a version is required, e.g. "
                             f'@pipehost.stage("{kind}", version="1.0.0", ...): it is part of the cache key, '
                             "so bump it whenever the stage's outputs change for the same inputs")
        args, outs = set(), set()
        for what, items in (("input", inputs), ("output", outputs), ("param", params)):
            for it in items:
                want = Param if what == "param" else Port
                if not isinstance(it, want):
                    raise ValueError(f"pipehost: stage {kind}: {what} {it!r} is not a {want.__name__}")
                if what == "output":
                    if it.name in outs:
                        raise ValueError(f"pipehost: stage {kind}: output {it.name!r} is declared twice")
                    outs.add(it.name)
                    continue
                if arg_name(it.name) in args or arg_name(it.name) == "ctx":
                    raise ValueError(f"pipehost: stage {kind}: the name {it.name!r} is used twice "
                                     "(inputs and params are passed by name, so they must differ)")
                args.add(arg_name(it.name))
        for p in list(inputs) + list(outputs):
            if p.kind == pb.PORT_KIND_GRID and not p.dtype:
                raise ValueError(f"pipehost: stage {kind}: grid port {p.name!r} has no dtype")
        for o in outputs:
            if o.optional:
                raise ValueError(f"pipehost: stage {kind}: output {o.name!r} cannot be optional")
        self.fn = fn
        self.kind, self.version = kind, version
        self.inputs, self.outputs, self.params = list(inputs), list(outputs), list(params)
        self.doc = doc if doc is not None else inspect.cleandoc(fn.__doc__ or "")
        self.concurrent, self.threads = bool(concurrent), int(threads)
        self.resources = dict(resources or {})
        self._check_signature()

    def _check_signature(self):
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return
        ps = sig.parameters
        if any(p.kind == p.VAR_KEYWORD for p in ps.values()):
            return
        missing = [arg_name(n) for n in [i.name for i in self.inputs] + [p.name for p in self.params]
                   if arg_name(n) not in ps]
        if missing:
            raise ValueError(f"pipehost: stage {self.kind}: function {self.fn.__name__} has no argument for "
                             f"{', '.join(missing)} (inputs and params are passed by name)")

    def descriptor(self):
        caps = pb.Capabilities(concurrent_runs=self.concurrent, threads=self.threads,
                               resources=[pb.ResourceRequest(name=k, count=v) for k, v in self.resources.items()])
        return pb.StageDescriptor(kind=self.kind, version=self.version, doc=self.doc,
                                  inputs=[p.to_proto() for p in self.inputs],
                                  outputs=[p.to_proto() for p in self.outputs],
                                  params=[p.to_proto() for p in self.params], capabilities=caps)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


#: Every stage registered with @stage in this process, in order.
REGISTRY: list = []


def stage(kind: str, *, version: str = None, inputs=(), outputs=(), params=(), doc=None,
          concurrent: bool = True, threads: int = 1, resources=None):
    """Registers a function as a stage kind.

    The function is called as ``fn(ctx, <each input by name>, <each param
    by name>)`` (a name that is a Python keyword gets a trailing underscore:
    input "in" is passed as ``in_``): grid inputs as read-only numpy arrays over the sealed
    memory, tables as pyarrow Tables, blobs as read-only uint8 arrays, an
    unwired optional input as None; params converted to their declared
    types. Outputs are written through ``ctx.output(name)`` (grids) or
    ``ctx.write_table`` / ``ctx.write_bytes`` / ``ctx.dynamic_output``.

    ``version`` is required: it is part of the cache key, so bump it when
    outputs change for the same inputs. ``concurrent``: the host may run
    several instances at once in this process; ``threads``: how many threads
    the stage keeps busy (a scheduling hint); ``resources``: e.g. {"gpu": 1}.
    """

    def register(fn):
        s = Stage(fn, kind, version, inputs, outputs, params, doc, concurrent, threads, resources)
        if any(r.kind == kind for r in REGISTRY):
            raise ValueError(f"pipehost: stage kind {kind!r} is registered twice")
        REGISTRY.append(s)
        return s

    return register

"""pipehost: write pipeline stages in Python.

A stage is a function decorated with :func:`stage`; :func:`serve` turns the
module into a plugin executable the pipehost host starts, describes and runs
(docs/sdk-python.md)::

    import numpy as np
    import pipehost
    from pipehost import grid, param

    @pipehost.stage("demo.scale", version="1.0.0",
                    inputs=[grid("in", "f32")], outputs=[grid("out", "f32")],
                    params=[param("factor", float, default=2.0, doc="multiplier")])
    def scale(ctx, in_, factor): ...

    if __name__ == "__main__":
        pipehost.serve()
"""

from . import serve as _serve_mod

# Under the host, stdout carries the handshake: point stray prints at stderr
# before any user code runs (the handshake uses a saved copy of stdout).
_serve_mod._redirect_stdout()

from . import log, seed, shm, topology  # noqa: E402
from .context import Context  # noqa: E402
from .serve import serve  # noqa: E402
from .stage import (  # noqa: E402
    Cancelled,
    Param,
    ParamError,
    Port,
    Stage,
    StageError,
    blob,
    grid,
    param,
    stage,
    table,
)

__version__ = _serve_mod.SDK_VERSION
__all__ = ["stage", "serve", "grid", "table", "blob", "param", "Context", "Stage", "Port", "Param",
           "StageError", "ParamError", "Cancelled", "seed", "topology"]

"""A Python plugin that prints to stdout before the SDK is even imported, and
flushes it: the line lands where the handshake belongs, and the host must
refuse the plugin with one clear error."""

import sys

print("loading my model...", flush=True)
sys.stdout.flush()

import pipehost  # noqa: E402
from pipehost import grid  # noqa: E402


@pipehost.stage("garbage-py.never", version="1.0.0", outputs=[grid("out", "f32")])
def never(ctx):
    pass


if __name__ == "__main__":
    pipehost.serve()

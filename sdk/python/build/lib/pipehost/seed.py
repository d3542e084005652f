"""Seeds and random streams, bit-identical with every other pipehost SDK
(docs/seeds.md; pinned by testdata/seeds.json).

A stage gets its 64-bit seed from ``ctx.seed()``; ``Stream(ctx.seed())`` (or
``ctx.rng()``) is its stream, and ``fork(i)`` / ``child(label)`` give
independent sub-streams that do not depend on how much the parent has drawn,
so results are the same with one worker or many.

``mix64_array`` and ``derive_array`` are the same functions over numpy
``uint64`` arrays (wrap-around arithmetic), for vectorised kernels.
"""

from __future__ import annotations

import numpy as np

MASK = (1 << 64) - 1
#: SplitMix64's increment (the golden ratio in 64-bit fixed point).
GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def mix64(z: int) -> int:
    """SplitMix64's output function."""
    z &= MASK
    z = ((z ^ (z >> 30)) * _M1) & MASK
    z = ((z ^ (z >> 27)) * _M2) & MASK
    return z ^ (z >> 31)


class SplitMix64:
    """Vigna's SplitMix64 generator; the seed is the initial state."""

    __slots__ = ("state",)

    def __init__(self, seed: int):
        self.state = seed & MASK

    def next_u64(self) -> int:
        self.state = (self.state + GAMMA) & MASK
        return mix64(self.state)


def fnv1a64(name: str | bytes) -> int:
    """The 64-bit FNV-1a hash of a name's UTF-8 bytes, taken as given."""
    data = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def derive(key: int, word: int) -> int:
    """The one way a sub-seed is made: ``mix64((mix64(key + GAMMA) ^ word) + GAMMA)``."""
    return mix64(((mix64((key + GAMMA) & MASK) ^ (word & MASK)) + GAMMA) & MASK)


def stage_seed(run_seed: int, name: str) -> int:
    """The seed of stage instance ``name`` in a run with seed ``run_seed``."""
    return derive(run_seed, fnv1a64(name))


def mix64_array(z) -> np.ndarray:
    """:func:`mix64` of every element of a ``uint64`` array."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def derive_array(key, words) -> np.ndarray:
    """:func:`derive` of a key (scalar or array) with every element of ``words``."""
    g = np.uint64(GAMMA)
    with np.errstate(over="ignore"):
        k = mix64_array(np.asarray(key, dtype=np.uint64) + g)
        return mix64_array((k ^ np.asarray(words, dtype=np.uint64)) + g)


class Stream:
    """A random stream: a key (for forks) and a SplitMix64 state (for draws)."""

    __slots__ = ("_key", "_state")

    def __init__(self, seed: int):
        self._key = seed & MASK
        self._state = seed & MASK

    @classmethod
    def for_stage(cls, run_seed: int, name: str) -> "Stream":
        return cls(stage_seed(run_seed, name))

    @property
    def seed(self) -> int:
        """The seed the stream was made from."""
        return self._key

    def next_u64(self) -> int:
        self._state = (self._state + GAMMA) & MASK
        return mix64(self._state)

    def next_f64(self) -> float:
        """A float in [0, 1): the top 53 bits of a draw times 2^-53 (exact)."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        """A uniform integer in [0, n), by rejection of the draws below 2^64 mod n."""
        if n <= 0 or n > MASK:
            raise ValueError(f"seed: Stream.below needs 1 <= n < 2^64, got {n}")
        floor = ((1 << 64) - n) % n
        while True:
            x = self.next_u64()
            if x >= floor:
                return x % n

    def fork(self, i: int) -> "Stream":
        """Sub-stream ``i`` (a tile, a row, an iteration). Reads only the key."""
        return Stream(derive(self._key, i))

    def child(self, label: str) -> "Stream":
        """The sub-stream named ``label``: ``fork(fnv1a64(label))``."""
        return self.fork(fnv1a64(label))

    def u64_array(self, n: int) -> np.ndarray:
        """The next ``n`` draws as a ``uint64`` array (same values as ``next_u64``)."""
        start = self._state
        with np.errstate(over="ignore"):
            states = np.uint64(start) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GAMMA)
        self._state = (start + n * GAMMA) & MASK
        return mix64_array(states)

    def f64_array(self, n: int) -> np.ndarray:
        """The next ``n`` ``next_f64`` values as a ``float64`` array."""
        return (self.u64_array(n) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

package shm

import "golang.org/x/sys/unix"

// Handing an output back (docs/protocol.md, "Hand-off"): the producer unmaps
// every writable mapping of it before its Result, then the host calls
// SealWrite before any consumer, digest, cache entry or dataset sees the
// bytes. F_SEAL_WRITE is the only seal that answers "does a writable
// mapping exist anywhere?" atomically: the kernel refuses it with EBUSY while
// any process maps the memfd shared and writable, or could make its mapping
// writable again (a view created writable and mprotected read-only still
// counts). F_SEAL_FUTURE_WRITE is no substitute: it leaves mappings that
// already exist alone, in the producer and in any process it forked or gave
// the fd to.

// writeSeals are what SealWrite adds: the bytes are immutable and the seals
// themselves frozen.
const writeSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SEAL

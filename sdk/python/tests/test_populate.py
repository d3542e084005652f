"""A large output's pages are present as soon as the SDK maps it."""

import fcntl

from pipehost import shm


def rss_shmem() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssShmem in /proc/self/status")


def test_map_rw_populates_a_large_output():
    size = 32 << 20
    fd = shm.create_memfd("populate", size)
    seg = shm.Segment(fd)
    try:
        before = rss_shmem()
        m = seg.map_rw()
        grew = rss_shmem() - before
        assert grew >= size * 9 // 10, f"RssShmem grew by {grew} on mapping, want about {size}"
        assert m[0] == 0 and m[size - 1] == 0
        m[size - 1] = 7
        m.close()
        fcntl.fcntl(fd, shm.F_ADD_SEALS, shm.F_SEAL_WRITE)
        ro = seg.map_ro()
        assert ro[size - 1] == 7
        ro.close()
    finally:
        seg.close()


def test_map_rw_leaves_a_small_output_to_the_faults():
    size = shm.POPULATE_MIN // 2
    fd = shm.create_memfd("small", size)
    seg = shm.Segment(fd)
    try:
        before = rss_shmem()
        m = seg.map_rw()
        assert rss_shmem() - before < size // 2
        m.close()
    finally:
        seg.close()

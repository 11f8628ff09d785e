"""Transports: the only way ranks talk. `mpi.MPITransport` for real runs (the one module that
imports mpi4py) and `local.LocalTransport`, threads in one process, for tests.

Both offer the same small surface: in-place Allreduce (sum or max, blocking or started and
waited for) on float64 buffers, Allgather(v) of byte payloads, object broadcast
and scatter for start-up metadata, and non-blocking point-to-point messages on preallocated
buffers with tags, waited on by polling that yields the core (ranks outnumber cores here).
"""

TAG_WORK = 1
TAG_STOP = 2


class RankAborted(RuntimeError):
    """Raised in the other ranks of an in-process run when one rank aborts."""

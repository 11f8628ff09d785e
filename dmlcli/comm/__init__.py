"""Transports: the only way ranks talk. `mpi.MPITransport` for real runs (the one module that
imports mpi4py) and `local.LocalTransport`, threads in one process, for tests.

Both offer the same small surface: in-place Allreduce (sum or max, blocking or started and
waited for) on float64 buffers, Allgather(v) of byte payloads, object broadcast
and scatter for start-up metadata, and non-blocking point-to-point messages on preallocated
buffers with tags, waited on by polling that yields the core (ranks outnumber cores here).
Every wait gives up with `Stalled` once it has lasted the transport's `stall_timeout` seconds
(None, the default: never), so a silent rank ends the run instead of hanging it.
"""

TAG_WORK = 1
TAG_STOP = 2
TAG_NEIGHBOUR = 3  # gossip messages
TAG_FAIL = 4  # a worker of the parameter server telling it that it failed (runtime.parameter_server)
TAG_STALL = 5  # a rank telling rank 0 that it is waiting and not silent (runtime.stall)


class RankAborted(RuntimeError):
    """Raised in the other ranks of an in-process run when one rank aborts."""


class Stalled(Exception):
    """A wait lasted the stall timeout with nothing arriving (see runtime.stall)."""

    def __init__(self, waited_s: float):
        super().__init__(f"nothing arrived for {waited_s:g} s")
        self.waited_s = waited_s

"""MPI transport over mpi4py: the one module of dmlcli that imports it."""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
from mpi4py import MPI

from dmlcli.comm import TAG_NEIGHBOUR
from dmlcli.comm.polling import YIELD_S, poll_until

REDUCTIONS = {"sum": MPI.SUM, "max": MPI.MAX}


def usable_cores() -> int:
    """Cores this node offers its ranks: the affinity mask, unless a launcher bound this rank to one core
    (Open MPI does by default), in which case the machine's count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return (os.cpu_count() or 1) if cores == 1 else cores


class MPITransport:
    def __init__(self, comm=None):
        self.comm = comm or MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.stall_timeout: float | None = None  # seconds any wait may last (see comm.Stalled); None: no limit
        # The ranks of this node, which share its memory and its cores (kept for shared_array).
        self.node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        # Point-to-point waits yield first only where every rank of this node has a core (comm.polling).
        self.oversubscribed = self.node.Get_size() > usable_cores()
        self.p2p_yield_s = 0.0 if self.oversubscribed else YIELD_S

    def _until(self, test, yield_s: float = 0.0, timeout: float | None = None):
        """Poll test() to completion, giving up after `timeout` (default: the stall timeout)."""
        return poll_until(test, yield_s, self.stall_timeout if timeout is None else timeout)

    # collectives
    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        """Reduce buf over all ranks in place: op "sum" or "max"."""
        request = self.comm.Iallreduce(MPI.IN_PLACE, buf, op=REDUCTIONS[op])
        self._until(request.Test, YIELD_S)

    def iallreduce(self, buf: np.ndarray, op: str = "sum"):
        """Start reducing buf in place; complete(request) before touching buf again."""
        return self.comm.Iallreduce(MPI.IN_PLACE, buf, op=REDUCTIONS[op])

    def complete(self, request) -> None:
        """Wait for a started collective, yielding as the blocking ones do."""
        self._until(request.Test, YIELD_S)

    def allgather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's `values` (the same length on each), as rows of a (size, len) array."""
        gathered = np.empty((self.size, values.size), dtype=values.dtype)
        self._until(self.comm.Iallgather(values, gathered).Test, YIELD_S)
        return gathered

    def allgatherv(self, data: np.ndarray, counts) -> np.ndarray:
        """The uint8 arrays of every rank, concatenated in rank order; counts[r] is rank r's length."""
        gathered = np.empty(int(sum(counts)), dtype=np.uint8)
        offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(int)
        request = self.comm.Iallgatherv(data, [gathered, [int(c) for c in counts], offsets.tolist(), MPI.BYTE])
        self._until(request.Test, YIELD_S)
        return gathered

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        request = self.comm.Ibcast(buf, root=root)
        self._until(request.Test, YIELD_S)

    def bcast_object(self, obj=None, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def scatter_object(self, objs=None, root: int = 0):
        return self.comm.scatter(objs, root=root)

    def gather_object(self, obj, root: int = 0):
        return self.comm.gather(obj, root=root)

    def barrier(self) -> None:
        self._until(self.comm.Ibarrier().Test, YIELD_S)

    # point to point
    def isend(self, buf: np.ndarray, dest: int, tag: int):
        return self.comm.Isend(buf, dest=dest, tag=tag)

    def irecv(self, buf: np.ndarray, source: int, tag: int | None = None):
        return self.comm.Irecv(buf, source=source, tag=MPI.ANY_TAG if tag is None else tag)

    def wait(self, request, timeout: float | None = None) -> int:
        """Wait for one request; return the message tag (receives) or -1."""
        status = MPI.Status()
        self._until(lambda: request.Test(status), self.p2p_yield_s, timeout=timeout)
        return status.Get_tag()

    def waitany(self, requests: list, timeout: float | None = None) -> tuple[int, int]:
        """Wait for the first of several requests (None entries are skipped); return (index, tag)."""
        status = MPI.Status()
        handles = [MPI.REQUEST_NULL if r is None else r for r in requests]

        def ready():
            index, done = MPI.Request.Testany(handles, status)
            return done and index != MPI.UNDEFINED and (index,)

        (index,) = self._until(ready, self.p2p_yield_s, timeout=timeout)
        return index, status.Get_tag()

    def neighbour_exchange(self, send: np.ndarray, peers, out: list | None = None) -> list[np.ndarray]:
        """Send `send` to every rank in `peers` and receive one buffer of its size from each, all
        posted at once (Irecv, then Isend) and waited for together; returns the received buffers in
        peers' order (into `out` when given). Both sides of a pair must call it in the same round:
        MPI keeps a pair's messages in order, so a fast rank's next round cannot overtake this one."""
        out = out if out is not None else [np.empty_like(send) for _ in peers]
        requests = [self.comm.Irecv(buf, source=peer, tag=TAG_NEIGHBOUR) for buf, peer in zip(out, peers)]
        requests += [self.comm.Isend(send, dest=peer, tag=TAG_NEIGHBOUR) for peer in peers]
        if requests:
            self._until(lambda: MPI.Request.Testall(requests), YIELD_S)
        return out

    def abort(self, code: int) -> None:
        self.comm.Abort(code)

    def sleep_until_aborted(self, timeout: float | None = None) -> None:
        """Do nothing until another rank's abort ends this process, or for `timeout` seconds (None: for ever)."""
        give_up = float("inf") if timeout is None else time.monotonic() + timeout
        while time.monotonic() < give_up:
            time.sleep(min(0.1, max(give_up - time.monotonic(), 0.0)))

    def describe(self) -> dict:
        """MPI library, rank count and host names, for the run manifest (collective)."""
        hosts = self.comm.allgather(MPI.Get_processor_name())
        return {
            "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
            "mpi_standard": "{}.{}".format(*MPI.Get_version()),
            "ranks": self.size,
            "hosts": sorted(set(hosts)),
        }

    # shared memory (hogwild): one array that every rank of a node maps
    def same_node(self) -> bool:
        """Whether every rank shares memory with every other (one node): each rank learns it from the
        size of its own node's communicator, so all agree without a message."""
        return self.node.Get_size() == self.size

    @contextlib.contextmanager
    def shared_array(self, size: int):
        """Collective, for runs whose ranks share one node (same_node()): a float64 array of `size`
        zeros in an MPI shared-memory window, the same memory on every rank. Rank 0 of the node
        allocates it and zeroes it, the others map it (Shared_query). The window lives until the
        with-block ends, then is freed collectively, so no view of it may outlive the block. Not
        freed when the block raises: the run is being aborted, and a rank waiting in a collective
        free would never reach the abort."""
        node = self.node
        window = MPI.Win.Allocate_shared(8 * size if node.Get_rank() == 0 else 0, 8, comm=node)
        memory, _ = window.Shared_query(0)
        array = np.ndarray(buffer=memory, dtype=np.float64, shape=(size,))
        if node.Get_rank() == 0:
            array[:] = 0.0
        self.barrier()  # zeroed before anyone reads it
        yield array
        window.Free()


THREAD_LEVELS = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled", MPI.THREAD_SERIALIZED: "serialized",
                 MPI.THREAD_MULTIPLE: "multiple"}


def environment(comm=None) -> dict | None:
    """MPI as this process sees it, for `dmlcli env`. Collective: every rank's host, pid and usable
    CPUs are gathered to rank 0, which alone gets the report (the others get None)."""
    import mpi4py

    comm = comm or MPI.COMM_WORLD
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ranks = comm.gather({"rank": comm.Get_rank(), "host": MPI.Get_processor_name(), "pid": os.getpid(), "cpus": cpus},
                        root=0)
    if comm.Get_rank() != 0:
        return None
    vendor, version = MPI.get_vendor()
    return {
        "library": " ".join(MPI.Get_library_version().strip().splitlines()[0].split()),
        "vendor": f"{vendor} {'.'.join(str(part) for part in version)}",
        "standard": "{}.{}".format(*MPI.Get_version()),
        "thread_level": THREAD_LEVELS.get(MPI.Query_thread(), str(MPI.Query_thread())),
        "mpi4py": mpi4py.__version__,
        "mpi4py_config": dict(mpi4py.get_config()),
        "size": comm.Get_size(),
        "ranks": ranks,
    }

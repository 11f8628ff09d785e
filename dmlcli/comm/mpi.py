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
        # A rank waiting for one message (a worker for its reply) yields first only where every rank of
        # this node has a core; one waiting for any of several (the parameter server) always does (comm.polling).
        self.oversubscribed = self.node.Get_size() > usable_cores()
        self.p2p_yield_s = 0.0 if self.oversubscribed else YIELD_S
        self.spins = not self.oversubscribed  # with a core each, the first YIELD_S of a wait spins (comm.polling)

    def _until(self, test, yield_s: float = 0.0, timeout: float | None = None):
        """Poll test() to completion, giving up after `timeout` (default: the stall timeout)."""
        return poll_until(test, yield_s, self.stall_timeout if timeout is None else timeout, self.spins)

    # collectives
    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        """Reduce buf over all ranks in place: op "sum" or "max"."""
        request = self.comm.Iallreduce(MPI.IN_PLACE, buf, op=REDUCTIONS[op])
        self._until(request.Test, YIELD_S)

    def complete(self, request, patient: bool = False) -> None:
        """Wait for a started collective, yielding as the blocking ones do; a `patient` wait, which
        nobody waits on in turn, sleeps from the start and leaves the cores to the ranks computing."""
        self._until(request.Test, 0.0 if patient else YIELD_S)

    def allreduce_init(self, buf: np.ndarray, op: str = "sum") -> PersistentAllreduce:
        """Collective: a reduction of buf in place, set up once and started each round (see PersistentAllreduce)."""
        return PersistentAllreduce(self.comm, buf, REDUCTIONS[op])

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

    # Object collectives wait for the slowest rank in a polled barrier first: in MPICH's blocking
    # bcast the workers spin while rank 0 scans a data file, and with 5 ranks on 2 cores the scan
    # then got about 40 % of a core (a first run on a 72 MB LIBSVM file: 11-12.8 s, 5-7.9 s with
    # the barrier; 2026-11-25, 2-core development machine). The pickled transfer that follows is short.
    def bcast_object(self, obj=None, root: int = 0):
        self.barrier()
        return self.comm.bcast(obj, root=root)

    def scatter_object(self, objs=None, root: int = 0):
        self.barrier()
        return self.comm.scatter(objs, root=root)

    def gather_object(self, obj, root: int = 0):
        self.barrier()
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
        # Most requests are done when first tested (sends, and a reply gathered for while it came): no polling
        # set up for them. With waitany's likewise, 0.4 µs less per payload and reply (2.8 against 2.4 µs).
        if not request.Test(status):
            self._until(lambda: request.Test(status), self.p2p_yield_s, timeout=timeout)
        return status.Get_tag()

    def waitany(self, requests: list, timeout: float | None = None) -> tuple[int, int]:
        """Wait for the first of several requests (None entries are skipped); return (index, tag). Yields
        first whether or not ranks outnumber cores: the parameter server's wait, which every worker's reply
        waits on (comm.polling)."""
        status = MPI.Status()
        handles = [MPI.REQUEST_NULL if r is None else r for r in requests]

        def ready():
            index, done = MPI.Request.Testany(handles, status)
            return done and index != MPI.UNDEFINED and (index,)

        (index,) = ready() or self._until(ready, YIELD_S, timeout=timeout)
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


class PersistentAllreduce:
    """An Allreduce of one buffer that a loop repeats every round: MPI-4's persistent collective
    (MPI_Allreduce_init), whose schedule is built once; each round only starts it. Measured on the
    2-core development machine (d = 100, 2026-11-24, a start or call and a Test loop that yields):
    1.9 µs a round against 4.3 µs for Iallreduce with 2 ranks, 13 µs against 17.5 µs with 3 (ranks
    outnumbering cores). Libraries older than MPI 4.0 get Iallreduce each round instead."""

    def __init__(self, comm, buf: np.ndarray, op):
        self.comm, self.buf, self.op = comm, buf, op
        self.request = comm.Allreduce_init(MPI.IN_PLACE, buf, op=op) if MPI.Get_version() >= (4, 0) else None

    def start(self):
        """Start this round's reduction; complete the returned request before touching buf again."""
        if self.request is None:
            return self.comm.Iallreduce(MPI.IN_PLACE, self.buf, op=self.op)
        self.request.Start()
        return self.request

    def free(self) -> None:
        """Release the persistent request once the loop has completed its last round."""
        if self.request is not None:
            self.request.Free()
            self.request = None


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

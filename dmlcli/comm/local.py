"""In-process transport: every rank is a thread, so tests run algorithms without mpiexec.

Collectives meet at a barrier and reduce in rank order; messages go through per-destination
mailboxes. An abort on any rank wakes every waiting rank with RankAborted, so a failing
test ends instead of hanging.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque

import numpy as np

from dmlcli.comm import TAG_NEIGHBOUR, RankAborted, Stalled

REDUCTIONS = {"sum": np.sum, "max": np.max}


class LocalHub:
    """State shared by the threads of one in-process run."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list = [None] * size
        self.mailboxes = [deque() for _ in range(size)]  # (source, tag, data) per destination
        self.cond = threading.Condition()
        self.aborted: tuple[int, int] | None = None

    def transports(self) -> list[LocalTransport]:
        return [LocalTransport(self, rank) for rank in range(self.size)]


class _Done:
    """A send: the data were copied into the mailbox when it was posted."""

    tag = -1

    def test(self):
        return True


class _Receive:
    def __init__(self, hub: LocalHub, rank: int, buf: np.ndarray, source: int, tag: int | None):
        self.hub, self.rank, self.buf, self.source, self.want_tag = hub, rank, buf, source, tag
        self.tag = None

    def test(self) -> bool:
        """Take the first matching message from the mailbox, if there is one (hub.cond held)."""
        if self.tag is not None:
            return True
        box = self.hub.mailboxes[self.rank]
        for i, (source, tag, data) in enumerate(box):
            if source == self.source and (self.want_tag is None or tag == self.want_tag):
                del box[i]
                self.buf[: data.size] = data
                self.tag = tag
                return True
        return False


class _Reduction:
    """A repeated reduction of one buffer (mpi.PersistentAllreduce's stand-in). Threads have nothing
    to overlap with: it reduces when started, and the request is already complete."""

    def __init__(self, transport: LocalTransport, buf: np.ndarray, op: str):
        self.transport, self.buf, self.op = transport, buf, op

    def start(self) -> _Done:
        self.transport.allreduce(self.buf, self.op)
        return _Done()

    def free(self) -> None:
        pass


class LocalTransport:
    def __init__(self, hub: LocalHub, rank: int):
        self.hub, self.rank, self.size = hub, rank, hub.size
        self.stall_timeout: float | None = None  # seconds any wait may last (see comm.Stalled); None: no limit

    def _meet(self, value):
        """Deposit a value, wait for every rank; return all deposits in rank order."""
        hub = self.hub
        hub.slots[self.rank] = value
        self._barrier()
        values = list(hub.slots)
        self._barrier()  # nobody overwrites a slot before everyone has read it
        return values

    def _barrier(self):
        try:
            self.hub.barrier.wait(self.stall_timeout)
        except threading.BrokenBarrierError:
            if self.hub.aborted:
                raise RankAborted(f"rank {self.hub.aborted[0]} aborted") from None
            # A timeout breaks the barrier for every rank at it: each of them reports the stall.
            raise Stalled(self.stall_timeout) from None

    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        buf[...] = REDUCTIONS[op](self._meet(buf.copy()), axis=0)

    def complete(self, request, patient: bool = False) -> None:
        pass

    def allreduce_init(self, buf: np.ndarray, op: str = "sum") -> _Reduction:
        return _Reduction(self, buf, op)

    def allgather(self, values: np.ndarray) -> np.ndarray:
        return np.array(self._meet(values.copy()))

    def allgatherv(self, data: np.ndarray, counts) -> np.ndarray:
        return np.concatenate(self._meet(data.copy())).astype(np.uint8, copy=False)

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        buf[...] = self._meet(buf.copy())[root]

    def bcast_object(self, obj=None, root: int = 0):
        return self._meet(obj)[root]

    def scatter_object(self, objs=None, root: int = 0):
        return self._meet(objs)[root][self.rank]

    def gather_object(self, obj, root: int = 0):
        values = self._meet(obj)
        return values if self.rank == root else None

    def barrier(self) -> None:
        self._barrier()

    def isend(self, buf: np.ndarray, dest: int, tag: int):
        with self.hub.cond:
            self.hub.mailboxes[dest].append((self.rank, tag, buf.copy()))
            self.hub.cond.notify_all()
        return _Done()

    def irecv(self, buf: np.ndarray, source: int, tag: int | None = None):
        return _Receive(self.hub, self.rank, buf, source, tag)

    def wait(self, request, timeout: float | None = None) -> int:
        return self.waitany([request], timeout)[1]

    def waitany(self, requests: list, timeout: float | None = None) -> tuple[int, int]:
        timeout = self.stall_timeout if timeout is None else timeout
        give_up = float("inf") if timeout is None else time.monotonic() + timeout
        with self.hub.cond:
            while True:
                if self.hub.aborted:
                    raise RankAborted(f"rank {self.hub.aborted[0]} aborted")
                for index, request in enumerate(requests):
                    if request is not None and request.test():
                        return index, request.tag
                if time.monotonic() >= give_up:
                    raise Stalled(timeout)
                self.hub.cond.wait(timeout=0.05)

    def neighbour_exchange(self, send: np.ndarray, peers, out: list | None = None) -> list[np.ndarray]:
        """Send `send` to every rank in `peers`, then take one message from each mailbox in turn;
        returns the received buffers in peers' order (into `out` when given). Mailboxes keep a
        pair's messages in order, as MPI does."""
        out = out if out is not None else [np.empty_like(send) for _ in peers]
        for peer in peers:
            self.isend(send, peer, TAG_NEIGHBOUR)
        for buf, peer in zip(out, peers):
            self.wait(self.irecv(buf, peer, TAG_NEIGHBOUR))
        return out

    def abort(self, code: int) -> None:
        with self.hub.cond:
            self.hub.aborted = (self.rank, code)
            self.hub.cond.notify_all()
        self.hub.barrier.abort()
        raise RankAborted(f"rank {self.rank} aborted")

    def sleep_until_aborted(self, timeout: float | None = None) -> None:
        """Do nothing until another rank aborts the run, or for `timeout` seconds (None: for ever)."""
        give_up = float("inf") if timeout is None else time.monotonic() + timeout
        with self.hub.cond:
            while not self.hub.aborted:
                left = give_up - time.monotonic()
                if left <= 0:
                    return
                self.hub.cond.wait(timeout=min(0.05, left))
        raise RankAborted(f"rank {self.hub.aborted[0]} aborted")

    def describe(self) -> dict:
        return {"mpi_library": "in-process threads", "mpi_standard": None, "ranks": self.size, "hosts": ["localhost"]}

    def same_node(self) -> bool:
        """Threads of one process share all their memory."""
        return True

    @contextlib.contextmanager
    def shared_array(self, size: int):
        """Collective: a float64 array of `size` zeros, made by rank 0 and handed through the hub,
        the same array on every rank (as comm.mpi's is the same memory)."""
        yield self._meet(np.zeros(size) if self.rank == 0 else None)[0]

"""Waiting that gives the core away: ranks outnumber cores on small machines, and a rank that
spins in MPI steals the time the computing ranks need.

Two patterns, both measured on 2 cores (`make bench`, and the asgd runs in tests/test_mpi.py):
- Collectives first yield (sched_yield: the core goes to any rank that can use it, and comes
  straight back when none can), then sleep with back-off once the wait has lasted YIELD_S.
  Sleeping from the start makes short Allreduce rounds 2.5-4x slower than MPI's own spinning
  (Linux rounds short sleeps up to ~60 µs); yielding matches it.
- Point-to-point waits of the parameter server and its workers sleep with back-off from the
  start when the node's ranks outnumber its cores. Yielding there keeps every rank runnable, the
  scheduler then serves some workers far more often than others, and asgd drifts towards their
  shards (relative gaps up to 8e-3 instead of below 1e-3 on breast_cancer); sleeping ranks leave
  the cores to computing ones. Where every rank has a core (comm.mpi.MPITransport.oversubscribed
  is False) they yield first, as collectives do: asgd with one worker (2 ranks, 2 cores, d = 100,
  B = 64) applied 7.4k updates/s sleeping and 28.5k yielding (`make bench`, 2026-11-24).
"""

import os
import time

from dmlcli.comm import Stalled

YIELD_S = 2e-3
MAX_BACKOFF_S = 1e-4


def poll_until(test, yield_s: float = 0.0, timeout: float | None = None):
    """Call test() until it returns a truthy value; yield the core for up to yield_s, then sleep.
    Raise Stalled once `timeout` seconds (None: never) have passed without it."""
    result = test()
    if result:
        return result
    started = time.perf_counter()
    give_up = float("inf") if timeout is None else started + timeout
    yield_until = started + yield_s
    while time.perf_counter() < yield_until:
        os.sched_yield()
        result = test()
        if result:
            return result
    delay = 1e-6
    while True:
        time.sleep(delay)
        result = test()
        if result:
            return result
        if time.perf_counter() >= give_up:
            raise Stalled(timeout)
        delay = min(2 * delay, MAX_BACKOFF_S)

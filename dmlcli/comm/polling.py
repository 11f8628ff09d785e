"""Waiting that gives the core away: ranks outnumber cores on small machines, and a rank that
spins in MPI steals the time the computing ranks need.

Three patterns, all measured on 2 cores (`make bench`, and the asgd runs in tests/test_mpi.py):
- Collectives first yield (sched_yield: the core goes to any rank that can use it, and comes
  straight back when none can), then sleep with back-off once the wait has lasted YIELD_S.
  Sleeping from the start makes short Allreduce rounds 2.5-4x slower than MPI's own spinning
  (Linux rounds short sleeps up to ~60 µs); yielding matches it.
- A parameter server's worker waiting for its reply sleeps with back-off from the start when the
  node's ranks outnumber its cores. Yielding there keeps every rank runnable, the scheduler then
  serves some workers far more often than others, and asgd drifts towards their shards (relative
  gaps up to 8e-3 instead of below 1e-3 on breast_cancer); sleeping ranks leave the cores to
  computing ones. Where every rank has a core (comm.mpi.MPITransport.oversubscribed is False) it
  yields first, as collectives do: asgd with one worker (2 ranks, 2 cores, d = 100, B = 64) applied
  7.4k updates/s sleeping and 28.5k yielding (`make bench`, 2026-11-24).
- The parameter server, waiting for any worker's payload (waitany), yields first in either case:
  every worker's reply waits on it, and a server asleep leaves a payload unread for a rounded-up
  sleep. asgd, d = 100, B = 64, 6 interleaved runs each (2026-11-25, other jobs on the machine):
  2 workers (3 ranks on 2 cores) 10.6k-14.5k updates/s with the server sleeping, 10.1k-25.0k
  yielding (39-40k in a quiet spell an hour before), bare mpi4py's blocking waits 20.8k-24.8k;
  4 workers 8.9k-16.9k sleeping, 13.5k-22.6k yielding, bare 8.4k-11.2k. The workers still sleep,
  and that is what keeps the server's turns even: on breast_cancer (6000 updates, 2 workers, 8
  runs each) the workers took 2,784-3,216 payloads each and the median gap of the last ten points
  was 4e-6 to 2.4e-4 with the server yielding, 5e-6 to 5.3e-4 sleeping. Workers that yield for
  the first 50 µs of their wait (the server's turn is ~7 µs) applied 35k-44k updates/s with 2, but
  the gaps spread to 3.4e-3 (split 2,738/3,262 at worst); with 15 µs, 3 runs of 8 ended above 3e-3.
Where every rank of the node has a core, the first YIELD_S of every wait spins instead of yielding: a
sched_yield is a system call even when no other task wants the core. ssgd with one worker (2 ranks on
2 cores), medians of 3 interleaved runs (2026-11-25): 13 µs a round against 15 on trivial data (16 rows,
d = 2), 0.126 ms against 0.133 at d = 100 (4,000 rows).
Short sleeps are not made shorter: a timer slack of 1 ns (prctl PR_SET_TIMERSLACK; Linux's default
is 50 µs) turns a 1 µs sleep into 15 µs instead of 65, but then a worker wakes sooner the sooner it
was answered: with the server sleeping, one of three workers took 116-164 of 200 updates in 6 runs
of 6 (4 ranks on 2 cores); with it yielding, each took 51-93 with the default slack (10 runs), and
asgd with 2 workers applied 10k-19k updates/s with 1 ns against 40k-42k with the default.
"""

import os
import time

from dmlcli.comm import Stalled

YIELD_S = 2e-3
MAX_BACKOFF_S = 1e-4


def poll_until(test, yield_s: float = 0.0, timeout: float | None = None, spin: bool = False):
    """Call test() until it returns a truthy value; yield the core for up to yield_s (with `spin`, keep it
    and test again at once), then sleep. Raise Stalled once `timeout` seconds (None: never) have passed
    without it."""
    result = test()
    if result:
        return result
    started = time.perf_counter()
    give_up = float("inf") if timeout is None else started + timeout
    yield_until = started + yield_s
    while time.perf_counter() < yield_until:
        if not spin:
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

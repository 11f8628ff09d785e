"""Waiting that yields the core: ranks outnumber cores on small machines, and a rank that
spins in MPI steals the time the computing ranks need."""

import time

# Back-off ceiling: long enough to hand the core over, short next to a round's compute.
MAX_BACKOFF_S = 1e-4


def poll_until(test):
    """Call test() until it returns a truthy value, sleeping with exponential back-off between calls."""
    delay = 0.0
    while True:
        result = test()
        if result:
            return result
        time.sleep(delay)
        delay = min(2 * delay + 1e-6, MAX_BACKOFF_S)

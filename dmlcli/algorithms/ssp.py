"""Stale synchronous parallel SGD on a parameter server."""

import math
from dataclasses import dataclass

import numpy as np

from dmlcli.algorithms.base import APPLIED, NON_NEGATIVE_INT, AlgorithmSpec, AsyncAlgorithm, Outcome, Param
from dmlcli.errors import UsageError

DEFAULT_BOUND = 3
# A gradient applied within a clock; made once, as APPLIED is: an Outcome made per update was 0.6 µs of
# the server's 3.9 µs server_update (d = 101).
WITHIN_CLOCK = Outcome()


@dataclass
class Clocks:
    """The server's state: w as of the last completed clock plus the gradient steps applied since,
    the share m of the data those steps stand for (whose regulariser is still to apply), and each
    worker's clock (steps it has completed). The slowest clock is the model's version."""

    w: np.ndarray
    clocks: list[int]
    pending: float = 0.0  # m = Σ n_k/n over the gradients applied since the last completed clock


def ssp(problem, settings, staleness_bound=DEFAULT_BOUND):
    """Stale synchronous parallel (SSP) SGD on the parameter server.

    Worker k's clock c_k counts the steps it has completed. A worker at clock c may start its next
    step only while c − min_j c_j ≤ s (--staleness-bound, `may_start`): the server leaves its reply
    unanswered until the slowest worker is close enough, so no worker is ever more than s + 1
    clocks ahead of the slowest, and no gradient is computed at a model more than s clocks old.
    Worker k sends (n_k/n) g_k (its shard's mini-batch gradient at the model it was given) and its
    client number. The server applies each gradient on arrival,
        w ← w − Kη (n_k/n) g_k,   m ← m + n_k/n,
    (K workers; with equal shards each gradient moves w by η, as asgd's), serves and evaluates
    prox_{Kηm r}(w), and when the slowest clock advances (every worker has completed clock c)
    commits w ← prox_{Kηm r}(w), m ← 0: the model's version, the CSV's `round`, counts the clocks
    completed by every worker. Each gradient carries its share n_k/n of the regulariser, so the
    prox keeps pace with the gradient steps whoever sends them.
    With s = 0 every worker of clock c is held until the clock completes, all are served w_c, and
        w_{c+1} = prox_{Kηr}(w_c − Kη Σ_k (n_k/n) g_k(w_c)):
    ssgd with step Kη (with --lr auto, 1/(L·K) here and 1/L there: the same run). With a large s
    nobody waits: asgd, with the regulariser's prox committed once a clock. With --clients N each
    client is a logical worker with its own clock (K = N above), its rank stepping for its clients
    in turn; s = 0 is then ssgd only with one client per worker, as a rank's next client is served
    the model with its previous clients' gradients applied. A worker that fails under
    --on-failure continue takes its clients out of the clock minimum.
    (Ho et al. 2013, "More effective distributed ML via a stale synchronous parallel parameter
    server".)
    """
    if staleness_bound < 0:
        raise UsageError(f"ssp: --staleness-bound must be 0 or more, got {staleness_bound}")
    bound, batch, d, workers = staleness_bound, settings.batch_size, problem.d, settings.workers
    step = workers * settings.lr  # Kη: a gradient weighted by n_k/n moves w by η when shards are equal

    def server_init(w0):
        return Clocks(w0.copy(), [0] * workers)

    def worker_step(state, w, shard):
        X, y = shard.batch(batch)
        share = shard.n / problem.n
        payload = np.empty(d + 2)
        np.multiply(problem.grad_mean(w, X, y), share, out=payload[:d])  # no temporary of d floats
        payload[d], payload[d + 1] = share, shard.client
        return payload, state

    def model(state):
        return problem.reg.prox(state.w, step * state.pending) if state.pending else state.w

    def server_update(state, payload, staleness):
        k = int(payload[d + 1])
        slowest = min(state.clocks)
        state.w -= step * payload[:d]
        state.pending += payload[d]
        state.clocks[k] += 1
        advanced = min(state.clocks) > slowest
        if advanced:
            state.w = model(state)
            state.pending = 0.0
        return state, APPLIED if advanced else WITHIN_CLOCK

    def may_start(state, client):
        """The client may start its next step: its clock is at most s ahead of the slowest."""
        return state.clocks[client] - min(state.clocks) <= bound

    def leave(state, client):
        """The client's worker failed (--on-failure continue): its clock no longer holds the others
        back, and if it was the slowest, the clock the others have completed is committed."""
        slowest = min(state.clocks)
        state.clocks[client] = math.inf
        advanced = min(state.clocks) > slowest
        if advanced:
            state.w = model(state)
            state.pending = 0.0
        return state, advanced

    return AsyncAlgorithm(server_init, worker_init=lambda w0: None, worker_step=worker_step,
                          server_update=server_update, model=model, payload_size=d + 2, leave=leave,
                          may_start=may_start)


SPEC = AlgorithmSpec(
    "ssp", "async",
    "stale synchronous parallel: gradients applied on arrival, no worker more than s clocks ahead of the slowest", ssp,
    params=(
        Param("staleness_bound", NON_NEGATIVE_INT, DEFAULT_BOUND,
              "s: a worker starts a step only while at most s clocks ahead of the slowest (0: ssgd; large: asgd)"),
    ),
    extra_columns=("staleness_mean", "staleness_max"),
)

"""Asynchronous consensus ADMM on a parameter server: a partial barrier and a bounded delay."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import click
import numpy as np

from dmlcli.algorithms.admm import DEFAULT_LOCAL_ITERS, DEFAULT_RHO, check_local_solve, local_solver
from dmlcli.algorithms.base import APPLIED, AlgorithmSpec, AsyncAlgorithm, Outcome, Param
from dmlcli.errors import UsageError

DEFAULT_PARTIAL_BARRIER = 1
DEFAULT_MAX_DELAY = 4


class Local(NamedTuple):
    """A worker's state: its x_k and scaled dual u_k = y_k/ρ (w0 and 0 until its first step), and its local solve."""

    x: np.ndarray
    u: np.ndarray
    solve: Callable | None  # (v, x_start) -> argmin_x f_k(x) + (ρ/2)‖x − v‖², made at the first step


@dataclass
class Consensus:
    """The server's state: z, each worker's latest contribution w_k(x_k + u_k) and its share w_k (0 until
    it first reports), the workers that reported since the last z update (Φ, in arrival order; held), and
    the z updates each worker has missed since its last report (the paper's d_k)."""

    z: np.ndarray
    w0: np.ndarray
    contributions: np.ndarray  # K × d
    shares: np.ndarray
    reported: list[int]
    missed: list[int]
    live: set[int]  # the workers not failed (--on-failure continue): the bound waits for these only


def async_admm(problem, settings, rho=DEFAULT_RHO, partial_barrier=DEFAULT_PARTIAL_BARRIER,
               max_delay=DEFAULT_MAX_DELAY, local_iters=DEFAULT_LOCAL_ITERS):
    """Asynchronous consensus ADMM (Zhang & Kwok 2014): partial barrier A, bounded delay τ.

    admm's problem and scaling: minimise Σ_k w_k f_k(x_k) + r(z) subject to x_k = z, w_k = n_k/n,
    block k's penalty ρw_k, scaled duals u_k = y_k/ρ. Worker k, given the newest z̃ the server sent it,
        x_k ← argmin_x f_k(x) + y_kᵀ(x − z̃) + (ρ/2)‖x − z̃‖² = argmin_x f_k(x) + (ρ/2)‖x − z̃ + u_k‖²,
        u_k ← u_k + x_k − z̃
    (admm's local solve: exact for the squared loss, else Newton-CG from the previous x_k) and sends
    w_k(x_k + u_k), all the z update needs of it, with w_k and k. The server keeps each worker's latest
    contribution (x_k = w0, u_k = 0 until its first) and, once the condition holds, sets
        z ← argmin_z r(z) + Σ_k w_k[y_kᵀ(x_k − z) + (ρ/2)‖x_k − z‖²] = prox_{r/ρ}(Σ_k w_k(x_k + u_k)),
    a new version (`round`). The workers that reported since the last update (Φ) are held until it and
    get the new z; the others go on computing from their older z. Condition: |Φ| ≥ A (--partial-barrier)
    and no worker outside Φ has missed τ − 1 updates (--max-delay τ; else the server waits for it). So
    each worker reports at least once in every τ updates: its x_k takes part in at most τ consecutive z
    updates, computed from a z at most τ − 1 versions older than the one it updates (`staleness_max`).
    τ = 1 waits for all K whatever A: synchronous ADMM in the paper's order, z then x_k and u_k with the
    same z. admm's order is Boyd's (x_k, z, then u_k with the new z): the same solutions, other iterates.
    Defaults A = 1 (valid for any K; not waiting for slow workers is the point) and τ = 4. Measured under
    mpiexec on 2 cores, 3 workers, synthetic n = 30000, d = 100 logistic, λ = 0.01, seconds to a 1e-6 gap
    (medians of 4): one worker 4× slower (--delay const:1,1,4): A = 3: 4.6; A = 1, τ = 2 / 4 / 8: 2.8 /
    2.4 / 1.8; A = 2, τ = 4: 2.5. No delay: A = 3: 0.72; A = 1, τ = 4: 1.2; A = 2, τ = 4: 0.73. A larger τ
    costs updates: breast_cancer, 4× straggler, A = 1, z updates to 1e-6 at τ = 4 / 8 / 1000: 150 / 200 /
    625 (logistic), 800 / 1225 / 1325 (squared). `updates` counts local solves, `epochs` passes over the
    shards. With --clients each client is a logical worker; a worker that fails under --on-failure
    continue leaves its last contribution in the sum and the bound. (Zhang, Kwok 2014, "Asynchronous distributed ADMM for consensus
    optimization", ICML, Algorithms 1 and 2.)
    """
    workers = settings.workers
    check_local_solve("async-admm", settings, rho, local_iters)
    if not 1 <= partial_barrier <= workers:
        raise UsageError(f"async-admm: --partial-barrier must be between 1 and the {workers} workers, got {partial_barrier}")
    if max_delay < 1:
        raise UsageError(f"async-admm: --max-delay must be at least 1, got {max_delay}")
    d = problem.d

    def server_init(w0):
        return Consensus(w0.copy(), w0.copy(), np.zeros((workers, d)), np.zeros(workers), [], [0] * workers,
                         set(range(workers)))

    def worker_step(state, z, shard):
        solve = state.solve or local_solver(problem.loss, shard, rho, local_iters)
        x = solve(z - state.u, state.x)
        u = state.u + x - z
        share = shard.n / problem.n
        payload = np.empty(d + 2)
        payload[:d] = share * (x + u)
        payload[d], payload[d + 1] = share, shard.client
        return payload, Local(x, u, solve)

    def may_update(state):
        """The paper's condition: at least A reports (A at most the live workers), and none of the
        other live workers about to miss its τ-th update."""
        return len(state.reported) >= min(partial_barrier, len(state.live)) and all(
            state.missed[k] < max_delay - 1 for k in state.live if k not in state.reported)

    def update_z(state):
        consensus = state.contributions.sum(axis=0)
        if not state.shares.all():  # the workers not heard from yet hold x_k = w0, u_k = 0: the rest of Σ_k w_k is on w0
            consensus += (1.0 - state.shares.sum()) * state.w0
        state.z = problem.reg.prox(consensus, 1.0 / rho)
        state.missed = [0 if j in state.reported else missed + 1 for j, missed in enumerate(state.missed)]
        state.reported.clear()

    def server_update(state, payload, staleness):
        k = int(payload[d + 1])
        state.contributions[k] = payload[:d]
        state.shares[k] = payload[d]
        state.reported.append(k)  # a reporter waits for the next update (may_start): it cannot report twice in Φ
        if not may_update(state):
            return state, Outcome()
        update_z(state)
        return state, APPLIED

    def may_start(state, client):
        """A client in Φ waits for the z its report goes into; the others compute from the z they have."""
        return client not in state.reported

    def leave(state, client):
        """The client's worker failed (--on-failure continue): its last contribution stays in the sum,
        the bound no longer waits for it, and z is updated if the others were waiting for it alone."""
        state.live.discard(client)
        if not state.reported or not may_update(state):
            return state, False
        update_z(state)
        return state, True

    return AsyncAlgorithm(server_init, worker_init=lambda w0: Local(w0.copy(), np.zeros_like(w0), None),
                          worker_step=worker_step, server_update=server_update, model=lambda state: state.z,
                          payload_size=d + 2, leave=leave, may_start=may_start)


SPEC = AlgorithmSpec(
    "async-admm", "async",
    "asynchronous consensus ADMM: z updated once A workers have reported, no worker's x_k more than τ updates old",
    async_admm,
    params=(
        Param("rho", click.FloatRange(min=0.0, min_open=True), DEFAULT_RHO, "ADMM penalty ρ > 0 (admm's)"),
        Param("partial_barrier", click.IntRange(min=1), DEFAULT_PARTIAL_BARRIER,
              "A: the server updates z once at least A workers (1..K) have reported since its last update"),
        Param("max_delay", click.IntRange(min=1), DEFAULT_MAX_DELAY,
              "τ: every worker reports at least once in every τ z updates (1: synchronous ADMM)"),
        Param("local_iters", click.IntRange(min=1), DEFAULT_LOCAL_ITERS,
              "Newton-CG steps at most per local solve (not used by the exact squared-loss solve)"),
    ),
    extra_columns=("staleness_mean", "staleness_max"),
    full_batch=True,
)

"""async-admm, asynchronous consensus ADMM (Zhang & Kwok 2014): the server rule by hand, A = K and τ = 1
as synchronous ADMM step for step, the reference reached with A < K, τ > 1 and seeded delays, the partial
barrier and the delay bound checked at every server update, refused values, and a run under mpiexec."""

import threading
from typing import NamedTuple

import numpy as np
import pytest
from test_async_mpi import PROBLEM, TIMEOUT_S, gaps

from conftest import LAM, assert_refused_in_one_line, dmlcli_mpi, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.algorithms.admm import DEFAULT_LOCAL_ITERS, local_solver
from dmlcli.algorithms.base import APPLIED, Outcome
from dmlcli.errors import UsageError
from dmlcli.problems import LOSSES, Shard
from dmlcli.report import read_csv
from dmlcli.runtime import setup
from dmlcli.runtime.local_run import run_local

W0 = np.array([0.3, 0.0, -0.1])
TRUE_W = np.array([1.0, -2.0, 0.5])
CONVERGENCE = dict(data="breast_cancer", loss="logistic", lam=0.01, batch_size=None)


def shards(rows=(4, 6)):
    """Shards of the by-hand problem (n = 10 rows over them), clients 0, 1, …"""
    out = []
    for k, size in enumerate(rows):
        X = np.random.default_rng(k).normal(size=(size, 3))
        y = X @ TRUE_W + 0.1 * np.random.default_rng(10 + k).normal(size=size)
        out.append(Shard(X, y, np.random.default_rng(k), client=k))
    return out


def exact_solve(shard, rho, v):
    """argmin_x f_k(x) + (ρ/2)‖x − v‖² for the squared loss, f_k(x) = ‖Xx − y‖²/(2 n_k)."""
    X, y = shard.X, shard.y
    return np.linalg.solve(X.T @ X / shard.n + rho * np.eye(X.shape[1]), X.T @ y / shard.n + rho * v)


def prox(v, rho):
    return v / (1.0 + LAM / rho)  # argmin (λ/2)‖z‖² + (ρ/2)‖z − v‖²


# --- the rule by hand ----------------------------------------------------------------------------

def test_the_rule_by_hand(problem):
    """K = 2 (w_k = 0.4, 0.6), A = 1, τ = 2, ρ = 0.7. Worker 0 reports: z moves at once, worker 1 not heard
    from yet counting as x_1 = w0, u_1 = 0. Worker 0 reports again: worker 1 has missed τ − 1 = 1 update, so
    the server holds worker 0 and waits; worker 1's report (from z_0, staleness 1) releases the update."""
    rho = 0.7
    algorithm = REGISTRY["async-admm"].build(problem, Settings(0.1, None, 2, 0), rho=rho, partial_barrier=1,
                                             max_delay=2)
    assert algorithm.payload_size == 3 + 2
    first, second = shards()
    state = algorithm.server_init(W0)
    local = [algorithm.worker_init(W0), algorithm.worker_init(W0)]
    np.testing.assert_array_equal(algorithm.model(state), W0)

    payload, local[0] = algorithm.worker_step(local[0], W0, first)
    x0 = exact_solve(first, rho, W0)  # u_0 = 0
    u0 = x0 - W0
    np.testing.assert_allclose(local[0].x, x0, rtol=1e-13)
    np.testing.assert_allclose(payload, [*(0.4 * (x0 + u0)), 0.4, 0.0], rtol=1e-13)
    state, outcome = algorithm.server_update(state, payload, 0)
    assert outcome == APPLIED and state.missed == [0, 1] and state.reported == []
    z1 = prox(0.4 * (x0 + u0) + 0.6 * W0, rho)
    np.testing.assert_allclose(algorithm.model(state), z1, rtol=1e-13)
    z1 = algorithm.model(state).copy()  # the z served from now on

    payload, local[0] = algorithm.worker_step(local[0], z1, first)
    x0 = exact_solve(first, rho, z1 - u0)
    u0 = u0 + x0 - z1
    state, outcome = algorithm.server_update(state, payload, 0)
    assert outcome == Outcome() and state.reported == [0] and not algorithm.may_start(state, 0)  # held
    np.testing.assert_array_equal(algorithm.model(state), z1)  # z waits for worker 1

    payload, local[1] = algorithm.worker_step(local[1], W0, second)
    x1 = exact_solve(second, rho, W0)
    u1 = x1 - W0
    state, outcome = algorithm.server_update(state, payload, 1)
    assert outcome == APPLIED and state.missed == [0, 0] and state.reported == []
    z2 = prox(0.4 * (x0 + u0) + 0.6 * (x1 + u1), rho)
    np.testing.assert_allclose(algorithm.model(state), z2, rtol=1e-13)
    np.testing.assert_allclose(local[0].u, u0, rtol=1e-12, atol=1e-15)


# --- what the server did at every payload, under the runtime -------------------------------------

class Update(NamedTuple):
    worker: int
    staleness: int
    outcome: object
    reported: list  # Φ before this payload
    missed: list  # each worker's missed updates before it
    missed_after: list
    z: np.ndarray  # after it


class ServerLog:
    """The run's async-admm with every server update recorded, and each worker's shard."""

    def __init__(self, monkeypatch):
        self.updates, self.shards, self.lock = [], {}, threading.Lock()
        original = setup.algorithm_for

        def algorithm_for(config, problem, workers, lr):
            algorithm = original(config, problem, workers, lr)
            d = problem.d

            def worker_step(state, z, shard):
                with self.lock:
                    self.shards[shard.client] = shard
                return algorithm.worker_step(state, z, shard)

            def server_update(state, payload, staleness):
                reported, missed = list(state.reported), list(state.missed)
                state, outcome = algorithm.server_update(state, payload, staleness)
                self.updates.append(Update(int(payload[d + 1]), staleness, outcome, reported, missed, list(state.missed),
                                           state.z.copy()))
                return state, outcome

            return algorithm._replace(worker_step=worker_step, server_update=server_update)

        monkeypatch.setattr(setup, "algorithm_for", algorithm_for)

    @property
    def models(self):
        """z after each server update that made one."""
        return [update.z for update in self.updates if update.outcome.advanced]


# --- A = K, τ = 1 is synchronous ADMM --------------------------------------------------------------

def synchronous_admm(shards, n, rho, rounds, solve):
    """Synchronous consensus ADMM in the paper's order, centralised: z_0 = 0, and each round every worker
    x_k ← argmin f_k(x) + (ρ/2)‖x − z + u_k‖², u_k ← u_k + x_k − z, then z ← prox_{r/ρ}(Σ_k w_k(x_k + u_k))."""
    d = shards[0].X.shape[1]
    z, x, u = np.zeros(d), [np.zeros(d) for _ in shards], [np.zeros(d) for _ in shards]
    models = []
    for _ in range(rounds):
        for k in range(len(shards)):
            x[k] = solve(k, z - u[k], x[k])
            u[k] = u[k] + x[k] - z
        z = prox(sum(shard.n / n * (x_k + u_k) for shard, x_k, u_k in zip(shards, x, u)), rho)
        models.append(z)
    return models


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_a_equal_to_k_and_tau_1_is_synchronous_admm_step_for_step(config, monkeypatch, loss):
    """3 workers, A = 3, τ = 1, 40 rounds: every z of the run is the centralised recursion's (squared loss:
    each solve by np.linalg.solve; logistic: admm's Newton-CG solve). Every worker reports from the newest z
    (staleness 0) and every round takes all three. The recursion is the paper's order (z, then x_k and u_k
    with the same z); admm's (x_k, z, then u_k with the new z) reaches the same solution by other iterates."""
    rho, rounds = 0.1, 40
    log = ServerLog(monkeypatch)
    run = config("async-admm", {"partial_barrier": 3, "max_delay": 1, "rho": rho}, data="breast_cancer", loss=loss,
                 lam=LAM, batch_size=None, rounds=rounds, eval_every=1)
    assert run_local(run, workers=3) == 0
    parts = [log.shards[k] for k in range(3)]
    n = sum(shard.n for shard in parts)
    if loss == "squared":
        def solve(k, v, x_start):
            return exact_solve(parts[k], rho, v)
    else:
        solvers = [local_solver(LOSSES["logistic"], shard, rho, DEFAULT_LOCAL_ITERS) for shard in parts]

        def solve(k, v, x_start):
            return solvers[k](v, x_start)
    expected = synchronous_admm(parts, n, rho, rounds, solve)
    assert len(log.models) == rounds
    for got, want in zip(log.models, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    assert all(update.staleness == 0 for update in log.updates)
    assert [len(update.reported) for update in log.updates if update.outcome.advanced] == [2] * rounds
    rows = read_csv(run.out)
    assert [row["round"] for row in rows] == list(range(rounds + 1))
    assert rows[-1]["updates"] == 3 * rounds and rows[-1]["staleness_max"] == 0


# --- the reference, with A < K, τ > 1 and seeded delays --------------------------------------------

# breast_cancer logistic, λ = 0.01, default ρ, 3 workers, 150 z updates; measured relative gaps over seeds 0-4:
# A = 1, τ = 4, const:1,1,4: 1.1e-7 to 4.8e-7; A = 2, τ = 3, exp:0.0005: 5.7e-11 to 1.6e-10. The test asks for 1e-2.
@pytest.mark.parametrize("params,delay,seed", [
    ({"partial_barrier": 1, "max_delay": 4}, "const:1,1,4", 0),
    ({"partial_barrier": 2, "max_delay": 3}, "exp:0.0005", 1),
])
def test_reaches_the_reference_with_a_partial_barrier_and_delays(config, params, delay, seed):
    run = config("async-admm", params, **CONVERGENCE, rounds=150, delay=delay, seed=seed)
    assert run_local(run, workers=3) == 0
    optimum = reference_objective(run, workers=3)
    assert (objectives(run.out)[-1] - optimum) / optimum <= 1e-2
    last = read_csv(run.out)[-1]
    assert last["round"] == 150 and last["staleness_max"] <= params["max_delay"] - 1


# --- the partial barrier and the delay bound at every server update --------------------------------

def check_the_rule(updates, workers, barrier, bound):
    """Replays the run's payloads and checks, at every one, the server's own bookkeeping and the rule:
    1. a payload advances z exactly when, with it, at least A workers have reported since the last update
       and no worker outside them has missed τ − 1 updates; otherwise its sender is held;
    2. at every update each worker's x_k is at most τ updates old: it reached the server in this update or
       one of the τ − 1 before (the initial x_k = w0 counting as version 0's);
    3. a reporter computed from a z at most τ − 1 versions old (its staleness).
    Returns how many payloads were held while A workers had reported (held by the delay bound alone), and
    the oldest x_k seen at an update."""
    version, taken, reported = 0, [0] * workers, []  # taken[k]: the version whose update took k's latest x_k
    held_by_bound, oldest = 0, 0
    for update in updates:
        k = update.worker
        assert update.reported == reported and k not in reported
        assert update.missed == [version - taken[j] for j in range(workers)]
        assert update.staleness == version - taken[k] <= bound - 1
        reported.append(k)
        overdue = [j for j in range(workers) if j not in reported and version - taken[j] >= bound - 1]
        allowed = len(reported) >= barrier and not overdue
        assert update.outcome == (APPLIED if allowed else Outcome())
        held_by_bound += len(reported) >= barrier and not allowed
        if allowed:
            version += 1
            for j in reported:
                taken[j] = version
            reported = []
            ages = [version - taken[j] + 1 for j in range(workers)]
            assert max(ages) <= bound
            oldest = max(oldest, *ages)
            assert update.missed_after == [version - taken[j] for j in range(workers)]
    return held_by_bound, oldest


@pytest.mark.parametrize("barrier,bound,delay,seed", [
    (1, 2, "const:1,1,1,6", 0),
    (2, 3, "const:1,1,1,6", 1),
    (1, 4, "straggler:0.25,8", 2),
])
def test_the_delay_bound_is_never_exceeded(config, monkeypatch, barrier, bound, delay, seed):
    """4 workers, one of them 6-8 times slower (seeded): the fast ones run into the bound and wait for it."""
    log = ServerLog(monkeypatch)
    run = config("async-admm", {"partial_barrier": barrier, "max_delay": bound}, **CONVERGENCE, rounds=120,
                 eval_every=10, delay=delay, seed=seed)
    assert run_local(run, workers=4) == 0
    held_by_bound, oldest = check_the_rule(log.updates, 4, barrier, bound)
    assert held_by_bound > 0 and oldest == bound  # the bound was reached and held
    last = read_csv(run.out)[-1]
    assert last["round"] == 120 and last["updates"] == len(log.updates)
    assert last["staleness_max"] == max(update.staleness for update in log.updates) <= bound - 1


# --- refused values ------------------------------------------------------------------------------

@pytest.mark.parametrize("params,fragment", [
    ({"partial_barrier": 3}, "--partial-barrier must be between 1 and the 2 workers, got 3"),
    ({"partial_barrier": 0}, "--partial-barrier must be between 1 and the 2 workers, got 0"),
    ({"max_delay": 0}, "--max-delay must be at least 1, got 0"),
    ({"rho": 0.0}, "--rho must be a positive number"),
    ({"local_iters": 0}, "--local-iters must be at least 1"),
])
def test_impossible_values_are_refused_at_build(problem, params, fragment):
    with pytest.raises(UsageError, match="async-admm") as error:
        REGISTRY["async-admm"].build(problem, Settings(0.1, None, workers=2, seed=0), **params)
    assert fragment in str(error.value)


def test_a_mini_batch_is_refused(problem):
    with pytest.raises(UsageError, match="async-admm solves each client's problem on its whole shard"):
        REGISTRY["async-admm"].build(problem, Settings(0.1, 16, workers=2, seed=0))


def test_a_barrier_above_the_worker_count_is_refused_by_the_ranks(config, tmp_path):
    run = config("async-admm", {"partial_barrier": 4}, data="breast_cancer")
    with pytest.raises(UsageError, match="--partial-barrier must be between 1 and the 3 workers, got 4"):
        run_local(run, workers=3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["train", "async-admm", "--partial-barrier", "0"],
    ["train", "async-admm", "--max-delay", "0"],
    ["train", "async-admm", "--set", "max_delay=1.5"],
    ["train", "async-admm", "--rho", "-1"],
    ["train", "async-admm", "--workers", "2", "--partial-barrier", "3"],  # known once the ranks start
])
def test_the_command_line_refuses_them_in_one_line(capsys, tmp_path, args):
    assert_refused_in_one_line(capsys, tmp_path, args)


# --- under mpiexec ---------------------------------------------------------------------------------

def test_async_admm_reaches_the_reference_under_mpiexec(tmp_path):
    """4 ranks (3 workers), A = 2, τ = 3, 150 z updates: measured gaps 1.1e-10 to 1.7e-10 (seeds 0-2)."""
    out = tmp_path / "async-admm.csv"
    done = dmlcli_mpi(4, "train", "async-admm", *PROBLEM, "--partial-barrier", "2", "--max-delay", "3",
                      "--rounds", "150", "--out", str(out), timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert gaps(out, "async-admm")[-1] <= 1e-2
    last = read_csv(out)[-1]
    assert last["round"] == 150 and last["staleness_max"] <= 2

"""ssp, stale synchronous parallel (Ho et al. 2013): the server rule by hand, the staleness bound
under seeded random delays, s = 0 as ssgd's CSV, and a large s as asgd."""

import random
import threading
import time

import numpy as np
import pytest

from conftest import LAM, assert_refused_in_one_line, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.algorithms.base import Outcome
from dmlcli.errors import UsageError
from dmlcli.problems import Shard
from dmlcli.report import read_csv
from dmlcli.runtime import setup
from dmlcli.runtime.local_run import run_local

FULL = dict(data="breast_cancer", batch_size=None, lam=0.01)
TRUE_W = np.array([1.0, -2.0, 0.5])


def shards(rows=(4, 6)):
    """Shards of the by-hand problem (n = 10 rows over them), clients 0, 1, …"""
    out = []
    for k, size in enumerate(rows):
        X = np.random.default_rng(k).normal(size=(size, 3))
        out.append(Shard(X, X @ TRUE_W, np.random.default_rng(k), client=k))
    return out


def grad(w, shard):
    return shard.X.T @ (shard.X @ w - shard.y) / shard.n


def prox(v, step):
    return v / (1.0 + step * LAM)  # the by-hand problem's (λ/2)‖w‖²


# --- the rule by hand ----------------------------------------------------------------------------

def test_the_server_rule_by_hand(problem):
    """K = 2, s = 1, η = 0.1: each gradient moves w by Kη (n_k/n) g_k at once; the prox of the
    regulariser of the gradients taken since the last completed clock is in the served model and
    committed when the slowest clock advances; a worker 2 clocks ahead is held until it is 1 ahead."""
    eta, K = 0.1, 2
    algorithm = REGISTRY["ssp"].build(problem, Settings(eta, None, K, 0), staleness_bound=1)
    first, second = shards()
    w0 = np.array([0.3, 0.0, -0.1])
    state = algorithm.server_init(w0)
    assert state.clocks == [0, 0] and algorithm.model(state) is state.w

    payload, _ = algorithm.worker_step(None, w0, first)
    np.testing.assert_allclose(payload, [*(0.4 * grad(w0, first)), 0.4, 0.0], rtol=1e-15)
    state, outcome = algorithm.server_update(state, payload, 0)  # worker 0 completes clock 1; min still 0
    assert outcome == Outcome() and state.clocks == [1, 0]
    w = w0 - K * eta * 0.4 * grad(w0, first)
    np.testing.assert_allclose(state.w, w, rtol=1e-15)
    served = algorithm.model(state)
    np.testing.assert_allclose(served, prox(w, K * eta * 0.4), rtol=1e-15)  # its share of the regulariser

    payload, _ = algorithm.worker_step(None, served, first)
    state, outcome = algorithm.server_update(state, payload, 0)  # worker 0 at clock 2, worker 1 at 0: 2 > s
    assert state.clocks == [2, 0] and outcome == Outcome() and not algorithm.may_start(state, 0)  # held
    w = w - K * eta * 0.4 * grad(served, first)
    np.testing.assert_allclose(algorithm.model(state), prox(w, K * eta * 0.8), rtol=1e-15)

    payload, _ = algorithm.worker_step(None, w0, second)
    state, outcome = algorithm.server_update(state, payload, 0)  # worker 1 completes clock 1: min 0 → 1
    assert state.clocks == [2, 1] and outcome == Outcome(advanced=True)
    assert algorithm.may_start(state, 0) and algorithm.may_start(state, 1)  # worker 0 is now 1 ahead: it may go on
    w = prox(w - K * eta * 0.6 * grad(w0, second), K * eta * (0.8 + 0.6))
    np.testing.assert_allclose(state.w, w, rtol=1e-15)
    assert state.pending == 0.0 and algorithm.model(state) is state.w


def test_with_s_0_one_clock_is_one_proximal_gradient_step_of_k_eta(problem):
    """Every worker's gradient of w_c, then w_{c+1} = prox_{Kηr}(w_c − Kη Σ_k (n_k/n) g_k(w_c))."""
    eta = 0.05
    algorithm = REGISTRY["ssp"].build(problem, Settings(eta, None, 2, 0), staleness_bound=0)
    parts = shards()
    w = np.array([0.3, 0.0, -0.1])
    state = algorithm.server_init(w)
    for _ in range(3):
        payloads = [algorithm.worker_step(None, algorithm.model(state), shard)[0] for shard in parts]
        state, first = algorithm.server_update(state, payloads[0], 0)
        assert first == Outcome() and not algorithm.may_start(state, 0)  # held until the clock completes
        state, last = algorithm.server_update(state, payloads[1], 0)
        assert last == Outcome(advanced=True) and algorithm.may_start(state, 0) and algorithm.may_start(state, 1)
        w = prox(w - 2 * eta * (0.4 * grad(w, parts[0]) + 0.6 * grad(w, parts[1])), 2 * eta)
        np.testing.assert_allclose(algorithm.model(state), w, rtol=1e-14)


# --- the bound under seeded random delays --------------------------------------------------------

class ClockLog:
    """The run's ssp with each worker step delayed by a seeded random time, and every server update
    recorded: (worker, clocks before, staleness, advanced, held, clocks after)."""

    def __init__(self, monkeypatch, delay):
        self.updates, self.lock = [], threading.Lock()
        original = setup.algorithm_for

        def algorithm_for(config, problem, workers, lr):
            algorithm = original(config, problem, workers, lr)
            d = problem.d

            def worker_step(state, w, shard):
                time.sleep(delay(shard.client))
                return algorithm.worker_step(state, w, shard)

            def server_update(state, payload, staleness):
                before = list(state.clocks)
                state, outcome = algorithm.server_update(state, payload, staleness)
                k = int(payload[d + 1])
                held = not algorithm.may_start(state, k)  # one client per worker: k steps next
                self.updates.append((k, before, staleness, outcome.advanced, held, list(state.clocks)))
                return state, outcome

            return algorithm._replace(worker_step=worker_step, server_update=server_update)

        monkeypatch.setattr(setup, "algorithm_for", algorithm_for)


def check_the_bound(updates, bound, workers):
    """The invariants of the stale-synchronous bound s, over every payload the server took:
    1. the model's version is the slowest clock (the version counts completed clocks);
    2. the model worker k computed from was served while k's clock was at most s ahead of the
       slowest: the reply's version (now − staleness) is ≥ c_k − s, c_k being k's clock when it was
       served (it moves only when k's own payload arrives, so it is k's clock before this update);
    3. so the staleness is at most s, and no clock is ever more than s + 1 ahead of the slowest;
    4. a worker is held exactly when its clock is more than s ahead of the slowest after its update.
    Returns the number of held payloads and the largest spread seen."""
    version, held, widest = 0, 0, 0
    for k, before, staleness, advanced, hold, after in updates:
        assert version == min(before)
        assert before[k] - (version - staleness) <= bound, (k, before, staleness)
        assert 0 <= staleness <= bound
        assert after[k] == before[k] + 1 and sum(after) == sum(before) + 1
        assert max(after) - min(after) <= bound + 1
        assert hold == (after[k] - min(after) > bound)
        assert advanced == (min(after) > min(before))
        version += advanced
        held += hold
        widest = max(widest, max(after) - min(after))
    return held, widest


@pytest.mark.parametrize("bound,seed", [(0, 0), (1, 1), (3, 2), (3, 3)])
def test_the_bound_is_never_exceeded_under_seeded_random_delays(config, monkeypatch, bound, seed):
    """4 workers; worker k sleeps a seeded uniform 0 to (k + 1)·0.4 ms before each step, so the
    fast ones run into the bound. See check_the_bound for the invariants checked at every payload."""
    rngs = [random.Random(seed * 100 + client) for client in range(4)]
    log = ClockLog(monkeypatch, delay=lambda client: rngs[client].uniform(0.0, (client + 1) * 4e-4))
    run = config("ssp", {"staleness_bound": bound}, batch_size=8, rounds=150, eval_every=10, seed=seed)
    assert run_local(run, workers=4) == 0
    held, widest = check_the_bound(log.updates, bound, 4)
    assert held > 0 and widest == bound + 1  # the bound was reached and held
    rows = read_csv(run.out)
    assert rows[-1]["round"] == 150 and rows[-1]["updates"] == len(log.updates)
    assert rows[-1]["staleness_max"] <= bound


# --- s = 0 is ssgd, a large s is asgd ------------------------------------------------------------

@pytest.mark.parametrize("lr", [None, 0.1])  # None: --lr auto
def test_s_0_gives_ssgd_s_csv(config, lr):
    """With s = 0 every worker of a clock is served the same model, and a clock is ssgd's round with
    step Kη. --lr auto is 1/(L·K) for ssp (asynchronous) and 1/L for ssgd: the same step. An explicit
    --lr x for ssp is ssgd's K·x."""
    K = 3
    ssgd = config("ssgd", **FULL, lr=lr and K * lr, rounds=150, eval_every=5)
    ssp = config("ssp", {"staleness_bound": 0}, **FULL, lr=lr, rounds=150, eval_every=5)
    for run in (ssgd, ssp):
        assert run_local(run, workers=K) == 0
    np.testing.assert_allclose(objectives(ssp.out), objectives(ssgd.out), rtol=1e-12)
    rows = read_csv(ssp.out)
    assert [row["round"] for row in rows] == [row["round"] for row in read_csv(ssgd.out)]
    assert all(row["updates"] == K * row["round"] and row["staleness_max"] == 0 for row in rows)
    assert rows[-1]["epochs"] == pytest.approx(150)


def test_a_large_s_holds_no_one_and_converges_as_asgd(config, monkeypatch):
    """s = 10⁶: no worker is ever held, each gradient moves w by Kη n_k/n ≈ η as asgd's, and it
    reaches the optimum as asgd does (tests/test_runs.py: min gap ≤ 1e-3, last ≤ 1e-2 after 2000
    updates). Measured, 3 workers, 2000 clocks (about 6000 gradients), seeds 0-4: best gaps
    3e-6 to 9e-6, last 7e-6 to 6e-3, median of the last ten 2e-5 to 4e-4; asgd with 6000 updates:
    2e-6 to 1e-5, 1e-5 to 2e-4, 2e-5 to 6e-5."""
    log = ClockLog(monkeypatch, delay=lambda client: 0.0)
    run = config("ssp", {"staleness_bound": 10**6}, **FULL, rounds=2000)
    assert run_local(run, workers=3) == 0
    assert not any(held for *_, held, _ in log.updates)
    optimum = reference_objective(run)
    gaps = [(value - optimum) / optimum for value in objectives(run.out)]
    assert min(gaps) <= 1e-3 and gaps[-1] <= 1e-2
    last = read_csv(run.out)[-1]
    assert last["round"] == 2000 and last["updates"] >= 3 * 2000


def test_the_default_bound_reaches_the_reference(config):
    """s = 3 (the default), 3 workers, 2000 clocks: measured best gaps 4e-7 to 9e-7 and last
    2e-6 to 5e-5 over seeds 0-4."""
    run = config("ssp", **FULL, rounds=2000)
    assert run_local(run, workers=3) == 0
    optimum = reference_objective(run)
    gaps = [(value - optimum) / optimum for value in objectives(run.out)]
    assert min(gaps) <= 1e-4 and gaps[-1] <= 1e-2
    last = read_csv(run.out)[-1]
    assert last["staleness_max"] <= 3 and list(last)[-2:] == ["staleness_mean", "staleness_max"]


# --- refused values ------------------------------------------------------------------------------

def test_a_negative_bound_is_refused_at_build(problem):
    with pytest.raises(UsageError, match="ssp: --staleness-bound must be 0 or more"):
        REGISTRY["ssp"].build(problem, Settings(0.1, None, 2, 0), staleness_bound=-1)


@pytest.mark.parametrize("args", [
    ["train", "ssp", "--staleness-bound", "-1"],
    ["train", "ssp", "--set", "staleness_bound=1.5"],
    ["train", "ssp", "--clients", "8"],
])
def test_the_command_line_refuses_impossible_values(capsys, tmp_path, args):
    assert_refused_in_one_line(capsys, tmp_path, args)


"""aeasgd, asynchronous EASGD (Zhang, Choromanska, LeCun 2015, Algorithm 1): one exchange by hand,
one worker against the rule computed by hand, convergence, and refused values."""

import numpy as np
import pytest

from conftest import LAM, assert_refused_in_one_line, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.algorithms.base import APPLIED
from dmlcli.errors import UsageError
from dmlcli.problems import Shard
from dmlcli.report import read_csv
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.setup import centralised_problem

TRUE_W = np.array([1.0, -2.0, 0.5])


def shard_and_twin(rows=6, seed=0):
    """A shard and a twin whose sampler draws the same batches."""
    X = np.random.default_rng(seed).normal(size=(rows, 3))
    y = X @ TRUE_W + 0.1 * np.random.default_rng(seed + 1).normal(size=rows)
    return [Shard(X, y, np.random.default_rng(seed + 2), client=0) for _ in range(2)]


def test_one_exchange_by_hand(problem):
    """τ = 3 prox-SGD steps on mini-batches of 2, then e = α(x − w̃), x ← x − e; the server w̃ ← w̃ + e.
    The elastic force is symmetric: x + w̃ is the same before and after the exchange."""
    eta, rho, tau = 0.05, 4.0, 3
    alpha = eta * rho
    algorithm = REGISTRY["aeasgd"].build(problem, Settings(eta, 2, workers=2, seed=0), rho=rho, period=tau)
    shard, twin = shard_and_twin()
    w0 = np.array([0.3, 0.0, -0.1])
    x, centre = algorithm.worker_init(w0), algorithm.server_init(w0)
    assert x is not w0 and centre is not w0
    centre = centre + np.array([0.2, -0.4, 0.1])  # another worker's exchange has moved the centre
    served = centre.copy()
    e, x_after = algorithm.worker_step(x, served, shard)
    np.testing.assert_array_equal(served, centre)  # the received model is not written to
    local = w0.copy()
    for _ in range(tau):
        X, y = twin.batch(2)
        local = (local - eta * X.T @ (X @ local - y) / 2) / (1 + eta * LAM)
    np.testing.assert_allclose(e, alpha * (local - centre), rtol=1e-14)
    np.testing.assert_allclose(x_after, local - e, rtol=1e-14)
    new_centre, outcome = algorithm.server_update(centre, e, staleness=2)
    assert outcome == APPLIED
    np.testing.assert_allclose(new_centre, centre + alpha * (local - centre), rtol=1e-14)
    np.testing.assert_allclose(x_after + new_centre, local + centre, rtol=1e-14)
    assert algorithm.model(new_centre) is new_centre


@pytest.mark.parametrize("rho", [1.5, 2.5])  # α = 0.3 and α = 1/2
def test_one_worker_is_the_rule_by_hand(config, rho):
    """One worker, B = all: no staleness, so the centre after each exchange is the recursion
        x ← G^τ(x),  e = α(x − w̃),  x ← x − e,  w̃ ← w̃ + e,
    G a proximal gradient step on F. With α = 1/2 the exchange meets in the middle (x = w̃ after
    it), so w̃ ← (w̃ + G^τ(w̃))/2: an averaged τ-step proximal gradient descent."""
    eta, tau, rounds = 0.2, 3, 15
    run = config("aeasgd", {"rho": rho, "period": tau}, data="breast_cancer", batch_size=None, lam=0.05, lr=eta,
                 rounds=rounds, eval_every=1, test_fraction=0.0)
    assert run_local(run, workers=1) == 0
    problem, X, y = centralised_problem(run)
    alpha = eta * rho

    def G(v):
        for _ in range(tau):
            v = problem.reg.prox(v - eta * problem.grad_mean(v, X, y), eta)
        return v

    def F(v):
        return problem.objective(v, problem.loss_sum(v, X, y))

    x = centre = np.zeros(problem.d)
    expected = [F(centre)]
    for _ in range(rounds):
        if alpha == 0.5:
            centre = (centre + G(centre)) / 2
        else:
            x = G(x)
            e = alpha * (x - centre)
            x, centre = x - e, centre + e
        expected.append(F(centre))
    np.testing.assert_allclose(objectives(run.out), expected, rtol=1e-10)
    assert {row["staleness_max"] for row in read_csv(run.out)} == {0}


def test_reaches_the_reference_on_breast_cancer(config):
    """3 workers, B = all, τ = 5, default α = 0.9/K, --lr auto (1/(L·K) for the asynchronous family),
    1000 exchanges: relative gap ≤ 1e-2. Measured over seeds 0-4: 1.2e-3 to 2.3e-3 (B = 16: 1.5e-3 to
    1.8e-3; 4000 exchanges, B = all: 9e-5 to 7e-4). Like easgd the centre settles near the optimum, not
    on it: the local models stay about τ∇f_k/ρ from it."""
    run = config("aeasgd", {"period": 5}, data="breast_cancer", batch_size=None, lam=0.01, rounds=1000)
    assert run_local(run, workers=3) == 0
    optimum = reference_objective(run)
    rows = read_csv(run.out)
    assert (rows[-1]["objective"] - optimum) / optimum <= 1e-2
    last = rows[-1]
    assert last["round"] == last["updates"] == 1000  # one server update an exchange
    assert last["epochs"] == pytest.approx(1000 * 5 / 3, rel=0.01)  # τ = 5 passes over a third of the rows each
    assert list(last)[-2:] == ["staleness_mean", "staleness_max"]


# --- refused values ------------------------------------------------------------------------------

@pytest.mark.parametrize("params,fragment", [
    ({"rho": 20.0}, "α = η·ρ = 0.05 × 20 = 1 must be below 1"),
    ({"rho": 100.0}, "must be below 1"),
    ({"rho": -1.0}, "--rho must be positive"),
    ({"rho": 0.0}, "--rho must be positive"),
    ({"period": 0}, "--period must be at least 1"),
])
def test_impossible_values_are_refused_at_build(problem, params, fragment):
    with pytest.raises(UsageError, match="aeasgd: ") as error:
        REGISTRY["aeasgd"].build(problem, Settings(0.05, None, workers=2, seed=0), **params)
    assert fragment in str(error.value)


def test_the_default_coupling_is_the_paper_s_beta_0_9(problem):
    """No --rho: α = 0.9/K whatever η, so it is always below 1."""
    for eta in (1e-3, 0.5, 50.0):
        algorithm = REGISTRY["aeasgd"].build(problem, Settings(eta, None, workers=3, seed=0))
        x, centre = np.ones(3), np.zeros(3)
        # a huge step makes the local steps meaningless, but the elastic step is still α(x − w̃)
        e, _ = algorithm.worker_step(x, centre, Shard(np.zeros((2, 3)), np.zeros(2), np.random.default_rng(0)))
        x_local = x / (1 + eta * LAM)  # zero features: a local step is the prox alone
        np.testing.assert_allclose(e, 0.3 * x_local, rtol=1e-14)


def test_alpha_is_checked_against_the_resolved_step(config, tmp_path):
    run = config("aeasgd", {"rho": 2.0}, lr=0.5, data="breast_cancer")  # α = 1
    with pytest.raises(UsageError, match="α = η·ρ"):
        run_local(run, workers=3)
    assert list(tmp_path.iterdir()) == []
    fine = config("aeasgd", {"rho": 1.9}, lr=0.5, rounds=5, data="breast_cancer")
    assert run_local(fine, workers=3) == 0


@pytest.mark.parametrize("args", [
    ["train", "aeasgd", "--rho", "0"],
    ["train", "aeasgd", "--period", "0"],
    ["train", "aeasgd", "--set", "period=1.5"],
])
def test_the_command_line_refuses_them_in_one_line(capsys, tmp_path, args):
    assert_refused_in_one_line(capsys, tmp_path, args)

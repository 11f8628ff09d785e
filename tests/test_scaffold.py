"""scaffold: two rounds by hand (model and controls), the exact equivalence with ssgd, convergence to the
centralised reference where ma stalls (label skew), and refused hyper-parameters."""

import numpy as np
import pytest
from test_sync_family import rounds_by_hand, shard_pair

from conftest import LAM, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.errors import UsageError
from dmlcli.runtime.local_run import run_local

W0 = np.array([0.3, 0.0, -0.1])


def simulate(algorithm, shards, w0, rounds):
    """Each round's states of ranks 0..K (rounds_by_hand), checking that every rank also holds the
    same server control c."""
    history = []
    for states in rounds_by_hand(algorithm, shards, w0, rounds):
        for _, c, _ in states[1:]:
            np.testing.assert_array_equal(c, states[0][1])
        history.append([tuple(part.copy() for part in state) for state in states])
    return history


def grad(w, X, y):
    return X.T @ (X @ w - y) / y.shape[0]


def prox(v, step):
    return v / (1.0 + step * LAM)  # prox of (λ/2)‖w‖²: a shrink


# --- by hand -----------------------------------------------------------------------------------

def test_two_rounds_by_hand(problem):
    """Shards of 4 and 6 rows (w_k = 0.4, 0.6), M = 3, B = 2, η_l ≠ --lr, η_g ≠ 1. The second round is the
    one where the controls act: c_k ≠ c, so the local steps are corrected."""
    lr, eta_l, eta_g, steps = 0.9, 0.05, 1.5, 3
    algorithm = REGISTRY["scaffold"].build(problem, Settings(lr, 2, workers=2, seed=0), local_steps=steps,
                                           local_lr=eta_l, global_lr=eta_g)
    assert algorithm.local_steps == steps and algorithm.message_size == 6
    shards, twins = shard_pair(seed=7)
    history = simulate(algorithm, shards, W0, rounds=2)
    weights = (0.4, 0.6)
    x, c, controls = W0.copy(), np.zeros(3), [np.zeros(3), np.zeros(3)]
    for states in history:
        ends, new_controls = [], []
        for twin, c_k in zip(twins, controls):
            y = x.copy()
            for _ in range(steps):
                X, t = twin.batch(2)
                y = prox(y - eta_l * (grad(y, X, t) - c_k + c), eta_l)
            ends.append(y)
            new_controls.append(c_k - c + (x - y) / (steps * eta_l))
        c = c + sum(w * (new - old) for w, new, old in zip(weights, new_controls, controls))
        x = x + eta_g * sum(w * (y - x) for w, y in zip(weights, ends))
        controls = new_controls
        for rank, (model, server_control, own_control) in enumerate(states):
            np.testing.assert_allclose(model, x, rtol=1e-13)
            np.testing.assert_allclose(server_control, c, rtol=1e-13)
            # workers keep their own control; rank 0 has no data and keeps c_k = 0
            np.testing.assert_allclose(own_control, controls[rank - 1] if rank else np.zeros(3), rtol=1e-13)
        # the invariant that makes the fixed point F's optimum: c is the n_k-weighted mean of the c_k
        np.testing.assert_allclose(c, 0.4 * controls[0] + 0.6 * controls[1], rtol=1e-13, atol=1e-15)
    assert not np.allclose(controls[0], c)  # the controls did act in round 2


def test_combine_does_not_keep_the_runtimes_buffer(problem):
    algorithm = REGISTRY["scaffold"].build(problem, Settings(0.1, None, workers=2, seed=0))
    buffer = np.ones(6)
    state = algorithm.combine(algorithm.init(W0), buffer)
    buffer[:] = 7.0
    np.testing.assert_array_equal(algorithm.model(state), W0 + 1.0)
    np.testing.assert_array_equal(state[1], np.ones(3))


# --- exact equivalence, whole runs -------------------------------------------------------------

COMMON = dict(data="breast_cancer", lam=0.01, seed=3, eval_every=1, rounds=40, batch_size=16)


def test_one_local_step_and_unit_global_lr_is_ssgd(config):
    """Same seed, same mini-batches, l2: with M = 1, η_g = 1 every CSV objective equals ssgd's (rtol 1e-12).
    y_k = prox(x − η(g_k − c_k + c)), the l2 prox is linear and Σ_k (n_k/n)(c − c_k) = 0 after every round
    (c starts at 0 = every c_k and its update is the n_k-weighted mean of the c_k updates), so
    x + Σ_k (n_k/n)(y_k − x) = prox(x − η Σ_k (n_k/n) g_k): ssgd's step, up to rounding. The controls are
    not zero after round 1 (c_k ≠ c), so a uniform instead of n_k/n weighting would break this."""
    ssgd = config("ssgd", **COMMON)
    scaffold = config("scaffold", params={"local_steps": 1, "global_lr": 1.0}, **COMMON)
    for run in (ssgd, scaffold):
        assert run_local(run, workers=3) == 0
    np.testing.assert_allclose(objectives(scaffold.out), objectives(ssgd.out), rtol=1e-12)
    assert len(objectives(scaffold.out)) == 41


def test_a_global_lr_other_than_one_is_not_ssgd(config):
    """The equivalence above can fail."""
    ssgd = config("ssgd", **COMMON)
    scaffold = config("scaffold", params={"local_steps": 1, "global_lr": 0.5}, **COMMON)
    for run in (ssgd, scaffold):
        assert run_local(run, workers=3) == 0
    assert not np.allclose(objectives(scaffold.out)[1:], objectives(ssgd.out)[1:], rtol=1e-6)


# --- convergence to the centralised reference --------------------------------------------------

# B = all, M = 5, --lr auto (1/L), 400 rounds, 3 workers, seeds 0-4: scaffold's relative gap was at most
# 8.3e-9 under both partitions (300 rounds: 2.7e-7); ma's at the same budget 2.0e-5 to 3.9e-5
# (shuffle) and 1.6e-5 to 2.1e-4 (dirichlet:0.3), where its local drift leaves it.
CONVERGENCE = dict(data="breast_cancer", lam=0.01, loss="logistic", batch_size=None, rounds=400)


def relative_gap(run):
    optimum = reference_objective(run)
    return (objectives(run.out)[-1] - optimum) / optimum


@pytest.mark.parametrize("partition", ["shuffle", "dirichlet:0.3"])
def test_reaches_the_reference_solution(config, partition):
    run = config("scaffold", params={"local_steps": 5}, partition=partition, **CONVERGENCE)
    assert run_local(run, workers=3) == 0
    assert relative_gap(run) <= 1e-6


@pytest.mark.parametrize("seed", [0, 4])
def test_beats_ma_under_label_skew(config, seed):
    runs = {name: config(name, params={"local_steps": 5}, partition="dirichlet:0.3", seed=seed, **CONVERGENCE)
            for name in ("scaffold", "ma")}
    for run in runs.values():
        assert run_local(run, workers=3) == 0
    scaffold, ma = relative_gap(runs["scaffold"]), relative_gap(runs["ma"])
    assert ma > 1e-6  # ma's fixed point is not F's optimum
    assert scaffold < ma / 100


# --- refused hyper-parameters ------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"local_steps": 0},
    {"local_steps": -3},
    {"global_lr": 0.0},
    {"global_lr": -1.0},
    {"local_lr": 0.0},
    {"local_lr": -0.1},
])
def test_impossible_hyper_parameters_are_refused_at_build(problem, params):
    with pytest.raises(UsageError, match="scaffold"):
        REGISTRY["scaffold"].build(problem, Settings(0.05, None, workers=2, seed=0), **params)

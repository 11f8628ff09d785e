"""The synchronous family (ma, bmuf, easgd, dadam, storm): updates by hand, the exact equivalences
between them, every synchronous algorithm of the registry reaching the centralised reference,
counters, and refused hyper-parameters."""

import numpy as np
import pytest

from conftest import LAM, N, assert_refused_in_one_line, objectives, reference_objective
from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.errors import UsageError
from dmlcli.problems import Shard
from dmlcli.report import read_csv
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.setup import centralised_problem

TRUE_W = np.array([1.0, -2.0, 0.5])


def shard_pair(seed=0):
    """Two shards of 4 and 6 rows (n = 10), each with a twin whose sampler draws the same batches."""
    shards, twins = [], []
    for k, rows in enumerate((4, 6)):
        X = np.random.default_rng(seed + k).normal(size=(rows, 3))
        y = X @ TRUE_W + 0.1 * np.random.default_rng(seed + 10 + k).normal(size=rows)
        for pair in (shards, twins):
            pair.append(Shard(X, y, np.random.default_rng(seed + 20 + k)))
            pair[-1].weight = rows / N  # as the runtime weights it when every client takes part
    return shards, twins


def rounds_by_hand(algorithm, shards, w0, rounds):
    """The sync runtime by hand: rank 0 (no shard) sends zeros. Yields every rank's state after
    each round, having checked that every rank holds the same model."""
    states = [algorithm.init(w0) for _ in range(len(shards) + 1)]
    for _ in range(rounds):
        summed = np.zeros(algorithm.message_size)
        for k, shard in enumerate(shards, start=1):
            message, states[k] = algorithm.local(states[k], shard)
            summed += message
        states = [algorithm.combine(state, summed.copy()) for state in states]
        for state in states[1:]:
            np.testing.assert_array_equal(algorithm.model(state), algorithm.model(states[0]))
        yield states


def simulate(algorithm, shards, w0, rounds):
    """The model after each round of rounds_by_hand."""
    return [algorithm.model(states[0]).copy() for states in rounds_by_hand(algorithm, shards, w0, rounds)]


def grad(w, X, y):
    return X.T @ (X @ w - y) / y.shape[0]


def prox(v, step):
    return v / (1.0 + step * LAM)  # prox of (λ/2)‖w‖²: a shrink


W0 = np.array([0.3, 0.0, -0.1])


# --- one or two updates by hand ----------------------------------------------------------------

def test_easgd_round_by_hand(problem):
    eta, rho, tau = 0.05, 4.0, 2
    algorithm = REGISTRY["easgd"].build(problem, Settings(eta, 2, workers=2, seed=0), rho=rho, period=tau)
    shards, twins = shard_pair()
    alpha = eta * rho
    beta = 2 * alpha
    models = simulate(algorithm, shards, W0, rounds=2)
    centre, local = W0.copy(), [W0.copy(), W0.copy()]
    for model in models:
        for k, twin in enumerate(twins):
            for _ in range(tau):
                X, y = twin.batch(2)
                local[k] = prox(local[k] - eta * grad(local[k], X, y), eta)
        mean = 0.4 * local[0] + 0.6 * local[1]  # n_k/n
        local = [w - alpha * (w - centre) for w in local]
        centre = (1 - beta) * centre + beta * mean
        np.testing.assert_allclose(model, centre, rtol=1e-13)
    assert algorithm.local_steps == tau


def test_bmuf_nesterov_rounds_by_hand(problem):
    eta, mu, zeta, steps = 0.05, 0.6, 1.3, 2
    algorithm = REGISTRY["bmuf"].build(problem, Settings(eta, 3, workers=2, seed=0), local_steps=steps,
                                       block_momentum=mu, block_lr=zeta, nesterov=True)
    shards, twins = shard_pair(seed=5)
    models = simulate(algorithm, shards, W0, rounds=3)
    w, start, delta = W0.copy(), W0.copy(), np.zeros(3)
    for model in models:
        ends = []
        for twin in twins:
            v = start.copy()
            for _ in range(steps):
                X, y = twin.batch(3)
                v = prox(v - eta * grad(v, X, y), eta)
            ends.append(v)
        mean = 0.4 * ends[0] + 0.6 * ends[1]
        delta = mu * delta + zeta * (mean - start)
        w = w + delta
        start = w + mu * delta  # the next block starts at the look-ahead
        np.testing.assert_allclose(model, w, rtol=1e-13)
    assert algorithm.local_steps == steps


def test_dadam_first_two_rounds_by_hand(problem):
    eta, b1, b2, eps = 0.1, 0.8, 0.95, 1e-8
    algorithm = REGISTRY["dadam"].build(problem, Settings(eta, None, workers=2, seed=0), beta1=b1, beta2=b2, eps=eps)
    shards, _ = shard_pair(seed=2)
    models = simulate(algorithm, shards, W0, rounds=2)

    def full_gradient(w):
        return sum((s.n / N) * grad(w, s.X, s.y) for s in shards)

    g1 = full_gradient(W0)
    step1 = eta / (np.abs(g1) + eps)  # m̂ = g, v̂ = g² after bias correction
    w1 = (W0 - step1 * g1) / (1 + step1 * LAM)  # the l2 prox with Adam's per-coordinate step
    np.testing.assert_allclose(models[0], w1, rtol=1e-13)
    g2 = full_gradient(w1)
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    step2 = eta / (np.sqrt(v / (1 - b2**2)) + eps)
    np.testing.assert_allclose(models[1], (w1 - step2 * m / (1 - b1**2)) / (1 + step2 * LAM), rtol=1e-13)


def test_storm_first_two_rounds_by_hand(problem):
    eta, a = 0.1, 0.3
    algorithm = REGISTRY["storm"].build(problem, Settings(eta, 2, workers=2, seed=0), momentum=a)
    shards, twins = shard_pair(seed=3)
    models = simulate(algorithm, shards, W0, rounds=2)
    batches = [twin.batch(2) for twin in twins]
    d = [grad(W0, X, y) for X, y in batches]
    w1 = prox(W0 - eta * (0.4 * d[0] + 0.6 * d[1]), eta)
    np.testing.assert_allclose(models[0], w1, rtol=1e-13)
    batches = [twin.batch(2) for twin in twins]  # ξ is fresh each round, both gradients on the same ξ
    d = [grad(w1, X, y) + (1 - a) * (d_k - grad(W0, X, y)) for d_k, (X, y) in zip(d, batches)]
    np.testing.assert_allclose(models[1], prox(w1 - eta * (0.4 * d[0] + 0.6 * d[1]), eta), rtol=1e-13)


def test_ma_combine_does_not_keep_the_runtimes_buffer(problem):
    algorithm = REGISTRY["ma"].build(problem, Settings(0.1, None, workers=2, seed=0))
    buffer = np.ones(3)
    state = algorithm.combine(algorithm.init(W0), buffer)
    buffer[:] = 7.0  # the runtime writes the next round's message into it
    np.testing.assert_array_equal(algorithm.model(state), W0 + 1.0)


# --- exact equivalences, whole runs ------------------------------------------------------------

COMMON = dict(data="breast_cancer", lam=0.01, seed=3, eval_every=1, rounds=40)


def test_ma_with_one_local_step_is_ssgd(config):
    """Same seed, same mini-batches: M = 1 model averaging with the (linear) l2 prox is ssgd."""
    ssgd = config("ssgd", batch_size=16, **COMMON)
    ma = config("ma", params={"local_steps": 1}, batch_size=16, **COMMON)
    for run in (ssgd, ma):
        assert run_local(run, workers=3) == 0
    np.testing.assert_allclose(objectives(ma.out), objectives(ssgd.out), rtol=1e-12)
    assert len(objectives(ma.out)) == 41


@pytest.mark.parametrize("nesterov", [True, False])
def test_bmuf_without_block_momentum_is_ma(config, nesterov):
    ma = config("ma", params={"local_steps": 3}, batch_size=16, **COMMON)
    bmuf = config("bmuf", params={"local_steps": 3, "block_momentum": 0.0, "block_lr": 1.0, "nesterov": nesterov},
                  batch_size=16, **COMMON)
    for run in (ma, bmuf):
        assert run_local(run, workers=3) == 0
    np.testing.assert_allclose(objectives(bmuf.out), objectives(ma.out), rtol=1e-12)


def test_bmuf_with_block_momentum_is_not_ma(config):
    """The equivalence above can fail: with μ > 0 the runs differ."""
    ma = config("ma", params={"local_steps": 3}, batch_size=16, **COMMON)
    bmuf = config("bmuf", params={"local_steps": 3, "block_momentum": 0.5}, batch_size=16, **COMMON)
    for run in (ma, bmuf):
        assert run_local(run, workers=3) == 0
    assert not np.allclose(objectives(bmuf.out)[1:], objectives(ma.out)[1:], rtol=1e-6)


def test_storm_with_full_local_gradients_is_ssgd(config):
    """B = all: d_k − ∇f_k(w_{t−1}) is exactly zero, so d_k is the local gradient for every a."""
    ssgd = config("ssgd", batch_size=None, **COMMON)
    storm = config("storm", params={"momentum": 0.3}, batch_size=None, **COMMON)
    for run in (ssgd, storm):
        assert run_local(run, workers=3) == 0
    np.testing.assert_allclose(objectives(storm.out), objectives(ssgd.out), rtol=1e-12)


# --- convergence to the centralised reference --------------------------------------------------

# (algorithm, workers, options, params, tolerance): every synchronous algorithm of the registry, against
# the same F (logistic, λ = 1e-2, breast_cancer). The exact methods, and ssgd with full local gradients,
# must reach 1e-6; the stochastic and compressed ones 1e-2. Relative gaps at the end of these budgets,
# seeds 0-4, were at most: ma all 5.6e-4, ma B=16 1.0e-3, bmuf all 1.1e-4, bmuf B=32 2.0e-3, easgd all
# 1.0e-3, easgd B=16 4.6e-4, dadam all 6.5e-5, storm B=16 2.6e-4; compressed (seed 0): ma topk+EF 6.4e-4,
# ma randk 2.6e-3, dadam qsgd:16 9.4e-5, storm sign+EF 2.7e-3.
BUDGETS = [
    ("ssgd", 3, dict(batch_size=None, rounds=2000), {}, 1e-6),
    ("ssgd", 3, dict(batch_size=None, rounds=1500), {"compressor": "topk:0.2", "error_feedback": True}, 1e-2),
    ("ma", 3, dict(batch_size=None, rounds=100), {"local_steps": 5}, 1e-2),
    ("ma", 3, dict(batch_size=16, rounds=200), {"local_steps": 5}, 1e-2),
    ("ma", 3, dict(batch_size=None, rounds=300), {"compressor": "topk:0.1", "error_feedback": True}, 1e-2),
    ("ma", 3, dict(batch_size=None, rounds=300), {"compressor": "randk:0.3"}, 1e-2),
    ("bmuf", 3, dict(batch_size=None, rounds=60), {}, 1e-2),
    ("bmuf", 3, dict(batch_size=32, rounds=200), {"block_momentum": 0.5}, 1e-2),
    ("easgd", 3, dict(batch_size=None, rounds=200), {"period": 5}, 1e-2),
    ("easgd", 4, dict(batch_size=16, rounds=1000), {}, 1e-2),
    ("dadam", 3, dict(batch_size=None, rounds=300, lr=0.03), {}, 1e-2),
    ("dadam", 3, dict(batch_size=None, rounds=300, lr=0.03), {"compressor": "qsgd:16"}, 1e-2),
    ("storm", 3, dict(batch_size=16, rounds=1000), {}, 1e-2),
    ("storm", 3, dict(batch_size=None, rounds=300), {"compressor": "sign", "error_feedback": True}, 1e-2),
    ("scaffold", 3, dict(batch_size=None, rounds=400), {"local_steps": 5}, 1e-6),
    ("diana", 3, dict(batch_size=None, rounds=2500, eval_every=2500), {"compressor": "randk:0.25"}, 1e-6),
    ("admm", 3, dict(rounds=100), {}, 1e-6),
    ("giant", 3, dict(rounds=30), {}, 1e-6),
]


def budget_id(entry) -> str:
    algorithm, _, options, params, _ = entry
    extra = "".join(f"-{params[k]}" for k in ("compressor",) if k in params)
    return f"{algorithm}{extra}-B{options.get('batch_size', 'all') or 'all'}-{options['rounds']}"


def test_every_synchronous_algorithm_has_a_budget():
    synchronous = {name for name, spec in REGISTRY.items() if spec.family == "sync"}
    assert {entry[0] for entry in BUDGETS} == synchronous


@pytest.mark.parametrize("algorithm,workers,options,params,tolerance", BUDGETS, ids=[budget_id(b) for b in BUDGETS])
def test_reaches_the_reference_solution(config, algorithm, workers, options, params, tolerance):
    run = config(algorithm, params=params, data="breast_cancer", lam=0.01, **options)
    assert run_local(run, workers=workers) == 0
    optimum = reference_objective(run)
    assert (objectives(run.out)[-1] - optimum) / optimum <= tolerance


# --- counters ----------------------------------------------------------------------------------

def test_updates_and_epochs_count_local_steps(config):
    run = config("ma", params={"local_steps": 5}, batch_size=None, rounds=6, eval_every=1, data="breast_cancer")
    assert run_local(run, workers=3) == 0
    rows = read_csv(run.out)
    assert [row["round"] for row in rows] == list(range(7))
    for row in rows:
        assert row["updates"] == 3 * 5 * row["round"]
        assert row["epochs"] == pytest.approx(5 * row["round"])


def test_minibatch_epochs_count_every_local_step(config):
    run = config("easgd", params={"period": 4}, batch_size=10, rounds=3, eval_every=1, data="breast_cancer")
    assert run_local(run, workers=3) == 0
    last = read_csv(run.out)[-1]
    n = centralised_problem(run)[0].n
    assert last["updates"] == 3 * 4 * 3
    assert last["epochs"] == pytest.approx(3 * 4 * 3 * 10 / n)


# --- refused hyper-parameters ------------------------------------------------------------------

@pytest.mark.parametrize("algorithm,params", [
    ("easgd", {"rho": 30.0}),  # β = K η ρ = 2 × 0.05 × 30 = 3
    ("easgd", {"rho": 10.0}),  # β = 1 exactly
    ("easgd", {"rho": -1.0}),
    ("easgd", {"rho": 1.0, "period": 0}),
    ("storm", {"momentum": 0.0}),
    ("storm", {"momentum": 1.5}),
    ("storm", {"momentum": -0.1}),
    ("bmuf", {"block_momentum": 1.0}),
    ("bmuf", {"block_momentum": -0.1}),
    ("bmuf", {"block_lr": 0.0}),
    ("bmuf", {"local_steps": 0}),
    ("ma", {"local_steps": 0}),
    ("dadam", {"beta1": 1.0}),
    ("dadam", {"beta2": -0.5}),
    ("dadam", {"eps": -1e-8}),
])
def test_impossible_hyper_parameters_are_refused_at_build(problem, algorithm, params):
    with pytest.raises(UsageError, match=algorithm):
        REGISTRY[algorithm].build(problem, Settings(0.05, None, workers=2, seed=0), **params)


def test_easgd_beta_is_checked_against_the_resolved_step(config):
    """β depends on η (known only once --lr auto is resolved) and K: refused when the run starts."""
    run = config("easgd", params={"rho": 2.0}, lr=0.2, data="breast_cancer")  # β = 3 × 0.2 × 2 = 1.2
    with pytest.raises(UsageError, match="β = K·η·ρ"):
        run_local(run, workers=3)
    fine = config("easgd", params={"rho": 2.0}, lr=0.2, rounds=5, data="breast_cancer")  # β = 2 × 0.2 × 2 = 0.8
    assert run_local(fine, workers=2) == 0


@pytest.mark.parametrize("args", [
    ["train", "storm", "--momentum", "0"],
    ["train", "bmuf", "--block-momentum", "1"],
    ["train", "easgd", "--rho", "-1"],
    ["train", "ma", "--local-steps", "0"],
    ["train", "dadam", "--set", "eps=-1"],
    ["train", "scaffold", "--local-steps", "0"],
    ["train", "scaffold", "--global-lr", "0"],
    ["train", "scaffold", "--set", "local_lr=-1"],
])
def test_the_command_line_refuses_them_before_launching(capsys, tmp_path, args):
    assert_refused_in_one_line(capsys, tmp_path, args)


def test_a_refused_hyper_parameter_leaves_no_file(config, tmp_path):
    run = config("easgd", params={"rho": 2.0}, lr=0.2, data="breast_cancer")
    with pytest.raises(UsageError):
        run_local(run, workers=3)
    assert list(tmp_path.iterdir()) == []

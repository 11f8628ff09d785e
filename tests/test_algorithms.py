"""One update of each algorithm, checked by hand against its rule in ALGORITHMS.md."""

import numpy as np
import pytest

from dmlcli.algorithms import REGISTRY, Settings
from dmlcli.problems import LOSSES, Problem, Shard, make_regularizer


@pytest.fixture
def problem():
    return Problem(LOSSES["squared"], make_regularizer("l2", 0.5), n=10, d=3)


def shard_of(rows, seed=0, n=10):
    """A shard of `rows` of the problem's n, weighted n_k/n as the runtime weights it when every client takes part."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    shard = Shard(X, X @ np.array([1.0, -2.0, 0.5]), np.random.default_rng(seed))
    shard.weight = rows / n
    return shard


def test_ssgd_local_weights_by_shard_size_and_combine_is_a_prox_step(problem):
    algorithm = REGISTRY["ssgd"].build(problem, Settings(lr=0.1, batch_size=None, workers=2, seed=0))
    shard = shard_of(4)
    w = algorithm.init(np.array([0.3, 0.0, -0.1]))
    message, w_after = algorithm.local(w, shard)
    residual = shard.X @ w - shard.y
    np.testing.assert_allclose(message, (4 / 10) * shard.X.T @ residual / 4)
    g = np.array([1.0, 2.0, 3.0])
    # prox of (λ/2)‖w‖² with step η is a shrink by 1/(1+ηλ)
    np.testing.assert_allclose(algorithm.combine(w, g), (w - 0.1 * g) / (1 + 0.1 * 0.5))


@pytest.mark.parametrize("rule,expected_step", [("constant", 0.2), ("inverse", 0.2 / 4)])
def test_asgd_server_step_depends_on_staleness(problem, rule, expected_step):
    algorithm = REGISTRY["asgd"].build(problem, Settings(lr=0.2, batch_size=2, workers=3, seed=0), staleness_lr=rule)
    w = algorithm.server_init(np.ones(3))
    g = np.array([0.5, -1.0, 2.0])
    w_new, applied = algorithm.server_update(w, g, staleness=3)
    assert applied
    np.testing.assert_allclose(w_new, (np.ones(3) - expected_step * g) / (1 + expected_step * 0.5))


def test_asgd_drops_gradients_staler_than_the_bound(problem):
    algorithm = REGISTRY["asgd"].build(problem, Settings(lr=0.2, batch_size=2, workers=3, seed=0), max_staleness=2)
    w = algorithm.server_init(np.ones(3))
    kept, applied = algorithm.server_update(w, np.ones(3), staleness=2)
    assert applied and not np.allclose(kept, w)
    same, applied = algorithm.server_update(w, np.ones(3), staleness=3)
    assert not applied and same is w


def test_asgd_worker_sends_the_minibatch_gradient_at_the_model_it_received(problem):
    algorithm = REGISTRY["asgd"].build(problem, Settings(lr=0.2, batch_size=4, workers=3, seed=0))
    shard = shard_of(4)
    model = np.array([0.1, 0.2, 0.3])
    gradient, _ = algorithm.worker_step(algorithm.worker_init(model), model, shard)
    np.testing.assert_allclose(gradient, shard.X.T @ (shard.X @ model - shard.y) / 4)

"""Losses, regularisers and the reference solver, checked against first principles."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import approx_fprime

from dmlcli.errors import DataError
from dmlcli.problems import LOSSES, Problem, Shard, make_regularizer
from dmlcli.problems.reference import reference_solution


@pytest.fixture
def block():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = np.where(rng.random(40) < 0.5, -1.0, 1.0)
    return X, y


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_gradient_matches_finite_differences(block, loss):
    X, y = block
    problem = Problem(LOSSES[loss], make_regularizer("none", 0.0), n=40, d=5)
    w = np.linspace(-0.5, 0.5, 5)
    numeric = approx_fprime(w, lambda v: problem.loss_sum(v, X, y) / 40, 1e-7)
    np.testing.assert_allclose(problem.grad_mean(w, X, y), numeric, rtol=1e-5, atol=1e-7)


def test_sparse_and_dense_agree(block):
    X, y = block
    problem = Problem(LOSSES["logistic"], make_regularizer("l2", 0.1), n=40, d=5)
    w = np.arange(5.0) / 10
    np.testing.assert_allclose(problem.grad_mean(w, sp.csr_matrix(X), y), problem.grad_mean(w, X, y))
    assert problem.loss_sum(w, sp.csr_matrix(X), y) == pytest.approx(problem.loss_sum(w, X, y))


def test_logistic_value_is_stable_for_large_margins():
    value = LOSSES["logistic"].value(np.array([800.0, -800.0]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(value, [0.0, 800.0])


def test_binary_labels_map_larger_to_plus_one():
    encode = LOSSES["logistic"].fit_labels(np.array([3.0, 7.0, 3.0]))
    np.testing.assert_array_equal(encode(np.array([7.0, 3.0])), [1.0, -1.0])
    with pytest.raises(DataError, match=r"^row 2: label 5 is not one of the training labels \(3, 7\), nor are 1 more$"):
        encode(np.array([3.0, 5.0, 9.0]))
    with pytest.raises(DataError, match="these 3 rows have 3"):
        LOSSES["logistic"].fit_labels(np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("name", ["l2", "l1", "elastic", "none"])
def test_prox_minimises_its_definition(name):
    reg = make_regularizer(name, 0.7, l1_ratio=0.3)
    v = np.array([1.5, -0.2, 0.05, -3.0])
    step = 0.4
    p = reg.prox(v, step)

    def prox_objective(w):
        return reg.value(w) + (w - v) @ (w - v) / (2 * step)

    rng = np.random.default_rng(1)
    for _ in range(200):
        assert prox_objective(p) <= prox_objective(p + 1e-3 * rng.normal(size=4)) + 1e-12


@pytest.mark.parametrize("reg_name", ["l2", "elastic"])
def test_reference_solution_is_stationary(block, reg_name):
    X, y = block
    problem = Problem(LOSSES["logistic"], make_regularizer(reg_name, 0.05), n=40, d=5)
    w, value = reference_solution(problem, X, y)
    # Optimality of the prox-gradient fixed point: w = prox(w − η ∇smooth(w)).
    step = 0.5
    smooth_grad = problem.grad_mean(w, X, y) + problem.reg.l2 * w
    fixed = make_regularizer("l1", problem.reg.l1).prox(w - step * smooth_grad, step) if problem.reg.l1 else w - step * smooth_grad
    np.testing.assert_allclose(fixed, w, atol=1e-6)
    assert value == pytest.approx(problem.objective(w, problem.loss_sum(w, X, y)))


def test_shard_batches_cover_the_shard_each_epoch():
    X = np.arange(10.0)[:, None]
    shard = Shard(X, np.arange(10.0), np.random.default_rng(0))
    seen = np.concatenate([shard.batch(5)[1] for _ in range(2)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(10.0))
    X_all, y_all = shard.batch(None)
    assert X_all is X


def test_standardisation_keeps_the_digits_of_a_feature_with_a_large_mean():
    from dmlcli.runtime.config import make_config
    from dmlcli.runtime.setup import make_preprocessor

    rng = np.random.default_rng(0)
    X = np.column_stack([1e9 + rng.normal(size=500), rng.normal(size=500)])
    prepare = make_preprocessor(make_config("ssgd"), X, 2, sparse=False, allreduce=lambda buf, op: None)
    Z = prepare(X)
    np.testing.assert_allclose(Z[:, :2].std(axis=0), 1.0, rtol=1e-9)
    sparse = sp.csr_matrix(X * (rng.random((500, 2)) < 0.3))
    scaled = make_preprocessor(make_config("ssgd"), sparse, 2, sparse=True, allreduce=lambda buf, op: None)(sparse)
    np.testing.assert_allclose(scaled[:, :2].toarray().std(axis=0), 1.0, rtol=1e-9)


@pytest.mark.parametrize("layout", ["C", "F", "column view", "csr"])
def test_shard_batches_are_the_rows_of_each_epochs_permutation(layout):
    """Dense rows are gathered with take (faster than X[rows]): the same rows, as a C-ordered copy
    (a different layout would change the BLAS products' rounding), for any layout of the shard."""
    full = np.random.default_rng(1).normal(size=(10, 4))
    X = {"C": full, "F": np.asfortranarray(full), "column view": full[:, :3], "csr": sp.csr_matrix(full)}[layout]
    y = np.arange(10.0)
    shard = Shard(X, y, np.random.default_rng(0))
    expected_rng = np.random.default_rng(0)
    for _ in range(3):  # epochs of 8 rows: the last 2 of each permutation are never drawn
        order = expected_rng.permutation(10)
        for rows in (order[:4], order[4:8]):
            X_b, y_b = shard.batch(4)
            np.testing.assert_array_equal(y_b, y[rows])
            if layout == "csr":
                np.testing.assert_array_equal(X_b.toarray(), X[rows].toarray())
            else:
                np.testing.assert_array_equal(X_b, X[rows])
                assert X_b.flags.c_contiguous and not np.shares_memory(X_b, X)


@pytest.mark.parametrize("sparse", [False, True])
def test_prefetched_batches_are_the_batches_drawn_without_it(sparse):
    """prefetch gathers the next batch ahead (the parameter server's workers, while they wait) and
    batch hands it over; whatever comes between (another size, a full batch, an epoch's end, a
    restored sampler) the batches, the stream and the position are those of a shard never prefetched."""
    from dmlcli.runtime.checkpoint import restore_sampler, sampler_state

    full = np.random.default_rng(1).normal(size=(10, 3))
    X = sp.csr_matrix(full) if sparse else full
    plain, ahead = (Shard(X, np.arange(10.0), np.random.default_rng(0)) for _ in range(2))
    gathers = []
    gather = ahead._gather
    ahead._gather = lambda rows: gathers.append(rows.size) or gather(rows)

    def same_batch(size):
        for a, b in zip(plain.batch(size), ahead.batch(size)):
            np.testing.assert_array_equal(a.toarray() if sp.issparse(a) else a, b.toarray() if sp.issparse(b) else b)

    # (size prefetched, size drawn) over 10 rows; a fresh permutation at steps 1, 4, 9 and 11
    steps = [(3, 3), (3, 3), (3, 3), (3, 3), (4, 3), (None, 2), (2, None), (2, 2), (5, 5), (5, 5), (5, 5)]
    for step, (prefetched, drawn) in enumerate(steps, 1):
        ahead.prefetch(prefetched)
        same_batch(drawn)
        assert ahead._cursor == plain._cursor
        if step == 9:
            at_step_9 = sampler_state(plain)
    assert ahead.rng.bit_generator.state == plain.rng.bit_generator.state
    # Steps 2, 3, 8 and 10 took their prefetched rows; step 5's prefetch (another size) was wasted.
    assert len(gathers) == len(steps) + 1
    # A sampler restored to the same position in another permutation does not take the prefetched rows.
    ahead.prefetch(5)
    assert ahead._cursor == at_step_9["cursor"] == 5
    for shard in (plain, ahead):
        restore_sampler(shard, {**at_step_9, "order": at_step_9["order"].copy()})
    same_batch(5)

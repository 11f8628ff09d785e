"""--lr auto's smoothness constant L = curvature · λmax(XᵀX)/n + l2, estimated by Lanczos over the
shards (runtime.setup.smoothness), against the eigenvalues of the whole XᵀX."""

import numpy as np
import pytest
import scipy.sparse as sp

from dmlcli.problems.losses import LOSSES
from dmlcli.problems.objective import Problem
from dmlcli.problems.regularizers import make_regularizer
from dmlcli.runtime.setup import smoothness


class CountingTransport:
    """One rank holding every shard: the Allreduce changes nothing, and is counted."""

    def __init__(self):
        self.allreduces = 0

    def allreduce(self, buf, op="sum"):
        self.allreduces += 1


def exact_smoothness(X, loss="logistic", l2=1e-3) -> float:
    dense = X.toarray() if sp.issparse(X) else X
    return LOSSES[loss].curvature * np.linalg.eigvalsh(dense.T @ dense).max() / dense.shape[0] + l2


def problem_for(X, loss="logistic", lam=1e-3) -> Problem:
    return Problem(LOSSES[loss], make_regularizer("l2", lam), X.shape[0], X.shape[1])


@pytest.mark.parametrize("n,d", [(2000, 100), (500, 2000)])
def test_isotropic_features_in_a_few_dozen_reductions(n, d):
    """Gaussian features have no dominant eigenvalue: power iteration stopped at its 200 iterations
    0.6 % (d = 100) and 0.009 % (d = 2,000) below λmax; Lanczos gets within 1e-5 in under 40 (a Ritz
    value never exceeds λmax)."""
    X = np.random.default_rng(3).standard_normal((n, d))
    transport = CountingTransport()
    estimate, exact = smoothness(transport, [X[: n // 3], X[n // 3:]], problem_for(X)), exact_smoothness(X)
    assert exact * (1 - 1e-5) <= estimate <= exact * (1 + 1e-12)
    assert transport.allreduces <= 40


def test_sparse_shards_and_the_squared_loss():
    X = sp.random(3000, 400, density=0.02, random_state=np.random.default_rng(4), format="csr")
    transport = CountingTransport()
    estimate = smoothness(transport, [X[:1000], X[1000:2000], X[2000:]], problem_for(X, "squared", 0.5))
    assert estimate == pytest.approx(exact_smoothness(X, "squared", 0.5), rel=1e-5)


def test_a_dimension_smaller_than_the_iterations_ends_at_the_dimension():
    """The Krylov space of d = 5 is all of R⁵ after at most 5 products: L is exact there."""
    X = np.random.default_rng(5).standard_normal((100, 5))
    transport = CountingTransport()
    assert smoothness(transport, [X], problem_for(X)) == pytest.approx(exact_smoothness(X), rel=1e-12)
    assert transport.allreduces <= 5


def test_zero_features_leave_the_l2_part_and_huge_ones_give_infinity():
    zeros = np.zeros((50, 4))
    assert smoothness(CountingTransport(), [zeros], problem_for(zeros, lam=0.25)) == 0.25
    huge = np.full((3, 2), 1e200)
    assert smoothness(CountingTransport(), [huge], problem_for(huge)) == float("inf")


def test_every_rank_gets_the_same_constant_over_the_in_process_transport():
    """Collective: rank 0 holds no rows (no blocks) and the workers one shard each; the Allreduce
    gives all of them the same iterates, so all stop together with the same L."""
    import threading

    from dmlcli.comm.local import LocalHub

    X = np.random.default_rng(6).standard_normal((600, 40))
    shards = [[], [X[:200]], [X[200:]]]
    results = [None] * 3

    def rank(transport):
        results[transport.rank] = smoothness(transport, shards[transport.rank], problem_for(X))

    threads = [threading.Thread(target=rank, args=(t,)) for t in LocalHub(3).transports()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results[0] == results[1] == results[2] == pytest.approx(exact_smoothness(X), rel=1e-5)

"""Hogwild!: lock-free SGD, every worker of one node writing one model in shared memory."""

import click
import numpy as np

from dmlcli.algorithms.base import AlgorithmSpec, Param, SharedAlgorithm
from dmlcli.sparse import issparse


def hogwild(problem, settings, step_decay=1.0):
    """Hogwild! (Recht, Ré, Wright, Niu 2011, "Hogwild!: A lock-free approach to parallelizing
    stochastic gradient descent").

    One model w, held once in memory shared by the worker ranks of one node; no lock guards it.
    Each step a worker draws a mini-batch of B rows of its shard, reads the coordinates S of w the
    batch touches as it finds them (others may be writing them), v = w_S, and subtracts its step:
        w_S ← w_S − (v − prox_{η c r}(v − η g)),   g = ∇_S (mean loss of the batch)(v).
    On sparse data S is the columns with a nonzero in the batch, so a step writes nothing else and
    steps on disjoint coordinates cannot conflict, which is the paper's point; on dense data S is
    every coordinate. The regulariser is split over the rows as the paper does for its sparse SVM:
    coordinate u is regularised only in the steps that touch it, with weight c_u = (m_u/B)(n/d_u),
    m_u of the batch's rows and d_u of all n training rows having a nonzero at u, so with shards of
    equal size and workers keeping pace a step is on average a prox-gradient step on F (dense data:
    c = 1, plain prox-SGD; the prox keeps a large c_u stable). The paper assumes atomic component-wise
    adds; here a coordinate's read, subtract and store are not atomic, so another worker's write in
    between is lost: rare on sparse data, and more noise. --lr auto is 1/(L·K), as for asgd: a step
    lands on a w that the other workers have changed about K − 1 times since it was read. Each
    worker steps on its own shard, in bursts as it is scheduled, which pulls w towards that shard
    (as in asgd); a smaller --lr narrows that, as does --step-decay β < 1, the paper's schedule: a
    worker's step shrinks by β after each of its passes over its shard (an epoch, when the workers
    keep pace).
    """
    batch = settings.batch_size

    def rows_touching(shard):
        """Per coordinate, the shard's rows a step touches it with: nonzeros per column, or every row (dense)."""
        if issparse(shard.X):
            return np.bincount(shard.X.indices, minlength=problem.d).astype(np.float64)
        return np.full(problem.d, float(shard.n))

    def init(rows_touching_all):
        # n/d_u, the inverse of the share of rows touching u (a coordinate no row touches is never
        # stepped on), and the samples this worker has drawn.
        return problem.n / np.maximum(rows_touching_all, 1.0), 0

    def compute(state, w, shard):
        inverse_frequency, drawn = state
        eta = settings.lr * step_decay ** (drawn // shard.n)  # β after each pass over the shard
        X, y = shard.batch(batch)
        if issparse(X):
            # The gradient on S from the batch's nonzeros alone: O(nonzeros), whatever d is.
            rows = X.shape[0]
            row = np.repeat(np.arange(rows), np.diff(X.indptr))  # each nonzero's row in the batch
            touched, column = np.unique(X.indices, return_inverse=True)  # S, and each nonzero's place in it
            v = w[touched]  # a copy of w_S as found
            dz = problem.loss.dz(np.bincount(row, weights=X.data * v[column], minlength=rows), y)
            g = np.bincount(column, weights=X.data * dz[row], minlength=touched.size) / rows
            weight = np.bincount(column, minlength=touched.size) / rows * inverse_frequency[touched]
        else:
            touched, v, weight = None, w.copy(), inverse_frequency
            g = problem.grad_mean(v, X, y)
        return (touched, v - problem.reg.prox(v - eta * g, eta * weight)), (inverse_frequency, drawn + y.shape[0])

    def apply(w, update):
        touched, step = update
        if touched is None:
            w -= step
        else:
            w[touched] -= step

    return SharedAlgorithm(shard_sums=rows_touching, init=init, compute=compute, apply=apply)


SPEC = AlgorithmSpec(
    "hogwild", "shared",
    "Hogwild!: lock-free SGD, every worker rank of one node writing one model in shared memory", hogwild,
    params=(Param("step_decay", click.FloatRange(0, 1, min_open=True), 1.0,
                  "β: each worker's step is multiplied by β after each of its passes over its shard (1: a constant step)"),),
)

"""The objective F(w) = (1/n) Σ_i ℓ(x_iᵀw, y_i) + r(w) and the shard a worker holds of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmlcli.problems.losses import Loss
from dmlcli.problems.regularizers import Regularizer


@dataclass(frozen=True)
class Problem:
    """The loss, the regulariser and the size of the whole training set; model length d."""

    loss: Loss
    reg: Regularizer
    n: int
    d: int

    def loss_sum(self, w: np.ndarray, X, y: np.ndarray) -> float:
        return float(self.loss.value(X @ w, y).sum())

    def grad_mean(self, w: np.ndarray, X, y: np.ndarray) -> np.ndarray:
        """Gradient of the mean loss on the block (X, y), without the regulariser."""
        return X.T @ self.loss.dz(X @ w, y) / y.shape[0]

    def hessian_vector(self, w: np.ndarray, X, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        """∇²(mean loss on the block) at w times v, without the regulariser: Xᵀ diag(ℓ''(Xw)) X v / m."""
        return X.T @ (self.loss.dz2(X @ w, y) * (X @ v)) / y.shape[0]

    def objective(self, w: np.ndarray, total_loss_sum: float) -> float:
        return total_loss_sum / self.n + self.reg.value(w)


class Shard:
    """A client's training rows (already standardised, intercept appended) and its mini-batch sampler.

    Offline data: batches walk a fresh seeded permutation of the shard each epoch (sampling
    without replacement). Online data: every batch is a fresh draw from the generating
    distribution through `draw(rng, m)`, and X, y are only the fixed sample used to evaluate F.
    """

    def __init__(self, X, y: np.ndarray, rng: np.random.Generator, draw=None, client: int = 0):
        self.X, self.y, self.rng, self._draw, self.client = X, y, rng, draw, client
        self.n = y.shape[0]
        # This shard's share of a round's message: n_k over the rows of the clients taking part
        # (n_k/n when all do). The runtime sets it each round; algorithms weight by it.
        self.weight = 1.0
        self._order = np.arange(self.n)
        self._cursor = self.n
        self._dense = isinstance(X, np.ndarray)
        self._prefetched = None  # (order, cursor, size, X_b, y_b): the batch prefetch gathered, for batch(size) at cursor

    def batch_size(self, requested: int | None) -> int:
        return self.n if requested is None else min(requested, self.n) if self._draw is None else requested

    def batch(self, size: int | None):
        """(X_b, y_b) of `size` rows; None means the whole shard (the full local gradient)."""
        if size is None:
            return self.X, self.y
        if self._draw is not None:
            return self._draw(self.rng, size)
        size = min(size, self.n)
        if self._cursor + size > self.n:
            self._order = self.rng.permutation(self.n)
            self._cursor = 0
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] is self._order and prefetched[1:3] == (self._cursor, size):
            X_b, y_b = prefetched[3:]
        else:
            X_b, y_b = self._gather(self._order[self._cursor : self._cursor + size])
        self._cursor += size
        return X_b, y_b

    def prefetch(self, size: int | None) -> None:
        """Gather now the rows the next batch(size) will return, which then hands them over without the
        copy: a parameter server's worker does it while it waits for the model (the rows do not depend
        on it), taking the gather off the round trip (runtime.parameter_server). Only while the current
        permutation still holds the batch: the sampler's stream and position are left as they are, so
        batches, checkpoints and resumed runs are the same with or without it."""
        if size is None or self._draw is not None:
            return
        size = min(size, self.n)
        if self._cursor + size <= self.n:
            rows = self._order[self._cursor : self._cursor + size]
            self._prefetched = (self._order, self._cursor, size, *self._gather(rows))

    def _gather(self, rows: np.ndarray):
        if self._dense:
            # take copies the same rows into the same C-ordered array as X[rows], in less time: 6.3 µs
            # against 9.1 for 64 fresh rows of 101 floats. Into a preallocated buffer (np.take's out=): 10.7.
            return self.X.take(rows, axis=0), self.y.take(rows)
        return self.X[rows], self.y[rows]

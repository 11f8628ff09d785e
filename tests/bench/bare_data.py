"""What the bare mpi4py baselines of `make bench` share: the data set read as dmlcli reads it (labels
as ±1, contiguous shards, this rank's rows with the intercept column, dense or CSR), and the pieces of
arithmetic several synchronous baselines repeat: the logistic loss on margins, the l2 prox, mini-batches
drawn as dmlcli's Shard draws them, conjugate gradients, and the end of a run (seconds per round printed
by rank 0, the final model saved for the bench to compare with dmlcli's).

Written directly on NumPy (and scipy.sparse for CSR data) from the algorithms' formulas, not by calling
dmlcli's algorithm code: an overhead in dmlcli's own arithmetic then shows in the ratio.
"""

import time

import numpy as np

from dmlcli.data import open_source, partition
from dmlcli.runtime.setup import SAMPLER_STREAM


def load(spec: str, rank: int, workers: int):
    """(n, d with the intercept, this rank's row indices, X with the intercept, y ±1); rank 0 gets no rows.
    X is a float64 array, or a CSR matrix when the source is sparse."""
    source = open_source(spec)
    info = source.scan()
    y_all = np.where(info.y == np.unique(info.y)[-1], 1.0, -1.0)
    parts = partition("contiguous", info.n, workers, 0, y_all)
    if rank == 0:
        return info.n, info.d + 1, None, None, None
    rows = parts[rank - 1]
    features = source.rows(rows)
    if info.sparse:
        import scipy.sparse as sp

        return info.n, info.d + 1, rows, sp.hstack([features, np.ones((rows.size, 1))], format="csr"), y_all[rows]
    return info.n, info.d + 1, rows, np.hstack([features, np.ones((rows.size, 1))]), y_all[rows]


def logistic_dz(z, y):
    """d/dz log(1 + exp(−yz)) = −y σ(−yz), written with tanh (stable for any margin)."""
    return -0.5 * y * (1.0 + np.tanh(-0.5 * y * z))


def logistic_dz2(z, y):
    """d²/dz² log(1 + exp(−yz)) = σ(yz) σ(−yz) for y = ±1."""
    t = np.tanh(0.5 * y * z)
    return 0.25 * (1.0 - t * t)


def logistic_sum(z, y) -> float:
    """Σ log(1 + exp(−y z))."""
    return float(np.logaddexp(0.0, -y * z).sum())


class ShardBatches:
    """Mini-batches as dmlcli's Shard draws them: walk a permutation of the shard, a fresh one from the
    client's seeded stream each time the rest is too short for a batch; rows gathered by index."""

    def __init__(self, X, y, seed: int, client: int, size: int):
        self.X, self.y, self.size = X, y, min(size, y.size)
        self.rng = np.random.default_rng([seed, SAMPLER_STREAM, client + 1])
        self.order, self.cursor = np.arange(y.size), y.size

    def next(self):
        if self.cursor + self.size > self.y.size:
            self.order, self.cursor = self.rng.permutation(self.y.size), 0
        rows = self.order[self.cursor:self.cursor + self.size]
        self.cursor += self.size
        return self.X[rows], self.y[rows]


def hessian_product(X, curvature: np.ndarray, shift: float):
    """v ↦ Xᵀ(curvature · Xv) + shift·v: the Hessian of a loss on margins (curvature ℓ''/m per row) plus shift·I."""
    return lambda v: X.T @ (curvature * (X @ v)) + shift * v


def conjugate_gradient(multiply, b: np.ndarray, tolerance: float, iterations: int) -> np.ndarray:
    """x ≈ A⁻¹b by at most `iterations` CG steps from 0, A (positive semi-definite) given by `multiply`;
    stops at ‖Ax − b‖ ≤ tolerance or at a direction without curvature."""
    x = np.zeros_like(b)
    residual = b.copy()
    direction = residual.copy()
    residual_squared = float(residual @ residual)
    for _ in range(iterations):
        if residual_squared <= tolerance * tolerance or residual_squared == 0.0:
            break
        product = multiply(direction)
        curvature = float(direction @ product)
        if not curvature > 0.0:
            break
        alpha = residual_squared / curvature
        x += alpha * direction
        residual -= alpha * product
        previous, residual_squared = residual_squared, float(residual @ residual)
        direction = residual + (residual_squared / previous) * direction
    return x


def finish(comm, elapsed: float, rounds: int, w: np.ndarray, save_model: str | None) -> None:
    """Rank 0 prints the mean seconds per round (the bench reads the last line) and saves w if asked."""
    if comm.Get_rank() == 0:
        if save_model:
            np.save(save_model, w)
        print(f"{elapsed / rounds:.9f}")


def sleeping_barrier(comm, pause_s: float = 1e-4) -> None:
    """A barrier polled with sleeps of pause_s, so a process that is done leaves the cores to the rest
    (MPI's blocking barrier spins)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(pause_s)

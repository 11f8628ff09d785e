"""What both bare baselines of `make bench` share: the synthetic data set read as dmlcli reads it,
labels as ±1, contiguous shards, and this rank's rows with the intercept column."""

import numpy as np

from dmlcli.data import open_source, partition


def load(spec: str, rank: int, workers: int):
    """(n, d with the intercept, this rank's row indices, X with the intercept, y ±1); rank 0 gets no rows."""
    source = open_source(spec)
    info = source.scan()
    y_all = np.where(info.y == np.unique(info.y)[-1], 1.0, -1.0)
    parts = partition("contiguous", info.n, workers, 0, y_all)
    if rank == 0:
        return info.n, info.d + 1, None, None, None
    rows = parts[rank - 1]
    return info.n, info.d + 1, rows, np.hstack([source.rows(rows), np.ones((rows.size, 1))]), y_all[rows]

"""Per-sample losses of a linear model, written on the margin z = x·w.

Each loss gives the sum of its values over a block and the derivative with respect to z,
so the gradient of the mean loss on a block is Xᵀ dz / m for dense and CSR X alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dmlcli.errors import DataError


@dataclass(frozen=True)
class Loss:
    name: str
    value: Callable[[np.ndarray, np.ndarray], np.ndarray]  # per-sample loss at margins z
    dz: Callable[[np.ndarray, np.ndarray], np.ndarray]  # d loss / d z per sample
    fit_labels: Callable[[np.ndarray], Callable]  # training labels -> encoder of raw labels into what the loss expects
    metric_name: str
    metric_sum: Callable[[np.ndarray, np.ndarray], np.ndarray]  # summed down axis 0: correct counts or squared errors
    metric_final: Callable[[float, int], float]  # (sum, count) -> the reported metric
    curvature: float  # sup of the loss's second derivative in z: F is (curvature·λmax(XᵀX)/n + l2)-smooth
    dz2: Callable[[np.ndarray, np.ndarray], np.ndarray]  # d² loss / d z² per sample (Newton-type methods)


class BinaryLabels:
    """Map the two training labels to ±1, the larger to +1; any other label is an error."""

    def __init__(self, classes: np.ndarray):
        self.classes = classes

    def __call__(self, y: np.ndarray) -> np.ndarray:
        unknown = np.flatnonzero(~np.isin(y, self.classes))
        if unknown.size:
            first = unknown[0]
            raise DataError(f"row {first + 1}: label {y[first]:g} is not one of the training labels "
                            f"({self.classes[0]:g}, {self.classes[1]:g})"
                            + (f", nor are {unknown.size - 1} more" if unknown.size > 1 else ""))
        return np.where(y == self.classes[1], 1.0, -1.0)


def _fit_binary(y: np.ndarray) -> BinaryLabels:
    classes = np.unique(y)
    if classes.size != 2:
        shown = ", ".join(f"{c:g}" for c in classes[:5]) + (", …" if classes.size > 5 else "")
        raise DataError(f"logistic loss needs exactly 2 distinct labels, these {y.size} rows have {classes.size} ({shown}); "
                        "use --loss squared for regression targets")
    return BinaryLabels(classes)


def _real_targets(y: np.ndarray):
    return _as_float


def _as_float(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.float64)


def _logistic_value(z, y):
    return np.logaddexp(0.0, -y * z)


def _logistic_dz(z, y):
    # −y·σ(−yz), with σ(t) = (1 + tanh(t/2))/2: stable for any margin, no scipy import needed.
    return -0.5 * y * (1.0 + np.tanh(-0.5 * y * z))


def _logistic_dz2(z, y):
    # σ(yz)σ(−yz) = (1 − tanh²(yz/2))/4, with y = ±1.
    t = np.tanh(0.5 * y * z)
    return 0.25 * (1.0 - t * t)


def _correct(z, y):
    return np.sum(np.where(z >= 0, 1.0, -1.0) == y, axis=0, dtype=np.float64)


def _squared_value(z, y):
    r = z - y
    return 0.5 * r * r


def _squared_dz(z, y):
    return z - y


def _squared_error(z, y):
    r = z - y
    return np.sum(r * r, axis=0)


LOSSES = {
    "logistic": Loss("logistic", _logistic_value, _logistic_dz, _fit_binary, "accuracy", _correct,
                     lambda total, count: total / count, curvature=0.25, dz2=_logistic_dz2),
    "squared": Loss("squared", _squared_value, _squared_dz, _real_targets, "rmse", _squared_error,
                    lambda total, count: float(np.sqrt(total / count)), curvature=1.0,
                    dz2=lambda z, y: np.ones_like(z, dtype=np.float64)),
}

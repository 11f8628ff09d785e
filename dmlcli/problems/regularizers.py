"""Regularisers r(w) and their proximal maps prox_{η r}(v) = argmin_w r(w) + ‖w − v‖²/(2η)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def soft_threshold(v: np.ndarray, t: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


@dataclass(frozen=True)
class Regularizer:
    """r(w) = lam * (l1_ratio ‖w‖₁ + (1 − l1_ratio)/2 ‖w‖²); l2, l1 and none are its special cases."""

    name: str
    lam: float
    l1_ratio: float

    @property
    def l1(self) -> float:
        return self.lam * self.l1_ratio

    @property
    def l2(self) -> float:
        return self.lam * (1.0 - self.l1_ratio)

    def value(self, w: np.ndarray) -> float:
        # Each term only when present: giant's line search evaluates this ten times a round, and |w| at
        # d = 10⁶ is a pass over w and a temporary of d floats.
        l1 = self.l1 * float(np.abs(w).sum()) if self.l1 else 0.0
        return l1 + (0.5 * self.l2 * float(w @ w) if self.l2 else 0.0)

    def prox(self, v: np.ndarray, step: float) -> np.ndarray:
        # Soft-threshold for the l1 part, then shrink for the l2 part: the closed form of the elastic-net prox.
        shrunk = soft_threshold(v, step * self.l1) if self.l1 else v
        return shrunk / (1.0 + step * self.l2) if self.l2 else shrunk


REGULARIZERS = ("l2", "l1", "elastic", "none")


def make_regularizer(name: str, lam: float, l1_ratio: float = 0.5) -> Regularizer:
    ratio = {"l2": 0.0, "l1": 1.0, "elastic": l1_ratio, "none": 0.0}[name]
    return Regularizer(name, 0.0 if name == "none" else lam, ratio)

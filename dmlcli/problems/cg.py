"""Conjugate gradients for the Newton-type local solves (admm's inexact solve, giant's directions)."""

import numpy as np


def conjugate_gradient(apply, b: np.ndarray, tol: float, iterations: int) -> np.ndarray:
    """Approximately solve A x = b, A symmetric positive semi-definite given by its product `apply`,
    by at most `iterations` steps from x = 0. Stops once ‖A x − b‖ ≤ tol, or at a direction without
    curvature (A only semi-definite), keeping the iterate so far. Every iterate has
    bᵀx = xᵀA x ≥ 0, so −x is a descent direction wherever b is a gradient."""
    x, r = np.zeros_like(b), b.copy()
    direction, rr = r.copy(), float(r @ r)
    for _ in range(iterations):
        if rr <= tol * tol or rr == 0.0:
            break
        a_direction = apply(direction)
        curvature = float(direction @ a_direction)
        if not curvature > 0.0:
            break
        alpha = rr / curvature
        x += alpha * direction
        r -= alpha * a_direction
        rr_next = float(r @ r)
        direction = r + (rr_next / rr) * direction
        rr = rr_next
    return x

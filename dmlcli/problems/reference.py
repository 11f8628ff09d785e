"""Centralised reference solution of F on the whole training set (used by tests and reports).

Smooth part by L-BFGS-B to near machine precision; an l1 term is handled exactly by the
split w = u − v with u, v ≥ 0, which turns λ‖w‖₁ into the linear term λ Σ(u + v).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from dmlcli.problems.objective import Problem


def reference_solution(problem: Problem, X, y: np.ndarray, tol: float = 1e-14, max_iter: int = 20_000):
    """Return (w*, F(w*)) minimising F over the rows (X, y), which must be the whole training set."""
    d, l1, l2 = problem.d, problem.reg.l1, problem.reg.l2

    def smooth(w):
        z = X @ w
        value = problem.loss.value(z, y).sum() / problem.n + 0.5 * l2 * (w @ w)
        grad = X.T @ problem.loss.dz(z, y) / problem.n + l2 * w
        return value, grad

    if l1 == 0.0:
        result = minimize(smooth, np.zeros(d), jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "ftol": tol, "gtol": tol})
        w = result.x
    else:
        def split(uv):
            value, grad = smooth(uv[:d] - uv[d:])
            return value + l1 * uv.sum(), np.concatenate([grad + l1, -grad + l1])

        result = minimize(split, np.zeros(2 * d), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * d),
                          options={"maxiter": max_iter, "ftol": tol, "gtol": tol})
        w = result.x[:d] - result.x[d:]
    return w, problem.objective(w, problem.loss_sum(w, X, y))

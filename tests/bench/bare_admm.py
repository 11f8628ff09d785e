"""The ADMM baseline of `make bench`: consensus ADMM written directly on mpi4py.

The same arithmetic as `dmlcli train admm --partition contiguous --test-fraction 0 --no-standardize`
with the logistic loss and l2 regulariser: each round every worker solves
    x_k ← argmin_x f_k(x) + (ρ/2)‖x − z + u_k‖²
by the same inexact Newton-CG as dmlcli (at most --local-iters Newton steps warm-started at x_k, each
direction by at most CG_MAX_ITERS conjugate-gradient steps to the residual min(1/2, √‖∇φ‖)‖∇φ‖, an Armijo
backtracking line search, the same early stops: the tolerances are imported from dmlcli so both run the
same iterations), one Allreduce sums n_k/n (x_k + u_k) (rank 0 adds zeros), every rank sets
z = sum / (1 + λ/ρ) and each worker u_k ← u_k + x_k − z. Nothing else: no residuals, no evaluation.
Prints the mean seconds per round; --save-model writes the final z.
"""

import argparse
import math
import time

import numpy as np
from bare_data import conjugate_gradient, finish, hessian_product, load, logistic_dz, logistic_dz2, logistic_sum
from mpi4py import MPI

from dmlcli.algorithms.admm import ARMIJO, CG_MAX_ITERS, NEWTON_GTOL, NEWTON_XTOL


def newton_cg(X, y, rho: float, iterations: int, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """argmin_x (1/m) Σ log(1 + exp(−y Xx)) + (ρ/2)‖x − v‖², inexactly, from x."""
    m = y.size

    def phi(point):
        gap = point - v
        return logistic_sum(X @ point, y) / m + 0.5 * rho * float(gap @ gap)

    for _ in range(iterations):
        margins = X @ x
        pull = rho * (x - v)
        gradient = X.T @ logistic_dz(margins, y) / m + pull
        gradient_norm = float(np.linalg.norm(gradient))
        if gradient_norm <= NEWTON_GTOL * max(1.0, float(np.linalg.norm(pull))):
            break
        curvature = logistic_dz2(margins, y) / m
        direction = conjugate_gradient(hessian_product(X, curvature, rho), -gradient,
                                       min(0.5, math.sqrt(gradient_norm)) * gradient_norm, CG_MAX_ITERS)
        slope = float(gradient @ direction)
        value = phi(x)
        step = 1.0
        if -slope > 1e-15 * (1.0 + abs(value)):
            while step > 1e-10 and phi(x + step * direction) > value + ARMIJO * step * slope:
                step *= 0.5
        x = x + step * direction
        if step * float(np.linalg.norm(direction)) <= NEWTON_XTOL * (1.0 + float(np.linalg.norm(x))):
            break
    return x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--local-iters", type=int, default=20)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--save-model", help="write the final z here (.npy)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    n, d, rows, X, y = load(args.data, rank, workers)
    weight = 0.0 if rank == 0 else rows.size / n
    x, u, z = np.zeros(d), np.zeros(d), np.zeros(d)
    summed = np.zeros(d)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.rounds):
        if rank > 0:
            x = newton_cg(X, y, args.rho, args.local_iters, z - u, x)
            summed[:] = weight * (x + u)
        else:
            summed[:] = 0.0
        comm.Allreduce(MPI.IN_PLACE, summed, op=MPI.SUM)
        z = summed / (1.0 + args.lam / args.rho)
        if rank > 0:
            u = u + x - z
    finish(comm, time.perf_counter() - start, args.rounds, z, args.save_model)


if __name__ == "__main__":
    main()

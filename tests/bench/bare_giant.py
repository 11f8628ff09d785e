"""The GIANT baseline of `make bench`: globally improved approximate Newton written directly on mpi4py.

The same arithmetic as `dmlcli train giant --partition contiguous --test-fraction 0 --no-standardize`
(logistic loss, l2 regulariser λ), three Allreduces a round, rank 0 adding zeros to each:
1. Σ_k (n_k/n) [∇f_k(w), f_k(w)] gives g = ∇F(w) and F(w);
2. each worker solves (∇²f_k(w) + λI) p_k = g by at most --cg-iters CG steps to ‖Hp − g‖ ≤ 1e-10 ‖g‖,
   and Σ_k (n_k/n) p_k gives p;
3. Σ_k (n_k/n) f_k(w − t_j p) at t_j = 2^−j, j < J, gives F at each candidate step; w ← w − t p with
   the largest t of Armijo decrease (else the least F below F(w), else no step).
Nothing else: no evaluation, no logging. Prints the mean seconds per round; --save-model writes w.
"""

import argparse
import time

import numpy as np
from bare_data import conjugate_gradient, finish, hessian_product, load, logistic_dz, logistic_dz2, logistic_sum
from mpi4py import MPI

from dmlcli.algorithms.giant import ARMIJO, BACKTRACK, CG_RTOL


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--cg-iters", type=int, default=50)
    parser.add_argument("--line-search-steps", type=int, default=10)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--save-model", help="write the final w here (.npy)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    n, d, rows, X, y = load(args.data, rank, workers)
    weight = 0.0 if rank == 0 else rows.size / n
    lam = args.lam
    steps = BACKTRACK ** np.arange(args.line_search_steps)
    w = np.zeros(d)
    gradient_and_loss = np.zeros(d + 1)
    direction = np.zeros(d)
    candidate_losses = np.zeros(steps.size)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.rounds):
        gradient_and_loss[:] = 0.0
        if rank > 0:
            margins = X @ w
            gradient_and_loss[:d] = weight * (X.T @ logistic_dz(margins, y) / rows.size)
            gradient_and_loss[d] = weight * logistic_sum(margins, y) / rows.size
        comm.Allreduce(MPI.IN_PLACE, gradient_and_loss, op=MPI.SUM)
        g = gradient_and_loss[:d] + lam * w
        F = float(gradient_and_loss[d]) + 0.5 * lam * float(w @ w)

        if rank > 0:
            curvature = logistic_dz2(margins, y) / rows.size
            direction[:] = weight * conjugate_gradient(hessian_product(X, curvature, lam), g,
                                                       CG_RTOL * float(np.linalg.norm(g)), args.cg_iters)
        else:
            direction[:] = 0.0
        comm.Allreduce(MPI.IN_PLACE, direction, op=MPI.SUM)

        if rank > 0:
            step_margins = X @ direction
            candidate_losses[:] = [weight * logistic_sum(margins - t * step_margins, y) / rows.size for t in steps]
        else:
            candidate_losses[:] = 0.0
        comm.Allreduce(MPI.IN_PLACE, candidate_losses, op=MPI.SUM)
        values = candidate_losses + np.array([0.5 * lam * float(c @ c) for c in (w - t * direction for t in steps)])
        sufficient = values <= F - ARMIJO * steps * max(float(g @ direction), 0.0)
        if sufficient.any():
            t = float(steps[np.argmax(sufficient)])
        elif values.min() < F:
            t = float(steps[np.argmin(values)])
        else:
            t = 0.0
        w = w - t * direction
    finish(comm, time.perf_counter() - start, args.rounds, w, args.save_model)


if __name__ == "__main__":
    main()

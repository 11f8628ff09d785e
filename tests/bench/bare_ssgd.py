"""The baseline of `make bench`: synchronous gradient descent written directly on mpi4py.

The same arithmetic as `dmlcli train ssgd --batch-size all` on the same synthetic data
(logistic loss, l2 prox step, rank 0 contributing zeros to the Allreduce), with nothing
else: no evaluation, no logging, no progress. Prints the mean seconds per round.
"""

import argparse
import time

import numpy as np
from bare_data import load
from mpi4py import MPI


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1e-3)
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    n, d, rows, X, y = load(args.data, rank, workers)
    w = np.zeros(d)
    g = np.empty(d)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.rounds):
        if rank > 0:
            g[:] = (rows.size / n) * (X.T @ (-0.5 * y * (1.0 + np.tanh(-0.5 * y * (X @ w))))) / rows.size
        else:
            g[:] = 0.0
        comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        w = (w - args.lr * g) / (1 + args.lr * args.lam)
    elapsed = time.perf_counter() - start
    if rank == 0:
        print(f"{elapsed / args.rounds:.9f}")


if __name__ == "__main__":
    main()

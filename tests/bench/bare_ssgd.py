"""The baseline of `make bench`: synchronous gradient descent written directly on mpi4py.

The same arithmetic as `dmlcli train ssgd --batch-size all --partition contiguous --test-fraction 0
--no-standardize` on the same data (logistic loss, l2 prox step, rank 0 contributing zeros to the
Allreduce), with nothing else: no evaluation, no logging, no progress. Dense or CSR data alike.
Prints the mean seconds per round; --save-model writes the final w for the bench to compare.
"""

import argparse
import time

import numpy as np
from bare_data import finish, load, logistic_dz
from mpi4py import MPI


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--save-model", help="write the final w here (.npy)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    n, d, rows, X, y = load(args.data, rank, workers)
    weight = 0.0 if rank == 0 else rows.size / n
    w = np.zeros(d)
    g = np.zeros(d)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.rounds):
        if rank > 0:
            g[:] = weight * (X.T @ logistic_dz(X @ w, y) / rows.size)
        else:
            g[:] = 0.0
        comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        w = (w - args.lr * g) / (1 + args.lr * args.lam)
    finish(comm, time.perf_counter() - start, args.rounds, w, args.save_model)


if __name__ == "__main__":
    main()

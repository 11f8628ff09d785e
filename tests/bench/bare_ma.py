"""The model-averaging baseline of `make bench`: local SGD written directly on mpi4py.

The same arithmetic as `dmlcli train ma --local-steps M --batch-size B --partition contiguous
--test-fraction 0 --no-standardize` (logistic loss, l2 regulariser): each round every worker takes M
proximal SGD steps from w on mini-batches drawn as dmlcli's Shard draws them (so the models agree to
rounding), one Allreduce sums the n_k/n-weighted changes (rank 0 adds zeros), and every rank adds the
sum to w. Nothing else: no evaluation, no logging. Prints the mean seconds per round.
"""

import argparse
import time

import numpy as np
from bare_data import ShardBatches, finish, load, logistic_dz
from mpi4py import MPI


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", help="write the final w here (.npy)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    n, d, rows, X, y = load(args.data, rank, workers)
    eta, shrink = args.lr, 1 + args.lr * args.lam
    if rank > 0:
        weight = rows.size / n
        batches = ShardBatches(X, y, args.seed, rank - 1, args.batch_size)
    w = np.zeros(d)
    change = np.zeros(d)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(args.rounds):
        if rank > 0:
            local = w
            for _ in range(args.local_steps):
                X_batch, y_batch = batches.next()
                local = (local - eta * (X_batch.T @ logistic_dz(X_batch @ local, y_batch) / y_batch.size)) / shrink
            change[:] = weight * (local - w)
        else:
            change[:] = 0.0
        comm.Allreduce(MPI.IN_PLACE, change, op=MPI.SUM)
        w = w + change
    finish(comm, time.perf_counter() - start, args.rounds, w, args.save_model)


if __name__ == "__main__":
    main()

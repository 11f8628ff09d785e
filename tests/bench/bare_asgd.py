"""The asynchronous baseline of `make bench`: a parameter server written directly on mpi4py.

The arithmetic of `dmlcli train asgd --batch-size B` on the same synthetic data (logistic loss,
l2 prox step applied on arrival), with nothing else: no staleness bookkeeping, no evaluation, no
logging. Rank 0 keeps one posted receive per worker and answers whichever arrives first with the
newest w; workers take their mini-batches in order through their contiguous shard. MPI's own
blocking waits are used. Prints the updates per second the server applied.
"""

import argparse
import time

import numpy as np
from bare_data import load
from mpi4py import MPI


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--updates", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--lam", type=float, default=1e-3)
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    _, d, rows, X, y = load(args.data, rank, workers)
    w = np.zeros(d)
    STOP, WORK = 2, 1
    comm.Barrier()
    start = time.perf_counter()
    if rank == 0:
        payloads = [np.empty(d) for _ in range(workers)]
        for k in range(workers):
            comm.Send(w, dest=k + 1, tag=WORK)
        receives = [comm.Irecv(payloads[k], source=k + 1) for k in range(workers)]
        applied, active = 0, workers
        while active:
            k = MPI.Request.Waitany(receives)
            if applied < args.updates:
                w = (w - args.lr * payloads[k]) / (1 + args.lr * args.lam)
                applied += 1
                comm.Send(w, dest=k + 1, tag=WORK)
                receives[k] = comm.Irecv(payloads[k], source=k + 1)
            else:
                comm.Send(w, dest=k + 1, tag=STOP)
                receives[k] = MPI.REQUEST_NULL
                active -= 1
        elapsed = time.perf_counter() - start
        print(f"{applied / elapsed:.3f}")
    else:
        status, cursor, g = MPI.Status(), 0, np.empty(d)
        while True:
            comm.Recv(w, source=0, status=status)
            if status.Get_tag() == STOP:
                break
            batch = slice(cursor, cursor + args.batch_size)
            cursor = (cursor + args.batch_size) % max(1, rows.size - args.batch_size)
            Xb, yb = X[batch], y[batch]
            g[:] = Xb.T @ (-0.5 * yb * (1.0 + np.tanh(-0.5 * yb * (Xb @ w)))) / yb.size
            comm.Send(g, dest=0, tag=WORK)


if __name__ == "__main__":
    main()

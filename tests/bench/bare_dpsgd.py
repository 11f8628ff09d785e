"""The gossip baseline of `make bench`: decentralised parallel SGD on a ring, written directly on mpi4py.

The same arithmetic as `dmlcli train dpsgd --topology ring --batch-size B --partition contiguous
--test-fraction 0 --no-standardize` (logistic loss, l2 regulariser): worker k (rank k) draws a mini-batch
of its shard as dmlcli's Shard draws it, takes g_k = ∇f_k(x_k), swaps x_k with its two ring neighbours
(Irecv, then Isend, waited for together) and sets x_k ← prox_ηr(W_kk x_k + Σ_j W_kj x_j − η g_k) with the
Metropolis-Hastings weights, summed in the same order as dmlcli. Rank 0 has no part in the gossip: it
waits for the end. Nothing else: no stop flag, no evaluation, no logging. The final model is the mean of
the x_k (one Allreduce after the clock stops). Prints the mean seconds per round.
"""

import argparse
import time

import numpy as np
from bare_data import ShardBatches, finish, load, logistic_dz, sleeping_barrier
from mpi4py import MPI


def ring_row(node: int, nodes: int) -> tuple[list[int], np.ndarray, float]:
    """Node k's ring neighbours (sorted), their weights 1 / (1 + max degree) and its own weight."""
    peers = sorted({(node - 1) % nodes, (node + 1) % nodes} - {node})
    degree = len(peers)  # every node of a ring has the same degree
    weights = np.array([1.0 / (1 + degree) for _ in peers])
    return peers, weights, 1.0 - float(weights.sum())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", help="write the final mean model here (.npy)")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    n, d, rows, X, y = load(args.data, rank, workers)
    eta, shrink = args.lr, 1 + args.lr * args.lam
    x = np.zeros(d)
    comm.Barrier()
    start = time.perf_counter()
    if rank > 0:
        batches = ShardBatches(X, y, args.seed, rank - 1, args.batch_size)
        peers, weights, own = ring_row(rank - 1, workers)
        received = [np.empty(d) for _ in peers]
        for _ in range(args.rounds):
            X_batch, y_batch = batches.next()
            g = X_batch.T @ logistic_dz(X_batch @ x, y_batch) / y_batch.size
            requests = [comm.Irecv(buf, source=peer + 1) for buf, peer in zip(received, peers)]
            requests += [comm.Isend(x, dest=peer + 1) for peer in peers]
            MPI.Request.Waitall(requests)
            mixed = own * x
            for weight, other in zip(weights, received):
                mixed += weight * other
            x = (mixed - eta * g) / shrink
    sleeping_barrier(comm, 1e-4 if rank == 0 else 0.0)  # rank 0 sleeps here: it has no part in the rounds
    elapsed = time.perf_counter() - start
    total = x if rank > 0 else np.zeros(d)
    comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
    finish(comm, elapsed, args.rounds, total / workers, args.save_model)


if __name__ == "__main__":
    main()

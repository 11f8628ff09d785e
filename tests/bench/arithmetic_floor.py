"""The arithmetic floor of `make bench` section 2: bare_ssgd.py's rounds with no communication at all.

One process reads every row of the data set and repeats full-batch gradient descent's arithmetic
(logistic loss, l2 prox step, float64) on all of them, on one BLAS thread. A round of any synchronous
implementation does this same arithmetic spread over its workers, so with K workers on C cores it
cannot take less than this time over min(K, C): what remains of a round is communication and overhead.
Prints the mean seconds per round.
"""

import argparse
import time

import numpy as np
from bare_data import load, logistic_dz


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=1e-3)
    args = parser.parse_args()
    n, d, _, X, y = load(args.data, rank=1, workers=1)
    w = np.zeros(d)
    start = time.perf_counter()
    for _ in range(args.rounds):
        g = X.T @ logistic_dz(X @ w, y) / n
        w = (w - args.lr * g) / (1 + args.lr * args.lam)
    print((time.perf_counter() - start) / args.rounds)


if __name__ == "__main__":
    main()

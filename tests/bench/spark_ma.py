"""The peer of `make bench` section 3: model averaging (MA) on breast cancer in PySpark, as seed 004
(`../shared/seeds/004_*`, a blog post on MA and EASGD in PySpark) describes it: local[4], 4 workers,
η = 0.1, M = 5 local steps on 10 % mini-batches per round, the models averaged by the driver after each
round, accuracy on a 30 % test split.

The data are what `dmlcli train ma --recipe recipes/seed004-ma.toml` trains on: dmlcli's builtin
breast_cancer, its seeded 30 % test split (`split_test`), its shuffled shards (`partition`), features
standardised over the training split as dmlcli does, an intercept column, the model starting at 0.
Two plans of the same algorithm:

- `seed`: the blog's RDD plan. The rows are an RDD keyed by worker; every local step samples 10 % of
  them (the same sample in a round's 5 steps, seeded 42 + t as the blog does), joins each sampled row
  with its worker's model, maps rows to gradients and averages them per worker, so each local step is a
  shuffle, and the models RDD of round t is derived from round t − 1's (its lineage grows); the driver
  takes the plain mean of the 4 models, as the blog does. Two fixes
  keep it running: the partition function reads its iterator instead of indexing it, and a worker
  whose sample is empty keeps its model (a right outer join) instead of dropping out.
- `local` (default): one Spark job a round. Each worker's shard is one cached partition holding numpy
  arrays; the round's model is broadcast, each partition takes its M local steps on fresh 10 %
  Bernoulli samples (seeded by seed, round, step and worker) and returns n_k·w_k, and the driver
  divides the sum by n, as dmlcli weights its average.

Prints one JSON line: the rounds done (--rounds, or fewer when --time-limit stops it), the training
loop's seconds (from the first round to the last average, after the session is up and the data are
cached; accuracy is computed once, after the loop) and the test accuracy.
"""

import argparse
import json
import os
import sys
import time
from functools import partial
from operator import add

import numpy as np

from dmlcli.data import open_source, partition, split_test

WORKERS = 4
FRACTION = 0.1  # the seed's mini-batch: a Bernoulli sample of 10 % of the rows


def prepared_data(test_fraction: float, seed: int):
    """(shards as (X_k, y_k) with y in {0, 1}, X_test, y_test): dmlcli's split, shards and standardisation."""
    source = open_source("breast_cancer")
    info = source.scan()
    X_all = source.rows(np.arange(info.n))
    y_all = (info.y == np.unique(info.y)[-1]).astype(float)  # dmlcli maps the larger label to +1
    train_index, test_index = split_test(info.n, test_fraction, seed)
    X_train = X_all[train_index]
    bound = np.abs(X_train).max(axis=0)
    bound[bound == 0.0] = 1.0
    mean = (X_train / bound).mean(axis=0)
    scale = (X_train / bound).std(axis=0)
    scale[scale == 0.0] = 1.0

    def prepare(X):
        X = (X / bound - mean) / scale
        return np.hstack([X, np.ones((X.shape[0], 1))])

    positions = partition("shuffle", train_index.size, WORKERS, seed, y_all[train_index])
    shards = [(prepare(X_all[train_index[p]]), y_all[train_index[p]]) for p in positions]
    return shards, prepare(X_all[test_index]), y_all[test_index]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def mean_gradient(X, y, w):
    """The logistic loss's mean gradient in the seed's form: −(y − σ(xᵀw)) x, y in {0, 1}."""
    return X.T @ (sigmoid(X @ w) - y) / y.size


def local_plan(spark, shards, rounds, local_steps, lr, seed, time_limit):
    """One job a round: each partition takes its local steps from the broadcast model and returns n_k·w_k."""
    context = spark.sparkContext
    blocks = context.parallelize(list(enumerate(shards)), WORKERS).cache()
    n_train = sum(y.size for _, y in shards)
    blocks.count()  # cached before the clock starts

    def local_steps_from(w_br, t, items):
        for k, (X, y) in items:
            w = w_br.value.copy()
            rng = np.random.default_rng([seed, t, k])
            for _ in range(local_steps):
                batch = rng.random(y.size) < FRACTION
                if batch.any():  # an empty sample (probability 0.9^100) takes no step
                    w -= lr * mean_gradient(X[batch], y[batch], w)
            yield y.size * w

    w = np.zeros(shards[0][0].shape[1])
    started = time.perf_counter()
    for t in range(rounds):
        w_br = context.broadcast(w)
        w = blocks.mapPartitions(partial(local_steps_from, w_br, t)).treeAggregate(0.0, add, add) / n_train
        w_br.destroy()
        if time.perf_counter() - started > time_limit:
            return w, t + 1, time.perf_counter() - started
    return w, rounds, time.perf_counter() - started


def seed_plan(spark, shards, rounds, local_steps, lr, seed, time_limit):
    """The blog's plan: a sample, a join of rows with models and a per-worker mean for every local step."""
    context = spark.sparkContext
    keyed_rows = [(k, np.append(X[i], y[i])) for k, (X, y) in enumerate(shards) for i in range(y.size)]
    points = context.parallelize(keyed_rows, WORKERS).partitionBy(WORKERS).cache()
    points.count()  # cached before the clock starts
    d = shards[0][0].shape[1]

    def with_model(w_br, items):
        return [(k, w_br.value) for k, _ in items]

    def gradient(pair):
        k, (row, w) = pair
        return k, (w, None if row is None else -(row[-1] - sigmoid(row[:-1] @ w)) * row[:-1])

    def updated(items):
        by_worker = {}
        for k, (w, g) in items:
            by_worker.setdefault(k, (w, []))[1].extend([] if g is None else [g])
        return [(k, w - lr * np.mean(gs, axis=0) if gs else w) for k, (w, gs) in by_worker.items()]

    w = np.zeros(d)
    models = context.parallelize([(k, w) for k in range(WORKERS)], WORKERS).partitionBy(WORKERS).cache()
    started = time.perf_counter()
    for t in range(rounds):
        w_br = context.broadcast(w)
        models = models.mapPartitions(partial(with_model, w_br))
        for _ in range(local_steps):
            batch = points.sample(False, FRACTION, 1000 * seed + 42 + t)
            models = batch.rightOuterJoin(models, numPartitions=WORKERS).map(gradient).mapPartitions(updated)
        w = models.map(lambda pair: pair[1]).treeAggregate(0.0, add, add) / WORKERS
        if time.perf_counter() - started > time_limit:
            return w, t + 1, time.perf_counter() - started
    return w, rounds, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=("local", "seed"), default="local")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=float("inf"),
                        help="stop after the round that passes this many seconds of training")
    args = parser.parse_args()

    # The Python workers must be this interpreter (numpy, dmlcli); the driver binds to the loopback only.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    shards, X_test, y_test = prepared_data(args.test_fraction, args.seed)
    spark = (SparkSession.builder.appName("dmlcli-bench-ma").master(f"local[{WORKERS}]")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.bindAddress", "127.0.0.1")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        train = seed_plan if args.plan == "seed" else local_plan
        w, rounds_done, loop_s = train(spark, shards, args.rounds, args.local_steps, args.lr, args.seed,
                                       args.time_limit)
    finally:
        spark.stop()
    accuracy = float(np.mean((X_test @ w > 0) == (y_test == 1)))
    print(json.dumps({"plan": args.plan, "rounds": rounds_done, "loop_s": loop_s, "accuracy": accuracy}), flush=True)


if __name__ == "__main__":
    main()

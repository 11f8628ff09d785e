"""Model averaging (local SGD)."""

import click

from dmlcli.algorithms.base import AlgorithmSpec, Param, SyncAlgorithm
from dmlcli.algorithms.compression import COMPRESSION_PARAMS, compressed
from dmlcli.errors import UsageError


def local_prox_sgd(problem, w, shard, eta, batch, steps):
    """`steps` proximal SGD steps w ← prox_{ηr}(w − η g_k) on mini-batches of the shard, from w (not changed)."""
    for _ in range(steps):
        X, y = shard.batch(batch)
        w = problem.reg.prox(w - eta * problem.grad_mean(w, X, y), eta)
    return w


def ma(problem, settings, local_steps=5, compressor="none", error_feedback=False):
    """Model averaging / local SGD, synchronous (FedAvg with every worker taking part).

    From w_t each worker k runs M proximal SGD steps on mini-batches of its shard,
        w_k ← prox_{ηr}(w_k − η g_k),   starting at w_k = w_t,
    and the Allreduce of the changes gives the n_k-weighted mean of the local models:
        w_{t+1} = w_t + Σ_k (n_k/n) (w_k − w_t) = Σ_k (n_k/n) w_k.
    The changes w_k − w_t are what --compressor compresses.
    With M = 1 and a linear prox (l2 or no regulariser) this is ssgd step for step; with an l1
    part the prox does not commute with the mean, so M = 1 is then close to ssgd, not equal.
    rounds = 1 is one-shot averaging. (McDonald, Hall, Mann 2010, "Distributed training
    strategies for the structured perceptron"; McMahan et al. 2017, "Communication-efficient
    learning of deep networks from decentralized data".)
    """
    eta, batch = settings.lr, settings.batch_size
    if local_steps < 1:
        raise UsageError(f"ma: --local-steps must be at least 1, got {local_steps}")

    def init(w0):
        return w0.copy()

    def local(w, shard):
        return shard.weight * (local_prox_sgd(problem, w, shard, eta, batch, local_steps) - w), w

    def combine(w, mean_change):
        return w + mean_change

    algorithm = SyncAlgorithm(init, local, combine, model=lambda w: w, message_size=problem.d, local_steps=local_steps)
    return compressed(algorithm, compressor, error_feedback, settings.seed)


SPEC = AlgorithmSpec(
    "ma", "sync", "model averaging / local SGD: M local prox-SGD steps, then the n_k-weighted mean of the models", ma,
    params=(
        Param("local_steps", click.IntRange(min=1), 5, "local SGD steps M per worker between averagings"),
        *COMPRESSION_PARAMS,
    ),
)

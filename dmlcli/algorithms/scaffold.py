"""SCAFFOLD: stochastic controlled averaging."""

import click
import numpy as np

from dmlcli.algorithms.base import AlgorithmSpec, Param, SyncAlgorithm
from dmlcli.errors import UsageError


def local_corrected_prox_sgd(problem, w, shard, eta, batch, steps, correction):
    """`steps` proximal SGD steps w ← prox_{ηr}(w − η (g_k + correction)) on mini-batches of the shard,
    from w (not changed); ma's local_prox_sgd with a constant drift correction added to each gradient."""
    for _ in range(steps):
        X, y = shard.batch(batch)
        w = problem.reg.prox(w - eta * (problem.grad_mean(w, X, y) + correction), eta)
    return w


def scaffold(problem, settings, local_steps=5, local_lr=None, global_lr=1.0):
    """SCAFFOLD, synchronous, every worker taking part in every round.

    Every rank holds the model x and the server control c (the same on every rank); worker k
    also holds its control c_k (all start at 0). Each round worker k starts at y = x and takes
    M proximal SGD steps on mini-batches of its shard with the drift correction c − c_k,
        y ← prox_{η_l r}(y − η_l (g_k(y) − c_k + c)),
    then sets (option II of the paper)
        c_k⁺ = c_k − c + (x − y)/(M η_l).
    One Allreduce of [w_k (y_k − x), w_k (c_k⁺ − c_k)] with w_k = n_k/n gives, on every rank,
        x ← x + η_g Σ_k w_k (y_k − x),   c ← c + Σ_k w_k (c_k⁺ − c_k).
    With a sample S of the clients taking part (--client-fraction), the model's mean is over
    them (w_k = n_k / their rows, shard.weight) and the control's sum keeps w_k = n_k/n, which is
    the paper's (S/N) factor. Its uniform means are weighted by rows here, so that
    c = Σ_k w_k c_k holds after every round (with everyone taking part) and the fixed point
    is the optimum of F = Σ_k w_k f_k + r (with full local gradients: y_k = x for all k there,
    c_k = ∇f_k(x*) − ∇f(x*) and c = 0).

    The regulariser is handled by the prox step with η_l in each local step (the same for every
    worker, so it cancels from the correction: (x − y)/(M η_l) is the mean prox-gradient
    mapping, zero at the optimum). With M = 1, η_g = 1 and a linear prox (l2 or none), the
    invariant c = Σ_k w_k c_k makes the corrections cancel in the weighted mean, so the model is
    ssgd's step for step (up to rounding); with an l1 part the prox does not commute with the mean.
    η_l defaults to --lr; η_g to 1. (Karimireddy et al. 2020, "SCAFFOLD: stochastic controlled
    averaging for federated learning".)
    """
    eta = settings.lr if local_lr is None else local_lr
    batch, d = settings.batch_size, problem.d
    if local_steps < 1:
        raise UsageError(f"scaffold: --local-steps must be at least 1, got {local_steps}")
    if not global_lr > 0.0:
        raise UsageError(f"scaffold: --global-lr must be positive, got {global_lr:g}")
    if not eta > 0.0:
        raise UsageError(f"scaffold: --local-lr must be positive, got {eta:g}")

    def init(w0):
        return w0.copy(), 0.0 * w0, 0.0 * w0  # (x, c, c_k); c_k stays 0 on a rank without data

    def local(state, shard):
        x, c, c_k = state
        y = local_corrected_prox_sgd(problem, x, shard, eta, batch, local_steps, c - c_k)
        c_k_new = c_k - c + (x - y) / (local_steps * eta)
        share = shard.n / problem.n  # of all clients: the paper's (S/N)·mean over the S taking part
        return np.concatenate((shard.weight * (y - x), share * (c_k_new - c_k))), (x, c, c_k_new)

    def combine(state, summed):
        x, c, c_k = state
        return x + global_lr * summed[:d], c + summed[d:], c_k  # new arrays: the runtime reuses its buffer

    return SyncAlgorithm(init, local, combine, model=lambda state: state[0], message_size=2 * d,
                         local_steps=local_steps)


SPEC = AlgorithmSpec(
    "scaffold", "sync",
    "stochastic controlled averaging: M drift-corrected local prox-SGD steps, then the weighted mean of the "
    "model and control updates", scaffold,
    params=(
        Param("local_steps", click.IntRange(min=1), 5, "local SGD steps M per worker each round"),
        Param("local_lr", click.FloatRange(min=0.0, min_open=True), None, "local step size η_l (default: --lr)"),
        Param("global_lr", click.FloatRange(min=0.0, min_open=True), 1.0, "global step size η_g > 0"),
    ),
)

"""Block-wise model update filtering."""

import click

from dmlcli.algorithms.base import AlgorithmSpec, Param, SyncAlgorithm
from dmlcli.algorithms.ma import local_prox_sgd
from dmlcli.errors import UsageError


def bmuf(problem, settings, local_steps=5, block_momentum=0.9, block_lr=1.0, nesterov=True):
    """Block-wise model update filtering (BMUF), synchronous.

    Each block (round) starts every worker from the same point s_t and runs M proximal SGD
    steps on its shard, as in ma; the Allreduce gives w̄ = Σ_k (n_k/n) w_k. Then, with block
    momentum μ and block learning rate ζ (Δ_0 = 0),
        Δ_t = μ Δ_{t−1} + ζ (w̄ − s_t),   w_{t+1} = w_t + Δ_t,
    and the next block starts at s_{t+1} = w_{t+1} (classic block momentum) or at
    s_{t+1} = w_{t+1} + μ Δ_t (Nesterov). Without Nesterov s_t = w_t; with it, the block's
    update w̄ − s_t is measured from the point the block started at (Chen & Huo's G(t) =
    W̄(t) − W_g(t−1)). The evaluated model is w_{t+1}. μ = 0, ζ = 1 is ma.
    (Chen & Huo 2016, "Scalable training of deep learning machines by incremental block
    training with intra-block parallel optimization and blockwise model-update filtering".)
    """
    eta, batch = settings.lr, settings.batch_size
    mu, zeta = block_momentum, block_lr
    if not 0.0 <= mu < 1.0:
        raise UsageError(f"bmuf: --block-momentum must be in [0, 1), got {mu:g}")
    if not zeta > 0.0:
        raise UsageError(f"bmuf: --block-lr must be positive, got {zeta:g}")
    if local_steps < 1:
        raise UsageError(f"bmuf: --local-steps must be at least 1, got {local_steps}")

    def init(w0):
        return w0.copy(), w0.copy(), 0.0 * w0  # (w_t, s_t the block's start, Δ_{t−1})

    def local(state, shard):
        _, start, _ = state
        return shard.weight * local_prox_sgd(problem, start, shard, eta, batch, local_steps), state

    def combine(state, mean):
        w, start, delta = state
        delta = mu * delta + zeta * (mean - start)
        w = w + delta
        return w, (w + mu * delta if nesterov else w), delta

    return SyncAlgorithm(init, local, combine, model=lambda state: state[0], message_size=problem.d,
                         local_steps=local_steps)


SPEC = AlgorithmSpec(
    "bmuf", "sync", "block-wise model update filtering: model averaging with block momentum on the averaged update", bmuf,
    params=(
        Param("local_steps", click.IntRange(min=1), 5, "local SGD steps M per worker in a block"),
        Param("block_momentum", click.FloatRange(0.0, 1.0, max_open=True), 0.9, "block momentum μ in [0, 1)"),
        Param("block_lr", click.FloatRange(min=0.0, min_open=True), 1.0, "block learning rate ζ > 0"),
        Param("nesterov", bool, True, "start each block from the Nesterov look-ahead w + μΔ"),
    ),
)

"""Distributed Adam."""

import click
import numpy as np

from dmlcli.algorithms.base import AlgorithmSpec, Param, SyncAlgorithm
from dmlcli.algorithms.compression import COMPRESSION_PARAMS, compressed
from dmlcli.errors import UsageError


def dadam(problem, settings, beta1=0.9, beta2=0.999, eps=1e-8, compressor="none", error_feedback=False):
    """Distributed Adam: an Allreduce of the gradient, then the same Adam step on every rank.

    Each worker computes a mini-batch gradient g_k of its shard's mean loss at w_t; the
    Allreduce gives g = Σ_k (n_k/n) g_k, and every rank applies (m_0 = v_0 = 0, t from 1)
        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,
        m̂ = m/(1 − β₁ᵗ),   v̂ = v/(1 − β₂ᵗ),
        s = η/(√v̂ + ε) (per coordinate),   w_{t+1} = prox_{s r}(w_t − s m̂).
    The regulariser is not in g: it is applied by its prox in Adam's own metric, coordinate i
    with step s_i (the l2 part shrinks by 1/(1 + s_i λ₂), the l1 part soft-thresholds at
    s_i λ₁). With the scalar step η instead, the fixed point would not be the optimum of F
    (there m̂/√v̂ stays near ±1, not at the gradient). η is about the largest move of a
    coordinate per step.
    (Kingma & Ba 2015, "Adam: a method for stochastic optimization".)
    """
    eta, batch = settings.lr, settings.batch_size
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= value < 1.0:
            raise UsageError(f"dadam: --{name} must be in [0, 1), got {value:g}")
    if not eps > 0.0:
        raise UsageError(f"dadam: --eps must be positive, got {eps:g}")

    def init(w0):
        return w0.copy(), 0.0 * w0, 0.0 * w0, 0  # (w, m, v, t)

    def local(state, shard):
        X, y = shard.batch(batch)
        return shard.weight * problem.grad_mean(state[0], X, y), state

    def combine(state, g):
        w, m, v, t = state
        t += 1
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        steps = eta / (np.sqrt(v / (1.0 - beta2**t)) + eps)  # Adam's step, one per coordinate
        return problem.reg.prox(w - steps * (m / (1.0 - beta1**t)), steps), m, v, t

    algorithm = SyncAlgorithm(init, local, combine, model=lambda state: state[0], message_size=problem.d)
    return compressed(algorithm, compressor, error_feedback, settings.seed)


SPEC = AlgorithmSpec(
    "dadam", "sync", "distributed Adam: Allreduce of the n_k-weighted gradients, the same Adam step on every rank", dadam,
    params=(
        Param("beta1", click.FloatRange(0.0, 1.0, max_open=True), 0.9, "decay β₁ of the first moment"),
        Param("beta2", click.FloatRange(0.0, 1.0, max_open=True), 0.999, "decay β₂ of the second moment"),
        Param("eps", click.FloatRange(min=0.0, min_open=True), 1e-8, "ε added to √v̂"),
        *COMPRESSION_PARAMS,
    ),
)

"""STORM: momentum-based variance reduction."""

import click

from dmlcli.algorithms.base import AlgorithmSpec, Param, SyncAlgorithm
from dmlcli.algorithms.compression import COMPRESSION_PARAMS, compressed
from dmlcli.errors import UsageError


def storm(problem, settings, momentum=0.1, compressor="none", error_feedback=False):
    """STORM (stochastic recursive momentum), distributed.

    Each worker k draws one mini-batch ξ of its shard and updates its own estimate
        d_k = ∇f_k(w_t; ξ) + (1 − a)(d_k − ∇f_k(w_{t−1}; ξ))   (first round: d_k = ∇f_k(w_0; ξ)),
    both gradients on the same ξ (two gradient evaluations per step); the Allreduce gives
    d = Σ_k (n_k/n) d_k, and every rank applies w_{t+1} = prox_{ηr}(w_t − η d) (the
    regulariser by the prox, as in ssgd). a = 1 is ssgd; with --batch-size all, d_k is the exact
    local gradient and this is ssgd for every a. Constant η and a, where the paper adapts both.
    (Cutkosky & Orabona 2019, "Momentum-based variance reduction in non-convex SGD".)
    """
    eta, batch, a = settings.lr, settings.batch_size, momentum
    if not 0.0 < a <= 1.0:
        raise UsageError(f"storm: --momentum must be in (0, 1], got {a:g}")

    def init(w0):
        return w0.copy(), None, None  # (w_t, w_{t−1}, this worker's d_k)

    def local(state, shard):
        w, previous, d = state
        X, y = shard.batch(batch)
        gradient = problem.grad_mean(w, X, y)
        if d is None:
            d = gradient
        else:
            d = gradient + (1.0 - a) * (d - problem.grad_mean(previous, X, y))
        return shard.weight * d, (w, previous, d)

    def combine(state, mean):
        w, _, d = state
        return problem.reg.prox(w - eta * mean, eta), w, d

    algorithm = SyncAlgorithm(init, local, combine, model=lambda state: state[0], message_size=problem.d)
    return compressed(algorithm, compressor, error_feedback, settings.seed)


SPEC = AlgorithmSpec(
    "storm", "sync", "STORM: each worker's recursive-momentum gradient estimate, Allreduce of their n_k-weighted mean",
    storm,
    params=(
        Param("momentum", click.FloatRange(0.0, 1.0, min_open=True), 0.1, "momentum a in (0, 1]; a = 1 is ssgd"),
        *COMPRESSION_PARAMS,
    ),
)

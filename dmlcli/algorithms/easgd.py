"""Elastic averaging SGD."""

import click

from dmlcli.algorithms.base import AlgorithmSpec, Param, SyncAlgorithm
from dmlcli.algorithms.ma import local_prox_sgd
from dmlcli.errors import UsageError

DEFAULT_BETA = 0.9  # the paper's choice in its experiments


def easgd(problem, settings, rho=None, period=1):
    """Elastic averaging SGD (EASGD), synchronous.

    Every worker keeps its own model w_k (never overwritten) and every rank the centre w̃,
    both starting at w_0; α = ηρ, β = Kα for K workers. Each round a worker takes τ local
    proximal SGD steps, w_k ← prox_{ηr}(w_k − η g_k) (the regulariser enters through the prox
    of the local step), and then, with the values of w_k and w̃ before the exchange,
        w_k ← w_k − α (w_k − w̃),   w̃ ← (1 − β) w̃ + β Σ_k (n_k/n) w_k.
    The mean is n_k-weighted, as in ssgd (the paper's plain mean when the shards are equal),
    so the centre is pulled towards the optimum of F. The evaluated model is w̃. Without
    --rho, ρ = 0.9/(Kη), i.e. β = 0.9; β must be below 1.
    (Zhang, Choromanska, LeCun 2015, "Deep learning with elastic averaging SGD".)
    """
    eta, batch, workers = settings.lr, settings.batch_size, settings.workers
    if rho is None:
        rho = DEFAULT_BETA / (workers * eta)
    if not rho > 0.0:
        raise UsageError(f"easgd: --rho must be positive, got {rho:g}")
    if period < 1:
        raise UsageError(f"easgd: --period must be at least 1, got {period}")
    alpha = eta * rho
    beta = workers * alpha
    if not beta < 1.0:
        raise UsageError(f"easgd: β = K·η·ρ = {workers} × {eta:.4g} × {rho:.4g} = {beta:.4g} must be below 1; "
                         f"choose --rho below {1.0 / (workers * eta):.4g} or a smaller --lr")

    def init(w0):
        return w0.copy(), w0.copy()  # (w_k, w̃)

    def local(state, shard):
        w, centre = state
        w = local_prox_sgd(problem, w, shard, eta, batch, period)
        return shard.weight * w, (w, centre)

    def combine(state, mean):
        w, centre = state
        return w - alpha * (w - centre), (1.0 - beta) * centre + beta * mean

    return SyncAlgorithm(init, local, combine, model=lambda state: state[1], message_size=problem.d,
                         local_steps=period)


SPEC = AlgorithmSpec(
    "easgd", "sync", "elastic averaging SGD: local models tied to a centre by an elastic force, exchanged every τ steps",
    easgd,
    params=(
        Param("rho", click.FloatRange(min=0.0, min_open=True), None,
              "elastic coupling ρ: α = ηρ, β = Kα must be below 1 (default: ρ = 0.9/(Kη), i.e. β = 0.9)"),
        Param("period", click.IntRange(min=1), 1, "local SGD steps τ between communications"),
    ),
    client_sampling=False,  # a client that sits a round out would still be pulled to the centre
)

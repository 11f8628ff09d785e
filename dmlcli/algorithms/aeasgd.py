"""Asynchronous elastic averaging SGD on a parameter server."""

import click

from dmlcli.algorithms.base import APPLIED, AlgorithmSpec, AsyncAlgorithm, Param
from dmlcli.algorithms.ma import local_prox_sgd
from dmlcli.errors import UsageError

DEFAULT_BETA = 0.9  # the paper's β = Kα in its experiments, as easgd's default


def aeasgd(problem, settings, rho=None, period=1):
    """Asynchronous EASGD: local models tied to a centre by an elastic force, exchanged on a parameter server.

    Every worker keeps its own model x_k (starting at w_0) and the server the centre w̃ (the model
    served and evaluated). A worker takes τ (--period) local proximal SGD steps on its shard,
        x_k ← prox_{ηr}(x_k − η g_k),
    then, with the centre w̃ it received at its last exchange (the server's reply to it),
        e = α (x_k − w̃),   x_k ← x_k − e,   and sends e;
    the server applies it as it arrives, w̃ ← w̃ + e, and replies with the new centre. α = ηρ;
    without --rho, α = 0.9/K (ρ = 0.9/(Kη), β = Kα = 0.9, the paper's choice). α must be below 1:
    one exchange moves x_k − w̃ to (1 − 2α)(x_k − w̃), which no longer shrinks at α ≥ 1.
    The force is symmetric (x_k + w̃ is unchanged by an exchange), so the centre weighs the workers
    by how often they exchange, not by n_k (equal when the shards and the workers' rates are).
    The paper computes the first gradient of a period at x_k before the elastic move; here the
    move comes after the period's steps, as in easgd, so e carries them to the centre at once.
    The CSV's `round` and `updates` count exchanges (server updates), its `epochs` all τ local steps.
    (Zhang, Choromanska, LeCun 2015, "Deep learning with elastic averaging SGD", Algorithm 1.)
    """
    eta, batch, workers = settings.lr, settings.batch_size, settings.workers
    if rho is None:
        rho = DEFAULT_BETA / (workers * eta)
    if not rho > 0.0:
        raise UsageError(f"aeasgd: --rho must be positive, got {rho:g}")
    if period < 1:
        raise UsageError(f"aeasgd: --period must be at least 1, got {period}")
    alpha = eta * rho
    if not alpha < 1.0:
        raise UsageError(f"aeasgd: α = η·ρ = {eta:.4g} × {rho:.4g} = {alpha:.4g} must be below 1; "
                         f"choose --rho below {1.0 / eta:.4g} or a smaller --lr")

    def worker_step(x, centre, shard):
        x = local_prox_sgd(problem, x, shard, eta, batch, period)
        e = alpha * (x - centre)
        return e, x - e

    def server_update(centre, e, staleness):
        return centre + e, APPLIED

    return AsyncAlgorithm(server_init=lambda w0: w0.copy(), worker_init=lambda w0: w0.copy(), worker_step=worker_step,
                          server_update=server_update, model=lambda centre: centre, payload_size=problem.d,
                          local_steps=period)


SPEC = AlgorithmSpec(
    "aeasgd", "async",
    "asynchronous elastic averaging SGD: τ local steps, then an elastic exchange with the server's centre", aeasgd,
    params=(
        Param("rho", click.FloatRange(min=0.0, min_open=True), None,
              "elastic coupling ρ: α = ηρ must be below 1 (default: ρ = 0.9/(Kη), i.e. α = 0.9/K)"),
        Param("period", click.IntRange(min=1), 1, "local SGD steps τ between exchanges with the server"),
    ),
    extra_columns=("staleness_mean", "staleness_max"),
)

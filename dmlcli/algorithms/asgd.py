"""Asynchronous SGD on a parameter server."""

import click

from dmlcli.algorithms.base import NON_NEGATIVE_INT, AlgorithmSpec, AsyncAlgorithm, Param


def asgd(problem, settings, staleness_lr="constant", max_staleness=None):
    """Asynchronous SGD with a parameter server.

    A worker receives w with its version v, computes a mini-batch gradient g of its shard's
    mean loss at w and sends g back tagged with v. The server applies each gradient as it
    arrives, with staleness τ = (current version) − v:
        w ← prox_{η_τ r}(w − η_τ g),   η_τ = η (constant) or η/(1+τ) (inverse),
    and drops (and counts) a gradient with τ > max_staleness.
    (Recht et al. 2011; Dean et al. 2012, "Large scale distributed deep networks";
    Zhang et al. 2016, "Staleness-aware async-SGD".)
    """
    eta = settings.lr
    step_size = (lambda tau: eta) if staleness_lr == "constant" else (lambda tau: eta / (1.0 + tau))

    def server_update(w, g, staleness):
        if max_staleness is not None and staleness > max_staleness:
            return w, False
        step = step_size(staleness)
        return problem.reg.prox(w - step * g, step), True

    def worker_step(state, w, shard):
        X, y = shard.batch(settings.batch_size)
        return problem.grad_mean(w, X, y), state

    return AsyncAlgorithm(
        server_init=lambda w0: w0.copy(),
        worker_init=lambda w0: None,
        worker_step=worker_step,
        server_update=server_update,
        model=lambda w: w,
        payload_size=problem.d,
    )


SPEC = AlgorithmSpec(
    "asgd", "async", "asynchronous SGD: a parameter server applies each worker's gradient as it arrives", asgd,
    params=(
        Param("staleness_lr", click.Choice(["constant", "inverse"]), "constant",
              "step for a gradient of staleness τ: constant η, or inverse η/(1+τ)"),
        Param("max_staleness", NON_NEGATIVE_INT, None, "drop gradients staler than this many server updates (default: keep all)"),
    ),
    extra_columns=("staleness_mean", "staleness_max", "dropped"),
)

"""Asynchronous SGD on a parameter server."""

import click

from dmlcli.algorithms.base import NON_NEGATIVE_INT, AlgorithmSpec, AsyncAlgorithm, Param
from dmlcli.errors import UsageError


def asgd(problem, settings, staleness_lr="constant", max_staleness=None, push_every=1, pull_every=1):
    """Asynchronous SGD with a parameter server.

    A worker receives w with its version v, computes a mini-batch gradient g of its shard's
    mean loss at w and sends g back tagged with v. The server applies each gradient as it
    arrives, with staleness τ = (current version) − v:
        w ← prox_{η_τ r}(w − η_τ g),   η_τ = η (constant) or η/(1+τ) (inverse),
    and drops (and counts) a gradient with τ > max_staleness.
    Downpour's asymmetric exchange (--push-every p, --pull-every q, q a multiple of p): the worker
    keeps a local copy w_k, steps it on its own gradients, w_k ← prox_{ηr}(w_k − η g), and sends
    the sum G of its last p gradients every p steps; the server applies w ← prox_{pη_τ r}(w − η_τ G)
    (the p steps' prox in one), and the worker replaces w_k by the server's w every q steps only
    (between pulls it is not answered, so it does not wait). p = q = 1 is the rule above; τ counts
    server updates since the worker's last pull.
    (Recht et al. 2011; Dean et al. 2012, "Large scale distributed deep networks" (Downpour SGD,
    n_push and n_fetch); Zhang et al. 2016, "Staleness-aware async-SGD".)
    """
    if pull_every % push_every:
        raise UsageError(f"asgd: --pull-every {pull_every} must be a multiple of --push-every {push_every}: "
                         f"a worker pulls the model when it pushes")
    eta, batch = settings.lr, settings.batch_size
    step_size = (lambda tau: eta) if staleness_lr == "constant" else (lambda tau: eta / (1.0 + tau))

    def server_update(w, g, staleness):
        if max_staleness is not None and staleness > max_staleness:
            return w, False
        step = step_size(staleness)
        return problem.reg.prox(w - step * g, push_every * step), True

    def worker_step(local, w, shard):
        """`local` is the worker's own copy; w the model just pulled, or None between pulls."""
        if push_every == 1 and pull_every == 1:
            X, y = shard.batch(batch)
            return problem.grad_mean(w, X, y), None
        local = w.copy() if w is not None else local
        accrued = 0.0
        for _ in range(push_every):
            X, y = shard.batch(batch)
            g = problem.grad_mean(local, X, y)
            accrued = accrued + g
            local = problem.reg.prox(local - eta * g, eta)
        return accrued, local

    return AsyncAlgorithm(
        server_init=lambda w0: w0.copy(),
        worker_init=lambda w0: None,
        worker_step=worker_step,
        server_update=server_update,
        model=lambda w: w,
        payload_size=problem.d,
        local_steps=push_every,
        pushes_per_pull=pull_every // push_every,
    )


SPEC = AlgorithmSpec(
    "asgd", "async", "asynchronous SGD: a parameter server applies each worker's gradient as it arrives", asgd,
    params=(
        Param("staleness_lr", click.Choice(["constant", "inverse"]), "constant",
              "step for a gradient of staleness τ: constant η, or inverse η/(1+τ)"),
        Param("max_staleness", NON_NEGATIVE_INT, None, "drop gradients staler than this many server updates (default: keep all)"),
        Param("push_every", click.IntRange(min=1), 1,
              "p: send the sum of the last p gradients every p local steps (Downpour's n_push)"),
        Param("pull_every", click.IntRange(min=1), 1,
              "q: take the server's model every q local steps, a multiple of p; between pulls step a local copy (n_fetch)"),
    ),
    extra_columns=("staleness_mean", "staleness_max", "dropped"),
)

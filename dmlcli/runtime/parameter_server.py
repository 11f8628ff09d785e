"""The asynchronous parameter server: rank 0 serves, ranks 1..K work, point to point.

Protocol (each message a preallocated float64 buffer, a small header in front):
  server -> worker  TAG_WORK [version, 0, model…]   or TAG_STOP [0, 0]
  worker -> server  TAG_WORK [version, samples, payload…]
Each worker has at most one message in flight: it sends a payload and waits for the reply.
The server keeps one posted receive per worker and takes whichever completes first. Once the
budget is spent (rounds, time limit, or a non-finite model) it answers each worker's next
message with STOP; when every worker has been stopped nothing is left in flight (drain, then
stop). Models are kept at the evaluation points (KeptModels: memory bounded, the rest on disk)
and evaluated together after the run, so evaluation never holds up the workers nor counts as
training time.

What the server does with a payload is the algorithm's `server_update` verdict, an `Outcome`
(or a bool: True is APPLIED, False is DROPPED, asgd's form):
  APPLIED  the model advanced one version (a round); the sender is answered at once
  DROPPED  discarded and counted (the CSV's `dropped`); the sender is answered at once
  HELD     accepted, and the sender is not answered yet: it waits, idle, until the model next
           advances, or, with `Outcome(hold=True, until=...)`, until until(server_state) is true
           (checked after every payload). Held workers are answered with the newest model.
`advanced` and `hold` combine: an update that moves the model while making its sender wait (a
stale-synchronous bound) is Outcome(advanced=True, hold=True, until=...). When the budget is
spent every held worker is answered with STOP at once. ssgd --backup holds the first K−b−1
gradients of a version and applies them with the K−b-th (Chen et al. 2016).

Heterogeneity (runtime.heterogeneity; none by default, and then no hook runs): a worker waits
its network delay for each reply it receives (the reply in flight: the server never sleeps), sits
out dropped activations, sleeps its delay after each step and its network delay before sending.
The server counts each worker's payloads (the manifest's worker_steps) and the workers heard
from since the previous evaluation point (the CSV's active_workers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from dmlcli.algorithms.base import APPLIED, DROPPED, Outcome
from dmlcli.comm import TAG_STOP, TAG_WORK
from dmlcli.errors import UsageError
from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, KeptModels, evaluation_blocks, is_finite

HEADER = 2


def outcome_of(verdict) -> Outcome:
    return verdict if isinstance(verdict, Outcome) else APPLIED if verdict else DROPPED


def check_server_run(config, clients: int, workers: int) -> None:
    """Refuse what the server cannot run (on every rank, at start-up): it serves worker ranks, each
    with one client, in every round. (setup.check_clients already says so for the async family;
    this covers synchronous algorithms whose options put them on the server, ssgd --backup.)"""
    how = f"{config.algorithm} with these options runs on the parameter server, which serves one client per worker"
    if clients != workers:
        raise UsageError(f"{how}: --clients must equal the {workers} workers, got {clients}")
    if config.client_fraction < 1.0:
        raise UsageError(f"{how} in every round: --client-fraction below 1 is not defined for it")


def run_async(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Collective entry: serve on rank 0, work elsewhere, then evaluate the kept models together,
    block by block, rank 0 writing each block's CSV rows as they come."""
    kept = None
    if ctx.rank == 0:
        kept, status = _serve(ctx, algorithm)
        count = ctx.transport.bcast_object(len(kept))
    else:
        _work(ctx, algorithm)
        count, status = ctx.transport.bcast_object(), "completed"
    d = ctx.problem.d
    try:
        for start, stop in evaluation_blocks(count, d, ctx.plan.n_train + ctx.plan.n_test):
            models = kept.models(start, stop) if kept is not None else np.empty((stop - start, d))
            ctx.transport.bcast(models)
            results = ctx.evaluator.evaluate(models)
            if kept is not None:
                for counters, metrics in zip(kept.counters[start:stop], results):
                    ctx.recorder.write(counters, metrics)
    finally:
        if kept is not None:
            kept.close()
    if not is_finite(results[-1]):
        status = "diverged"
    return models[-1], status


def _serve(ctx, algorithm):
    config, transport, workers = ctx.config, ctx.transport, ctx.workers
    state = algorithm.server_init(ctx.initial_model())
    version = 0
    # The extras are the CSV's own columns (the family's and the algorithm's) that the server can fill.
    columns = set(ctx.recorder.log.columns) if ctx.recorder else set()
    initial = {"staleness_mean": 0.0, "staleness_max": 0, "dropped": 0, "active_clients": None, "compression_ratio": 1.0,
               "active_workers": None}
    counters = Counters(extras={column: value for column, value in initial.items() if column in columns})
    extras = counters.extras
    payloads_from = [0] * workers  # payloads taken from each worker (the manifest's worker_steps)
    heard_from: set[int] = set()  # workers whose payloads came since the last kept model
    staleness_total = 0
    staleness_max = 0
    accepted = 0  # payloads taken (not dropped) since the model last advanced: that advance's gradients
    replies = [np.empty(HEADER + ctx.problem.d) for _ in range(workers)]
    payloads = [np.empty(HEADER + algorithm.payload_size) for _ in range(workers)]
    stop_message = np.zeros(HEADER)
    sends: list = [None] * workers
    held: list[tuple[int, Callable | None]] = []  # (worker, until): senders not answered yet, in arrival order
    watch = Stopwatch()
    kept = KeptModels(ctx.problem.d, os.path.dirname(os.path.abspath(ctx.plan.csv_path)))

    def keep_model() -> bool:
        """Keep the model for evaluation (once per version); False if it is no longer finite."""
        model = algorithm.model(state)
        if not kept.counters or kept.counters[-1].round != version:
            counters.wall_s = watch.training()
            if "active_workers" in extras:
                extras["active_workers"] = len(heard_from) if version else None
                heard_from.clear()
            kept.add(counters.snapshot(), model)
        return bool(np.isfinite(model).all())

    def post(k: int, message: np.ndarray, tag: int) -> None:
        """Send to worker k once its previous message has gone: only then is the buffer ours again."""
        if sends[k] is not None:
            transport.wait(sends[k])
        if message is replies[k]:
            message[0] = version
            message[HEADER:] = algorithm.model(state)
        sends[k] = transport.isend(message, k + 1, tag)
        counters.bytes_sent += message.nbytes
        counters.messages += 1

    def answer(k: int) -> None:
        """The newest model to worker k, or STOP once the budget is spent."""
        nonlocal active
        if budget_spent:
            post(k, stop_message, TAG_STOP)
            active -= 1
        else:
            post(k, replies[k], TAG_WORK)
            receives[k] = transport.irecv(payloads[k], k + 1)

    keep_model()
    for k in range(workers):
        post(k, replies[k], TAG_WORK)
    receives = [transport.irecv(payloads[k], k + 1) for k in range(workers)]
    budget_spent, active, next_first = False, workers, 0
    while active:
        if len(held) == active:
            raise RuntimeError(f"{config.algorithm}: every worker is held and no payload can come to release them")
        # Look from the worker after the last one served: MPI's Testany favours low ranks when
        # several are ready, and a worker served more often biases the model towards its shard.
        order = [*range(next_first, workers), *range(next_first)]
        index, _ = transport.waitany([receives[j] for j in order])
        k = order[index]
        receives[k] = None  # answered (and received from again) only when the reply goes
        next_first = (k + 1) % workers
        payload = payloads[k]
        counters.bytes_sent += payload.nbytes
        counters.messages += 1
        outcome = None
        if not budget_spent:
            ctx.check_crash(counters.updates + 1)
            counters.updates += 1
            payloads_from[k] += 1
            heard_from.add(k)
            counters.samples += int(payload[1])
            staleness = version - int(payload[0])
            staleness_total += staleness
            staleness_max = max(staleness_max, staleness)
            state, verdict = algorithm.server_update(state, payload[HEADER:], staleness)
            outcome = outcome_of(verdict)
            accepted += not outcome.dropped
            if outcome.advanced:
                version += 1
                counters.round = version
                if "active_clients" in extras:
                    extras["active_clients"] = accepted
                accepted = 0
            if outcome.dropped and "dropped" in extras:
                extras["dropped"] += 1
            if "staleness_mean" in extras:
                extras["staleness_mean"] = staleness_total / counters.updates
            if "staleness_max" in extras:
                extras["staleness_max"] = staleness_max
            budget_spent = version >= config.rounds or ctx.should_stop(watch)
            if budget_spent or (outcome.advanced and version % config.evaluation_interval == 0):
                budget_spent = not keep_model() or budget_spent
            shown = {"staleness_mean": extras["staleness_mean"]} if "staleness_mean" in extras else {}
            ctx.recorder.tick(counters, **shown)
        # Answer the sender unless it is held, then every held worker that may go on now.
        ready = [j for j, until in held if budget_spent or (outcome.advanced if until is None else until(state))]
        held = [(j, until) for j, until in held if j not in ready]
        if outcome is not None and outcome.hold and not budget_spent and not (outcome.until and outcome.until(state)):
            held.append((k, outcome.until))
        else:
            answer(k)
        for j in ready:
            answer(j)
    for request in sends:
        if request is not None:
            transport.wait(request)
    ctx.worker_steps = payloads_from
    return kept, ctx.end_status()


def _work(ctx, algorithm) -> None:
    transport, shard = ctx.transport, ctx.shard
    state = algorithm.worker_init(ctx.initial_model())
    model = np.empty(HEADER + ctx.problem.d)
    payload = np.empty(HEADER + algorithm.payload_size)
    samples = ctx.plan.batch_sizes[ctx.rank - 1] * algorithm.local_steps
    sent = None
    step = 0
    me = ctx.delays  # this worker's heterogeneity, None without it
    while transport.wait(transport.irecv(model, 0)) != TAG_STOP:
        if me is not None:
            me.wait_for_message(model.nbytes)  # the reply's time in flight
            me.skip_dropped_activations()
            started = time.perf_counter()
        step += 1
        ctx.check_crash(step)
        update, state = algorithm.worker_step(state, model[HEADER:], shard)
        if me is not None:
            me.wait_after_compute(time.perf_counter() - started)
        if sent is not None:
            transport.wait(sent)
        payload[0], payload[1] = model[0], samples
        payload[HEADER:] = update
        if me is not None:
            me.wait_for_message(payload.nbytes)
        sent = transport.isend(payload, 0, TAG_WORK)
    if sent is not None:
        transport.wait(sent)

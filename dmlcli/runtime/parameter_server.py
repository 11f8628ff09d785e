"""The asynchronous parameter server: rank 0 serves, ranks 1..K work, point to point.

Protocol (each message a preallocated float64 buffer, a small header in front):
  server -> worker  TAG_WORK [version, 0, model…]   or TAG_STOP [0, 0]
  worker -> server  TAG_WORK [version, samples, payload…]
Each worker has at most one message in flight: it sends a payload and waits for the reply.
The server keeps one posted receive per worker and takes whichever completes first. Once the
budget is spent (rounds, time limit, or a non-finite model) it answers each worker's next
message with STOP; when every worker has been stopped nothing is left in flight (drain, then
stop). Models are kept at the evaluation points and evaluated together after the run, so
evaluation never holds up the workers nor counts as training time.
"""

from __future__ import annotations

import numpy as np

from dmlcli.comm import TAG_STOP, TAG_WORK
from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, is_finite

HEADER = 2


def run_async(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Collective entry: serve on rank 0, work elsewhere, then evaluate the kept models together."""
    if ctx.rank == 0:
        snapshots, status = _serve(ctx, algorithm)
        models = np.array([model for _, model in snapshots])
        ctx.transport.bcast_object(models.shape)
    else:
        _work(ctx, algorithm)
        models = np.empty(ctx.transport.bcast_object())
    ctx.transport.bcast(models)
    results = ctx.evaluator.evaluate(models)
    if ctx.rank != 0:
        return models[-1], "completed"
    for (counters, _), metrics in zip(snapshots, results):
        ctx.recorder.write(counters, metrics)
    if not is_finite(results[-1]):
        status = "diverged"
    return models[-1], status


def _serve(ctx, algorithm):
    config, transport, workers = ctx.config, ctx.transport, ctx.workers
    state = algorithm.server_init(ctx.initial_model())
    version = 0
    counters = Counters(extras={"staleness_mean": 0.0, "staleness_max": 0, "dropped": 0})
    staleness_total = 0
    replies = [np.empty(HEADER + ctx.problem.d) for _ in range(workers)]
    payloads = [np.empty(HEADER + algorithm.payload_size) for _ in range(workers)]
    stop_message = np.zeros(HEADER)
    sends: list = [None] * workers
    watch = Stopwatch()
    snapshots: list = []

    def keep_snapshot() -> None:
        if snapshots and snapshots[-1][0].round == version:
            return
        counters.wall_s = watch.training()
        snapshots.append((counters.snapshot(), algorithm.model(state).copy()))

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

    keep_snapshot()
    for k in range(workers):
        post(k, replies[k], TAG_WORK)
    receives = [transport.irecv(payloads[k], k + 1) for k in range(workers)]
    budget_spent, active, next_first = False, workers, 0
    while active:
        # Look from the worker after the last one served: MPI's Testany favours low ranks when
        # several are ready, and a worker served more often biases the model towards its shard.
        order = [*range(next_first, workers), *range(next_first)]
        index, _ = transport.waitany([receives[j] for j in order])
        k = order[index]
        next_first = (k + 1) % workers
        payload = payloads[k]
        counters.bytes_sent += payload.nbytes
        counters.messages += 1
        if not budget_spent:
            ctx.check_crash(counters.updates + 1)
            counters.updates += 1
            counters.samples += int(payload[1])
            staleness = version - int(payload[0])
            staleness_total += staleness
            extras = counters.extras
            extras["staleness_mean"] = staleness_total / counters.updates
            extras["staleness_max"] = max(extras["staleness_max"], staleness)
            state, applied = algorithm.server_update(state, payload[HEADER:], staleness)
            if applied:
                version += 1
                counters.round = version
            else:
                extras["dropped"] += 1
            budget_spent = version >= config.rounds or ctx.should_stop(watch)
            if budget_spent or (applied and version % config.evaluation_interval == 0):
                keep_snapshot()
                budget_spent = budget_spent or not np.isfinite(snapshots[-1][1]).all()
            ctx.recorder.tick(counters, staleness_mean=extras["staleness_mean"])
        if budget_spent:
            post(k, stop_message, TAG_STOP)
            receives[k] = None
            active -= 1
        else:
            post(k, replies[k], TAG_WORK)
            receives[k] = transport.irecv(payloads[k], k + 1)
    for request in sends:
        if request is not None:
            transport.wait(request)
    return snapshots, ctx.end_status()


def _work(ctx, algorithm) -> None:
    transport, shard = ctx.transport, ctx.shard
    state = algorithm.worker_init(ctx.initial_model())
    model = np.empty(HEADER + ctx.problem.d)
    payload = np.empty(HEADER + algorithm.payload_size)
    samples = ctx.plan.batch_sizes[ctx.rank - 1]
    sent = None
    step = 0
    while transport.wait(transport.irecv(model, 0)) != TAG_STOP:
        step += 1
        ctx.check_crash(step)
        update, state = algorithm.worker_step(state, model[HEADER:], shard)
        if sent is not None:
            transport.wait(sent)
        payload[0], payload[1] = model[0], samples
        payload[HEADER:] = update
        sent = transport.isend(payload, 0, TAG_WORK)
    if sent is not None:
        transport.wait(sent)

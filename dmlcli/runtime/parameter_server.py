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
"""

from __future__ import annotations

import os

import numpy as np

from dmlcli.comm import TAG_STOP, TAG_WORK
from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, KeptModels, evaluation_blocks, is_finite

HEADER = 2


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
    counters = Counters(extras={"staleness_mean": 0.0, "staleness_max": 0, "dropped": 0})
    staleness_total = 0
    replies = [np.empty(HEADER + ctx.problem.d) for _ in range(workers)]
    payloads = [np.empty(HEADER + algorithm.payload_size) for _ in range(workers)]
    stop_message = np.zeros(HEADER)
    sends: list = [None] * workers
    watch = Stopwatch()
    kept = KeptModels(ctx.problem.d, os.path.dirname(os.path.abspath(ctx.plan.csv_path)))

    def keep_model() -> bool:
        """Keep the model for evaluation (once per version); False if it is no longer finite."""
        model = algorithm.model(state)
        if not kept.counters or kept.counters[-1].round != version:
            counters.wall_s = watch.training()
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

    keep_model()
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
                budget_spent = not keep_model() or budget_spent
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
    return kept, ctx.end_status()


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

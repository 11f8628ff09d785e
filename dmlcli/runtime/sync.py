"""The synchronous loop: every round, every rank computes, one Allreduce sums, every rank combines."""

from __future__ import annotations

import numpy as np

from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, is_finite


def run_sync(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Run to --rounds or --time-limit; returns (final model, status). Collective."""
    config, transport = ctx.config, ctx.transport

    state = algorithm.init(ctx.initial_model())
    # The last slot is rank 0's stop flag, so the time limit needs no extra message.
    buf = np.zeros(algorithm.message_size + 1)
    counters = Counters()
    samples_per_round = sum(ctx.plan.batch_sizes) * algorithm.local_steps
    watch = Stopwatch()

    def evaluate() -> bool:
        counters.wall_s = watch.training()
        with watch.evaluating():
            metrics = ctx.evaluator.evaluate(algorithm.model(state)[None])[0]
        counters.eval_s = watch.eval_s
        if ctx.recorder:
            ctx.recorder.write(counters, metrics)
        return is_finite(metrics)

    if not evaluate():
        return algorithm.model(state), "diverged"
    for round_ in range(1, config.rounds + 1):
        ctx.check_crash(round_)
        if ctx.shard is not None:
            message, state = algorithm.local(state, ctx.shard)
            buf[:-1] = message
        else:
            buf[:-1] = 0.0
        buf[-1] = float(ctx.rank == 0 and ctx.should_stop(watch))
        transport.allreduce(buf)
        state = algorithm.combine(state, buf[:-1])

        counters.round = round_
        counters.updates += ctx.workers * algorithm.local_steps
        counters.samples += samples_per_round
        counters.bytes_sent += buf.nbytes * transport.size
        counters.messages += transport.size
        stop = buf[-1] > 0 or round_ == config.rounds
        if stop or round_ % config.evaluation_interval == 0:
            if not evaluate():
                return algorithm.model(state), "diverged"
        elif ctx.recorder:
            ctx.recorder.tick(counters)
        if stop:
            break
    return algorithm.model(state), ctx.end_status()

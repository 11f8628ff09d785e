"""The synchronous loop: every round, every rank computes, one Allreduce sums, every rank combines.

A worker rank serves one or more clients (`--clients`, default one per worker). Each round the
clients taking part (`--client-fraction`: a seeded sample, the same on every rank) run the
algorithm's local step on their own shard and state, and the rank sums their messages before
the one Allreduce. Every client's state then combines the sum, so the global part of every
state stays equal on every rank while each client keeps its own local part (easgd's local
model, scaffold's control, storm's momentum).
"""

from __future__ import annotations

import math

import numpy as np

from dmlcli.runtime.context import Stopwatch
from dmlcli.runtime.evaluate import Counters, is_finite

CLIENT_STREAM = 11  # seeds the clients taking part in each round (setup's sampler stream is 10)


class ClientSampler:
    """The clients taking part in a round: all of them, or ⌈C·N⌉ drawn without replacement from
    a generator seeded by (seed, round), so every rank draws the same set with no message."""

    def __init__(self, clients: int, fraction: float, seed: int):
        self.clients, self.seed = clients, seed
        self.count = clients if fraction >= 1.0 else max(1, math.ceil(round(fraction * clients, 9)))
        self.everyone = np.arange(clients)

    def active(self, round_: int) -> np.ndarray:
        if self.count == self.clients:
            return self.everyone
        rng = np.random.default_rng([self.seed, CLIENT_STREAM, round_])
        return np.sort(rng.choice(self.clients, size=self.count, replace=False))


def run_sync(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Run to --rounds or --time-limit; returns (final model, status). Collective."""
    config, transport, plan = ctx.config, ctx.transport, ctx.plan

    w0 = ctx.initial_model()
    states = {shard.client: algorithm.init(w0) for shard in ctx.shards} or {None: algorithm.init(w0)}
    sampler = ClientSampler(len(plan.client_sizes), config.client_fraction, config.seed)
    everyone = sampler.count == sampler.clients
    sizes, batch_sizes = np.array(plan.client_sizes), np.array(plan.batch_sizes)
    taking_part = ctx.shards if everyone else []
    for shard in taking_part:
        shard.weight = shard.n / plan.n_train
    samples_per_round = int(batch_sizes.sum()) * algorithm.local_steps
    # The last slot is rank 0's stop flag, so the time limit needs no extra message.
    buf = np.zeros(algorithm.message_size + 1)
    counters = Counters(extras={"active_clients": sampler.count})
    watch = Stopwatch()

    def model() -> np.ndarray:
        return algorithm.model(next(iter(states.values())))

    def evaluate() -> bool:
        counters.wall_s = watch.training()
        with watch.evaluating():
            metrics = ctx.evaluator.evaluate(model()[None])[0]
        counters.eval_s = watch.eval_s
        if ctx.recorder:
            ctx.recorder.write(counters, metrics)
        return is_finite(metrics)

    if not evaluate():
        return model(), "diverged"
    for round_ in range(1, config.rounds + 1):
        ctx.check_crash(round_)
        if not everyone:
            active = sampler.active(round_)
            chosen, rows = set(active.tolist()), sizes[active].sum()
            taking_part = [shard for shard in ctx.shards if shard.client in chosen]
            for shard in taking_part:
                shard.weight = shard.n / rows
            samples_per_round = int(batch_sizes[active].sum()) * algorithm.local_steps
        if not taking_part:
            buf[:-1] = 0.0
        for position, shard in enumerate(taking_part):
            message, states[shard.client] = algorithm.local(states[shard.client], shard)
            if position == 0:
                buf[:-1] = message
            else:
                buf[:-1] += message
        buf[-1] = float(ctx.rank == 0 and ctx.should_stop(watch))
        transport.allreduce(buf)
        for client, state in states.items():
            states[client] = algorithm.combine(state, buf[:-1])

        counters.round = round_
        counters.updates += sampler.count * algorithm.local_steps
        counters.samples += samples_per_round
        counters.bytes_sent += buf.nbytes * transport.size
        counters.messages += transport.size
        stop = buf[-1] > 0 or round_ == config.rounds
        if stop or round_ % config.evaluation_interval == 0:
            if not evaluate():
                return model(), "diverged"
        elif ctx.recorder:
            ctx.recorder.tick(counters)
        if stop:
            break
    return model(), ctx.end_status()

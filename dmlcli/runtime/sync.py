"""The synchronous loop: every round, every rank computes, a collective sums, every rank combines.

A worker rank serves one or more clients (`--clients`, default one per worker). Each round the
clients taking part (`--client-fraction`: a seeded sample, the same on every rank) run the
algorithm's local step on their own shard and state, and the rank sums their messages before
the one Allreduce. Every client's state then combines the sum, so the global part of every
state stays equal on every rank while each client keeps its own local part (easgd's local
model, scaffold's control, storm's momentum).

A round is one or more phases (giant: gradient, direction, line search), each a local step and
one reduction: an Allreduce of the summed float64 messages, or, for compressed messages, an
Allgather of the payloads' sizes and an Allgatherv of the payloads, which every rank decodes
and sums (the bytes logged are those MPI carried). With `overlap`, round t's Allreduce is only
started, and completed after round t+1's local step. Algorithms may add CSV columns computed
from their states at evaluation rounds (`Report`).

Heterogeneity (runtime.heterogeneity; none by default, and then no hook runs): a worker whose
clients take part sleeps its delay after each local step and its network delay before each
collective; with --dropout the workers sitting a round out are drawn like the clients, seeded by
(seed, round) on every rank, and their clients leave the round as unsampled ones do.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dmlcli.algorithms import REGISTRY
from dmlcli.runtime import checkpoint, setup
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


class SumExchange:
    """One phase's Allreduce: the clients' messages summed into a buffer whose last slot carries
    rank 0's stop flag (so the time limit costs no extra message). Two buffers alternate, so an
    overlapped round can fill one while the other is still being reduced; each has its reduction
    set up once (a persistent Allreduce under MPI) and started every round it is sent."""

    compressed = False

    def __init__(self, transport, size: int):
        self.transport = transport
        self.buffers = (np.zeros(size + 1), np.zeros(size + 1))
        self.parts = tuple(buf[:-1] for buf in self.buffers)  # the messages' slots, without the flag
        self.reductions = tuple(transport.allreduce_init(buf) for buf in self.buffers)
        self.filling, self.sending, self.request = 0, 1, None
        self.empty = True  # no message in the filling buffer yet this round

    def begin(self) -> None:
        self.filling = 1 - self.sending  # never the buffer a started reduction may still be using
        self.empty = True

    def add(self, message: np.ndarray, shard) -> None:
        # The first message is copied in rather than added to zeros: one pass over d floats fewer a
        # round (at d = 10⁶, 1.1 ms instead of 1.8-2.5 ms per rank on the 2-core development machine).
        part = self.parts[self.filling]
        if self.empty:
            part[:] = message
            self.empty = False
        else:
            part += message

    def outgoing_bytes(self) -> int:
        """This rank's part of the next reduction: its buffer."""
        return self.buffers[self.filling].nbytes

    def start(self, stop_flag: bool) -> tuple[int, int]:
        """Start the reduction; returns (bytes MPI carries, bytes uncompressed): one buffer per rank."""
        self.sending = self.filling
        buf = self.buffers[self.sending]
        if self.empty:  # rank 0, or a worker whose clients all sat the round out
            self.parts[self.sending][:] = 0.0
        buf[-1] = float(stop_flag)
        self.request = self.reductions[self.sending].start()
        sent = buf.nbytes * self.transport.size
        return sent, sent

    def finish(self, weights) -> tuple[np.ndarray, bool]:
        self.transport.complete(self.request)
        self.request = None
        return self.parts[self.sending], self.buffers[self.sending].item(-1) > 0

    def close(self) -> None:
        """After the last round: complete a reduction still running (an overlapped run that
        diverged), since MPI may not free an active collective, then release the reductions."""
        if self.request is not None:
            self.transport.complete(self.request)
            self.request = None
        for reduction in self.reductions:
            reduction.free()


class PayloadExchange:
    """One phase's compressed messages. Each rank concatenates its clients' payloads (a variable-size
    compressor's each behind its uint32 length), one Allgather shares [bytes, stop flag] per rank,
    one Allgatherv the payloads; every rank then decodes each and sums them weighted by their
    clients' shares. Payloads arrive in client order: a rank's clients are consecutive and ranks
    hold them in rank order."""

    compressed = True
    HEADER = np.dtype("<i8").itemsize * 2

    def __init__(self, transport, compressor, size: int):
        self.transport, self.compressor, self.size = transport, compressor, size
        self.fixed = compressor.fixed_size
        self.payloads: list = []

    def begin(self) -> None:
        self.payloads = []

    def add(self, payload: np.ndarray, shard) -> None:
        if not self.fixed:
            self.payloads.append(np.array([payload.size], dtype="<u4").view(np.uint8))
        self.payloads.append(payload)

    def outgoing_bytes(self) -> int:
        """This rank's payloads (with their length prefixes) and its [size, stop] header."""
        return sum(payload.size for payload in self.payloads) + self.HEADER

    def start(self, stop_flag: bool) -> tuple[int, int]:
        mine = np.concatenate(self.payloads) if self.payloads else np.zeros(0, dtype=np.uint8)
        header = self.transport.allgather(np.array([mine.size, int(stop_flag)], dtype=np.int64))
        self.gathered = self.transport.allgatherv(mine, header[:, 0])
        self.stop = bool(header[:, 1].any())
        self.messages = self._split(self.gathered)
        return int(header[:, 0].sum()) + self.HEADER * self.transport.size, 8 * self.size * len(self.messages)

    def _split(self, data: np.ndarray) -> list[np.ndarray]:
        if self.fixed:
            step = self.compressor.max_bytes(self.size)
            return [data[i:i + step] for i in range(0, data.size, step)]
        messages, offset = [], 0
        while offset < data.size:
            length = int(data[offset:offset + 4].view("<u4")[0])
            messages.append(data[offset + 4:offset + 4 + length])
            offset += 4 + length
        return messages

    def finish(self, weights) -> tuple[np.ndarray, bool]:
        if len(self.messages) != len(weights):
            raise RuntimeError(f"{len(self.messages)} compressed messages arrived for {len(weights)} clients")
        summed = np.zeros(self.size)
        for payload, weight in zip(self.messages, weights):
            summed += weight * self.compressor.decode(payload, self.size)
        return summed, self.stop

    def close(self) -> None:
        pass


def run_sync(ctx, algorithm) -> tuple[np.ndarray, str]:
    """Run to --rounds or --time-limit; returns (final model, status). Collective."""
    config, transport, plan = ctx.config, ctx.transport, ctx.plan

    w0 = ctx.initial_model()
    states = {shard.client: algorithm.init(w0) for shard in ctx.shards} or {None: algorithm.init(w0)}
    sampler = ClientSampler(len(plan.client_sizes), config.client_fraction, config.seed)
    het, me = ctx.heterogeneity, ctx.delays  # the run's models; this worker's delays (None: no hooks)
    dropout = het is not None and het.dropout > 0
    everyone = sampler.count == sampler.clients and not dropout
    owners = setup.client_owners(sampler.clients, ctx.workers)  # each client's worker, 0-based
    worker_steps = np.zeros(ctx.workers, dtype=np.int64) if ctx.rank == 0 and not everyone else None
    sizes, batch_sizes = np.array(plan.client_sizes), np.array(plan.batch_sizes)
    active, taking_part = sampler.everyone, ctx.shards if everyone else []
    active_weights = sizes / plan.n_train  # the shares of the clients taking part, in client order
    for shard in taking_part:
        shard.weight = shard.n / plan.n_train
    samples_per_round = int(batch_sizes.sum()) * algorithm.local_steps
    phases = algorithm.phases
    exchanges = [PayloadExchange(transport, phase.compressor, phase.message_size) if phase.compressor
                 else SumExchange(transport, phase.message_size) for phase in phases]
    counters = Counters(extras={"active_workers": None, "active_clients": sampler.count, "compression_ratio": 1.0})
    counters.extras.update({c: 0 for c in REGISTRY[config.algorithm].extra_columns if c not in counters.extras})  # ssgd's dropped
    carried = uncompressed = 0
    watch = Stopwatch()

    def model() -> np.ndarray:
        return algorithm.model(next(iter(states.values())))

    def evaluate() -> bool:
        counters.wall_s = watch.training()
        with watch.evaluating():
            metrics = ctx.evaluator.evaluate(model()[None])[0]
            if algorithm.report:
                counters.extras.update(_report(transport, algorithm.report, states, ctx.shards))
        counters.eval_s = watch.eval_s
        if ctx.recorder:
            ctx.recorder.write(counters, metrics)
        return is_finite(metrics)

    def local_steps(phase, exchange, new_step: bool) -> None:
        exchange.begin()
        started = time.perf_counter() if me is not None else 0.0
        for shard in taking_part:
            message, states[shard.client] = phase.local(states[shard.client], shard)
            exchange.add(message, shard)
        if me is not None and taking_part:
            me.wait_after_compute(time.perf_counter() - started, new_step)

    def combine(phase, exchange) -> bool:
        """Complete the exchange, combine its sum into every state; True if rank 0 asked to stop."""
        summed, stop = exchange.finish(active_weights)
        for client, state in states.items():
            states[client] = phase.combine(state, summed)
        return stop

    def send(exchange, stop_flag: bool) -> None:
        nonlocal carried, uncompressed
        if me is not None and me.network is not None and taking_part:
            me.wait_for_message(exchange.outgoing_bytes())
        sent, dense = exchange.start(stop_flag)
        carried, uncompressed = carried + sent, uncompressed + dense
        counters.bytes_sent += sent
        counters.messages += transport.size * (2 if exchange.compressed else 1)

    def finish(status: str) -> tuple[np.ndarray, str]:
        for exchange in exchanges:
            exchange.close()
        if ctx.rank == 0:
            ctx.worker_steps = (worker_steps if worker_steps is not None else np.full(ctx.workers, counters.round)).tolist()
        return model(), status

    def snapshot() -> dict:
        """This rank's part of a checkpoint at the end of the round."""
        return {"states": checkpoint.without_functions(states), "counters": counters,
                "samplers": {shard.client: checkpoint.sampler_state(shard) for shard in ctx.shards},
                "carried": carried, "uncompressed": uncompressed, "worker_steps": worker_steps,
                "training_s": watch.training(), "eval_s": watch.eval_s, "delays": me}

    def restore(part: dict) -> int:
        """Go on from a checkpoint: the states, samplers, counters and clocks it saved; its round."""
        nonlocal carried, uncompressed, worker_steps
        states.update(part["states"])
        for shard in ctx.shards:
            checkpoint.restore_sampler(shard, part["samplers"][shard.client])
        vars(counters).update(vars(part["counters"]))
        carried, uncompressed, worker_steps = part["carried"], part["uncompressed"], part["worker_steps"]
        if me is not None:
            vars(me).update(vars(part["delays"]))
        watch.resume(part["training_s"], part["eval_s"])
        return part["round"]

    if ctx.resumed:
        first_round = restore(ctx.resumed) + 1
    else:
        if not evaluate():
            return finish("diverged")
        if everyone:  # blank at round 0: no worker has taken part in anything yet
            counters.extras["active_workers"] = ctx.workers
        first_round = 1
    pending = False  # overlap: the previous round's reduction is still to be combined
    for round_ in range(first_round, config.rounds + 1):
        ctx.check_crash(round_)
        if not everyone:
            active = sampler.active(round_)
            if dropout:
                active = het.participants(active, owners, round_)
            chosen, rows = set(active.tolist()), sizes[active].sum()
            taking_part = [shard for shard in ctx.shards if shard.client in chosen]
            for shard in taking_part:
                shard.weight = shard.n / rows
            active_weights = sizes[active] / rows
            samples_per_round = int(batch_sizes[active].sum()) * algorithm.local_steps
            working = np.unique(owners[active])
            counters.extras["active_clients"] = active.size
            counters.extras["active_workers"] = working.size
            if worker_steps is not None:
                worker_steps[working] += 1
        stop_flag = ctx.rank == 0 and ctx.should_stop(watch)
        if algorithm.overlap:
            (phase,), (exchange,) = phases, exchanges
            local_steps(phase, exchange, True)
            stop = combine(phase, exchange) if pending else False  # the other buffer: last round's
            pending = not (stop or round_ == config.rounds)
            if pending:
                send(exchange, stop_flag)
        else:
            for index, (phase, exchange) in enumerate(zip(phases, exchanges)):
                local_steps(phase, exchange, index == 0)
                send(exchange, stop_flag and index == 0)
                stopped = combine(phase, exchange)
                stop = stopped if index == 0 else stop  # only the first phase carries the flag

        counters.round = round_
        counters.updates += active.size * algorithm.local_steps
        counters.samples += samples_per_round
        counters.extras["compression_ratio"] = uncompressed / carried if carried else 1.0
        stop = stop or round_ == config.rounds
        ended = ctx.close_round(counters, stop, evaluate)
        if ctx.checkpoint_due(round_, ended, not algorithm.overlap):
            with watch.aside():
                ctx.write_checkpoint(round_, snapshot())
        if ended:
            return finish(ended)
    return finish(ctx.end_status())


def _report(transport, report, states: dict, shards: list) -> dict:
    """The algorithm's own CSV columns: its clients' contributions summed by one Allreduce."""
    summed = np.zeros(report.size)
    for shard in shards:
        summed += report.local(states[shard.client], shard)
    if report.size:  # columns read from the shared state alone need no message
        transport.allreduce(summed)
    return report.columns(next(iter(states.values())), summed)

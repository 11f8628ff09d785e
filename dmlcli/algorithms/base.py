"""What an algorithm is: a spec (name, family, hyper-parameters) and a factory of pure functions.

The runtime owns the loop and the messages; an algorithm only says what each rank computes.
- "sync" algorithms return `SyncAlgorithm`: every rank runs `local` (ranks without data
  contribute zeros), the runtime sums the messages with Allreduce, every rank runs `combine`.
- "async" algorithms return `AsyncAlgorithm`: workers run `worker_step` on the newest model
  they received; the server (rank 0) runs `server_update` on each payload as it arrives,
  knowing its staleness.
- "gossip" (decentralised) algorithms return `GossipAlgorithm`: no server and no global sum;
  each worker runs `local`, swaps its message with its neighbours in the topology, and runs
  `mix` with the weighted sum Σ_j W_kj m_j of its own and its neighbours' messages.
- "shared" (shared-memory) algorithms return `SharedAlgorithm`: the workers of one node update
  one model w held in shared memory, without locks; each step a worker runs `compute` on w as it
  finds it and its shard, and `apply` writes the update into w in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import click

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Param:
    """One algorithm hyper-parameter; the CLI option --NAME (underscores become dashes) is made from it."""

    name: str
    type: Any  # a click type or a Python type click understands
    default: Any
    help: str
    allow_non_finite: bool = False  # NaN and ±inf are refused unless the parameter gives them a meaning

    def problem_with(self, value: Any) -> str | None:
        """Why a value its type converted is still unusable, or None. Flags, --set and recipes all
        check with this, whatever the type: click's FloatRange lets NaN through (every comparison
        with NaN is false), and Python's integers are unbounded where NumPy's, MPI's and TOML's are not."""
        if isinstance(value, float) and not math.isfinite(value) and not self.allow_non_finite:
            return f"{value} is not a finite number"
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            return f"{value} does not fit in a 64-bit integer"
        return None


@dataclass(frozen=True)
class Settings:
    """The shared settings an algorithm factory may read, resolved from CLI, recipe and defaults."""

    lr: float
    batch_size: int | None  # None: the whole shard
    workers: int
    seed: int


class Phase(NamedTuple):
    """One reduction of a round: every client taking part runs `local`, the runtime sums the
    messages over clients and ranks, and every client's state runs `combine` with the sum."""

    local: Callable  # (state, shard) -> (message, state)
    combine: Callable  # (state, summed) -> state
    message_size: int  # float64 entries of the message (of the decoded message, when compressed)
    # None: the messages are float64 vectors summed by Allreduce. A Compressor: each message is the
    # payload of the client's unweighted vector; the runtime Allgathers the payloads and every
    # rank decodes their sum, each weighted by its client's shard.weight.
    compressor: Any = None


class Report(NamedTuple):
    """Extra CSV columns computed from the algorithm's state, at evaluation rounds only: every
    client adds `local` (a vector of `size`), one Allreduce sums, `columns` reads the sum."""

    local: Callable  # (state, shard) -> vector of `size` floats
    size: int
    columns: Callable  # (state, summed) -> {column: value}


class SyncAlgorithm(NamedTuple):
    init: Callable  # (w0) -> state
    local: Callable  # (state, shard) -> (message, state); message has message_size entries
    combine: Callable  # (state, summed_message) -> state; the same model on every rank afterwards
    model: Callable  # (state) -> the model w to evaluate (equal on every rank)
    message_size: int
    local_steps: int = 1  # mini-batch steps each worker takes per round, for the CSV's updates and epochs
    compressor: Any = None  # the first phase's messages travel compressed (see Phase)
    more_phases: tuple[Phase, ...] = ()  # further reductions of the same round, in order (giant's)
    report: Report | None = None  # the algorithm's own CSV columns (admm's residuals)
    # Round t's reduction runs while round t+1's local step computes, and is combined after it:
    # every update is one round stale (ssgd --overlap). One uncompressed phase only.
    overlap: bool = False

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase(self.local, self.combine, self.message_size, self.compressor), *self.more_phases)


@dataclass(frozen=True)
class Outcome:
    """What `server_update` did with one payload (see the module's docstring)."""

    advanced: bool = False  # the model moved on one version: a round, kept for evaluation at the interval
    dropped: bool = False  # discarded unused: counted in the CSV's `dropped`
    hold: bool = False  # the sender gets no reply yet
    until: Callable | None = None  # (server_state) -> bool: when a held sender is answered; None: the next advance


APPLIED = Outcome(advanced=True)
DROPPED = Outcome(dropped=True)
HELD = Outcome(hold=True)


class AsyncAlgorithm(NamedTuple):
    server_init: Callable  # (w0) -> server state
    worker_init: Callable  # (w0) -> worker state
    worker_step: Callable  # (worker_state, model, shard) -> (payload, worker_state); model None between pulls
    server_update: Callable  # (server_state, payload, staleness) -> (server_state, Outcome, or a bool: applied)
    model: Callable  # (server_state) -> the model sent to workers and evaluated
    payload_size: int
    local_steps: int = 1  # mini-batch steps a worker_step takes, for the CSV's epochs (aeasgd's period)
    # (server_state, client) -> (server_state, advanced): the server goes on without a client whose
    # worker failed (--on-failure continue); advanced: the model moved on a version without it (a
    # bound that waited for it). None: nothing in the state depends on who works.
    leave: Callable | None = None
    # The worker takes the server's model after every this many payloads only: in between the server
    # does not answer, the worker does not wait, and worker_step gets None for the model (asgd --pull-every).
    pushes_per_pull: int = 1
    # (server_state, client) -> bool: may this client start its next step now? The server holds the
    # reply of a worker whose next client may not, until it may (ssp's bound). None: always.
    may_start: Callable | None = None


class GossipAlgorithm(NamedTuple):
    """A decentralised algorithm (runtime.gossip): worker k holds its own model x_k; rank 0 only
    coordinates (stop flag, evaluation of the mean model x̄) and takes no part in the gossip."""

    init: Callable  # (w0) -> state
    local: Callable  # (state, shard) -> (message, state); the message (message_size floats) goes to the neighbours
    mix: Callable  # (state, mixed) -> state; mixed = Σ_j W_kj message_j over k's neighbours and k itself
    model: Callable  # (state) -> x_k, this worker's model; the CSV evaluates their mean x̄
    message_size: int
    topology: str  # a name of runtime.gossip.TOPOLOGIES: who talks to whom, with which weights W, each round
    local_steps: int = 1  # mini-batch steps per round, for the CSV's updates and epochs


class SharedAlgorithm(NamedTuple):
    """A lock-free shared-memory algorithm (runtime.shared_memory): every worker rank of one node
    steps on the same model w, held once in memory they all map; rank 0 only coordinates (stop flag,
    snapshots of w for evaluation). Nothing travels, so there is no message size."""

    shard_sums: Callable  # (shard) -> d floats; the runtime adds them up over every worker's shard before the run
    init: Callable  # (summed) -> this worker's state, from the sum of shard_sums over all shards
    compute: Callable  # (state, w, shard) -> (update, state): one step's update from the shared w, read as found
    apply: Callable  # (w, update) -> None: writes the update into the shared w in place, without a lock


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    family: str  # "sync", "async", "gossip" or "shared"
    summary: str
    build: Callable  # (problem, settings, **params) -> SyncAlgorithm | AsyncAlgorithm | GossipAlgorithm | SharedAlgorithm
    params: tuple[Param, ...] = field(default_factory=tuple)
    extra_columns: tuple[str, ...] = ()
    client_sampling: bool = True  # False: every client must take part in every round (--client-fraction 1)
    full_batch: bool = False  # True: every round uses whole shards; --batch-size defaults to all, and must be all

    @property
    def doc(self) -> str:
        return self.build.__doc__ or self.summary


NON_NEGATIVE_INT = click.IntRange(min=0)

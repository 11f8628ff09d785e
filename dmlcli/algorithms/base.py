"""What an algorithm is: a spec (name, family, hyper-parameters) and a factory of pure functions.

The runtime owns the loop and the messages; an algorithm only says what each rank computes.
- "sync" algorithms return `SyncAlgorithm`: every rank runs `local` (ranks without data
  contribute zeros), the runtime sums the messages with Allreduce, every rank runs `combine`.
- "async" algorithms return `AsyncAlgorithm`: workers run `worker_step` on the newest model
  they received; the server (rank 0) runs `server_update` on each payload as it arrives,
  knowing its staleness.
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


class SyncAlgorithm(NamedTuple):
    init: Callable  # (w0) -> state
    local: Callable  # (state, shard) -> (message, state); message has message_size entries
    combine: Callable  # (state, summed_message) -> state; the same model on every rank afterwards
    model: Callable  # (state) -> the model w to evaluate (equal on every rank)
    message_size: int
    local_steps: int = 1  # mini-batch steps each worker takes per round, for the CSV's updates and epochs


class AsyncAlgorithm(NamedTuple):
    server_init: Callable  # (w0) -> server state
    worker_init: Callable  # (w0) -> worker state
    worker_step: Callable  # (worker_state, model, shard) -> (payload, worker_state)
    server_update: Callable  # (server_state, payload, staleness) -> (server_state, applied: bool)
    model: Callable  # (server_state) -> the model sent to workers and evaluated
    payload_size: int


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    family: str  # "sync" or "async"
    summary: str
    build: Callable  # (problem, settings, **params) -> SyncAlgorithm | AsyncAlgorithm
    params: tuple[Param, ...] = field(default_factory=tuple)
    extra_columns: tuple[str, ...] = ()
    client_sampling: bool = True  # False: every client must take part in every round (--client-fraction 1)

    @property
    def doc(self) -> str:
        return self.build.__doc__ or self.summary


NON_NEGATIVE_INT = click.IntRange(min=0)

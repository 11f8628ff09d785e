"""What a training loop is handed: the rank's transport, data, problem, and rank 0's outputs."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from dmlcli.runtime import checkpoint
from dmlcli.runtime.evaluate import Counters, Evaluator, csv_row


class InjectedCrash(RuntimeError):
    """The failure --crash RANK@STEP asks for."""


class StopRequest:
    """A graceful stop on rank 0: the first SIGINT/SIGTERM asks the loop to stop as if the budget
    were spent, so every rank still evaluates and the CSV and manifest are complete; another
    signal more than a second later interrupts at once. (Under mpiexec a Ctrl-C can arrive twice
    within moments: from the terminal and forwarded by mpiexec.)"""

    HARD_AFTER_S = 1.0

    def __init__(self):
        self.signum: int | None = None
        self._at = 0.0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
        elif time.monotonic() - self._at > self.HARD_AFTER_S:
            raise KeyboardInterrupt(128 + signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None


@dataclass
class RunContext:
    transport: object
    config: object  # RunConfig
    plan: object  # Plan
    problem: object  # Problem
    shards: list  # this rank's clients' Shards, in client order (none on rank 0)
    evaluator: Evaluator
    recorder: Recorder | None  # rank 0 only
    algorithm: object  # SyncAlgorithm or AsyncAlgorithm
    stop: StopRequest = field(default_factory=StopRequest)  # signals reach it on rank 0 only
    step: int = 0  # the round (or worker step) reached, for failure reports
    heterogeneity: object = None  # the run's Heterogeneity (runtime.heterogeneity), None without --delay/--network/--dropout
    delays: object = None  # this worker's WorkerDelays (None on rank 0 and without heterogeneity)
    worker_steps: list | None = None  # rank 0, filled by the loop: each worker's rounds taken part (sync) or payloads (async)
    failure: str | None = None  # a worker that failed and left the run alive (parameter server): what happened
    resumed: dict | None = None  # --resume: this rank's part of the checkpoint, with the "round" it was taken at
    checkpointed: int | None = None  # the round of the last checkpoint written

    @property
    def shard(self):
        """The one shard of a rank with one client (asynchronous algorithms); None on rank 0."""
        return self.shards[0] if self.shards else None

    @property
    def rank(self) -> int:
        return self.transport.rank

    @property
    def workers(self) -> int:
        return self.transport.size - 1

    def initial_model(self) -> np.ndarray:
        return np.zeros(self.problem.d)

    def should_stop(self, watch: Stopwatch) -> bool:
        """Rank 0's decision to end the run now: time limit reached, or a stop requested."""
        limit = self.config.time_limit
        return self.stop.requested or (limit is not None and watch.training() >= limit)

    def end_status(self) -> str:
        return "interrupted" if self.stop.requested else "completed"

    def close_round(self, counters, stop: bool, evaluate) -> str | None:
        """The end of round counters.round of a synchronous or gossip loop: evaluate (collective) at
        the interval and when stopping, else tick rank 0's progress. Returns the status the run ends
        with ("diverged", or end_status() when stopping), or None to go on."""
        if stop or counters.round % self.config.evaluation_interval == 0:
            if not evaluate():
                return "diverged"
        elif self.recorder:
            self.recorder.tick(counters)
        return self.end_status() if stop else None

    def checkpoint_due(self, round_: int, ended: str | None, possible: bool = True) -> bool:
        """Collective, at the end of a round: write a checkpoint now? Every --checkpoint-every rounds
        and at the end, and at a stop by a signal in any case (rank 0 alone knows; one broadcast
        at the end tells the others). Never for a diverged run, nor where `possible` is False."""
        if not possible or ended == "diverged":
            return False
        every = self.config.checkpoint_every
        if ended is None:
            return bool(every) and round_ % every == 0
        return bool(self.transport.bcast_object(self.stop.requested)) or bool(every)

    def write_checkpoint(self, round_: int, part: dict) -> None:
        """Collective: this rank's part to rank 0, which writes the checkpoint beside the CSV."""
        checkpoint.save(self.transport, self.plan.csv_path, round_, part)
        self.checkpointed = round_

    def check_crash(self, step: int) -> None:
        """Called at each round (each step on a worker of the parameter server): also the step a
        failure report names. --crash R@S:hang makes the rank stop answering instead of raising."""
        self.step = step
        crash = self.config.crash
        if crash and crash[:2] == (self.rank, step):
            if crash[2:] == ("hang",):
                self.transport.sleep_until_aborted()
            raise InjectedCrash(f"injected crash at step {step} (--crash {self.rank}@{step})")


class Recorder:
    """Rank 0's outputs during a run: CSV rows as they are evaluated, and the progress display."""

    def __init__(self, log, progress, n_train: int):
        self.log, self.progress, self.n_train = log, progress, n_train
        self.last_row: dict | None = None

    def write(self, counters: Counters, metrics: dict) -> None:
        row = csv_row(counters, metrics, self.n_train)
        self.log.write(row)
        self.last_row = row
        self.progress.update(counters.round, self._shown(row))

    def tick(self, counters: Counters, **shown) -> None:
        self.progress.update(counters.round, {"epochs": counters.samples / self.n_train, **shown})

    @staticmethod
    def _shown(row: dict) -> dict:
        keys = ("objective", "test_metric", "epochs", "wall_s", "staleness_mean")
        return {k: row[k] for k in keys if row.get(k) is not None}


class Stopwatch:
    """Training time with evaluation time (and checkpoint writing) taken out."""

    def __init__(self):
        self.start = time.perf_counter()
        self.eval_s = 0.0
        self.other_s = 0.0  # neither training nor evaluation: writing checkpoints

    def training(self) -> float:
        return time.perf_counter() - self.start - self.eval_s - self.other_s

    def resume(self, training_s: float, eval_s: float) -> None:
        """Go on counting from a checkpoint's times."""
        self.start = time.perf_counter() - training_s - eval_s
        self.eval_s, self.other_s = eval_s, 0.0

    @contextlib.contextmanager
    def aside(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.other_s += time.perf_counter() - started

    @contextlib.contextmanager
    def evaluating(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.eval_s += time.perf_counter() - started

"""Evaluation of models on every worker's data at once, and the counters each CSV row reports."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

KEPT_IN_MEMORY_BYTES = 32 * 2**20  # kept models beyond this go to a file: --eval-every 1 must not fill memory
EVALUATION_BLOCK_BYTES = 16 * 2**20  # models evaluated at once: (rows or d) × models × 8 bytes per temporary


@dataclass
class Counters:
    """Progress of a run as the CSV reports it; rank 0 keeps the authoritative copy."""

    round: int = 0  # global model updates (server updates for asynchronous algorithms)
    updates: int = 0  # worker steps: gradients or local solves computed, over all workers
    samples: int = 0  # training samples touched by those steps
    wall_s: float = 0.0  # training time, evaluation excluded
    eval_s: float = 0.0
    bytes_sent: int = 0  # payload bytes handed to MPI by all ranks (an Allreduce: one buffer per rank)
    messages: int = 0
    extras: dict = field(default_factory=dict)

    def snapshot(self) -> Counters:
        return Counters(self.round, self.updates, self.samples, self.wall_s, self.eval_s,
                        self.bytes_sent, self.messages, dict(self.extras))


class Evaluator:
    """F, the training and test losses and the test metric of several models in one collective.

    Each worker computes the loss sums on its rows for all models at once (one matrix
    product), one Allreduce adds them up; ranks without data add zeros.
    """

    def __init__(self, transport, problem, n_test: int, shards: list, test):
        self.transport, self.problem, self.n_test = transport, problem, n_test
        self.shards, self.test = shards, test

    def _local_sums(self, models: np.ndarray) -> np.ndarray:
        """Per model: [train loss sum, test loss sum, test metric sum] over this rank's rows."""
        sums = np.zeros((models.shape[0], 3))
        loss = self.problem.loss
        for shard in self.shards:
            Z = np.asarray(shard.X @ models.T)
            sums[:, 0] += loss.value(Z, shard.y[:, None]).sum(axis=0)
        if self.test is not None:
            X_test, y_test = self.test
            Z = np.asarray(X_test @ models.T)
            sums[:, 1] = loss.value(Z, y_test[:, None]).sum(axis=0)
            sums[:, 2] = loss.metric_sum(Z, y_test[:, None])
        return sums

    def evaluate(self, models: np.ndarray) -> list[dict]:
        """Collective. models: (S, d). Returns one dict of metrics per model (on every rank)."""
        sums = self._local_sums(models)
        self.transport.allreduce(sums)
        problem = self.problem
        results = []
        for w, (train_sum, test_sum, metric_sum) in zip(models, sums):
            row = {"objective": problem.objective(w, train_sum), "train_loss": train_sum / problem.n}
            if self.n_test:
                row["test_loss"] = test_sum / self.n_test
                row["test_metric"] = problem.loss.metric_final(metric_sum, self.n_test)
            results.append(row)
        return results


class KeptModels:
    """The models an asynchronous run keeps at its evaluation points, with their counters, to be
    evaluated after the run. Up to KEPT_IN_MEMORY_BYTES stay in memory; past that every model
    goes to an anonymous temporary file in `directory` (gone when closed, or if the run dies),
    so memory stays bounded whatever --eval-every asks."""

    def __init__(self, d: int, directory: str | None):
        self.d, self.directory = d, directory
        self.counters: list[Counters] = []
        self._in_memory: list[np.ndarray] = []
        self._spill = None

    def __len__(self) -> int:
        return len(self.counters)

    def add(self, counters: Counters, model: np.ndarray) -> None:
        self.counters.append(counters)
        if self._spill is None and (len(self._in_memory) + 1) * self.d * 8 > KEPT_IN_MEMORY_BYTES:
            self._spill = tempfile.TemporaryFile(dir=self.directory, prefix=".dmlcli-kept-models-")  # noqa: SIM115 - closed by close()
            for kept in self._in_memory:
                self._spill.write(kept.tobytes())
            self._in_memory = []
        if self._spill is None:
            self._in_memory.append(model.copy())
        else:
            self._spill.write(np.ascontiguousarray(model, dtype=np.float64).tobytes())

    def models(self, start: int, stop: int) -> np.ndarray:
        """Models start..stop-1 as one (stop − start, d) array."""
        if self._spill is None:
            return np.array(self._in_memory[start:stop]).reshape(stop - start, self.d)
        self._spill.flush()
        self._spill.seek(start * self.d * 8)
        block = np.frombuffer(bytearray(self._spill.read((stop - start) * self.d * 8)), dtype=np.float64)
        self._spill.seek(0, 2)  # later models are appended at the end
        return block.reshape(stop - start, self.d)

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()


def evaluation_blocks(count: int, d: int, rows: int) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of `count` models to evaluate together, each block's temporaries
    (rows × models and models × d) within EVALUATION_BLOCK_BYTES."""
    per_block = max(1, EVALUATION_BLOCK_BYTES // (8 * max(d, rows, 1)))
    for start in range(0, count, per_block):
        yield start, min(count, start + per_block)


def evaluate_kept(ctx, kept: KeptModels | None, status: str) -> tuple[np.ndarray, str]:
    """Collective, after a run that kept its models to evaluate later (rank 0's `kept`, None on the
    other ranks): evaluate them block by block, rank 0 writing each block's CSV rows as they come,
    then close `kept`. Returns the last model and `status`, or "diverged" if that model's objective
    is not finite (unless the run "failed": that is the stronger reason)."""
    count = ctx.transport.bcast_object(len(kept) if kept is not None else None)
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
    if not is_finite(results[-1]) and status != "failed":
        status = "diverged"
    return models[-1], status


def csv_row(counters: Counters, metrics: dict, n_train: int) -> dict:
    return {
        "round": counters.round, "updates": counters.updates, "epochs": counters.samples / n_train,
        "wall_s": counters.wall_s, "eval_s": counters.eval_s, "bytes_sent": counters.bytes_sent,
        "messages": counters.messages, **metrics, **counters.extras,
    }


def is_finite(metrics: dict) -> bool:
    return bool(np.isfinite(metrics["objective"]))

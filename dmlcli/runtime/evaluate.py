"""Evaluation of models on every worker's data at once, and the counters each CSV row reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

    def __init__(self, transport, problem, n_test: int, shard, test):
        self.transport, self.problem, self.n_test = transport, problem, n_test
        self.shard, self.test = shard, test

    def _local_sums(self, models: np.ndarray) -> np.ndarray:
        """Per model: [train loss sum, test loss sum, test metric sum] over this rank's rows."""
        sums = np.zeros((models.shape[0], 3))
        loss = self.problem.loss
        if self.shard is not None:
            Z = np.asarray(self.shard.X @ models.T)
            sums[:, 0] = loss.value(Z, self.shard.y[:, None]).sum(axis=0)
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


def csv_row(counters: Counters, metrics: dict, n_train: int) -> dict:
    return {
        "round": counters.round, "updates": counters.updates, "epochs": counters.samples / n_train,
        "wall_s": counters.wall_s, "eval_s": counters.eval_s, "bytes_sent": counters.bytes_sent,
        "messages": counters.messages, **metrics, **counters.extras,
    }


def is_finite(metrics: dict) -> bool:
    return bool(np.isfinite(metrics["objective"]))

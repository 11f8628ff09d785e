"""Losses, regularisers and the objective (the reference solver is in dmlcli.problems.reference)."""

from dmlcli.problems.losses import LOSSES, Loss
from dmlcli.problems.objective import Problem, Shard
from dmlcli.problems.regularizers import REGULARIZERS, Regularizer, make_regularizer

__all__ = ["LOSSES", "Loss", "Problem", "Shard", "REGULARIZERS", "Regularizer", "make_regularizer"]

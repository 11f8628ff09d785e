"""Losses, regularisers, the objective and its centralised reference solver."""

from dmlcli.problems.losses import LOSSES, Loss
from dmlcli.problems.objective import Problem, Shard
from dmlcli.problems.reference import reference_solution
from dmlcli.problems.regularizers import REGULARIZERS, Regularizer, make_regularizer

__all__ = ["LOSSES", "Loss", "Problem", "Shard", "reference_solution", "REGULARIZERS", "Regularizer", "make_regularizer"]

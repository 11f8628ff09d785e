"""The registry of algorithms: name -> AlgorithmSpec. Add a module, then add it here."""

from dmlcli.algorithms import asgd, ssgd
from dmlcli.algorithms.base import AlgorithmSpec, AsyncAlgorithm, Param, Settings, SyncAlgorithm

REGISTRY: dict[str, AlgorithmSpec] = {spec.name: spec for spec in (ssgd.SPEC, asgd.SPEC)}

__all__ = ["REGISTRY", "AlgorithmSpec", "AsyncAlgorithm", "Param", "Settings", "SyncAlgorithm"]

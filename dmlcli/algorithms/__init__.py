"""The registry of algorithms: name -> AlgorithmSpec. Add a module, then add it here."""

from dmlcli.algorithms import (
    admm,
    aeasgd,
    asgd,
    async_admm,
    bmuf,
    dadam,
    diana,
    dpsgd,
    easgd,
    giant,
    hogwild,
    ma,
    scaffold,
    ssgd,
    ssp,
    storm,
)
from dmlcli.algorithms.base import AlgorithmSpec, AsyncAlgorithm, GossipAlgorithm, Param, Settings, SharedAlgorithm, SyncAlgorithm

REGISTRY: dict[str, AlgorithmSpec] = {
    spec.name: spec for spec in (ssgd.SPEC, asgd.SPEC, ma.SPEC, bmuf.SPEC, easgd.SPEC, dadam.SPEC, storm.SPEC, scaffold.SPEC,
                  diana.SPEC, giant.SPEC, admm.SPEC, ssp.SPEC, aeasgd.SPEC, async_admm.SPEC, dpsgd.SPEC, hogwild.SPEC)
}

__all__ = ["REGISTRY", "AlgorithmSpec", "AsyncAlgorithm", "GossipAlgorithm", "Param", "Settings", "SharedAlgorithm",
           "SyncAlgorithm"]

"""scipy.sparse only when a run has sparse data.

Importing scipy.sparse costs about 0.1 s of CPU per process (scipy 1.17 on the 2-core development
machine, `python -X importtime`), and every MPI rank pays it before round 0: with 5 ranks on 2 cores
that is a quarter of a second of start-up for runs whose data is dense. A matrix can only be sparse
once scipy.sparse has been imported, so asking sys.modules answers `issparse` without importing it.
"""

import sys


def issparse(x) -> bool:
    """Whether x is a scipy sparse matrix or array, without importing scipy.sparse."""
    module = sys.modules.get("scipy.sparse")
    return module is not None and module.issparse(x)


def scipy_sparse():
    """The scipy.sparse module, imported now if it was not."""
    import scipy.sparse

    return scipy.sparse

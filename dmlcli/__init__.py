"""dmlcli: run distributed machine-learning optimisation algorithms over MPI ranks."""

__version__ = "0.1.0"

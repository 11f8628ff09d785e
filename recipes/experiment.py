"""What the experiment scripts in recipes/ share: the tools beside this Python, the centralised
optimum of a run's problem, and writing the markdown table they print."""

import os
import sys

from dmlcli.problems.reference import reference_solution
from dmlcli.runtime.config import make_config
from dmlcli.runtime.setup import centralised_problem


def tool(name: str) -> str:
    """mpiexec, dmlcli, …: the ones installed beside the running Python."""
    return os.path.join(os.path.dirname(sys.executable), name)


def optimum(workers: int = 4, **options) -> float:
    """F* of the problem a run with these options trains on (logistic unless given), by the reference solver."""
    config = make_config("ssgd", batch_size=None, progress="off", out="unused.csv", **options)
    problem, X, y = centralised_problem(config, workers=workers)
    return reference_solution(problem, X, y)[1]


def write_table(lines: list[str], path: str) -> None:
    """Write the table's lines to `path` (its directory created) and print them."""
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    print(text)

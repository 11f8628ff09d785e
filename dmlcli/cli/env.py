"""`dmlcli env`: what a user needs to debug a launch, from rank 0 only.

MPI is started here and only here (importing dmlcli.comm.mpi initialises it): started alone the
process is an MPI singleton of one rank; under `mpiexec -n P dmlcli env` the P ranks gather their
host names to rank 0, which prints the one report.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import click

from dmlcli.errors import UsageError
from dmlcli.runtime import launch

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def mpi_report() -> dict | None:
    """dmlcli.comm.mpi.environment(), or {"error": ...} when MPI cannot start; None on ranks other than 0."""
    try:
        from dmlcli.comm import mpi
    except Exception as error:  # noqa: BLE001 - a broken MPI install is what this command is for
        return {"error": f"{type(error).__name__}: {error}"}
    return mpi.environment()


def mpiexec_report() -> dict:
    """The mpiexec that `dmlcli train` would start itself under, and what it says it is."""
    try:
        path = launch.find_mpiexec()
    except UsageError as error:
        return {"path": None, "where": None, "kind": None, "version": None, "error": str(error)}
    where = "beside this Python" if os.path.dirname(path) == os.path.dirname(sys.executable) else "on PATH"
    try:
        banner = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"path": path, "where": where, "kind": None, "version": None, "error": f"{path} --version: {error}"}
    lines = [line.strip() for line in banner.splitlines() if line.strip()]
    if "HYDRA" in banner:
        kind = "hydra"
        version = next((f"HYDRA {line.split(':', 1)[1].strip()}" for line in lines if line.startswith("Version:")), "HYDRA")
    elif "Open MPI" in banner or "OpenRTE" in banner:
        kind, version = "open-mpi", lines[0]
    else:
        kind, version = "other", lines[0] if lines else None
    return {"path": path, "where": where, "kind": kind, "version": version, "error": None}


def blas_report() -> list[dict]:
    """Every BLAS and OpenMP library loaded once numpy and scipy's linear algebra are."""
    import numpy  # noqa: F401 - loads its BLAS
    import scipy.linalg  # noqa: F401 - loads its own BLAS, where it has one
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "filepath")
    pools = [{key: pool.get(key) for key in keys} for pool in threadpool_info()]
    for pool in pools:  # wheels bundle their own: numpy.libs/, scipy.libs/
        parts = os.path.normpath(pool["filepath"] or "").split(os.sep)
        pool["package"] = next((part[: -len(".libs")] for part in parts if part.endswith(".libs")), None)
    return pools


def _mpi_family(library: str) -> str | None:
    if "Open MPI" in library:
        return "open-mpi"
    if any(name in library for name in ("MPICH", "MVAPICH", "Intel")):
        return "hydra"
    return None


def warnings_for(report: dict) -> list[str]:
    said = []
    mpi, mpiexec, launcher = report["mpi"], report["mpiexec"], report["launcher"]
    if mpi.get("error"):
        said.append(f"MPI does not start: {mpi['error']}")
    if mpiexec.get("error"):
        said.append(mpiexec["error"])
    family = _mpi_family(mpi.get("library") or "")
    if family and mpiexec.get("kind") in ("hydra", "open-mpi") and family != mpiexec["kind"]:
        said.append(f"mpiexec ({mpiexec['version']}) is not of mpi4py's MPI ({mpi['library']}): the ranks it starts "
                    "would each be a separate one-rank MPI world")
    told = launcher.get("size_from_launcher")
    if told and mpi.get("size") is not None and told != mpi["size"]:
        said.append(f"the launcher started {told} processes but MPI sees {mpi['size']} rank(s): mpi4py's MPI library "
                    "is not the launcher's")
    return said


def collect() -> dict | None:
    """The whole report on rank 0; None on the other ranks (they take part in the gather only)."""
    mpi = mpi_report()
    if mpi is None:
        return None
    from dmlcli import __version__
    from dmlcli.report.manifest import software_versions

    versions = software_versions()
    variables = {name: os.environ[name] for name in (*launch.LAUNCHER_VARIABLES, *launch.RANK_VARIABLES)
                 if name in os.environ}
    size = next((os.environ[name] for name in SIZE_VARIABLES if os.environ.get(name, "").isdigit()), None)
    report = {
        "dmlcli": __version__,
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": platform.platform(),
        "hostname": versions.pop("hostname"),
        "versions": {name: versions.get(name) for name in ("dmlcli", "numpy", "scipy", "mpi4py", "click", "rich")},
        "mpi": mpi,
        "mpiexec": mpiexec_report(),
        "launcher": {"under_launcher": launch.under_launcher(), "variables": variables,
                     "size_from_launcher": int(size) if size else None},
        "blas": blas_report(),
        "thread_variables": {name: os.environ.get(name) for name in launch.THREAD_VARIABLES},
        "cpus": os.cpu_count(),
    }
    try:
        from importlib.metadata import version

        report["versions"]["threadpoolctl"] = version("threadpoolctl")
    except Exception:  # noqa: BLE001 - a version we cannot read is left out
        pass
    report["warnings"] = warnings_for(report)
    return report


def format_text(report: dict) -> str:
    lines = []

    def say(key: str, value) -> None:
        lines.append(f"  {key:<14}{value}")

    python = report["python"]
    lines.append(f"dmlcli {report['dmlcli']} on {report['hostname']}")
    say("python", f"{python['version']} ({python['implementation']}) {python['executable']}")
    say("platform", report["platform"])
    say("versions", ", ".join(f"{name} {version or 'not installed'}" for name, version in report["versions"].items()))

    mpi, mpiexec, launcher = report["mpi"], report["mpiexec"], report["launcher"]
    lines.append("MPI")
    if mpi.get("error"):
        say("library", f"does not start: {mpi['error']}")
    else:
        say("library", mpi["library"])
        say("vendor", mpi["vendor"])
        say("standard", f"MPI {mpi['standard']}")
        say("thread level", mpi["thread_level"])
        config = mpi["mpi4py_config"]
        built = ", ".join(f"{key}={value}" for key, value in sorted(config.items())) if config else \
            "none recorded (a binary wheel)"
        say("mpi4py", f"{mpi['mpi4py']}; build configuration: {built}")
    if mpiexec["path"]:
        say("mpiexec", f"{mpiexec['path']} ({mpiexec['where']}): {mpiexec['version'] or 'version unknown'}")
    else:
        say("mpiexec", f"none: {mpiexec['error']}")
    if launcher["under_launcher"]:
        told = ", ".join(f"{name}={value}" for name, value in sorted(launcher["variables"].items()))
        say("launcher", f"yes: {told}")
    else:
        say("launcher", "none: a single process (MPI initialised as a singleton)")
    if not mpi.get("error"):
        say("ranks", f"{mpi['size']} as MPI sees them; this is rank 0")
        for rank in mpi["ranks"]:
            say(f"  rank {rank['rank']}", f"{rank['host']}  pid {rank['pid']}  {rank['cpus']} usable CPUs")

    lines.append("BLAS")
    for pool in report["blas"]:
        detail = ", ".join(str(pool[key]) for key in ("threading_layer", "architecture") if pool.get(key))
        whose = f"{pool['package']}'s " if pool["package"] else ""
        say(pool["internal_api"] or pool["user_api"],
            f"{whose}{pool['version']} ({detail}), {pool['num_threads']} threads: {pool['filepath']}")
    if not report["blas"]:
        say("libraries", "none found")
    variables = report["thread_variables"]
    say("variables", ", ".join(f"{name}={value}" if value is not None else f"{name} unset"
                               for name, value in variables.items()))
    say("CPUs", f"{report['cpus']} (dmlcli train gives each rank --blas-threads BLAS threads, default 1)")
    if report["warnings"]:
        lines.append("warnings")
        lines += [f"  {line}" for line in report["warnings"]]
    return "\n".join(lines) + "\n"


@click.command("env", short_help="What a launch depends on: MPI, mpi4py, mpiexec, ranks and hosts, BLAS, versions.")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of text")
def env(as_json):
    """What a launch depends on: MPI library and standard, mpi4py and its build configuration, the mpiexec
    that dmlcli would start itself under, the ranks (each rank's host, under mpirun), BLAS and its threads,
    versions and platform. Run it alone or as `mpiexec -n P dmlcli env` (one report, from rank 0)."""
    report = collect()
    if report is None:
        return
    click.echo(json.dumps(report, indent=2) if as_json else format_text(report), nl=as_json)

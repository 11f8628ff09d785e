"""The run manifest: a JSON file beside the CSV with everything needed to repeat and trust the run."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile

import numpy as np


def _plain(value):
    """JSON has no numpy types, tuples stay lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_manifest(path, manifest: dict) -> None:
    """Write atomically: a reader sees the old manifest or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
    os.fchmod(handle, 0o644 & ~_umask())  # mkstemp's 0600 would hide it from colleagues sharing the directory
    with os.fdopen(handle, "w") as out:
        json.dump(manifest, out, indent=2, sort_keys=True, default=_plain)
        out.write("\n")
    os.replace(temporary, path)


def software_versions() -> dict:
    import importlib.metadata  # rank 0 alone writes the manifest; the other ranks need not import it

    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "hostname": socket.gethostname()}
    for package in ("dmlcli", "numpy", "scipy", "mpi4py", "click", "rich"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_revision(start_dir) -> str | None:
    """HEAD of the git checkout the run was started in, '-dirty' if it has changes; None outside one."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=start_dir, capture_output=True, text=True, timeout=2)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

"""Checkpoints, and resuming a run from one (--checkpoint-every N, --resume RUN).

A checkpoint is one file beside the CSV, `<run>.ckpt`, that rank 0 writes: a pickle of every rank's
part, so that the run can go on from the end of a round as if it had not stopped. A part holds the
algorithm's states of the rank's clients, the mini-batch samplers of its shards (generator state,
permutation and position), the seconds trained and evaluated so far, and the loop's own state
(the synchronous loop's counters; the parameter server's state, version and counters, and each
worker's states and step). One gather brings the parts to rank 0, so ranks on several nodes need
no shared file system, and one scatter hands them back at resume. The file is written under a
temporary name and renamed over the previous one: a crash while writing leaves the last whole
checkpoint in place.

Functions in a state (admm's cached local solve) are not saved: the algorithm makes them again
on first use, from the same rows, so a resumed run computes what the uninterrupted run would
have, bit for bit for a deterministic algorithm. The CSV keeps the rows up to the checkpoint's
round (rows written after it, before the stop, are dropped at resume), so no row is lost or doubled.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pickle
import tempfile

from dmlcli.errors import UsageError

VERSION = 1
# What --resume lets differ from the run's own options: the budget, and how it is watched and saved.
MAY_CHANGE = ("rounds", "time_limit", "progress", "resume", "checkpoint_every", "stall_timeout", "save_model", "crash")


def path_of(csv_path: str) -> str:
    return csv_path[: -len(".csv")] + ".ckpt"


def save(transport, csv_path: str, round_: int, part: dict) -> None:
    """Collective: gather every rank's part; rank 0 replaces the checkpoint with them."""
    parts = transport.gather_object(part)
    if transport.rank != 0:
        return
    path = path_of(csv_path)
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("wb", dir=directory, prefix=".ckpt-", delete=False) as handle:
        pickle.dump({"version": VERSION, "round": round_, "parts": parts}, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def read(csv_path: str, ranks: int) -> dict:
    """Rank 0 at start-up: the checkpoint of the run to resume; UsageError if it cannot be used."""
    path = path_of(csv_path)
    try:
        with open(path, "rb") as handle:
            checkpoint = pickle.load(handle)
    except FileNotFoundError:
        raise UsageError(f"--resume: no checkpoint {path}; a run writes one with --checkpoint-every N "
                         "or when a signal stops it") from None
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise UsageError(f"--resume: cannot read the checkpoint {path}: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("version") != VERSION:
        raise UsageError(f"--resume: {path} is not a checkpoint this dmlcli can read")
    if len(checkpoint["parts"]) != ranks:
        raise UsageError(f"--resume: the checkpoint was written by {len(checkpoint['parts'])} ranks; "
                         f"resume it on as many (--workers {len(checkpoint['parts']) - 1}), not {ranks}")
    return checkpoint


def check_csv(csv_path: str, extra_columns) -> None:
    """The run's CSV must be there with this run's columns, to be resumed into."""
    from dmlcli.report.csvlog import BASE_COLUMNS

    try:
        with open(csv_path, newline="") as handle:
            header = next(csv.reader(handle), None)
    except OSError as error:
        raise UsageError(f"--resume: cannot read the run's CSV {csv_path}: {error}") from None
    if header is None or tuple(header) != (*BASE_COLUMNS, *extra_columns):
        raise UsageError(f"--resume: {csv_path} is not this run's CSV (its columns differ); it cannot be resumed into")


def without_functions(value):
    """A state with its functions (cached solvers, remade on first use) replaced by None, for pickling."""
    if callable(value) and not isinstance(value, type):
        return None
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(without_functions(field) for field in value))
    if isinstance(value, tuple):
        return tuple(without_functions(item) for item in value)
    if isinstance(value, list):
        return [without_functions(item) for item in value]
    if isinstance(value, dict):
        return {key: without_functions(item) for key, item in value.items()}
    return value


def sampler_state(shard) -> dict:
    return {"rng": shard.rng.bit_generator.state, "order": shard._order, "cursor": shard._cursor}


def restore_sampler(shard, state: dict) -> None:
    shard.rng.bit_generator.state = state["rng"]
    shard._order, shard._cursor = state["order"], state["cursor"]


def manifest_of(run: str) -> tuple[str, dict]:
    """(manifest path, manifest) of the run a CSV or manifest path names."""
    if run.endswith(".csv"):
        path = run[: -len(".csv")] + ".json"
    elif run.endswith(".json"):
        path = run
    else:
        raise UsageError(f"--resume {run}: give the run's CSV or manifest (.csv or .json)")
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"--resume {run}: no manifest {path}") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"--resume {run}: cannot read the manifest {path}: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict) or "csv" not in manifest:
        raise UsageError(f"--resume {run}: {path} is not a dmlcli run manifest")
    return path, manifest


def resumed_config(config, given: dict):
    """The configuration to resume with: the run's own, recorded in its manifest, with the budget
    given beside --resume. Any other option given that disagrees with the run's is refused."""
    from dmlcli.runtime.config import RunConfig

    path, manifest = manifest_of(config.resume)
    if manifest.get("algorithm") != config.algorithm:
        raise UsageError(f"--resume {config.resume}: that run is {manifest.get('algorithm')}, not {config.algorithm}")
    recorded = dict(manifest["config"])
    if isinstance(recorded.get("crash"), list):
        recorded["crash"] = tuple(recorded["crash"])
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    recorded = {name: value for name, value in recorded.items() if name in fields}
    recorded["resume"] = None
    try:
        original = RunConfig(**{**{name: None for name in fields}, **recorded})
    except TypeError as error:
        raise UsageError(f"--resume {config.resume}: its manifest's options are not this dmlcli's: {error}") from None
    for name, value in given.items():
        recorded_value = original.params.get(name) if name in config.params else getattr(original, name, value)
        if name not in MAY_CHANGE and value != recorded_value:
            raise UsageError(f"--resume: --{name.replace('_', '-')} {value} disagrees with the run's "
                             f"{recorded_value!r}; only --rounds and --time-limit may change")
    budget = {name: given[name] for name in MAY_CHANGE if name in given and name != "resume"}
    budget.setdefault("crash", None)  # fault injection is the run's past, not carried over
    # The CSV beside the manifest: the manifest's own path to it is relative to where the run started.
    return dataclasses.replace(original, **budget, resume=path, out=path[: -len(".json")] + ".csv", force=False)

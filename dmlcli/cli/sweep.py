"""`dmlcli sweep RECIPE`: a recipe whose values may be lists; the runs are their cartesian product.

Each point is one `dmlcli train ALGO --set KEY=VALUE ... --out DIR/NAME.csv`, started one after another
as a user would (it launches MPI itself), NAME = ALGO-KEY=VALUE...-sSEED from the swept keys in recipe
order. Under mpirun or srun (one allocation of a batch job) the points run one after another on the
job's ranks instead (runtime.launch.sweep_main), rank 0 deciding which are done. A point whose manifest
says `completed` is skipped, so a sweep that was stopped continues where it stopped. Every list element
goes through its option's TOML type, as a scalar would (recipe_values), and every point through
make_config, before the first run starts.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys

import click

from dmlcli.errors import UsageError

OWNED = ("out", "force")  # the sweep names each run's outputs
STOP_CODES = (130, 143)


def _text(value) -> str:
    """A TOML scalar as --set takes it (converted again by the option's click type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _name_part(value) -> str:
    return re.sub(r"[^A-Za-z0-9.+:,@_-]", "_", _text(value))


def plan(path: str) -> tuple[str, list[dict], list[str]]:
    """(algorithm, points as {option: TOML value}, the swept option names); every error a UsageError."""
    from dmlcli.algorithms import REGISTRY
    from dmlcli.recipe import load_recipe, recipe_values
    from dmlcli.runtime.config import SHARED_OPTIONS

    recipe = load_recipe(path)
    origin = f"recipe {path}"
    algorithm = recipe.pop("algorithm", None)
    if not isinstance(algorithm, str):
        raise UsageError(f"{origin}: a sweep recipe names its algorithm: algorithm = \"ssgd\"")
    if algorithm not in REGISTRY:
        raise UsageError(f"{origin}: unknown algorithm {algorithm!r}; choose from {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[algorithm]
    known = {p.name: p for p in (*SHARED_OPTIONS, *spec.params)}
    names = [key.replace("-", "_") for key in recipe]
    for raw_key, name in zip(recipe, names):
        if name in OWNED:
            raise UsageError(f"{origin}: {raw_key!r} is set by the sweep (each run gets its own file in --out DIR/)")
    axes: dict[str, list] = {}
    for raw_key, value in recipe.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UsageError(f"{origin}: {raw_key!r} is an empty list")
        seen = set()
        for index, element in enumerate(values):
            shown = f"{raw_key}[{index}]" if isinstance(value, list) else raw_key
            recipe_values([(raw_key, element)], known, f"{origin}, {shown}")  # the element's type, as a scalar's
            if json.dumps(element) in seen:
                raise UsageError(f"{origin}: {raw_key!r} lists {json.dumps(element)} twice")
            seen.add(json.dumps(element))
        axes[raw_key] = values
    recipe_values([(key, values[0]) for key, values in axes.items()], known, origin)  # unknown keys, twice given
    swept = [key for key, value in recipe.items() if isinstance(value, list)]
    points = [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]
    for point in points:
        try:
            point_config(algorithm, point, origin)
        except UsageError as error:
            where = ", ".join(f"{key} = {json.dumps(point[key])}" for key in swept)
            raise UsageError(f"{origin}: the run with {where}: {error}") from None
    return algorithm, points, swept


def point_config(algorithm: str, point: dict, origin: str, **outputs):
    """The RunConfig of one point (values converted by their options' types), with `outputs` (out, force, …)."""
    from dmlcli.algorithms import REGISTRY
    from dmlcli.recipe import recipe_values
    from dmlcli.runtime.config import SHARED_OPTIONS, make_config

    spec = REGISTRY[algorithm]
    given = recipe_values(point.items(), {p.name: p for p in (*SHARED_OPTIONS, *spec.params)}, origin)
    params = {p.name: given.pop(p.name) for p in spec.params if p.name in given}
    return make_config(algorithm, params, **{**given, **outputs})


def point_name(algorithm: str, point: dict, swept: list[str]) -> str:
    seed_key = next((key for key in point if key.replace("-", "_") == "seed"), None)
    seed = point[seed_key] if seed_key else 0
    parts = [f"{key.replace('-', '_')}={_name_part(point[key])}" for key in swept if key != seed_key]
    return "-".join([algorithm, *parts, f"s{seed}"])


def completed(manifest: str) -> bool:
    try:
        with open(manifest, encoding="utf-8") as handle:
            return json.load(handle).get("status") == "completed"
    except (OSError, ValueError, AttributeError):
        return False


@click.command("sweep", context_settings={"show_default": True},
               short_help="Run the cartesian product of a recipe's lists, one run after another.")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", default="runs/sweep/", metavar="DIR/", help="directory of the runs' CSVs and manifests")
@click.option("--workers", type=click.IntRange(min=1), help="workers of every run (passed to dmlcli train)")
@click.option("--progress", type=click.Choice(["auto", "rich", "plain", "off"]), default="off",
              help="each run's progress display (passed to dmlcli train)")
@click.option("--dry-run", is_flag=True, help="list the runs and their commands, run nothing")
def sweep(recipe, out, workers, progress, dry_run):
    """Run a sweep: a TOML recipe (with `algorithm = "..."`) whose values may be lists, e.g. lr = [0.1, 0.03]
    and seed = [0, 1, 2]; the runs are the cartesian product, each a `dmlcli train` started one after
    another into DIR/ALGO-KEY=VALUE...-sSEED.csv. A run whose manifest says completed is skipped, so a
    stopped sweep continues where it stopped. Started alone, each run launches its own MPI ranks; under
    mpirun or srun (a batch job's one allocation) the runs go one after another on the job's ranks."""
    from dmlcli.runtime import launch

    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; the sweep writes its runs into a directory")
    algorithm, points, swept = plan(recipe)
    if launch.under_launcher():
        if workers is not None:
            from dmlcli.cli.train import _check_workers

            _check_workers(workers)
        sys.exit(launch.sweep_main(lambda transport: _listed_on_ranks(transport, recipe, algorithm, points, swept,
                                                                     out, progress)))
    runs = []
    for point in points:
        name = point_name(algorithm, point, swept)
        csv_path = os.path.join(out, f"{name}.csv")
        manifest = csv_path[: -len(".csv")] + ".json"
        command = [sys.executable, "-m", "dmlcli", "train", algorithm,
                   *(arg for key, value in point.items() for arg in ("--set", f"{key}={_text(value)}")),
                   "--out", csv_path, "--progress", progress]
        if workers is not None:
            command += ["--workers", str(workers)]
        if os.path.exists(csv_path) or os.path.exists(manifest):
            command.append("--force")  # what an earlier, unfinished attempt left
        runs.append((name, command, completed(manifest)))
    total, done = len(runs), sum(skip for _, _, skip in runs)
    if dry_run:
        for index, (name, command, skip) in enumerate(runs, 1):
            shown = ["dmlcli", *command[3:]]
            click.echo(f"[{index}/{total}] {name}{'  (completed, skipped)' if skip else ''}: {shlex.join(shown)}")
        click.echo(f"{total} runs, {done} completed, {total - done} to run")
        return
    ran = 0
    for index, (name, command, skip) in enumerate(runs, 1):
        if skip:
            click.echo(f"[{index}/{total}] {name}: completed, skipped")
            continue
        click.echo(f"[{index}/{total}] {name}: running", nl=True)
        sys.stdout.flush()
        with subprocess.Popen(command) as process:
            try:
                code = process.wait()
            except KeyboardInterrupt:  # the run had the signal too and stops itself; wait for its outputs
                code = process.wait()
                code = code if code in STOP_CODES else 130
        ran += 1
        if code == 3:
            click.echo(f"[{index}/{total}] {name}: diverged (exit 3), the sweep goes on")
        elif code != 0:
            click.echo(f"dmlcli sweep: stopped at {name} (exit {code}); run the sweep again to continue", err=True)
            sys.exit(code)
    click.echo(f"{total} runs: {ran} run, {total - ran} skipped (completed), in {out}")


def _listed_on_ranks(transport, recipe: str, algorithm: str, points: list[dict], swept: list[str], out: str,
                     progress: str) -> list:
    """The runs as (name, config, skip), decided by rank 0 (which reads the manifests) for every rank."""
    listed = None
    if transport.rank == 0:
        listed = []
        for point in points:
            name = point_name(algorithm, point, swept)
            csv_path = os.path.join(out, f"{name}.csv")
            manifest = csv_path[: -len(".csv")] + ".json"
            force = os.path.exists(csv_path) or os.path.exists(manifest)  # what an earlier attempt left
            config = point_config(algorithm, point, f"recipe {recipe}", out=csv_path, progress=progress, force=force)
            listed.append((name, config, completed(manifest)))
    return transport.bcast_object(listed)

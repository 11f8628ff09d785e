"""`dmlcli train ALGO`: a subcommand per algorithm, its options made from the parameter specs."""

from __future__ import annotations

import dataclasses
import sys

import click
from click.core import ParameterSource

from dmlcli.algorithms import REGISTRY
from dmlcli.errors import UsageError
from dmlcli.recipe import recipe_options, set_options
from dmlcli.runtime.config import SHARED_OPTIONS, make_config

# Workers dmlcli starts itself, on this machine; larger runs belong under the site's mpirun or srun.
MAX_LAUNCHED_WORKERS = 1024


def option_for(param) -> click.Option:
    """The click option of a shared option or algorithm parameter (defined once, in its Param)."""
    flag = "--" + param.name.replace("_", "-")
    if param.type is bool:
        decls = [flag] if param.default is False else [f"{flag}/--no-{flag[2:]}"]
        return click.Option([*decls, param.name], is_flag=True, default=param.default, help=param.help,
                            show_default=param.default)
    return click.Option([flag, param.name], type=param.type, default=param.default, help=param.help,
                        show_default=param.default is not None, callback=_value_check(param))


def _value_check(param):
    """The check recipes and --set also make after converting (see Param.problem_with), for the flag."""

    def check(ctx, option, value):
        problem = param.problem_with(value)
        if problem:
            raise click.BadParameter(problem, ctx, option)
        return value

    return check


COMMON_OPTIONS = [
    click.Option(["--recipe"], type=click.Path(dir_okay=False), help="TOML file of options (flags override it)"),
    click.Option(["--set", "set_pairs"], multiple=True, metavar="KEY=VALUE",
                 help="set any option or algorithm parameter by name (repeatable)"),
]


def resolve(ctx: click.Context, algorithm: str, values: dict):
    """Defaults < recipe < --set < explicit flags; returns the RunConfig and which keys were given."""
    spec = REGISTRY[algorithm]
    known = {p.name: p for p in (*SHARED_OPTIONS, *spec.params)}
    recipe_path, pairs = values.pop("recipe"), values.pop("set_pairs")
    given: dict = {}
    if recipe_path is not None:
        given.update(recipe_options(recipe_path, known, algorithm))
    given.update(set_options(pairs, known))
    for name, value in values.items():
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            given[name] = value
    params = {name: given[name] for name in [p.name for p in spec.params] if name in given}
    config = make_config(algorithm, params, **{name: value for name, value in given.items() if name not in params})
    if config.resume is not None:
        from dmlcli.runtime.checkpoint import resumed_config

        config = resumed_config(config, given)
    return config, given


def make_train_command(spec) -> click.Command:
    def callback(**values):
        from dmlcli.runtime import launch

        ctx = click.get_current_context()
        config, given = resolve(ctx, spec.name, values)
        if not launch.under_launcher():
            from dmlcli.runtime.setup import precheck

            launch.refuse_srun_without_pmi()

            if config.workers > MAX_LAUNCHED_WORKERS:
                raise UsageError(f"--workers {config.workers}: dmlcli starts at most {MAX_LAUNCHED_WORKERS} workers "
                                 "itself; start larger runs under mpirun or srun")
            precheck(config)
            sys.exit(launch.relaunch(sys.argv[1:], config.workers + 1, config.blas_threads))
        if "workers" in given:
            _check_workers(config.workers)
        sys.exit(launch.rank_main(config))

    shared = SHARED_OPTIONS
    if spec.full_batch:  # its help shows the default make_config gives it
        shared = tuple(dataclasses.replace(p, default="all") if p.name == "batch_size" else p for p in shared)
    params = [option_for(p) for p in (*shared, *spec.params)] + COMMON_OPTIONS
    return click.Command(spec.name, callback=callback, params=params, help=spec.doc, short_help=spec.summary,
                         context_settings={"show_default": True})


def _check_workers(workers: int) -> None:
    """Under mpirun the rank count decides; an explicit --workers that disagrees is an error."""
    import os

    size = int(os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or workers + 1)
    if size != workers + 1:
        raise UsageError(f"--workers {workers} needs {workers + 1} ranks, but mpirun started {size}")


class AlgorithmGroup(click.Group):
    """`train ALGO`: an unknown ALGO is named with the algorithms there are."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            raise click.UsageError(f"unknown algorithm {args[0]!r}; choose from {', '.join(sorted(self.commands))}", ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=AlgorithmGroup, context_settings={"show_default": True})
def train():
    """Train with one algorithm: dmlcli train ALGO [OPTIONS]. Started alone it launches
    --workers+1 MPI ranks itself; under mpirun -n P it uses the P ranks (rank 0 the server)."""


for _spec in REGISTRY.values():
    train.add_command(make_train_command(_spec))

"""The `dmlcli` command: `train ALGO`, one subcommand per registered algorithm, `list`, `compare`, `plot`, `sweep` and `env`."""

from __future__ import annotations

import importlib
import sys

import click

from dmlcli import __version__
from dmlcli.errors import DmlcliError

# Each subcommand's module is imported when that subcommand runs: every MPI rank parses the command
# line before round 0, and importing them all (plot pulls in the comparison code, env the launcher)
# cost each rank about 0.1 s of CPU on the 2-core development machine, 5 ranks sharing 2 cores.
SUBCOMMANDS = {"train": "dmlcli.cli.train", "compare": "dmlcli.cli.compare", "env": "dmlcli.cli.env",
               "plot": "dmlcli.cli.plot", "sweep": "dmlcli.cli.sweep"}


class LazyGroup(click.Group):
    """A click group whose SUBCOMMANDS are imported on first use."""

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx, name):
        if name in SUBCOMMANDS:
            return getattr(importlib.import_module(SUBCOMMANDS[name]), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="dmlcli")
def cli():
    """Run distributed machine-learning optimisation algorithms on MPI ranks and log them to CSV."""


@cli.command("list")
def list_algorithms():
    """List the algorithms with a one-line summary."""
    from dmlcli.algorithms import REGISTRY

    width = max(len(name) for name in REGISTRY)
    for name, spec in sorted(REGISTRY.items()):
        click.echo(f"{name:<{width}}  {spec.family:<5}  {spec.summary}")



def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors are one line and exit 2, never a traceback.

    Under `mpiexec -n P dmlcli ...` every rank parses the same command line and meets the same
    error; rank 0 alone says so, the others exit with the same code silently.
    """
    try:
        code = cli.main(args=argv, prog_name="dmlcli", standalone_mode=False)
    except click.exceptions.Exit as done:
        code = done.exit_code
    except click.exceptions.Abort:
        _say("dmlcli: interrupted")
        code = 130
    except click.ClickException as error:
        where = f"{error.ctx.command_path}: " if getattr(error, "ctx", None) else "dmlcli: "
        _say(f"{where}error: {error.format_message()}")
        code = error.exit_code
    except DmlcliError as error:
        _say(f"dmlcli: error: {error}")
        code = error.exit_code
    sys.exit(code or 0)


def _say(line: str) -> None:
    from dmlcli.runtime.launch import launcher_rank

    if launcher_rank() in (None, 0):
        click.echo(line, err=True)

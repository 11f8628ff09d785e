"""`dmlcli compare RUN...`: one line per configuration, repeats over seeds summarised (see dmlcli.report.compare)."""

from __future__ import annotations

import math
import sys

import click

from dmlcli.errors import UsageError


def _finite(minimum: float | None = None, nonzero: bool = False):
    """A click callback refusing NaN, ±inf (and what else the option cannot take), as train's options do."""

    def check(ctx, option, value):
        if value is None:
            return value
        if not math.isfinite(value):
            raise click.BadParameter(f"{value} is not a finite number", ctx, option)
        if minimum is not None and value < minimum:
            raise click.BadParameter(f"{value:g} is below {minimum:g}", ctx, option)
        if nonzero and value == 0:
            raise click.BadParameter("F* must be nonzero (the gap is relative to it)", ctx, option)
        return value

    return check


@click.command("compare", context_settings={"show_default": True},
               short_help="Compare runs: one line per configuration, repeats over seeds as mean ± std and 95 % CI.")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...", type=click.Path())
@click.option("--target-gap", type=float, metavar="G", callback=_finite(minimum=0),
              help="time, rounds and bytes to the first evaluation with (F − F*)/F* ≤ G; F* is the least objective "
                   "of any compared run unless --reference gives it (runs whose --seed splits off a different test set "
                   "train on different data: give them --test-data for one F)")
@click.option("--reference", type=float, metavar="F*", callback=_finite(nonzero=True),
              help="F* for --target-gap, e.g. the reference solver's optimum")
@click.option("--target-metric", type=float, metavar="M", callback=_finite(),
              help="time, rounds and bytes to the first evaluation with test accuracy ≥ M (logistic loss) or test RMSE ≤ M "
                   "(squared loss)")
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "markdown"]), default="table",
              help="table: rich, on stdout; csv: the statistics at full precision; markdown: a pipe table")
def compare(runs, target_gap, reference, target_metric, output_format):
    """Compare runs: CSV files, manifests (.json) or directories of them (their *.csv).

    One line per configuration: the algorithm and the options that differ between the runs compared
    (from each run's manifest; a run without one shows ? for them). Runs that differ only in --seed are
    repeats of one configuration: each cell is the mean ± sample standard deviation over its n runs and
    the 95 % confidence interval of the mean, mean ± t·std/√n with Student's t at n − 1 degrees of
    freedom. The values are the last evaluation's (final objective, test metric, rounds, wall s of
    training, bytes sent); a target adds the rounds, wall s and bytes at the first evaluation that
    reaches it, over the runs that do (– for none). CSV files concatenated into one are read by their
    run_id column.
    """
    from dmlcli.report import compare as report

    if target_gap is not None and target_metric is not None:
        raise UsageError("give either --target-gap or --target-metric, not both")
    if reference is not None and target_gap is None:
        raise UsageError("--reference is F* for --target-gap; give --target-gap too")
    target = None
    if target_gap is not None:
        target = report.Target("gap", target_gap, reference)
    elif target_metric is not None:
        target = report.Target("metric", target_metric)
    comparison = report.compare(report.load_runs(runs), target)  # every error before any output
    if output_format == "csv":
        sys.stdout.write(report.render_csv(comparison))
    elif output_format == "markdown":
        sys.stdout.write(report.render_markdown(comparison))
    else:
        # On a pipe or in a file nothing would wrap the lines: give the table the width it needs.
        width = None if sys.stdout.isatty() else 100_000
        report.render_table(comparison, sys.stdout, width)
    sys.stdout.flush()

"""`dmlcli plot RUN... -o FILE`: objective, gap or a test metric against rounds, time, epochs or bytes
(see dmlcli.report.plot). matplotlib is an optional extra, imported only here, when the command runs."""

from __future__ import annotations

import click

from dmlcli.cli.compare import _finite
from dmlcli.errors import UsageError
from dmlcli.report.plot import BANDS, INSTALL_HINT, X_AXES, Y_AXES


@click.command("plot", context_settings={"show_default": True},
               short_help="Plot runs: one line per configuration, a band over seeds.")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...", type=click.Path())
@click.option("-o", "--output", required=True, metavar="FILE", help="the figure to write: .png, .svg or .pdf")
@click.option("--x", "x_axis", type=click.Choice(X_AXES), default="round", help="the horizontal axis (a CSV column)")
@click.option("--y", "y_axis", type=click.Choice(Y_AXES), default="objective",
              help="the vertical axis: a CSV column, or gap = (F − F*)/|F*| on a log scale")
@click.option("--reference", type=float, metavar="F*", callback=_finite(nonzero=True),
              help="F* for --y gap (default: the least objective of any plotted run)")
@click.option("--band", type=click.Choice(BANDS), default="minmax",
              help="the shaded band over a configuration's seeds: min–max, mean ± sample std, or none")
@click.option("--title", help="the figure's title (default: what is plotted against what)")
def plot(runs, output, x_axis, y_axis, reference, band, title):
    """Plot runs: CSV files, manifests (.json) or directories of them (their *.csv), read and grouped as
    dmlcli compare does. One line per configuration, the mean over its repeats (runs differing only in
    --seed) at each evaluated round, and a band over them. --y gap is drawn on a log scale, --x bytes_sent
    too when it spans more than two decades. Needs matplotlib: pip install 'dmlcli[plot]'."""
    from dmlcli.report import compare as reading
    from dmlcli.report import plot as plotting

    plotting.output_format(output)
    if reference is not None and y_axis != "gap":
        raise UsageError("--reference is F* for --y gap; give --y gap too")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    figure = plotting.series(reading.load_runs(runs), x_axis, y_axis, band, reference)  # every error before any output
    plotting.draw(figure, output, title)
    click.echo(f"{output}: {figure.note}")

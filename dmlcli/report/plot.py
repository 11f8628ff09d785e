"""`dmlcli plot`: one line per configuration over its repeats, from the runs `dmlcli compare` reads.

Runs are read and grouped by dmlcli.report.compare (load_runs, group_runs): repeats differing only in
seed are one configuration. series() is pure (numbers in, numbers out) and draws nothing; draw()
imports matplotlib (Agg) and is the only part that needs it.

A configuration's runs are aligned by evaluation round: at each round that some of its runs
evaluated, the point's x is the mean of those runs' x (rounds, wall s, epochs or bytes), its y the
mean of their y, and its band the min–max (or mean ± sample std) of their y. Rows without a finite
y (a blank test metric, a diverged objective) are left out.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass

import numpy as np

from dmlcli.errors import UsageError
from dmlcli.report.compare import METRIC_OF_LOSS, Run, _is_number, best_objective, group_runs, option_text, varying_options

X_AXES = ("round", "wall_s", "epochs", "bytes_sent")
Y_AXES = ("objective", "gap", "test_metric", "train_loss", "test_loss")
BANDS = ("minmax", "std", "none")
FORMATS = (".png", ".svg", ".pdf")
X_LABELS = {"round": "rounds", "wall_s": "wall time, training (s)", "epochs": "epochs", "bytes_sent": "bytes sent"}
Y_LABELS = {"objective": "objective F", "train_loss": "training loss", "test_loss": "test loss",
            "test_metric": "test metric"}
METRIC_LABELS = {"accuracy": "test accuracy", "rmse": "test RMSE"}
BAND_TEXT = {"minmax": "band: min–max over seeds", "std": "band: mean ± sample std over seeds", "none": "no band"}
DECADES = 2  # an x axis of positive values spanning more than this many decades is drawn on a log scale
INSTALL_HINT = "dmlcli plot needs matplotlib: pip install 'dmlcli[plot]'"


@dataclass
class Series:
    label: str  # the algorithm and the options that set this configuration apart
    runs: list[Run]
    x: np.ndarray  # mean x of the runs at each point
    y: np.ndarray  # mean y
    low: np.ndarray  # the band (equal to y without one, or with one run at that point)
    high: np.ndarray
    n: np.ndarray  # runs at each point


@dataclass
class Figure:
    x_axis: str
    y_axis: str
    band: str
    series: list[Series]
    y_label: str
    f_star: float | None = None
    f_star_run: str | None = None  # the run whose objective is F* (gap without --reference)
    log_x: bool = False
    log_y: bool = False

    @property
    def x_label(self) -> str:
        return X_LABELS[self.x_axis]

    @property
    def note(self) -> str:
        runs = sum(len(line.runs) for line in self.series)
        said = f"{len(self.series)} configuration{'s' * (len(self.series) != 1)}, {runs} run{'s' * (runs != 1)}; " \
               f"line: mean over seeds at each evaluated round; {BAND_TEXT[self.band]}"
        if self.f_star is not None:
            said += f"; F* = {self.f_star:.10g}" + (f" (run {self.f_star_run})" if self.f_star_run else " (--reference)")
        return said


def output_format(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise UsageError(f"-o {path}: the file name must end in {', '.join(FORMATS)} (the format is taken from it)")
    return extension[1:]


def labels(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """(label, runs) per configuration, in compare's order; the label is the algorithm and the
    options that differ between the runs (as flags), or the run id of a run without a manifest."""
    options = varying_options([run.configuration for run in runs if run.configuration is not None])
    found = []
    for algorithm, config, members in group_runs(runs):
        if config is None:
            label = f"{algorithm} ({members[0].run_id}, no manifest)"
        else:
            words = [f"--{name.replace('_', '-')} {option_text(name, config[name])}" for name in options if name in config]
            label = " ".join([algorithm, *words])
        found.append((label, members))
    return found


def y_value(row: dict, y_axis: str, f_star: float | None) -> float | None:
    value = row["objective"] if y_axis == "gap" else row.get(y_axis)
    if not _is_number(value) or not math.isfinite(value):
        return None
    return (value - f_star) / abs(f_star) if y_axis == "gap" else float(value)


def series(runs: list[Run], x_axis: str = "round", y_axis: str = "objective", band: str = "minmax",
           reference: float | None = None) -> Figure:
    """The figure's lines, one per configuration (see the module docstring); bad choices are UsageErrors."""
    if x_axis not in X_AXES:
        raise UsageError(f"unknown x axis {x_axis!r}; choose from {', '.join(X_AXES)}")
    if y_axis not in Y_AXES:
        raise UsageError(f"unknown y axis {y_axis!r}; choose from {', '.join(Y_AXES)}")
    if band not in BANDS:
        raise UsageError(f"unknown band {band!r}; choose from {', '.join(BANDS)}")
    if not runs:
        raise UsageError("no runs to plot")
    f_star = f_star_run = None
    if y_axis == "gap":
        if reference is not None:
            f_star = reference
        else:
            f_star, best = best_objective(runs)
            f_star_run = best.run_id
        if f_star == 0:
            raise UsageError("F* = 0: a relative gap needs a nonzero F*; give --reference")
    lines = []
    for label, members in labels(runs):
        points: dict[int, list[tuple[float, float]]] = {}
        for run in members:
            for row in run.rows:
                y = y_value(row, y_axis, f_star)
                if y is not None:
                    points.setdefault(int(row["round"]), []).append((float(row[x_axis]), y))
        if not points:
            continue
        rounds = sorted(points)
        xs = np.array([np.mean([x for x, _ in points[r]]) for r in rounds])
        ys = [np.array([y for _, y in points[r]]) for r in rounds]
        mean = np.array([values.mean() for values in ys])
        if band == "minmax":
            low, high = np.array([values.min() for values in ys]), np.array([values.max() for values in ys])
        elif band == "std":
            spread = np.array([values.std(ddof=1) if values.size > 1 else 0.0 for values in ys])
            low, high = mean - spread, mean + spread
        else:
            low, high = mean.copy(), mean.copy()
        lines.append(Series(label, members, xs, mean, low, high, np.array([values.size for values in ys])))
    if not lines:
        raise UsageError(f"no run has a value of {y_axis} to plot")
    losses = {run.loss for run in runs}
    metric = METRIC_OF_LOSS.get(losses.pop()) if len(losses) == 1 else None
    if y_axis == "gap":
        y_label = "relative gap (F − F*)/|F*|"
    elif y_axis == "test_metric":
        y_label = METRIC_LABELS.get(metric, "test metric (accuracy or RMSE)")
    else:
        y_label = Y_LABELS[y_axis]
    return Figure(x_axis, y_axis, band, lines, y_label, f_star, f_star_run, log_x=_log_x(x_axis, lines), log_y=y_axis == "gap")


def _log_x(x_axis: str, lines: list[Series]) -> bool:
    """bytes sent on a log scale when its positive values span more than DECADES decades."""
    if x_axis != "bytes_sent":
        return False
    positive = np.concatenate([line.x[line.x > 0] for line in lines])
    return positive.size > 1 and math.log10(positive.max() / positive.min()) > DECADES


def draw(figure: Figure, path: str, title: str | None = None) -> None:
    """Write the figure to `path` (format from its extension), through a temporary file beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    try:
        for line in figure.series:
            x, y, low, high = line.x, line.y, line.low, line.high
            if figure.log_y:  # a gap of 0 (the best run's last point) has no place on a log axis
                keep = y > 0
                x, y, low, high = x[keep], y[keep], np.where(low[keep] > 0, low[keep], y[keep]), high[keep]
            if figure.log_x:
                keep = x > 0
                x, y, low, high = x[keep], y[keep], low[keep], high[keep]
            n = len(line.runs)
            (drawn,) = ax.plot(x, y, label=f"{line.label} (n={n})", linewidth=1.5)
            if figure.band != "none" and n > 1:
                ax.fill_between(x, low, high, color=drawn.get_color(), alpha=0.2, linewidth=0)
        if figure.log_x:
            ax.set_xscale("log")
        if figure.log_y:
            ax.set_yscale("log")
        ax.set_xlabel(figure.x_label)
        ax.set_ylabel(figure.y_label)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(title if title is not None else f"{figure.y_label} against {figure.x_label}", fontsize="medium")
        fig.supxlabel(textwrap.fill(figure.note, 130), fontsize="x-small", alpha=0.7)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            fig.savefig(temporary, format=output_format(path))
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    finally:
        plt.close(fig)

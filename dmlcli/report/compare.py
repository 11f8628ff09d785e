"""`dmlcli compare`: runs read from their CSVs (and manifests), grouped by configuration, summarised.

Reading (load_runs) turns paths into Runs and refuses bad input with one UsageError; everything
after it (compare and the renderers) is pure functions over rows. No MPI here.

A configuration is the algorithm plus every option in the manifest's "config" and "config.params",
less those that do not change what is computed (the seed, where outputs go, the progress display),
with `workers` as the run had them (the manifest's, which under mpirun is not the --workers flag).
Runs of one configuration are repeats: each summary is mean ± sample std and a 95 % confidence
interval of the mean, mean ± t(0.975, n − 1)·std/√n (Student t).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from dmlcli.errors import UsageError
from dmlcli.report.csvlog import BASE_COLUMNS, parse_value

NOT_CONFIGURATION = ("algorithm", "seed", "out", "force", "progress", "save_model", "max_model_mb")
NUMERIC_COLUMNS = ("round", "wall_s", "bytes_sent", "objective")  # never empty in a dmlcli log
FINAL = ("objective", "test_metric", "round", "wall_s", "bytes_sent")  # the last row's, per run
TO_TARGET = ("round", "wall_s", "bytes_sent")  # at the first row that reaches the target
METRIC_OF_LOSS = {"logistic": "accuracy", "squared": "rmse"}
UNKNOWN = "?"  # an option of a run without a manifest
NOT_REACHED = "–"
CONFIDENCE = 0.95


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class Run:
    run_id: str
    source: str  # the CSV file its rows came from
    algorithm: str
    rows: list[dict]
    manifest: dict | None = None
    fingerprint: tuple = field(default=(), repr=False)  # its raw CSV lines: the same run read twice is one run

    @property
    def configuration(self) -> dict | None:
        """The options that make its configuration (see the module docstring); None without a manifest."""
        if self.manifest is None:
            return None
        config = dict(self.manifest.get("config") or {})
        params = config.pop("params", None) or {}
        for name in NOT_CONFIGURATION:
            config.pop(name, None)
        if "workers" in self.manifest:
            config["workers"] = self.manifest["workers"]
        config.update(params)
        return config

    @property
    def loss(self) -> str | None:
        """logistic or squared: the manifest's; without one, the rows tell when they can.

        Every algorithm starts from w = 0, where the logistic loss is log 2 exactly; accuracy is in [0, 1].
        """
        if self.manifest is not None:
            return (self.manifest.get("config") or {}).get("loss")
        start = next((row for row in self.rows if row["round"] == 0), None)
        if start is not None and _is_number(start.get("train_loss")) and math.isclose(start["train_loss"], math.log(2),
                                                                                       rel_tol=1e-12):
            return "logistic"
        if any(_is_number(row["test_metric"]) and not 0 <= row["test_metric"] <= 1 for row in self.rows):
            return "squared"
        return None

    @property
    def status(self) -> str | None:
        return None if self.manifest is None else self.manifest.get("status")

    @property
    def label(self) -> str:
        return f"{self.run_id} ({self.source})"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_runs(paths) -> list[Run]:
    """Runs from CSV files, manifests (.json) or directories (their *.csv, not their subdirectories).

    A CSV may hold several runs (files concatenated, with or without their repeated header lines):
    rows are grouped by run_id. A run's manifest is `<run_id>.json` beside its CSV. A run found twice
    (a directory and a file in it) counts once.
    """
    runs: list[Run] = []
    seen: set = set()
    for path in paths:
        path = str(path)
        if not os.path.exists(path):
            raise UsageError(f"no such file or directory: {path}")
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(glob.escape(path), "*.csv")))
            if not files:
                raise UsageError(f"{path}: no .csv files in this directory")
            found = [run for name in files for run in _runs_of_csv(name)]
        elif path.endswith(".json"):
            found = [_run_of_manifest(path)]
        else:
            found = _runs_of_csv(path)
        for run in found:
            key = (run.run_id, run.fingerprint)
            if key not in seen:
                seen.add(key)
                runs.append(run)
    return runs


def _runs_of_csv(path: str, manifests: dict | None = None) -> list[Run]:
    runs = []
    for run_id, (algorithm, rows, lines) in read_log(path).items():
        manifest = (manifests or {}).get(run_id) or _manifest_beside(path, run_id)
        runs.append(Run(run_id, path, algorithm, rows, manifest, tuple(lines)))
    return runs


def _run_of_manifest(path: str) -> Run:
    manifest = read_manifest(path)
    run_id = manifest["run_id"]
    candidates = [os.path.splitext(path)[0] + ".csv"]
    if isinstance(manifest.get("csv"), str):
        candidates.append(manifest["csv"])
    found = next((name for name in candidates if os.path.isfile(name)), None)
    if found is None:
        raise UsageError(f"{path}: its CSV is missing ({' or '.join(dict.fromkeys(candidates))})")
    runs = [run for run in _runs_of_csv(found, {run_id: manifest}) if run.run_id == run_id]
    if not runs:
        raise UsageError(f"{path}: its CSV {found} has no rows of run {run_id}")
    return runs[0]


def read_manifest(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{path}: not a dmlcli manifest ({_reason(error)})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("run_id"), str) \
            or not isinstance(manifest.get("config"), dict):
        raise UsageError(f"{path}: not a dmlcli manifest (no run_id and config)")
    return manifest


def _manifest_beside(csv_path: str, run_id: str) -> dict | None:
    path = os.path.join(os.path.dirname(csv_path), f"{run_id}.json")
    if not os.path.isfile(path):
        return None
    manifest = read_manifest(path)
    return manifest if manifest["run_id"] == run_id else None


def _reason(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def read_log(path: str) -> dict[str, tuple[str, list[dict], list]]:
    """{run_id: (algorithm, rows, raw lines)} of a dmlcli CSV; a header line met again (files
    concatenated with `cat`) starts a new block of columns. Anything else is refused, naming the file."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            records = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{path}: not a dmlcli log ({_reason(error)})") from None
    header: list[str] | None = None
    runs: dict[str, tuple[str, list[dict], list]] = {}
    for line, record in enumerate(records, 1):
        if not record:
            continue
        if record[0] == "run_id":
            missing = [name for name in BASE_COLUMNS if name not in record]
            if missing:
                raise UsageError(f"{path}: not a dmlcli log (line {line}: no column {', '.join(missing)})")
            header = record
            continue
        if header is None:
            raise UsageError(f"{path}: not a dmlcli log (line {line} is not a header naming {', '.join(BASE_COLUMNS[:3])}, …)")
        if len(record) != len(header):
            missing = len(header) - len(record)
            raise UsageError(f"{path}: line {line} has {abs(missing)} fields {'fewer' if missing > 0 else 'more'} than its header "
                             f"({len(record)} against {len(header)})")
        row = {name: text if name in ("run_id", "algorithm") else parse_value(text) for name, text in zip(header, record)}
        for name in NUMERIC_COLUMNS:
            if not _is_number(row[name]):
                raise UsageError(f"{path}: line {line}: {name} {record[header.index(name)]!r} is not a number")
        if row["test_metric"] is not None and not _is_number(row["test_metric"]):
            raise UsageError(f"{path}: line {line}: test_metric {row['test_metric']!r} is not a number")
        algorithm, rows, lines = runs.setdefault(row["run_id"], (row["algorithm"], [], []))
        rows.append(row)
        lines.append(tuple(record))
    if not runs:
        raise UsageError(f"{path}: not a dmlcli log (no rows)" if header is None else f"{path}: a dmlcli log with no rows")
    return runs


# ------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean of n values; with n ≥ 2, the sample std and the 95 % Student-t interval of the mean."""

    n: int
    mean: float
    std: float | None = None
    low: float | None = None
    high: float | None = None


def summarise(values) -> Stat | None:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return None
    mean = float(values.mean())
    if values.size == 1:
        return Stat(1, mean)
    from scipy.stats import t

    std = float(values.std(ddof=1))
    half = float(t.ppf(0.5 + CONFIDENCE / 2, values.size - 1)) * std / math.sqrt(values.size)
    return Stat(int(values.size), mean, std, mean - half, mean + half)


# ------------------------------------------------------------------------------------------------ target


@dataclass(frozen=True)
class Target:
    """gap: (F − F*)/|F*| ≤ value, F* = reference or the least objective of any compared run.
    metric: test_metric ≥ value (accuracy) or ≤ value (RMSE)."""

    kind: str  # "gap" | "metric"
    value: float
    reference: float | None = None

    def describe(self, f_star: float | None = None, metric: str = "test_metric") -> str:
        if self.kind == "gap":
            where = "--reference" if self.reference is not None else "the best objective seen"
            return f"relative gap ≤ {self.value:g} against F* = {f_star:.10g} ({where})"
        return {"accuracy": f"test accuracy ≥ {self.value:g}", "rmse": f"test RMSE ≤ {self.value:g}"}.get(
            metric, f"test metric reaching {self.value:g} (accuracy ≥, RMSE ≤)")


def best_objective(runs: list[Run]) -> tuple[float, Run]:
    finite = [(row["objective"], run) for run in runs for row in run.rows if math.isfinite(row["objective"])]
    if not finite:
        raise UsageError("no run has a finite objective")
    return min(finite, key=lambda pair: pair[0])


def reaches(row: dict, target: Target, f_star: float | None, loss: str | None) -> bool:
    if target.kind == "gap":
        objective = row["objective"]
        return math.isfinite(objective) and (objective - f_star) / abs(f_star) <= target.value
    metric = row["test_metric"]
    if not _is_number(metric) or not math.isfinite(metric):
        return False
    return metric >= target.value if loss == "logistic" else metric <= target.value


def first_reaching(run: Run, target: Target, f_star: float | None) -> dict | None:
    loss = run.loss
    return next((row for row in run.rows if reaches(row, target, f_star, loss)), None)


def _closest(runs: list[Run], target: Target, f_star: float | None) -> str:
    """What the best run got to, for the message of a target that no run reaches."""
    if target.kind == "gap":
        gaps = [((row["objective"] - f_star) / abs(f_star), run.run_id) for run in runs for row in run.rows
                if math.isfinite(row["objective"])]
        if not gaps:
            return "no run has a finite objective"
        gap, run_id = min(gaps)
        return f"the closest is run {run_id} at a gap of {gap:.3g}"
    best = None  # (how good, value, run_id): higher is better
    for run in runs:
        sign = 1 if run.loss == "logistic" else -1
        for row in run.rows:
            metric = row["test_metric"]
            if _is_number(metric) and math.isfinite(metric) and (best is None or sign * metric > best[0]):
                best = (sign * metric, metric, run.run_id)
    return "no run has a test metric" if best is None else f"the closest is run {best[2]} at {best[1]:.6g}"


# ----------------------------------------------------------------------------------------------- compare


@dataclass
class GroupRow:
    algorithm: str
    options: dict | None  # the full configuration; None: no manifest (one run)
    runs: list[Run]
    final: dict[str, Stat | None]
    reached: int | None = None  # runs that reached the target (None: no target)
    to_target: dict[str, Stat | None] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Comparison:
    options: list[str]  # the options that differ between the compared runs, in name order
    metric: str  # accuracy, rmse, or test_metric when the runs disagree or cannot tell
    rows: list[GroupRow]
    target: Target | None = None
    f_star: float | None = None
    f_star_run: str | None = None  # the run whose objective is F* (target gap without --reference)

    @property
    def unknown(self) -> bool:
        return any(row.options is None for row in self.rows)

    @property
    def option_columns(self) -> list[str]:
        """The varying options; with none, a run without a manifest still gets a column to say ? in."""
        return self.options or (["options"] if self.unknown else [])

    @property
    def show_status(self) -> bool:
        return any(run.status not in (None, "completed") for row in self.rows for run in row.runs)


def varying_options(configurations: list[dict]) -> list[str]:
    """Options with more than one value among the runs that have them (an option of one algorithm
    only, the same in all its runs, is told apart by the algorithm column already)."""
    values: dict[str, set] = {}
    for config in configurations:
        for name, value in config.items():
            values.setdefault(name, set()).add(_key(value))
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def _key(value) -> str:
    return json.dumps(value, sort_keys=True)


def group_runs(runs: list[Run]) -> list[tuple[str, dict | None, list[Run]]]:
    """(algorithm, configuration, runs): repeats (differing only in seed) together; a run without a
    manifest alone. Sorted by algorithm, then option values."""
    groups: dict[tuple, tuple[str, dict | None, list[Run]]] = {}
    for run in runs:
        config = run.configuration
        if config is None:
            key = (run.algorithm, 1, run.source, run.run_id)
        else:
            key = (run.algorithm, 0, _key(config))
        groups.setdefault(key, (run.algorithm, config, []))[2].append(run)
    return [groups[key] for key in sorted(groups, key=_sort_key)]


def _sort_key(key: tuple):
    algorithm, unknown, *rest = key
    if unknown:
        return algorithm, unknown, rest
    config = json.loads(rest[0])
    return algorithm, unknown, [(name, _value_order(config[name])) for name in sorted(config)]


def _value_order(value):
    if value is None:
        return (0, 0, "")
    if _is_number(value):
        return (1, value, "")
    return (2, 0, _key(value))


def compare(runs: list[Run], target: Target | None = None) -> Comparison:
    """The comparison of `runs`; a target that no run reaches is a UsageError saying so."""
    if not runs:
        raise UsageError("no runs to compare")
    f_star = f_star_run = None
    if target is not None and target.kind == "gap":
        if target.reference is not None:
            f_star = target.reference
        else:
            f_star, best = best_objective(runs)
            f_star_run = best.run_id
        if f_star == 0:
            raise UsageError("F* = 0: a relative gap needs a nonzero F*; give --reference")
    if target is not None and target.kind == "metric":
        unknown = [run for run in runs if run.loss not in METRIC_OF_LOSS]
        if unknown:
            raise UsageError(f"run {unknown[0].label}: no manifest, and its rows do not tell whether test_metric is "
                             "accuracy or RMSE; put its manifest beside its CSV")
    rows = []
    for algorithm, config, members in group_runs(runs):
        final = {name: summarise([run.rows[-1][name] for run in members]) for name in FINAL}
        row = GroupRow(algorithm, config, members, final)
        if target is not None:
            hits = [hit for hit in (first_reaching(run, target, f_star) for run in members) if hit is not None]
            row.reached = len(hits)
            row.to_target = {name: summarise([hit[name] for hit in hits]) for name in TO_TARGET}
        rows.append(row)
    losses = {run.loss for run in runs}
    metric = METRIC_OF_LOSS.get(losses.pop(), "test_metric") if len(losses) == 1 else "test_metric"
    if target is not None and not any(row.reached for row in rows):
        raise UsageError(f"no run reaches the target: {target.describe(f_star, metric)}; {_closest(runs, target, f_star)}")
    options = varying_options([run.configuration for run in runs if run.configuration is not None])
    return Comparison(options, metric, rows, target, f_star, f_star_run)


# --------------------------------------------------------------------------------------------- rendering

LABELS = {"objective": "objective", "round": "rounds", "wall_s": "wall s", "bytes_sent": "bytes sent"}
TARGET_LABELS = {"round": "rounds to target", "wall_s": "wall s to target", "bytes_sent": "bytes to target"}


def option_text(name: str, value) -> str:
    if value is None:
        return {"lr": "auto", "batch_size": "all"}.get(name, "default")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return crash_text(value) if name == "crash" else _key(value)
    return str(value)


def crash_text(value) -> str:
    """--crash as it was given: [2, 50] is 2@50, [2, 50, "hang"] is 2@50:hang."""
    return "@".join(str(v) for v in value[:2]) + "".join(f":{kind}" for kind in value[2:])


def _status_text(runs: list[Run]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        status = run.status or UNKNOWN
        counts[status] = counts.get(status, 0) + 1
    if len(counts) == 1 and len(runs) > 1:
        return next(iter(counts))
    return ", ".join(status if count == 1 else f"{count} {status}" for status, count in sorted(counts.items()))


def _number(value: float, name: str) -> str:
    if not math.isfinite(value):
        return str(value)
    if name in ("round", "bytes_sent") and value == int(value):
        return f"{int(value):,}" if name == "bytes_sent" else str(int(value))
    return f"{value:.4g}" if name == "wall_s" else f"{value:.6g}"


def stat_text(stat: Stat | None, name: str, multiline: bool = False) -> str:
    """mean ± std [low, high], the mean and interval to the std's second significant digit."""
    if stat is None:
        return NOT_REACHED
    if stat.std is None or stat.std == 0:  # one run, or all alike
        return _number(stat.mean, name)
    if not (math.isfinite(stat.mean) and math.isfinite(stat.std)):
        return f"{_number(stat.mean, name)} ± {stat.std}"
    decimals = 1 - math.floor(math.log10(stat.std))
    if decimals > 8:
        text = f"{stat.mean:.4e} ± {stat.std:.1e}", f"[{stat.low:.4e}, {stat.high:.4e}]"
    else:
        places = max(decimals, 0)
        comma = "," if name == "bytes_sent" else ""
        text = (f"{stat.mean:{comma}.{places}f} ± {stat.std:{comma}.{places}f}",
                f"[{stat.low:{comma}.{places}f}, {stat.high:{comma}.{places}f}]")
    return ("\n" if multiline else " ").join(text)


def headers(comparison: Comparison) -> list[str]:
    """The table's column names; options as their flags (--rounds, the budget, beside rounds, the last round)."""
    names = ["algorithm", *(f"--{name.replace('_', '-')}" for name in comparison.options)]
    if not comparison.options and comparison.unknown:
        names.append("options")
    if comparison.unknown:
        names.append("run")
    if comparison.show_status:
        names.append("status")
    names += ["n", LABELS["objective"], comparison.metric, LABELS["round"], LABELS["wall_s"], LABELS["bytes_sent"]]
    if comparison.target is not None:
        names += ["reached", *TARGET_LABELS.values()]
    return names


def _leading_cells(comparison: Comparison, row: GroupRow) -> list[str]:
    cells = [row.algorithm]
    cells += [UNKNOWN if row.options is None else option_text(name, row.options[name]) if name in row.options else ""
              for name in comparison.option_columns]
    if comparison.unknown:
        cells.append(row.runs[0].run_id if row.options is None else "")
    if comparison.show_status:
        cells.append(_status_text(row.runs))
    return cells


def text_cells(comparison: Comparison, multiline: bool = False) -> list[list[str]]:
    """The table's cells as text, one list a group, in the order of headers()."""
    lines = []
    for row in comparison.rows:
        cells = _leading_cells(comparison, row) + [str(row.n)]
        cells += [stat_text(row.final[name], name, multiline) for name in FINAL]
        if comparison.target is not None:
            cells.append(f"{row.reached}/{row.n}")
            cells += [stat_text(row.to_target[name], name, multiline) for name in TO_TARGET]
        lines.append(cells)
    return lines


def notes(comparison: Comparison) -> list[str]:
    """What the table's cells mean, printed under it (table and markdown)."""
    said = ["n runs of each configuration (repeats differing only in seed): mean ± sample std "
            "[95 % confidence interval of the mean, Student t]; one value: one run, or all alike"]
    if comparison.target is not None:
        said.append(f"target: {comparison.target.describe(comparison.f_star, comparison.metric)}"
                    + (f", run {comparison.f_star_run}" if comparison.f_star_run else "")
                    + f"; to target: at the first evaluation that reaches it, over the runs that do; {NOT_REACHED}: none did")
    if comparison.unknown:
        said.append(f"{UNKNOWN}: no manifest beside the CSV, configuration unknown beyond the algorithm")
    return said


def render_markdown(comparison: Comparison) -> str:
    names = headers(comparison)
    first_number = names.index("n")
    lines = ["| " + " | ".join(names) + " |",
             "|" + "|".join("---:" if i >= first_number else "---" for i in range(len(names))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in text_cells(comparison)]
    lines += [""] + notes(comparison)
    return "\n".join(lines) + "\n"


def csv_columns(comparison: Comparison) -> list[str]:
    names = ["algorithm", *comparison.option_columns]
    if comparison.unknown:
        names.append("run")
    if comparison.show_status:
        names.append("status")
    names.append("n")
    stats = [comparison.metric if name == "test_metric" else name for name in FINAL]
    if comparison.target is not None:
        names.append("reached")
        stats += [f"{name}_to_target" for name in TO_TARGET]
    return names + [f"{name}_{part}" for name in stats for part in ("mean", "std", "ci_low", "ci_high")]


def render_csv(comparison: Comparison) -> str:
    """One line a group: the statistics at full precision; blank where there is none (n = 1, not reached)."""
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns(comparison))
    for row in comparison.rows:
        cells = _leading_cells(comparison, row) + [row.n]
        stats = [row.final[name] for name in FINAL]
        if comparison.target is not None:
            cells.append(row.reached)
            stats += [row.to_target[name] for name in TO_TARGET]
        for stat in stats:
            cells += ["" if stat is None or value is None else repr(value)
                      for value in ((stat.mean, stat.std, stat.low, stat.high) if stat else (None,) * 4)]
        writer.writerow(cells)
    return out.getvalue()


def render_table(comparison: Comparison, stream, width: int | None = None) -> None:
    """A rich table on `stream` (no colours unless it is a terminal), the notes under it. Cells are
    plain text, never markup: a run id or option value may hold brackets."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    names = headers(comparison)
    first_number = names.index("n")
    table = Table()
    for index, name in enumerate(names):
        table.add_column(Text(name), justify="right" if index >= first_number else "left", overflow="fold")
    for cells in text_cells(comparison, multiline=True):
        table.add_row(*(Text(cell) for cell in cells))
    console = Console(file=stream, width=width, highlight=False, markup=False)
    console.print(table)
    for line in notes(comparison):
        console.print(line, soft_wrap=True)

"""`dmlcli plot`: real runs (in-process transport); the series checked against their CSVs, the files written, bad input refused."""

import builtins

import numpy as np
import pytest

from dmlcli.cli import main
from dmlcli.report import read_csv
from dmlcli.report.compare import load_runs
from dmlcli.report.plot import INSTALL_HINT, series
from dmlcli.runtime.local_run import run_local

SEEDS = (0, 1)
ROUNDS = 10


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """ssgd at lr 0.1 and 0.03 and ma (M = 2) × seeds 0–1, 2 workers, 10 rounds."""
    from dmlcli.runtime.config import make_config

    directory = tmp_path_factory.mktemp("runs")
    for name, algorithm, params, lr in (("ssgd-a", "ssgd", None, 0.1), ("ssgd-b", "ssgd", None, 0.03),
                                        ("ma", "ma", {"local_steps": 2}, 0.1)):
        for seed in SEEDS:
            config = make_config(algorithm, params, out=str(directory / f"{name}-s{seed}.csv"), progress="off",
                                 rounds=ROUNDS, eval_every=1, batch_size=16, seed=seed, lr=lr)
            assert run_local(config, workers=2) == 0
    return directory


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def rows_of(directory, name):
    return [read_csv(directory / f"{name}-s{seed}.csv") for seed in SEEDS]


def test_one_line_per_configuration_mean_and_min_max_over_seeds(runs_dir):
    figure = series(load_runs([runs_dir]), "round", "objective")
    assert [line.label for line in figure.series] == ["ma --lr 0.1", "ssgd --lr 0.03", "ssgd --lr 0.1"]
    for line, name in zip(figure.series, ("ma", "ssgd-b", "ssgd-a")):
        runs = rows_of(runs_dir, name)
        objective = np.array([[row["objective"] for row in rows] for rows in runs])
        assert np.array_equal(line.x, [row["round"] for row in runs[0]])
        assert np.allclose(line.y, objective.mean(axis=0))
        assert np.array_equal(line.low, objective.min(axis=0)) and np.array_equal(line.high, objective.max(axis=0))
        assert set(line.n) == {2}
        assert len(line.runs) == 2


def test_wall_time_is_the_mean_over_seeds_and_std_band(runs_dir):
    figure = series(load_runs([runs_dir]), "wall_s", "test_metric", band="std")
    assert figure.y_label == "test accuracy"
    line = figure.series[0]
    runs = rows_of(runs_dir, "ma")
    wall = np.array([[row["wall_s"] for row in rows] for rows in runs])
    metric = np.array([[row["test_metric"] for row in rows] for rows in runs])
    assert np.allclose(line.x, wall.mean(axis=0))
    spread = metric.std(axis=0, ddof=1)
    assert np.allclose(line.low, metric.mean(axis=0) - spread) and np.allclose(line.high, metric.mean(axis=0) + spread)


def test_gap_against_the_best_objective_or_a_reference_on_a_log_scale(runs_dir):
    runs = load_runs([runs_dir])
    best = min(row["objective"] for run in runs for row in run.rows)
    figure = series(runs, "bytes_sent", "gap")
    assert figure.f_star == best and figure.log_y
    assert not figure.log_x  # 10 rounds of bytes: one decade and a bit
    runs_a = rows_of(runs_dir, "ssgd-a")
    gaps = np.array([[(row["objective"] - best) / best for row in rows] for rows in runs_a])
    line = figure.series[2]
    assert np.allclose(line.y, gaps.mean(axis=0))
    assert np.array_equal(line.x, [row["bytes_sent"] for row in runs_a[0]])
    assert series(runs, "round", "gap", reference=0.05).series[2].y[0] == pytest.approx(
        (runs_a[0][0]["objective"] - 0.05) / 0.05)


@pytest.mark.parametrize("suffix", ["png", "svg", "pdf"])
def test_the_figure_is_written_in_the_format_of_its_name(runs_dir, tmp_path, capsys, suffix):
    output = tmp_path / "figs" / f"plot.{suffix}"
    code, out, err = run_cli(capsys, runs_dir, "-o", output, "--y", "gap", "--x", "bytes_sent")
    assert code == 0, err
    magic = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[suffix]
    assert output.read_bytes().startswith(magic) and output.stat().st_size > 1000
    assert out.startswith(f"{output}: 3 configurations, 6 runs;") and "min–max" in out
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name]  # no temporary left


@pytest.mark.parametrize("args,message", [
    (["missing.csv", "-o", "{tmp}/p.png"], "no such file or directory: missing.csv"),
    (["{tmp}/other.csv", "-o", "{tmp}/p.png"], "other.csv: not a dmlcli log"),
    (["{runs}", "-o", "{tmp}/p.txt"], "the file name must end in .png, .svg, .pdf"),
    (["{runs}", "-o", "{tmp}/p.png", "--x", "seconds"], "Invalid value for '--x'"),
    (["{runs}", "-o", "{tmp}/p.png", "--y", "accuracy"], "Invalid value for '--y'"),
    (["{runs}", "-o", "{tmp}/p.png", "--reference", "0.1"], "--reference is F* for --y gap"),
    (["{runs}", "-o", "{tmp}/p.png", "--y", "gap", "--reference", "0"], "F* must be nonzero"),
    (["{runs}"], "Missing option '-o'"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(runs_dir, tmp_path, capsys, args, message):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    code, out, err = run_cli(capsys, *(arg.format(tmp=tmp_path, runs=runs_dir) for arg in args))
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.csv"]


def test_without_matplotlib_the_install_hint(runs_dir, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, out, err = run_cli(capsys, runs_dir, "-o", tmp_path / "p.png")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"dmlcli: error: {INSTALL_HINT}"]
    assert list(tmp_path.iterdir()) == []


def test_matplotlib_is_not_imported_by_the_cli():
    import subprocess
    import sys

    code = "import sys, dmlcli.cli, dmlcli.report.plot; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

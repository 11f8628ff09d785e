"""`dmlcli compare`: real runs (in-process transport) grouped by configuration, checked against numpy on their CSVs."""

import csv
import io
import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats

from dmlcli.cli import main
from dmlcli.report import read_csv
from dmlcli.report.compare import Target, compare, load_runs, render_markdown, summarise
from dmlcli.runtime.config import make_config
from dmlcli.runtime.local_run import run_local

SEEDS = (0, 1, 2)
ROUNDS = 12


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """ssgd and ma (M = 2) × seeds 0–2 on breast_cancer, 2 workers, mini-batches of 16, 12 rounds, evaluated every round."""
    directory = tmp_path_factory.mktemp("runs")
    for algorithm, params in (("ssgd", None), ("ma", {"local_steps": 2})):
        for seed in SEEDS:
            config = make_config(algorithm, params, out=str(directory / f"{algorithm}-s{seed}.csv"), progress="off",
                                 rounds=ROUNDS, eval_every=1, batch_size=16, seed=seed)
            assert run_local(config, workers=2) == 0
    return directory


def last_rows(directory, algorithm):
    return [read_csv(directory / f"{algorithm}-s{seed}.csv")[-1] for seed in SEEDS]


def t_interval(values):
    values = np.asarray(values, dtype=float)
    return stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=stats.sem(values))


def csv_output(capsys, *args):
    code, out, err = run_cli(capsys, *args, "--format", "csv")
    assert code == 0, err
    return {row["algorithm"]: row for row in csv.DictReader(io.StringIO(out))}


def test_repeats_over_seeds_are_one_line_with_mean_std_and_student_t_interval(runs_dir, capsys):
    table = csv_output(capsys, runs_dir)
    assert set(table) == {"ssgd", "ma"}
    for algorithm in ("ssgd", "ma"):
        last = last_rows(runs_dir, algorithm)
        line = table[algorithm]
        assert line["n"] == "3"
        for column, name in (("objective", "objective"), ("accuracy", "test_metric"), ("wall_s", "wall_s"),
                             ("bytes_sent", "bytes_sent"), ("round", "round")):
            values = np.array([row[name] for row in last], dtype=float)
            assert float(line[f"{column}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
            assert float(line[f"{column}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-12, abs=1e-300)
            if values.std() > 0:
                low, high = t_interval(values)
                assert float(line[f"{column}_ci_low"]) == pytest.approx(low, rel=1e-12)
                assert float(line[f"{column}_ci_high"]) == pytest.approx(high, rel=1e-12)
    # the seeds really differ, so the spread is not a formatting accident
    assert float(table["ssgd"]["objective_std"]) > 0 and float(table["ma"]["wall_s_std"]) > 0
    assert "seed" not in table["ssgd"]  # not part of a configuration


def test_one_run_has_a_value_and_no_spread():
    stat = summarise([0.25])
    assert (stat.n, stat.mean, stat.std, stat.low, stat.high) == (1, 0.25, None, None, None)
    two = summarise([1.0, 3.0])
    assert two.std == pytest.approx(math.sqrt(2)) and two.high - two.mean == pytest.approx(12.706204736 * 1.0, rel=1e-8)
    assert summarise([]) is None and summarise([None, 2.0]).n == 1


def first_hit(rows, reached):
    return next((row for row in rows if reached(row)), None)


def test_target_gap_gives_rounds_time_and_bytes_at_the_first_row_reaching_it(runs_dir, capsys):
    all_rows = {(a, s): read_csv(runs_dir / f"{a}-s{s}.csv") for a in ("ssgd", "ma") for s in SEEDS}
    f_star = min(row["objective"] for rows in all_rows.values() for row in rows)
    gap = 0.08
    table = csv_output(capsys, runs_dir, "--target-gap", gap)
    for algorithm in ("ssgd", "ma"):
        hits = [first_hit(all_rows[algorithm, s], lambda row: (row["objective"] - f_star) / f_star <= gap) for s in SEEDS]
        hits = [hit for hit in hits if hit is not None]
        line = table[algorithm]
        assert line["reached"] == str(len(hits))
        for name in ("round", "wall_s", "bytes_sent"):
            if hits:
                assert float(line[f"{name}_to_target_mean"]) == pytest.approx(np.mean([hit[name] for hit in hits]), rel=1e-12)
            else:
                assert line[f"{name}_to_target_mean"] == ""
    assert int(table["ma"]["reached"]) >= 1  # the best objective is one of ma's: it reaches any gap


def test_reference_sets_f_star_and_a_partial_reach_shows_a_dash(runs_dir, capsys):
    runs = load_runs([runs_dir])
    reference = min(row["objective"] for run in runs for row in run.rows) * 0.97
    # a gap that some runs (not all) reach against the lower reference
    finals = sorted((min(row["objective"] for row in run.rows) - reference) / reference for run in runs)
    gap = (finals[0] + finals[1]) / 2
    comparison = compare(runs, Target("gap", gap, reference))
    assert comparison.f_star == reference and comparison.f_star_run is None
    assert sum(row.reached for row in comparison.rows) == 1
    code, out, err = run_cli(capsys, runs_dir, "--target-gap", gap, "--reference", reference, "--format", "markdown")
    assert code == 0 and err == ""
    not_reached = next(line for line in out.splitlines() if line.startswith("| ") and "| 0/3 |" in line)
    assert not_reached.rstrip(" |").endswith("– | – | –")
    assert f"F* = {reference:.10g} (--reference)" in out


def test_target_metric_is_accuracy_at_least_m(runs_dir, capsys):
    table = csv_output(capsys, runs_dir, "--target-metric", 0.96)
    for algorithm in ("ssgd", "ma"):
        hits = [first_hit(read_csv(runs_dir / f"{algorithm}-s{s}.csv"), lambda row: row["test_metric"] >= 0.96)
                for s in SEEDS]
        hits = [hit for hit in hits if hit is not None]
        assert table[algorithm]["reached"] == str(len(hits)) and hits
        assert float(table[algorithm]["round_to_target_mean"]) == pytest.approx(np.mean([h["round"] for h in hits]))


def test_target_metric_is_rmse_at_most_m_for_the_squared_loss(config, tmp_path, capsys):
    run_local(config("ssgd", loss="squared", data="synthetic:n=400,d=5,kind=linear,noise=0.1,seed=3", rounds=30,
                     batch_size=None, eval_every=1, out=str(tmp_path / "sq.csv")), workers=2)
    rows = read_csv(tmp_path / "sq.csv")
    target = (rows[0]["test_metric"] + rows[-1]["test_metric"]) / 2  # RMSE falls from the first row to the last
    table = csv_output(capsys, tmp_path / "sq.csv", "--target-metric", target)
    assert "rmse_mean" in table["ssgd"]
    hit = first_hit(rows, lambda row: row["test_metric"] <= target)
    assert 0 < hit["round"] < rows[-1]["round"]
    assert float(table["ssgd"]["round_to_target_mean"]) == hit["round"]
    assert float(table["ssgd"]["bytes_sent_to_target_mean"]) == hit["bytes_sent"]


def test_formats_table_markdown_and_csv(runs_dir, capsys):
    code, out, err = run_cli(capsys, runs_dir)
    assert code == 0 and err == ""
    assert "algorithm" in out and "ssgd" in out and "ma" in out and "Student t" in out
    assert "┃" in out  # rich's table
    code, out, _ = run_cli(capsys, runs_dir, "--format", "markdown", "--target-gap", 0.1)
    lines = out.splitlines()
    assert lines[0] == ("| algorithm | n | objective | accuracy | rounds | wall s | bytes sent | reached "
                        "| rounds to target | wall s to target | bytes to target |")
    assert lines[1].startswith("|---|---:|") and lines[2].startswith("| ma | 3 | ")
    code, out, _ = run_cli(capsys, runs_dir, "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [row["algorithm"] for row in parsed] == ["ma", "ssgd"] and all(row["n"] == "3" for row in parsed)
    assert float(parsed[0]["objective_mean"]) > 0


def test_files_manifests_directories_and_concatenated_csvs_read_the_same(runs_dir, tmp_path, capsys):
    whole = csv_output(capsys, runs_dir)
    csvs = sorted(runs_dir.glob("*.csv"))
    assert csv_output(capsys, *csvs) == whole
    assert csv_output(capsys, *sorted(runs_dir.glob("*.json"))) == whole
    assert csv_output(capsys, runs_dir, *csvs) == whole  # the same run found twice counts once
    # `cat *.csv > all.csv`: one file, the header repeated, rows told apart by run_id; manifests beside it
    together = tmp_path / "together"
    together.mkdir()
    for path in runs_dir.glob("*.json"):
        shutil.copy(path, together)
    (together / "all.csv").write_text("".join(path.read_text() for path in csvs))
    assert csv_output(capsys, together / "all.csv") == whole
    # one header only (tail -n +2 of the others), rows of one algorithm whose columns agree
    ssgd = sorted(runs_dir.glob("ssgd-*.csv"))
    texts = [path.read_text().splitlines(keepends=True) for path in ssgd]
    (together / "ssgd.csv").write_text("".join(texts[0] + [line for text in texts[1:] for line in text[1:]]))
    assert csv_output(capsys, together / "ssgd.csv") == {"ssgd": whole["ssgd"]}


def test_a_run_without_manifest_shows_its_configuration_as_unknown(runs_dir, tmp_path, capsys):
    shutil.copy(runs_dir / "ssgd-s0.csv", tmp_path / "lone.csv")  # no lone.json beside it
    code, out, err = run_cli(capsys, tmp_path / "lone.csv", runs_dir / "ssgd-s1.csv", runs_dir / "ssgd-s2.csv",
                             "--format", "markdown")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("| algorithm | options | run | n |")
    assert lines[2].startswith("| ssgd |  |  | 2 |")  # the two with manifests: one configuration
    assert lines[3].startswith("| ssgd | ? | ssgd-s0 | 1 |")  # algorithm from its rows
    assert "?: no manifest" in out
    # without the manifest, the rows still tell it is accuracy (the logistic loss is log 2 at w = 0)
    assert run_cli(capsys, tmp_path / "lone.csv", "--target-metric", 0.9)[0] == 0


def test_only_the_options_that_differ_are_shown(config, tmp_path, capsys):
    for lr in (0.1, 0.3):
        for seed in (0, 1):
            run_local(config("ssgd", lr=lr, seed=seed, rounds=5, batch_size=16, out=str(tmp_path / f"lr{lr}-s{seed}.csv")),
                      workers=2)
    code, out, _ = run_cli(capsys, tmp_path, "--format", "markdown")
    header = out.splitlines()[0]
    assert header.startswith("| algorithm | --lr | n |")
    assert out.splitlines()[2].startswith("| ssgd | 0.1 | 2 |") and out.splitlines()[3].startswith("| ssgd | 0.3 | 2 |")
    code, out, _ = run_cli(capsys, *tmp_path.glob("lr0.1-*.csv"), "--format", "markdown")
    assert out.splitlines()[0].startswith("| algorithm | n |")  # same options: none shown


def test_workers_as_the_run_had_them(config, tmp_path, capsys):
    """--workers is the launch flag; the manifest's workers is what the run had (under mpirun, the ranks − 1)."""
    for workers in (2, 3):
        run_local(config("ssgd", rounds=3, out=str(tmp_path / f"w{workers}.csv")), workers=workers)
    lines = run_cli(capsys, tmp_path, "--format", "markdown")[1].splitlines()
    assert lines[0].startswith("| algorithm | --workers | n |")
    assert [line.split(" | ")[1] for line in lines[2:4]] == ["2", "3"]


def test_status_is_shown_when_a_run_did_not_complete(config, tmp_path, capsys):
    run_local(config("ssgd", rounds=3, out=str(tmp_path / "good.csv")), workers=2)
    manifest = json.loads((tmp_path / "good.json").read_text())
    (tmp_path / "copy.csv").write_text((tmp_path / "good.csv").read_text().replace("good,", "copy,"))
    (tmp_path / "copy.json").write_text(json.dumps(dict(manifest, run_id="copy", status="interrupted")))
    out = run_cli(capsys, tmp_path, "--format", "markdown")[1]
    assert out.splitlines()[0].startswith("| algorithm | status | n |")
    assert "| completed, interrupted | 2 |" in out


def test_render_markdown_escapes_pipes():
    from dmlcli.report.compare import FINAL, Comparison, GroupRow, Run

    run = Run("r", "r.csv", "ssgd", [], {"status": "completed", "config": {"data": "a|b"}})
    row = GroupRow("ssgd", run.configuration, [run], {name: summarise([1.0]) for name in FINAL})
    text = render_markdown(Comparison(["data"], "accuracy", [row]))
    assert "| ssgd | a\\|b | 1 |" in text


@pytest.fixture
def bad_files(tmp_path, runs_dir):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "partial.csv").write_text("run_id,algorithm,round\nx,ssgd,0\n")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x01garbage")
    (tmp_path / "empty.csv").write_text("")
    text = (runs_dir / "ssgd-s0.csv").read_text().splitlines()
    header, first = text[0], text[1].split(",")
    first[header.split(",").index("objective")] = "lots"
    (tmp_path / "words.csv").write_text(header + "\n" + ",".join(first) + "\n")
    (tmp_path / "short.csv").write_text(header + "\n" + text[1].rsplit(",", 2)[0] + "\n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "orphan.json").write_text(json.dumps({"run_id": "orphan", "config": {}, "csv": "/nowhere/orphan.csv"}))
    (tmp_path / "nocsv").mkdir()
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["missing.csv"], "dmlcli: error: no such file or directory: missing.csv"),
    (["{tmp}/nocsv"], "nocsv: no .csv files in this directory"),
    (["{tmp}/other.csv"], "other.csv: not a dmlcli log (line 1 is not a header naming run_id"),
    (["{tmp}/partial.csv"], "partial.csv: not a dmlcli log (line 1: no column updates, epochs, wall_s"),
    (["{tmp}/binary.csv"], "binary.csv: not a dmlcli log (not UTF-8 text)"),
    (["{tmp}/empty.csv"], "empty.csv: not a dmlcli log (no rows)"),
    (["{tmp}/words.csv"], "words.csv: line 2: objective 'lots' is not a number"),
    (["{tmp}/short.csv"], "short.csv: line 2 has 2 fields fewer than its header"),
    (["{tmp}/bad.json"], "bad.json: not a dmlcli manifest (Expecting property name"),
    (["{tmp}/orphan.json"], "orphan.json: its CSV is missing"),
    (["{runs}", "--target-gap", "0", "--reference", "0.001"], "no run reaches the target: relative gap ≤ 0 against F* = 0.001"),
    (["{runs}", "--target-metric", "1.5"], "no run reaches the target: test accuracy ≥ 1.5; the closest is run "),
    (["{runs}", "--target-gap", "0.1", "--target-metric", "0.9"], "give either --target-gap or --target-metric"),
    (["{runs}", "--reference", "0.1"], "--reference is F* for --target-gap"),
    (["{runs}", "--target-gap", "nan"], "Invalid value for '--target-gap': nan is not a finite number"),
    (["{runs}", "--target-gap", "-1"], "Invalid value for '--target-gap': -1 is below 0"),
    (["{runs}", "--target-gap", "0.1", "--reference", "0"], "F* must be nonzero"),
    (["{runs}", "--format", "html"], "Invalid value for '--format'"),
    ([], "Missing argument 'RUN...'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_on_stdout(bad_files, runs_dir, capsys, args, message):
    args = [arg.format(tmp=bad_files, runs=runs_dir) for arg in args]
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and message in err, err
    assert "Traceback" not in err


def test_the_logic_does_not_start_mpi():
    import subprocess
    import sys

    code = ("import sys, dmlcli.report.compare, dmlcli.cli.compare, dmlcli.cli.env; "
            "sys.exit('mpi4py' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

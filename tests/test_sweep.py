"""`dmlcli sweep RECIPE`: the cartesian product of a recipe's lists, each point a real self-launched run (or,
under mpiexec, a run on the allocation's ranks), resumable."""

import json

import pytest

from conftest import dmlcli_alone, dmlcli_mpi
from dmlcli.cli import main

RECIPE = """algorithm = "ssgd"
batch-size = 16
rounds = 5
lr = [0.1, 0.03]
seed = [0, 1]
"""
NAMES = ["ssgd-lr=0.1-s0", "ssgd-lr=0.1-s1", "ssgd-lr=0.03-s0", "ssgd-lr=0.03-s1"]


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(RECIPE)
    return path


def test_dry_run_lists_the_product_and_runs_nothing(recipe, tmp_path, capsys):
    code, out, err = run_cli(capsys, recipe, "--out", tmp_path / "out/", "--workers", "2", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split(":")[0].split(" ", 1)[1] for line in lines[:-1]] == NAMES
    assert "dmlcli train ssgd --set batch-size=16 --set rounds=5 --set lr=0.03 --set seed=1 --out" in lines[3]
    assert lines[3].endswith("--progress off --workers 2")
    assert lines[-1] == "4 runs, 0 completed, 4 to run"
    assert not (tmp_path / "out").exists()


def test_a_sweep_runs_every_point_once_and_continues_where_it_stopped(recipe, tmp_path):
    out = tmp_path / "out"
    done = dmlcli_alone("sweep", str(recipe), "--out", f"{out}/", "--workers", "2", timeout=240)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.{ext}" for name in NAMES for ext in ("csv", "json"))
    for name in NAMES:
        manifest = json.loads((out / f"{name}.json").read_text())
        assert manifest["status"] == "completed"
        assert manifest["config"]["lr"] == float(name.split("=")[1].split("-")[0])
        assert manifest["config"]["seed"] == int(name[-1]) and manifest["config"]["rounds"] == 5
        assert manifest["workers"] == 2
    assert done.stdout.splitlines()[-1] == f"4 runs: 4 run, 0 skipped (completed), in {out}/"

    again = dmlcli_alone("sweep", str(recipe), "--out", f"{out}/", "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("completed, skipped") == 4

    (out / f"{NAMES[2]}.json").unlink()  # as if the sweep had been killed during that run
    before = {name: (out / f"{name}.csv").stat().st_mtime_ns for name in NAMES}
    resumed = dmlcli_alone("sweep", str(recipe), "--out", f"{out}/", "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert f"[3/4] {NAMES[2]}: running" in resumed.stdout and resumed.stdout.count("completed, skipped") == 3
    assert json.loads((out / f"{NAMES[2]}.json").read_text())["status"] == "completed"
    assert [name for name in NAMES if (out / f"{name}.csv").stat().st_mtime_ns != before[name]] == [NAMES[2]]


def test_under_mpiexec_the_runs_go_one_after_another_on_the_allocation_s_ranks(recipe, tmp_path):
    """One mpiexec (a batch job's allocation): every point runs on its 3 ranks, and a second sweep
    skips them all; a --workers that disagrees with the ranks is refused."""
    out = tmp_path / "out"
    done = dmlcli_mpi(3, "sweep", str(recipe), "--out", f"{out}/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("[")] == [
        f"[{index}/4] {name}: running" for index, name in enumerate(NAMES, 1)]
    for name in NAMES:
        manifest = json.loads((out / f"{name}.json").read_text())
        assert manifest["status"] == "completed" and manifest["mpi"]["ranks"] == 3 and manifest["workers"] == 2
    again = dmlcli_mpi(3, "sweep", str(recipe), "--out", f"{out}/", timeout=120)
    assert again.returncode == 0 and again.stdout.count("completed, skipped") == 4
    refused = dmlcli_mpi(3, "sweep", str(recipe), "--out", f"{out}/", "--workers", "4", timeout=120)
    assert refused.returncode == 2 and "--workers 4 needs 5 ranks, but mpirun started 3" in refused.stderr


@pytest.mark.parametrize("body,message", [
    ('algorithm = "ssgd"\nlr = [0.1, "x"]\n', "lr[1]: 'lr' must be a positive number or \"auto\", got a string (\"x\")"),
    ('algorithm = "ssgd"\nrounds = [1, 2.5]\n', "rounds[1]: 'rounds' must be an integer, got a float (2.5)"),
    ('algorithm = "ssgd"\nseed = [0, true]\n', "seed[1]: 'seed' must be an integer, got a boolean (true)"),
    ('algorithm = "ssgd"\nlam = [[1]]\n', "lam[0]: 'lam' must be a number, got a list"),
    ('algorithm = "ssgd"\nlam = []\n', "'lam' is an empty list"),
    ('algorithm = "ssgd"\nseed = [0, 0]\n', "'seed' lists 0 twice"),
    ('algorithm = "ssgd"\nrounds = [0, 5]\n', "rounds[0]: invalid value for 'rounds'"),
    ('algorithm = "ssgd"\nlearning_rate = [0.1]\n', "unknown key 'learning_rate'"),
    ('algorithm = "ssgd"\nout = "x/"\n', "'out' is set by the sweep"),
    ('lr = [0.1]\n', "a sweep recipe names its algorithm"),
    ('algorithm = "sgd"\n', "unknown algorithm 'sgd'"),
])
def test_bad_values_are_one_line_exit_2_and_nothing_run(tmp_path, capsys, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    code, out, err = run_cli(capsys, path, "--out", tmp_path / "out/")
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()

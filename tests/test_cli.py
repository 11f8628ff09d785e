"""The command line without MPI: option resolution, help, and the one-line errors (exit 2)."""

import pytest

from dmlcli.cli import main
from dmlcli.runtime import launch


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture
def captured(monkeypatch):
    """Pretend to be a rank under mpirun and catch the resolved config instead of running."""
    seen = {}

    def fake_rank_main(config):
        seen["config"] = config
        return 0

    monkeypatch.setattr(launch, "under_launcher", lambda: True)
    monkeypatch.setattr(launch, "rank_main", fake_rank_main)
    monkeypatch.setenv("PMI_SIZE", "5")
    return seen


def test_list_names_every_algorithm(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert out.splitlines()[0].startswith("asgd") and "ssgd" in out and "synchronous SGD" in out


def test_help_shows_defaults_and_the_update_rule(capsys):
    code, out, _ = run_cli(capsys, "train", "asgd", "--help")
    assert code == 0
    assert "[default: 32]" in out and "--max-staleness" in out and "η_τ" in out


@pytest.mark.parametrize("args,message", [
    (["train", "sgdx"], "dmlcli train: error: unknown algorithm 'sgdx'; choose from asgd, ssgd"),
    (["train", "ssgd", "--bogus", "1"], "dmlcli train ssgd: error: No such option '--bogus'"),
    (["train", "ssgd", "--lr", "0"], "dmlcli train ssgd: error: Invalid value for '--lr': '0' is not a positive number or 'auto'"),
    (["train", "ssgd", "--batch-size", "0"], "Invalid value for '--batch-size': 0 is not a positive integer or 'all'"),
    (["train", "ssgd", "--set", "lr"], "dmlcli: error: --set expects KEY=VALUE, got 'lr'"),
    (["train", "ssgd", "--set", "speed=3"], "dmlcli: error: --set: unknown key 'speed'"),
    (["train", "ssgd", "--set", "lr=-1"], "dmlcli: error: --set: invalid value for 'lr'"),
    (["train", "ssgd", "--set", "max_staleness=2"], "dmlcli: error: --set: unknown key 'max_staleness'"),
    (["train", "ssgd", "--data", "nowhere.svm"], "dmlcli: error: data file not found: nowhere.svm"),
    (["train", "ssgd", "--data", "iris"], "dmlcli: error: unknown data set 'iris'"),
    (["train", "ssgd", "--partition", "random"], "dmlcli: error: unknown partition scheme 'random'"),
    (["train", "ssgd", "--test-data", "t.csv", "--test-fraction", "0.1"], "give either --test-data or --test-fraction"),
    (["train", "ssgd", "--save-model", "w.txt"], "--save-model must name a .npy file"),
    (["train", "ssgd", "--out", "results.txt"], "--out must be a .csv file or a directory"),
    (["train", "ssgd", "--crash", "two"], "is not RANK@STEP"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_existing_output_is_refused_and_kept(capsys, tmp_path):
    target = tmp_path / "run.csv"
    target.write_text("precious\n")
    code, _, err = run_cli(capsys, "train", "ssgd", "--out", str(target))
    assert code == 2 and f"{target} exists; use --force" in err
    assert target.read_text() == "precious\n"


def test_recipe_keys_are_checked(capsys, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('rounds = 5\nlearning_rate = 0.1\n')
    code, _, err = run_cli(capsys, "train", "ssgd", "--recipe", str(recipe))
    assert code == 2 and f"recipe {recipe}: unknown key 'learning_rate'" in err
    recipe.write_text('algorithm = "asgd"\n')
    code, _, err = run_cli(capsys, "train", "ssgd", "--recipe", str(recipe))
    assert code == 2 and "is for 'asgd', not 'ssgd'" in err
    recipe.write_text('rounds = [\n')
    code, _, err = run_cli(capsys, "train", "ssgd", "--recipe", str(recipe))
    assert code == 2 and "is not valid TOML" in err


def test_flags_override_set_which_overrides_the_recipe(capsys, tmp_path, captured):
    recipe = tmp_path / "r.toml"
    recipe.write_text('algorithm = "asgd"\nrounds = 5\nlam = 0.5\nbatch-size = "all"\nmax_staleness = 3\n')
    code, _, err = run_cli(capsys, "train", "asgd", "--recipe", str(recipe), "--set", "rounds=6", "--set", "lam=0.25",
                           "--rounds", "7", "--set", "staleness_lr=inverse")
    assert code == 0, err
    config = captured["config"]
    assert (config.rounds, config.lam, config.batch_size) == (7, 0.25, None)
    assert config.params == {"staleness_lr": "inverse", "max_staleness": 3}
    assert config.lr is None  # auto


def test_explicit_workers_must_match_the_ranks_under_mpirun(capsys, captured):
    code, _, err = run_cli(capsys, "train", "ssgd", "--workers", "2")
    assert code == 2 and "--workers 2 needs 3 ranks, but mpirun started 5" in err
    code, _, _ = run_cli(capsys, "train", "ssgd", "--workers", "4")
    assert code == 0

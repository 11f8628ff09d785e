"""The command line without MPI: option resolution, help, and the one-line errors (exit 2)."""

import pytest

from dmlcli.algorithms import REGISTRY
from dmlcli.cli import main
from dmlcli.runtime import launch


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err



def test_list_names_every_algorithm(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    from dmlcli.algorithms import REGISTRY

    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == sorted(REGISTRY) and "synchronous SGD" in out


def test_help_shows_defaults_and_the_update_rule(capsys):
    code, out, _ = run_cli(capsys, "train", "asgd", "--help")
    assert code == 0
    assert "[default: 32]" in out and "--max-staleness" in out and "η_τ" in out


@pytest.mark.parametrize("args,message", [
    (["train", "sgdx"], f"dmlcli train: error: unknown algorithm 'sgdx'; choose from {', '.join(sorted(REGISTRY))}"),
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
    (["train", "ssgd", "--partition", "dirichlet:nan"], "bad partition scheme 'dirichlet:nan'"),
    (["train", "ssgd", "--partition", "dirichlet:"], "bad partition scheme 'dirichlet:'"),
    (["train", "ssgd", "--partition", "shuffle:2"], "unknown partition scheme 'shuffle:2'"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


HUGE = "99999999999999999999999"


@pytest.mark.parametrize("args,message", [
    # Non-finite numbers, which click's FloatRange lets through, from flags and --set alike.
    (["--lam", "nan"], "Invalid value for '--lam': nan is not a finite number"),
    (["--lam", "inf"], "Invalid value for '--lam': inf is not a finite number"),
    (["--lam", "1e999"], "Invalid value for '--lam': inf is not a finite number"),
    (["--l1-ratio", "nan"], "Invalid value for '--l1-ratio': nan is not a finite number"),
    (["--time-limit", "nan"], "Invalid value for '--time-limit': nan is not a finite number"),
    (["--time-limit", "inf"], "Invalid value for '--time-limit': inf is not a finite number"),
    (["--test-fraction", "nan"], "Invalid value for '--test-fraction': nan is not a finite number"),
    (["--max-model-mb", "nan"], "Invalid value for '--max-model-mb': nan is not a finite number"),
    (["--max-model-mb", "0"], "Invalid value for '--max-model-mb'"),
    (["--set", "lam=nan"], "dmlcli: error: --set: invalid value for 'lam': nan is not a finite number"),
    (["--set", "l1-ratio=-inf"], "dmlcli: error: --set: invalid value for 'l1-ratio'"),
    (["--set", "time_limit=inf"], "dmlcli: error: --set: invalid value for 'time_limit': inf is not a finite number"),
    (["--lr", "nan"], "Invalid value for '--lr': 'nan' is not a positive number or 'auto'"),
    (["--lr", "inf"], "Invalid value for '--lr': 'inf' is not a positive number or 'auto'"),
    (["--lr", "-1"], "Invalid value for '--lr': '-1' is not a positive number or 'auto'"),
    # Integers: whole, in range, and within 64 bits.
    (["--rounds", "1e99"], "Invalid value for '--rounds'"),
    (["--rounds", "2.5"], "Invalid value for '--rounds'"),
    (["--rounds", HUGE], f"Invalid value for '--rounds': {HUGE} does not fit in a 64-bit integer"),
    (["--seed", str(2**63)], f"Invalid value for '--seed': {2**63} does not fit in a 64-bit integer"),
    (["--set", f"rounds={HUGE}"], f"--set: invalid value for 'rounds': {HUGE} does not fit in a 64-bit integer"),
    (["--workers", "0"], "Invalid value for '--workers'"),
    (["--eval-every", "0"], "Invalid value for '--eval-every'"),
    (["--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["--batch-size", "-3"], "Invalid value for '--batch-size'"),
    (["--batch-size", "1.5"], "Invalid value for '--batch-size'"),
    (["--batch-size", HUGE], f"Invalid value for '--batch-size': {HUGE} does not fit in a 64-bit integer"),
    # --crash RANK@STEP, steps counting from 1.
    (["--crash", "1@"], "Invalid value for '--crash': '1@' is not RANK@STEP"),
    (["--crash", "@3"], "Invalid value for '--crash': '@3' is not RANK@STEP"),
    (["--crash", "1@2@3"], "Invalid value for '--crash': '1@2@3' is not RANK@STEP"),
    (["--crash", "-1@2"], "Invalid value for '--crash': '-1@2': RANK must be 0 or more and STEP 1 or more"),
    (["--crash", "1@0"], "Invalid value for '--crash': '1@0': RANK must be 0 or more and STEP 1 or more"),
    # --set: keys that are not options, empty values, an option given twice.
    (["--set", "recipe=r.toml"], "dmlcli: error: --set: unknown key 'recipe'"),
    (["--set", "set=x"], "dmlcli: error: --set: unknown key 'set'"),
    (["--set", "rounds="], "dmlcli: error: --set rounds= has no value; give one"),
    (["--set", "eval-every= "], "dmlcli: error: --set eval-every= has no value; give one (or none)"),
    (["--set", "rounds=none"], "dmlcli: error: --set: invalid value for 'rounds'"),
    (["--set", "rounds=5", "--set", "rounds=6"], "dmlcli: error: --set: 'rounds' is given twice; give it once"),
    (["--set", "batch-size=8", "--set", "batch_size=16"],
     "dmlcli: error: --set: 'batch-size' and 'batch_size' both give batch_size; give it once"),
    (["--recipe", ""], "dmlcli: error: --recipe needs a file name"),
])
def test_option_values_that_would_reach_the_run_are_refused(capsys, captured, args, message):
    code, out, err = run_cli(capsys, "train", "ssgd", *args)
    assert code == 2 and "config" not in captured, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--max-staleness", "nan"], "Invalid value for '--max-staleness'"),
    (["--max-staleness", HUGE], f"Invalid value for '--max-staleness': {HUGE} does not fit in a 64-bit integer"),
    (["--set", "max-staleness=1.5"], "--set: invalid value for 'max-staleness'"),
    (["--set", "staleness_lr=fast"], "--set: invalid value for 'staleness_lr'"),
])
def test_algorithm_parameters_are_checked_like_shared_options(capsys, captured, args, message):
    code, _, err = run_cli(capsys, "train", "asgd", *args)
    assert code == 2 and "config" not in captured
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_new_float_parameter_refuses_non_finite_values_without_asking(tmp_path):
    """An algorithm added later declares a Param; its flag, --set and recipe get the checks for free."""
    import click

    from dmlcli.algorithms.base import Param
    from dmlcli.cli.train import option_for
    from dmlcli.errors import UsageError
    from dmlcli.recipe import recipe_options, set_options

    params = {p.name: p for p in (Param("decay", float, 0.5, "a plain float"),
                                  Param("momentum", click.FloatRange(0, 1), 0.9, "a float range"),
                                  Param("clip", float, 1.0, "may be infinite", allow_non_finite=True))}
    command = click.Command("fake", params=[option_for(p) for p in params.values()], callback=lambda **kw: kw)
    for flag in ("--decay", "--momentum"):
        with pytest.raises(click.BadParameter, match="nan is not a finite number"):
            command.main([flag, "nan"], standalone_mode=False)
    assert command.main(["--clip", "inf"], standalone_mode=False)["clip"] == float("inf")
    with pytest.raises(UsageError, match="--set: invalid value for 'decay': -inf is not a finite number"):
        set_options(("decay=-inf",), params)
    recipe = tmp_path / "r.toml"
    recipe.write_text("momentum = nan\n")
    with pytest.raises(UsageError, match="invalid value for 'momentum': nan is not a finite number"):
        recipe_options(str(recipe), params, "fake")
    recipe.write_text("clip = inf\ndecay = 1\n")
    assert recipe_options(str(recipe), params, "fake") == {"clip": float("inf"), "decay": 1.0}


@pytest.mark.parametrize("variable", ["PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"])
def test_only_rank_0_reports_a_usage_error_under_mpirun(capsys, monkeypatch, variable):
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    for bad in (["--lam", "nan"], ["--set", "speed=3"], ["--bogus"]):
        monkeypatch.setenv(variable, "2")
        assert run_cli(capsys, "train", "ssgd", *bad) == (2, "", "")
        monkeypatch.setenv(variable, "0")
        code, _, err = run_cli(capsys, "train", "ssgd", *bad)
        assert code == 2 and err.startswith("dmlcli") and len(err.strip().splitlines()) == 1


def test_max_model_mb_is_a_shared_option(capsys, captured, tmp_path):
    code, out, _ = run_cli(capsys, "train", "ssgd", "--help")
    assert "--max-model-mb" in out and "[default: 256; x>0]" in " ".join(out.split())
    assert run_cli(capsys, "train", "ssgd")[0] == 0
    assert captured["config"].max_model_mb == 256.0
    assert run_cli(capsys, "train", "ssgd", "--max-model-mb", "0.5")[0] == 0
    assert captured["config"].max_model_mb == 0.5
    recipe = tmp_path / "r.toml"
    recipe.write_text("max-model-mb = 64\n")
    assert run_cli(capsys, "train", "asgd", "--recipe", str(recipe))[0] == 0
    assert captured["config"].max_model_mb == 64.0
    code, _, err = run_cli(capsys, "train", "ssgd", "--set", "max_model_mb=-1")
    assert code == 2 and "--set: invalid value for 'max_model_mb'" in err


def test_dmlcli_starts_at_most_1024_workers_itself(capsys, monkeypatch, tmp_path):
    launched = []
    monkeypatch.setattr(launch, "under_launcher", lambda: False)
    monkeypatch.setattr(launch, "relaunch", lambda args, ranks, blas_threads: launched.append(ranks) or 0)
    out = str(tmp_path / "run.csv")
    code, _, err = run_cli(capsys, "train", "ssgd", "--workers", "1025", "--out", out)
    assert code == 2 and launched == []
    assert "--workers 1025: dmlcli starts at most 1024 workers itself; start larger runs under mpirun or srun" in err
    assert run_cli(capsys, "train", "ssgd", "--workers", "1024", "--out", out)[0] == 0
    assert launched == [1025]


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


@pytest.mark.parametrize("text,message", [
    (b"rounds = 2.7\n", "'rounds' must be an integer, got a float (2.7)"),
    (b"rounds = true\n", "'rounds' must be an integer, got a boolean (true)"),
    (b'rounds = "5"\n', "'rounds' must be an integer, got a string (\"5\")"),
    (b"rounds = 99999999999999999999999\n", "'rounds': 99999999999999999999999 does not fit in a 64-bit integer"),
    (b"lam = nan\n", "invalid value for 'lam': nan is not a finite number"),
    (b"[rounds]\nn = 5\n", "'rounds' must be an integer, got a table"),
    (b"[ssgd]\nrounds = 5\n", "unknown key 'ssgd' (a [ssgd] table; a recipe gives options at its top level)"),
    (b"batch-size = 8\nbatch_size = 16\n", "'batch-size' and 'batch_size' both give batch_size; give it once"),
    (b"algorithm = 1\n", "'algorithm' must be a string, got an integer (1)"),
    (b'data = "caf\xe9"\n', "is not valid UTF-8 (line 1)"),
])
def test_recipe_values_are_checked_before_the_run(capsys, captured, tmp_path, text, message):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(text)
    code, _, err = run_cli(capsys, "train", "ssgd", "--recipe", str(recipe))
    assert code == 2 and "config" not in captured, err
    assert f"recipe {recipe}" in err and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_recipe_that_is_a_directory_is_refused(capsys, captured, tmp_path):
    code, _, err = run_cli(capsys, "train", "ssgd", "--recipe", str(tmp_path))
    assert code == 2 and str(tmp_path) in err and "is a directory" in err
    assert len(err.strip().splitlines()) == 1


def test_flags_override_set_which_overrides_the_recipe(capsys, tmp_path, captured):
    recipe = tmp_path / "r.toml"
    recipe.write_text('algorithm = "asgd"\nrounds = 5\nlam = 0.5\nbatch-size = "all"\nmax_staleness = 3\n')
    code, _, err = run_cli(capsys, "train", "asgd", "--recipe", str(recipe), "--set", "rounds=6", "--set", "lam=0.25",
                           "--rounds", "7", "--set", "staleness_lr=inverse")
    assert code == 0, err
    config = captured["config"]
    assert (config.rounds, config.lam, config.batch_size) == (7, 0.25, None)
    assert config.params == {"staleness_lr": "inverse", "max_staleness": 3, "push_every": 1, "pull_every": 1}
    assert config.lr is None  # auto


def test_explicit_workers_must_match_the_ranks_under_mpirun(capsys, captured):
    code, _, err = run_cli(capsys, "train", "ssgd", "--workers", "2")
    assert code == 2 and "--workers 2 needs 3 ranks, but mpirun started 5" in err
    code, _, _ = run_cli(capsys, "train", "ssgd", "--workers", "4")
    assert code == 0

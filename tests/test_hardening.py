"""Start-up hardening, in process: output names and paths, checks before anything is written,
sizes refused up front, standardisation whatever the units, the automatic step's limits, and
the asynchronous server's kept models bounded in memory."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import objectives
from dmlcli.errors import DataError, UsageError
from dmlcli.report import read_csv
from dmlcli.runtime import evaluate, setup
from dmlcli.runtime.local_run import run_local
from dmlcli.runtime.run import CollectiveUsageError


def write_csv_data(path, X, y):
    path.write_text("label," + ",".join(f"x{j}" for j in range(X.shape[1])) + "\n"
                    + "".join(f"{label:g}," + ",".join(repr(float(v)) for v in row) + "\n" for row, label in zip(X, y)))
    return str(path)


def separable(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.where(X @ np.arange(1.0, d + 1) + 0.3 * rng.standard_normal(n) > 0, 1.0, 0.0)
    return X, y


# --- output names ---------------------------------------------------------------------------

def test_runs_reserving_names_in_one_directory_at_once_all_get_their_own(config, tmp_path):
    run = config("ssgd", out=f"{tmp_path}/runs/")
    plan, _ = setup.plan_run(run, 2)
    taken, errors = [], []

    def reserve():
        try:
            taken.append(setup.reserve_outputs(run, plan))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=reserve) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({p.csv_path for p in taken}) == len({p.run_id for p in taken}) == 20
    assert sorted(os.listdir(tmp_path / "runs")) == sorted(f"{p.run_id}.csv" for p in taken)
    assert {p.manifest_path for p in taken} == {p.csv_path[:-4] + ".json" for p in taken}


def test_a_name_whose_manifest_exists_is_not_reused(config, tmp_path):
    run = config("ssgd", out=f"{tmp_path}/")
    plan, _ = setup.plan_run(run, 2)
    (tmp_path / f"{plan.run_id}.json").write_text("{}")  # a run that died before creating its CSV
    taken = setup.reserve_outputs(run, plan)
    assert taken.run_id == f"{plan.run_id}-2" and os.path.exists(taken.csv_path)


def test_a_named_csv_created_by_another_run_since_the_check_is_refused(config, tmp_path):
    run = config("ssgd", out=str(tmp_path / "mine.csv"))
    plan, _ = setup.plan_run(run, 2)
    (tmp_path / "mine.csv").write_text("theirs\n")
    with pytest.raises(UsageError, match="another run just created it"):
        setup.reserve_outputs(run, plan)
    assert (tmp_path / "mine.csv").read_text() == "theirs\n"


# --- output paths, checked before anything is written -------------------------------------------

@pytest.mark.parametrize("option,make_path,fragment", [
    ("out", lambda d: f"{d}/afile/run.csv", "is a file, not a directory"),
    ("out", lambda d: f"{d}/afile/deeper/", "is a file, not a directory"),
    ("save_model", lambda d: f"{d}/adir.npy", "is a directory"),
    ("save_model", lambda d: f"{d}/afile/w.npy", "--save-model"),
    ("save_model", lambda d: f"{d}/exists.npy", "--save-model .* exists; use --force to overwrite it or choose another --save-model"),
])
def test_impossible_outputs_are_refused_before_the_run(config, tmp_path, option, make_path, fragment):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.npy").mkdir()
    (tmp_path / "exists.npy").write_bytes(b"keep")
    with pytest.raises(UsageError, match=fragment):
        setup.precheck(config("ssgd", **{option: make_path(tmp_path)}))
    assert (tmp_path / "exists.npy").read_bytes() == b"keep"


def test_an_output_that_is_an_input_is_refused_even_with_force(config, tmp_path):
    data = write_csv_data(tmp_path / "data.csv", *separable())
    before = Path(data).read_text()
    os.symlink(data, tmp_path / "alias.csv")
    for out in (data, str(tmp_path / "alias.csv"), str(tmp_path / "." / "data.csv")):
        with pytest.raises(UsageError, match="is the --data file"):
            setup.precheck(config("ssgd", data=data, out=out, force=True))
    with pytest.raises(UsageError, match="is the --test-data file"):
        setup.precheck(config("ssgd", test_data=data, out=data, force=True))
    assert Path(data).read_text() == before


def test_save_model_into_a_missing_directory_is_created(config, tmp_path):
    run = config("ssgd", rounds=3, save_model=str(tmp_path / "new" / "dir" / "w.npy"))
    assert run_local(run, workers=2) == 0
    assert np.load(tmp_path / "new" / "dir" / "w.npy").shape == (31,)


def test_crash_on_a_rank_that_does_not_exist_is_refused(config):
    with pytest.raises(UsageError, match="there is no rank 9; this run has ranks 0-2"):
        setup.precheck(config("ssgd", crash=(9, 5), workers=2))
    with pytest.raises(CollectiveUsageError, match="there is no rank 3"):
        run_local(config("ssgd", crash=(3, 5)), workers=2)


# --- sizes refused up front ---------------------------------------------------------------------

def test_a_huge_synthetic_model_is_refused_before_anything_is_allocated(config):
    with pytest.raises(UsageError, match=r"100,000,000,001 parameters, 800,000 MB a copy.*--max-model-mb 1024"):
        setup.precheck(config("ssgd", data="synthetic:d=100000000000", max_model_mb=1024))


def test_dense_synthetic_data_larger_than_memory_is_refused(config):
    with pytest.raises(UsageError, match="dense rows of 5,000,000 features"):
        setup.precheck(config("ssgd", data="synthetic:n=100000,d=5000000", max_model_mb=1e6))


def test_one_large_libsvm_index_is_refused_with_the_size_and_the_override_admits_it(config, tmp_path):
    data = tmp_path / "wide.svm"
    data.write_text("1 1:0.5 3:1\n-1 2:0.25\n1 100000000:1\n-1 1:1\n")
    with pytest.raises(UsageError, match=r"100,000,001 parameters, 800 MB a copy"):
        setup.plan_run(config("ssgd", data=str(data), max_model_mb=100), 2)
    plan, _ = setup.plan_run(config("ssgd", data=str(data), max_model_mb=1000), 2)
    assert plan.d_model == 100_000_001


# --- standardisation and the automatic step -------------------------------------------------------

@pytest.mark.parametrize("magnitude", [1e200, 1e-200, 1e150])
def test_standardised_data_do_not_depend_on_a_columns_units(config, tmp_path, magnitude):
    X, y = separable()
    plain = write_csv_data(tmp_path / "plain.csv", X, y)
    X_scaled = X.copy()
    X_scaled[:, 1] *= magnitude
    scaled = write_csv_data(tmp_path / "scaled.csv", X_scaled, y)
    reference, rescaled = (setup.centralised_problem(config("ssgd", data=path))[1] for path in (plain, scaled))
    assert np.isfinite(rescaled).all()
    np.testing.assert_allclose(rescaled, reference, rtol=1e-9, atol=1e-12)
    runs = [config("ssgd", data=path, batch_size=None, rounds=50) for path in (plain, scaled)]
    for run in runs:
        assert run_local(run, workers=2) == 0
    np.testing.assert_allclose(objectives(runs[1].out), objectives(runs[0].out), rtol=1e-9)


def test_the_automatic_step_refuses_features_too_large_to_learn_from(config, tmp_path):
    X, y = separable()
    X[:, 1] *= 1e200
    data = write_csv_data(tmp_path / "huge.csv", X, y)
    run = config("ssgd", data=data, standardize=False)
    with pytest.raises(CollectiveUsageError, match="smoothness constant L is inf.*drop --no-standardize"):
        run_local(run, workers=2)
    assert not os.path.exists(run.out) and os.listdir(tmp_path) == ["huge.csv"]


def test_a_flat_objective_is_bad_input_not_a_division_by_zero(config, tmp_path):
    data = write_csv_data(tmp_path / "zeros.csv", np.zeros((40, 3)), np.arange(40) % 2)
    run = config("ssgd", data=data, lam=0.0, fit_intercept=False)
    with pytest.raises(CollectiveUsageError, match="the objective is flat"):
        run_local(run, workers=2)
    assert not os.path.exists(run.out)


# --- messages that say which data ---------------------------------------------------------------

def test_one_label_in_the_training_split_says_so(config, tmp_path):
    X, _ = separable(n=50)
    y = np.r_[np.zeros(49), 1.0]  # the single 1 may land in the test split
    data = write_csv_data(tmp_path / "one.csv", X, y)
    with pytest.raises(DataError, match=r"the training split of .*one.csv \(\d+ of its 50 rows; --test-fraction 0.5 held out\)"
                                        r": logistic loss needs exactly 2 distinct labels, these \d+ rows have 1"):
        for seed in range(20):
            setup.plan_run(config("ssgd", data=data, test_fraction=0.5, seed=seed), 2)


def test_an_unknown_test_label_names_the_test_file_and_row(config, tmp_path):
    X, y = separable()
    train = write_csv_data(tmp_path / "train.csv", X, y)
    y_test = y[:10].copy()
    y_test[6] = 5.0
    test = write_csv_data(tmp_path / "test.csv", X[:10], y_test)
    with pytest.raises(DataError, match=r"test.csv: row 7: label 5 is not one of the training labels \(0, 1\)"):
        setup.plan_run(config("ssgd", data=train, test_data=test), 2)


# --- the asynchronous server's kept models ------------------------------------------------------

def test_kept_models_spill_to_disk_and_read_back_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "KEPT_IN_MEMORY_BYTES", 10 * 5 * 8)
    kept = evaluate.KeptModels(5, str(tmp_path))
    models = np.random.default_rng(0).standard_normal((37, 5))
    for index, model in enumerate(models):
        kept.add(evaluate.Counters(round=index), model)
    assert kept._spill is not None and kept._in_memory == []
    assert os.listdir(tmp_path) == []  # an anonymous file: nothing to clean up if the run dies
    np.testing.assert_array_equal(kept.models(0, 37), models)
    np.testing.assert_array_equal(kept.models(12, 20), models[12:20])
    kept.add(evaluate.Counters(round=37), models[0])
    np.testing.assert_array_equal(kept.models(37, 38)[0], models[0])  # appended after a read
    kept.close()


def test_an_asgd_run_that_spills_writes_the_same_csv(config, monkeypatch):
    """One worker makes asgd sequential, so the CSV is deterministic: a run whose kept models go
    to disk writes the same CSV, and evaluating in smaller blocks changes only the last digits
    (a matrix product of another shape sums in another order)."""
    runs = [config("asgd", rounds=300, eval_every=1, batch_size=None) for _ in range(3)]
    assert run_local(runs[0], workers=1) == 0
    monkeypatch.setattr(evaluate, "KEPT_IN_MEMORY_BYTES", 31 * 8 * 16)
    assert run_local(runs[1], workers=1) == 0
    monkeypatch.setattr(evaluate, "EVALUATION_BLOCK_BYTES", 8 * 455 * 7)  # blocks of 7 models
    assert run_local(runs[2], workers=1) == 0
    first, spilled, blocked = (read_csv(run.out) for run in runs)
    assert len(first) == 301 and [row["round"] for row in blocked] == list(range(301))
    assert [row["objective"] for row in spilled] == [row["objective"] for row in first]
    np.testing.assert_allclose([row["objective"] for row in blocked], [row["objective"] for row in first], rtol=1e-14)


def test_evaluation_blocks_cover_every_model_once_within_the_bound():
    blocks = list(evaluate.evaluation_blocks(1000, d=50, rows=400_000))
    assert blocks[0] == (0, 5) and blocks[-1][1] == 1000
    assert all(stop - start <= 5 for start, stop in blocks)
    assert [start for start, _ in blocks[1:]] == [stop for _, stop in blocks[:-1]]

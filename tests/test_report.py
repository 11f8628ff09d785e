"""CSV log, manifest, progress and summary: what a user reads after (and during) a run."""

import io
import json
import math

import numpy as np
import pytest

from dmlcli.report import CsvLog, make_progress, print_summary, read_csv, write_manifest
from dmlcli.report.csvlog import BASE_COLUMNS


def test_csv_rows_are_on_disk_as_written_and_round_trip_exactly(tmp_path):
    path = tmp_path / "sub" / "run.csv"
    log = CsvLog(path, "run-1", "ssgd", extra_columns=("staleness_max",))
    log.write({"round": 3, "objective": 0.1 + 0.2, "wall_s": 1e-300, "staleness_max": np.int64(4),
               "test_loss": float("nan")})
    rows = read_csv(path)  # before close: flushed per row
    assert list(rows[0]) == [*BASE_COLUMNS, "staleness_max"]
    assert rows[0]["run_id"] == "run-1" and rows[0]["algorithm"] == "ssgd"
    assert rows[0]["objective"] == 0.1 + 0.2 and rows[0]["wall_s"] == 1e-300
    assert rows[0]["round"] == 3 and rows[0]["staleness_max"] == 4
    assert math.isnan(rows[0]["test_loss"]) and rows[0]["test_metric"] is None
    log.close()


def test_csv_refuses_unknown_columns_and_existing_files(tmp_path):
    path = tmp_path / "run.csv"
    with CsvLog(path, "r", "ssgd") as log, pytest.raises(ValueError, match="unknown CSV column 'speed'"):
        log.write({"speed": 1})
    with pytest.raises(FileExistsError):
        CsvLog(path, "r", "ssgd")
    CsvLog(path, "r", "asgd", overwrite=True).close()
    assert path.read_text().startswith("run_id,")


def test_manifest_is_written_whole_with_numpy_values(tmp_path):
    path = tmp_path / "run.json"
    write_manifest(path, {"lr": np.float64(0.5), "sizes": np.arange(3), "status": "running"})
    write_manifest(path, {"lr": np.float64(0.25), "status": "completed"})
    assert json.loads(path.read_text()) == {"lr": 0.25, "status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left behind


def test_plain_progress_is_rate_limited_and_shows_the_last_step():
    stream = io.StringIO()
    with make_progress("plain", 1000, None, "ssgd ×2", stream=stream) as progress:
        for step in range(1, 1001):
            progress.update(step, {"objective": 1.0 / step})
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= 4
    assert "round 1000/1000" in lines[-1] and "obj 0.001" in lines[-1]


def test_auto_progress_on_a_pipe_is_plain_and_off_is_silent(monkeypatch):
    monkeypatch.delenv("DMLCLI_STDOUT_TTY", raising=False)
    stream = io.StringIO()
    assert type(make_progress("auto", 10, None, "t", stream=stream)).__name__ == "PlainProgress"
    with make_progress("off", 10, None, "t", stream=stream) as progress:
        progress.update(10, {"objective": 1.0})
    assert stream.getvalue() == ""


def test_auto_progress_follows_the_launching_terminal(monkeypatch):
    monkeypatch.setenv("DMLCLI_STDOUT_TTY", "1")
    stream = io.StringIO()
    with make_progress("auto", 10, None, "asgd ×3", stream=stream) as progress:
        progress.update(10, {"objective": 0.5, "staleness_mean": 2.0})
    assert type(progress).__name__ == "RichProgress"
    assert "asgd ×3" in stream.getvalue() and "obj 0.5" in stream.getvalue()


def test_summary_lists_the_values_and_the_csv_path():
    stream = io.StringIO()
    print_summary([{"algorithm": "ssgd", "status": "completed", "round": 20, "objective": 0.123456789,
                    "test_metric": None, "csv": "runs/a.csv"}], stream=stream, rich_output=False)
    text = stream.getvalue()
    assert "ssgd" in text and "0.123457" in text and "csv: runs/a.csv" in text
    assert text.splitlines()[1].split()[-1] == "-"  # missing test_metric

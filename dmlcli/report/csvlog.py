"""The run's CSV: one row per evaluation point, flushed as written, every row carrying run_id
and algorithm so that files from many runs concatenate."""

from __future__ import annotations

import csv
import math
import os

BASE_COLUMNS = ("run_id", "algorithm", "round", "updates", "epochs", "wall_s", "eval_s",
                "bytes_sent", "messages", "objective", "train_loss", "test_loss", "test_metric")


def format_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) or hasattr(value, "dtype") and value.dtype.kind == "f":
        value = float(value)
        return "nan" if math.isnan(value) else repr(value)  # repr round-trips a float exactly
    if hasattr(value, "dtype"):
        return str(value.item())
    return str(value)


class CsvLog:
    def __init__(self, path, run_id: str, algorithm: str, extra_columns=(), overwrite: bool = False):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.columns = (*BASE_COLUMNS, *extra_columns)
        self._fixed = {"run_id": run_id, "algorithm": algorithm}
        self._file = open(path, "w" if overwrite else "x", newline="")  # noqa: SIM115 - open for the run
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)
        self._file.flush()

    @classmethod
    def reopen(cls, path, run_id: str, algorithm: str, extra_columns=(), after_round: int = 0) -> CsvLog:
        """The log of a resumed run: its rows up to round `after_round` kept, the later ones (written
        after the checkpoint, before the stop) dropped, and new rows appended."""
        log = cls.__new__(cls)
        log.path, log.columns = path, (*BASE_COLUMNS, *extra_columns)
        log._fixed = {"run_id": run_id, "algorithm": algorithm}
        with open(path, newline="") as handle:
            lines = list(csv.reader(handle))
        if not lines or tuple(lines[0]) != log.columns:
            raise ValueError(f"{path}: its columns are not this run's; it cannot be resumed into")
        at = log.columns.index("round")
        kept = [lines[0], *(line for line in lines[1:] if int(line[at]) <= after_round)]
        temporary = f"{path}.resume"
        with open(temporary, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
        os.replace(temporary, path)
        log._file = open(path, "a", newline="")  # noqa: SIM115 - open for the run
        log._writer = csv.writer(log._file)
        return log

    def write(self, row: dict) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown CSV column {sorted(unknown)[0]!r}; columns are {', '.join(self.columns)}")
        values = {**row, **self._fixed}
        self._writer.writerow([format_value(values.get(column)) for column in self.columns])
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_value(text: str):
    """A CSV cell as written by format_value: int where integral text, float otherwise, '' as None."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path) -> list[dict]:
    """Rows of a dmlcli CSV with numbers parsed (see parse_value)."""
    with open(path, newline="") as handle:
        return [{key: parse_value(value) for key, value in row.items()} for row in csv.DictReader(handle)]

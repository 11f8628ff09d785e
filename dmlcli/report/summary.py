"""The table printed at the end of a run."""

from __future__ import annotations

import sys

from dmlcli.report.progress import _is_terminal

COLUMNS = ("algorithm", "status", "round", "updates", "epochs", "wall_s", "objective", "test_loss", "test_metric")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def print_summary(rows: list[dict], stream=None, rich_output: bool | None = None) -> None:
    stream = stream or sys.stdout
    rich_output = _is_terminal(stream) if rich_output is None else rich_output
    cells = [[_cell(row.get(column)) for column in COLUMNS] for row in rows]
    if rich_output:
        from rich.console import Console
        from rich.table import Table

        table = Table(*COLUMNS, title="dmlcli run")
        for line in cells:
            table.add_row(*line)
        Console(file=stream, force_terminal=True).print(table)
    else:
        widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(COLUMNS)]
        print("  ".join(column.ljust(width) for column, width in zip(COLUMNS, widths)), file=stream)
        for line in cells:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)), file=stream)
    for row in rows:
        if row.get("csv"):
            print(f"csv: {row['csv']}", file=stream)
    stream.flush()

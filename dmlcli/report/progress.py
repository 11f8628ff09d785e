"""Progress on rank 0: a rich bar on a terminal, plain lines (at most one a second) otherwise.

update() is called every round from hot loops, so it only renders when enough time has passed.
"""

from __future__ import annotations

import os
import sys
import time

PLAIN_INTERVAL_S = 1.0
RICH_INTERVAL_S = 0.1


def _is_terminal(stream) -> bool:
    # Under mpiexec rank 0's stdout is a pipe; the launching process tells us whether it was a terminal.
    told = os.environ.get("DMLCLI_STDOUT_TTY")
    if told is not None:
        return told == "1"
    return hasattr(stream, "isatty") and stream.isatty()


def _format_metrics(metrics: dict) -> str:
    short = {"objective": "obj", "test_metric": "test", "epochs": "ep", "wall_s": "wall", "staleness_mean": "stale"}
    parts = []
    for key, value in metrics.items():
        label = short.get(key, key)
        parts.append(f"{label} {value:.6g}" if isinstance(value, float) else f"{label} {value}")
    return "  ".join(parts)


class Progress:
    """The silent kind (--progress off); the others override render()."""

    interval_s = 0.0

    def __init__(self, total: int | None, time_limit: float | None, title: str, stream):
        self.total, self.time_limit, self.title, self.stream = total, time_limit, title, stream
        self._next_render = 0.0
        self._last: tuple[int, dict] | None = None

    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        if self._last is not None:
            self.render(*self._last, final=True)
        self.close()

    def update(self, step: int, metrics: dict) -> None:
        self._last = (step, metrics)
        now = time.monotonic()
        if now >= self._next_render:
            self._next_render = now + self.interval_s
            self.render(step, metrics, final=False)

    def render(self, step: int, metrics: dict, final: bool) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress(Progress):
    interval_s = PLAIN_INTERVAL_S

    def render(self, step, metrics, final):
        of = f"/{self.total}" if self.total else ""
        elapsed = time.monotonic() - self.start
        print(f"{self.title}  round {step}{of}  {_format_metrics(metrics)}  [{elapsed:.1f}s]", file=self.stream,
              flush=True)

    def log(self, message):
        print(message, file=self.stream, flush=True)


class RichProgress(Progress):
    interval_s = RICH_INTERVAL_S

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        console = Console(file=self.stream, force_terminal=True)
        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                       console=console, refresh_per_second=10)
        self.bar.start()
        self.task = self.bar.add_task(self.title, total=self.total, metrics="")
        return super().__enter__()

    def render(self, step, metrics, final):
        self.bar.update(self.task, completed=step, metrics=_format_metrics(metrics))

    def log(self, message):
        self.bar.console.print(message)

    def close(self):
        self.bar.stop()


def make_progress(mode: str, total: int | None, time_limit: float | None, title: str, stream=None) -> Progress:
    stream = stream or sys.stdout
    if mode == "auto":
        mode = "rich" if _is_terminal(stream) else "plain"
    kind = {"rich": RichProgress, "plain": PlainProgress, "off": Progress}[mode]
    return kind(total, time_limit, title, stream)

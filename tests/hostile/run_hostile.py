"""`make hostile`: hostile inputs against the real `dmlcli` command line, judged against the README's contract.

Each case (tests/hostile/cases.py) builds its input files in a fresh temporary directory, runs
`dmlcli ARGS` there (cwd = that directory, so even a default `runs/` would land in it) with a
timeout, and is judged:

- exit 2 (bad input): exactly one line on stderr, starting with `dmlcli`, no traceback, and
  nothing written: no new file or directory anywhere in the case's directory and every file that
  was there before byte-identical;
- exit 0 (a run): a CSV and its JSON manifest with status "completed" and a finite objective in
  the last row, the inputs unchanged;
- exit 1 (a crash injected with --crash): exactly one stderr line `dmlcli: rank R failed: ...`,
  and a manifest, if there is one, that does not say "running" or "completed";
- every case: no `Traceback`, no timeout, no process left behind, plus the case's own checks
  (message fragments, time limits, results compared with a reference run).

Prints a table and a summary line, writes the table as markdown (default runs/hostile.md) and
exits 1 if any case is a DEFECT. Not collected by pytest (no test_ prefix).

    python tests/hostile/run_hostile.py [-j N] [--only PATTERN] [--list] [--keep] [--bin PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import cases as hostile_cases  # noqa: E402  (a sibling module, found through the path above)
from cases import DIR, Case, Fifo, Hardlink, Npz, Run, Symlink  # noqa: E402

TIMEOUT_S = 60.0
DETAIL_WIDTH = 110  # characters of the detail column kept in the table
MARKER = "DMLCLI_HOSTILE_CASE"  # in every case's environment, to find processes a case left behind
# Options every `train` case gets unless it gives them itself (or a recipe / --set names the key).
DEFAULT_OPTIONS = (("--workers", "1"), ("--rounds", "5"), ("--progress", "off"), ("--out", "run.csv"))


# ----------------------------------------------------------------------------------------------
# Building a case's directory and taking its inventory
# ----------------------------------------------------------------------------------------------

def build(directory: Path, files: dict, setup) -> None:
    """Create the case's inputs in `directory` (in the dict's order), then run its setup hook."""
    for relative, content in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir(exist_ok=True)
        elif isinstance(content, Symlink):
            os.symlink(content.target, path)
        elif isinstance(content, Hardlink):
            os.link(directory / content.target, path)
        elif isinstance(content, Fifo):
            os.mkfifo(path)
        elif isinstance(content, Npz):
            path.write_bytes(content.build())
        elif isinstance(content, str):
            path.write_bytes(content.encode("utf-8"))
        elif isinstance(content, bytes | bytearray):
            path.write_bytes(bytes(content))
        elif callable(content):
            path.write_bytes(content())
        else:
            raise TypeError(f"{relative}: cannot build a {type(content).__name__}")
    if setup is not None:
        setup(directory)


def inventory(directory: Path) -> dict[str, tuple]:
    """{relative path: (kind, digest)} of everything under `directory`; links are not followed."""
    found = {}
    for base, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = Path(base) / name
            relative = str(path.relative_to(directory))
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", None)
            elif stat.S_ISREG(info.st_mode):
                found[relative] = ("file", _digest(path))
            else:
                found[relative] = ("other", stat.S_IFMT(info.st_mode))
    return found


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    except OSError as error:
        return f"unreadable: {error.strerror}"
    return hasher.hexdigest()


def make_writable(directory: Path) -> None:
    """Undo a case's chmod so its directory can be inspected and removed."""
    for base, dirs, _ in os.walk(directory):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(Path(base) / name, 0o755)
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o755)


# ----------------------------------------------------------------------------------------------
# Running one command
# ----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one `dmlcli` process did."""

    args: list[str]
    directory: Path
    code: int | None  # None: timed out
    stdout: str
    stderr: str
    seconds: float
    created: list[str] = field(default_factory=list)  # new paths (not inputs)
    changed: list[str] = field(default_factory=list)  # inputs whose content or kind changed
    removed: list[str] = field(default_factory=list)  # inputs that disappeared
    leftovers: list[int] = field(default_factory=list)  # pids still running with the case's marker

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()

    @property
    def written(self) -> int:
        return len(self.created) + len(self.changed) + len(self.removed)

    def csv_files(self) -> list[Path]:
        return sorted(self.directory / p for p in self.created + self.changed if p.endswith(".csv"))

    def read_csv(self, path: Path | None = None) -> list[dict]:
        path = path or self.csv_files()[0]
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def manifest(self, csv_path: Path | None = None) -> dict:
        csv_path = csv_path or self.csv_files()[0]
        with open(csv_path.with_suffix(".json")) as handle:
            return json.load(handle)


def child_environment(marker: str, temporary: Path) -> dict:
    """The user's environment without any MPI launcher's variables (dmlcli must launch MPI itself),
    with a temporary directory of the case's own (a killed launcher's leftovers go with the scratch)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_"))}
    env.pop("DMLCLI_LAUNCH_DIR", None)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env[MARKER] = marker
    env["TMPDIR"] = str(temporary)
    return env


def marked_processes(marker: str) -> list[int]:
    """Pids of running processes whose environment carries this case's marker (its descendants)."""
    wanted = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat") as status:
                        if status.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(entry))
        except OSError:
            continue
    return pids


def kill_all(process: subprocess.Popen, marker: str) -> None:
    """SIGKILL the case's process group and every process carrying its marker (mpiexec has a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in marked_processes(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def execute(command: list[str], args: list[str], directory: Path, temporary: Path, marker: str, timeout: float) -> Outcome:
    """Run `command + args` in `directory` and record what it did to the directory."""
    before = inventory(directory)
    start = time.monotonic()
    process = subprocess.Popen(command + args, cwd=directory, env=child_environment(marker, temporary), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        kill_all(process, marker)
        out, err = process.communicate()
        code = None
    seconds = time.monotonic() - start
    leftovers = []
    deadline = time.monotonic() + 2.0  # ranks may take a moment to go after the launcher has returned
    while (leftovers := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if leftovers:
        kill_all(process, marker)
    make_writable(directory)
    after = inventory(directory)
    outcome = Outcome(args, directory, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), seconds,
                      leftovers=leftovers)
    outcome.created = sorted(set(after) - set(before))
    outcome.removed = sorted(set(before) - set(after))
    outcome.changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return outcome


def with_defaults(args: list[str], files: dict) -> list[str]:
    """A `train` command gets the quick defaults (1 worker, 5 rounds, no progress, --out run.csv)
    unless it gives the option itself or a recipe or --set names the key."""
    if args[:1] != ["train"]:
        return list(args)
    named = set()
    for position, arg in enumerate(args):
        if arg == "--set" and position + 1 < len(args):
            named.add(args[position + 1].partition("=")[0].strip().replace("_", "-"))
    for relative, content in files.items():
        if relative.endswith(".toml") and isinstance(content, str | bytes):
            text = content if isinstance(content, str) else content.decode("utf-8", "replace")
            named.update(m.replace("_", "-") for m in re.findall(r"^\s*([A-Za-z_-]+)\s*=", text, re.MULTILINE))
    extra = []
    for option, value in DEFAULT_OPTIONS:
        if option in args or option[2:] in named or any(a.startswith(option + "=") for a in args):
            continue
        extra += [option, value]
    # Right after `train ALGO`, so that a case's own last option (even one missing its value) stays last.
    return list(args[:2]) + extra + list(args[2:])


# ----------------------------------------------------------------------------------------------
# Judging
# ----------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    case: Case
    verdict: str  # clean, DEFECT, skip
    problems: list[str]
    outcome: Outcome | None = None
    reference: Outcome | None = None

    @property
    def detail(self) -> str:
        return "; ".join(self.problems)


def first_line(text: str, width: int = 90) -> str:
    line = next((line for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= width else line[: width - 3] + "..."


def judge_bad_input(outcome: Outcome) -> list[str]:
    problems = []
    lines = outcome.stderr_lines
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1 (first: {first_line(outcome.stderr)!r})")
    elif not lines[0].startswith("dmlcli"):
        problems.append(f"stderr line does not start with 'dmlcli': {first_line(lines[0])!r}")
    if lines and "Usage:" in outcome.stderr:
        problems.append("click usage block on stderr")
    problems += judge_nothing_written(outcome)
    return problems


def judge_nothing_written(outcome: Outcome) -> list[str]:
    problems = []
    if outcome.created:
        problems.append(f"wrote {_listed(outcome.created)}")
    if outcome.changed:
        problems.append(f"changed {_listed(outcome.changed)}")
    if outcome.removed:
        problems.append(f"removed {_listed(outcome.removed)}")
    return problems


def _listed(paths: list[str], most: int = 3) -> str:
    shown = ", ".join(paths[:most])
    return shown + (f" (+{len(paths) - most} more)" if len(paths) > most else "")


def judge_success(outcome: Outcome, case: Case) -> list[str]:
    problems = []
    changed = [p for p in outcome.changed if p not in case.may_change]
    if changed:
        problems.append(f"changed input {_listed(changed)}")
    if outcome.removed:
        problems.append(f"removed {_listed(outcome.removed)}")
    csv_files = outcome.csv_files()
    if len(csv_files) != 1:
        problems.append(f"{len(csv_files)} CSV files written, expected 1")
        return problems
    try:
        rows = outcome.read_csv(csv_files[0])
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        return problems + [f"CSV unreadable: {error}"]
    if not rows:
        problems.append("CSV has no rows")
    else:
        try:
            objective = float(rows[-1]["objective"])
        except (KeyError, TypeError, ValueError):
            objective = math.nan
        if not math.isfinite(objective):
            problems.append(f"last objective is {rows[-1].get('objective')!r}, not finite")
    try:
        status = outcome.manifest(csv_files[0]).get("status")
    except (OSError, ValueError) as error:
        return problems + [f"no readable manifest beside the CSV ({type(error).__name__})"]
    if status != "completed":
        problems.append(f"manifest status {status!r}, expected 'completed'")
    return problems


def judge_crash(outcome: Outcome, case: Case) -> list[str]:
    problems = []
    lines = outcome.stderr_lines
    pattern = rf"dmlcli: rank {case.crash_rank} failed: " if case.crash_rank is not None else r"dmlcli: rank \d+ failed: "
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1 (first: {first_line(outcome.stderr)!r})")
    if not any(re.match(pattern, line) for line in lines):
        problems.append(f"no stderr line matching {pattern!r}")
    for csv_path in outcome.csv_files():
        with contextlib.suppress(OSError, ValueError):
            status = outcome.manifest(csv_path).get("status")
            if status in ("running", "completed"):
                problems.append(f"manifest status {status!r} after a failed rank")
    return problems


def judge(case: Case, outcome: Outcome, reference: Outcome | None) -> list[str]:
    expected = case.expected_codes
    problems = []
    if outcome.code is None:
        problems.append(f"TIMEOUT after {outcome.seconds:.0f} s (killed)")
    elif outcome.code not in expected:
        problems.append(f"exit {outcome.code}, expected {' or '.join(map(str, expected))}"
                        + (f": {first_line(outcome.stderr)!r}" if outcome.stderr.strip() else ""))
    if "Traceback" in outcome.stderr or "Traceback" in outcome.stdout:
        problems.append("Traceback in output")
    if outcome.leftovers:
        problems.append(f"{len(outcome.leftovers)} process(es) left running (killed)")
    if outcome.code in expected:
        if outcome.code == 2:
            problems += judge_bad_input(outcome)
        elif outcome.code == 0:
            problems += judge_success(outcome, case)
        elif outcome.code == 1:
            problems += judge_crash(outcome, case)
        missing = [_shown(f) for f in case.stderr if not _mentions(outcome.stderr, f)]
        if missing:
            problems.append(f"stderr lacks {', '.join(missing)}: {first_line(outcome.stderr)!r}")
        if case.max_stderr_chars is not None and len(outcome.stderr.rstrip("\n")) >= case.max_stderr_chars:
            problems.append(f"stderr is {len(outcome.stderr.rstrip())} characters, expected < {case.max_stderr_chars}")
    if case.max_seconds is not None and outcome.seconds >= case.max_seconds:
        problems.append(f"took {outcome.seconds:.1f} s, expected < {case.max_seconds:g} s")
    if reference is not None and reference.code != 0:
        problems.append(f"reference run exit {reference.code}: {first_line(reference.stderr)!r}")
    elif case.check is not None and outcome.code in expected and not problems:
        try:
            problems += case.check(outcome, reference) if reference is not None else case.check(outcome)
        except Exception as error:  # noqa: BLE001 - a check that cannot read the result is a failed expectation
            problems.append(f"check could not read the result: {type(error).__name__}: {error}")
    return problems


def _mentions(text: str, fragment) -> bool:
    options = fragment if isinstance(fragment, tuple) else (fragment,)
    return any(option.lower() in text.lower() for option in options)


def _shown(fragment) -> str:
    return " or ".join(repr(f) for f in fragment) if isinstance(fragment, tuple) else repr(fragment)


def run_case(case: Case, command: list[str], scratch: Path, timeout: float, keep: bool) -> Verdict:
    if case.root_skip and os.geteuid() == 0:
        return Verdict(case, "skip", [f"skipped as root: {case.root_skip}"])
    directories = []
    try:
        reference = None
        if case.reference is not None:
            reference = _run_in_fresh_directory(case.name + ".ref", case.reference, command, scratch, timeout, directories)
        outcome = _run_in_fresh_directory(case.name, Run(case.args, case.files, case.setup), command, scratch, timeout,
                                          directories)
        problems = judge(case, outcome, reference)
        return Verdict(case, "DEFECT" if problems else "clean", problems, outcome, reference)
    except Exception as error:  # noqa: BLE001 - the harness failing on a case must show, not stop the suite
        return Verdict(case, "DEFECT", [f"HARNESS ERROR {type(error).__name__}: {error}"])
    finally:
        if not keep:
            for directory in directories:
                make_writable(directory)
                shutil.rmtree(directory, ignore_errors=True)


def _run_in_fresh_directory(name, run: Run, command, scratch: Path, timeout, directories) -> Outcome:
    directory = Path(tempfile.mkdtemp(prefix=_safe(name) + "-", dir=scratch))
    directories.append(directory)
    if any(directory.iterdir()):
        raise RuntimeError(f"{directory} is not fresh")
    build(directory, run.files, run.setup)
    temporary = Path(tempfile.mkdtemp(prefix=_safe(name) + ".tmp-", dir=scratch))
    directories.append(temporary)
    marker = f"{os.getpid()}-{directory.name}"
    return execute(command, with_defaults(list(run.args), run.files), directory, temporary, marker, timeout)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------

HEADINGS = ("case", "exit", "stderr", "files", "secs", "verdict", "detail")


def row_of(result: Verdict) -> tuple[str, ...]:
    outcome = result.outcome
    expected = ",".join(map(str, result.case.expected_codes))
    if outcome is None:
        code, lines, written, seconds = f"-/{expected}", "-", "-", "-"
    else:
        code = f"{'T/O' if outcome.code is None else outcome.code}/{expected}"
        lines, written, seconds = str(len(outcome.stderr_lines)), str(outcome.written), f"{outcome.seconds:.1f}"
    detail = result.detail or (result.case.note if result.verdict == "clean" else "")
    if len(detail) > DETAIL_WIDTH:
        detail = detail[: DETAIL_WIDTH - 3] + "..."
    return result.case.name, code, lines, written, seconds, result.verdict, detail


def print_table(rows: list[tuple[str, ...]], stream) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADINGS)]
    widths[-1] = len(HEADINGS[-1])  # the last column is not padded
    print("  ".join(h.ljust(w) for h, w in zip(HEADINGS, widths)).rstrip(), file=stream)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=stream)


def markdown(rows: list[tuple[str, ...]], summary: str, command: list[str]) -> str:
    out = io.StringIO()
    out.write("# Hostile-input suite\n\n")
    out.write(f"`{' '.join(command)}`, {time.strftime('%Y-%m-%d %H:%M:%S')}. ")
    out.write("exit: got/expected (T/O: timed out); stderr: lines on stderr; files: paths created, changed or removed "
              "in the case's directory; skip: a permission case that cannot bite when run as root.\n\n")
    out.write("| " + " | ".join(HEADINGS) + " |\n")
    out.write("|---|---|---:|---:|---:|---|---|\n")
    for row in rows:
        out.write("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |\n")
    out.write(f"\n{summary}\n")
    return out.getvalue()


def summary_line(results: list[Verdict], seconds: float) -> str:
    clean = sum(r.verdict == "clean" for r in results)
    defects = sum(r.verdict == "DEFECT" for r in results)
    skipped = sum(r.verdict == "skip" for r in results)
    line = f"hostile: {len(results)} cases, {clean} clean, {defects} defects"
    if skipped:
        line += f", {skipped} skipped"
    return line + f" in {seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-j", "--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--only", metavar="PATTERN", action="append",
                        help="run the cases whose name contains PATTERN or matches it as a glob (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", default=str(ROOT / "runs" / "hostile.md"), help="markdown table (default runs/hostile.md)")
    parser.add_argument("--bin", default=str(Path(sys.executable).parent / "dmlcli"), help="the dmlcli command to test")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds before a case is killed (default 60)")
    parser.add_argument("--keep", action="store_true", help="keep the cases' directories (printed at the end)")
    args = parser.parse_args(argv)

    all_cases = hostile_cases.CASES
    names = [case.name for case in all_cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        parser.error(f"duplicate case names: {', '.join(duplicates)}")
    selected = [c for c in all_cases if not args.only or any(p in c.name or fnmatch.fnmatch(c.name, p) for p in args.only)]
    if args.list:
        width = max(len(c.name) for c in selected) if selected else 0
        for case in selected:
            print(f"{case.name:<{width}}  expect {','.join(map(str, case.expected_codes)):<4} {' '.join(case.args)}")
        print(f"{len(selected)} cases")
        return 0
    if not selected:
        parser.error("no case matches --only")
    command = [args.bin]
    if not os.access(args.bin, os.X_OK):
        parser.error(f"{args.bin} is not an executable; run `make install` or give --bin")

    scratch = Path(tempfile.mkdtemp(prefix="dmlcli-hostile-"))
    start = time.monotonic()
    results: list[Verdict | None] = [None] * len(selected)
    print(f"hostile: running {len(selected)} cases, {args.jobs} at a time, against {args.bin}", flush=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_case, case, command, scratch, args.timeout, args.keep): position
                       for position, case in enumerate(selected)}
            for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                result = future.result()
                results[futures[future]] = result
                mark = {"clean": ".", "DEFECT": "D", "skip": "s"}[result.verdict]
                print(f"  [{done:>3}/{len(selected)}] {mark} {result.case.name}", flush=True)
    except KeyboardInterrupt:
        print("hostile: interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            make_writable(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - start
    done_results = [r for r in results if r is not None]
    rows = [row_of(r) for r in done_results]
    summary = summary_line(done_results, seconds)
    print()
    print_table(rows, sys.stdout)
    print()
    print(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, summary, [Path(sys.executable).name, "tests/hostile/run_hostile.py", *(argv or sys.argv[1:])]))
    print(f"table: {out}")
    if args.keep:
        print(f"case directories kept under {scratch}")
    return 1 if any(r.verdict == "DEFECT" for r in done_results) else 0


if __name__ == "__main__":
    sys.exit(main())

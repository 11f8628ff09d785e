"""Getting onto MPI ranks: re-executing under the installed mpiexec when started alone, and
turning any rank's failure into one clear message and an abort of every rank.

The launching process stands between the user (a terminal, a batch system, a supervisor) and
mpiexec, and owns three things:
- Signals. mpiexec runs in a session of its own, so a signal to the user's process group
  reaches the launcher alone, and the launcher hands every SIGINT, SIGTERM and SIGHUP straight
  to rank 0 (whose pid the ranks leave in the launch directory). Hydra's own forwarding is not
  used: it copes with one signal, but a second one within moments (a terminal's Ctrl-C plus a
  forwarding `timeout`) made it exit 255 with assertion lines and could lose the last CSV row.
  Rank 0 treats the first signal as a graceful stop and one more a second later as "stop now".
  A signal that arrives before rank 0 is up waits for it. If the launcher itself is killed,
  the kernel sends mpiexec SIGTERM (PR_SET_PDEATHSIG), so no rank is left behind as an orphan.
- Output. Ranks' stderr is passed on line by line without MPICH's repeat of an abort; mpiexec's
  "BAD TERMINATION" banner (a rank killed by a signal) becomes one line naming the rank.
- The manifest of a run that ended without rank 0 writing its end (a rank killed or aborted):
  it is marked `failed` with the reason, so it never stays `running`.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from dmlcli.errors import UsageError

# Variables that MPI launchers set in each rank (MPICH/Hydra, Open MPI, MVAPICH; Slurm's srun through
# PMI or PMIx). Slurm's own SLURM_* are not among them: a batch script has them without any launcher.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
LAUNCH_DIR_VARIABLE = "DMLCLI_LAUNCH_DIR"  # where ranks leave their pids and rank 0 its manifest path
ABORT_GRACE_S = 0.3  # see rank_main
FORWARDED_SIGNALS = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}
# Failure exits that rank 0 reports itself (see README, exit codes); anything else is the launcher's to explain.
REPORTED_EXITS = (0, 1, 2, 3, 130, 143)
PR_SET_PDEATHSIG = 1
# MPICH repeats the failing rank's abort in its own words; the rank already said what went wrong.
MPICH_ABORT_LINE = re.compile(r"^Abort\(\d+\) on node \d+.*MPI_Abort|^application called MPI_Abort")
BANNER_RULE = "=" * 20
BANNER_PID = re.compile(r"PID (\d+) RUNNING AT")
BANNER_EXIT_CODE = re.compile(r"EXIT CODE: (\d+)")
MPIEXEC_PREFIX = "[mpiexec@"
EXIT_CODES_LINE = re.compile(r"^\[mpiexec@[^\]]*\] Exit codes: \[[^\]]*\] ([\d,]*)\n?", re.MULTILINE)


def under_launcher() -> bool:
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def refuse_srun_without_pmi() -> None:
    """srun started several tasks but gave them no PMI (a site default of --mpi=none): each would think
    itself alone and start an mpiexec of its own, which inside a job waits on srun for busy nodes."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")  # set by srun for its tasks, not by sbatch
    if tasks.isdigit() and int(tasks) > 1:
        raise UsageError(f"srun started {tasks} tasks without PMI, so each would run alone; use "
                         "srun --mpi=pmi2 (or pmix; see srun --mpi=list), or mpirun inside the job")


def launcher_rank() -> int | None:
    """This process's rank as the MPI launcher set it in the environment, before MPI starts; None alone."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def find_mpiexec() -> str:
    """The mpiexec beside this Python (the `mpich` wheel puts it there), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if not found:
        raise UsageError("no mpiexec found: install the MPI extra (pip install 'dmlcli[mpi]') "
                         "or start dmlcli under your MPI's mpirun")
    return found


def relaunch(args: list[str], ranks: int, blas_threads: int) -> int:
    """Run `python -m dmlcli ARGS` on `ranks` ranks under mpiexec; return the run's exit code."""
    mpiexec = find_mpiexec()
    command = [mpiexec, "-n", str(ranks)]
    kind = _mpiexec_kind(mpiexec)
    if kind == "open-mpi":
        command.append("--oversubscribe")  # more ranks than cores is the normal case on a laptop
    elif kind == "hydra":
        command.append("-print-all-exitcodes")  # the banner's PID is not always the rank that died
    command += [sys.executable, "-m", "dmlcli", *args]
    from dmlcli.runtime.resources import COMMAND_STARTED_VARIABLE, process_started_at

    env = dict(os.environ, DMLCLI_STDOUT_TTY="1" if sys.stdout.isatty() else "0")
    env.setdefault(COMMAND_STARTED_VARIABLE, str(process_started_at() or time.time()))
    for name in THREAD_VARIABLES:
        env.setdefault(name, str(blas_threads))
    if sys.stdout.isatty():
        env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    with tempfile.TemporaryDirectory(prefix="dmlcli-launch-") as launch_dir:
        env[LAUNCH_DIR_VARIABLE] = launch_dir
        return Launch(command, env, launch_dir, ranks).run()


class Launch:
    """One mpiexec child: its signals, its output and its end (see the module docstring)."""

    POLL_S = 0.05

    def __init__(self, command: list[str], env: dict, launch_dir: str, ranks: int = 0):
        self.command, self.env, self.launch_dir, self.ranks = command, env, launch_dir, ranks
        self.first_to_end: int | None = None  # the rank that ended first (a killed rank is first, then the clean-up)
        self.pending: list[int] = []  # signals received and not yet handed to rank 0
        self.delivered: int | None = None  # the last signal handed to rank 0, and when
        self.delivered_at = -float("inf")
        self.banner = ""  # mpiexec's report of a rank that ended badly
        self.exit_codes: list[int] = []  # per rank, in rank order, where mpiexec tells them (one host)
        self.rank_failure: str | None = None  # a rank's own "dmlcli: rank N failed: ..." line

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._receive) for signum in FORWARDED_SIGNALS}
        try:
            process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True, preexec_fn=_end_with_parent)
            relays = [threading.Thread(target=self._relay_stdout, args=(_reads(process.stdout),), daemon=True),
                      threading.Thread(target=self._relay_stderr, args=(process.stderr,), daemon=True),
                      threading.Thread(target=self._watch_ranks, args=(process,), daemon=True)]
            for relay in relays:
                relay.start()
            while process.poll() is None:
                self._deliver()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(self.POLL_S)
            for relay in relays:
                relay.join(timeout=5)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self._conclude(process.returncode)

    def _watch_ranks(self, process) -> None:
        """Note which rank ends first. mpiexec kills the others as soon as one dies, often with the
        same signal, and neither its banner nor its exit codes then say reliably which was first;
        a pidfd per rank wakes this thread the moment its process ends (Linux 5.3+)."""
        if not hasattr(os, "pidfd_open"):
            return
        handles: dict[int, int] = {}
        try:
            while process.poll() is None and self.first_to_end is None:
                for rank, pid in self._pids().items():
                    if rank not in handles:
                        try:
                            handles[rank] = os.pidfd_open(pid)
                        except OSError:  # already gone, before we could watch it
                            self.first_to_end = rank
                ended, _, _ = select.select(list(handles.values()), [], [], 0 if len(handles) < self.ranks else 0.5)
                if ended and self.first_to_end is None:
                    self.first_to_end = min(rank for rank, handle in handles.items() if handle in ended)
                if len(handles) < self.ranks:
                    time.sleep(self.POLL_S)  # ranks still starting
        finally:
            for handle in handles.values():
                os.close(handle)

    def _receive(self, signum, frame) -> None:
        # Only noted here; the main loop delivers it within POLL_S. Delivering from the handler
        # re-entered _deliver when a second signal came during the first one's delivery, and its
        # import of runtime.context, half done, then failed as a circular import.
        self.pending.append(FORWARDED_SIGNALS[signum])

    def _deliver(self) -> None:
        """Hand pending signals to rank 0 once it has said where it is. Repeats within
        StopRequest.HARD_AFTER_S of the last one delivered are the same request and stay here:
        rank 0 may already be ending, and a signal during interpreter shutdown would kill it."""
        if not self.pending:
            return
        pid = self._pids().get(0)
        if pid is None:
            return  # rank 0 is starting; it gets them as soon as it has its handlers
        from dmlcli.runtime.context import StopRequest

        while self.pending:
            signum = self.pending.pop(0)
            if time.monotonic() - self.delivered_at <= StopRequest.HARD_AFTER_S:
                continue
            self.delivered_at, self.delivered = time.monotonic(), signum
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _pids(self) -> dict[int, int]:
        """{rank: pid} of the ranks that have started."""
        pids = {}
        with contextlib.suppress(OSError):
            for name in os.listdir(self.launch_dir):
                if name.startswith("rank-") and name.endswith(".pid"):
                    with contextlib.suppress(OSError, ValueError), open(os.path.join(self.launch_dir, name)) as handle:
                        pids[int(name[5:-4])] = int(handle.read())
        return pids

    def _relay_stdout(self, chunks) -> None:
        """Pass output through as it comes (progress bars redraw without newlines), keeping back
        mpiexec's banner (once it has begun, everything after it is mpiexec's clean-up talk) and
        its exit-codes line; a read may cut either anywhere."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        held = ""
        for chunk in chunks:
            text = held + decoder.decode(chunk)
            partial = text[text.rfind("\n") + 1:]
            if not (partial.startswith(MPIEXEC_PREFIX) or MPIEXEC_PREFIX.startswith(partial) or set(partial) == {"="}):
                partial = ""  # only the start of an exit-codes line or of the banner's rule waits for more
            text, held = self._take_exit_codes(text[:len(text) - len(partial)]), partial
            if self.banner:
                self.banner += text
                continue
            start = text.find(BANNER_RULE)
            if start >= 0:
                lines = text[start:].split("\n", 2)
                if len(lines) < 3:
                    text, held = text[:start], text[start:] + held  # too little yet to tell
                elif "BAD TERMINATION" in lines[1]:
                    text, self.banner = text[:start], text[start:]
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write(self._take_exit_codes(held))
        sys.stdout.flush()

    def _take_exit_codes(self, text: str) -> str:
        """Keep Hydra's per-rank exit codes (asked for with -print-all-exitcodes) out of the output."""
        for found in EXIT_CODES_LINE.finditer(text):
            self.exit_codes = [int(code) for code in found[1].split(",") if code.strip().isdigit()]
        return EXIT_CODES_LINE.sub("", text)

    def _relay_stderr(self, stream) -> None:
        for raw in stream:
            line = self._take_exit_codes(raw.decode("utf-8", "replace"))
            if not line or MPICH_ABORT_LINE.search(line) or self.banner:
                continue  # after the banner come Hydra's clean-up lines
            if self.rank_failure is None and re.match(r"dmlcli: rank \d+ failed", line):
                self.rank_failure = line.strip()
            sys.stderr.write(line)
            sys.stderr.flush()

    def _conclude(self, code: int) -> int:
        """The run's exit code; a rank that ended without saying why is named in one line."""
        if code < 0:
            code = 128 - code  # mpiexec itself was killed by a signal
        if self.delivered is not None and self._rank_0_killed_by(self.delivered):
            return 128 + self.delivered  # a stop we asked for, which caught rank 0 already on its way out
        reason = self.rank_failure
        if self.banner or code not in REPORTED_EXITS:
            if self.rank_failure is None:
                reason = self._describe_bad_end(code)
                print(f"dmlcli: {reason}", file=sys.stderr, flush=True)
            code = 1
        if code == 1:
            self._mark_manifest_failed(reason or "a rank failed")
        return code

    def _rank_0_killed_by(self, signum: int) -> bool:
        return bool(self.exit_codes) and self.exit_codes[0] in (signum, 128 + signum)

    def _failed_rank(self) -> tuple[int | None, int | None]:
        """(rank, exit code) of the rank that ended badly: the first to end, unless it ended cleanly while
        another did not; else the banner's PID if that rank failed; else from the per-rank exit codes; None
        where nothing tells. The exception is seen under load: with a rank SIGKILLed, the others sometimes
        ended (exit code 0, mpiexec's clean-up) before this process woke to see the killed one's end
        (3 of 8 runs with two CPU hogs, 2026-11-25); the banner named the killed rank in all 8."""
        banner_codes = [int(found) for found in BANNER_EXIT_CODE.findall(self.banner)]
        code = banner_codes[0] if banner_codes else None

        def code_of(rank: int) -> int | None:
            return self.exit_codes[rank] if rank < len(self.exit_codes) else code

        first = self.first_to_end
        if first is not None and code_of(first) != 0:
            return first, code_of(first)
        failed = [rank for rank, rank_code in enumerate(self.exit_codes) if rank_code]
        pid_match = BANNER_PID.search(self.banner)
        banner_rank = {pid: rank for rank, pid in self._pids().items()}.get(int(pid_match[1])) if pid_match else None
        if banner_rank is not None and (banner_rank in failed or not self.exit_codes):
            return banner_rank, code_of(banner_rank)
        if code in self.exit_codes:
            return self.exit_codes.index(code), code
        if failed:
            return failed[0], self.exit_codes[failed[0]]
        return (first, code_of(first)) if first is not None else (banner_rank, code)

    def _describe_bad_end(self, code: int) -> str:
        rank, rank_code = self._failed_rank()
        who = "a rank" if rank is None else f"rank {rank}"
        return f"{who} ended abnormally ({_signal_or_code(code if rank_code is None else rank_code)}); every rank was stopped"

    def _mark_manifest_failed(self, reason: str) -> None:
        """A manifest still saying `running` after the run ended: rank 0 never got to write its end."""
        from dmlcli.report import utc_now, write_manifest

        try:
            with open(os.path.join(self.launch_dir, "manifest")) as handle:
                path = handle.read()
            with open(path) as handle:
                manifest = json.load(handle)
        except (OSError, ValueError):
            return
        if manifest.get("status") == "running":
            manifest.update(status="failed", reason=reason.removeprefix("dmlcli: "), ended=utc_now())
            write_manifest(path, manifest)


def _reads(stream):
    """Whatever is in the pipe, as soon as it is there (a line-wise read would hold back a progress bar)."""
    return iter(lambda: os.read(stream.fileno(), 65536), b"")


def _signal_or_code(code: int) -> str:
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        return f"killed by {signal.Signals(code - 128).name}"
    if code in signal.Signals._value2member_map_:  # Hydra reports a rank killed by signal S as exit code S
        return f"killed by {signal.Signals(code).name}"
    return f"exit code {code}"


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM it when the launcher dies, however it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def tell_launcher(name: str, text: str) -> None:
    """Leave a note (a pid, the manifest path) for the launching process, if there is one."""
    directory = os.environ.get(LAUNCH_DIR_VARIABLE)
    if not directory or not os.path.isdir(directory):
        return
    temporary = os.path.join(directory, f".{name}.{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, os.path.join(directory, name))  # the launcher never reads half a note


def _mpiexec_kind(mpiexec: str) -> str:
    """"hydra" (MPICH, MVAPICH), "open-mpi" or "other", from what `mpiexec --version` says."""
    try:
        banner = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "other"
    if "Open MPI" in banner or "OpenRTE" in banner:
        return "open-mpi"
    return "hydra" if "HYDRA" in banner else "other"


def rank_main(config) -> int:
    """Entry point on each MPI rank. A failure on any rank prints one line naming it and aborts all."""
    from dmlcli.runtime.run import run_rank

    return _on_ranks(lambda transport, stop: run_rank(config, transport, stop=stop))


def sweep_main(runs) -> int:
    """A sweep inside one MPI allocation (`mpirun dmlcli sweep`): `runs(transport)` lists the runs as
    (name, config, skip), the same on every rank; they run one after another on these ranks. A
    diverged run (exit 3) is reported and the sweep goes on; any other end but 0 stops it with that code."""
    from dmlcli.runtime.run import run_rank

    def sweep(transport, stop) -> int:
        listed = runs(transport)
        for index, (name, config, skip) in enumerate(listed, 1):
            say = print if transport.rank == 0 else (lambda *args, **kwargs: None)
            if skip:
                say(f"[{index}/{len(listed)}] {name}: completed, skipped", flush=True)
                continue
            say(f"[{index}/{len(listed)}] {name}: running", flush=True)
            code = run_rank(config, transport, stop=stop)
            if code == 3:
                say(f"[{index}/{len(listed)}] {name}: diverged (exit 3), the sweep goes on", flush=True)
            elif code != 0:
                say(f"dmlcli sweep: stopped at {name} (exit {code}); run the sweep again to continue",
                    file=sys.stderr, flush=True)
                return code
        say(f"{len(listed)} runs: {sum(not skip for *_, skip in listed)} run, "
            f"{sum(skip for *_, skip in listed)} skipped (completed)", flush=True)
        return 0

    return _on_ranks(sweep)


def _on_ranks(body) -> int:
    """Run body(transport, stop) on this rank, rank 0 alone handling signals; any failure prints one
    line naming the rank and aborts every rank."""
    from dmlcli.comm.mpi import MPITransport
    from dmlcli.runtime.context import StopRequest
    from dmlcli.runtime.failures import failure_line
    from dmlcli.runtime.run import CollectiveUsageError

    transport = MPITransport()
    stop = StopRequest()
    if transport.rank == 0:
        stop.install()
    else:
        # Rank 0 alone handles signals and stops the others in order.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tell_launcher(f"rank-{transport.rank}.pid", str(os.getpid()))  # after the handlers: signals may follow at once
    try:
        code = body(transport, stop)
        # The run is over and its outputs are written. Python restores the default handlers while
        # it shuts down, and a late signal would then kill the rank instead of being ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code
    except CollectiveUsageError as error:
        if transport.rank == 0:
            print(f"dmlcli: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        code = interrupt.args[0] if interrupt.args else 130
        print("dmlcli: interrupted at once; the CSV keeps every row written so far", file=sys.stderr, flush=True)
        time.sleep(ABORT_GRACE_S)
        transport.abort(code)
        return code
    except BaseException as error:  # noqa: BLE001 - any failure must end every rank, not hang them
        code = getattr(error, "exit_code", 1)
        print(failure_line(transport.rank, error), file=sys.stderr, flush=True)
        # mpiexec relays a rank's output through a pipe; an immediate abort can tear the relay
        # down before it has passed the line on (seen: 7 runs in 25 lost it). Give it a moment.
        time.sleep(ABORT_GRACE_S)
        transport.abort(code)
        return code

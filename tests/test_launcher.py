"""The self-launching `dmlcli` under signals, collisions and killed ranks (real mpiexec, with timeouts)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, MPI_TIMEOUT_S, alone_env
from dmlcli.report import read_csv
from dmlcli.runtime.launch import Launch

RUN = ["--rounds", "100000000", "--eval-every", "200", "--progress", "off", "--workers", "2"]
SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}
COLLISION_PAIRS = int(os.environ.get("DMLCLI_COLLISION_PAIRS", "5"))  # `make hostile` runs 20


@pytest.fixture
def start_alone(tmp_path):
    """Start `dmlcli ARGS` in a process group of its own, as a terminal or a batch system would;
    whatever the test's outcome, every process of the test's runs is killed at the end."""
    started = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen([str(BIN / "dmlcli"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=alone_env(), start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(tmp_path)])  # mpiexec and the ranks run in a session of their own


def wait_until_training(csv_path, process, timeout: float = 60) -> None:
    """Until the run is a second into its loop: rank 0 writes the CSV header when start-up is done
    (asynchronous runs write their rows only at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if csv_path.exists() and csv_path.read_text().count("\n") >= 1:
            time.sleep(1.0)
            return
        time.sleep(0.05)
    raise AssertionError(f"start-up not done within {timeout} s (exit {process.poll()})")


def describes(manifest: dict, row: dict) -> bool:
    """The manifest's final metrics are those of the CSV row (it records them without run_id)."""
    return manifest["final"] == {key: row[key] for key in manifest["final"]}


def processes_of(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (a run's unique output path)."""
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


def assert_nothing_left(marker: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while processes_of(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of(marker) == []


def finish(process: subprocess.Popen) -> tuple[str, str]:
    return process.communicate(timeout=MPI_TIMEOUT_S)


@pytest.mark.parametrize("algorithm", ["ssgd", "asgd"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("target", ["launcher", "group"])
@pytest.mark.parametrize("times", [1, 2], ids=["once", "twice"])
def test_a_signal_to_the_launcher_stops_every_rank_with_complete_outputs(tmp_path, start_alone, algorithm, signum, target, times):
    """Once, or twice within 50 ms (a terminal's Ctrl-C plus a forwarding `timeout`), to the
    launching process alone or to its whole process group: the documented exit code, the
    manifest `interrupted`, a complete CSV, and no process left behind."""
    out = tmp_path / "run.csv"
    process = start_alone("train", algorithm, *RUN, "--out", str(out))
    wait_until_training(out, process)
    for shot in range(times):
        if shot:
            time.sleep(0.05)
        if target == "launcher":
            os.kill(process.pid, signum)
        else:
            os.killpg(process.pid, signum)
    _, stderr = finish(process)
    assert process.returncode == SIGNAL_EXIT[signum], stderr
    assert stderr.splitlines() == [f"dmlcli: stopped by signal {int(signum)}; the CSV and manifest are complete up to the stop"]
    manifest = json.loads(out.with_suffix(".json").read_text())
    rows = read_csv(out)
    assert manifest["status"] == "interrupted"
    assert describes(manifest, rows[-1])  # the CSV ends with the model at the stop, as the manifest says
    assert all(len(row) == len(rows[0]) and np.isfinite(row["objective"]) for row in rows)
    assert [row["round"] for row in rows] == sorted({row["round"] for row in rows})  # no row lost or doubled
    assert_nothing_left(str(out))


def test_a_killed_launcher_takes_its_ranks_with_it(tmp_path, start_alone):
    """SIGKILL cannot be forwarded; the kernel then sends mpiexec SIGTERM, and the run stops cleanly."""
    out = tmp_path / "orphans.csv"
    process = start_alone("train", "ssgd", *RUN, "--out", str(out))
    wait_until_training(out, process)
    process.kill()
    finish(process)
    assert_nothing_left(str(out))
    assert json.loads(out.with_suffix(".json").read_text())["status"] == "interrupted"


def test_a_worker_killed_by_sigkill_is_named_in_one_line_and_the_manifest_says_failed(tmp_path, start_alone):
    out = tmp_path / "killed.csv"
    process = start_alone("train", "ssgd", *RUN, "--out", str(out))
    wait_until_training(out, process)
    ranks = {}
    for pid in (int(line.split()[0]) for line in processes_of(str(out))):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")  # a rank's launcher says which it is
        rank = [int(entry.split(b"=")[1]) for entry in environ if entry.startswith(b"PMI_RANK=")]
        if rank:
            ranks[rank[0]] = pid
    assert sorted(ranks) == [0, 1, 2]
    os.kill(ranks[1], signal.SIGKILL)
    stdout, stderr = finish(process)
    assert process.returncode == 1
    assert stderr.splitlines() == ["dmlcli: rank 1 ended abnormally (killed by SIGKILL); every rank was stopped"]
    assert "BAD TERMINATION" not in stdout and "=====" not in stdout
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"].startswith("rank 1 ended abnormally")
    assert_nothing_left(str(out))


def test_runs_started_together_into_one_directory_never_share_a_name(tmp_path, start_alone):
    """Pairs of runs started at the same moment (same algorithm, seed and second): each gets
    its own CSV and manifest, and each manifest describes its own CSV."""
    out = tmp_path / "runs"
    for pair in range(COLLISION_PAIRS):
        processes = [start_alone("train", "ssgd", "--workers", "1", "--rounds", "5", "--progress", "off",
                                 "--data", "synthetic:n=2000,d=20", "--out", f"{out}/") for _ in range(2)]
        for process in processes:
            _, stderr = finish(process)
            assert process.returncode == 0, f"pair {pair}: {stderr}"
    csvs, manifests = sorted(out.glob("*.csv")), sorted(out.glob("*.json"))
    assert len(csvs) == len(manifests) == 2 * COLLISION_PAIRS
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text())
        assert manifest["csv"] == str(manifest_path.with_suffix(".csv")) and manifest["status"] == "completed"
        rows = read_csv(manifest["csv"])
        assert {row["run_id"] for row in rows} == {manifest["run_id"]} and describes(manifest, rows[-1])


def test_a_usage_error_under_mpiexec_is_one_line_not_one_per_rank(tmp_path):
    done = subprocess.run([str(BIN / "mpiexec"), "-n", "3", str(BIN / "dmlcli"), "train", "ssgd", "--lam", "nan",
                           "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=MPI_TIMEOUT_S)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--lam" in done.stderr
    assert list(tmp_path.iterdir()) == []


def relayed(chunks: list[bytes], capsys) -> tuple[str, Launch]:
    """What the launcher passes on of mpiexec's stdout arriving in these reads."""
    launch = Launch([], {}, "/nonexistent")
    launch._relay_stdout(chunks)
    return capsys.readouterr().out, launch


BANNER = (b"\n" + b"=" * 83 + b"\n=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n=   PID 4242 RUNNING AT vm\n"
          b"=   EXIT CODE: 9\n=   CLEANING UP REMAINING PROCESSES\n" + b"=" * 83 + b"\n")


@pytest.mark.parametrize("cut", [1, 5, 9, 20, 30, 60])
def test_the_relay_keeps_mpiexecs_exit_codes_and_banner_out_wherever_a_read_cuts(capsys, cut):
    output = b"round 5/5  obj 0.2\ncsv: x.csv\n" + BANNER + b"[mpiexec@vm] Exit codes: [vm] 0,9,0\nYOUR APPLICATION TERMINATED\n"
    text, launch = relayed([output[i:i + cut] for i in range(0, len(output), cut)], capsys)
    assert text.rstrip("\n") == "round 5/5  obj 0.2\ncsv: x.csv"  # the blank line before the banner may pass
    assert launch.exit_codes == [0, 9, 0] and launch._failed_rank() == (1, 9)
    assert launch._describe_bad_end(9) == "rank 1 ended abnormally (killed by SIGKILL); every rank was stopped"


@pytest.mark.parametrize("first, codes, named", [
    (0, "0,9,0", 1),  # the watcher woke after mpiexec's clean-up had ended rank 0: its exit code 0 clears it
    (None, "0,9,9", 1),  # no watcher (no pidfd): of the two killed, the banner's PID
    (1, "0,9,9", 1),  # the watcher saw the killed rank first
    (2, "0,0,11", 2),  # the first to end failed: it is named whatever the banner says
])
def test_the_rank_named_is_the_first_to_end_unless_it_ended_cleanly(capsys, monkeypatch, first, codes, named):
    output = BANNER + f"[mpiexec@vm] Exit codes: [vm] {codes}\n".encode()
    _, launch = relayed([output], capsys)
    monkeypatch.setattr(launch, "_pids", lambda: {0: 4240, 1: 4242, 2: 4244})  # the banner's PID 4242 is rank 1
    launch.first_to_end = first
    rank, code = launch._failed_rank()
    assert (rank, code) == (named, [int(c) for c in codes.split(",")][named])


def test_the_relay_passes_other_output_through_unchanged(capsys):
    output = b"a progress bar\r[redrawn] ====== not a banner ======\nsummary\n[mpiexec@vm] Exit codes: [vm] 0,0\n"
    text, launch = relayed([output[:17], output[17:40], output[40:]], capsys)
    assert text == "a progress bar\r[redrawn] ====== not a banner ======\nsummary\n"
    assert launch.exit_codes == [0, 0] and launch.banner == ""



def test_srun_tasks_without_pmi_are_refused_in_one_line(capsys, monkeypatch, tmp_path):
    """Each task would otherwise start an mpiexec of its own inside the job."""
    from dmlcli.cli import main
    from dmlcli.runtime import launch

    for name in launch.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "ssgd", "--out", str(tmp_path / "run.csv")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("dmlcli: error: srun started 4 tasks without PMI")
    assert list(tmp_path.iterdir()) == []


def test_a_signal_handler_only_notes_the_signal_and_the_loop_delivers_it(tmp_path, monkeypatch):
    """The handler must not deliver (nor import) anything: a second signal arriving during the first
    one's delivery re-entered it and failed on a half-imported module. It queues; _deliver, called by
    the main loop, sends to rank 0 once it has said where it is."""
    run = Launch(["true"], {}, str(tmp_path), ranks=1)
    (tmp_path / "rank-0.pid").write_text("4242")
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
    run._receive(signal.SIGTERM, None)
    run._receive(signal.SIGINT, None)
    assert sent == [] and run.pending == [signal.SIGTERM, signal.SIGINT]
    run._deliver()
    assert sent == [(4242, signal.SIGTERM)] and run.pending == []  # the repeat within HARD_AFTER_S stays here

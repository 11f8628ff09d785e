"""A slice of `make soak` (recipes/soak.py): seeded failure cases of the asynchronous algorithms
under real mpiexec, each ending with the exit code and manifest status its case predicts."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "recipes"))
import soak  # noqa: E402

SLICE = (3, 7, 8, 17)  # chosen to cover crashes gone on from (parameter server, decentralised), an abort and a hang


def test_the_slice_covers_crashes_hangs_and_both_policies():
    cases = [soak.draw(seed) for seed in SLICE]
    assert {case.expected_exit for case in cases} == {0, 1}
    assert any(case.crash and case.crash.endswith(":hang") for case in cases)
    assert {case.on_failure for case in cases} == {"abort", "continue"}


@pytest.mark.parametrize("seed", SLICE)
def test_a_soak_case_ends_as_predicted(tmp_path, seed):
    result = soak.run(soak.draw(seed), str(tmp_path))
    assert result["problems"] == [], f"{result['case'].describe()}: {result['stderr']}"
    assert result["seconds"] < soak.DEADLINE_S

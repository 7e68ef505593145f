"""Issue 22: a rank that leaves, or calls a different collective, ends every rank with an error.

Each test runs ``tests/distributed/mpi/out_of_step.py <scenario>`` on 2 ranks and asserts that the
job ends non-zero well within :data:`LIMIT` seconds (the acceptance bound: before the fix each of
these ran until killed), that the output names the cause, and that rank 0 never got past the
collective rank 1 did not join.
"""

from __future__ import annotations

import pytest

from cudcn.distributed.agreement import EXIT, Call, digest, disagreement
from cudcn.distributed.mpi import TIMEOUT_VARIABLE, collective_timeout
from tests.distributed.ranks import run_ranks

LIMIT = 60  # seconds; a job still running then is killed and the test fails

# scenario, launched with -m mpi4py, what the output must say
SCENARIOS = [
    ("exit", True, ["rank 1 left the job", "rank 0 waits in allreduce"]),
    ("sys_exit_0", True, ["rank 1 left the job", "rank 0 waits in allreduce"]),
    ("sys_exit_1", False, ["rank 1 left the job", "rank 0 waits in allreduce"]),
    ("barrier", True, ["rank 0 waits in allreduce", "rank 1 waits in barrier"]),
    ("sampler", True, ["ShardSampler", "rank 0 has dataset length n=100", "rank 1 has dataset length n=120"]),
    ("syncbn", True, ["rank 0 waits in SyncBatchNorm", "rank 1 left the job", "eval mode"]),
    ("caught_typeerror", True, ["rank 1 rejected its arguments", "int16"]),
]


@pytest.mark.parametrize(("scenario", "via_mpi4py", "expected"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_out_of_step_rank_ends_the_job_naming_the_cause(scenario, via_mpi4py, expected):
    result, seconds = run_ranks("out_of_step.py", scenario, timeout=LIMIT, via_mpi4py=via_mpi4py)
    output = result.stdout + result.stderr
    print(f"{scenario}: ended after {seconds:.1f} s, exit code {result.returncode}\n{output[-2000:]}")
    assert result.returncode != 0
    for text in expected:
        assert text in output, text
    assert "rank 0 finished" not in output


@pytest.mark.slow
def test_a_stuck_rank_ends_the_job_after_the_collective_timeout():
    """The last resort: rank 1 computes for 120 s while rank 0 waits; with
    ``CUDCN_COLLECTIVE_TIMEOUT=2`` rank 0 gives up after 2 s and ends the job, naming the
    collective and the variable."""
    env = {"CUDCN_COLLECTIVE_TIMEOUT": "2"}
    result, seconds = run_ranks("out_of_step.py", "stuck", timeout=LIMIT, env=env)
    output = result.stdout + result.stderr
    print(f"ended after {seconds:.1f} s, exit code {result.returncode}\n{output[-2000:]}")
    assert result.returncode != 0 and seconds < 30
    assert "allreduce #" in output and "did not complete within 2 s" in output
    assert "CUDCN_COLLECTIVE_TIMEOUT" in output
    assert "rank 0 finished" not in output


@pytest.mark.slow
def test_a_rank_may_leave_while_another_computes_past_the_timeout():
    """Rank 1 leaves while rank 0 computes alone for 3 s with ``CUDCN_COLLECTIVE_TIMEOUT=1``: the
    wait at exit has no timeout, so the job ends normally when rank 0 leaves too."""
    env = {"CUDCN_COLLECTIVE_TIMEOUT": "1"}
    result, seconds = run_ranks("out_of_step.py", "late_exit", timeout=LIMIT, env=env)
    print(f"ended after {seconds:.1f} s, exit code {result.returncode}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 finished" in result.stdout


# --------------------------------------------------------------------------- one process


def test_disagreement_names_every_ranks_view():
    allreduce = Call("allreduce", ("op sum", "dtype float64", "shape (4,)"), None, 7)
    assert digest(allreduce) == digest(allreduce._replace(sequence=8))  # the number only labels
    assert digest(allreduce) != digest(Call("barrier", (), None, 7))
    error = disagreement([allreduce, Call(EXIT, (), None, 7), allreduce])
    assert isinstance(error, RuntimeError)
    assert str(error).startswith(
        "the ranks are out of step: ranks [0, 2] wait in allreduce #7 (op sum, dtype float64, "
        "shape (4,)); rank 1 left the job"
    )
    assert "A rank leaves when its script ends" in str(error)
    error = disagreement([Call("SyncBatchNorm", ("a",), None, 3), Call("DistributedOptimizer", (), None, 3)])
    assert "is one rank's model in eval mode?" in str(error)
    error = disagreement([allreduce, allreduce._replace(items=("op sum", "dtype float32", "shape (4,)"))])
    assert isinstance(error, ValueError)
    assert (
        str(error)
        == "allreduce: the ranks disagree at item 1: rank 0 has dtype float64, rank 1 has dtype float32"
    )
    error = disagreement([allreduce, Call("allreduce", (), "TypeError: array must have dtype ...", 7)])
    assert isinstance(error, ValueError)
    assert str(error).startswith("allreduce: rank 1 rejected its arguments (TypeError: array must have dtype")
    long = Call("broadcast_parameters", tuple(f"p{i}" for i in range(10)), None, 2)
    assert long.doing() == "waits in broadcast_parameters #2 (p0, p1, p2, p3, ...)"


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 300.0), ("", 300.0), ("2.5", 2.5), ("0", None), ("inf", None)]
)
def test_collective_timeout_from_the_environment(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv(TIMEOUT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_VARIABLE, value)
    assert collective_timeout() == seconds


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_collective_timeout_rejects_nonsense(monkeypatch, value):
    monkeypatch.setenv("CUDCN_COLLECTIVE_TIMEOUT", value)
    with pytest.raises(ValueError, match=r"CUDCN_COLLECTIVE_TIMEOUT must be a number of seconds >= 0"):
        collective_timeout()

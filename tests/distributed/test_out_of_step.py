"""Issue 22: a rank that leaves, or calls a different collective, ends every rank with an error.

Each test runs ``tests/distributed/mpi/out_of_step.py <scenario>`` on 2 ranks and asserts that the
job ends non-zero well within :data:`LIMIT` seconds (the acceptance bound: before the fix each of
these ran until killed), that the output names the cause, and that rank 0 never got past the
collective rank 1 did not join.
"""

from __future__ import annotations

import pytest

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

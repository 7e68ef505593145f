"""cudcn.distributed: in-process checks of every piece, then 2-rank runs under ``mpiexec``.

Each multi-rank test starts ``mpiexec -n 2 <python> -m mpi4py mpi/<script> <out>`` through
``tests/distributed/ranks.py`` and reads what rank 0 wrote to ``<out>``; it never parses the ranks'
interleaved output. Without ``mpiexec`` or mpi4py these tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass

import numpy as np
import pytest

import cudcn.distributed as dist
from cudcn import Tensor, nn, optim
from tests.distributed.ranks import run_ranks

EQUIVALENCE_SEED = 20261201  # tests/distributed/mpi/train_equivalence.py's SEED


# --------------------------------------------------------------------------- one process


def test_import_cudcn_stays_light():
    code = "import sys, cudcn, cudcn.distributed; print(sorted({'mpi4py', 'cupy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_local_communicator_collectives_and_argument_checks():
    comm = dist.init("local")
    assert (comm.rank, comm.size, comm.backend) == (0, 1, "local")
    assert dist.default_communicator() is comm
    a = np.arange(4.0)
    assert comm.allreduce(a, "mean") is a and a.tolist() == [0, 1, 2, 3]
    assert comm.broadcast(a, root=0) is a
    comm.barrier()
    with pytest.raises(ValueError, match="op must be one of"):
        comm.allreduce(a, "prod")
    with pytest.raises(TypeError, match="op 'mean' needs a floating array"):
        comm.allreduce(np.arange(3), "mean")
    with pytest.raises(TypeError, match="array must have dtype"):
        comm.allreduce(np.zeros(3, np.float16))
    with pytest.raises(TypeError, match="array must be a NumPy or CuPy array"):
        comm.allreduce([1.0, 2.0])
    with pytest.raises(ValueError, match=r"root must be in \[0, 1\)"):
        comm.broadcast(a, root=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        dist.init("gloo")


def test_auto_is_local_unless_launched_with_ranks(monkeypatch):
    for variable in dist.comm.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert not dist.launched_with_ranks()
    assert dist.init().backend == "local"
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not dist.launched_with_ranks()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist.launched_with_ranks()


@pytest.mark.parametrize("failure", ["not installed", "no MPI library"])
def test_missing_mpi_names_the_extra(monkeypatch, failure):
    if failure == "not installed":
        fake = None  # `import mpi4py` raises ImportError
    else:  # mpi4py itself raises RuntimeError when it finds no MPI library
        fake = types.ModuleType("mpi4py")

        def missing(name):
            raise RuntimeError("cannot load MPI library")

        fake.__getattr__ = missing
    monkeypatch.setitem(sys.modules, "mpi4py", fake)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'cudcn\[distributed\]'"):
        dist.init("mpi")


@dataclass
class FakeRanks:
    """Rank and size only: ShardSampler never communicates."""

    rank: int
    size: int


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_sampler_covers_every_index(shuffle, drop_last):
    for size in range(1, 6):
        for n in range(14):
            shards = [dist.ShardSampler(n, FakeRanks(r, size), shuffle, 7, drop_last) for r in range(size)]
            for s in shards:
                s.set_epoch(3)
            got = [s.indices() for s in shards]
            length = n // size if drop_last else -(-n // size)
            assert all(len(s) == length and len(g) == length for s, g in zip(shards, got, strict=True))
            flat = np.concatenate(got) if got else np.array([], int)
            if drop_last:  # disjoint, all but n % size of the items
                assert len(set(flat.tolist())) == len(flat) == n - n % size
            else:  # every index, and repeats only for padding
                assert set(flat.tolist()) == set(range(n))
                assert len(flat) - n == length * size - n
    sampler = dist.ShardSampler(100, FakeRanks(0, 2), shuffle=shuffle, seed=0)
    first = sampler.indices()
    sampler.set_epoch(1)
    assert np.array_equal(first, sampler.indices()) == (not shuffle)  # a new order per epoch
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        dist.ShardSampler(-1, FakeRanks(0, 1))


def bn_net(rng_seed: int = 0, batchnorm=nn.BatchNorm2d) -> nn.Sequential:
    rng = np.random.default_rng(rng_seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, rng=rng),
        batchnorm(3),
        nn.ReLU(),
        nn.GlobalAvgPool2d(),
        nn.Linear(3, 4, rng=rng),
        nn.BatchNorm1d(4),
    ).to(np.float64)


def test_sync_batchnorm_on_one_rank_is_batchnorm():
    dist.init("local")
    seed = 5
    x = np.random.default_rng(seed).standard_normal((6, 1, 5, 5))
    plain, synced = bn_net(), nn.SyncBatchNorm.convert_sync_batchnorm(bn_net())
    assert [type(m).__name__ for m in synced][1::4] == ["SyncBatchNorm", "SyncBatchNorm"]
    assert list(plain.state_dict()) == list(synced.state_dict())
    for net in (plain, synced):
        net(Tensor(x)).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), synced.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(value, synced.state_dict()[key], err_msg=key)
    assert synced[1].comm is dist.default_communicator()  # resolved at the first training forward
    plain.eval(), synced.eval()
    np.testing.assert_array_equal(plain(x).data, synced(x).data)


def test_convert_sync_batchnorm_keeps_parameter_objects():
    net = bn_net()
    params = list(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert converted is net and all(p is q for p, q in zip(params, net.parameters(), strict=True))
    assert opt.param_groups[0]["params"][2] is net[1].weight
    single = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(3).eval())
    assert isinstance(single, nn.SyncBatchNorm) and not single.training


def test_distributed_optimizer_on_one_rank_is_the_optimizer():
    comm = dist.init("local")
    nets = [bn_net(), bn_net()]
    x = np.random.default_rng(0).standard_normal((4, 1, 5, 5))
    inner = optim.SGD(nets[0].parameters(), lr=0.1, momentum=0.9)
    wrapped = dist.DistributedOptimizer(optim.SGD(nets[1].parameters(), lr=0.1, momentum=0.9), comm)
    schedule = optim.StepLR(wrapped, step_size=1, gamma=0.5)  # schedules accept the wrapper
    for opt, net in zip((inner, wrapped), nets, strict=True):
        for _ in range(2):
            opt.zero_grad()
            net(x).sum().backward()
            opt.step()
    schedule.step()
    assert wrapped.param_groups[0]["lr"] == 0.05
    for p, q in zip(*(n.parameters() for n in nets), strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    assert wrapped.state_dict()["state"].keys() == inner.state_dict()["state"].keys()
    with pytest.raises(TypeError, match=r"optimizer must be a cudcn\.optim\.Optimizer"):
        dist.DistributedOptimizer(wrapped, comm)
    with pytest.raises(ValueError, match="bucket_mb must be a finite number > 0"):
        dist.DistributedOptimizer(inner, comm, bucket_mb=0)


def test_plan_buckets_boundaries():
    def t(n, dtype=np.float64):
        return Tensor(np.zeros(n, dtype))

    params = [t(2), t(2), t(100), t(1), t(1, np.float32), t(1, np.float32), t(3)]
    assert dist.plan_buckets(params, 32) == [[0, 1], [2], [3], [4, 5], [6]]
    assert dist.plan_buckets(params, 1) == [[i] for i in range(7)]
    assert dist.plan_buckets(params, 10**9) == [[0, 1, 2, 3], [4, 5], [6]]


def test_broadcast_parameters_argument_checks():
    comm = dist.init("local")
    dist.broadcast_parameters(bn_net(), comm)
    dist.broadcast_parameters([Tensor(np.zeros(2))], comm)
    with pytest.raises(TypeError, match=r"tensors\[1\] must be a cudcn.Tensor"):
        dist.broadcast_parameters([Tensor(np.zeros(2)), np.zeros(2)], comm)


def test_abort_hook_waits_until_the_launcher_read_the_traceback(tmp_path):
    """Before ``MPI_Abort`` the hook waits until the pipe's reader (MPICH's launcher) took every
    byte: without the wait the launcher lost the traceback of 29 of 180 failing jobs under load."""
    from cudcn.distributed.mpi import _drain

    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader, os.fdopen(write_fd, "w") as writer:
        writer.write("traceback\n")
        taken = []
        delayed = threading.Timer(0.2, lambda: taken.append(os.read(reader.fileno(), 100)))
        start = time.perf_counter()
        delayed.start()
        _drain(writer, timeout=10)
        waited = time.perf_counter() - start
        delayed.join()
        assert taken == [b"traceback\n"] and waited >= 0.15, waited  # it waited for the reader
        writer.write("nobody reads this\n")
        start = time.perf_counter()
        _drain(writer, timeout=0.1)  # a reader that never reads: bounded, no hang
        assert 0.1 <= time.perf_counter() - start < 5
    with open(tmp_path / "log.txt", "w") as file:
        file.write("not a pipe")
        start = time.perf_counter()
        _drain(file, timeout=10)
    _drain(io.StringIO(), timeout=10)  # no file descriptor
    _drain(None, timeout=10)  # pythonw: no stream at all
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------------------- 2 ranks


@pytest.mark.slow
def test_two_rank_training_equals_single_process_training(tmp_path):
    """float64: 2-rank training (deformable layer, SyncBatchNorm, SGD with momentum) equals
    single-process training on the whole batch to a few float64 roundings per summed term;
    float32: no further from the float64 run than single-process float32 is (times 4); replicas
    bitwise identical; eval mode uses the running statistics and communicates nothing."""
    print(f"seed {EQUIVALENCE_SEED}")
    result, _ = run_ranks("train_equivalence.py", str(tmp_path / "out.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    d = np.load(tmp_path / "out.npz")
    steps, terms = 3, 8 * 8 * 8  # SGD steps; values per channel in the largest batch sum
    for dtype in ("float64", "float32"):
        keys = [k.split("/", 2)[2] for k in d.files if k.startswith(f"{dtype}/rank0/")]
        assert any(k.endswith("running_var") for k in keys) and "3.conv_offset.weight" in keys
        for k in keys:
            assert np.array_equal(d[f"{dtype}/rank0/{k}"], d[f"{dtype}/rank1/{k}"]), k
        assert d[f"{dtype}/eval/collectives"].tolist() == [0, 0]
        counters = [k for k in keys if d[f"{dtype}/rank0/{k}"].dtype.kind == "i"]
        for k in counters:  # num_batches_tracked
            assert d[f"{dtype}/rank0/{k}"] == d[f"{dtype}/reference/{k}"] == steps, k
        keys = [k for k in keys if k not in counters]

        def err(which, k, dtype=dtype):
            return np.max(
                np.abs(d[f"{dtype}/{which}/{k}"].astype(np.float64) - d[f"{dtype}/reference64/{k}"])
            )

        scale = max(1.0, max(np.max(np.abs(d[f"{dtype}/reference64/{k}"])) for k in keys))
        if dtype == "float64":
            tolerance = steps * terms * np.finfo(np.float64).eps * scale  # 3.4e-13 x scale
            worst = max(err("rank0", k) for k in keys)
            eval_tol = tolerance
        else:
            own = max(err("reference", k) for k in keys)
            tolerance = 4 * max(own, np.finfo(np.float32).eps * scale)
            worst = max(err("rank0", k) for k in keys)
            eval_tol = 4 * terms * np.finfo(np.float32).eps
        print(f"{dtype}: largest difference {worst:.3g}, allowed {tolerance:.3g}")
        assert worst <= tolerance, (dtype, worst, tolerance)
        moved = max(np.max(np.abs(d[f"{dtype}/reference64/{k}"] - d[f"{dtype}/initial/{k}"])) for k in keys)
        assert moved > 1e4 * tolerance  # training moved the weights far more than the tolerance
        eval_diff = np.max(np.abs(d[f"{dtype}/eval/distributed"] - d[f"{dtype}/eval/reference"]))
        assert eval_diff <= eval_tol, (dtype, eval_diff)


def test_two_rank_collectives_checks_buckets_and_sampler(tmp_path):
    result, _ = run_ranks("collective_checks.py", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads((tmp_path / "out.json").read_text())
    assert len(ranks) == 2
    base = np.arange(6.0).reshape(2, 3)
    for seen in ranks:
        assert seen["sum"] == (3 * base).tolist() and seen["mean"] == (1.5 * base).tolist()
        assert seen["max"] == [1, 0] and seen["scalar"] == 2.0 and seen["broadcast"] == [1.0] * 3
        assert seen["strided_returns_view"] and [row[1] for row in seen["strided"]] == [3, 0, 3, 0]
        assert "rank 0 has shape (3,), rank 1 has shape (4,)" in seen["shape_mismatch"]
        assert "rank 0 has dtype float64, rank 1 has dtype float32" in seen["dtype_mismatch"]
        assert "rank 0 has op sum, rank 1 has op max" in seen["op_mismatch"]
        assert seen["broadcast_parameters_mismatch"].startswith("broadcast_parameters:")
        assert "rank 0 has 0.weight (4, 1, 3, 3)" in seen["broadcast_parameters_mismatch"]
        assert "rank 1 has 0.weight (5, 1, 3, 3)" in seen["broadcast_parameters_mismatch"]
        assert "parameter 0 (4, 1, 3, 3)" in seen["optimizer_mismatch"]
        assert "sums over 4 channels" in seen["sync_batchnorm_mismatch"]
        assert seen["broadcast_in_place"] and seen["passthrough"]
        # small[0] | big (8000 B > 100 B) | 4 small (96 B) | 4 small | small + none_here
        assert seen["buckets"] == [[0], [1], [2, 3, 4, 5], [6, 7, 8, 9], [10, 11]]
        # the agreement check, the has-gradient flags, then one allreduce per bucket
        assert seen["reduction_sizes"] == [2, 13, 3, 1000, 12, 12, 5]
        after = seen["after_step"]
        # SGD lr 1, weight decay 0.5 on p = 0, mean gradient (1 + 2) / 2: p = -1.5
        assert after["big"] == [-1.5] * 3 and after["small"] == [-1.5] * 3
        assert after["none_here"] == [-2.0, -2.0] and after["none_here_grad"] == [2.0, 2.0]
        assert after["frozen"] == [1.0, 1.0] and after["frozen_grad_is_none"]
        assert not after["frozen_has_state"]
        # 72 values per channel summed (8 images x 9 pixels), results of magnitude below 10
        for what, diff in seen["uneven_syncbn"].items():
            assert diff <= 72 * np.finfo(np.float64).eps * 10, (what, diff)
    assert ranks[0]["broadcast_checksum"] == ranks[1]["broadcast_checksum"]
    if importlib.util.find_spec("cupy") is None:
        for seen in ranks:
            message = seen["nccl_without_cupy"]
            assert "cannot start the 'nccl' backend" in message and "cudcn[cuda13]" in message
            assert "rank 0: ModuleNotFoundError" in message and "rank 1: " in message
    for n, drop_last in ((11, False), (11, True), (10, False)):
        (l0, i0), (l1, i1) = (seen[f"sampler_{n}_{drop_last}"] for seen in ranks)
        assert l0 == l1 == len(i0) == len(i1) == (n // 2 if drop_last else -(-n // 2))
        union = set(i0) | set(i1)
        assert union == set(range(n)) if not drop_last else len(union) == 2 * l0


def test_two_rank_grad_scaler_skips_together_on_a_rank_local_overflow(tmp_path):
    result, _ = run_ranks("half_scaler.py", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = json.loads((tmp_path / "out.json").read_text())
    assert r0["broadcast_equal"] and r1["broadcast_equal"]  # float16 through a float32 copy
    # only rank 1's gradients overflowed, yet both ranks skipped the step and backed off
    assert r0["local_grads_finite"] and not r1["local_grads_finite"]
    for seen in (r0, r1):
        assert seen["unchanged_after_1"] and seen["scale_after_1"] == 512.0
        assert seen["unscaled_dtypes"] == ["float32", "float32"]
        assert seen["step_2_exact"] and seen["step_2_moved"] and seen["scale_after_2"] == 512.0
    assert r0["params"] == r1["params"]
    for seen in (r0, r1):  # SyncBatchNorm on float16 batches: float32 statistics over both ranks
        assert seen["syncbn_dtypes"] == ["float32", "float32", "float16"]
        # 64 values per channel of magnitude about 200, summed in float32 in different orders
        assert seen["syncbn_stat_diff"] <= 64 * np.finfo(np.float32).eps * 200
        # the float16 output is the float32 reference rounded once: within one float16 spacing
        assert seen["syncbn_out_ulps"] <= 1.0


@pytest.mark.parametrize("via_mpi4py", [True, False], ids=["python -m mpi4py", "python"])
def test_a_failing_rank_ends_every_rank(tmp_path, via_mpi4py):
    marker = tmp_path / "rank0_finished.txt"
    result, seconds = run_ranks("failing_rank.py", str(marker), timeout=60, via_mpi4py=via_mpi4py)
    print(f"the job ended {seconds:.1f} s after launch, exit code {result.returncode}")
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_data_parallel_example_on_two_ranks(tmp_path):
    """examples/data_parallel.py --quick: 40 steps on 2 ranks (too few for a meaningful accuracy:
    the running statistics still remember their initial values)."""
    result, seconds = run_ranks("examples/data_parallel.py", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    print(f"{seconds:.1f} s; {metrics}")
    assert metrics["ranks"] == 2 and len(metrics["images_per_s"]) == 2
    assert all(r > 0 for r in metrics["images_per_s"]) and metrics["replicas_identical"]
    assert metrics["last_loss"] < metrics["first_loss"]  # it learns
    assert 0 <= metrics["accuracy"] <= 1 and (tmp_path / "data_parallel.npz").exists()
    for r in range(2):
        assert f"rank {r}: " in result.stdout and "images/s" in result.stdout
    assert "zoomed-test accuracy" in result.stdout


@pytest.mark.gpu
def test_nccl_one_rank_with_cupy_arrays(tmp_path):
    """NCCL refuses two ranks on one GPU, so one lent GPU runs one NCCL rank."""
    result, _ = run_ranks("cupy_ranks.py", str(tmp_path / "out.json"), "nccl", n=1, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["backend"] == "nccl" and report["sum"] == list(range(6))
    assert report["max_difference_to_numpy"] <= 1e-12 and report["replicas_identical"]


@pytest.mark.gpu
def test_mpi_two_ranks_stage_cupy_arrays_through_the_host(tmp_path):
    result, _ = run_ranks("cupy_ranks.py", str(tmp_path / "out.json"), "mpi", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["backend"] == "mpi" and report["sum"] == [3.0 * i for i in range(6)]
    assert report["max"] == [1, 0] and report["broadcast"] == [1.0] * 3
    assert report["max_difference_to_numpy"] <= 1e-12 and report["replicas_identical"]

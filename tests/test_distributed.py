"""nn_core.distributed: the size-1 stand-in in this process, and real 2-process MPI jobs
(``mpiexec -n 2``, each with a timeout) started from ``tests/mpi_workers``.

The MPI tests skip only when mpi4py or ``mpiexec`` is missing
(``pip install mpi4py mpich`` provides both)."""
import doctest
import functools
import importlib
import importlib.util
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import nn_core
from nn_core import _parallel
from nn_core import distributed as dist
from nn_core.distributed import _launcher, _world
from nn_core.layers import Linear, Sequential, Tanh
from nn_core.losses import MSELoss
from nn_core.optim import AdamW, WarmupCosine, clip_grad_norm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))
WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_workers")
LAUNCHER_VARS = ("OMPI_", "PMI_", "PMIX_", "MPI_LOCAL", "MV2_", "SLURM_", "HYDRA_",
                 "NN_CORE_DISTRIBUTED")


def _find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                               reason="needs mpi4py and mpiexec (pip install mpi4py mpich)")


@functools.lru_cache(maxsize=None)
def _launcher_flags():
    """Open MPI refuses root and more ranks than cores without these flags."""
    try:
        out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True,
                             timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if "Open MPI" in text or "OpenRTE" in text:
        return ("--oversubscribe",) + (("--allow-run-as-root",) if os.geteuid() == 0 else ())
    return ()


def _env(**extra):
    """This environment without launcher or thread variables, nn_core importable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(LAUNCHER_VARS) and k not in _parallel.THREAD_ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH"))
                                        if p)
    env.update(extra)
    return env


def mpirun(worker, *args, n=2, via_mpi4py=True, timeout=120, env=None):
    """Run ``tests/mpi_workers/<worker>`` on ``n`` ranks; returns (CompletedProcess, s)."""
    cmd = [MPIEXEC, *_launcher_flags(), "-n", str(n), sys.executable]
    cmd += ["-m", "mpi4py"] if via_mpi4py else []
    cmd += [os.path.join(WORKERS, worker), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or _env(), cwd=ROOT)
    return proc, time.perf_counter() - t0


def _worker(name):
    spec = importlib.util.spec_from_file_location(f"mpi_worker_{name}",
                                                  os.path.join(WORKERS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not called init(), outside any launcher; restored after."""
    saved = _world._WORLD
    for k in list(os.environ):
        if k.startswith(LAUNCHER_VARS):
            monkeypatch.delenv(k)
    _world._WORLD = None
    yield
    _world._WORLD = saved


@pytest.fixture
def standalone(fresh):
    return dist.init()


# ------------------------------------------------------------- one process --
def test_calls_before_init_raise(fresh):
    for fn in (dist.rank, dist.size, dist.barrier, dist.world):
        with pytest.raises(RuntimeError, match=r"init\(\) must be called first"):
            fn()


def test_standalone_is_a_no_op_world(standalone):
    w = standalone
    assert (w.rank, w.size, w.local_rank, w.local_size, w.threads, w.comm) == \
        (0, 1, 0, 1, None, None)
    assert dist.init() is w and dist.is_initialized()
    a = np.arange(4.0)
    assert dist.all_reduce(a) is a and a.tolist() == [0, 1, 2, 3]
    assert dist.broadcast(a) is a
    assert dist.allreduce_scalar(3) == 3 and isinstance(dist.allreduce_scalar(3), int)
    assert dist.allreduce_scalar(np.float32(2.5), "max") == 2.5
    assert dist.all_sum({"n": np.int64(4), "loss": 1.5}) == {"n": 4, "loss": 1.5}
    assert dist.broadcast_object({"x": 1}) == {"x": 1}
    dist.barrier()
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(a, "mean")
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        dist.all_reduce(np.arange(8.0)[::2])
    with pytest.raises(TypeError, match="must be a numpy array"):
        dist.broadcast([1.0])
    with pytest.raises(TypeError, match=r"values\['x'\] must be a number"):
        dist.all_sum({"x": "1"})


@pytest.mark.parametrize("env, size", [
    ({}, 1),
    ({"PMI_SIZE": "4", "PMI_RANK": "1"}, 4),                      # MPICH / Intel MPI
    ({"OMPI_COMM_WORLD_SIZE": "3"}, 3),                           # Open MPI
    ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5"}, 8),      # srun
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, 1),              # the sbatch script itself
    ({"PMI_SIZE": "4", "NN_CORE_DISTRIBUTED": "0"}, 1),
    ({"NN_CORE_DISTRIBUTED": "1"}, None),                         # size from MPI itself
])
def test_launcher_detection(fresh, monkeypatch, env, size):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _launcher._launched()[0] == size


def test_launched_without_mpi4py_says_how_to_install(fresh, monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)       # import fails
    with pytest.raises(ImportError, match=r"nn_core\[mpi\]"):
        dist.init()
    assert _world._WORLD is None


def test_mpi_of_another_size_than_the_launcher_is_an_error(fresh, monkeypatch):
    # e.g. the mpich wheel's mpi4py under Open MPI's mpirun: every rank is a singleton
    world = types.SimpleNamespace(Get_size=lambda: 1)
    MPI = types.SimpleNamespace(COMM_WORLD=world,
                                Get_library_version=lambda: "MPICH Version: 5\n")
    monkeypatch.setitem(sys.modules, "mpi4py", types.SimpleNamespace(MPI=MPI))
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", MPI)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="launcher started 2 processes .* MPI sees 1"):
        dist.init()


def test_shard_splits_rows_contiguously():
    assert [dist.shard_slice(7, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 7)]
    assert [dist.shard_slice(10, r, 4) for r in range(4)] == \
        [slice(0, 2), slice(2, 5), slice(5, 7), slice(7, 10)]
    x, y = np.arange(14).reshape(7, 2), np.arange(7)
    batch = {"x": x, "pair": (y, [y, 5]), "none": None}
    parts = [dist.shard(batch, r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), x)
    assert [len(p["pair"][1][0]) for p in parts] == [2, 2, 3]
    assert parts[2]["pair"][1][1] == 5 and parts[0]["none"] is None
    assert isinstance(parts[0]["pair"], tuple) and isinstance(parts[0]["pair"][1], list)
    with pytest.raises(ValueError, match="same length along axis 0"):
        dist.shard((x, np.arange(6)), 0, 2)
    with pytest.raises(ValueError, match="batch of 1 rows cannot be shared by 2 ranks"):
        dist.shard(np.arange(1), 0, 2)
    with pytest.raises(ValueError, match="no array"):
        dist.shard((1, None), 0, 2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, size\)"):
        dist.shard_slice(4, 2, 2)


def _net(dtype=np.float64):
    return Sequential(Linear(3, 8, dtype=dtype, rng=0), Tanh(dtype=dtype),
                      Linear(8, 2, dtype=dtype, rng=1))


def _train(model, step, rng_seed=0, steps=5):
    rng = np.random.default_rng(rng_seed)
    loss_fn = MSELoss(dtype=model.dtype)
    for _ in range(steps):
        x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
        loss_fn(model(x), y)
        model.backward(loss_fn.backward()[0])
        step()


def test_standalone_optimizer_is_the_plain_optimizer(standalone):
    plain, wrapped = _net(), _net()
    opt = AdamW(plain, lr=0.05)

    def plain_step():
        clip_grad_norm(plain, 0.1)
        opt.step()
        opt.zero_grad()

    dopt = dist.DistributedOptimizer(AdamW(wrapped, lr=0.05), wrapped, clip=0.1)
    norms = []

    def dist_step():
        norms.append(dopt.step(weight=6))
        dopt.zero_grad()

    _train(plain, plain_step)
    _train(wrapped, dist_step)
    for k, v in plain.parameters().items():
        np.testing.assert_array_equal(wrapped.parameters()[k], v)
    assert all(n > 0.1 for n in norms)                         # clipping was active
    assert not dopt.flat_grads.any() and dopt.comm_seconds == 0.0
    assert wrapped.gradients()["0.W"].base is dopt.flat_grads  # views, nothing copied


def test_optimizer_built_before_flattening_follows_the_parameters(standalone):
    model = _net()
    opt = AdamW(model, lr=0.05)                     # holds the arrays before the move
    dopt = dist.DistributedOptimizer(opt, model)
    before = {k: v.copy() for k, v in model.parameters().items()}
    _train(model, lambda: (dopt.step(), dopt.zero_grad()), steps=1)
    assert all(opt.params[k] is v for k, v in model.parameters().items())
    assert all(not np.array_equal(v, before[k]) for k, v in model.parameters().items())


def test_schedule_and_state_pass_through(standalone):
    model = _net()
    dopt = dist.DistributedOptimizer(AdamW(model, lr=0.1), model)
    sched = WarmupCosine(dopt, warmup_steps=2, total_steps=10)
    assert dopt.lr == dopt.optimizer.lr == 0.05
    sched.step()
    assert dopt.optimizer.lr == 0.1
    _train(model, dopt.step, steps=1)
    state = dopt.state_dict()
    assert state["step_count"] == 1
    dopt.load_state_dict(state)


def test_optimizer_argument_errors(standalone):
    model = _net()
    with pytest.raises(TypeError, match="nn_core.optim.Optimizer"):
        dist.DistributedOptimizer(object(), model)
    with pytest.raises(ValueError, match="not parameters of the module"):
        dist.DistributedOptimizer(AdamW(_net(), lr=1.0), Linear(3, 2, rng=0))
    dopt = dist.DistributedOptimizer(AdamW(model, lr=0.1), model)
    with pytest.raises(ValueError, match="total_weight needs weight"):
        dopt.step(total_weight=3)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        dopt.step(weight=-1)
    with pytest.raises(TypeError, match="weight must be a real number"):
        dopt.step(weight="3")
    with pytest.raises(ValueError, match="exceeds total_weight"):
        dopt.step(weight=4, total_weight=3)
    assert dopt.step(weight=0, total_weight=0) is None      # nothing to learn from
    with pytest.raises(ValueError, match="average=True only"):
        dist.DistributedOptimizer(AdamW(model, lr=0.1), model, average=False).step(weight=2)
    model[0].add_param("W", np.zeros((3, 8)))                  # replaced behind its back
    with pytest.raises(RuntimeError, match="parameters were replaced"):
        dopt.step()


def test_docstring_examples():
    attempted = 0
    for info in pkgutil.iter_modules(dist.__path__):          # the package's modules
        result = doctest.testmod(importlib.import_module(f"{dist.__name__}.{info.name}"))
        assert result.failed == 0, info.name
        attempted += result.attempted
    assert attempted > 0


def test_abort_on_error_is_transparent_on_one_process(standalone):
    @dist.abort_on_error()
    def fails():
        raise KeyError("x")

    with pytest.raises(KeyError):
        fails()
    with pytest.raises(SystemExit):
        with dist.abort_on_error():
            sys.exit(2)


# ------------------------------------------------------------- MPI jobs --
def test_plain_process_does_not_import_mpi4py():
    out = subprocess.run([sys.executable, os.path.join(WORKERS, "info.py")],
                         capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (info,) = json.loads(out.stdout)
    assert info["size"] == 1 and not info["mpi_imported"] and info["threads"] is None
    assert info["sum"] == {"one": 1, "rank": 0.0}


@needs_mpi
def test_two_processes_equal_one_process(tmp_path):
    proc, _ = mpirun("equal_steps.py", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    E = _worker("equal_steps")
    for kind, dtype, weighted in E.CONFIGS:
        ref = E.run(kind, dtype)                       # one process, the whole batch
        r0, r1 = (dict(np.load(tmp_path / f"{E.name(kind, dtype, weighted)}-rank{r}.npz"))
                  for r in (0, 1))
        # the ranks trained on different rows and different token counts ...
        assert (r0["counts"] != r1["counts"]).any()
        np.testing.assert_array_equal(r0["counts"] + r1["counts"], ref["counts"])
        # ... and hold the same parameters, bit for bit
        for k in r0:
            if k != "counts":
                np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
        tol = 1e-9 if dtype == "float64" else 1e-4
        diff = {k: float(np.max(np.abs(ref[k] - r0[k]))) for k in ref
                if k != "counts" and not k.endswith(E.ZERO_GRAD)}
        if weighted:
            assert max(diff.values()) < tol, sorted(diff.items(), key=lambda kv: -kv[1])[:3]
        else:   # plain averaging over ranks of unequal token counts is another gradient
            assert diff["logits"] > 1e3 * tol


@needs_mpi
@pytest.mark.parametrize("mode, status", [("raise", 1), ("exit", 3)])
def test_a_failing_rank_ends_the_job_in_seconds(mode, status):
    # plain `python worker.py` (not `-m mpi4py`, which would abort by itself): the
    # abort must come from nn_core.distributed
    # without the abort the healthy rank waits forever: subprocess's timeout turns that
    # hang into a failure (no measured time is asserted)
    proc, _ = mpirun("fail.py", mode, via_mpi4py=False, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr
    if mode == "raise":
        assert "[rank 1] Traceback (most recent call last):" in err, err
        assert "[rank 1] ValueError: deliberate failure on rank 1" in err
    assert f"[rank 1] nn_core.distributed: aborting all 2 ranks (exit status {status})" in err, \
        (proc.returncode, proc.stdout[-2000:], err[-2000:])


@needs_mpi
def test_thread_budget_is_shared_by_the_ranks_of_a_node():
    proc, _ = mpirun("info.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = json.loads(proc.stdout)
    expected = max(1, _parallel.available_cores() // 2)
    assert [i["rank"] for i in infos] == [0, 1] and {i["size"] for i in infos} == {2}
    assert {i["local_size"] for i in infos} == {2}
    assert all(i["threads"] == expected == i["budget"] for i in infos), infos
    assert all(i["sum"] == {"one": 2, "rank": 1.0} for i in infos)


@needs_mpi
def test_a_thread_count_set_by_the_user_is_kept():
    cores = _parallel.available_cores()         # OpenBLAS caps its count at the cores
    proc, _ = mpirun("info.py", env=_env(OPENBLAS_NUM_THREADS=str(cores)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = json.loads(proc.stdout)
    assert len(infos) == 2 and all(i["threads"] is None for i in infos), infos
    assert all(i["budget"] == cores for i in infos), infos


def test_bench_runs_every_configuration(capsys):
    from nn_core.bench import distributed as bench
    assert bench.main(["--models", "lm", "--steps", "1", "--warmup", "0", "--repeat", "1",
                       "--no-allreduce"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    configs = {(r[1], r[3]) for r in rows if r[:1] == ["lm"] and r[2:3] == ["x"]}
    assert configs == {("1", "1"), ("1", "2")} | (
        {("2", "1")} if HAVE_MPI4PY and MPIEXEC else set())


def _cli(args, n=None, cwd=None, timeout=180):
    """``nn-core ARGS`` (under ``mpiexec -n n`` if given); returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "nn_core", *args]
    if n is not None:
        cmd = [MPIEXEC, *_launcher_flags(), "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=cwd)


_SMALL = ["seq2seq", "--train-size", "192", "--val-size", "32", "--epochs", "2",
          "--hidden", "16", "--dtype", "float64"]


@needs_mpi
def test_cli_two_processes_train_as_one_on_the_global_batch(tmp_path):
    """`mpiexec -n 2 nn-core train --batch-size 12` = `nn-core train --batch-size 24`:
    rank 0 alone prints and writes, the ranks' losses are weighted by their tokens,
    a run stopped by --max-steps resumes across the ranks, `nn-core eval` loads it."""
    one = _cli(["train", *_SMALL, "--batch-size", "24", "--out", "one"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(["train", *_SMALL, "--batch-size", "12", "--out", "two", "--max-steps", "5"],
               n=2, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("nn-core train seq2seq:") == 1          # rank 0 prints
    assert "batches of 12 per process x 2 processes = 24" in two.stdout
    assert sorted(set(os.listdir(tmp_path / "two")) - {"loss_curve.png"}) == [
        "history.csv", "history.json", "model.npz"]                # (the PNG: matplotlib)
    again = _cli(["train", "--resume", "--out", "two"], n=2, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    a = nn_core.load(str(tmp_path / "one" / "model.npz")).parameters()
    b = nn_core.load(str(tmp_path / "two" / "model.npz")).parameters()
    assert set(a) == set(b)
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert diff < 1e-9, diff
    ev = _cli(["eval", "two"], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "exact match" in ev.stdout


@needs_mpi
def test_cli_run_resumes_only_with_as_many_processes(tmp_path):
    part = _cli(["train", *_SMALL, "--batch-size", "12", "--out", "run", "--max-steps", "2"],
                n=2, cwd=tmp_path)
    assert part.returncode == 0, part.stderr[-3000:]
    solo = _cli(["train", "--resume", "--out", "run"], cwd=tmp_path)
    assert solo.returncode == 1
    assert "trained by 2 process(es) with a batch of 12 each" in solo.stderr, solo.stderr


@needs_mpi
def test_trainer_fit_on_two_processes_equals_one(tmp_path):
    proc, _ = mpirun("trainer_fit.py", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    W = _worker("trainer_fit")
    model, h = W.run(8)                                  # one process, the global batch
    got = dict(np.load(tmp_path / "rank0.npz"))
    np.testing.assert_allclose(got.pop("step_loss"), h.step_loss, rtol=1e-12)
    np.testing.assert_allclose(got.pop("val_loss"), h.history["val_loss"], rtol=1e-12)
    for k, v in model.parameters().items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-12, err_msg=k)
    assert sorted(set(os.listdir(tmp_path / "run")) - {"loss_curve.png"}) == [
        "history.csv", "history.json", "model.npz"]                # (the PNG: matplotlib)

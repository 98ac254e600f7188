"""The runner end to end on real Fashion-MNIST batches with tiny ResNet-26 models.

Covers: records and results table, skip on rerun, failure isolation (exception,
NaN loss, out of memory), Ctrl-C, SIGKILL in the middle of a cell and resume
from its checkpoint, shards into one directory, submitit's local executor,
--dry-run --format csv, and the CLI's one-line errors.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout

import pandas as pd
import pytest
import torch
import yaml

from bench.cli import main as cli_main
from bench.runner import records as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# only the tests that train or read data need Fashion-MNIST; listing cells, errors and exit-code
# bookkeeping run everywhere
needs_data = pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist")
                                and not os.environ.get("ACMIX_TEST_DATA"),
                                reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")


def tiny_config(tmp_path, name="tiny", seeds=(0,), operators=("conv",), shifts=("fixed",), **sections):
    raw = {
        "name": name,
        "matrix": {"backbones": ["resnet26"], "operators": list(operators), "shifts": list(shifts),
                   "mixings": ["learnable"], "datasets": ["fashion_mnist"], "seeds": list(seeds)},
        "model": {"stem": "small", "widths": [8, 8, 8, 8]},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "log_every_n_steps": 1, "checkpoint_every_n_steps": 1},
        "data": {"batch_size": 16, "train_subset": 64, "val_subset": 16, "test_subset": 24, "augment": False,
                 "image_size": 16},
        "optim": {"lr": 0.05},
        "measure": {"voices": ["formula"], "speed": False, "threads": 1},
        "report": False,
    }
    for sec, upd in sections.items():
        raw[sec].update(upd) if isinstance(raw.get(sec), dict) else raw.__setitem__(sec, upd)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def run_cli(*argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(list(argv))
    return rc, buf.getvalue()


def finishes(out):
    ev = [json.loads(x) for x in open(os.path.join(out, "events.jsonl"))]
    n = {}
    for e in ev:
        if e["event"] == "finish":
            n[e["cell_id"]] = n.get(e["cell_id"], 0) + 1
    return n, ev


@needs_data
def test_run_records_results_and_skip(tmp_path):
    cfg = tiny_config(tmp_path, seeds=(0,), operators=("conv", "acmix"),
                      measure={"voices": ["formula", "fvcore"], "speed": True, "batch_size": 4, "threads": 1,
                               "min_run_time": 0.05, "repeats": 3})
    out = str(tmp_path / "out")
    rc, text = run_cli("run", cfg, "--out", out, "--no-progress")
    assert rc == 0, text
    recs = {r["cell_id"]: r for r in R.read_records(out)}
    assert len(recs) == 2
    for r in recs.values():
        R.validate_record(r)
        assert r["status"] == "ok", r["reason"]
        m = r["metrics"]
        assert 0.0 <= m["top1"] <= m["top5"] <= 1.0 and m["steps"] == 4 and m["epochs"] == 1
        assert r["counts"]["unit"] == "MACs" and r["counts"]["input_size"] == [1, 16, 16]
        assert set(r["counts"]["voices"]) == {"formula", "fvcore"}
        assert r["counts"]["voices"]["formula"]["total"]["macs"] > 0
        s = r["speed"]
        assert s["infer_samples_per_s"]["n"] == 3 and s["infer_samples_per_s"]["median"] > 0
        assert s["latency_b1_ms"]["median"] > 0 and s["train_samples_per_s"]["median"] > 0
        if os.path.exists("/proc/self/clear_refs"):
            assert s["peak_mem_mb"] > 50  # peak RSS of the process (torch alone is more)
        assert r["env"]["threads"] >= 1 and r["env"]["torch"] == torch.__version__
        assert r["wall_s"] > 0 and r["finished_at"] >= r["started_at"]
    acmix = next(r for r in recs.values() if r["cell"]["op"] == "acmix")
    conv = next(r for r in recs.values() if r["cell"]["op"] == "conv")
    assert acmix["cell"]["shift"] == "fixed" and acmix["mixing_by_depth"]
    assert [d["depth"] for d in acmix["mixing_by_depth"]] == list(range(len(acmix["mixing_by_depth"])))
    assert "stage2.attention" in acmix["counts"]["voices"]["formula"]
    assert conv["mixing_by_depth"] == [] and conv["cell"]["shift"] is None
    # provenance: which Stage II kernels ran, on which CPU, counted by which library versions
    from bench.runner.provenance import stage2_backends

    assert set(acmix["env"]["stage2_backend"]) == {"ACmix"} and conv["env"]["stage2_backend"] == {}
    assert acmix["env"]["stage2_backend"] == stage2_backends(X_build(acmix))
    assert set(acmix["env"]["counting"]) == {"fvcore", "ptflops"} and acmix["env"]["cpu"]
    assert isinstance(acmix["env"]["git_dirty"], bool) == (acmix["env"]["git_commit"] is not None)
    csv = pd.read_csv(os.path.join(out, "results.csv"))
    assert sorted(csv.cell_id) == sorted(recs) and (csv.status == "ok").all()
    from bench.runner.cells import expand
    from bench.runner.config import load_config

    plan = json.load(open(os.path.join(out, "plan.json")))
    assert plan["cells"] == [c["cell_id"] for c in expand(load_config(cfg))] and sorted(plan["cells"]) == sorted(recs)
    assert plan["config"] == "tiny" and plan["config_file"] == cfg
    # the report reads its equivalence margin from the plan (report: false -> defaults filled in)
    assert plan["report"] == {"run": False, "margin": 0.5}
    assert not os.listdir(os.path.join(out, "ckpt"))  # checkpoints of finished cells removed
    assert "ok" in text and "top1=" in text
    before = {k: os.path.getmtime(R.record_path(out, k)) for k in recs}
    rc, text = run_cli("run", cfg, "--out", out, "--no-progress")
    assert rc == 0 and "2 already finished, 0 to run" in text
    assert before == {k: os.path.getmtime(R.record_path(out, k)) for k in recs}
    n, _ = finishes(out)
    assert n == {k: 1 for k in recs}


def X_build(rec):
    """The model a record's cell ran (its cell and widths)."""
    from bench.runner.execute import build_model

    return build_model({"model": rec["cell"]["model"], "overrides": rec["cell"]["overrides"]}, rec["widths"])


class _Poison(torch.nn.Module):
    def __init__(self, inner, kind):
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        y = self.inner(x)
        if self.kind == "nan" and self.training:
            return y * float("nan")
        if self.kind == "oom" and self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return y


@needs_data
def test_failures_are_isolated(tmp_path, monkeypatch):
    from bench.runner import cells as C
    from bench.runner import execute as X
    from bench.runner.config import load_config

    cfg = load_config(tiny_config(tmp_path, seeds=(0, 1, 2, 3)))
    cells = C.expand(cfg)
    plan = {cells[0]["cell_id"]: "boom", cells[1]["cell_id"]: "nan", cells[2]["cell_id"]: "oom"}
    real = X.build_model

    def build(cell, widths=None):
        kind = plan.get(cell.get("cell_id"))
        if kind == "boom":
            raise RuntimeError("synthetic failure while building\nsecond line")
        m = real(cell, widths)
        return _Poison(m, kind) if kind else m

    monkeypatch.setattr(X, "build_model", build)
    out = str(tmp_path / "out")
    res = X.run_matrix(cfg, cells, out, progress=False, echo=lambda *a: None)
    assert res["status"] == {"failed": 1, "nan": 1, "oom": 1, "ok": 1}
    recs = {r["cell_id"]: r for r in R.read_records(out)}
    st = {cid: (recs[cid]["status"], recs[cid]["reason"]) for cid in recs}
    assert st[cells[0]["cell_id"]] == ("failed", "RuntimeError: synthetic failure while building second line")
    assert st[cells[1]["cell_id"]][0] == "nan" and "loss is nan" in st[cells[1]["cell_id"]][1]
    assert st[cells[2]["cell_id"]][0] == "oom" and "out of memory" in st[cells[2]["cell_id"]][1]
    assert st[cells[3]["cell_id"]] == ("ok", None)
    for r in recs.values():
        R.validate_record(r)
    # a failed cell is finished: skipped on rerun unless --retry-failed
    todo, done = X.pending(cells, out)
    assert todo == [] and len(done) == 4
    todo, _ = X.pending(cells, out, retry_failed=True)
    assert len(todo) == 3


def _default_sigint():
    # the run starts as from a terminal: Ctrl-C raises KeyboardInterrupt. A child inherits an ignored SIGINT
    # (Python then never installs its handler), and the test process may have one: Lightning ignores SIGINT
    # around its distributed teardown, and a test worker can inherit that from an earlier in-process run
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(cfg, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", cfg, "--out", out, "--no-progress", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)


def _wait_for(pred, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _mid_cell(out, k):
    """True once the k-th cell (0-based) started and wrote a checkpoint."""
    def pred():
        p = os.path.join(out, "events.jsonl")
        if not os.path.exists(p):
            return False
        starts = [json.loads(x)["cell_id"] for x in open(p) if '"start"' in x]
        if len(starts) <= k:
            return False
        return os.path.exists(os.path.join(out, "ckpt", starts[k], "last.ckpt"))
    return pred


@needs_data
def test_sigkill_mid_cell_then_rerun_records_each_cell_once(tmp_path):
    # 2 cells, 8 steps each, a checkpoint every step: kill during the second cell's training
    cfg = tiny_config(tmp_path, seeds=(0, 1), data={"train_subset": 128})
    out = str(tmp_path / "out")
    p = _spawn(cfg, out)
    ok = _wait_for(_mid_cell(out, 1), p)
    os.killpg(p.pid, signal.SIGKILL)
    log = p.communicate()[0]
    assert ok, log[-3000:]
    recs = {r["cell_id"]: r for r in R.read_records(out)}
    assert sorted(r["status"] for r in recs.values()) == ["ok", "running"]
    killed = next(cid for cid, r in recs.items() if r["status"] == "running")
    p = _spawn(cfg, out)
    log = p.communicate(timeout=400)[0]
    assert p.returncode == 0, log[-3000:]
    recs = {r["cell_id"]: r for r in R.read_records(out)}
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs.values())
    assert recs[killed]["resumed_from"] == f"ckpt/{killed}/last.ckpt"
    assert recs[killed]["metrics"]["steps"] == 8
    n, _ = finishes(out)
    assert n == {cid: 1 for cid in recs}  # every cell recorded (finished) exactly once
    assert sorted(os.listdir(os.path.join(out, "cells"))) == sorted(f"{c}.json" for c in recs)


@needs_data
def test_ctrl_c_stops_cleanly_and_resumes(tmp_path):
    # 32 steps per cell, a checkpoint every step: long enough that the signal lands mid-cell
    # even on an idle machine (with 4 steps the whole matrix could end between two polls)
    cfg = tiny_config(tmp_path, seeds=(0, 1, 2), data={"train_subset": 512})
    out = str(tmp_path / "out")
    p = _spawn(cfg, out)
    ok = _wait_for(_mid_cell(out, 1), p)
    os.killpg(p.pid, signal.SIGINT)
    log = p.communicate(timeout=120)[0]
    assert ok, log[-3000:]
    assert p.returncode == 130, log[-3000:]
    assert "interrupted" in log and "Traceback" not in log
    st = sorted(r["status"] for r in R.read_records(out))
    assert st == ["interrupted", "ok"], st
    assert os.path.exists(os.path.join(out, "results.csv"))
    p = _spawn(cfg, out)
    log = p.communicate(timeout=400)[0]
    assert p.returncode == 0, log[-3000:]
    assert sorted(r["status"] for r in R.read_records(out)) == ["ok"] * 3


@needs_data
def test_shards_and_submitit_local_share_one_directory(tmp_path):
    cfg = tiny_config(tmp_path, seeds=(0, 1), data={"train_subset": 32})
    out = str(tmp_path / "out")
    rc, text = run_cli("run", cfg, "--out", out, "--shard", "0/2", "--no-progress")
    assert rc == 0, text
    assert len(R.read_records(out)) == 1
    rc, text = run_cli("run", cfg, "--out", out, "--shard", "1/2", "--executor", "local")
    assert rc == 0, text
    assert "submitted 1 job(s) to local" in text
    recs = R.read_records(out)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    assert len(pd.read_csv(os.path.join(out, "results.csv"))) == 2
    # every cell already finished: nothing submitted
    rc, text = run_cli("run", cfg, "--out", out, "--executor", "local")
    assert rc == 0 and "0 to submit" in text


def test_dry_run_csv_and_overrides(tmp_path):
    cfg = tiny_config(tmp_path, seeds=(0, 1), operators=("conv", "sa", "acmix"), shifts=("tensor", "multigroup"))
    rc, text = run_cli("run", cfg, "--dry-run", "--format", "csv")
    assert rc == 0
    df = pd.read_csv(io.StringIO(text))
    assert len(df) == 8 and list(df.columns[:8]) == ["cell_id", "model", "backbone", "op", "shift", "mixing",
                                                     "dataset", "seed"]
    rc, text2 = run_cli("run", cfg, "--dry-run", "--format", "csv", "--max-epochs", "3",
                        "--limit-train-batches", "0.5")
    ids2 = set(pd.read_csv(io.StringIO(text2)).cell_id)
    assert ids2.isdisjoint(df.cell_id)  # quick-run overrides change the ids
    rc, text3 = run_cli("run", cfg, "--dry-run", "--format", "csv", "--shard", "1/3")
    assert len(pd.read_csv(io.StringIO(text3))) == 3


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"matrix": {"backbones": ["resnet26"], "operators": ["conv"],
                                              "datasets": ["mnist"]}}))
    assert cli_main(["run", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "matrix.datasets[0]" in err and "'fashion_mnist'" in err
    cfg = tiny_config(tmp_path)
    assert cli_main(["run", cfg, "--dry-run", "--shard", "3/2"]) == 2
    assert "--shard" in capsys.readouterr().err


@needs_data
def test_overhead_command_prints_both_loops():
    rc, text = run_cli("overhead", "--model", "resnet26-conv", "--widths", "8", "8", "8", "8", "--batch-size", "8",
                       "--steps", "3", "--warmup", "1", "--repeats", "1", "--threads", "1")
    assert rc == 0, text
    lines = text.splitlines()
    bare = next(x for x in lines if x.strip().startswith("bare PyTorch"))
    light = next(x for x in lines if x.strip().startswith("Lightning Trainer"))
    assert float(bare.split()[2]) > 0 and float(light.split()[4]) > 0
    assert "Lightning / bare =" in text


@needs_data
def test_prepare_says_where_the_data_comes_from(tmp_path):
    from bench.runner.prepare import prepare

    msg = prepare("fashion_mnist", None, allow_apt=False)
    assert msg.startswith("data: Fashion-MNIST from ") and ("dataset-fashion-mnist" in msg or "download" in msg)
    with pytest.raises(ValueError, match="datamodules has no|unknown|allowed"):
        from bench.runner.execute import create_dm
        create_dm("no_such_dataset")


def test_slurm_executor_without_slurm_is_a_clear_error(tmp_path, capsys):
    import shutil
    if shutil.which("srun") or shutil.which("sbatch"):
        pytest.skip("a Slurm cluster is present")
    cfg = tiny_config(tmp_path)
    assert cli_main(["run", cfg, "--out", str(tmp_path / "o"), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--executor slurm" in err and "srun" in err


@needs_data
def test_exit_code_names_cells_not_ok(tmp_path, monkeypatch):
    """A cell that ends failed makes `run` exit 1 and the summary names it; a clean rerun (skip) still exits 1
    because the matrix still holds the failure; --retry-failed with the fault gone exits 0."""
    from bench.run_cli import EXIT_CELLS_NOT_OK
    from bench.runner import execute as X
    from bench.runner.cells import expand
    from bench.runner.config import load_config

    cfg = tiny_config(tmp_path, seeds=(0, 1))
    ids = [c["cell_id"] for c in expand(load_config(cfg))]
    real = X.build_model

    def build(cell, widths=None):
        if cell.get("cell_id") == ids[1]:
            raise RuntimeError("synthetic failure")
        return real(cell, widths)

    monkeypatch.setattr(X, "build_model", build)
    out = str(tmp_path / "out")
    rc, text = run_cli("run", cfg, "--out", out, "--no-progress")
    assert rc == EXIT_CELLS_NOT_OK == 1, text
    assert "1 cell(s) not ok" in text and f"failed  {ids[1]}: RuntimeError: synthetic failure" in text
    rc, text = run_cli("run", cfg, "--out", out, "--no-progress")
    assert rc == 1 and "0 to run" in text and ids[1] in text
    monkeypatch.setattr(X, "build_model", real)
    rc, text = run_cli("run", cfg, "--out", out, "--no-progress", "--retry-failed")
    assert rc == 0 and "not ok" not in text, text


@needs_data
def test_exit_code_local_executor_nan_cell_and_failed_job(tmp_path, monkeypatch):
    """Under submitit's local executor a cell ending nan exits 1; a job-level failure exits 3 and is named."""
    from bench.run_cli import EXIT_JOBS_FAILED
    from bench.runner import submit as S

    cfg = tiny_config(tmp_path, optim={"lr": 1e30, "momentum": 0.0, "nesterov": False})
    out = str(tmp_path / "out")
    rc, text = run_cli("run", cfg, "--out", out, "--executor", "local")
    recs = R.read_records(out)
    assert [r["status"] for r in recs] == ["nan"], text
    assert rc == 1 and "1 cell(s) not ok" in text and recs[0]["cell_id"] in text

    def crashed(cfg_, todo, out_, **kw):
        return [], [{"job_id": "4242", "cell_id": todo[0]["cell_id"], "error": "job killed (time-out)"}]

    monkeypatch.setattr(S, "submit", crashed)
    out2 = str(tmp_path / "out2")
    rc, text = run_cli("run", tiny_config(tmp_path, name="other"), "--out", out2, "--executor", "local")
    assert rc == EXIT_JOBS_FAILED == 3, text
    assert "1 job(s) failed" in text and "job 4242" in text and "job killed (time-out)" in text


def test_wait_jobs_collects_job_level_errors(tmp_path):
    from bench.runner.submit import wait_jobs

    class Job:
        def __init__(self, job_id, err=None):
            self.job_id, self.err = job_id, err

        def result(self):
            if self.err:
                raise RuntimeError(self.err)
            return {}

    cells = [{"cell_id": "a"}, {"cell_id": "b"}]
    lines = []
    failed = wait_jobs(cells, [Job(1), Job(2, "Job 2 (task: 0) failed\nwith exit code 137")], str(tmp_path),
                       echo=lines.append)
    assert failed == [{"job_id": "2", "cell_id": "b", "error": "Job 2 (task: 0) failed with exit code 137"}]
    assert lines[-1] == "all 2 job(s) finished (1 with a job-level error)"


def _ppid(pid: int):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_submitit_job_checkpoints_requeues_and_resumes(tmp_path):
    """The job function is a submitit Checkpointable: interrupting a running job (the signal Slurm sends before a
    time-out or preemption) requeues it, and the rerun resumes the cell from its last.ckpt."""
    import submitit

    from bench.runner.cells import expand
    from bench.runner.config import load_config
    from bench.runner.submit import CellsJob

    cfg = load_config(tiny_config(tmp_path, matrix={"backbones": ["resnet26"], "operators": ["conv"],
                                                     "datasets": ["synthetic"], "seeds": [0]},
                                  data={"train_subset": 1024}))
    cell = expand(cfg)[0]["cell_id"]
    out = str(tmp_path / "out")
    assert isinstance(CellsJob(), submitit.helpers.Checkpointable)
    ex = submitit.AutoExecutor(folder=str(tmp_path / "sub" / "%j"), cluster="local")
    ex.update_parameters(timeout_min=30)
    job = ex.submit(CellsJob(), cfg, out, [cell])
    ckpt = os.path.join(out, "ckpt", cell, "last.ckpt")
    t0 = time.time()
    while not os.path.exists(ckpt) and time.time() - t0 < 300 and not job.done():
        time.sleep(0.2)
    assert os.path.exists(ckpt), job.stderr()
    # preempt the running task the way Slurm's signal reaches it: SIGUSR2 to the job's task process (submitit's
    # handler then calls checkpoint() and exits with its requeue code; the local controller starts it again)
    ctl = job._process.pid
    tasks = [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == ctl]
    assert tasks, "the job's task process was not found"
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)
    res = job.result()
    assert res["status"] == {"ok": 1}
    rec = R.read_record(out, cell)
    assert rec["status"] == "ok" and rec["resumed_from"] == f"ckpt/{cell}/last.ckpt"
    assert rec["metrics"]["steps"] == 64  # 1024 samples / batch 16, one epoch, whole despite the requeue
    _, ev = finishes(out)
    assert [e["event"] for e in ev] == ["start", "requeue", "finish", "start", "finish"]
    assert [e.get("status") for e in ev if e["event"] == "finish"] == ["interrupted", "ok"]
    assert "Requeued job" in (job.stderr() or "") + (job.stdout() or "")
    assert "preempted" in (job.stderr() or "") + (job.stdout() or "")


def test_resumed_cell_equals_uninterrupted_cell_bitwise(tmp_path):
    """Kill a cell mid-training (SIGKILL after a checkpoint), resume it: its metrics and final weights equal, bit
    for bit, those of the same cell run without interruption (CPU, one thread, deterministic, augmented data).
    Epoch boundaries, worker processes and dropout: tests/test_resume.py."""
    cfg = tiny_config(tmp_path, operators=("acmix",), matrix={"backbones": ["resnet26"], "operators": ["acmix"],
                                                              "datasets": ["synthetic"], "seeds": [0]},
                      data={"train_subset": 384, "augment": True},
                      trainer={"accelerator": "cpu", "max_epochs": 1, "log_every_n_steps": 1,
                               "checkpoint_every_n_steps": 1, "keep_checkpoints": True, "deterministic": True},
                      optim={"lr": 0.05, "warmup_epochs": 0.25})
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    p = _spawn(cfg, whole)
    log = p.communicate(timeout=900)[0]
    assert p.returncode == 0, log[-3000:]
    p = _spawn(cfg, cut)

    def after_some_steps():
        d = os.path.join(cut, "logs")
        ck = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(cut, "ckpt")) for f in fs if f == "last.ckpt"]
        return bool(ck) and os.path.getsize(ck[0]) > 0 and os.path.isdir(d) and \
            torch.load(ck[0], map_location="cpu", weights_only=False)["global_step"] >= 5
    ok = _wait_for(after_some_steps, p, timeout=600)
    os.killpg(p.pid, signal.SIGKILL)
    log = p.communicate()[0]
    assert ok, log[-3000:]
    (rec,) = R.read_records(cut)
    assert rec["status"] == "running"
    p = _spawn(cfg, cut)
    log = p.communicate(timeout=900)[0]
    assert p.returncode == 0, log[-3000:]
    a, b = R.read_records(whole)[0], R.read_records(cut)[0]
    assert b["resumed_from"] and a["resumed_from"] is None
    assert a["cell_id"] == b["cell_id"] and a["status"] == b["status"] == "ok"
    assert a["metrics"] == b["metrics"] and a["metrics"]["steps"] == 24
    assert a["mixing_by_depth"] == b["mixing_by_depth"]
    wa = torch.load(os.path.join(whole, "ckpt", a["cell_id"], "last.ckpt"), map_location="cpu", weights_only=False)
    wb = torch.load(os.path.join(cut, "ckpt", b["cell_id"], "last.ckpt"), map_location="cpu", weights_only=False)
    assert wa["global_step"] == wb["global_step"] == 24
    assert wa["state_dict"].keys() == wb["state_dict"].keys()
    for k, v in wa["state_dict"].items():
        assert torch.equal(v, wb["state_dict"][k]), k


# ------------------------------------------------------------------ cells side by side (run --jobs N)
@needs_data
def test_jobs_run_cells_side_by_side_once_each(tmp_path):
    """--jobs 2: two worker processes share the matrix through the cell locks; every cell runs exactly once,
    each record says 2 jobs and physical cores / 2 threads, one results table, one exit code."""
    from bench.runner.measure import physical_cores

    cfg = tiny_config(tmp_path, seeds=(0, 1, 2, 3), measure={"voices": ["formula"], "speed": False,
                                                             "threads": "auto"})
    out = str(tmp_path / "out")
    p = _spawn(cfg, out, "--jobs", "2")
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    assert "4 to run, 2 at a time (--jobs 2" in log and "4 ran in 2 worker(s)" in log
    assert "[job 1/2] ok" in log and "[job 2/2] ok" in log and "busy" not in log
    recs = R.read_records(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert {r["speed"]["jobs"] for r in recs} == {2}
    assert {r["speed"]["threads"] for r in recs} == {max(1, physical_cores() // 2)}
    n, ev = finishes(out)
    assert n == {r["cell_id"]: 1 for r in recs}
    assert len({e["pid"] for e in ev if e["event"] == "start"}) == 2  # both workers ran cells
    csv = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(csv) == 4 and (csv.jobs == 2).all()
    # the cell ids do not depend on --jobs: a rerun without it finds everything finished
    rc, text = run_cli("run", cfg, "--out", out, "--no-progress")
    assert rc == 0 and "4 already finished, 0 to run" in text


@needs_data
def test_jobs_not_ok_cell_exits_1_and_ctrl_c_exits_130(tmp_path):
    cfg = tiny_config(tmp_path, seeds=(0, 1), optim={"lr": 1e30, "momentum": 0.0, "nesterov": False})
    out = str(tmp_path / "out")
    p = _spawn(cfg, out, "--jobs", "2")
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 1, log[-3000:]
    assert "2 cell(s) not ok" in log and sorted(r["status"] for r in R.read_records(out)) == ["nan", "nan"]
    # SIGTERM to the parent alone (a scheduler, `kill`): it stops its workers, cells under way are recorded
    # interrupted, exit 130; the rerun resumes them
    cfg = tiny_config(tmp_path, name="long", seeds=(0, 1), data={"train_subset": 512})
    out = str(tmp_path / "out2")
    p = _spawn(cfg, out, "--jobs", "2")
    ok = _wait_for(_mid_cell(out, 1), p)
    p.send_signal(signal.SIGTERM)
    log = p.communicate(timeout=180)[0]
    assert ok, log[-3000:]
    assert p.returncode == 130, log[-3000:]
    assert "interrupted" in log and "Traceback" not in log
    st = [r["status"] for r in R.read_records(out)]
    assert "interrupted" in st and "running" not in st, st
    p = _spawn(cfg, out, "--jobs", "2")
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    recs = R.read_records(out)
    assert sorted(r["status"] for r in recs) == ["ok"] * 2
    assert any(r["resumed_from"] for r in recs)  # the interrupted cell went on from its checkpoint


def test_jobs_errors_are_one_line(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    assert cli_main(["run", cfg, "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--jobs 0" in err
    assert cli_main(["run", cfg, "--out", str(tmp_path / "o"), "--jobs", "2", "--devices", "2",
                     "--strategy", "ddp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--jobs 1" in err and "DDP" in err

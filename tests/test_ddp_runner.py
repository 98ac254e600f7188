"""CPU DDP (2 processes, gloo) through the runner: Lightning's `ddp` strategy launched by the CLI in a
subprocess. The recorded test accuracy must equal a single-process evaluation of the same checkpoint
exactly: the datamodules' unpadded evaluation sampler counts every test sample once (45 samples, 2 ranks)."""
import os
import subprocess
import sys

import pytest
import torch
import yaml

from bench.runner import records as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist")
                                and not os.environ.get("ACMIX_TEST_DATA"),
                                reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")


def test_ddp_two_cpu_processes_match_single_process_eval(tmp_path, ddp_alone):  # ddp_alone: tests/conftest.py
    raw = {
        "name": "ddp",
        "matrix": {"backbones": ["resnet26"], "operators": ["acmix"], "shifts": ["multigroup"],
                   "datasets": ["fashion_mnist"], "seeds": [0]},
        "model": {"stem": "small", "widths": [8, 8, 8, 8]},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "keep_checkpoints": True, "log_every_n_steps": 1},
        "data": {"batch_size": 8, "train_subset": 48, "val_subset": 13, "test_subset": 45, "augment": False,
                 "image_size": 16, "eval_batch_size": 8},
        "optim": {"lr": 0.05},
        "measure": {"voices": ["formula"], "speed": False, "threads": 1},
        "report": False,
    }
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(cfg), "--out", str(out), "--no-progress",
                        "--devices", "2", "--strategy", "ddp"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    recs = R.read_records(str(out))
    assert len(recs) == 1, [r["cell_id"] for r in recs]
    rec = recs[0]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["config"]["trainer"]["devices"] == 2 and rec["config"]["trainer"]["strategy"] == "ddp"
    # 48 train samples / (8 per batch x 2 ranks) = 3 optimiser steps
    assert rec["metrics"]["steps"] == 3

    # single-process evaluation of the checkpoint the DDP run tested
    import lightning.pytorch as pl

    from bench.runner.execute import build_model, make_datamodule
    from bench.runner.config import load_config
    from bench.runner.cells import expand
    from modules.lightning import ImageClassifier

    cfg_d = load_config(str(cfg), {"trainer.devices": 2, "trainer.strategy": "ddp"})
    cell = expand(cfg_d)[0]
    assert cell["cell_id"] == rec["cell_id"]
    ckpt = torch.load(out / "ckpt" / cell["cell_id"] / "last.ckpt", map_location="cpu", weights_only=False)
    lm = ImageClassifier(build_model(cell, rec["widths"]), num_classes=10)
    lm.load_state_dict(ckpt["state_dict"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    res = trainer.test(lm, datamodule=make_datamodule(cell, cfg_d), verbose=False)[0]
    assert res["test/top1"] == rec["metrics"]["top1"]
    assert abs(rec["metrics"]["top1"] * 45 - round(rec["metrics"]["top1"] * 45)) < 1e-4  # whole samples of 45
    assert res["test/top5"] == rec["metrics"]["top5"]
    assert res["test/loss"] == pytest.approx(rec["metrics"]["loss"], rel=1e-6)

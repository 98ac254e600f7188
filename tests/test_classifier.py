"""ImageClassifier: optimisation set-up, metrics, mixing weights, FLOPs for ThroughputMonitor,
short training runs (sanity floors only), and exact evaluation under DDP (subprocess)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn

from datamodules import FashionMNISTDataModule, SyntheticDataModule
from datamodules.fashion_mnist import DEBIAN_DIR
from modules import create_model
from modules.lightning import ImageClassifier, lr_factor, mixing_weights, param_groups

REPO = Path(__file__).resolve().parents[1]
TINY = dict(stem="small", in_chans=1, img_size=16, widths=[4, 4, 8, 8])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _trainer(tmp_path, **kw):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    default_root_dir=str(tmp_path))
    return L.Trainer(**{**defaults, **kw})


def test_no_weight_decay_for_norms_biases_mixing_and_bias_tables():
    m = create_model("swin_micro-acmix")
    decay, no_decay = param_groups(m, 0.05)
    ids = {id(p) for p in no_decay["params"]}
    names = dict(m.named_parameters())
    for n, p in names.items():
        expected_no = p.ndim <= 1 or n.endswith(("alpha", "beta", "relative_position_bias_table"))
        assert (id(p) in ids) == expected_no, n
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert any(n.endswith("stage2.alpha") for n in names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_lr_schedule_warmup_then_cosine():
    assert [round(lr_factor(s, 100, 10), 6) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, floor=0.01) == pytest.approx(0.01)
    assert lr_factor(0, 100, 0) == pytest.approx(1.0)


def test_mixing_weights_by_depth():
    clf = ImageClassifier("resnet26-acmix", num_classes=10, model_kwargs=TINY)
    rows = clf.mixing_weights()
    assert [r["depth"] for r in rows] == list(range(8))
    assert rows[0]["layer"] == "model.layer1.0.conv2" or rows[0]["layer"] == "layer1.0.conv2"
    assert all(r["alpha"] == 0.5 and r["beta"] == 0.5 for r in rows)
    assert mixing_weights(create_model("resnet26-conv", **TINY)) == []
    assert len(mixing_weights(create_model("swin_micro-acmix"))) == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; allowed: sgd, adamw"):
        ImageClassifier("resnet26-conv", 10, optimizer="adam")
    with pytest.raises(ValueError, match="unknown schedule"):
        ImageClassifier("resnet26-conv", 10, schedule="step")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        ImageClassifier("nope", 10)
    with pytest.raises(ValueError, match="label_smoothing"):
        ImageClassifier("resnet26-conv", 10, label_smoothing=1.0)


def test_flops_per_batch_is_exact_for_a_linear_model():
    # Linear 12 -> 3: forward 36 MACs = 72 FLOPs; backward grad-weight 72 FLOPs (the input, like a
    # training image, needs no gradient, so there is no grad-input matmul)
    clf = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), num_classes=3, input_size=(3, 2, 2),
                          batch_size=8)
    assert clf.measure_flops_per_batch() == 144 * 8
    assert clf.measure_flops_per_batch(batch_size=1) == 144
    two = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Linear(5, 3)), num_classes=3,
                          input_size=(12,), batch_size=1)
    # fwd 2*(60+15) = 150; bwd: grad-weights 2*(60+15) = 150, grad-input of the 2nd layer 2*15 = 30
    assert two.measure_flops_per_batch() == 330


def test_short_run_on_synthetic_learns_and_reports(tmp_path):
    from lightning.pytorch.callbacks import ThroughputMonitor
    from lightning.pytorch.loggers import CSVLogger
    L.seed_everything(0)
    dm = SyntheticDataModule(num_classes=4, image_size=16, in_chans=1, train_size=640, test_size=200,
                             val_fraction=0.1, batch_size=32, seed=0)
    clf = ImageClassifier("resnet26-conv", num_classes=4, optimizer="adamw", lr=3e-3, weight_decay=0.01,
                          warmup_epochs=0.2, label_smoothing=0.1, model_kwargs=TINY, input_size=(1, 16, 16),
                          batch_size=32)
    logger = CSVLogger(str(tmp_path), name="run")
    trainer = _trainer(tmp_path, max_epochs=4, logger=logger, log_every_n_steps=5,
                       callbacks=[ThroughputMonitor(batch_size_fn=lambda b: b[0].shape[0], window_size=4)])
    trainer.fit(clf, datamodule=dm)
    res = trainer.test(clf, datamodule=dm, verbose=False)[0]
    assert set(res) >= {"test/top1", "test/top5", "test/loss"}
    assert res["test/top1"] > 0.6  # chance is 0.25
    assert res["test/top5"] == 1.0  # 4 classes: top-5 is top-4
    assert clf.flops_per_batch and clf.flops_per_batch > 0
    import pandas as pd
    cols = pd.read_csv(Path(logger.log_dir) / "metrics.csv").columns
    assert "train/device/flops_per_sec" in cols and "val/top1" in cols, list(cols)


@pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason=f"{DEBIAN_DIR} missing")
def test_fashion_mnist_short_run_sanity_floor(tmp_path):
    L.seed_everything(0)
    dm = FashionMNISTDataModule(batch_size=32, train_subset=2048, val_subset=128, test_subset=500, augment=False)
    clf = ImageClassifier("resnet26-conv", num_classes=10, optimizer="adamw", lr=1e-2, weight_decay=0.01,
                          model_kwargs=dict(stem="small", in_chans=1, img_size=28, widths=[4, 4, 8, 8]))
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(clf, datamodule=dm)
    res = trainer.test(clf, datamodule=dm, verbose=False)[0]
    assert res["test/top1"] > 0.4, res  # chance 0.1; full-length numbers are in the README


DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import lightning as L, torch
    from datamodules import SyntheticDataModule
    from modules.lightning import ImageClassifier

    class AlwaysZero(torch.nn.Module):  # predicts class 0 for every sample
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
        def forward(self, x):
            z = torch.zeros(x.shape[0], 2) + self.w
            z[:, 0] += 1.0
            return z

    dm = SyntheticDataModule(num_classes=2, image_size=8, in_chans=1, train_size=16, test_size=13, val_fraction=0.0,
                             batch_size=4)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    res = trainer.test(ImageClassifier(AlwaysZero(), num_classes=2), datamodule=dm, verbose=False)[0]
    # and a real backbone trains under DDP (no unused parameters, learnable mixing)
    clf = ImageClassifier("resnet26-acmix", num_classes=2, model_kwargs=dict(stem="small", in_chans=1, img_size=8,
                          widths=[4, 4, 4, 4]))
    trainer2 = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=1)
    trainer2.fit(clf, datamodule=dm)
    if trainer.global_rank == 0:
        json.dump({{"top1": res["test/top1"], "world": trainer.world_size,
                   "seen": [len(trainer.test_dataloaders.sampler)]}}, open({out!r}, "w"))
    # as the runner does (bench.runner.execute.close_distributed): without it gloo's threads can abort the
    # interpreter at exit (SIGABRT, "terminate called without an active exception") after all the work is done
    torch.distributed.destroy_process_group()
""")


@pytest.mark.slow
def test_ddp_evaluation_counts_every_sample_once(tmp_path, ddp_alone):  # ddp_alone: tests/conftest.py
    out = tmp_path / "res.json"
    script = tmp_path / "ddp_eval.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world"] == 2
    # labels are i % 2 for i < 13: 7 zeros. Exact: 7/13. Padded to 14 (sample 0 twice) would be 8/14.
    assert res["top1"] == pytest.approx(7 / 13, abs=1e-6)
    assert res["seen"] == [7]  # rank 0 gets samples 0, 2, ..., 12; rank 1 gets 6


def test_measuring_flops_leaves_the_model_unchanged():
    clf = ImageClassifier("resnet26-acmix", num_classes=3, model_kwargs=TINY, input_size=(1, 16, 16), batch_size=4)
    clf.train()
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    assert clf.measure_flops_per_batch() > 0
    assert all(torch.equal(before[k], v) for k, v in clf.model.state_dict().items())  # BN running stats too
    assert all(p.grad is None for p in clf.model.parameters()) and clf.model.training


def _lr_trace(tmp_path, *, max_epochs, max_steps, warmup_epochs, n=64, batch=8, accumulate=1, limit=None):
    """lr of every optimiser step of a real fit: (trace, steps per epoch)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    lrs = []

    class Rec(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))

    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,)))
    m = ImageClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)), num_classes=3, lr=0.1,
                        schedule="cosine", warmup_epochs=warmup_epochs, min_lr=0.001)
    kw = {} if limit is None else {"limit_train_batches": limit}
    tr = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, max_steps=max_steps, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[Rec()], limit_val_batches=0, accumulate_grad_batches=accumulate, **kw)
    tr.fit(m, train_dataloaders=DataLoader(ds, batch_size=batch))
    per_step = {}
    for step, lr in lrs:  # the lr in force for each optimiser step
        per_step.setdefault(step, lr)
    return [per_step[k] for k in sorted(per_step)], tr


@pytest.mark.parametrize("max_epochs,max_steps,total", [(3, -1, 24), (None, 20, 20), (5, 20, 20), (2, 100, 16)])
def test_warmup_and_cosine_for_every_stopping_rule(tmp_path, max_epochs, max_steps, total):
    """8 steps per epoch, warm-up 1.5 epochs = 12 steps in every case: it ends, and the cosine reaches min_lr at
    the last step whether the run stops on max_epochs, max_steps (max_epochs then -1 in Lightning) or both."""
    trace, tr = _lr_trace(tmp_path, max_epochs=max_epochs, max_steps=max_steps, warmup_epochs=1.5)
    assert tr.global_step == total and len(trace) == total
    warm = 12
    assert trace[:warm] == pytest.approx([0.1 * (s + 1) / warm for s in range(warm)])
    expect = [0.1 * lr_factor(s, total, warm, 0.01) for s in range(total)]
    assert trace == pytest.approx(expect)
    if total > warm:
        assert trace[warm] == pytest.approx(0.1) and trace[-1] < 0.1 * 0.5


def test_warmup_counts_epochs_of_optimizer_steps(tmp_path):
    # 64 samples / batch 8 = 8 batches, limited to 6, accumulating 4 -> 2 optimiser steps per epoch
    trace, tr = _lr_trace(tmp_path, max_epochs=None, max_steps=6, warmup_epochs=1.0, accumulate=4, limit=6)
    assert tr.global_step == 6
    assert trace[:2] == pytest.approx([0.05, 0.1])
    # warm-up longer than the run: capped at the run, no error
    trace, _ = _lr_trace(tmp_path, max_epochs=1, max_steps=-1, warmup_epochs=10.0)
    assert trace == pytest.approx([0.1 * (s + 1) / 8 for s in range(8)])

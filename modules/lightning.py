"""`ImageClassifier`: the classification LightningModule for any backbone of the suite.

The module knows the model and the optimisation; data and hardware belong to the
DataModule and the Trainer. Metrics are torchmetrics objects (top-1, top-5,
mean loss), so their states are summed across ranks at compute(): with the
DataModules' unpadded evaluation sampler every test sample counts exactly once.

Optimisers: "sgd" (momentum, optional Nesterov) or "adamw"; schedule "cosine"
(per step, optional linear warm-up) or "none". Weight decay applies only to
weight matrices and kernels: norms, biases, ACmix mixing scalars (alpha, beta)
and Swin's relative position bias tables get none.

Checkpoints also hold the process's random number generator states (torch,
CUDA, numpy, random; Lightning saves none of them), restored when training
resumes, so stochastic layers (dropout, stochastic depth) draw what they would
have drawn without the interruption.
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchmetrics

from .names import OPTIMIZERS, SCHEDULES

_NO_DECAY_NAMES = ("relative_position_bias_table", "alpha", "beta")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decayed, not decayed] parameter groups (no decay: ndim <= 1, mixing scalars, bias tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (no_decay if p.ndim <= 1 or leaf in _NO_DECAY_NAMES else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Multiplier of the base lr at optimiser step `step`: linear warm-up over `warmup`
    steps (1/warmup .. 1), then cosine from 1 down to `floor` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def optimizer_steps_per_epoch(trainer) -> int | None:
    """Optimiser steps in one training epoch (limit_train_batches and gradient accumulation applied);
    None for a loader without a length."""
    if trainer.train_dataloader is None:  # max_steps-only runs have not loaded it yet at configure_optimizers
        trainer.fit_loop.setup_data()
    n = trainer.num_training_batches
    if n == float("inf"):
        return None
    return max(1, math.ceil(n / trainer.accumulate_grad_batches))


def schedule_steps(trainer, warmup_epochs: float) -> tuple[int, int]:
    """(total, warmup) optimiser steps of the schedule for any stopping rule: max_epochs only, max_steps only
    (Lightning then sets max_epochs to -1) or both (whichever ends first). The warm-up length is counted in
    epochs of this loader, never derived from max_epochs, and never runs past the end of training."""
    total = trainer.estimated_stepping_batches
    if total == float("inf"):
        raise ValueError("the cosine schedule needs a finite run: set trainer max_epochs or max_steps")
    total = max(1, int(total))
    if not warmup_epochs:
        return total, 0
    per_epoch = optimizer_steps_per_epoch(trainer)
    if per_epoch is None:
        raise ValueError(f"warmup_epochs={warmup_epochs} needs a training loader with a length (epochs of an "
                         f"iterable dataset have no size); use warmup_epochs=0")
    return total, min(total, int(round(warmup_epochs * per_epoch)))


def rng_states() -> dict:
    """This process's random number generator states: torch (CPU, and the current CUDA device once CUDA is in
    use), numpy's global one and Python's `random`, as tensors, lists and numbers (a weights_only load reads them)."""
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    states = {"torch": torch.get_rng_state(),
              "python": {"version": version, "state": list(internal), "gauss": gauss},
              "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                        "gauss": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` returned (a CUDA state only where CUDA is in use)."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = states["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    if "cuda" in states and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(states["cuda"])


def load_pending_loader_states(trainer) -> bool:
    """Give the training loader the state the checkpoint holds for it, where Lightning has not.

    Lightning restores a stateful train loader in FitLoop.setup_data, but when configure_optimizers reads
    `trainer.estimated_stepping_batches` (the cosine schedule does) the loader is set up before the
    checkpoint is read, the later setup_data returns early and the saved state is silently dropped
    (Lightning issue #20550, open in 2.6). Called at on_train_start: loads the pending states and
    restarts the loader's iterator, as setup_data would have. True if it did."""
    fl = trainer.fit_loop
    pending = getattr(fl, "_combined_loader_states_to_load", None)
    if not pending or fl._combined_loader is None or fl._data_fetcher is None:
        return False
    fl._combined_loader._load_state_dicts(pending)
    fl._combined_loader_states_to_load = []
    iter(fl._data_fetcher)
    return True


def mixing_weights(model: nn.Module) -> list[dict]:
    """{layer, depth, alpha, beta} for every two-path ACmix Stage II in forward order (depth 0 = first)."""
    from .operators import Stage2

    rows = []
    for name, m in model.named_modules():
        if isinstance(m, Stage2) and m.mixing is not None and hasattr(m, "alpha"):
            rows.append({"layer": name.removesuffix(".stage2"), "depth": len(rows),
                         "alpha": float(m.alpha.detach().reshape(-1)[0]),
                         "beta": float(m.beta.detach().reshape(-1)[0])})
    return rows


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification of any backbone.

    model_name_or_module: a registry name (built with `create_model(name, num_classes=...,
    **model_kwargs)`) or an nn.Module returning logits.
    input_size: (C, H, W); when given, `flops_per_batch` (training FLOPs = 2 x MACs,
    forward + backward, per batch of `batch_size`) is measured at setup for
    Lightning's ThroughputMonitor.
    """

    def __init__(self, model_name_or_module, num_classes: int, optimizer: str = "sgd", lr: float = 0.1,
                 weight_decay: float = 5e-4, momentum: float = 0.9, nesterov: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), schedule: str = "cosine", warmup_epochs: float = 0.0,
                 min_lr: float = 0.0, label_smoothing: float = 0.0, model_kwargs: dict | None = None,
                 input_size: tuple[int, int, int] | None = None, batch_size: int | None = None,
                 log_mixing: bool = True):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if isinstance(model_name_or_module, str):
            from .registry import create_model
            self.model_name = model_name_or_module
            self.model = create_model(model_name_or_module, num_classes=num_classes, **(model_kwargs or {}))
            self.save_hyperparameters()
        elif isinstance(model_name_or_module, nn.Module):
            self.model_name = getattr(model_name_or_module, "model_name", type(model_name_or_module).__name__)
            self.model = model_name_or_module
            self.save_hyperparameters(ignore=["model_name_or_module"])
        else:
            raise ValueError(f"model_name_or_module must be a registry name or an nn.Module, "
                             f"got {type(model_name_or_module).__name__}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.log_mixing = log_mixing
        self.input_size, self.batch_size = input_size, batch_size
        self.flops_per_batch: int | None = None
        self._rng_to_restore: dict | None = None  # from the checkpoint training resumes from
        top_k = min(5, num_classes)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_top1", torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=1,
                                                                                        average="micro"))
            setattr(self, f"{stage}_loss", torchmetrics.MeanMetric())
            if stage != "train":
                setattr(self, f"{stage}_top5", torchmetrics.classification.MulticlassAccuracy(
                    num_classes, top_k=top_k, average="micro"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- FLOPs for ThroughputMonitor
    def measure_flops_per_batch(self, input_size=None, batch_size=None) -> int:
        """Training FLOPs per batch (forward + backward; FLOPs = 2 MACs) by torch's flop counter.

        Measured at batch 1 and scaled (every op here is linear in the batch). torch's
        counter sees convolutions, matmuls and SDPA; it does not count elementwise ops,
        so the sliding-window attention's Stage II is undercounted (see bench/flops for
        the suite's per-stage MACs)."""
        from torch.utils.flop_counter import FlopCounterMode

        input_size = tuple(input_size or self.input_size)
        batch_size = batch_size or self.batch_size
        if batch_size is None:
            raise ValueError("measure_flops_per_batch needs batch_size (or ImageClassifier(batch_size=...))")
        p = next(self.model.parameters())
        x = torch.randn(1, *input_size, dtype=p.dtype, device=p.device)
        # eval mode: same matmuls and convs, but BatchNorm running statistics stay untouched and a
        # batch of one is allowed; gradients are kept aside and restored
        was_training = self.model.training
        grads = {p: p.grad for p in self.model.parameters()}
        self.model.eval()
        try:
            with FlopCounterMode(display=False) as counter:
                self.model(x).sum().backward()
        finally:
            for p, g in grads.items():
                p.grad = g
            self.model.train(was_training)
        self.flops_per_batch = int(counter.get_total_flops()) * int(batch_size)
        return self.flops_per_batch

    def setup(self, stage: str) -> None:
        # input size and batch size from the DataModule when not given (ThroughputMonitor reads flops_per_batch)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.input_size is None and dm is not None and getattr(dm, "input_size", None):
            self.input_size = tuple(dm.input_size)
        if self.batch_size is None and dm is not None and getattr(dm, "batch_size", None):
            self.batch_size = dm.batch_size
        if self.flops_per_batch is None and self.input_size is not None and self.batch_size is not None:
            self.measure_flops_per_batch()

    # -- steps
    def _step(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        n = y.shape[0]
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=n)
        getattr(self, f"{stage}_top1").update(logits.detach(), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), on_step=False, on_epoch=True, batch_size=n)
        self.log(f"{stage}/top1", getattr(self, f"{stage}_top1"), on_step=False, on_epoch=True,
                 prog_bar=stage != "test", batch_size=n)
        if stage != "train":
            getattr(self, f"{stage}_top5").update(logits.detach(), y)
            self.log(f"{stage}/top5", getattr(self, f"{stage}_top5"), on_step=False, on_epoch=True, batch_size=n)
        if on_step:
            self.log("train/step_loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def mixing_weights(self) -> list[dict]:
        """{layer, depth, alpha, beta} for every ACmix layer with two paths (learnable or fixed mixing)."""
        return mixing_weights(self.model)

    def on_validation_epoch_end(self) -> None:
        if not self.log_mixing:
            return
        for row in self.mixing_weights():
            self.log(f"mixing/{row['depth']:02d}/alpha", row["alpha"], rank_zero_only=True)
            self.log(f"mixing/{row['depth']:02d}/beta", row["beta"], rank_zero_only=True)

    # -- exact resume: random number generators
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        load_pending_loader_states(self.trainer)
        # the last hook before the first batch of the resumed run is loaded and trained on: everything in
        # between (setup, FLOPs measurement, the checkpoint restore) may draw random numbers; none of it may
        # shift what training draws next. Under DDP every rank gets rank 0's states (ranks are seeded alike).
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    # -- optimisation
    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.model, hp.weight_decay)
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        if hp.schedule == "none":
            return opt
        total, warmup = schedule_steps(self.trainer, hp.warmup_epochs)
        floor = hp.min_lr / hp.lr
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

"""Lightning overhead: the training step driven by a Lightning Trainer vs a bare PyTorch loop.

Same model (one initial state, copied), same batches (one in-memory list of
real batches from the datamodule, fed through the same DataLoader), same
optimiser (plain SGD with momentum, no schedule, no weight decay) and batch
size. Both sides time the same window: from the start of step `warmup` to the
end of the last step, on the same device and thread count, alternating
repeats (bare, Lightning, bare, ...) so machine noise hits both alike.
The Lightning side uses the suite's ImageClassifier (torchmetrics updates and
logging included), so the number is the overhead users get.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F


def _batches(dataset: str, batch_size: int, n: int, seed: int = 0, image_size: int | None = None):
    """n real training batches from the dataset's datamodule, held in memory."""
    from .execute import create_dm

    dm = create_dm(dataset, batch_size=batch_size, seed=seed, train_subset=batch_size * n, augment=False,
                   image_size=image_size)
    dm.prepare_data()
    dm.setup("fit")
    out = []
    for x, y in dm.train_dataloader():
        if x.shape[0] == batch_size:
            out.append((x, y))
        if len(out) == n:
            break
    if len(out) < n:
        raise ValueError(f"dataset {dataset} gave only {len(out)} full batches of {batch_size}; lower --batch-size")
    return out, dm.num_classes, tuple(dm.input_size)


class _ListLoader(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def _loader(batches):
    # batch_size=None: each item already is a batch; the same loader object type for both sides
    return torch.utils.data.DataLoader(_ListLoader(batches), batch_size=None, shuffle=False)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bare_loop(model, batches, warmup: int, lr: float, dev) -> float:
    """Samples per second over the timed steps of a plain PyTorch training loop."""
    model = model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    t0 = None
    n = 0
    for i, (x, y) in enumerate(_loader(batches)):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            n += x.shape[0]
    _sync(dev)
    return n / (time.perf_counter() - t0)


def lightning_loop(model, batches, warmup: int, lr: float, num_classes: int, accelerator: str) -> float:
    import lightning.pytorch as pl

    from modules.lightning import ImageClassifier

    class Clock(pl.Callback):
        def __init__(self):
            self.t0 = self.t1 = None
            self.n = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                _sync(pl_module.device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx >= warmup:
                self.n += batch[0].shape[0]
                if batch_idx == len(batches) - 1:
                    _sync(pl_module.device)
                    self.t1 = time.perf_counter()

    lm = ImageClassifier(model, num_classes=num_classes, optimizer="sgd", lr=lr, momentum=0.9, nesterov=False,
                         weight_decay=0.0, schedule="none", log_mixing=False)
    clock = Clock()
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[clock])
    trainer.fit(lm, train_dataloaders=_loader(batches))
    return clock.n / (clock.t1 - clock.t0)


def measure(model, batches, num_classes, warmup=3, repeats=3, lr=0.01, accelerator="auto"):
    """{"bare": [samples/s per repeat], "lightning": [...]} from alternating repeats."""
    dev = torch.device("cuda") if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() \
        else torch.device("cpu")
    acc = "gpu" if dev.type == "cuda" else "cpu"
    init = copy.deepcopy(model.state_dict())
    res = {"bare": [], "lightning": []}
    for _ in range(repeats):
        model.load_state_dict(init)
        res["bare"].append(bare_loop(model, batches, warmup, lr, dev))
        model.load_state_dict(init)
        res["lightning"].append(lightning_loop(model, batches, warmup, lr, num_classes, acc))
    return res, dev


def main(args) -> int:
    import logging

    from modules import create_model

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches, num_classes, size = _batches(args.dataset, args.batch_size, args.warmup + args.steps,
                                          image_size=args.image_size)
    model = create_model(args.model, stem=args.stem, widths=list(args.widths), num_classes=num_classes,
                         in_chans=size[0], img_size=size[1])
    res, dev = measure(model, batches, num_classes, args.warmup, args.repeats, accelerator=args.accelerator)
    b, lt = statistics.median(res["bare"]), statistics.median(res["lightning"])
    print(f"Training-step throughput, {args.model} widths {args.widths} on {args.dataset} {size}, batch "
          f"{args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, {args.repeats} alternating "
          f"repeats; device {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"  {'loop':<34} {'samples/s (median)':>19} {'repeats':>30}")
    print(f"  {'bare PyTorch':<34} {b:>19.1f} {' '.join(f'{v:.1f}' for v in res['bare']):>30}")
    print(f"  {'Lightning Trainer + ImageClassifier':<34} {lt:>19.1f} "
          f"{' '.join(f'{v:.1f}' for v in res['lightning']):>30}")
    ratio = lt / b
    print(f"  Lightning / bare = {ratio * 100:.1f}% (target >= 97%: {'met' if ratio >= 0.97 else 'NOT met'})")
    return 0

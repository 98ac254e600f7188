"""Evidence that the backbones learn: train a small-stem ResNet on Fashion-MNIST and
test on the full 10,000-image test set (or a seeded subset). Prints and writes one
JSON record: model, widths, epochs, samples, threads, wall time, test top-1/top-5.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/fmnist_evidence.py --model resnet26-conv \
        --width-mult 0.125 --epochs 3 --threads 2 --out runs/evidence/resnet26-conv.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet26-conv")
    p.add_argument("--width-mult", type=float, default=0.125)
    p.add_argument("--kernel-att", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.1)
    p.add_argument("--augment", action="store_true", help="random crop + flip (off: short runs fit better without)")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import lightning as L
    import torch

    from datamodules import FashionMNISTDataModule
    from modules import ImageClassifier

    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True)
    dm = FashionMNISTDataModule(root=args.root, batch_size=args.batch_size, eval_batch_size=256, seed=args.seed,
                                augment=args.augment, train_subset=args.train_subset, val_subset=args.val_subset,
                                test_subset=args.test_subset)
    kw = dict(stem="small", in_chans=1, img_size=28, width_mult=args.width_mult)
    if args.kernel_att:
        kw["kernel_att"] = args.kernel_att
    model = ImageClassifier(args.model, num_classes=10, optimizer="sgd", lr=args.lr, weight_decay=args.weight_decay,
                            warmup_epochs=args.warmup_epochs, model_kwargs=kw)
    class Progress(L.Callback):  # one line every 50 steps, so a background run can be followed in its log
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step % 50 == 0:
                print(f"step {trainer.global_step}/{trainer.estimated_stepping_batches} epoch {trainer.current_epoch} "
                      f"loss {float(outputs['loss']):.3f} {time.time() - t0:.0f}s", flush=True)

    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, logger=False, callbacks=[Progress()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, deterministic=False)
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    t_fit = time.time() - t0
    val_top1 = float(trainer.callback_metrics.get("val/top1", float("nan")))
    t1 = time.time()
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    t_test = time.time() - t1
    record = {
        "model": args.model, "model_kwargs": kw, "widths": list(model.model.widths),
        "params": sum(p.numel() for p in model.model.parameters()), "epochs": args.epochs,
        "train_samples": len(dm.train_set), "test_samples": len(dm.test_set), "batch_size": args.batch_size,
        "lr": args.lr, "augment": args.augment, "seed": args.seed,
        "val_top1": val_top1,
        "test_top1": res["test/top1"], "test_top5": res["test/top5"], "test_loss": res["test/loss"],
        "fit_seconds": round(t_fit, 1), "test_seconds": round(t_test, 1), "threads": torch.get_num_threads(),
        "mixing": model.mixing_weights(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared), {platform.platform()}",
        "torch": torch.__version__, "lightning": L.__version__,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

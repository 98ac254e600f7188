"""Run cells: build, count, match, measure, train and test, record.

`run_cell` does one cell and always returns a record (status ok, failed, nan,
oom or interrupted); `run_matrix` loops over cells, skipping finished ones and
resuming interrupted ones from OUT/ckpt/<cell_id>/last.ckpt. Ctrl-C (or
SIGTERM) stops after recording the current cell as interrupted.

Under multi-process DDP every rank runs this same loop (Lightning relaunches
the command for ranks > 0); all ranks do the same work so collectives stay in
step, and only global rank 0 writes records, events and the results table.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import math
import os
import shutil
import signal
import sys
import time
import warnings

import torch

from . import records as R
from .cells import input_size
from .measure import inference_speed, resolve_threads
from .provenance import stage2_backends


class NonFiniteLoss(RuntimeError):
    """Training loss became NaN or infinite."""


class CellInterrupted(BaseException):
    """Ctrl-C / SIGTERM while a cell ran (BaseException: must not be recorded as a plain failure)."""


def global_rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_rank_zero() -> bool:
    return global_rank() == 0


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {msg}"[:400]


def classify(e: BaseException) -> str:
    """Record status for an exception raised by a cell."""
    if isinstance(e, NonFiniteLoss):
        return "nan"
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if isinstance(e, oom_types) or isinstance(e, MemoryError):
        return "oom"
    text = str(e).lower()
    if isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                        or "cannot allocate memory" in text):
        return "oom"
    return "failed"


# ---------------------------------------------------------------- model, counts, matching

def build_model(cell: dict, widths=None):
    from modules import create_model

    ov = dict(cell["overrides"])
    if widths is not None:
        ov["widths"] = list(widths)
    return create_model(cell["model"], **ov)


def count(model, size, voices) -> dict:
    """Per-stage params and MACs for every voice: {"unit", "input_size", "voices": {voice: {stage: {params, macs}}}}."""
    from bench.flops import count_model

    res = count_model(model, tuple(size), voices=tuple(voices))
    table = res.table()
    out: dict = {}
    for row in table.itertuples(index=False):
        out.setdefault(str(row.voice), {})[str(row.stage)] = {"params": int(row.params), "macs": int(row.macs)}
    return {"unit": "MACs", "input_size": list(size), "voices": out}


def total_macs(counts: dict | None):
    if not counts:
        return None
    v = counts["voices"]
    for voice in ("formula", "fvcore", *v):
        t = (v.get(voice) or {}).get("total")
        if t:
            return t["macs"]
    return None


_MATCH_CACHE: dict = {}
MIN_MULT = 1 / 64  # narrowest widths the matcher may try: 1/64 of the registry defaults (CPU-sized models)


def _formula_macs(model, size) -> int:
    from bench.flops import count_model

    return count_model(model, tuple(size), voices=("formula",)).total("formula")


def _search_widths(ref: dict, cell: dict, cfg: dict, size: list[int]) -> list[int]:
    """bench.match.match_widths for one variant against the reference model at the config's widths."""
    from bench.match import match_widths

    from .cells import model_overrides

    widths = cfg["model"]["widths"]
    ref_ov = {k: v for k, v in model_overrides(cfg, ref).items() if k != "img_size"}
    if widths is not None:
        ref_ov["widths"] = list(widths)
    var_ov = {k: v for k, v in cell["overrides"].items() if k != "img_size"}
    try:
        res = match_widths(ref["model"], [cell["model"]], size[1], tol=cell["tolerance"],
                           reference_overrides=ref_ov, overrides=var_ov, min_mult=MIN_MULT)
    except ValueError as e:
        if "expected input" not in str(e) or size[0] == 3:
            raise
        # bench.match counts at 3 input channels: search there; the record states the true counts below
        ref_ov.pop("in_chans", None)
        var_ov.pop("in_chans", None)
        res = match_widths(ref["model"], [cell["model"]], size[1], tol=cell["tolerance"],
                           reference_overrides=ref_ov, overrides=var_ov, min_mult=MIN_MULT)
    return list(res[0].widths)


def resolve_widths(cell: dict, cfg: dict):
    """(widths, match) for a cell: the config's widths, or widths matched to its group reference's MACs.

    The match record holds MACs counted (formula voice) on the real input size and channels."""
    widths = cfg["model"]["widths"]
    if cell["group"] is None:
        return widths, None
    from .cells import model_overrides

    ref = cell["reference"]
    size = input_size(cfg, cell["dataset"])
    is_ref = all(ref[k] == cell[k] for k in ("model", "shift", "mixing"))
    key = (cell["reference_cell"].rsplit("-", 2)[0], cell["model"], repr(sorted(cell["overrides"].items())))
    if key not in _MATCH_CACHE:
        ref_model = build_model({"model": ref["model"], "overrides": model_overrides(cfg, ref)}, widths)
        target = _formula_macs(ref_model, size)
        w = list(widths) if is_ref and widths is not None else (None if is_ref else _search_widths(ref, cell, cfg, size))
        macs = target if is_ref else _formula_macs(build_model(cell, w), size)
        _MATCH_CACHE[key] = (w, target, macs)
    w, target, macs = _MATCH_CACHE[key]
    return w, {"group": cell["group"], "reference_cell": cell["reference_cell"], "target_macs": int(target),
               "macs": int(macs), "rel_error": (macs - target) / target, "tolerance": float(cell["tolerance"])}


# ---------------------------------------------------------------- training

# Cells this process's runner shares the machine with, itself included: set in the worker processes of
# `run --jobs N` (measure.jobs), where N cells run side by side, one per process.
SIDE_BY_SIDE = 1


def _processes_per_machine(cfg) -> int:
    """Training processes sharing one machine's cores: CPU DDP starts `devices` of them per node; `run --jobs N`
    runs N cells side by side."""
    t = cfg["trainer"]
    if t["accelerator"] == "cpu" and str(t["strategy"]).startswith("ddp"):
        return int(t["devices"]) * SIDE_BY_SIDE
    return SIDE_BY_SIDE


def _device_for(cfg) -> torch.device:
    acc = cfg["trainer"]["accelerator"]
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_DM_NAMES = {"imagenet": "imagefolder"}  # the runner's dataset name -> the datamodules' name
_DM_CLASSES = {"fashion_mnist": "FashionMNISTDataModule", "cifar10": "CIFAR10DataModule",
               "cifar100": "CIFAR100DataModule", "imagefolder": "ImageFolderDataModule", "synthetic": "SyntheticDataModule"}


def create_dm(name: str, **kw):
    """datamodules.create_datamodule, or the class by name where that factory is not there."""
    import datamodules

    name = _DM_NAMES.get(name, name)
    if name == "synthetic":  # generated in memory: it has no root (and passes root=None itself)
        kw.pop("root", None)
    if hasattr(datamodules, "create_datamodule"):
        return datamodules.create_datamodule(name, **kw)
    cls = getattr(datamodules, _DM_CLASSES.get(name, ""), None)
    if cls is None:
        raise ValueError(f"dataset {name!r}: datamodules has no {_DM_CLASSES.get(name, 'such datamodule')}; "
                         f"allowed: {', '.join(_DM_CLASSES)}")
    return cls(**kw)


def make_datamodule(cell: dict, cfg: dict):
    d = cfg["data"]
    kw = {k: d[k] for k in ("root", "batch_size", "num_workers", "val_fraction", "image_size", "train_subset",
                            "val_subset", "test_subset", "augment", "eval_batch_size")}
    dm = create_dm(cell["dataset"], seed=cell["seed"], **kw)
    _shard_training_under_ddp(dm, cell["seed"])
    return dm


def _shard_training_under_ddp(dm, seed: int) -> None:
    """The Trainer runs with use_distributed_sampler=False so that the datamodule's unpadded evaluation
    sampler is used as is (Lightning would otherwise wrap it in a second, padding DistributedSampler).
    Training data then needs its own shard per rank. The suite's datamodules shard it themselves
    (datamodules.base.ResumableSampler); any other train loader is rebuilt as a resumable one with a
    seeded ResumableSampler shard."""
    from torch.utils.data import DistributedSampler

    from datamodules.base import ResumableDataLoader, ResumableSampler

    orig = dm.train_dataloader

    def train_dataloader():
        import torch.distributed as dist

        dl = orig()
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return dl
        if isinstance(dl.sampler, DistributedSampler) or type(dl.sampler).__name__.endswith("DistributedSampler"):
            return dl
        sampler = ResumableSampler(dl.dataset, seed=seed, sample_seeds=False)
        return ResumableDataLoader(dl.dataset, batch_size=dl.batch_size, sampler=sampler, num_workers=dl.num_workers,
                                   collate_fn=dl.collate_fn, pin_memory=dl.pin_memory, drop_last=dl.drop_last,
                                   worker_init_fn=dl.worker_init_fn, persistent_workers=dl.persistent_workers,
                                   generator=dl.generator)

    dm.train_dataloader = train_dataloader


def _callbacks(ckpt_dir: str, cfg: dict):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .measure import RecordingThroughputMonitor

    class _Guard(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None and not torch.isfinite(loss.detach()).all():
                raise NonFiniteLoss(f"training loss is {float(loss.detach().float().mean())} at step "
                                    f"{trainer.global_step} (epoch {trainer.current_epoch}); lower optim.lr "
                                    f"or set trainer.gradient_clip_val")

    class _SameModelOnEveryRank(pl.Callback):
        """Before testing under DDP, give every rank rank 0's parameters and buffers: BatchNorm running
        statistics are per-rank in DDP, and the test must evaluate the one model the checkpoint holds."""

        def on_test_start(self, trainer, pl_module):
            import torch.distributed as dist

            if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
                with torch.no_grad():
                    for t in list(pl_module.parameters()) + list(pl_module.buffers()):
                        dist.broadcast(t.data, src=0)

    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", save_top_k=0, save_last=True,
                           every_n_train_steps=cfg["trainer"]["checkpoint_every_n_steps"], auto_insert_metric_name=False)
    tp = RecordingThroughputMonitor()
    return [_Guard(), _SameModelOnEveryRank(), ckpt, tp], tp


def make_trainer(cfg: dict, callbacks, log_dir: str, progress: bool):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    t = cfg["trainer"]
    kw = dict(accelerator=t["accelerator"], devices=t["devices"], strategy=t["strategy"], num_nodes=t["num_nodes"],
              precision=t["precision"], max_epochs=t["max_epochs"], max_steps=t["max_steps"],
              accumulate_grad_batches=t["accumulate_grad_batches"], gradient_clip_val=t["gradient_clip_val"],
              log_every_n_steps=t["log_every_n_steps"], deterministic=t["deterministic"] or None,
              callbacks=callbacks, logger=CSVLogger(log_dir, name="", version=""), default_root_dir=log_dir,
              enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
              use_distributed_sampler=False)
    for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if t[k] is not None:
            kw[k] = t[k]
    # every other Trainer argument the config sets (checked against Trainer's signature by the config)
    kw.update({k: v for k, v in t.items() if k not in _RUNNER_TRAINER_KEYS})
    return pl.Trainer(**kw)


# the trainer section's keys make_trainer handles itself (or that are the runner's, not Lightning's)
_RUNNER_TRAINER_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "max_epochs", "max_steps",
                        "accumulate_grad_batches", "gradient_clip_val", "log_every_n_steps", "deterministic",
                        "limit_train_batches", "limit_val_batches", "limit_test_batches", "checkpoint_every_n_steps",
                        "keep_checkpoints")


def _metric(metrics: dict, *keys):
    for k in keys:
        if k in metrics and metrics[k] is not None:
            v = metrics[k]
            return float(v.item() if hasattr(v, "item") else v)
    return None


def _checkpoint_readable(path: str, state: dict) -> bool:
    """A last.ckpt that cannot be loaded (cut short by a full disk, a crash mid-copy) is moved aside and the cell
    starts from scratch, rather than failing on every rerun; the record's `resume_note` says so."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict) or "state_dict" not in ck:
            raise ValueError("no state_dict in it")
        return True
    except Exception as e:  # noqa: BLE001 - any unreadable file: set it aside, keep it for inspection
        aside = f"{path}.unreadable-{int(time.time())}"
        os.replace(path, aside)
        note = (f"checkpoint {os.path.basename(path)} was unreadable ({one_line(e)[:160]}); moved to "
                f"{os.path.basename(aside)}, the cell restarted from scratch")
        state["resume_note"] = note
        print(f"acmix-bench run: warning: {note}", file=sys.stderr)
        return False


def train_and_test(cell: dict, cfg: dict, model, out: str, progress: bool, state: dict) -> None:
    """Fit (resuming from the cell's last checkpoint) and test; fills state['metrics'] etc. as it goes."""
    import lightning.pytorch as pl

    from modules.lightning import ImageClassifier

    o = cfg["optim"]
    size = input_size(cfg, cell["dataset"])
    ckpt_dir = os.path.join(out, "ckpt", cell["cell_id"])
    last = os.path.join(ckpt_dir, "last.ckpt")
    # every optim key is an ImageClassifier argument (the config checks them against its signature)
    lm = ImageClassifier(model, num_classes=cell["overrides"]["num_classes"], input_size=tuple(size),
                         batch_size=cfg["data"]["batch_size"], **o)
    dm = make_datamodule(cell, cfg)
    callbacks, tp = _callbacks(ckpt_dir, cfg)
    trainer = make_trainer(cfg, callbacks, os.path.join(out, "logs", cell["cell_id"]), progress)
    state["trainer"] = trainer
    resume = last if os.path.isfile(last) and _checkpoint_readable(last, state) else None
    state["resumed_from"] = os.path.relpath(resume, out) if resume else None
    pl.seed_everything(cell["seed"], workers=True, verbose=False)
    dev = _device_for(cfg)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:  # CPU: the process's peak resident set size over training and testing (Linux)
        from .measure import reset_peak_rss
        state["rss_reset"] = reset_peak_rss()
    trainer.fit(lm, datamodule=dm, ckpt_path=resume)
    # the finished state, so a run killed during testing resumes straight into the test
    trainer.save_checkpoint(last)
    state["train_samples_per_s"] = tp.train_summary()
    if dev.type == "cuda":
        state["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    val_top1 = _metric(trainer.callback_metrics, "val/top1")
    res = trainer.test(lm, datamodule=dm, verbose=False)
    m = res[0] if res else {}
    state["metrics"] = {"top1": _metric(m, "test/top1"), "top5": _metric(m, "test/top5"),
                        "loss": _metric(m, "test/loss"), "val_top1": val_top1,
                        "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step)}
    state["mixing_by_depth"] = lm.mixing_weights()
    if dev.type != "cuda" and state.get("rss_reset"):
        from .measure import peak_rss_mb
        state["peak_mem_mb"] = peak_rss_mb()


# ---------------------------------------------------------------- one cell

def _base_record(cell: dict, cfg: dict, started: str) -> dict:
    c = {k: cell[k] for k in ("model", "backbone", "op", "shift", "mixing", "dataset", "seed", "group")}
    c["overrides"] = cell["overrides"]
    return {"schema": R.SCHEMA, "cell_id": cell["cell_id"], "status": "running", "reason": None, "cell": c,
            "config": {k: copy.deepcopy(cfg[k]) for k in ("trainer", "data", "optim", "measure", "model")},
            "widths": None, "counts": None, "match": None, "metrics": None, "speed": None, "mixing_by_depth": None,
            "wall_s": 0.0, "env": R.environment(), "started_at": started, "finished_at": None,
            "config_name": cfg["name"], "resumed_from": None}


def run_cell(cell: dict, cfg: dict, out: str, *, progress: bool = False) -> dict:
    """Run one cell and return its record (already written when on rank 0). Re-raises CellInterrupted."""
    writer = is_rank_zero()
    started, t0 = R.now(), time.perf_counter()
    threads = resolve_threads(cfg["measure"]["threads"], _processes_per_machine(cfg))
    if threads:  # before the record's environment is taken, so env.threads is what ran
        torch.set_num_threads(threads)
    rec = _base_record(cell, cfg, started)
    prev = R.read_record(out, cell["cell_id"])
    if prev and prev.get("started_at"):
        rec["started_at"] = prev["started_at"]  # first start of an interrupted cell
        rec["wall_s"] = float(prev.get("wall_s") or 0.0)
    if writer:
        R.write_record(out, rec)
        R.log_event(out, "start", cell["cell_id"], rank=global_rank())
    state: dict = {}
    meas = cfg["measure"]
    interrupted = None
    try:
        import lightning.pytorch as pl

        pl.seed_everything(cell["seed"], verbose=False)
        widths, match = resolve_widths(cell, cfg)
        rec["widths"], rec["match"] = (list(widths) if widths is not None else None), match
        pl.seed_everything(cell["seed"], verbose=False)
        model = build_model(cell, widths)
        size = input_size(cfg, cell["dataset"])
        rec["env"]["stage2_backend"] = stage2_backends(model, _device_for(cfg))
        if meas["counts"]:
            rec["counts"] = count(model, size, meas["voices"])
        dev = _device_for(cfg)
        speed = {"threads": torch.get_num_threads(), "jobs": SIDE_BY_SIDE,
                 "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
                 "infer_samples_per_s": None, "latency_b1_ms": None, "train_samples_per_s": None, "peak_mem_mb": None}
        rec["speed"] = speed
        if meas["speed"]:
            probe = copy.deepcopy(model).to(dev)
            speed.update(inference_speed(probe, size, meas["batch_size"], dev, meas["min_run_time"],
                                         meas["latency"], meas["repeats"]))
            del probe
        train_and_test(cell, cfg, model, out, progress, state)
        speed["train_samples_per_s"] = state.get("train_samples_per_s")
        speed["peak_mem_mb"] = state.get("peak_mem_mb")
        rec["metrics"] = state["metrics"]
        rec["mixing_by_depth"] = state["mixing_by_depth"]
        if rec["metrics"]["loss"] is not None and not math.isfinite(rec["metrics"]["loss"]):
            raise NonFiniteLoss(f"test loss is {rec['metrics']['loss']}")
        rec["status"] = "ok"
    except (KeyboardInterrupt, SystemExit, CellInterrupted) as e:
        # Lightning turns Ctrl-C inside fit/test into SystemExit after its own clean-up
        interrupted = e
        rec["status"], rec["reason"] = "interrupted", "stopped by the user (Ctrl-C / SIGTERM); rerun to resume"
    except Exception as e:  # noqa: BLE001 - failure isolation: record it, the matrix goes on
        rec["status"], rec["reason"] = classify(e), one_line(e)
    finally:
        rec["resumed_from"] = state.get("resumed_from")
        if state.get("resume_note"):
            rec["resume_note"] = state["resume_note"]
        if "metrics" in state and rec["metrics"] is None:
            rec["metrics"] = state["metrics"]
        rec["wall_s"] = float(rec["wall_s"]) + time.perf_counter() - t0
        rec["finished_at"] = R.now()
        if writer:
            R.write_record(out, rec)
            R.log_event(out, "finish", cell["cell_id"], status=rec["status"], rank=global_rank())
        state.pop("trainer", None)
        if rec["status"] in R.FINISHED and not cfg["trainer"]["keep_checkpoints"] and writer:
            shutil.rmtree(os.path.join(out, "ckpt", cell["cell_id"]), ignore_errors=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if interrupted is not None:
        raise CellInterrupted(rec["cell_id"]) from interrupted
    return rec


# ---------------------------------------------------------------- the matrix

@contextlib.contextmanager
def _cell_lock(out: str, cell_id: str):
    """Exclusive per-cell lock (flock; released by the OS if the process dies). Yields False if held elsewhere.

    Only global rank 0 locks: the other DDP ranks run the same cell as rank 0 by construction."""
    if not is_rank_zero():
        yield True
        return
    d = os.path.join(out, "locks")
    os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, cell_id + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (Slurm preemption, `kill`) behaves like Ctrl-C: the current cell is recorded as interrupted."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def pending(cells: list[dict], out: str, retry_failed: bool = False) -> tuple[list[dict], list[dict]]:
    """Split into (to run, finished) by reading OUT/cells."""
    todo, done = [], []
    for c in cells:
        rec = R.read_record(out, c["cell_id"])
        finished = rec is not None and rec.get("status") in R.FINISHED
        if finished and retry_failed and rec.get("status") != "ok":
            finished = False
        (done if finished else todo).append(c)
    return todo, done


def summary_line(rec: dict) -> str:
    m, s = rec.get("metrics") or {}, rec.get("speed") or {}
    parts = [f"{rec['status']:<11}", rec["cell_id"]]
    if m.get("top1") is not None:
        parts.append(f"top1={m['top1']:.4f}")
    macs = total_macs(rec.get("counts"))
    if macs is not None:
        parts.append(f"MACs={macs / 1e6:.1f}M")
    tr = s.get("train_samples_per_s")
    if tr:
        parts.append(f"train={tr['median']:.0f}/s")
    inf = s.get("infer_samples_per_s")
    if inf:
        parts.append(f"infer={inf['median']:.0f}/s")
    parts.append(f"wall={rec.get('wall_s', 0):.1f}s")
    if rec.get("reason"):
        parts.append(f"reason: {rec['reason']}")
    return " ".join(parts)


@contextlib.contextmanager
def _quiet_lightning(verbose: bool):
    """Lightning's per-Trainer info lines (accelerator summary, tips) once per cell drown the per-cell lines:
    keep only its warnings unless verbose."""
    import logging

    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
    old = {n: logging.getLogger(n).level for n in names}
    if not verbose:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            if not verbose:  # libraries' own uses of torch APIs torch deprecated: nothing a user can act on
                warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
            yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def run_matrix(cfg: dict, cells: list[dict], out: str, *, progress: bool = True, retry_failed: bool = False,
               echo=print, verbose: bool = False, worker: tuple[int, int] | None = None) -> dict:
    """Run every unfinished cell; return {"ran", "skipped", "status": {status: n}, "interrupted": bool}.

    progress: the matrix bar (one bar, per-cell lines printed above it); verbose: Lightning's own bars
    and info lines for every cell too. worker (k, n): this is worker k of n running the matrix side by side
    (`run --jobs n`): cells another worker holds are passed over silently, lines say which worker, and the
    results table is left to the parent."""
    writer = is_rank_zero()
    os.makedirs(out, exist_ok=True)
    todo, done = pending(cells, out, retry_failed)
    bar = None
    if worker is not None:
        progress = False

    def say(*a):
        if not writer:
            return
        if bar is not None:  # above the bar, which stays whole at the bottom
            bar.write(" ".join(map(str, a)), file=sys.stdout)
        else:
            echo(*a)
        sys.stdout.flush()
    if worker is None:
        say(f"acmix-bench run: {len(cells)} cells, {len(done)} already finished, {len(todo)} to run; results in {out}")
    counts: dict = {}
    result = {"ran": 0, "skipped": len(done), "busy": 0, "status": counts, "interrupted": False}
    if progress and writer and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="cells", unit="cell", position=0, leave=True, file=sys.stdout)
    try:
        with _sigterm_as_interrupt(), _quiet_lightning(verbose):
            for i, cell in enumerate(todo, 1):
                tag = f"[{i}/{len(todo)}]" if worker is None else f"[job {worker[0] + 1}/{worker[1]}]"
                with _cell_lock(out, cell["cell_id"]) as got:
                    if not got:  # another process on this machine is running it
                        result["busy"] += 1
                        if worker is None:
                            say(f"{tag} busy        {cell['cell_id']} (locked by another run)")
                        continue
                    rec = R.read_record(out, cell["cell_id"])  # re-check under the lock
                    if rec is not None and rec.get("status") in R.FINISHED and not retry_failed:
                        result["skipped"] += 1
                        continue
                    say(f"{tag} start       {cell['cell_id']}")
                    try:
                        rec = run_cell(cell, cfg, out, progress=verbose)
                    except CellInterrupted as e:
                        result["interrupted"] = True
                        if isinstance(e.__cause__, SystemExit):  # e.g. submitit's requeue exit: the caller re-raises
                            result["exit"] = e.__cause__.code
                        counts["interrupted"] = counts.get("interrupted", 0) + 1
                        say(f"{tag} interrupted {cell['cell_id']}: finished records are intact; "
                            f"rerun the same command to resume")
                        break
                    result["ran"] += 1
                    counts[rec["status"]] = counts.get(rec["status"], 0) + 1
                    say(f"{tag} " + summary_line(rec))
                    if bar is not None:
                        bar.update(1)
    except KeyboardInterrupt:  # Ctrl-C between cells
        result["interrupted"] = True
        say("interrupted between cells: finished records are intact; rerun the same command to resume")
    finally:
        if bar is not None:
            bar.close()
        if writer and worker is None:
            R.rebuild_results(out)
        close_distributed()
    return result


def close_distributed() -> None:
    """Tear down the process group Lightning's DDP opened, while the interpreter is still whole: gloo's worker
    threads outliving it abort the process at exit ("terminate called without an active exception", exit -6)
    after every result was written, which a scheduler would read as a failed job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

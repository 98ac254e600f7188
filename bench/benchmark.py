"""`acmix-bench benchmark`: whole-model inference and training throughput, the way timm's benchmark does it.

One case = one model x batch size x setting (precision, channels-last, compile). Per case:

  infer_samples_per_sec, infer_step_ms, infer_step_ms_iqr   forward under no_grad, model in eval mode
  train_samples_per_sec, train_step_ms, train_step_ms_iqr   forward, cross-entropy on random labels,
                                                            backward and an SGD step, model in train mode
  peak_mem_mb      CUDA: allocator peak above what model and inputs hold; CPU: peak resident set of the
                   process above the set before the first timed step (VmHWM, reset first; only the
                   memory of this case when it runs alone: use --fresh-process)
  param_count      parameters of the model as built
  macs             MACs per image (FLOPs = 2 MACs), formula voice, of the Stage II that runs
  stage2_backend   which implementation ran the sliding-window attention: cpp, torch, triton,
                   reference, or "-" for models without it

Step times are torch.utils.benchmark measurements (one step each, --iters of them after --warmup),
reported as median and inter-quartile range; samples/s = batch size / median step time.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import gc
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

BENCHES = ("inference", "train", "both")
PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
COLUMNS = ["model", "batch_size", "img_size", "precision", "channels_last", "compile", "device", "threads",
           "infer_samples_per_sec", "infer_step_ms", "infer_step_ms_iqr",
           "train_samples_per_sec", "train_step_ms", "train_step_ms_iqr",
           "peak_mem_mb", "param_count", "macs", "stage2_backend", "torch"]


@dataclass
class Case:
    model: str
    batch_size: int
    img_size: int
    bench: str = "both"
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False
    device: str = "cpu"
    threads: int = 1
    warmup: int = 3
    iters: int = 10
    in_chans: int = 3
    num_classes: int = 1000
    stem: str | None = None
    seed: int = 0


def expand_models(spec: str) -> list[str]:
    """'resnet26-*,swin_t-acmix' -> registered names, in the order given, each once."""
    from modules import list_models

    known = list_models()
    out: list[str] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        hits = [n for n in known if fnmatch.fnmatch(n, part)]
        if not hits:
            raise ValueError(f"--model {part!r} matches no registered model; see `acmix-bench benchmark --list`")
        out += [n for n in hits if n not in out]
    if not out:
        raise ValueError("--model is empty; give names, comma lists or wildcards such as 'resnet26-*'")
    return out


def _stem_for(case: Case) -> str:
    # the ImageNet stems reduce 32x before the last stage: below 112 px the attention windows no longer fit
    return case.stem or ("imagenet" if case.img_size >= 112 else "small")


def build(case: Case) -> nn.Module:
    from modules import create_model

    torch.manual_seed(case.seed)
    return create_model(case.model, stem=_stem_for(case), img_size=case.img_size, in_chans=case.in_chans,
                        num_classes=case.num_classes)


def stage2_backend(model: nn.Module, device: str, dtype: torch.dtype = torch.float32) -> str:
    """Implementation of the sliding-window attention in `model` for inputs on device/dtype."""
    from modules import ACmix, LocalSelfAttention
    from modules import _fast

    ops = [m for m in model.modules() if isinstance(m, (ACmix, LocalSelfAttention))]
    if not ops:
        return "-"
    impls = {getattr(m.stage2, "impl", "fast") for m in ops}
    if impls == {"reference"}:
        return "reference"
    return _fast.backend_for(torch.empty(0, dtype=dtype, device=device))


def count_macs(model: nn.Module, case: Case) -> int:
    from bench.flops import count_model

    res = count_model(model, input_size=(case.in_chans, case.img_size, case.img_size), voices=("formula",))
    return res.total("formula")


def _autocast(case: Case):
    dtype = PRECISIONS[case.precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(case.device).type, dtype=dtype)


def _timer_stats(fn, case: Case) -> dict:
    """Median and IQR (ms) of --iters single-step torch.utils.benchmark measurements after --warmup steps."""
    import torch.utils.benchmark as tb

    for _ in range(case.warmup):
        fn()
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=case.threads)
    m = tb.Measurement.merge([timer.timeit(1) for _ in range(max(1, case.iters))])[0]
    return {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3}


def _mem_reset(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    from bench.speed import _proc_status_kb, _reset_peak_rss

    gc.collect()
    _reset_peak_rss()
    return _proc_status_kb("VmRSS") * 1024


def _mem_peak(device: str, base: int) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from bench.speed import _proc_status_kb

    return max(_proc_status_kb("VmHWM") * 1024 - base, 0) / 2**20


def run_case(case: Case) -> dict:
    """Time one case in this process; a row with COLUMNS."""
    if case.bench not in BENCHES:
        raise ValueError(f"--bench must be one of {', '.join(BENCHES)}, got {case.bench!r}")
    if case.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {case.precision!r}")
    if case.batch_size < 1 or case.img_size < 1 or case.iters < 1 or case.warmup < 0:
        raise ValueError("--batch-size, --img-size and --iters must be positive and --warmup >= 0")
    device = torch.device(case.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {case.device}: CUDA is not available here; use --device cpu")
    torch.set_num_threads(case.threads)
    model = build(case)
    row = {c: None for c in COLUMNS}
    row.update(model=case.model, batch_size=case.batch_size, img_size=case.img_size, precision=case.precision,
               channels_last=case.channels_last, compile=case.compile, device=case.device, threads=case.threads,
               param_count=sum(p.numel() for p in model.parameters()), torch=torch.__version__)
    row["macs"] = count_macs(model, case)
    model = model.to(device)
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    if case.channels_last:
        model = model.to(memory_format=fmt)
    row["stage2_backend"] = stage2_backend(model, case.device)
    x = torch.randn(case.batch_size, case.in_chans, case.img_size, case.img_size, device=device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, case.num_classes, (case.batch_size,), device=device)
    step_model = torch.compile(model) if case.compile else model
    peak = 0.0
    if case.bench in ("inference", "both"):
        model.eval()

        def infer():
            with torch.no_grad(), _autocast(case):
                return step_model(x)
        base = _mem_reset(case.device)
        st = _timer_stats(infer, case)
        peak = max(peak, _mem_peak(case.device, base))
        row.update(infer_step_ms=st["median_ms"], infer_step_ms_iqr=st["iqr_ms"],
                   infer_samples_per_sec=case.batch_size / st["median_ms"] * 1e3)
    if case.bench in ("train", "both"):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=case.precision == "16-mixed" and device.type == "cuda")
        loss_fn = nn.CrossEntropyLoss()

        def train():
            opt.zero_grad(set_to_none=True)
            with _autocast(case):
                loss = loss_fn(step_model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        base = _mem_reset(case.device)
        st = _timer_stats(train, case)
        peak = max(peak, _mem_peak(case.device, base))
        row.update(train_step_ms=st["median_ms"], train_step_ms_iqr=st["iqr_ms"],
                   train_samples_per_sec=case.batch_size / st["median_ms"] * 1e3)
    row["peak_mem_mb"] = peak
    return row


def run_fresh(case: Case) -> dict:
    """run_case in a new Python process: compile caches, allocator state and peak memory are the case's own."""
    env = dict(os.environ, OMP_NUM_THREADS=str(case.threads))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "bench.benchmark", "--child", json.dumps(asdict(case))],
                          capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark subprocess for {case.model} (batch {case.batch_size}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cases_from_args(args) -> list[Case]:
    models = expand_models(args.model)
    sizes = _ints(args.batch_size, "--batch-size")
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    return [Case(model=m, batch_size=b, img_size=args.img_size, bench=args.bench, precision=args.precision,
                 channels_last=args.channels_last, compile=args.compile, device=args.device, threads=threads,
                 warmup=args.warmup, iters=args.iters, in_chans=args.in_chans, num_classes=args.num_classes,
                 stem=args.stem)
            for m in models for b in sizes]


def _ints(values, flag: str) -> list[int]:
    out = []
    for v in values:
        for t in str(v).split(","):
            if t.strip():
                try:
                    out.append(int(t))
                except ValueError:
                    raise ValueError(f"{flag} takes integers (e.g. 8 or 8,32), got {t!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"{flag} takes positive integers, got {values!r}")
    return out


def format_rows(rows: list[dict], fmt: str) -> str:
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.4g")
    if fmt == "json":
        return json.dumps(rows, indent=2)
    show = df.drop(columns=["torch"]).dropna(axis=1, how="all")
    return show.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def run(args) -> int:
    if args.list:  # the same expansion as a run: comma lists and wildcards
        print("\n".join(expand_models(args.model)))
        return 0
    cases = cases_from_args(args)
    rows, failed = [], []
    for case in cases:
        print(f"[{len(rows) + len(failed) + 1}/{len(cases)}] {case.model} batch {case.batch_size} ...",
              file=sys.stderr, flush=True)
        try:
            rows.append(run_fresh(case) if args.fresh_process else run_case(case))
        except (RuntimeError, torch.OutOfMemoryError) as e:  # one bad case does not lose the others
            print(f"  failed: {str(e).splitlines()[0]}", file=sys.stderr)
            failed.append(case)
    text = format_rows(rows, args.format)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    else:
        print(text)
    if failed:
        print(f"{len(failed)} of {len(cases)} cases failed: "
              + ", ".join(f"{c.model}@{c.batch_size}" for c in failed), file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="whole-model inference/training throughput, params and MACs (timm-style)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet26-*", help="names, comma lists and wildcards, e.g. 'resnet26-*,swin_t-acmix'")
    p.add_argument("--list", action="store_true", help="list the models --model matches and exit")
    p.add_argument("--bench", choices=BENCHES, default="both")
    p.add_argument("--batch-size", nargs="+", default=["32"], help="one or several (a sweep): 8 32 or 8,32")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--stem", choices=("imagenet", "small"), default=None,
                   help="model stem (default: imagenet from 112 px up, small below)")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model before timing")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--iters", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current setting)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fresh-process", action="store_true", help="each case in a new Python process")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--output", default=None, help="write the table/csv/json to this file instead of stdout")
    p.set_defaults(func=run)


def _child(spec: str) -> None:
    print(json.dumps(run_case(Case(**json.loads(spec)))))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.benchmark --child CASE_JSON (internal; use `acmix-bench benchmark`)")

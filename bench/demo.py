"""`acmix-bench demo`: the operators' equivalences checked live, and a small table.

Every number printed is computed in this run: the largest absolute difference
between two implementations that must agree, and each operator's parameters and
forward time at one shape (median of a few runs, thread count printed).
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def equivalences(seed: int = 0) -> list[tuple[str, str, float, float]]:
    """(check, dtype, max abs error, tolerance) for the identities the suite rests on."""
    from modules import DecomposedConv, ShiftAggregation, create_op, set_stage2_impl
    from modules.names import SHIFT_IMPLS

    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in (1, 3, 5, 7):
        for stride in (1, 2):
            conv = nn.Conv2d(8, 6, k, stride=stride, padding=k // 2, bias=True).double()
            x = torch.randn(2, 8, 11, 9, dtype=torch.float64, generator=g)
            dec = DecomposedConv.from_conv2d(conv)
            rows.append((f"conv {k}x{k} s{stride} == 1x1 projections + shift-sum", "float64",
                         _max_err(conv(x), dec(x)), 1e-10))
    x = torch.randn(2, 8 * 9, 12, 10, generator=g)
    outs = {s: ShiftAggregation(8, 3, copies=4, shift=s)(x) for s in SHIFT_IMPLS}
    rows.append(("shift: tensor == fixed group conv", "float32", _max_err(outs["tensor"], outs["fixed"]), 1e-6))
    for s in ("learnable", "multigroup"):
        rows.append((f"shift: {s} == tensor at init", "float32", _max_err(outs["tensor"], outs[s]), 1e-6))
    for name, op, inp in (
        ("ACmix (sliding window) fast == reference", create_op("acmix", 16, 16, heads=4, stride=2).double(),
         torch.randn(2, 16, 13, 10, dtype=torch.float64, generator=g)),
        ("ACmix (Swin window, shifted) fast == reference",
         create_op("window-acmix", 16, 16, window=4, heads=2, shift_size=2).double(),
         torch.randn(2, 8, 12, 16, dtype=torch.float64, generator=g)),
    ):
        fast = op(inp)
        ref = set_stage2_impl(op, "reference")(inp)
        set_stage2_impl(op, "fast")
        rows.append((name, "float64", _max_err(fast, ref), 1e-10))
    return rows


def operator_table(channels: int = 64, size: int = 28, batch: int = 4, repeats: int = 5):
    from modules import create_op
    from modules.names import op_layout

    # (row name, kind); every operator at its defaults: k = 3, k_a = 7, M = 7, 4 heads
    ops = (("conv 3x3", "conv"), ("conv 3x3 decomposed", "dconv"), ("local self-attention (k_a=7)", "sa"),
           ("ACmix sliding window", "acmix"), ("window self-attention (M=7)", "window-sa"),
           ("ACmix window (M=7)", "window-acmix"))
    x = torch.randn(batch, channels, size, size)
    rows = []
    for name, kind in ops:
        op = create_op(kind, channels, channels)
        inp = x if op_layout(kind) == "map" else x.permute(0, 2, 3, 1).contiguous()
        times = []
        with torch.no_grad():
            op(inp)
            for _ in range(repeats):
                t = time.perf_counter()
                op(inp)
                times.append((time.perf_counter() - t) * 1e3)
        params = sum(p.numel() for p in op.parameters())
        rows.append((name, params, statistics.median(times), max(times) - min(times)))
    return rows


def run(args) -> int:
    torch.set_num_threads(args.threads)
    print(f"acmix-bench demo: torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print("Equivalences (max |difference|; must be below the tolerance):")
    bad = 0
    for check, dtype, err, tol in equivalences():
        ok = err <= tol
        bad += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {check:<50} {dtype:<8} {err:9.2e}  (tol {tol:.0e})")
    print(f"\nOperators at {args.channels} channels, {args.size}x{args.size}, batch {args.batch} "
          f"(forward, median of {args.repeats}, range = max - min):")
    print(f"  {'operator':<32} {'params':>9} {'fwd ms':>9} {'range ms':>9}")
    for name, params, med, spread in operator_table(args.channels, args.size, args.batch, args.repeats):
        print(f"  {name:<32} {params:>9,} {med:>9.2f} {spread:>9.2f}")
    return 1 if bad else 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="check the operators' equivalences and print a small table")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch threads (timings depend on it)")
    p.set_defaults(func=run)

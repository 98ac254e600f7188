"""Time the C++ local (sliding-window) attention kernel (modules/_fast/local_attention*.cpp), forward
and backward, at the issue's ResNet-ACmix shapes, optionally side by side with the kernel of another
git revision, interleaved in one process so a shared machine's load hits both alike.

    python scripts/bench_local_attention.py                        # this tree's kernel
    python scripts/bench_local_attention.py --baseline HEAD~3 --threads 2

Prints one row per (shape, stride, pass): median ms (IQR) over all runs of all rounds per kernel, and
baseline / current.
Inputs are built as local_attention_fast builds them (N = 4 heads, k_a = 7, float32 by default).
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modules import _fast  # noqa: E402
from modules.local_attention import position_grid  # noqa: E402

SHAPES = [(8, 64, 56, 56), (8, 128, 28, 28), (8, 256, 14, 14), (32, 64, 32, 32)]


def _git_show(rev: str, path: str) -> str | None:
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def build_baseline(rev: str):
    """The local attention extension as of git revision `rev` (its sources and headers; before the kernel
    was split into several files, the one file window_attention.cpp)."""
    from torch.utils import cpp_extension
    files = {}
    for name in _fast.KERNELS["local_attention"] + ("local_attention.h", "local_attention_tiles.h",
                                                    "local_attention_blocks.h", "softmax_exp.h", "simd.h"):
        text = _git_show(rev, f"modules/_fast/{name}")
        if text is not None:
            files[name] = text
    sources = [n for n in _fast.KERNELS["local_attention"] if n in files]
    if not sources:
        text = _git_show(rev, "modules/_fast/window_attention.cpp")
        if text is None:
            raise SystemExit(f"no local attention kernel at git revision {rev!r}")
        files, sources = {"window_attention.cpp": text}, ["window_attention.cpp"]
    key = hashlib.sha1(("".join(f"{n}{t}" for n, t in sorted(files.items())) + torch.__version__).encode()
                       ).hexdigest()[:12]
    d = _fast.cache_dir() / f"bench_baseline_{key}"
    d.mkdir(parents=True, exist_ok=True)
    for n, t in files.items():
        (d / n).write_text(t)
    return cpp_extension.load(name=f"acmix_la_baseline_{key}", sources=[str(d / n) for n in sources],
                              extra_cflags=_fast._cflags(), extra_ldflags=["-fopenmp"], build_directory=str(d),
                              verbose=False)


def inputs(B, C, H, W, stride, heads=4, ka=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    d = C // heads
    pad = (ka - 1) // 2
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    q = torch.randn(B * heads, d + 2, Ho, Wo, generator=g, dtype=dtype) * 0.5
    k = torch.randn(B * heads, d, H, W, generator=g, dtype=dtype)
    v = torch.randn(B * heads, d, H, W, generator=g, dtype=dtype)
    kd = _fast.split_phases(F.pad(k, (pad,) * 4, mode="reflect"), stride).contiguous()
    vd = _fast.split_phases(F.pad(v, (pad,) * 4, mode="reflect"), stride).contiguous()
    grid = _fast.split_phases(F.pad(position_grid(H, W, dtype), (pad,) * 4, mode="reflect")[0], stride).contiguous()
    dout = torch.randn(B * heads, d, Ho, Wo, generator=g, dtype=dtype)
    return q, kd, grid, vd, dout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", metavar="REV", help="a git revision whose kernel to time side by side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strides", default="1,2")
    ap.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES),
                    help="B,C,H,W;B,C,H,W;...")
    ap.add_argument("--min-run-time", type=float, default=1.5, help="seconds per kernel and case, all rounds")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per case")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cur = _fast.load_extension()
    if cur is None:
        raise SystemExit(f"the C++ kernel could not be built: {_fast.extension_error()}")
    kernels = {"current": cur}
    if a.baseline:
        kernels = {"baseline": build_baseline(a.baseline), "current": cur}
    dtype = getattr(torch, a.dtype)
    print(f"torch {torch.__version__}, threads {a.threads}, {a.dtype}, k_a 7, 4 heads; median ms (IQR)")
    names = list(kernels)
    print("shape            stride pass " + " ".join(f"{n:>18}" for n in names) + ("  baseline/current" if a.baseline else ""))
    for shape in [tuple(int(x) for x in s.split(",")) for s in a.shapes.split(";")]:
        for stride in [int(s) for s in a.strides.split(",")]:
            q, kd, grid, vd, dout = inputs(*shape, stride, dtype=dtype)
            for pas in ("fwd", "bwd"):
                stmts = {
                    n: (lambda m=m: m.forward(q, kd, grid, vd, 7, 1, False)) if pas == "fwd"
                    else (lambda m=m: m.backward(dout, q, kd, grid, vd, 7, 1))
                    for n, m in kernels.items()}
                res = {n: [] for n in names}
                for _ in range(a.rounds):  # interleaved rounds: A, B, A, B, ... so machine load hits both alike
                    for n in names:
                        t = tb.Timer("f()", globals={"f": stmts[n]}, num_threads=a.threads)
                        res[n].append(t.blocked_autorange(min_run_time=a.min_run_time / a.rounds))
                meds = {}
                cells = []
                for n in names:
                    times = [x for m in res[n] for x in m.times]
                    tt = torch.tensor(times) * 1e3
                    meds[n] = tt.median().item()
                    iqr = (tt.quantile(0.75) - tt.quantile(0.25)).item()
                    cells.append(f"{meds[n]:9.2f} ({iqr:6.2f})")
                ratio = f"  {meds['baseline'] / meds['current']:8.2f}x" if a.baseline else ""
                print(f"{','.join(map(str, shape)):16} {stride:6} {pas:4} " + " ".join(f"{c:>18}" for c in cells) + ratio,
                      flush=True)


if __name__ == "__main__":
    main()

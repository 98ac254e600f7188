"""Time the sliding-window attention kernel alone on CUDA: triton_impl against torch_impl.

Run by scripts/gpu_check.sh on a machine with a GPU (nothing here was ever run on one by its author).
Inputs are those of the ACmix block (B, C, H, W) with N heads, k_a: BN = B*N maps of d = C/N channels,
q with d + 2 channels (the grid). Prints one table: per shape and stride, median ms of forward and of
forward+backward (CUDA events, warm), the peak CUDA memory above the inputs, and the max |triton - torch|.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modules._fast import split_phases, torch_impl, triton_impl  # noqa: E402
from modules.local_attention import attention_padding  # noqa: E402


def inputs(B, C, H, W, N, ka, s, dil, dtype, device="cuda"):
    g = torch.Generator(device=device).manual_seed(0)
    d, pad = C // N, attention_padding(ka, dil)
    Hp, Wp, Ho, Wo = H + 2 * pad, W + 2 * pad, (H - 1) // s + 1, (W - 1) // s + 1
    r = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype)
    q = r(B * N, d + 2, Ho, Wo) * d ** -0.5
    kd, vd = (split_phases(r(B * N, d, Hp, Wp), s).contiguous() for _ in range(2))
    grid = split_phases(r(2, Hp, Wp), s).contiguous()
    return q, kd, grid, vd, r(B * N, d, Ho, Wo)


def timed(fn, reps=20):
    if not torch.cuda.is_available():  # the interpreter smoke run (TRITON_INTERPRET=1, --device cpu)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def peak_mb(fn):
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="8,64,56,56;8,128,28,28;8,256,14,14;32,64,32,32")
    p.add_argument("--strides", default="1,2")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernel-att", type=int, default=7)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run under TRITON_INTERPRET=1")
    a = p.parse_args()
    ok, why = triton_impl.available()
    print(f"# {why}; torch {torch.__version__}; dtype {a.dtype}; heads {a.heads}; k_a {a.kernel_att}")
    if not ok or (a.device == "cuda") != torch.cuda.is_available():
        print(f"# triton cannot run on {a.device} here: nothing timed")
        return 2
    dtype = getattr(torch, a.dtype)
    ka = a.kernel_att
    print(f"{'shape':>14} {'s':>2} {'backend':>7} {'fwd_ms':>8} {'fwdbwd_ms':>10} {'peak_MB':>8} {'max_err':>9}")
    for shape in a.shapes.split(";"):
        B, C, H, W = map(int, shape.split(","))
        for s in map(int, a.strides.split(",")):
            q, kd, grid, vd, dout = inputs(B, C, H, W, a.heads, ka, s, 1, dtype, a.device)

            def torch_fb():
                out, w = torch_impl.forward(q, kd, grid, vd, ka, 1)
                return out, torch_impl.backward(dout, q, kd, grid, vd, w, ka, 1)

            def triton_fb():
                out = triton_impl.forward(q, kd, grid, vd, ka, 1)
                return out, triton_impl.backward(dout, q, kd, grid, vd, ka, 1)

            ref = torch_fb()
            got = triton_fb()
            err = max((x.double() - y.double()).abs().max().item()
                      for x, y in zip((ref[0], *ref[1]), (got[0], *got[1])))
            del ref, got
            for name, f, fb in (("torch", lambda: torch_impl.forward(q, kd, grid, vd, ka, 1), torch_fb),
                                ("triton", lambda: triton_impl.forward(q, kd, grid, vd, ka, 1), triton_fb)):
                print(f"{'x'.join(map(str, (B, C, H, W))):>14} {s:>2} {name:>7} {timed(f):8.3f} {timed(fb):10.3f} "
                      f"{peak_mb(fb):8.1f} {err if name == 'triton' else 0:9.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

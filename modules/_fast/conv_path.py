"""The ACmix convolution path's grouped convolution, read in place from the Stage I output.

`grouped_conv(x, w, stride)`: x (B, C, d, H, W) (f_all = qkv viewed as (B, 3N, d, H, W), or the
light-FC output (B, k^2, d, H, W)), w (d*N, C, k, k) -> (B, d*N, H', W'), H' = ceil(H / stride),
zero padding k // 2: group i (of d) convolves the C planes x[:, :, i] into outputs i*N .. i*N+N-1.

Two backends, same function:

  cpp    conv_path.cpp: one task per (image, group), the group's planes copied into a padded,
         phase-split scratch (no border branches, unit-stride reads for any stride), loops
         vectorised over pixels; backward computes dx (transposed conv) and dW (per-task partial
         sums, added over the batch: no atomics, no dependence on the thread count). Nothing new
         is saved for backward: x (a view of the Stage I output) and w. Runs as the operator
         acmix::grouped_conv (ops.py), its backward as acmix::grouped_conv_backward.
  torch  `grouped_conv_torch`: F.conv2d (groups = d) on a channels-last copy of x; any device and
         dtype. It is also what runs under torch.jit.trace and under a TorchDispatchMode (FLOP
         counters such as fvcore, torch.utils.flop_counter, ptflops-aten see the convolution they
         know; same MACs), and where the extension cannot be built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import under_counter
from . import backend_for, requested_backend


def grouped_conv_torch(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    """The pure-PyTorch twin: one grouped F.conv2d on a channels-last copy (oneDNN runs it faster)."""
    B, C, d, H, W = x.shape
    k = w.shape[-1]
    xc = x.permute(0, 3, 4, 2, 1).reshape(B, H, W, d * C).permute(0, 3, 1, 2)  # channel i*C + c
    # padding as a pair: under torch.jit.trace (fvcore) k is a traced size, and torch 2.5 rejects a
    # traced scalar padding ("got padding=[]") while it accepts a pair of them
    return F.conv2d(xc, w, stride=stride, padding=(k // 2, k // 2), groups=d).contiguous()


def kernel_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """"cpp" where the C++ kernel runs for input x, else "torch" (the twin)."""
    if under_counter():  # FLOP counters see the F.conv2d twin
        return "torch"
    b = backend or requested_backend()
    if b == "triton":  # no Triton kernel for the conv path: its twin (cuDNN on CUDA)
        return "torch"
    return "cpp" if backend_for(x, b, kernel="conv_path") == "cpp" else "torch"


def check_args(x: torch.Tensor, w: torch.Tensor, stride: int) -> None:
    if x.dim() != 5:
        raise ValueError(f"grouped_conv expects x (B, C, d, H, W), got shape {tuple(x.shape)}")
    B, C, d, H, W = x.shape
    if w.dim() != 4 or w.shape[1] != C or w.shape[2] != w.shape[3] or w.shape[0] % d or w.shape[-1] % 2 == 0:
        raise ValueError(f"grouped_conv expects w (d*N, {C}, k, k) with odd k and d={d}, got {tuple(w.shape)}")
    if int(stride) < 1:
        raise ValueError(f"grouped_conv stride must be >= 1, got {stride}")


def grouped_conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, backend: str | None = None) -> torch.Tensor:
    """Grouped k x k convolution of x (B, C, d, H, W) (group i = x[:, :, i]) with w (d*N, C, k, k)."""
    check_args(x, w, stride)
    if w.dtype != x.dtype:
        raise ValueError(f"grouped_conv: w dtype {w.dtype} differs from x dtype {x.dtype}; cast one of them")
    if kernel_backend(x, backend) == "torch":
        return grouped_conv_torch(x, w, int(stride))
    return torch.ops.acmix.grouped_conv(x.contiguous(), w.contiguous(), int(stride))

"""Stage II of convolution: shift-and-sum, in the four forms of docs/operators.md section 3.

Input layout (B, d * k^2, H, W), channel c = i * k^2 + j (i: channel within a
head, j: kernel offset, offset (j // k - k//2, j % k - k//2)). Output
(B, d * N, H', W') with channel o = i * N + n (n: head copy), H' = ceil(H / stride).

    tensor      shift every map by its offset (zero fill) and sum; no parameters
    fixed       grouped conv (groups = d) with frozen one-hot kernels; same numbers as tensor
    learnable   as fixed, kernels are parameters shared by the N head copies
    multigroup  the public release: groups = d, d * N outputs, each its own kernel

All four equal each other at initialisation. `impl` ("fast" or "reference")
selects the code path; the reference is written from the definition and kept
for tests.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from .names import SHIFT_IMPLS, STAGE2_IMPLS


def shift_offsets(k: int) -> list[tuple[int, int]]:
    """Offset (dy, dx) of kernel index j = 0 .. k^2-1."""
    c = k // 2
    return [(j // k - c, j % k - c) for j in range(k * k)]


def one_hot_shift_kernel(k: int, dtype=None, device=None) -> torch.Tensor:
    """(k^2, k, k) kernels: kernel j is 1 at (j // k, j % k), so correlating with it
    (padding k//2) reads the input at offset (j // k - k//2, j % k - k//2)."""
    w = torch.zeros(k * k, k, k, dtype=dtype, device=device)
    for j in range(k * k):
        w[j, j // k, j % k] = 1.0
    return w


def out_size(n: int, stride: int) -> int:
    return (n - 1) // stride + 1


# ----------------------------------------------------------------------------- reference


def shift_zero(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """y[..., p, q] = x[..., p + dy, q + dx], zero where that falls outside."""
    H, W = x.shape[-2:]
    padded = F.pad(x, (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)))
    y0, x0 = max(dy, 0), max(dx, 0)
    return padded[..., y0:y0 + H, x0:x0 + W]


def shift_aggregate_reference(x: torch.Tensor, kernel_size: int, copies: int, stride: int = 1,
                              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Straight from the definitions.

    weight None: tensor shift, out[i*N+n, p] = sum_j x[i*k^2+j, s*p + o_j].
    weight (d*N, k^2, k, k): out[o, p] = sum_{j,a,b} W[o,j,a,b] x[(o//N)*k^2+j, s*p + (a-k//2, b-k//2)].
    """
    k, N, s = kernel_size, copies, stride
    B, ck, H, W = x.shape
    d = ck // (k * k)
    xs = x.reshape(B, d, k * k, H, W)
    if weight is None:
        out = 0
        for j, (dy, dx) in enumerate(shift_offsets(k)):
            out = out + shift_zero(xs[:, :, j], dy, dx)[..., ::s, ::s]
        return out.unsqueeze(2).expand(-1, -1, N, -1, -1).reshape(B, d * N, out.shape[-2], out.shape[-1])
    wv = weight.reshape(d, N, k * k, k, k)
    out = 0
    c = k // 2
    for a in range(k):
        for b in range(k):
            moved = shift_zero(xs, a - c, b - c)[..., ::s, ::s]  # (B, d, k^2, H', W')
            out = out + torch.einsum("bijhw,inj->binhw", moved, wv[..., a, b])
    return out.reshape(B, d * N, out.shape[-2], out.shape[-1])


# ----------------------------------------------------------------------------- fast


def _shift_windows(t: torch.Tensor, j: int, k: int, s: int, Ho: int, Wo: int) -> torch.Tensor:
    """View of the zero-padded maps t (B, d, k^2, Hp, Wp) that offset j reads for every output pixel."""
    a, b = divmod(j, k)
    return t[:, :, j, a:a + s * (Ho - 1) + 1:s, b:b + s * (Wo - 1) + 1:s]


class _TensorShiftSum(torch.autograd.Function):
    """Sum of the k^2 shifted slices of a zero-padded copy, with its adjoint as backward: each
    offset's gradient is dout written into its own channel of one padded buffer (autograd's slice
    backward would allocate and add a full padded buffer per offset)."""

    @staticmethod
    def forward(ctx, x, k, s):
        B, ck, H, W = x.shape
        d, c = ck // (k * k), k // 2
        Ho, Wo = out_size(H, s), out_size(W, s)
        xp = F.pad(x, (c, c, c, c)).reshape(B, d, k * k, H + 2 * c, W + 2 * c)
        out = _shift_windows(xp, 0, k, s, Ho, Wo).clone()
        for j in range(1, k * k):
            out += _shift_windows(xp, j, k, s, Ho, Wo)
        ctx.k, ctx.s, ctx.shape = k, s, (B, ck, H, W)
        return out

    @staticmethod
    def backward(ctx, dout):
        k, s = ctx.k, ctx.s
        B, ck, H, W = ctx.shape
        d, c = ck // (k * k), k // 2
        Ho, Wo = dout.shape[-2:]
        dxp = dout.new_zeros(B, d, k * k, H + 2 * c, W + 2 * c)
        for j in range(k * k):
            _shift_windows(dxp, j, k, s, Ho, Wo).copy_(dout)
        return dxp.reshape(B, ck, H + 2 * c, W + 2 * c)[..., c:c + H, c:c + W], None, None


def _tensor_shift_sum_traced(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """The same sum as plain tensor ops, for traces and FLOP counters (they see and count its adds)."""
    B, ck, H, W = x.shape
    c = k // 2
    xp = F.pad(x, (c, c, c, c)).reshape(B, ck // (k * k), k * k, H + 2 * c, W + 2 * c)
    Ho, Wo = out_size(H, s), out_size(W, s)
    out = _shift_windows(xp, 0, k, s, Ho, Wo)
    for j in range(1, k * k):
        out = out + _shift_windows(xp, j, k, s, Ho, Wo)
    return out


def tensor_shift_sum(x: torch.Tensor, kernel_size: int, stride: int = 1) -> torch.Tensor:
    """(B, d*k^2, H, W) -> (B, d, H', W') by slicing a zero-padded copy: no parameters. Under a trace or
    a dispatch mode (FLOP counters) it runs as plain tensor ops, elsewhere with the adjoint backward."""
    if _checks.under_counter():
        return _tensor_shift_sum_traced(x, int(kernel_size), int(stride))
    return _TensorShiftSum.apply(x, int(kernel_size), int(stride))


def _repeat_copies(y: torch.Tensor, copies: int) -> torch.Tensor:
    if copies == 1:
        return y
    B, d, H, W = y.shape
    return y.unsqueeze(2).expand(B, d, copies, H, W).reshape(B, d * copies, H, W)


class ShiftAggregation(nn.Module):
    """Shift-and-sum over a k x k neighbourhood, in one of the four forms."""

    def __init__(self, channels: int, kernel_size: int = 3, copies: int = 1, stride: int = 1,
                 shift: str = "multigroup", impl: str = "fast"):
        super().__init__()
        _checks.positive_int("channels", channels)
        _checks.odd_kernel("kernel_conv", kernel_size)
        _checks.positive_int("copies", copies)
        _checks.positive_int("stride", stride)
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        _checks.choice("Stage II implementation", impl, STAGE2_IMPLS)
        self.channels, self.kernel_size, self.copies, self.stride = channels, kernel_size, copies, stride
        self.shift, self.impl = shift, impl
        k2 = kernel_size * kernel_size
        init = one_hot_shift_kernel(kernel_size)
        if shift == "fixed":
            self.register_buffer("weight", init.repeat(channels, 1, 1, 1), persistent=False)
        elif shift == "learnable":
            self.weight = nn.Parameter(init.repeat(channels, 1, 1, 1))
        elif shift == "multigroup":
            self.weight = nn.Parameter(init.repeat(channels * copies, 1, 1, 1))
        else:
            self.weight = None
        self.in_channels = channels * k2
        self.out_channels = channels * copies

    def full_weight(self) -> torch.Tensor | None:
        """The (d*N, k^2, k, k) kernel this form is equivalent to (None for tensor)."""
        if self.weight is None:
            return None
        if self.shift == "multigroup":
            return self.weight
        return self.weight.repeat_interleave(self.copies, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.input_4d("ShiftAggregation", x, self.in_channels)
        k, s, N = self.kernel_size, self.stride, self.copies
        if self.impl == "reference":
            w = self.full_weight()
            return shift_aggregate_reference(x, k, N, s, None if w is None else w.to(x.dtype))
        if self.shift == "tensor":
            return _repeat_copies(tensor_shift_sum(x, k, s), N)
        w = self.weight.to(x.dtype)
        y = F.conv2d(x, w, stride=s, padding=k // 2, groups=self.channels)
        return y if self.shift == "multigroup" else _repeat_copies(y, N)

    def extra_repr(self) -> str:
        return (f"d={self.channels}, k={self.kernel_size}, copies={self.copies}, stride={self.stride}, "
                f"shift={self.shift!r}, impl={self.impl!r}: (B, {self.in_channels}, H, W) -> "
                f"(B, {self.out_channels}, H', W')")

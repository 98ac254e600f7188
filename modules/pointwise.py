"""1x1 convolutions as matrix products on CPU: Stage I projections and every backbone's 1x1 convs.

On CPU, oneDNN runs a 1x1 convolution over NCHW maps several times slower than the
same product as a GEMM (measured, torch 2.14.1, 2 threads, 64 -> 192 channels on
8 x 56 x 56: forward 18 ms as `F.conv2d`, 3.6 ms as `baddbmm`; forward+backward 38 ms
against 13 ms). `pointwise_conv` computes out[b, o, p] = bias[o] + sum_c W[o, c] x[b, c, p]
as one of two products, whichever suits the map:

  * maps of more than SMALL_MAP pixels: one `bmm`/`baddbmm` over the flattened pixels, the
    weight broadcast over the batch (no copy of x or of the output);
  * maps of at most SMALL_MAP pixels (the 2 x 2 maps at the end of a 16 px network): one
    `mm` over all B * H * W pixels, x moved to pixels-major order and the output back; per-image
    products of 4 columns leave the GEMM kernel idle, and the two copies are small there.

Stride s > 1 (a ResNet shortcut's 1x1 conv) takes the pixels 0, s, 2s, ... first, as F.conv2d does.
Falls back to `F.conv2d` (the reference) wherever that rewrite is not plainly a view of the same
product: non-CPU devices (cuDNN is fast there), channels-last or other non-contiguous inputs,
dtypes other than float32/float64, autocast, and under `torch.jit.trace` (so a trace-based
counter such as fvcore, run off the shelf, sees the 1x1 convolution it knows; the MACs are the
same). `PointwiseConv2d` is an `nn.Conv2d` (same parameters, state_dict keys and init) whose
forward takes this path, and the plain convolution under any FLOP counter or trace.

Speed of every 1x1 shape of the default cells: `acmix-bench speed --preset default-cells` times
the blocks they sit in; tests/test_pointwise.py holds values and gradients equal to F.conv2d.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import under_counter

# Output maps of at most this many pixels use one mm over all pixels instead of a per-image bmm:
# 2 threads and 1 thread, batch 32, fwd+bwd (e.g. 52 -> 208 channels at 2 x 2: conv2d 4.6 ms,
# bmm 9.4 ms, mm 2.8 ms; 32 -> 128 at 4 x 4: conv2d 7.8, bmm 4.7, mm 6.0 ms).
SMALL_MAP = 4


def pointwise_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             stride: int = 1) -> torch.Tensor:
    """The 1x1 convolution as torch writes it."""
    return F.conv2d(x, weight, bias, stride=stride)


def uses_matmul(x: torch.Tensor) -> bool:
    """Whether `pointwise_conv` takes a matrix-product path for input x."""
    return (not torch.jit.is_tracing() and x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous() and not torch.is_autocast_enabled("cpu"))


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: int = 1) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride) for a (O, C, 1, 1) weight, no padding; same values and gradients."""
    if not uses_matmul(x) or weight.dtype != x.dtype or weight.shape[-2:] != (1, 1):
        return pointwise_conv_reference(x, weight, bias, stride)
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    B, C, H, W = x.shape
    O = weight.shape[0]
    w = weight.reshape(O, C)
    b = None if bias is None else bias.to(x.dtype)
    if H * W <= SMALL_MAP:
        xt = x.permute(0, 2, 3, 1).reshape(B * H * W, C)
        out = torch.mm(xt, w.t()) if b is None else torch.addmm(b, xt, w.t())
        return out.view(B, H, W, O).permute(0, 3, 1, 2).contiguous()
    x3 = x.reshape(B, C, H * W)  # a copy only after a stride
    wb = w.expand(B, O, C)
    out = torch.bmm(wb, x3) if b is None else torch.baddbmm(b.view(1, O, 1), wb, x3)
    return out.view(B, O, H, W)


class PointwiseConv2d(nn.Conv2d):
    """nn.Conv2d(in, out, 1, stride, bias) computed by `pointwise_conv` (GEMM on CPU).

    Same parameters, initialisation and state_dict keys as the nn.Conv2d it stands for (checkpoints and
    `from_official` load unchanged). Under a FLOP counter (dispatch mode) or a trace it runs F.conv2d,
    so every counting voice sees the convolution it always saw."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        if self.kernel_size != (1, 1) or self.padding != (0, 0) or self.dilation != (1, 1) or self.groups != 1 \
                or self.stride[0] != self.stride[1]:
            raise ValueError(f"PointwiseConv2d is a 1x1 conv (kernel_size 1, padding 0, dilation 1, groups 1, "
                             f"square stride), got {super().extra_repr()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if under_counter():
            return super().forward(x)
        return pointwise_conv(x, self.weight, self.bias, self.stride[0])

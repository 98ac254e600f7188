"""k x k convolution as an operator of the suite, fused and decomposed.

Decomposition (docs/operators.md section 1): a k x k conv (zero padding k//2, stride s)
equals k^2 separate 1x1 projections C_in -> C_out (Stage I, run as one 1x1 conv
with k^2 * C_out outputs) followed by shifting each projected map by its kernel
offset and summing (Stage II). Both forms expose `stage1` and `stage2`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import _checks
from .shift import SHIFT_IMPLS, ShiftAggregation


class Conv(nn.Module):
    """Plain k x k convolution (cuDNN / oneDNN): the baseline operator.

    Stage I is the fused nn.Conv2d (its shift-and-sum happens inside the kernel);
    Stage II is an identity kept so every operator has the same two children.
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = False, groups: int = 1):
        super().__init__()
        _checks.positive_int("in_planes", in_planes)
        _checks.positive_int("out_planes", out_planes)
        _checks.odd_kernel("kernel_size", kernel_size)
        _checks.positive_int("stride", stride)
        self.in_planes, self.out_planes, self.kernel_size, self.stride = in_planes, out_planes, kernel_size, stride
        self.stage1 = nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride,
                                padding=kernel_size // 2, bias=bias, groups=groups)
        self.stage2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.input_4d(type(self).__name__, x, self.in_planes)
        return self.stage2(self.stage1(x))


class ShiftSum(nn.Module):
    """Stage II of the decomposed conv: shift-aggregate, then the conv's bias."""

    def __init__(self, out_planes: int, kernel_size: int, stride: int, bias: bool, shift: str):
        super().__init__()
        self.shift = ShiftAggregation(out_planes, kernel_size, copies=1, stride=stride, shift=shift)
        self.bias = nn.Parameter(torch.zeros(out_planes)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shift(x)
        if self.bias is not None:
            # the bias belongs after the sum: added per offset it would be lost at zero-padded borders
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y


class DecomposedConv(nn.Module):
    """k x k conv as Stage I (k^2 1x1 projections) + Stage II (shift-and-sum).

    Stage I output channel o * k^2 + j is the projection for output o at kernel
    offset j, the layout ShiftAggregation expects (d = C_out, one copy).
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = False, shift: str = "tensor"):
        super().__init__()
        _checks.positive_int("in_planes", in_planes)
        _checks.positive_int("out_planes", out_planes)
        _checks.odd_kernel("kernel_size", kernel_size)
        _checks.positive_int("stride", stride)
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        self.in_planes, self.out_planes, self.kernel_size, self.stride = in_planes, out_planes, kernel_size, stride
        self.stage1 = nn.Conv2d(in_planes, out_planes * kernel_size ** 2, 1, bias=False)
        self.stage2 = ShiftSum(out_planes, kernel_size, stride, bias, shift)
        nn.init.kaiming_uniform_(self.stage1.weight, a=5 ** 0.5)  # same scale as a k x k conv:
        with torch.no_grad():  # fan-in of the k x k conv is C_in * k^2, not C_in
            self.stage1.weight.mul_(1.0 / kernel_size)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, shift: str = "tensor") -> "DecomposedConv":
        """The decomposed twin of an nn.Conv2d (odd k, padding k//2, no dilation or groups)."""
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or conv.padding != (k // 2, k // 2) or conv.groups != 1 \
                or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]:
            raise ValueError("from_conv2d needs a square, odd, 'same'-padded conv with groups=1 and dilation=1, "
                             f"got {conv}")
        m = cls(conv.in_channels, conv.out_channels, k, conv.stride[0], conv.bias is not None, shift)
        m = m.to(dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            w = conv.weight.reshape(conv.out_channels, conv.in_channels, k * k).permute(0, 2, 1)
            m.stage1.weight.copy_(w.reshape(conv.out_channels * k * k, conv.in_channels, 1, 1))
            if conv.bias is not None:
                m.stage2.bias.copy_(conv.bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.input_4d("DecomposedConv", x, self.in_planes)
        return self.stage2(self.stage1(x))

    def extra_repr(self) -> str:
        return f"{self.in_planes} -> {self.out_planes}, k={self.kernel_size}, stride={self.stride}"

"""SAN-10/15/19 (Zhao, Jia, Koltun, CVPR 2020): stages of residual blocks whose only spatial operator is
SAN self-attention (pairwise or patchwise), or SAN-ACmix.

Layout, as the authors' code (hszhao/SAN, model/san.py):
  stem        1x1 conv in_chans -> c0, BN, ReLU ("imagenet": then 2x2/2 max pool before stage 0)
  stage i     [transition: 2x2/2 max pool (i > 0), 1x1 conv c_{i-1} -> c_i (no bias)]
              (stage 0: the 1x1 conv c0 -> c0), then the blocks, then BN, ReLU
  block       pre-activation: BN, ReLU, operator (c -> c/4, `sam`), BN, ReLU, 1x1 conv c/4 -> c (bias),
              plus the identity
  head        global average pool, linear
Stage widths c = 64, 256, 512, 1024, 2048; the operator has rel_planes = c/16, out_planes = c/4,
share_planes 8; footprints (kernels) 3, 7, 7, 7, 7; blocks per stage SAN-10 [2, 1, 2, 4, 1],
SAN-15 [3, 2, 3, 5, 2], SAN-19 [3, 3, 4, 6, 3]. Everything keeps PyTorch's default initialisation,
as the authors' code does.

Stems: "imagenet" (224 px: stages at 112, 56, 28, 14, 7) and "small" (no pool before stage 0:
32 px gives 32, 16, 8, 4, 2). The stem stays a 1x1 conv in both (SAN has no spatial conv).
Footprint policy for small maps (reflection padding needs the map larger than k // 2): each block
uses kernel = min(kernel, 2 m - 1), m the smaller side of its map, computed from `img_size` at
construction (`kernels_used`); at 224 px nothing is clamped.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import _checks
from ..operators import parse_mixing
from ..san import SAN_TYPES, SANACmix, SANSelfAttention
from ..names import SAN_OPS, SHIFT_IMPLS
from .resnet import clamp_kernel_att

SAN_LAYERS = {"san10": (2, 1, 2, 4, 1), "san15": (3, 2, 3, 5, 2), "san19": (3, 3, 4, 6, 3)}
SAN_KERNELS = (3, 7, 7, 7, 7)
SAN_WIDTHS = (64, 256, 512, 1024, 2048)
SAN_STEMS = ("imagenet", "small")
WIDTH_QUANTUM = 32  # c/4 divisible by share_planes (8) and by c/16 (the ACmix groups)


class SANBlock(nn.Module):
    def __init__(self, planes: int, op: str, kernel: int, sa_type: str, shift: str, mixing: str,
                 kernel_conv: int):
        super().__init__()
        mid, rel = planes // 4, planes // 16
        self.bn1 = nn.BatchNorm2d(planes)
        if op == "acmix":
            self.sam = SANACmix(planes, mid, sa_type, kernel, rel, 8, kernel_conv, shift, mixing)
        else:
            self.sam = SANSelfAttention(planes, mid, op, kernel, rel, 8)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv = nn.Conv2d(mid, planes, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        out = self.relu(self.bn2(self.sam(out)))
        return self.conv(out) + x


def _widths(widths, width_mult) -> list[int]:
    if widths is not None:
        widths = list(widths)
        if len(widths) != 5:
            raise ValueError(f"widths must be 5 per-stage SAN widths (multiples of {WIDTH_QUANTUM}), got {widths}")
        for i, w in enumerate(widths):
            _checks.positive_int(f"widths[{i}]", w)
            if w % WIDTH_QUANTUM:
                raise ValueError(f"widths[{i}]={w} must be a multiple of {WIDTH_QUANTUM} (c/4 split into "
                                 f"share_planes 8 and c/16 relation channels); e.g. "
                                 f"{max(WIDTH_QUANTUM, round(w / WIDTH_QUANTUM) * WIDTH_QUANTUM)}")
        return widths
    if isinstance(width_mult, bool) or not (isinstance(width_mult, (int, float)) and width_mult > 0):
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    q = WIDTH_QUANTUM
    return [max(q, int(round(w * width_mult / q)) * q) for w in SAN_WIDTHS]


class SAN(nn.Module):
    """SAN backbone; `op` is "pairwise" | "patchwise" (SAN) or "acmix" (SAN-ACmix on `sa_type`)."""

    def __init__(self, layers=SAN_LAYERS["san10"], op: str = "pairwise", *, kernels=SAN_KERNELS,
                 num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet", img_size: int = 224,
                 widths=None, width_mult: float = 1.0, sa_type: str = "patchwise", shift: str = "multigroup",
                 mixing="learnable", kernel_size: int = 3):
        super().__init__()
        _checks.choice("SAN operator", op, SAN_OPS)
        _checks.choice("stem", stem, SAN_STEMS)
        _checks.choice("SAN attention type", sa_type, SAN_TYPES)
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        mixing = parse_mixing(mixing)
        for name, v in (("num_classes", num_classes), ("in_chans", in_chans), ("img_size", img_size)):
            _checks.positive_int(name, v)
        _checks.odd_kernel("kernel_size", kernel_size)
        layers, kernels = tuple(layers), tuple(kernels)
        if len(layers) != 5 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be 5 positive integers (blocks per stage), got {layers}")
        if len(kernels) != 5:
            raise ValueError(f"kernels must be 5 odd footprint sizes (one per stage), got {kernels}")
        for i, k in enumerate(kernels):
            _checks.odd_kernel(f"kernels[{i}]", k)
        widths = _widths(widths, width_mult)
        self.op, self.layers, self.widths, self.stem_kind, self.img_size = op, layers, widths, stem, img_size
        self.sa_type = sa_type if op == "acmix" else op

        c0 = widths[0]
        self.conv_in, self.bn_in = nn.Conv2d(in_chans, c0, 1, bias=False), nn.BatchNorm2d(c0)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.kernels_used: list[int] = []
        size = img_size
        prev = c0
        for i, (n, k, c) in enumerate(zip(layers, kernels, widths)):
            if i > 0 or stem == "imagenet":
                size //= 2
                if size < 1:
                    raise ValueError(f"img_size={img_size} is too small for SAN's {5 if stem == 'imagenet' else 4} "
                                     f"2x2 poolings with stem={stem!r}; use at least "
                                     f"{32 if stem == 'imagenet' else 16} px")
            ks = clamp_kernel_att(k, size)
            self.kernels_used += [ks] * n
            setattr(self, f"conv{i}", nn.Conv2d(prev, c, 1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c))
            setattr(self, f"layer{i}", nn.Sequential(*[SANBlock(c, op, ks, self.sa_type, shift, mixing, kernel_size)
                                                       for _ in range(n)]))
            prev = c
        self.final_map = size
        self.num_features = prev
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.conv_in.in_channels:
            raise ValueError(f"SAN: expected input (B, {self.conv_in.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.relu(self.bn_in(self.conv_in(x)))
        for i in range(5):
            if i > 0 or self.stem_kind == "imagenet":
                x = self.pool(x)
            x = getattr(self, f"conv{i}")(x)
            x = self.relu(getattr(self, f"bn{i}")(getattr(self, f"layer{i}")(x)))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))

    def extra_repr(self) -> str:
        return (f"op={self.op!r}, sa_type={self.sa_type!r}, layers={self.layers}, widths={self.widths}, "
                f"stem={self.stem_kind!r}, img_size={self.img_size}")

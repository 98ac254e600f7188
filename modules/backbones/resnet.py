"""ResNet with bottleneck blocks whose spatial k x k conv is any operator of the suite.

Block layout (ResNet v1.5, as the stand-alone self-attention and ACmix releases):
1x1 conv -> BN -> ReLU -> spatial operator (stride here) -> BN -> ReLU -> 1x1 conv
(x4 expansion) -> BN, plus the shortcut (1x1 conv + BN when the shape changes).
The spatial operator is the child `conv2` of every block, so per-stage accounting
by module path sees e.g. `layer1.0.conv2.stage1` and `layer1.0.conv2.stage2`.

Depths (blocks per stage): ResNet-26 [1, 2, 4, 1], ResNet-38 [2, 3, 5, 2],
ResNet-50 [3, 4, 6, 3]. Stems: "imagenet" (7x7/2 conv + 3x3/2 max pool, for
224 px) and "small" (one 3x3/1 conv, no pool, for 28-64 px). Both stems are
convolutions for every operator (the SASA and ACmix papers keep a conv stem).

Attention window policy for small maps: reflection padding of a k_a x k_a
window needs the map larger than (k_a - 1) / 2. Each block therefore uses
kernel_att = min(kernel_att, 2 * m - 1) where m is the smaller side of the
map entering the operator, computed from `img_size` at construction; at the
default 224 px (ImageNet stem) or 28-64 px (small stem) only the last stage
of 28-32 px inputs is affected (4x4 maps keep k_a = 7; 2x2 maps get 3).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import _checks
from ..conv import Conv
from ..factory import create_op
from ..names import RESNET_OPS, SHIFT_IMPLS
from ..operators import parse_mixing
from ..shift import out_size
from ..pointwise import PointwiseConv2d

RESNET_DEPTHS = {"resnet26": (1, 2, 4, 1), "resnet38": (2, 3, 5, 2), "resnet50": (3, 4, 6, 3)}
STEMS = ("imagenet", "small")
BASE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


def clamp_kernel_att(kernel_att: int, map_size: int) -> int:
    """Largest odd window <= kernel_att whose reflection padding fits a map of side `map_size`."""
    return max(1, min(kernel_att, 2 * map_size - 1))


def make_spatial_op(op: str, in_planes: int, out_planes: int, stride: int, *, kernel_size: int = 3,
                    kernel_att: int = 7, heads: int = 4, shift: str = "multigroup", mixing="learnable") -> nn.Module:
    """The k x k spatial operator of a bottleneck: `create_op` under the ResNet's argument names."""
    _checks.choice("ResNet operator", op, RESNET_OPS)
    return create_op(op, in_planes, out_planes, stride=stride, kernel_conv=kernel_size, kernel_att=kernel_att,
                     heads=heads, shift=shift, mixing=mixing)


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, width: int, stride: int, op_kwargs: dict):
        super().__init__()
        out_planes = width * EXPANSION
        # the 1x1 convs as GEMMs on CPU (modules/pointwise.py), for every operator alike
        self.conv1 = PointwiseConv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = make_spatial_op(in_planes=width, out_planes=width, stride=stride, **op_kwargs)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = PointwiseConv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(PointwiseConv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stage_widths(widths, width_mult: float, heads: int, op: str) -> list[int]:
    if widths is not None:
        widths = list(widths)
        if len(widths) != 4:
            raise ValueError(f"widths must be 4 per-stage base widths (before the x{EXPANSION} expansion), got {widths}")
        for i, w in enumerate(widths):
            _checks.positive_int(f"widths[{i}]", w)
        return widths
    if not (isinstance(width_mult, (int, float)) and width_mult > 0):
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    # attention operators need widths divisible by the head count: round to a multiple of it
    q = heads if op in ("sa", "acmix") else 1
    return [max(q, int(round(w * width_mult / q)) * q) for w in BASE_WIDTHS]


class ResNet(nn.Module):
    """ResNet-26/38/50-style network; `op` picks the bottlenecks' spatial operator.

    widths: per-stage base widths (the bottleneck's inner width; stage output is
    4x that); when None, BASE_WIDTHS x width_mult (rounded to a multiple of
    `heads` for attention operators). The stem's width is widths[0].
    """

    def __init__(self, depths=(1, 2, 4, 1), op: str = "conv", *, num_classes: int = 1000, in_chans: int = 3,
                 stem: str = "imagenet", img_size: int = 224, widths=None, width_mult: float = 1.0,
                 kernel_att: int = 7, heads: int = 4, kernel_size: int = 3, shift: str = "multigroup",
                 mixing="learnable"):
        super().__init__()
        _checks.choice("ResNet operator", op, RESNET_OPS)
        _checks.choice("stem", stem, STEMS)
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        mixing = parse_mixing(mixing)
        for name, v in (("num_classes", num_classes), ("in_chans", in_chans), ("img_size", img_size),
                        ("heads", heads)):
            _checks.positive_int(name, v)
        _checks.odd_kernel("kernel_att", kernel_att)
        _checks.odd_kernel("kernel_size", kernel_size)
        if len(depths) != 4 or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be 4 positive integers (blocks per stage), got {depths}")
        widths = _stage_widths(widths, width_mult, heads, op)
        self.op, self.depths, self.widths, self.stem_kind, self.img_size = op, tuple(depths), widths, stem, img_size

        stem_w = widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_w, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(stem_w), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
            size = out_size(out_size(img_size, 2), 2)
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_w, 3, stride=1, padding=1, bias=False),
                                      nn.BatchNorm2d(stem_w), nn.ReLU(inplace=True))
            size = img_size
        self.kernel_atts: list[int] = []  # per block, after clamping (documented policy)
        in_planes = stem_w
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for b in range(depth):
                stride = 2 if (i > 0 and b == 0) else 1
                ka = clamp_kernel_att(kernel_att, size)
                self.kernel_atts.append(ka)
                blocks.append(Bottleneck(in_planes, width, stride, dict(
                    op=op, kernel_size=kernel_size, kernel_att=ka, heads=heads, shift=shift, mixing=mixing)))
                in_planes = width * EXPANSION
                size = out_size(size, stride)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.final_map = size
        self.num_features = in_planes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self):
        # He init for the network's own convs; operators keep their own initialisation
        # (their 1x1 projections, light FC and shift kernels have specific inits)
        def he(conv):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

        he(self.stem[0])
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                he(m.conv1)
                he(m.conv3)
                if m.downsample is not None:
                    he(m.downsample[0])
                if isinstance(m.conv2, Conv):
                    he(m.conv2.stage1)
                nn.init.zeros_(m.bn3.weight)  # every residual branch starts as identity

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.stem[0].in_channels:
            raise ValueError(f"ResNet: expected input (B, {self.stem[0].in_channels}, H, W), got {tuple(x.shape)}")
        x = self.stem(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))

    def extra_repr(self) -> str:
        return (f"op={self.op!r}, depths={self.depths}, widths={self.widths}, stem={self.stem_kind!r}, "
                f"img_size={self.img_size}")

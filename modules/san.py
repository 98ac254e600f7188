"""SAN self-attention (Zhao, Jia, Koltun, CVPR 2020) and SAN-ACmix, in the suite's Stage I / Stage II form.

One SAN operator ("SAM") maps (B, C_in, H, W) -> (B, C_out, H, W) (stride 1: SAN downsamples by
pooling between stages). With r = rel_planes, G = C_out / share_planes weight channels, a k x k
footprint R(p) around pixel p (reflection padded; offsets o_j, j = 0 .. k^2-1, row-major):

Stage I (`stage1`): three 1x1 convs with bias, run as one conv C_in -> 2r + C_out:
    x1 (r channels), x2 (r channels), x3 (C_out channels) = [x1 | x2 | x3].
Stage II attention path (`stage2.attention`), the weights w (B, G, k^2, H, W) then
    out[c, p] = sum_j w[c mod G, j, p] * x3[c, p + o_j]        (SAN's "aggregation")
  pairwise: delta_j(p) = [x1[p] - x2[p + o_j] ; P[p] - P[p + o_j]] (r + 2 channels), where
            P = conv_p(coordinate grid) (2 -> 2, 1x1 with bias; grid channel 0 along width,
            channel 1 along height, linspace(-1, 1)); w = softmax_j(gamma(delta_j(p))) with
            gamma = BN, ReLU, 1x1 (r+2 -> r, no bias), BN, ReLU, 1x1 (r -> G, bias), applied
            per offset (the relation tensor is (B, r + 2, k^2, H W)).
  patchwise: the footprint [x1[p] ; x2[p + o_0] ; ... ; x2[p + o_{k^2-1}]] (r (k^2 + 1)
            channels, x2's channel c at c k^2 + j), w = gamma(footprint) with gamma = BN, ReLU,
            1x1 (r (k^2+1) -> G, no bias), BN, ReLU, 1x1 (G -> k^2 G, bias), output channel
            g k^2 + j; no softmax (as in the reference code).
SAN-ACmix (`SANACmix`) adds `stage2.conv`, the ACmix convolution path on the same Stage I
output, and G = alpha * attention + beta * conv (learnable scalars, 0.5 each at init).

Two Stage II implementations, switched by `impl` (`set_stage2_impl`):
  reference  the formulas: a Python loop over the k^2 offsets, each reading a slice of the
             reflection-padded map (float64-testable)
  fast       every footprint at once (one unfold of the padded map; the aggregation as one
             broadcast product and sum); same values and gradients (tests/test_san.py)
Maps must be larger than k // 2 on both sides (reflection padding); smaller maps are a
ValueError naming the largest footprint that fits (the backbone clamps its kernels).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from .local_attention import position_grid
from .operators import ConvPath, Stage2, parse_mixing
from .pointwise import pointwise_conv
from .shift import SHIFT_IMPLS, STAGE2_IMPLS

SAN_TYPES = ("pairwise", "patchwise")


# ----------------------------------------------------------------------------- Stage II functions


def _padded(x: torch.Tensor, k: int) -> torch.Tensor:
    p = k // 2
    return F.pad(x, (p, p, p, p), mode="reflect") if p else x


def footprint_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, k^2, H, W): entry j at p is x[p + o_j], reflection padded (loop over offsets)."""
    H, W = x.shape[-2:]
    xp = _padded(x, k)
    return torch.stack([xp[..., a:a + H, b:b + W] for a in range(k) for b in range(k)], dim=2)


def footprint_fast(x: torch.Tensor, k: int) -> torch.Tensor:
    """footprint_reference as one unfold of the padded map."""
    B, C, H, W = x.shape
    return F.unfold(_padded(x, k), k).view(B, C, k * k, H, W)


def aggregation_reference(v: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """out[c, p] = sum_j w[c mod G, j, p] v[c, p + o_j]; v (B, C, H, W), w (B, G, k^2, H, W)."""
    B, C, H, W = v.shape
    G = w.shape[1]
    wc = w.repeat(1, C // G, 1, 1, 1)  # channel c reads weight channel c mod G
    vp = _padded(v, k)
    out = 0
    for a in range(k):
        for b in range(k):
            out = out + wc[:, :, a * k + b] * vp[..., a:a + H, b:b + W]
    return out


def aggregation_fast(v: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """aggregation_reference as one broadcast product over every footprint and a sum over j."""
    B, C, H, W = v.shape
    G = w.shape[1]
    win = footprint_fast(v, k).view(B, C // G, G, k * k, H, W)
    # expand (a view) so that counters see a product of two full tensors even where G k^2 H W = 1
    return (win * w.unsqueeze(1).expand_as(win)).sum(3).reshape(B, C, H, W)


_FOOTPRINT = {"reference": footprint_reference, "fast": footprint_fast}
_AGGREGATION = {"reference": aggregation_reference, "fast": aggregation_fast}


# ----------------------------------------------------------------------------- modules


def _gamma(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """SAN's weight function: BN, ReLU, 1x1 (no bias), BN, ReLU, 1x1 (bias)."""
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_mid, 1, bias=False),
                         nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True), nn.Conv2d(c_mid, c_out, 1))


class SANProjection(nn.Module):
    """Stage I of SAN: its three 1x1 convs (x1, x2: rel_planes each; x3: out_planes), with bias, as one conv."""

    def __init__(self, in_planes: int, rel_planes: int, out_planes: int):
        super().__init__()
        self.in_planes, self.rel_planes, self.out_planes = in_planes, rel_planes, out_planes
        self.qkv = nn.Conv2d(in_planes, 2 * rel_planes + out_planes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.qkv.weight, self.qkv.bias)


class SANAttentionPath(nn.Module):
    """Stage II of SAN (pairwise or patchwise): weights from gamma, then the aggregation."""

    def __init__(self, sa_type: str, rel_planes: int, out_planes: int, share_planes: int, kernel_size: int,
                 impl: str = "fast"):
        super().__init__()
        _checks.choice("SAN attention type", sa_type, SAN_TYPES)
        _checks.choice("Stage II implementation", impl, STAGE2_IMPLS)
        self.sa_type, self.rel_planes, self.out_planes, self.kernel_size, self.impl = (
            sa_type, rel_planes, out_planes, kernel_size, impl)
        self.weight_planes = out_planes // share_planes
        r, G, k2 = rel_planes, self.weight_planes, kernel_size ** 2
        if sa_type == "pairwise":
            self.conv_w = _gamma(r + 2, r, G)
            self.conv_p = nn.Conv2d(2, 2, 1)
        else:
            self.conv_w = _gamma(r * (k2 + 1), G, k2 * G)

    def weights(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """(B, G, k^2, H, W) aggregation weights from x1, x2 (B, r, H, W)."""
        B, r, H, W = x1.shape
        k = self.kernel_size
        k2, G = k * k, self.weight_planes
        fp = _FOOTPRINT[self.impl]
        if self.sa_type == "pairwise":
            rel = x1.unsqueeze(2) - fp(x2, k)  # (B, r, k^2, H, W)
            p = self.conv_p(position_grid(H, W, x1.dtype, x1.device))  # (1, 2, H, W); the batch shares it
            pos = (p.unsqueeze(2) - fp(p, k)).expand(B, 2, k2, H, W)
            delta = torch.cat([rel, pos], dim=1).reshape(B, r + 2, k2, H * W)
            return self.conv_w(delta).softmax(dim=2).view(B, G, k2, H, W)
        # x1 first, then the footprint of x2 with channel c's offset j at c k^2 + j
        feat = torch.cat([x1.reshape(B, r, 1, H * W), fp(x2, k).reshape(B, r * k2, 1, H * W)], dim=1)
        return self.conv_w(feat).view(B, G, k2, H, W)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        r = self.rel_planes
        x1, x2, x3 = qkv[:, :r], qkv[:, r:2 * r], qkv[:, 2 * r:]
        return _AGGREGATION[self.impl](x3, self.weights(x1, x2), self.kernel_size)

    def extra_repr(self) -> str:
        return (f"{self.sa_type}, rel_planes={self.rel_planes}, out_planes={self.out_planes}, "
                f"weight_planes={self.weight_planes}, kernel_size={self.kernel_size}, impl={self.impl!r}")


def _check_san_args(in_planes, out_planes, rel_planes, share_planes, kernel_size, sa_type):
    _checks.positive_int("in_planes", in_planes)
    _checks.positive_int("out_planes", out_planes)
    _checks.positive_int("rel_planes", rel_planes)
    _checks.positive_int("share_planes", share_planes)
    _checks.odd_kernel("kernel_size", kernel_size)
    _checks.choice("SAN attention type", sa_type, SAN_TYPES)
    _checks.divisible("out_planes", out_planes, "share_planes", share_planes)


class SANSelfAttention(nn.Module):
    """SAN's self-attention operator (its "SAM"): Stage I the three 1x1 convs, Stage II pairwise or
    patchwise attention. rel_planes defaults to out_planes // 4 (SAN: planes // 16 with out = planes // 4)."""

    stride = 1

    def __init__(self, in_planes: int, out_planes: int, sa_type: str = "pairwise", kernel_size: int = 7,
                 rel_planes: int | None = None, share_planes: int = 8):
        super().__init__()
        rel_planes = out_planes // 4 if rel_planes is None and isinstance(out_planes, int) else rel_planes
        _check_san_args(in_planes, out_planes, rel_planes, share_planes, kernel_size, sa_type)
        self.in_planes, self.out_planes, self.rel_planes, self.share_planes = in_planes, out_planes, rel_planes, share_planes
        self.sa_type, self.kernel_size = sa_type, kernel_size
        self.stage1 = SANProjection(in_planes, rel_planes, out_planes)
        self.stage2 = Stage2(attention=SANAttentionPath(sa_type, rel_planes, out_planes, share_planes, kernel_size))

    def _check_input(self, x):
        name = type(self).__name__
        _checks.input_4d(name, x, self.in_planes)
        H, W = x.shape[-2:]
        pad = self.kernel_size // 2
        if pad >= H or pad >= W:
            raise ValueError(f"{name}: the {self.kernel_size}x{self.kernel_size} footprint's reflection padding {pad} "
                             f"needs H and W > {pad}, got {H}x{W}; use kernel_size <= {2 * min(H, W) - 1} for this "
                             f"map, or a larger input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.stage2.attention(self.stage1(x))

    def extra_repr(self) -> str:
        return (f"{self.in_planes} -> {self.out_planes}, {self.sa_type}, rel_planes={self.rel_planes}, "
                f"share_planes={self.share_planes}, kernel_size={self.kernel_size}")


class SANACmix(SANSelfAttention):
    """SAN-ACmix: SAN's Stage I shared by SAN's attention path and the ACmix convolution path.

    The convolution path reads the Stage I output as (B, 2 + N, d, H, W) with d = rel_planes and
    N = out_planes / rel_planes: x1 and x2 are one group each, x3 is N groups of d, so the groups
    play the role of ACmix's 3N head maps (q, k, v of N heads of d channels each; SAN's x1, x2 are
    narrower than x3, hence 2 + N inputs to the light FC instead of 3N). Light FC 2 + N -> k^2 (no
    bias), shift aggregation in any of the four forms, output channel i N + n, as in ResNet-ACmix.

    Default sa_type "patchwise": the paper's SAN-ACmix costs (1.9 / 2.7 / 3.4 GMACs for SAN-10 / 15 /
    19) are at or below the pairwise SAN's (2.2 / 3.0 / 3.8 G), and adding a path cannot lower a
    count, while they sit just above the patchwise SAN's (1.9 / 2.6 / 3.3 G); likewise the
    parameters (12.1 / 16.6 / 21.2 M against patchwise 11.8 / 16.2 / 20.5 M and pairwise 10.5 /
    14.1 / 17.6 M). Pairwise is available through sa_type.
    """

    def __init__(self, in_planes: int, out_planes: int, sa_type: str = "patchwise", kernel_size: int = 7,
                 rel_planes: int | None = None, share_planes: int = 8, kernel_conv: int = 3,
                 shift: str = "multigroup", mixing="learnable"):
        super().__init__(in_planes, out_planes, sa_type, kernel_size, rel_planes, share_planes)
        _checks.odd_kernel("kernel_conv", kernel_conv)
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        _checks.divisible("out_planes", out_planes, "rel_planes", self.rel_planes)
        mixing = parse_mixing(mixing)
        self.kernel_conv, self.shift, self.mixing = kernel_conv, shift, mixing
        self.heads = out_planes // self.rel_planes
        att = None if mixing == "conv" else self.stage2.attention
        conv = None if mixing == "att" else ConvPath(self.heads, self.rel_planes, kernel_conv, 1, fc_bias=False,
                                                     shift=shift, in_groups=2 + self.heads)
        self.stage2 = Stage2(att, conv, mixing, mix_init=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        B, _, H, W = x.shape
        qkv = self.stage1(x)
        s2 = self.stage2
        att = s2.attention(qkv) if hasattr(s2, "attention") else None
        conv = s2.conv(qkv.view(B, 2 + self.heads, self.rel_planes, H, W)) if hasattr(s2, "conv") else None
        return s2.mix(att, conv)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel_conv={self.kernel_conv}, shift={self.shift!r}, mixing={self.mixing!r}"

"""Swin Transformer whose blocks use window self-attention or ACmix window attention.

Block (pre-norm, as Swin): x + drop_path(op(norm1(x))), then x + drop_path(mlp(norm2(x))).
The attention operator is the child `attn` of every block
(`layers.0.blocks.1.attn.stage1`, `...attn.stage2`), taking tokens (B, H, W, C) and
doing the cyclic shift of shifted-window blocks itself (shift_size = M // 2 on odd
blocks).

Shapes are checked at construction, never mid-forward: the image must be a
multiple of the patch size; a map that patch merging halves must be even; and
the window must divide every stage's map. As in the Swin release, a stage whose
map is not larger than the window uses a window equal to the map and no shift
(e.g. the last stage of Swin-T at 224 px is 7x7 with window 7, no shift).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import _checks
from ..factory import create_op
from ..names import SHIFT_IMPLS, SWIN_OPS
from ..operators import parse_mixing

# name -> embed_dim, depths, heads, window, patch, img_size, drop_path_rate
SWIN_CONFIGS = {
    "swin_t": dict(embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window_size=7, patch_size=4,
                   img_size=224, drop_path_rate=0.2),
    "swin_s": dict(embed_dim=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24), window_size=7, patch_size=4,
                   img_size=224, drop_path_rate=0.3),
    # small inputs (CIFAR 32 px; Fashion-MNIST resized to 32): maps 16, 8, 4, 2
    "swin_mini": dict(embed_dim=48, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24), window_size=4, patch_size=2,
                      img_size=32, drop_path_rate=0.1),
    # a narrower, shallower one for smoke runs and tests
    "swin_micro": dict(embed_dim=24, depths=(1, 1, 2, 1), heads=(1, 2, 4, 8), window_size=4, patch_size=2,
                       img_size=32, drop_path_rate=0.0),
}


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability p (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift_size: int, op: str, mlp_ratio: float,
                 drop_path: float, shift: str, mixing: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        # a Swin's "sa" and "acmix" are the window kinds of the operator vocabulary
        self.attn = create_op(f"window-{op}", dim, dim, window=window, heads=heads, shift_size=shift_size,
                              shift=shift, mixing=mixing)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (4C), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
        x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], dim=-1)))


class SwinStage(nn.Module):
    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample

    def forward(self, x):
        x = self.blocks(x)
        return x if self.downsample is None else self.downsample(x)


def _heads_per_stage(heads, n: int) -> list[int]:
    if isinstance(heads, int) and not isinstance(heads, bool):
        return [heads * 2 ** i for i in range(n)]
    heads = list(heads)
    if len(heads) != n:
        raise ValueError(f"heads must be an int (first stage, doubled per stage) or {n} per-stage ints, got {heads}")
    return heads


class SwinTransformer(nn.Module):
    """Swin with `op` = "sa" (W-MSA / SW-MSA) or "acmix" (Swin-ACmix) in every block."""

    def __init__(self, op: str = "sa", *, embed_dim: int = 96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24),
                 window_size: int = 7, patch_size: int = 4, img_size: int = 224, in_chans: int = 3,
                 num_classes: int = 1000, mlp_ratio: float = 4.0, drop_path_rate: float = 0.1,
                 shift: str = "multigroup", mixing="learnable"):
        super().__init__()
        _checks.choice("Swin operator", op, SWIN_OPS)
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        mixing = parse_mixing(mixing)
        for name, v in (("embed_dim", embed_dim), ("window_size", window_size), ("patch_size", patch_size),
                        ("img_size", img_size), ("in_chans", in_chans), ("num_classes", num_classes)):
            _checks.positive_int(name, v)
        depths = tuple(depths)
        if not depths or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be positive integers (blocks per stage), got {depths}")
        heads = _heads_per_stage(heads, len(depths))
        if img_size % patch_size:
            raise ValueError(f"Swin: img_size={img_size} is not a multiple of patch_size={patch_size}; "
                             f"use an image size such as {img_size // patch_size * patch_size or patch_size}")
        self.op, self.depths, self.embed_dim, self.img_size = op, depths, embed_dim, img_size

        # shapes first: every error is raised before any layer is built
        size, plan = img_size // patch_size, []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2 ** i
            _checks.divisible(f"stage {i + 1} dim", dim, f"heads[{i}]", heads[i])
            window, shifted = (size, 0) if size <= window_size else (window_size, window_size // 2)
            if size % window:
                raise ValueError(
                    f"Swin: window_size={window} does not divide the {size}x{size} token map of stage {i + 1} "
                    f"(img_size={img_size}, patch_size={patch_size}); choose img_size so every stage map is a "
                    f"multiple of the window, e.g. img_size={patch_size * window * 2 ** (len(depths) - 1)}")
            last = i == len(depths) - 1
            if not last and size % 2:
                raise ValueError(f"Swin: patch merging after stage {i + 1} needs an even token map, got "
                                 f"{size}x{size} (img_size={img_size}, patch_size={patch_size}); use "
                                 f"img_size a multiple of {patch_size * 2 ** (len(depths) - 1)} or fewer stages")
            plan.append((dim, size, window, shifted))
            size = size if last else size // 2
        self.stage_maps = [p[1] for p in plan]
        self.windows = [p[2] for p in plan]

        self.patch_embed = nn.Sequential(nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size))
        self.patch_norm = nn.LayerNorm(embed_dim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        layers, k = [], 0
        for i, (depth, (dim, size, window, shifted)) in enumerate(zip(depths, plan)):
            blocks = [SwinBlock(dim, heads[i], window, 0 if b % 2 == 0 else shifted, op, mlp_ratio,
                                dpr[k + b], shift, mixing) for b in range(depth)]
            k += depth
            layers.append(SwinStage(blocks, PatchMerging(dim) if i < len(depths) - 1 else None))
        self.layers = nn.ModuleList(layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.patch_embed[0]
        if x.dim() != 4 or x.shape[1] != conv.in_channels or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"Swin: built for input (B, {conv.in_channels}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}; build with img_size= the input size")
        x = self.patch_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(1, 2)))

    def extra_repr(self) -> str:
        return (f"op={self.op!r}, embed_dim={self.embed_dim}, depths={self.depths}, img_size={self.img_size}, "
                f"stage maps={self.stage_maps}, windows={self.windows}")

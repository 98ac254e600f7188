"""Pyramid Vision Transformer (PVT v1) whose blocks use spatial-reduction attention or PVT-ACmix.

Architecture (Wang et al., ICCV 2021, as its public classification code builds it):
four stages; stage i starts with a patch embedding (Conv2d patch x patch, stride
patch, with bias, then LayerNorm eps 1e-5; patch 4 for stage 1 and 2 after),
adds a learned position embedding (one per token; the last stage has one more
for the class token, which is prepended there), then runs pre-norm blocks
x + drop_path(attn(norm1(x), H, W)); x + drop_path(mlp(norm2(x))) with
LayerNorm eps 1e-6 and MLP Linear(C, rC) - GELU - Linear(rC, C). The attention's
reduction LayerNorm keeps eps 1e-5 (as the reference). Head: LayerNorm (eps 1e-6)
then Linear on the class token. Stochastic depth rises linearly to drop_path_rate
(0.1, the reference's training default; the model builders default to 0).

The attention operator is the child `attn` of every block (`stages.0.blocks.1.attn.stage1`,
`...attn.stage2.attention`, `...attn.stage2.conv`).

Stems: "imagenet" (patch 4, then 2: maps 56, 28, 14, 7 at 224 px) and "small"
(patch 2, then 2: maps 16, 8, 4, 2 at 32 px; 8, 4, 2, 1 at 16 px). Each stage's sr
ratio is clamped to the largest divisor of its map side that is <= the configured
ratio, so the reduced map is whole and >= 1 px (at 224 px nothing changes).
Shapes are checked at construction: the image must be a multiple of the first
patch and every later map at least 1 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import _checks
from ..operators import parse_mixing
from ..pvt_attention import CONV_KV_MODES, SpatialReductionAttention, SRACmix
from ..shift import SHIFT_IMPLS
from .swin import DropPath, Mlp

PVT_OPS = ("sa", "acmix")

# name -> depths, embed dims, heads, MLP ratios, sr ratios (PVT v1 Tiny / Small)
PVT_CONFIGS = {
    "pvt_t": dict(depths=(2, 2, 2, 2), embed_dims=(64, 128, 320, 512), heads=(1, 2, 5, 8),
                  mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1)),
    "pvt_s": dict(depths=(3, 4, 6, 3), embed_dims=(64, 128, 320, 512), heads=(1, 2, 5, 8),
                  mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1)),
}
PVT_STEM_PATCH = {"imagenet": 4, "small": 2}


def clamp_sr_ratio(ratio: int, side: int) -> int:
    """Largest divisor of the map side that is <= the configured ratio."""
    return max(r for r in range(1, min(ratio, side) + 1) if side % r == 0)


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) map -> (B, H/p * W/p, C) tokens: strided p x p conv, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PVTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float, drop_path: float, op: str,
                 cls_token: bool, shift: str, mixing: str, conv_kv: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if op == "sa":
            self.attn = SpatialReductionAttention(dim, heads, sr_ratio, cls_token=cls_token)
        else:
            self.attn = SRACmix(dim, heads, sr_ratio, cls_token=cls_token, shift=shift, mixing=mixing,
                                conv_kv=conv_kv)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PVTStage(nn.Module):
    def __init__(self, embed: PatchEmbed, num_tokens: int, dim: int, blocks: list[nn.Module]):
        super().__init__()
        self.patch_embed = embed
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.blocks = nn.ModuleList(blocks)


def _per_stage(name: str, v, n: int, cast=int) -> list:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [cast(v)] * n
    v = list(v)
    if len(v) != n:
        raise ValueError(f"{name} must be one value or {n} per-stage values, got {v}")
    return v


class PyramidVisionTransformer(nn.Module):
    """PVT v1 with `op` = "sa" (spatial-reduction attention) or "acmix" (PVT-ACmix) in every block."""

    def __init__(self, op: str = "sa", *, depths=(2, 2, 2, 2), embed_dims=(64, 128, 320, 512), heads=(1, 2, 5, 8),
                 mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), patch_size: int = 4, img_size: int = 224,
                 in_chans: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.1,
                 shift: str = "multigroup", mixing="learnable", conv_kv: str = "upsample"):
        super().__init__()
        _checks.choice("PVT operator", op, PVT_OPS)
        _checks.choice("shift implementation", shift, SHIFT_IMPLS)
        _checks.choice("conv_kv", conv_kv, CONV_KV_MODES)
        mixing = parse_mixing(mixing)
        for name, v in (("patch_size", patch_size), ("img_size", img_size), ("in_chans", in_chans),
                        ("num_classes", num_classes)):
            _checks.positive_int(name, v)
        depths = list(depths)
        if not depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be positive integers (blocks per stage), got {depths}")
        n = len(depths)
        dims = _per_stage("embed_dims", embed_dims, n)
        heads = _per_stage("heads", heads, n)
        mlp_ratios = _per_stage("mlp_ratios", mlp_ratios, n, float)
        sr_cfg = _per_stage("sr_ratios", sr_ratios, n)
        for i in range(n):
            _checks.positive_int(f"embed_dims[{i}]", dims[i])
            _checks.positive_int(f"heads[{i}]", heads[i])
            _checks.positive_int(f"sr_ratios[{i}]", sr_cfg[i])
            _checks.divisible(f"stage {i + 1} dim", dims[i], f"heads[{i}]", heads[i])
        if img_size % patch_size:
            raise ValueError(f"PVT: img_size={img_size} is not a multiple of patch_size={patch_size}; use an image "
                             f"size such as {img_size // patch_size * patch_size or patch_size}")
        # shapes first: every error before any layer is built
        sides, side = [], img_size // patch_size
        for i in range(n):
            if i:
                side //= 2
            if side < 1:
                raise ValueError(f"PVT: stage {i + 1} would have an empty token map (img_size={img_size}, "
                                 f"patch_size={patch_size}); use img_size >= {patch_size * 2 ** (n - 1)}")
            sides.append(side)
        self.op, self.img_size, self.embed_dims, self.depths = op, img_size, dims, tuple(depths)
        self.stage_maps = sides
        self.sr_ratios = [clamp_sr_ratio(r, s) for r, s in zip(sr_cfg, sides)]
        if self.sr_ratios[-1] != 1:
            raise ValueError(f"PVT: the last stage carries the class token and needs sr_ratio 1, got {sr_cfg[-1]}")

        total = sum(depths)  # linear 0 .. drop_path_rate over the blocks (plain floats: buildable on meta)
        dpr = [drop_path_rate * b / (total - 1) if total > 1 else 0.0 for b in range(total)]
        stages, k = [], 0
        for i in range(n):
            last = i == n - 1
            embed = PatchEmbed(in_chans if i == 0 else dims[i - 1], dims[i], patch_size if i == 0 else 2)
            blocks = [PVTBlock(dims[i], heads[i], self.sr_ratios[i], mlp_ratios[i], dpr[k + b], op, last, shift,
                               mixing, conv_kv) for b in range(depths[i])]
            k += depths[i]
            stages.append(PVTStage(embed, sides[i] ** 2 + int(last), dims[i], blocks))
        self.stages = nn.ModuleList(stages)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[-1]))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        self.num_features = dims[-1]
        for s in self.stages:
            nn.init.trunc_normal_(s.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
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
        conv = self.stages[0].patch_embed.proj
        if x.dim() != 4 or x.shape[1] != conv.in_channels or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"PVT: built for input (B, {conv.in_channels}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}; build with img_size= the input size")
        B = x.shape[0]
        for i, stage in enumerate(self.stages):
            x = stage.patch_embed(x)
            side = self.stage_maps[i]
            if i == len(self.stages) - 1:
                x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
            x = x + stage.pos_embed
            for blk in stage.blocks:
                x = blk(x, side, side)
            if i < len(self.stages) - 1:
                x = x.transpose(1, 2).reshape(B, -1, side, side)
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def extra_repr(self) -> str:
        return (f"op={self.op!r}, embed_dims={self.embed_dims}, depths={self.depths}, img_size={self.img_size}, "
                f"stage maps={self.stage_maps}, sr_ratios={self.sr_ratios}")

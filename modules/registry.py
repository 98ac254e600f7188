"""Model registry: `create_model("resnet26-acmix", **overrides)`, `list_models()`, `model_spec(name)`.

A name is BACKBONE-OP: ResNet-26/38/50 with op conv | dconv (decomposed conv,
1x1 projections + shift-and-sum) | sa (sliding-window self-attention) | acmix;
Swin-T/S (and small-input configs swin_mini, swin_micro) with op sa | acmix;
SAN-10/15/19 with op pairwise | patchwise | acmix (SAN-ACmix, on patchwise SAN unless sa_type says).
PVT-Tiny/Small (pvt_t, pvt_s) with op sa (spatial-reduction attention) | acmix.

Release checkpoints: `create_model("swin_t-acmix", pretrained="ckpt.pth")` (see modules/official.py).

Overrides (any subset; unknown keys are a ValueError listing the allowed ones):
  shift       shift implementation of the conv path (tensor|fixed|learnable|multigroup)
  mixing      learnable | half | att | conv (or a pair such as (1, 0))
  stem        "imagenet" (224 px; Swin: patch 4) | "small" (28-64 px; Swin: patch 2)
  widths      ResNet: 4 per-stage base widths (bottleneck inner width); Swin: embed dim (int)
  width_mult  scales the default widths (rounded to a multiple of the head count); ignored when widths are given
  num_classes, in_chans, img_size
  kernel_att  ResNet attention window (clamped per stage to fit small maps, see resnet.py)
  heads       ResNet: heads of every attention op; Swin: first-stage heads (doubled per stage) or a list
  Swin only:  window_size, patch_size, depths, mlp_ratio, drop_path_rate
  ResNet only: kernel_size (the conv kernel / ACmix kernel_conv)
  SAN:        widths are the 5 stage widths (multiples of 32); no heads; kernels (5 footprints),
              kernel_size (SAN-ACmix kernel_conv), sa_type (SAN-ACmix attention: patchwise | pairwise)
  PVT:        widths = 4 per-stage embed dims; heads, mlp_ratios, sr_ratios (4 per stage),
              depths, drop_path_rate, conv_kv (PVT-ACmix: upsample | full, modules/pvt_attention.py);
              stem "small" = patch 2 (sr ratios clamped to the maps, modules/backbones/pvt.py)
"""
from __future__ import annotations

import torch.nn as nn

from .backbones.resnet import RESNET_DEPTHS, RESNET_OPS, ResNet
from .backbones.san import SAN_LAYERS, SAN_OPS, SAN
from .backbones.pvt import PVT_CONFIGS, PVT_OPS, PVT_STEM_PATCH, PyramidVisionTransformer
from .backbones.swin import SWIN_CONFIGS, SWIN_OPS, SwinTransformer

_COMMON = ("shift", "mixing", "stem", "widths", "width_mult", "num_classes", "in_chans", "img_size", "heads")
RESNET_OVERRIDES = _COMMON + ("kernel_att", "kernel_size")
SWIN_OVERRIDES = _COMMON + ("window_size", "patch_size", "depths", "mlp_ratio", "drop_path_rate")
SAN_OVERRIDES = tuple(k for k in _COMMON if k != "heads") + ("kernels", "kernel_size", "sa_type")
PVT_OVERRIDES = _COMMON + ("depths", "mlp_ratios", "sr_ratios", "drop_path_rate", "conv_kv")
_STEM_IMG = {"imagenet": 224, "small": 32}
_SWIN_STEM_PATCH = {"imagenet": 4, "small": 2}


def _catalogue() -> dict[str, dict]:
    names = {}
    for bb, depths in RESNET_DEPTHS.items():
        for op in RESNET_OPS:
            names[f"{bb}-{op}"] = {"family": "resnet", "backbone": bb, "op": op, "depths": depths}
    for bb, cfg in SWIN_CONFIGS.items():
        for op in SWIN_OPS:
            names[f"{bb}-{op}"] = {"family": "swin", "backbone": bb, "op": op, "depths": cfg["depths"]}
    for bb, layers in SAN_LAYERS.items():
        for op in SAN_OPS:
            names[f"{bb}-{op}"] = {"family": "san", "backbone": bb, "op": op, "depths": layers}
    for bb, cfg in PVT_CONFIGS.items():
        for op in PVT_OPS:
            names[f"{bb}-{op}"] = {"family": "pvt", "backbone": bb, "op": op, "depths": cfg["depths"]}
    return names


_MODELS = _catalogue()


def list_models(pattern: str | None = None) -> list[str]:
    """All registered names (sorted); `pattern` is an fnmatch filter such as "resnet26-*"."""
    import fnmatch
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def _lookup(name: str) -> dict:
    if name not in _MODELS:
        # by family in catalogue order (resnet, swin, then later families), sorted within each
        fams = list(dict.fromkeys(s["family"] for s in _MODELS.values()))
        valid = [n for f in fams for n in sorted(n for n, s in _MODELS.items() if s["family"] == f)]
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(valid)}")
    return _MODELS[name]


def model_spec(name: str) -> dict:
    """{"name", "family" (resnet|swin|san|pvt), "backbone" (e.g. resnet26), "op" (conv|dconv|sa|acmix), "depths"}."""
    spec = dict(_lookup(name))
    spec["name"] = name
    return spec


def _check_keys(name, overrides, allowed):
    bad = sorted(set(overrides) - set(allowed))
    if bad:
        raise ValueError(f"{name}: unknown override(s) {', '.join(bad)}; allowed: {', '.join(allowed)}")


def create_model(name: str, pretrained=None, **overrides) -> nn.Module:
    """Build a registered model; see the module docstring for names and overrides.

    pretrained: a release checkpoint (path or state dict) loaded by `modules.official.load_official`.
    """
    spec = _lookup(name)
    if pretrained is not None:
        from .official import load_official
        return load_official(pretrained, name, **overrides)
    ov = {k: v for k, v in overrides.items() if v is not None}
    if spec["family"] == "resnet":
        _check_keys(name, ov, RESNET_OVERRIDES)
        stem = ov.pop("stem", "imagenet")
        if stem not in _STEM_IMG:
            raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(_STEM_IMG)}")
        ov.setdefault("img_size", _STEM_IMG[stem])
        model = ResNet(spec["depths"], spec["op"], stem=stem, **ov)
    elif spec["family"] == "san":
        _check_keys(name, ov, SAN_OVERRIDES)
        stem = ov.pop("stem", "imagenet")
        if stem not in _STEM_IMG:
            raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(_STEM_IMG)}")
        ov.setdefault("img_size", _STEM_IMG[stem])
        model = SAN(spec["depths"], spec["op"], stem=stem, **ov)
    elif spec["family"] == "pvt":
        model = _create_pvt(name, spec, ov)
    else:
        _check_keys(name, ov, SWIN_OVERRIDES)
        cfg = dict(SWIN_CONFIGS[spec["backbone"]])
        stem = ov.pop("stem", None)
        if stem is not None:
            if stem not in _SWIN_STEM_PATCH:
                raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(_SWIN_STEM_PATCH)}")
            cfg["patch_size"] = _SWIN_STEM_PATCH[stem]
            if "img_size" not in ov and stem == "small":
                cfg["img_size"] = 32
        explicit = "widths" in ov
        if explicit:
            w = ov.pop("widths")
            if isinstance(w, (list, tuple)):
                if len(w) != 1:
                    raise ValueError(f"{name}: widths for Swin is the embed dim (one int), got {w}")
                w = w[0]
            cfg["embed_dim"] = w
        cfg.update(ov)
        if "depths" in ov and "heads" not in ov:  # a different stage count: the config's heads, cut or doubled
            h = list(cfg["heads"])
            n = len(tuple(cfg["depths"]))
            cfg["heads"] = (h + [h[-1] * 2 ** (i + 1) for i in range(max(0, n - len(h)))])[:n]
        mult = cfg.pop("width_mult", 1.0)
        if mult != 1.0 and not explicit:  # explicit widths are final (as for ResNet and SAN)
            if not (isinstance(mult, (int, float)) and mult > 0):
                raise ValueError(f"width_mult must be a positive number, got {mult!r}")
            h0 = cfg["heads"] if isinstance(cfg["heads"], int) else cfg["heads"][0]
            cfg["embed_dim"] = max(h0, int(round(cfg["embed_dim"] * mult / h0)) * h0)
        model = SwinTransformer(spec["op"], **cfg)
    model.model_name = name
    return model


def _create_pvt(name: str, spec: dict, ov: dict) -> nn.Module:
    _check_keys(name, ov, PVT_OVERRIDES)
    cfg = dict(PVT_CONFIGS[spec["backbone"]])
    stem = ov.pop("stem", "imagenet")
    if stem not in PVT_STEM_PATCH:
        raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(PVT_STEM_PATCH)}")
    cfg["patch_size"] = PVT_STEM_PATCH[stem]
    cfg["img_size"] = ov.pop("img_size", _STEM_IMG[stem])
    explicit = "widths" in ov
    if explicit:
        cfg["embed_dims"] = ov.pop("widths")
    mult = ov.pop("width_mult", 1.0)
    if mult != 1.0 and not explicit:  # explicit widths are final (as for ResNet and SAN)
        if not (isinstance(mult, (int, float)) and mult > 0):
            raise ValueError(f"width_mult must be a positive number, got {mult!r}")
        heads = ov.get("heads", cfg["heads"])
        cfg["embed_dims"] = [max(h, int(round(w * mult / h)) * h) for w, h in zip(cfg["embed_dims"], heads)]
    cfg.update(ov)
    return PyramidVisionTransformer(spec["op"], **cfg)

"""Port weights of the authors' public ACmix release into the suite's operators and models.

Single blocks:

    from modules import from_official
    op = from_official(state_dict, "resnet", in_planes=64, out_planes=64, kernel_att=7,
                       head=4, kernel_conv=3, stride=1)
    op = from_official(state_dict, "swin", dim=96, window_size=7, num_heads=3)

`state_dict` is the state of one release module (ResNet `ACmix` or Swin
`WindowAttention_acmix`); keys may carry a common prefix (e.g. taken from a
whole-model checkpoint with `prefix=`). The returned module computes the
release's forward for those weights (the Swin one takes tokens (B, H, W, C),
H, W and an optional mask, like the release).

Whole models:

    from modules import load_official           # or create_model(name, pretrained=...)
    model = load_official("ckpt_epoch_299.pth", "swin_t-acmix")
    model = load_official(state_dict, "resnet26-acmix", num_classes=100)

loads a release checkpoint into the registry model: the ResNet-ACmix layout of
the release's `ResNet/ResNet_ImageNet.py` (stem `conv1`/`bn1`, `layerS.B.*` with
the ACmix block as `conv2`, `fc`) into `resnetNN-acmix`, and the Swin-ACmix layout
of its Swin-Transformer code (`patch_embed`, `layers.S.blocks.B.attn...`,
`attn_mask` buffers, `norm`, `head`) into `swin_*-acmix`. The argument is a path,
a state dict, or a dict wrapping one under "model" (the Swin code's checkpoints)
or "state_dict" (the ResNet code's); a "module." prefix (DistributedDataParallel)
is dropped. `num_classes` is read from the checkpoint's classifier unless given;
other overrides go to `create_model` and must describe the checkpoint's shapes.
Every missing, unexpected, mis-shaped (or, for the index and mask buffers,
mis-valued) key is reported in one ValueError.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from .operators import ACmix, WindowACmix
from .window_attention import relative_position_index, shifted_window_mask

LAYOUTS = ("resnet", "swin")


# ----------------------------------------------------------------------------- one block


def _resnet_block_keys(in_planes, out_planes, head, kernel_conv) -> dict[str, tuple]:
    """Release `ACmix` (ResNet) state: key -> shape (dep_conv has no bias: the release sets it to None)."""
    d, k2 = out_planes // head, kernel_conv ** 2
    expected = {"rate1": (1,), "rate2": (1,)}
    for i in (1, 2, 3):
        expected[f"conv{i}.weight"] = (out_planes, in_planes, 1, 1)
        expected[f"conv{i}.bias"] = (out_planes,)
    expected.update({"conv_p.weight": (d, 2, 1, 1), "conv_p.bias": (d,), "fc.weight": (k2, 3 * head, 1, 1),
                     "dep_conv.weight": (out_planes, k2, kernel_conv, kernel_conv)})
    return expected


def _resnet_block_state(w: Mapping) -> dict[str, torch.Tensor]:
    """Release ResNet `ACmix` tensors -> the suite's `ACmix` state (q, k, v convs stacked as one)."""
    return {
        "stage1.qkv.weight": torch.cat([w["conv1.weight"], w["conv2.weight"], w["conv3.weight"]]),
        "stage1.qkv.bias": torch.cat([w["conv1.bias"], w["conv2.bias"], w["conv3.bias"]]),
        "stage2.alpha": w["rate1"], "stage2.beta": w["rate2"],
        "stage2.attention.pe.weight": w["conv_p.weight"], "stage2.attention.pe.bias": w["conv_p.bias"],
        "stage2.conv.fc.weight": w["fc.weight"], "stage2.conv.shift.weight": w["dep_conv.weight"],
    }


def _swin_block_keys(dim, M, num_heads) -> dict[str, tuple]:
    """Release `WindowAttention_acmix` state: key -> shape (dep_conv without bias, as the release)."""
    return {"qkv.weight": (3 * dim, dim), "qkv.bias": (3 * dim,), "proj.weight": (dim, dim), "proj.bias": (dim,),
            "relative_position_bias_table": ((2 * M - 1) ** 2, num_heads),
            "relative_position_index": (M * M, M * M),
            "fc.weight": (9, 3 * num_heads, 1, 1), "fc.bias": (9,), "dep_conv.weight": (dim, 9, 3, 3),
            "rate1": (1,), "rate2": (1,)}


def _swin_block_state(w: Mapping) -> dict[str, torch.Tensor]:
    """Release Swin `WindowAttention_acmix` tensors -> the suite's `WindowACmix` state."""
    return {
        "stage1.qkv.weight": w["qkv.weight"], "stage1.qkv.bias": w["qkv.bias"],
        "proj.weight": w["proj.weight"], "proj.bias": w["proj.bias"],
        "stage2.attention.relative_position_bias_table": w["relative_position_bias_table"],
        "stage2.conv.fc.weight": w["fc.weight"], "stage2.conv.fc.bias": w["fc.bias"],
        "stage2.conv.shift.weight": w["dep_conv.weight"],
        "stage2.alpha": w["rate1"], "stage2.beta": w["rate2"],
    }


def _take(sd: Mapping, prefix: str, expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    got = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise ValueError(f"from_official: state_dict does not match the release layout ({'; '.join(parts)}); "
                         f"expected exactly {list(expected)}" + (f" under prefix {prefix!r}" if prefix else ""))
    for k, shape in expected.items():
        if tuple(got[k].shape) != shape:
            raise ValueError(f"from_official: {prefix}{k} has shape {tuple(got[k].shape)}, expected {shape} "
                             f"for the shape arguments given")
    return got


def from_official(state_dict: Mapping, layout: str, prefix: str = "", **shape) -> torch.nn.Module:
    """The suite's operator carrying a release checkpoint's weights (see module doc)."""
    if layout == "resnet":
        return _from_resnet(state_dict, prefix, **shape)
    if layout == "swin":
        return _from_swin(state_dict, prefix, **shape)
    raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")


def _load_block(op: nn.Module, state: dict[str, torch.Tensor], dtype) -> nn.Module:
    op = op.to(dtype)  # before copying, so no precision is lost on the way
    op.load_state_dict(state, strict=True)
    return op


def _from_resnet(sd, prefix, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
    op = ACmix(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation,
               shift="multigroup", mixing="learnable")
    w = _take(sd, prefix, _resnet_block_keys(in_planes, out_planes, head, kernel_conv))
    return _load_block(op, _resnet_block_state(w), w["conv1.weight"].dtype)


def _from_swin(sd, prefix, dim, window_size, num_heads, shift_size=0, qk_scale=None):
    M = window_size[0] if isinstance(window_size, (tuple, list)) else window_size
    op = WindowACmix(dim, M, num_heads, shift_size=shift_size, qk_scale=qk_scale,
                     shift="multigroup", mixing="learnable")
    w = _take(sd, prefix, _swin_block_keys(dim, M, num_heads))
    if not torch.equal(w["relative_position_index"].long().cpu(), relative_position_index(M)):
        raise ValueError("from_official: relative_position_index differs from Swin's for "
                         f"window_size={M}; the checkpoint was built with another window size")
    return _load_block(op, _swin_block_state(w), w["qkv.weight"].dtype)


# ----------------------------------------------------------------------------- whole models

class _Plan:
    """Release key -> expected shape, value checks on buffers, and the conversion to the suite's state."""

    def __init__(self):
        self.expected: dict[str, tuple] = {}
        self.values: dict[str, torch.Tensor] = {}  # release buffers that must hold exactly these values
        self.converters: list[Callable[[Mapping], dict[str, torch.Tensor]]] = []

    def rename(self, release_key: str, suite_key: str, shape: tuple):
        self.expected[release_key] = shape
        self.converters.append(lambda sd: {suite_key: sd[release_key]})

    def block(self, release_prefix: str, suite_prefix: str, keys: dict[str, tuple], state_fn):
        for k, shape in keys.items():
            self.expected[release_prefix + k] = shape

        def convert(sd):
            w = {k: sd[release_prefix + k] for k in keys}
            return {suite_prefix + k: v for k, v in state_fn(w).items()}

        self.converters.append(convert)


def _resnet_plan(model) -> _Plan:
    plan = _Plan()
    state = model.state_dict()
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, ACmix)}
    for name, op in blocks.items():
        plan.block(name + ".", name + ".", _resnet_block_keys(op.in_planes, op.out_planes, op.head,
                                                                op.kernel_conv), _resnet_block_state)
    for key, t in state.items():
        if any(key.startswith(n + ".") for n in blocks):
            continue
        release = re.sub(r"^stem\.0\.", "conv1.", re.sub(r"^stem\.1\.", "bn1.", key))
        plan.rename(release, key, tuple(t.shape))
    return plan


def _swin_plan(model) -> _Plan:
    plan = _Plan()
    state = model.state_dict()
    ops = {n: m for n, m in model.named_modules() if isinstance(m, WindowACmix)}
    for name, op in ops.items():
        M = op.window_size
        plan.block(name + ".", name + ".", _swin_block_keys(op.dim, M, op.num_heads), _swin_block_state)
        plan.values[name + ".relative_position_index"] = relative_position_index(M)
        if op.shift_size:
            stage = int(name.split(".")[1])
            H = model.stage_maps[stage]
            block = name[:-len(".attn")]
            mask = shifted_window_mask(H, H, M, op.shift_size)
            plan.expected[block + ".attn_mask"] = tuple(mask.shape)
            plan.values[block + ".attn_mask"] = mask
    renames = {"patch_embed.0.": "patch_embed.proj.", "patch_norm.": "patch_embed.norm."}
    for key, t in state.items():
        if any(key.startswith(n + ".") for n in ops):
            continue
        release = key
        for ours, theirs in renames.items():
            if key.startswith(ours):
                release = theirs + key[len(ours):]
        plan.rename(release, key, tuple(t.shape))
    return plan


_PLANS = {"resnet": _resnet_plan, "swin": _swin_plan}
_HEADS = {"resnet": "fc.weight", "swin": "head.weight"}
_RELEASE_OPS = {"shift": "multigroup", "mixing": "learnable"}


def release_models() -> list[str]:
    """Registry names a release checkpoint loads into (`load_official`)."""
    from .registry import list_models, model_spec
    return [n for n in list_models() if model_spec(n)["family"] in _PLANS and model_spec(n)["op"] == "acmix"]


def _read_checkpoint(checkpoint) -> dict[str, torch.Tensor]:
    src = "state dict"
    if isinstance(checkpoint, (str, os.PathLike)):
        src = os.fspath(checkpoint)
        if not os.path.isfile(src):
            raise ValueError(f"load_official: checkpoint file {src!r} not found")
        try:
            checkpoint = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - the unpickler raises several types; all mean "not plain tensors"
            raise ValueError(f"load_official: cannot read {src!r} as tensors only ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); if you trust the file, load it with "
                             f"torch.load(path, weights_only=False) and pass the dict") from None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"load_official: expected a path or a state dict, got {type(checkpoint).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    sd = dict(checkpoint)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not sd or bad:
        raise ValueError(f"load_official: {src} is not a state dict of tensors"
                         + (f" (non-tensor entries: {fold_keys(bad)})" if bad else " (it is empty)"))
    return sd


def _fold_position(keys: list[list[str]], p: int) -> list[list[str]]:
    groups: dict[tuple, list[str]] = defaultdict(list)
    order = []
    for toks in keys:
        if p < len(toks) and re.fullmatch(r"\d+|\{[\d,-]+\}", toks[p]):
            sig = (len(toks), tuple(toks[:p]), tuple(toks[p + 1:]))
        else:
            sig = ("literal", tuple(toks))
        if sig not in groups:
            order.append(sig)
        groups[sig].append(toks[p] if sig[0] != "literal" else None)
    out = []
    for sig in order:
        if sig[0] == "literal":
            out.append(list(sig[1]))
            continue
        vals = groups[sig]
        merged = vals[0] if len(vals) == 1 else "{" + _spans(vals) + "}"
        out.append(list(sig[1]) + [merged] + list(sig[2]))
    return out


def _spans(vals: list[str]) -> str:
    if all(v.isdigit() for v in vals):
        n = sorted(int(v) for v in vals)
        if len(n) > 2 and n == list(range(n[0], n[-1] + 1)):
            return f"{n[0]}-{n[-1]}"
    return ",".join(v.strip("{}") for v in vals)


def fold_keys(keys) -> str:
    """Keys listed compactly and exactly: indices that differ only in one position are merged,
    e.g. layers.{0,1}.blocks.{0,1}.attn.rate1 stands for the four keys it expands to."""
    toks = [k.split(".") for k in keys]
    depth = max((len(t) for t in toks), default=0)
    for p in reversed(range(depth)):
        toks = _fold_position(toks, p)
    return ", ".join(".".join(t) for t in toks)


def load_official(checkpoint, model_name: str, **overrides) -> nn.Module:
    """The registry model `model_name` carrying a release checkpoint's weights (see module doc)."""
    from .registry import create_model, model_spec
    spec = model_spec(model_name)
    if spec["family"] not in _PLANS or spec["op"] != "acmix":
        raise ValueError(f"load_official: the release has checkpoints for ResNet-ACmix and Swin-ACmix only, "
                         f"not {model_name!r}; allowed: {', '.join(release_models())}")
    for k, release in _RELEASE_OPS.items():
        if overrides.get(k, release) != release:
            raise ValueError(f"load_official: the release's {k} is {release!r}, got {k}={overrides[k]!r}")
    sd = _read_checkpoint(checkpoint)
    head = sd.get(_HEADS[spec["family"]])
    if overrides.get("num_classes") is None and isinstance(head, torch.Tensor) and head.dim() == 2:
        overrides["num_classes"] = head.shape[0]
    model = create_model(model_name, **overrides)
    plan = _PLANS[spec["family"]](model)

    missing = [k for k in plan.expected if k not in sd]
    unexpected = [k for k in sd if k not in plan.expected]
    shapes = defaultdict(list)
    for k, shape in plan.expected.items():
        if k in sd and tuple(sd[k].shape) != shape:
            shapes[(tuple(sd[k].shape), shape)].append(k)
    values = [k for k, v in plan.values.items()
              if k in sd and k not in sum(shapes.values(), []) and not torch.equal(sd[k].cpu().to(v.dtype), v)]
    if missing or unexpected or shapes or values:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {fold_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {fold_keys(unexpected)}")
        for (got, want), keys in shapes.items():
            parts.append(f"shape {got} where {want} is expected: {fold_keys(keys)}")
        if values:
            parts.append(f"window index/mask values differ from the model's (another window or image size): "
                         f"{fold_keys(values)}")
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ValueError(f"load_official: checkpoint does not match {model_name}" + (f" ({given})" if given else "")
                         + "; " + "; ".join(parts)
                         + "; check the model name and the overrides (widths, depths, heads, img_size, ...)")

    state = {}
    for convert in plan.converters:
        state.update(convert(sd))
    dtype = sd[_HEADS[spec["family"]]].dtype
    if dtype.is_floating_point:
        model = model.to(dtype)  # before copying, so no precision is lost on the way
    model.load_state_dict(state, strict=True)
    return model

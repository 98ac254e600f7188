"""The audit: every Stage II op with a cost that a voice counts as zero, and every op fvcore cannot count."""
from __future__ import annotations

from ..formulas import Conventions
from .handles import elem_category
from .stages import stage_of


_COVERED = {
    "fvcore-default": {"addmm", "bmm", "_convolution", "einsum", "matmul", "mm", "linear", "batch_norm",
                       "group_norm", "layer_norm", "instance_norm", "upsample_nearest2d", "upsample_bilinear2d",
                       "adaptive_avg_pool2d", "grid_sampler"},
    "torch": {"_convolution", "conv2d", "linear", "addmm", "mm", "matmul", "bmm", "einsum", "baddbmm",
              "scaled_dot_product_attention", "local_attention"},
    "ptflops-aten": {"_convolution", "conv2d", "linear", "addmm", "mm", "matmul", "bmm", "einsum"},
}


def _ptflops_module_types():
    from ptflops.pytorch_ops import MODULES_MAPPING
    return tuple(MODULES_MAPPING)


def audit_rows(model, inventory: dict, unsupported: list, voices, conv: Conventions) -> list[dict]:
    """Every Stage II op with a cost (in the fvcore voice) that a voice counts as zero, and every op
    the fvcore voice itself has no handle for (anywhere)."""
    rows = []
    for path, op, cnt in unsupported:
        rows.append({"voice": "fvcore", "path": path, "op": op, "status": f"unsupported ({cnt} calls)", "macs": None})
    mods = dict(model.named_modules())
    pt_types = _ptflops_module_types()
    for (scope, kind), cats in sorted(inventory.items()):
        stage = stage_of(scope)
        if not stage.startswith("stage2"):
            continue
        mod = mods.get(scope)
        cost = sum(v for c, v in cats.items() if conv.counts(elem_category(mod) if c == "elem" else c))
        if cost <= 0:
            continue
        short = kind.split("::", 1)[1] if "::" in kind else kind
        for v in voices:
            if v in ("formula", "fvcore"):
                continue
            if v == "ptflops-pytorch":
                zero = not isinstance(mod, pt_types)
            else:
                zero = short not in _COVERED.get(v, set())
            if zero:
                rows.append({"voice": v, "path": scope, "op": kind, "status": "zero", "macs": int(cost)})
    return rows

"""Per-module counts (`acmix-bench flops --per-layer`): a module tree with params and MACs per module,
MACs split into Stage I / Stage II / other, for one voice.

Every voice already attributes each count to the innermost module running it (count_model's
`per_path`); here those counts are summed up the module tree. A row holds its module and everything
below it, so a parent's MACs = its own + the sum of its children's, and the root row is the model
total of that voice in the normal `flops` output. `depth` limits the rows: deeper modules are folded
into their ancestor at that depth. Formula terms inside an operator name sub-paths that are not
always modules (e.g. `stage2.attention` when a path is fused); such a term goes to the deepest module
on its path, keeping the stage of its own path.

Parameters per row: the parameters owned by the module and its descendants (the ptflops voices count
only parameters with requires_grad, as they do for their totals).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import torch.nn as nn

from .count import count_model
from .result import CountResult
from .voices import OPTIONAL_VOICES, VOICES

PER_LAYER_VOICES = VOICES + OPTIONAL_VOICES  # every voice tracks the module running each op
DEFAULT_DEPTH = 3
COLUMNS = ("module", "type", "depth", "params", "macs", "stage1", "stage2", "other")


@dataclass
class LayerCounts:
    """Rows of the module tree (pre-order, as `named_modules`), and the CountResult of the same run."""

    voice: str
    depth: int
    rows: list[dict]          # {module, type, depth, params, macs, stage1, stage2, other}
    result: CountResult
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"unit": "MACs per image (FLOPs = 2 MACs)", "voice": self.voice, "depth": self.depth,
                           "backward": self.result.backward, "conventions": self.result.conventions.as_dict(),
                           "rows": self.rows, "notes": self.notes}, indent=2)


def _stage_column(stage: str) -> str:
    return "stage2" if stage.startswith("stage2") else stage


def _owner(path: str, modules: dict) -> str:
    """The deepest module on `path` ("" = the root)."""
    while path and path not in modules:
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return path


def check_per_layer(voice: str, depth: int, backward: str = "none") -> None:
    """ValueError (one line) for a per-layer request that cannot be met."""
    if voice not in PER_LAYER_VOICES:
        raise ValueError(f"--per-layer takes one voice from {', '.join(PER_LAYER_VOICES)}, got {voice!r}")
    if depth < 0:
        raise ValueError(f"--depth must be >= 0, got {depth}")
    if backward == "counted":
        raise ValueError("--per-layer counts the forward (--backward none or x2); with --backward counted the "
                         "backward ops run outside every module and cannot be attributed")


def layer_counts(model: nn.Module, input_size=None, inputs=None, voice: str = "formula", depth: int = DEFAULT_DEPTH,
                 conventions=None, backward: str = "none", stage2_impl: str | None = None) -> LayerCounts:
    """One voice over `model`, per module down to `depth` (0: the root only)."""
    check_per_layer(voice, depth, backward)
    per_path: dict = {}
    res = count_model(model, input_size=input_size, inputs=inputs, voices=(voice,), conventions=conventions,
                      backward=backward, stage2_impl=stage2_impl, per_path=per_path)
    modules = dict(model.named_modules())
    own = {n: Counter() for n in modules}
    for (path, stage), m in per_path[voice].items():
        own[_owner(path, modules)][_stage_column(stage)] += m
    keep = (lambda p: p.requires_grad) if voice.startswith("ptflops") else (lambda p: True)
    own_params = {n: sum(p.numel() for p in mod.parameters(recurse=False) if keep(p)) for n, mod in modules.items()}

    names = list(modules)
    sub = {n: Counter(own[n]) for n in names}
    sub_params = dict(own_params)
    for n in reversed(names):  # children come after their parent in named_modules: fold bottom-up
        if n:
            parent = _owner(n.rsplit(".", 1)[0] if "." in n else "", modules)
            sub[parent].update(sub[n])
            sub_params[parent] += sub_params[n]
    rows = []
    for n in names:
        d = n.count(".") + 1 if n else 0
        if d > depth:
            continue
        c = sub[n]
        rows.append({"module": n, "type": type(modules[n]).__name__, "depth": d, "params": sub_params[n],
                     "macs": sum(c.values()), "stage1": c["stage1"], "stage2": c["stage2"], "other": c["other"]})
    return LayerCounts(voice, depth, rows, res, list(res.notes))


def _fmt(n: int) -> str:
    return f"{int(n):,}"


def format_layers_table(lc: LayerCounts, flops: bool = False) -> str:
    mult, unit = (2, "FLOPs (= 2 MACs)") if flops else (1, "MACs")
    names = [("  " * r["depth"] + (r["module"].rsplit(".", 1)[-1] if r["module"] else "model")) for r in lc.rows]
    types = [r["type"] for r in lc.rows]
    wn, wt = max(len("module"), *map(len, names)), max(len("type"), *map(len, types))
    head = (f"{'module':<{wn}}  {'type':<{wt}}{'params':>14}{unit.split(' ')[0]:>18}"
            f"{'Stage I':>18}{'Stage II':>18}{'other':>18}")
    lines = [f"{unit} per image and parameters per module, voice {lc.voice}, depth {lc.depth}"
             + (" (training step)" if lc.result.backward != "none" else ""),
             "conventions: " + ", ".join(f"{k}={'on' if v else 'off'}"
                                         for k, v in lc.result.conventions.as_dict().items()),
             "", head, "-" * len(head)]
    for name, typ, r in zip(names, types, lc.rows):
        lines.append(f"{name:<{wn}}  {typ:<{wt}}{_fmt(r['params']):>14}{_fmt(r['macs'] * mult):>18}"
                     f"{_fmt(r['stage1'] * mult):>18}{_fmt(r['stage2'] * mult):>18}{_fmt(r['other'] * mult):>18}")
    for n in lc.notes:
        lines.append("note: " + n)
    return "\n".join(lines)


def format_layers_csv(lc: LayerCounts, flops: bool = False) -> str:
    cols = list(COLUMNS) + (["flops"] if flops else [])
    out = [",".join(cols)]
    for r in lc.rows:
        vals = [r[c] for c in COLUMNS] + ([2 * r["macs"]] if flops else [])
        out.append(",".join(str(v) for v in vals))
    return "\n".join(out)

"""Per-stage accounting: the stage of a module path, parameters per stage, and the module running now.

An op (or parameter) belongs to the innermost module running it; a module path with a component
`stage1` is Stage I, `stage2.<child>` is that Stage II path ("stage2" alone: ops and parameters of the
stage2 container itself, e.g. the mixing weights), anything else is "other".
"""
from __future__ import annotations

from collections import Counter

import torch.nn as nn


def stage_of(module_path: str) -> str:
    """'layer1.0.conv2.stage2.attention.pe' -> 'stage2.attention'; '...stage1.qkv' -> 'stage1'; else 'other'."""
    parts = module_path.split(".") if module_path else []
    if "stage1" in parts:
        return "stage1"
    if "stage2" in parts:
        i = parts.index("stage2")
        return "stage2" + (f".{parts[i + 1]}" if i + 1 < len(parts) else "")
    return "other"


def stage_order(stages) -> list[str]:
    s2 = sorted(s for s in stages if s.startswith("stage2."))
    return ["stage1", "stage2"] + s2 + ["other", "total"]


def param_stage_counts(model: nn.Module, keep=lambda p: True) -> dict[str, int]:
    """Parameters per stage, by the path of the module owning them."""
    out = Counter()
    for mname, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            if keep(p):
                out[stage_of(mname)] += p.numel()
    return dict(out)


class PathTracker:
    """Keeps the qualified name of the innermost module running (forward hooks on every module)."""

    def __init__(self, model: nn.Module, on_change=None):
        self.model, self.stack, self.handles, self.on_change = model, [""], [], on_change

    @property
    def current(self) -> str:
        return self.stack[-1]

    def __enter__(self):
        for name, mod in self.model.named_modules():
            if not name:
                continue
            self.handles.append(mod.register_forward_pre_hook(self._enter(name)))
            self.handles.append(mod.register_forward_hook(self._exit(name), always_call=True))
        return self

    def _enter(self, name):
        def hook(*_):
            self.stack.append(name)
            if self.on_change:
                self.on_change(name)
        return hook

    def _exit(self, name):
        def hook(*_):
            if len(self.stack) > 1 and self.stack[-1] == name:
                self.stack.pop()
            if self.on_change:
                self.on_change(self.stack[-1])
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False

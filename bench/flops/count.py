"""count_model and count_op: every voice over one model, per stage, and the audit; operators and
models by name (build_op, build_model)."""
from __future__ import annotations

import contextlib
import copy
import time
from collections import Counter, defaultdict

import torch
import torch.nn as nn

from modules import names

from ..formulas import Conventions
from .audit import audit_rows
from .result import CountResult
from .stages import stage_of, stage_order
from .voices import (OPTIONAL_VOICES, VOICES, voice_formula, voice_fvcore, voice_fvcore_default, voice_ptflops_aten,
                     voice_ptflops_pytorch, voice_torch)

BACKWARD_MODES = ("none", "x2", "counted")


def _as_inputs(model, input_size=None, inputs=None) -> tuple:
    if inputs is None:
        if input_size is None:
            raise ValueError("give input_size (C, H, W) or inputs (a tensor or tuple of tensors)")
        size = tuple(int(s) for s in input_size)
        if len(size) in (3, 2):
            size = (1,) + size
        try:
            p = next(model.parameters())
            dtype, device = p.dtype, p.device
        except StopIteration:
            dtype, device = torch.float32, torch.device("cpu")
        inputs = (torch.randn(size, dtype=dtype, device=device),)
    if torch.is_tensor(inputs):
        inputs = (inputs,)
    inputs = tuple(x[:1] if torch.is_tensor(x) and x.dim() >= 2 and x.shape[0] > 1 else x for x in inputs)
    return inputs


STAGE2_IMPLS = (None,) + names.STAGE2_IMPLS  # None: as built


@contextlib.contextmanager
def _stage2_impl(model: nn.Module, impl: str | None):
    """None: as built. "fast": every Stage II path fast. "reference": the spec as written: the
    sliding-window attention paths and the release's conv paths (shift "multigroup": light FC, then the
    grouped conv, unfused) run their references (e.g. 79,980,544 MACs for the 64-channel block at 56x56);
    other shift forms and the window attention keep the fast path (the window reference is a dense test
    oracle that costs all token pairs)."""
    if impl not in STAGE2_IMPLS:
        raise ValueError(f"stage2_impl must be one of fast, reference (or None: as built), got {impl!r}")
    from modules.local_attention import LocalAttentionPath
    from modules.operators import ConvPath
    saved = []

    def spec_path(m):
        return isinstance(m, LocalAttentionPath) or (isinstance(m, ConvPath) and m.shift.shift == "multigroup")

    if impl is not None:
        for m in model.modules():
            if hasattr(m, "impl") and type(m).__module__.startswith("modules"):
                if impl == "fast" or spec_path(m):
                    saved.append((m, m.impl))
                    m.impl = impl
    try:
        yield
    finally:
        for m, v in saved:
            m.impl = v


def count_model(model: nn.Module, input_size=None, inputs=None, voices=VOICES, conventions=None,
                backward: str = "none", stage2_impl: str | None = None, meta: bool = True,
                per_path: dict | None = None) -> CountResult:
    """Params and MACs per stage for each voice, per image (batch 1), and the audit.

    input_size: (C, H, W) or (1, C, H, W) (maps) / (1, H, W, C) (tokens); or pass `inputs`.
    conventions: Conventions, dict or "bias=on,softmax=on" (the formula and fvcore voices follow them;
    the other voices have fixed conventions of their own). backward: "none" (forward only), "x2"
    (training step = forward + 2 x forward, every voice), "counted" (the torch voice counts the real
    backward ops; the others use the x2 rule). stage2_impl: None (as built), "fast", or "reference"
    (the sliding-window attention as the spec writes it; see _stage2_impl). meta: run the voices that
    only read shapes (formula, ptflops-aten, torch) on a meta-device copy (fast; fvcore traces the real
    model). On meta the kernels' operators run their fake (shape-only) implementations; the torch voice
    counts them through their registered formulas, ptflops-aten gives them zero.
    per_path: a dict, filled with voice -> Counter((path, stage) -> MACs), MACs as in the rows (after
    conventions and the backward rule); path is where the voice put the count (a module path, or for
    formula terms a path inside an operator), stage is stage_of(path). bench/flops/layers.py builds
    the per-module tree from it.
    """
    conv = Conventions.parse(conventions)
    voices = _check_voices(voices, backward)
    counting = _Counting(model, _as_inputs(model, input_size, inputs), conv, meta)
    was_training = model.training
    try:
        model.eval()
        with _stage2_impl(model, stage2_impl):
            results = {v: counting.voice(v, backward) for v in voices}
    finally:
        model.train(was_training)
    audit = audit_rows(model, counting.inventory, counting.unsupported, voices, conv) if "fvcore" in voices else []
    notes = counting.notes + _backward_notes(backward)
    if per_path is not None:
        for v in voices:
            mult = _backward_mult(v, backward)
            out = per_path[v] = Counter()
            for (path, cat), m in counting.paths[v].items():
                if cat is None or conv.counts(cat):
                    out[(path, stage_of(path))] += int(m) * mult
    return CountResult(_rows(results, backward), audit, conv, backward, notes, counting.seconds, counting.parts)


def _check_voices(voices, backward: str) -> tuple:
    if backward not in BACKWARD_MODES:
        raise ValueError(f"backward must be one of {', '.join(BACKWARD_MODES)}, got {backward!r}")
    voices = tuple(voices)
    bad = [v for v in voices if v not in VOICES + OPTIONAL_VOICES]
    if bad:
        raise ValueError(f"unknown voice(s) {', '.join(bad)}; allowed: {', '.join(VOICES + OPTIONAL_VOICES)}")
    return voices


class _Counting:
    """The voices of one count_model call, and what they report besides MACs and parameters:
    notes, seconds per voice, the formula's terms, fvcore's per-op inventory and unsupported ops."""

    def __init__(self, model: nn.Module, inputs: tuple, conv: Conventions, meta: bool):
        self.model, self.inputs, self.conv, self.meta = model, inputs, conv, meta
        self.notes: list[str] = []
        self.seconds: dict[str, float] = {}
        self.parts: list[dict] = []
        self.inventory = defaultdict(Counter)  # (module scope, jit op) -> Counter(category -> MACs)
        self.unsupported: list = []  # (module path, jit op, calls) fvcore has no handle for
        self._twin = None
        self.paths: dict[str, Counter] = {}  # voice -> (path, category or None) -> MACs, before conventions

    def voice(self, v: str, backward: str) -> tuple[dict, dict]:
        """(MACs per stage, parameters per stage) of voice `v`, timed into self.seconds."""
        run = {"formula": self._formula, "fvcore": self._fvcore, "fvcore-default": self._fvcore_default,
               "ptflops-pytorch": self._ptflops_pytorch, "ptflops-aten": self._ptflops_aten,
               "torch": self._torch}[v]
        t0 = time.perf_counter()
        paths = self.paths[v] = Counter()
        macs, params = run(backward, paths)
        self.seconds[v] = time.perf_counter() - t0
        return macs, params

    def _counted(self, stages: dict) -> dict:
        """MACs per stage of the cost categories the conventions count."""
        return {s: sum(x for c, x in cats.items() if self.conv.counts(c)) for s, cats in stages.items()}

    def _formula(self, backward, paths):
        stages, params, notes = self._on_meta(voice_formula, self.conv, self.parts, paths)
        self.notes += notes
        return self._counted(stages), params

    def _fvcore(self, backward, paths):
        stages, params, self.unsupported = voice_fvcore(self.model, self.inputs, self.inventory, paths)
        return self._counted(stages), params

    def _fvcore_default(self, backward, paths):
        return voice_fvcore_default(self.model, self.inputs, paths)

    def _ptflops_pytorch(self, backward, paths):
        # real model: on meta, decompositions call patched torch functions and count twice
        return voice_ptflops_pytorch(self.model, self.inputs, paths)

    def _ptflops_aten(self, backward, paths):
        return self._on_meta(voice_ptflops_aten, paths)

    def _torch(self, backward, paths):
        return self._on_meta(voice_torch, backward=(backward == "counted"), paths=paths)

    def _shapes_only(self) -> tuple:
        """A meta-device copy of the model and inputs: the voices that only read shapes run on it
        (no arithmetic). The real model and inputs when it cannot be copied, or they are on meta already."""
        if self._twin is None and any(torch.is_tensor(x) and x.is_meta for x in self.inputs):
            self._twin = (self.model, self.inputs)
        if self._twin is None:
            try:
                self._twin = (copy.deepcopy(self.model).to("meta"),
                              tuple(x.to("meta") if torch.is_tensor(x) else x for x in self.inputs))
            except Exception as e:  # noqa: BLE001 - any copy failure: fall back to the real model
                self._twin = (self.model, self.inputs)
                self.notes.append(f"meta copy failed ({type(e).__name__}); counted on the real model")
        return self._twin

    def _on_meta(self, fn, *args, **kwargs):
        m, x = self._shapes_only() if self.meta else (self.model, self.inputs)
        try:
            return fn(m, x, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - an op without a meta kernel: run for real
            if m is self.model:
                raise
            self.notes.append(f"{fn.__name__} failed on meta ({type(e).__name__}); counted on the real model")
            return fn(self.model, self.inputs, *args, **kwargs)


def _rows(results: dict, backward: str) -> list[dict]:
    """{stage, voice, params, macs} for every voice and stage ("stage2" and "total" are sums); under the
    x2 rule a training step is 3 x forward."""
    stages = set()
    for macs, params in results.values():
        stages.update(macs)
        stages.update(params)
    rows = []
    for v, (macs, params) in results.items():
        mult = _backward_mult(v, backward)
        for s in stage_order(stages):
            if s == "total":
                m, p = sum(macs.values()), sum(params.values())
            elif s == "stage2":
                m = sum(x for k, x in macs.items() if k.startswith("stage2"))
                p = sum(x for k, x in params.items() if k.startswith("stage2"))
            else:
                m, p = macs.get(s, 0), params.get(s, 0)
            rows.append({"stage": s, "voice": v, "params": int(p), "macs": int(m) * mult})
    return rows


def _backward_mult(voice: str, backward: str) -> int:
    """Under the x2 rule a training step is 3 x forward (the torch voice counts the real backward)."""
    return 3 if backward == "x2" or (backward == "counted" and voice != "torch") else 1


def _backward_notes(backward: str) -> list[str]:
    if backward == "counted":
        return ["backward=counted: the torch voice counts forward + backward ops; other voices use the x2 rule "
                "(training step = 3 x forward)"]
    if backward == "x2":
        return ["backward=x2: every voice shows a training step as 3 x forward (backward = 2 x forward)"]
    return []


def build_model(name: str, size: int | None = None, **overrides) -> nn.Module:
    """A registry model (`create_model(name, img_size=size, **overrides)`) or `torchvision:NAME`."""
    if name.startswith("torchvision:"):
        import torchvision
        tv = name.split(":", 1)[1]
        if tv not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {tv!r}; see torchvision.models.list_models()")
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} apply to registry models only, not {name}")
        return torchvision.models.get_model(tv)
    from modules import create_model
    if size is not None:
        overrides.setdefault("img_size", size)
    return create_model(name, **overrides)


def build_op(op: str, channels: int = 64, heads: int = 4, kernel_att: int = 7, kernel_conv: int = 3,
             stride: int = 1, shift: str | None = None, mixing: str = "learnable", window: int = 7,
             shift_size: int = 0, in_channels: int | None = None, bias: bool = False):
    """One operator by name (`modules.create_op`, output width `channels`, input width `in_channels`,
    default `channels`); returns (module, input layout "map" | "tokens"). shift None: the operator's
    default (tensor for dconv, multigroup, the release's, for the ACmix forms)."""
    from modules import create_op
    from modules.names import op_layout
    module = create_op(op, in_channels or channels, channels, stride=stride, heads=heads, kernel_att=kernel_att,
                       kernel_conv=kernel_conv, shift=shift, mixing=mixing, window=window, shift_size=shift_size,
                       bias=bias)
    return module, op_layout(op)


def count_op(op: str, size: int, voices=VOICES, conventions=None, backward="none", stage2_impl=None,
             **kwargs) -> CountResult:
    """count_model of build_op(op, **kwargs) on a size x size input (batch 1)."""
    module, layout = build_op(op, **kwargs)
    c = kwargs.get("in_channels") or kwargs.get("channels", 64)
    shape = (1, c, size, size) if layout == "map" else (1, size, size, kwargs.get("channels", 64))
    return count_model(module, input_size=shape, voices=voices, conventions=conventions, backward=backward,
                       stage2_impl=stage2_impl)

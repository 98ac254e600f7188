"""Parameters and MACs per stage from five voices, and a zero-op audit (`acmix-bench flops`).

Voices (one column each; MACs inside, FLOPs = 2 MACs only in labelled output):

    formula          closed forms (bench/formulas.py, ACMIX.md) per operator and standard layer
    fvcore           fvcore's FlopCountAnalysis (jit trace) with handles registered for every op the
                     suite's modules run, tagged by cost category and filtered by `Conventions`
    ptflops-pytorch  ptflops, backend "pytorch" (module hooks + patched functionals), no extra hooks
    ptflops-aten     ptflops, backend "aten" (dispatch mode), no extra hooks
    torch            torch.utils.flop_counter.FlopCounterMode, FLOPs / 2 = MACs
    fvcore-default   (optional) fvcore with only its default handles: what a plain fvcore call reports

Per-stage accounting comes from module paths only: an op (or parameter) belongs
to the innermost module running it; a module path with a component `stage1` is
Stage I, `stage2.<child>` is that Stage II path ("stage2" alone: ops and
parameters of the stage2 container itself, e.g. the mixing weights), anything
else is "other". The operator's own forward (the alpha/beta mixing, Swin's
roll) is therefore "other"; with the default conventions it costs nothing.

`formula` and `fvcore` follow the same conventions and agree exactly, per
stage, for every operator, shift implementation and backbone of the suite
(tests/test_flops.py). The other voices use their own conventions (ptflops
counts conv/linear biases, norms and activations its own way) and miss Stage II
ops; the audit lists, per voice, every Stage II op it counts as zero.

Counting runs the model once per voice at batch 1 in eval mode, as it is built
(Stage II `impl` "fast" unless the caller switched it). The fast sliding-window
attention runs in a custom autograd Function (modules/_fast, `_LocalAttention`):
fvcore counts it through a handle for `prim::PythonOp._LocalAttention`; the
dispatch-level voices do not see its C++ kernel at all.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .formulas import Conventions, OpCost, layer_cost, operator_cost

VOICES = ("formula", "fvcore", "ptflops-pytorch", "ptflops-aten", "torch")
OPTIONAL_VOICES = ("fvcore-default",)
BACKWARD_MODES = ("none", "x2", "counted")


# ----------------------------------------------------------------------------- stage paths


def stage_of(module_path: str) -> str:
    """'layer1.0.conv2.stage2.attention.pe' -> 'stage2.attention'; '...stage1.qkv' -> 'stage1'; else 'other'."""
    parts = module_path.split(".") if module_path else []
    if "stage1" in parts:
        return "stage1"
    if "stage2" in parts:
        i = parts.index("stage2")
        return "stage2" + (f".{parts[i + 1]}" if i + 1 < len(parts) else "")
    return "other"


def _stage_order(stages) -> list[str]:
    s2 = sorted(s for s in stages if s.startswith("stage2."))
    return ["stage1", "stage2"] + s2 + ["other", "total"]


def _param_stage_counts(model: nn.Module, keep=lambda p: True) -> dict[str, int]:
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


# ----------------------------------------------------------------------------- fvcore handles


def _shape(v):
    from fvcore.nn.jit_handles import get_shape
    try:
        return get_shape(v)
    except Exception:
        return None


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape) if shape is not None else 0


def _is_tensor(v) -> bool:
    return _shape(v) is not None


def _big_tensor(v) -> bool:
    s = _shape(v)
    return s is not None and _numel(s) > 1


def _h_conv(inputs, outputs):
    w, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"conv|mac": _numel(out) * _numel(w[1:])})
    if _is_tensor(inputs[2]):
        c["conv|bias"] = _numel(out)
    return c


def _h_linear(inputs, outputs):
    w, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"linear|mac": _numel(out) * int(w[-1])})
    if len(inputs) > 2 and _is_tensor(inputs[2]):
        c["linear|bias"] = _numel(out)
    return c


def _h_addmm(inputs, outputs):
    a, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"addmm|mac": _numel(out) * int(a[-1])})
    if _is_tensor(inputs[0]):
        c["addmm|bias"] = _numel(out)
    return c


def _h_baddbmm(inputs, outputs):
    """baddbmm(bias, a, b): a batched product plus a broadcast bias (the suite's 1x1 convs on CPU)."""
    a, out = _shape(inputs[1]), _shape(outputs[0])
    c = Counter({"baddbmm|mac": _numel(out) * int(a[-1])})
    if _is_tensor(inputs[0]):
        c["baddbmm|bias"] = _numel(out)
    return c


def _h_matmul(name):
    def h(inputs, outputs):
        a, out = _shape(inputs[0]), _shape(outputs[0])
        return Counter({f"{name}|mac": _numel(out) * int(a[-1])})
    return h


def _h_einsum(inputs, outputs):
    """Two-operand einsum: one MAC per point of the joint index space (the naive loop)."""
    eq = inputs[0].toIValue().replace(" ", "")
    operands = list(inputs[1].node().inputs())
    lhs = eq.split("->")[0].split(",")
    if len(operands) < 2:
        return Counter()
    sizes = {}
    for letters, op in zip(lhs, operands):
        for ch, n in zip(letters, _shape(op)):
            sizes[ch] = int(n)
    return Counter({"einsum|mac": math.prod(sizes.values())})


def _h_sdpa(inputs, outputs):
    q, k, v = (_shape(x) for x in inputs[:3])
    rows = _numel(q[:-1]) * int(k[-2])
    return Counter({"scaled_dot_product_attention|mac": rows * (int(q[-1]) + int(v[-1])),
                    "scaled_dot_product_attention|softmax": rows})


def _h_local_attention(inputs, outputs):
    """modules/_fast _LocalAttention(q (BN, Cq, H', W'), kd, grid, vd (BN, Cv, ...), ka, dil, backend):
    logits Cq k_a^2 and aggregation Cv k_a^2 MACs per query pixel, k_a^2 softmax entries."""
    ka = int(outputs[0].node().scalar_args()[0])
    q, vd = _shape(inputs[0]), _shape(inputs[3])
    BN, Cq, Ho, Wo = (int(s) for s in q)
    P = BN * Ho * Wo
    return Counter({"_LocalAttention|mac": P * ka * ka * (Cq + int(vd[1])),
                    "_LocalAttention|softmax": P * ka * ka})


def _h_mul(inputs, outputs):
    # a product of two tensors is a MAC (its accumulation is the following sum or add); a scaling
    # by a scalar or a one-element tensor is not counted
    if _big_tensor(inputs[0]) and _big_tensor(inputs[1]):
        return Counter({"mul|mac": _numel(_shape(outputs[0]))})
    return Counter()


def _h_elem(name):
    def h(inputs, outputs):
        if len(inputs) > 1 and _big_tensor(inputs[0]) and _big_tensor(inputs[1]):
            return Counter({f"{name}|elem": _numel(_shape(outputs[0]))})
        return Counter()
    return h


def _h_numel(name, category, which="out", scale=1):
    def h(inputs, outputs):
        v = outputs[0] if which == "out" else inputs[0]
        return Counter({f"{name}|{category}": scale * _numel(_shape(v))})
    return h


def _h_batch_norm(inputs, outputs):
    affine = _is_tensor(inputs[1])
    return Counter({"batch_norm|norm": _numel(_shape(inputs[0])) * (2 if affine else 1)})


def _h_norm(name, affine_index):
    def h(inputs, outputs):
        affine = _is_tensor(inputs[affine_index])
        return Counter({f"{name}|norm": _numel(_shape(inputs[0])) * (5 if affine else 4)})
    return h


# data movement, integer/index arithmetic, creation, comparisons, reductions that only accumulate
FREE_OPS = (
    "Int ScalarImplicit __and__ __or__ arange bitwise_not cat chunk clamp clamp_ constant_pad_nd contiguous copy_ "
    "detach dropout dropout_ empty eq expand expand_as flatten floor floor_divide full full_like gather ge gt index "
    "index_put_ index_select masked_fill masked_fill_ max narrow new_empty new_full new_zeros nonzero ones "
    "ones_like permute remainder reshape roll select size slice split split_with_sizes squeeze stack t to "
    "transpose type_as unbind unflatten unsqueeze unsqueeze_ view view_as zeros zeros_like pad reflection_pad2d "
    "linspace neg ne lt le where sum im2col unfold repeat repeat_interleave clone max_pool2d max_pool1d "
    "adaptive_max_pool2d pow div floor_divide_ mean alias lift_fresh numpy_T"
).split()

ACTIVATIONS = ("relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardswish", "hardswish_",
               "leaky_relu", "leaky_relu_", "elu", "hardtanh", "hardtanh_", "hardsigmoid", "mish")


def suite_handles() -> dict:
    """fvcore op handles for every op the suite's modules run (jit names -> handle or None = free)."""
    h = {
        "aten::_convolution": _h_conv,
        "aten::conv2d": _h_conv,
        "aten::linear": _h_linear,
        "aten::addmm": _h_addmm,
        "aten::mm": _h_matmul("mm"),
        "aten::matmul": _h_matmul("matmul"),
        "aten::bmm": _h_matmul("bmm"),
        "aten::baddbmm": _h_baddbmm,
        "aten::einsum": _h_einsum,
        "aten::scaled_dot_product_attention": _h_sdpa,
        "prim::PythonOp._LocalAttention": _h_local_attention,
        "aten::mul": _h_mul,
        "aten::mul_": _h_mul,
        "aten::add": _h_elem("add"),
        "aten::add_": _h_elem("add"),
        "aten::sub": _h_elem("sub"),
        "aten::rsub": _h_elem("sub"),
        "aten::softmax": _h_numel("softmax", "softmax", "in"),
        "aten::_softmax": _h_numel("softmax", "softmax", "in"),
        "aten::batch_norm": _h_batch_norm,
        "aten::layer_norm": _h_norm("layer_norm", 2),
        "aten::group_norm": _h_norm("group_norm", 2),
        "aten::adaptive_avg_pool2d": _h_numel("adaptive_avg_pool2d", "pool", "in"),
        "aten::adaptive_avg_pool1d": _h_numel("adaptive_avg_pool1d", "pool", "in"),
        "aten::avg_pool2d": _h_numel("avg_pool2d", "pool", "in"),
    }
    for a in ACTIVATIONS:
        h[f"aten::{a}"] = _h_numel(a.rstrip("_"), "act")
    for f in FREE_OPS:
        h.setdefault(f"aten::{f}", None)
    return h


# per-module reinterpretation of uncounted elementwise adds: the adds of a tensor shift are its
# aggregation; the add after a decomposed conv's shift is the conv's bias
def _elem_category(module) -> str:
    from modules import ShiftAggregation
    from modules.conv import ShiftSum
    if isinstance(module, ShiftAggregation) and module.shift == "tensor":
        return "shift_add"
    if isinstance(module, ShiftSum):
        return "bias"
    return "elem"


# ----------------------------------------------------------------------------- result


@dataclass
class CountResult:
    """Per-stage params and MACs per voice (MACs per image), the audit and the conventions used."""

    rows: list[dict]                      # {stage, voice, params, macs}
    audit: list[dict] = field(default_factory=list)  # {voice, path, op, status, macs}
    conventions: Conventions = field(default_factory=Conventions)
    backward: str = "none"
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    parts: list[dict] = field(default_factory=list)  # formula terms: {module, stage, part, category, macs, counted}

    def table(self):
        import pandas as pd
        return pd.DataFrame(self.rows, columns=["stage", "voice", "params", "macs"])

    def wide(self, what: str = "macs"):
        df = self.table()
        voices = list(dict.fromkeys(df["voice"]))
        w = df.pivot(index="stage", columns="voice", values=what)
        order = [s for s in _stage_order(set(df["stage"])) if s in w.index]
        return w.loc[order, voices]

    def total(self, voice: str = "formula") -> int:
        return int(self.get("total", voice))

    def get(self, stage: str, voice: str, what: str = "macs") -> int:
        for r in self.rows:
            if r["stage"] == stage and r["voice"] == voice:
                return int(r[what])
        raise KeyError(f"no row for stage {stage!r}, voice {voice!r}")

    def stages(self, voice: str) -> dict[str, int]:
        return {r["stage"]: int(r["macs"]) for r in self.rows if r["voice"] == voice}

    def audit_table(self):
        import pandas as pd
        return pd.DataFrame(self.audit, columns=["voice", "path", "op", "status", "macs"])

    def to_json(self) -> str:
        return json.dumps({"unit": "MACs per image (FLOPs = 2 MACs)", "backward": self.backward,
                           "conventions": self.conventions.as_dict(), "rows": self.rows,
                           "audit": self.audit, "notes": self.notes, "seconds": self.seconds,
                           "formula_parts": self.parts}, indent=2)


# ----------------------------------------------------------------------------- voices


def _init_stages(): return defaultdict(Counter)  # stage -> Counter(category -> MACs)


def _operator_out_shape(mod, x: torch.Tensor) -> tuple:
    """Output shape of a suite operator for input x, without running it."""
    from modules import WindowSelfAttention
    if isinstance(mod, WindowSelfAttention):
        return tuple(x.shape)
    B, _, H, W = x.shape
    s = mod.stride
    return (B, mod.out_planes, (H - 1) // s + 1, (W - 1) // s + 1)


def _voice_formula(model, inputs, conv: Conventions, res_parts: list) -> tuple[dict, dict, list[str]]:
    """Closed forms. Each suite operator is replaced, for this pass only, by a stub that records its
    input shape and returns an empty tensor of its output shape (the formulas need shapes, not values);
    standard layers outside operators run and are read by forward hooks."""
    costs: list[tuple[str, OpCost]] = []
    notes = []
    covered_params = set()
    handles = []
    names = {m: n for n, m in model.named_modules()}
    stubbed = []

    def make_stub(mod, name):
        def forward(x, *args, **kwargs):
            shape = tuple(x.shape)
            if x.dim() == 3:  # tokens (B, L, C) with H, W
                H = args[0] if args else kwargs.get("H")
                W = args[1] if len(args) > 1 else kwargs.get("W")
                shape = (shape[0], H, W, shape[2])
            costs.append((name, operator_cost(mod, shape)))
            return x.new_empty(_operator_out_shape(mod, x))
        return forward

    for name, mod in model.named_modules():
        if any(mod is s or _is_inside(name, n) for s, n in stubbed):
            continue
        if _is_operator(mod):
            covered_params.update(id(p) for p in mod.parameters())
            mod.forward = make_stub(mod, name)
            stubbed.append((mod, name))

    def post(mod, args, kwargs, out):
        if next(mod.children(), None) is not None or any(mod is s for s, _ in stubbed):
            return
        x = args[0] if args else next(iter(kwargs.values()))
        lc = layer_cost(mod, tuple(x.shape), tuple(out.shape) if torch.is_tensor(out) else None)
        if lc is None:
            return
        costs.append((names[mod], lc))
        covered_params.update(id(p) for p in mod.parameters())

    for n, m in model.named_modules():
        if not any(_is_inside(n, sn) for _, sn in stubbed):
            handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for mod, _ in stubbed:
            del mod.forward
    stages, params = _init_stages(), Counter()
    for name, oc in costs:
        for t in oc.terms:
            full = f"{name}.{t.path}" if t.path else name
            stages[stage_of(full)][t.category] += t.macs
            res_parts.append({"module": name, "stage": stage_of(full), "part": t.part, "category": t.category,
                              "macs": t.macs, "counted": conv.counts(t.category)})
        for p, n in oc.params.items():
            params[stage_of(f"{name}.{p}" if p else name)] += n
    # parameters outside any closed form (an unknown layer type): by numel, said so
    missing = Counter()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) not in covered_params:
                params[stage_of(mname)] += p.numel()
                missing[f"{type(mod).__name__}.{pname}"] += p.numel()
    if missing:
        notes.append("formula: no closed form for " + ", ".join(f"{k} ({v:,} params, MACs not counted)"
                                                                  for k, v in missing.items()))
    return stages, dict(params), notes


def _is_inside(name: str, parent: str) -> bool:
    return name.startswith(parent + ".") if parent else bool(name)


def _is_operator(mod) -> bool:
    from modules import ACmix, Conv, DecomposedConv, LocalSelfAttention, WindowSelfAttention
    return isinstance(mod, (ACmix, Conv, DecomposedConv, LocalSelfAttention, WindowSelfAttention))


def _fvcore_analysis(model, inputs, handles: dict | None):
    from fvcore.nn import FlopCountAnalysis
    fa = FlopCountAnalysis(model, inputs)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    if handles is not None:
        fa.set_op_handle(**handles)
    return fa


def _voice_fvcore(model, inputs, inventory: dict | None = None):
    """fvcore with the suite's handles. Each handle call is also recorded with the innermost module
    scope of its node, which gives per-path, per-category counts (checked against fvcore's total)."""
    per_scope = defaultdict(Counter)
    base = suite_handles()

    def recorded(kind, h):
        def f(inputs_, outputs_):
            c = h(inputs_, outputs_)
            scope = outputs_[0].node().scopeName().split("/")[-1] if outputs_ else ""
            per_scope[scope].update(c)
            if inventory is not None:
                for key, v in c.items():
                    inventory[(scope, kind)][key.split("|")[1]] += v
            return c
        return f

    fa = _fvcore_analysis(model, inputs, {k: (recorded(k, h) if h else None) for k, h in base.items()})
    total = fa.total()
    got = sum(sum(c.values()) for c in per_scope.values())
    if got != total:
        raise RuntimeError(f"fvcore bookkeeping mismatch: {got} recorded vs {total} total")
    mods = dict(model.named_modules())
    stages = _init_stages()
    for scope, c in per_scope.items():
        mod = mods.get(scope)
        for key, v in c.items():
            cat = key.split("|")[1]
            if cat == "elem" and mod is not None:
                cat = _elem_category(mod)
            stages[stage_of(scope)][cat] += v
    # unsupported ops, attributed to their innermost module
    unsupported = []
    names = [n for n, _ in model.named_modules()]
    for n in names:
        own = Counter(fa.unsupported_ops(n))
        for child in names:
            if child != n and child.startswith(n + "." if n else "") and "." not in child[len(n) + (1 if n else 0):]:
                own.subtract(fa.unsupported_ops(child))
        for op, cnt in own.items():
            if cnt > 0:
                unsupported.append((n, op, cnt))
    from fvcore.nn import parameter_count
    pc = parameter_count(model)
    params = Counter()
    for pname, p in model.named_parameters():
        params[stage_of(pname.rsplit(".", 1)[0] if "." in pname else "")] += pc[pname]
    return stages, dict(params), unsupported


def _voice_fvcore_default(model, inputs):
    from fvcore.nn import parameter_count
    fa = _fvcore_analysis(model, inputs, None)
    bm = fa.by_module()
    names = [n for n, _ in model.named_modules()]
    stages = Counter()
    for n in names:
        own = bm.get(n, 0) - sum(bm.get(c, 0) for c in names
                                 if c != n and c.startswith(n + "." if n else "") and "." not in c[len(n) + (1 if n else 0):])
        stages[stage_of(n)] += own
    pc = parameter_count(model)
    params = Counter()
    for pname, _ in model.named_parameters():
        params[stage_of(pname.rsplit(".", 1)[0] if "." in pname else "")] += pc[pname]
    return dict(stages), dict(params)


class _PathList(list):
    """ptflops' functional-op collector, remembering which module path each count came from."""

    def __init__(self, tracker):
        super().__init__()
        self.tracker, self.by_path = tracker, Counter()

    def append(self, v):
        super().append(v)
        self.by_path[self.tracker.current] += int(v)


def _voice_ptflops_pytorch(model, inputs):
    """ptflops backend "pytorch", driven through its engine so counts stay per module
    (get_model_complexity_info only returns a total)."""
    from ptflops import pytorch_engine as pe
    with PathTracker(model) as tracker:
        pe.add_flops_counting_methods(model)
        model.start_flops_count(ost=io.StringIO(), verbose=False, ignore_list=[])
        collector = _PathList(tracker)
        pe.patch_functional(collector)
        pe.patch_tensor_ops(collector)
        try:
            with torch.no_grad():
                model(*inputs)
            stages = Counter()
            for n, m in model.named_modules():
                if pe.is_supported_instance(m) and hasattr(m, "__flops__"):
                    stages[stage_of(n)] += int(m.__flops__)
            for path, v in collector.by_path.items():
                stages[stage_of(path)] += v
        finally:
            pe.unpatch_functional()
            pe.unpatch_tensor_ops()
            model.stop_flops_count()
            for a in ("start_flops_count", "stop_flops_count", "reset_flops_count", "compute_average_flops_cost",
                      "__batch_counter__"):
                if a in model.__dict__:
                    delattr(model, a)
    # ptflops counts parameters with requires_grad only (get_model_parameters_number)
    return dict(stages), _param_stage_counts(model, lambda p: p.requires_grad)


def _voice_ptflops_aten(model, inputs):
    from ptflops.aten_engine import FlopCounterMode as PtCounter
    out_params = {"serialize_params": {"units": None, "precision": 2}, "print_params": {"file": io.StringIO()}}
    counter = PtCounter(None, verbose=False, print_per_layer_stat=False, output_params=out_params)

    def on_change(path):  # count every op under its innermost module path
        counter.parents = ["Global", path]

    with PathTracker(model, on_change), torch.no_grad():
        counter.parents = ["Global", ""]
        with counter:
            model(*inputs)
    stages = Counter()
    for path, ops in counter.flop_counts.items():
        if path != "Global":
            stages[stage_of(path)] += sum(ops.values())
    return dict(stages), _param_stage_counts(model, lambda p: p.requires_grad)


def _voice_torch(model, inputs, backward: bool = False):
    from torch.utils.flop_counter import FlopCounterMode

    per_path = Counter()

    class _Counter(FlopCounterMode):
        def _count_flops(self, func_packet, out, args, kwargs):
            if func_packet in self.flop_registry:
                per_path[tracker.current] += self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            return super()._count_flops(func_packet, out, args, kwargs)

    with PathTracker(model) as tracker:
        cm = contextlib.nullcontext() if backward else torch.no_grad()
        with cm, _Counter(display=False) as c:
            out = model(*inputs)
            if backward:
                out.float().sum().backward()
    flops = sum(per_path.values())
    if flops != c.get_total_flops():
        raise RuntimeError(f"torch counter bookkeeping mismatch: {flops} vs {c.get_total_flops()}")
    stages = Counter()
    for path, v in per_path.items():
        stages[stage_of(path)] += v
    return {s: v // 2 for s, v in stages.items()}, _param_stage_counts(model)


# ----------------------------------------------------------------------------- audit

# which jit ops (fvcore's names, "aten::" dropped) each off-the-shelf voice gives a count to
_COVERED = {
    "fvcore-default": {"addmm", "bmm", "_convolution", "einsum", "matmul", "mm", "linear", "batch_norm",
                       "group_norm", "layer_norm", "instance_norm", "upsample_nearest2d", "upsample_bilinear2d",
                       "adaptive_avg_pool2d", "grid_sampler"},
    "torch": {"_convolution", "conv2d", "linear", "addmm", "mm", "matmul", "bmm", "einsum", "baddbmm",
              "scaled_dot_product_attention"},
    "ptflops-aten": {"_convolution", "conv2d", "linear", "addmm", "mm", "matmul", "bmm", "einsum"},
}


def _ptflops_module_types():
    from ptflops.pytorch_ops import MODULES_MAPPING
    return tuple(MODULES_MAPPING)


def _audit(model, inventory: dict, unsupported: list, voices, conv: Conventions) -> list[dict]:
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
        cost = sum(v for c, v in cats.items() if conv.counts(_elem_category(mod) if c == "elem" else c))
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


# ----------------------------------------------------------------------------- API


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


STAGE2_IMPLS = (None, "fast", "reference")


@contextlib.contextmanager
def _stage2_impl(model: nn.Module, impl: str | None):
    """None: as built. "fast": every Stage II path fast. "reference": ACMIX.md as written: the
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
                backward: str = "none", stage2_impl: str | None = None, meta: bool = True) -> CountResult:
    """Params and MACs per stage for each voice, per image (batch 1), and the audit.

    input_size: (C, H, W) or (1, C, H, W) (maps) / (1, H, W, C) (tokens); or pass `inputs`.
    conventions: Conventions, dict or "bias=on,softmax=on" (the formula and fvcore voices follow them;
    the other voices have fixed conventions of their own). backward: "none" (forward only), "x2"
    (training step = forward + 2 x forward, every voice), "counted" (the torch voice counts the real
    backward ops; the others use the x2 rule). stage2_impl: None (as built), "fast", or "reference"
    (sliding-window attention as ACMIX.md writes it; see _stage2_impl). meta: run the voices that only
    read shapes (formula, ptflops-aten, torch) on a meta-device copy (fast; fvcore traces the real model).
    On meta the fast sliding-window attention runs its pure-PyTorch twin instead of the C++ kernel; the
    dispatch-level voices give it zero either way.
    """
    conv = Conventions.parse(conventions)
    if backward not in BACKWARD_MODES:
        raise ValueError(f"backward must be one of {', '.join(BACKWARD_MODES)}, got {backward!r}")
    voices = tuple(voices)
    bad = [v for v in voices if v not in VOICES + OPTIONAL_VOICES]
    if bad:
        raise ValueError(f"unknown voice(s) {', '.join(bad)}; allowed: {', '.join(VOICES + OPTIONAL_VOICES)}")
    inputs = _as_inputs(model, input_size, inputs)
    was_training = model.training
    model.eval()
    impl_ctx = _stage2_impl(model, stage2_impl)
    impl_ctx.__enter__()
    rows, notes, seconds, parts, audit = [], [], {}, [], []
    inventory = defaultdict(Counter)
    unsupported = []
    results = {}
    twin = [None]

    def shapes_only():
        """A meta-device copy of the model and inputs: the voices that only read shapes run on it
        (no arithmetic). None when the model cannot be copied (then they run on the real model)."""
        if twin[0] is None and any(torch.is_tensor(x) and x.is_meta for x in inputs):
            twin[0] = (model, inputs)  # already shapes only
        if twin[0] is None:
            try:
                twin[0] = (copy.deepcopy(model).to("meta"),
                           tuple(x.to("meta") if torch.is_tensor(x) else x for x in inputs))
            except Exception as e:  # noqa: BLE001 - any copy failure: fall back to the real model
                twin[0] = (model, inputs)
                notes.append(f"meta copy failed ({type(e).__name__}); counted on the real model")
        return twin[0]

    def on_meta(fn, *args, **kwargs):
        m, x = shapes_only() if meta else (model, inputs)
        try:
            return fn(m, x, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - an op without a meta kernel: run for real
            if m is model:
                raise
            notes.append(f"{fn.__name__} failed on meta ({type(e).__name__}); counted on the real model")
            return fn(model, inputs, *args, **kwargs)

    try:
        for v in voices:
            t0 = time.perf_counter()
            if v == "formula":
                st, params, n = on_meta(_voice_formula, conv, parts)
                notes += n
                macs = {s: sum(x for c, x in cats.items() if conv.counts(c)) for s, cats in st.items()}
            elif v == "fvcore":
                st, params, unsupported = _voice_fvcore(model, inputs, inventory)
                macs = {s: sum(x for c, x in cats.items() if conv.counts(c)) for s, cats in st.items()}
            elif v == "fvcore-default":
                macs, params = _voice_fvcore_default(model, inputs)
            elif v == "ptflops-pytorch":
                # real model: on meta, decompositions call patched torch functions and count twice
                macs, params = _voice_ptflops_pytorch(model, inputs)
            elif v == "ptflops-aten":
                macs, params = on_meta(_voice_ptflops_aten)
            else:
                macs, params = on_meta(_voice_torch, backward=(backward == "counted"))
            seconds[v] = time.perf_counter() - t0
            results[v] = (macs, params)
    finally:
        model.train(was_training)
        impl_ctx.__exit__(None, None, None)
    stages = set()
    for macs, params in results.values():
        stages.update(macs)
        stages.update(params)
    for v, (macs, params) in results.items():
        mult = 1
        if backward == "x2" or (backward == "counted" and v != "torch"):
            mult = 3
        for s in _stage_order(stages):
            if s == "total":
                m = sum(macs.values())
                p = sum(params.values())
            elif s == "stage2":
                m = sum(x for k, x in macs.items() if k.startswith("stage2"))
                p = sum(x for k, x in params.items() if k.startswith("stage2"))
            else:
                m, p = macs.get(s, 0), params.get(s, 0)
            rows.append({"stage": s, "voice": v, "params": int(p), "macs": int(m) * mult})
    if "fvcore" in voices:
        audit = _audit(model, inventory, unsupported, voices, conv)
    if backward == "counted":
        notes.append("backward=counted: the torch voice counts forward + backward ops; other voices use the x2 rule "
                     "(training step = 3 x forward)")
    elif backward == "x2":
        notes.append("backward=x2: every voice shows a training step as 3 x forward (backward = 2 x forward)")
    return CountResult(rows, audit, conv, backward, notes, seconds, parts)


# ----------------------------------------------------------------------------- models and operators by name


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


OPS = ("conv", "dconv", "sa", "acmix", "window-sa", "window-acmix")


def build_op(op: str, channels: int = 64, heads: int = 4, kernel_att: int = 7, kernel_conv: int = 3,
             stride: int = 1, shift: str | None = None, mixing: str = "learnable", window: int = 7,
             shift_size: int = 0, in_channels: int | None = None, bias: bool = False):
    """One operator by name; returns (module, input layout "map" | "tokens"). shift None: the operator's
    default (tensor for dconv, multigroup, the release's, for the ACmix forms)."""
    from modules import ACmix, Conv, DecomposedConv, LocalSelfAttention, WindowACmix, WindowSelfAttention
    cin = in_channels or channels
    if op == "conv":
        return Conv(cin, channels, kernel_conv, stride, bias=bias), "map"
    if op == "dconv":
        return DecomposedConv(cin, channels, kernel_conv, stride, bias=bias, shift=shift or "tensor"), "map"
    if op == "sa":
        return LocalSelfAttention(cin, channels, kernel_att, heads, stride), "map"
    if op == "acmix":
        return ACmix(cin, channels, kernel_att, heads, kernel_conv, stride, shift=shift or "multigroup",
                     mixing=mixing), "map"
    if op == "window-sa":
        return WindowSelfAttention(channels, window, heads, shift_size), "tokens"
    if op == "window-acmix":
        return WindowACmix(channels, window, heads, shift_size, shift=shift or "multigroup", mixing=mixing,
                           kernel_conv=kernel_conv), "tokens"
    raise ValueError(f"unknown operator {op!r}; allowed: {', '.join(OPS)}")


def count_op(op: str, size: int, voices=VOICES, conventions=None, backward="none", stage2_impl=None,
             **kwargs) -> CountResult:
    module, layout = build_op(op, **kwargs)
    c = kwargs.get("in_channels") or kwargs.get("channels", 64)
    shape = (1, c, size, size) if layout == "map" else (1, size, size, kwargs.get("channels", 64))
    return count_model(module, input_size=shape, voices=voices, conventions=conventions, backward=backward,
                       stage2_impl=stage2_impl)


# ----------------------------------------------------------------------------- CLI


def _fmt_int(n) -> str:
    return f"{int(n):,}"


def format_table(res: CountResult, flops: bool = False) -> str:
    mult, unit = (2, "FLOPs (= 2 MACs)") if flops else (1, "MACs")
    w = res.wide("macs") * mult
    p = res.wide("params")
    voices = list(w.columns)
    lines = [f"{unit} per image, by stage and voice" + (" (training step)" if res.backward != "none" else ""),
             "conventions: " + ", ".join(f"{k}={'on' if v else 'off'}" for k, v in res.conventions.as_dict().items())]
    head = f"{'stage':<18}" + "".join(f"{v:>18}" for v in voices)
    lines += ["", head, "-" * len(head)]
    for s in w.index:
        lines.append(f"{s:<18}" + "".join(f"{_fmt_int(w.loc[s, v]):>18}" for v in voices))
    lines += ["", "Parameters by stage and voice", head, "-" * len(head)]
    for s in p.index:
        lines.append(f"{s:<18}" + "".join(f"{_fmt_int(p.loc[s, v]):>18}" for v in voices))
    if res.audit:
        lines += ["", f"Audit: Stage II ops a voice counts as zero or cannot count ({unit})"]
        for a in res.audit:
            m = "" if a["macs"] is None else _fmt_int(a["macs"] * mult)
            lines.append(f"  {a['voice']:<16} {a['path']:<40} {a['op']:<36} {a['status']:<22} {m:>14}")
    for n in res.notes:
        lines.append("note: " + n)
    return "\n".join(lines)


def _csv(res: CountResult, flops: bool) -> str:
    out = ["stage,voice,params,macs" + (",flops" if flops else "")]
    for r in res.rows:
        out.append(f"{r['stage']},{r['voice']},{r['params']},{r['macs']}" + (f",{2 * r['macs']}" if flops else ""))
    return "\n".join(out)


def run(args) -> int:
    voices = tuple(v.strip() for v in args.voices.split(",") if v.strip())
    if bool(args.op) == bool(args.model):
        raise ValueError("give exactly one of --op NAME or --model NAME (e.g. --op acmix --channels 64 --size 56, "
                         "or --model resnet50-acmix --size 224, or --model torchvision:resnet50)")
    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.op:
        res = count_op(args.op, args.size, voices, args.conventions, args.backward, channels=args.channels,
                       heads=args.heads, kernel_att=args.kernel_att, kernel_conv=args.kernel_conv, stride=args.stride,
                       shift=args.shift, mixing=args.mixing, window=args.window, shift_size=args.shift_size,
                       in_channels=args.in_channels, bias=args.bias, stage2_impl=args.stage2_impl)
        what = f"--op {args.op}"
    else:
        overrides = {}
        if args.shift_override:
            overrides["shift"] = args.shift_override
        if args.stem:
            overrides["stem"] = args.stem
        model = build_model(args.model, None if args.model.startswith("torchvision:") else args.size, **overrides)
        res = count_model(model, input_size=(3, args.size, args.size), voices=voices, conventions=args.conventions,
                          backward=args.backward, stage2_impl=args.stage2_impl)
        what = f"--model {args.model}"
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.format == "csv":
        print(_csv(res, args.flops))
    elif args.format == "json":
        print(res.to_json())
    else:
        print(f"acmix-bench flops {what} at {args.size}x{args.size}: torch {torch.__version__}\n")
        print(format_table(res, args.flops))
    if args.time:
        per = ", ".join(f"{v} {s:.2f} s" for v, s in res.seconds.items())
        print(f"time: {elapsed:.2f} s wall, {cpu:.2f} s CPU (this process, all threads) in all ({per}); "
              f"{torch.get_num_threads()} threads", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("flops", help="params and MACs per stage from formulas, fvcore, ptflops (2 backends) and torch",
                       description="Params and MACs per stage (MACs per image; FLOPs = 2 MACs with --flops). "
                                   "Give --op NAME with its shape options, or --model NAME (registry name or "
                                   "torchvision:NAME).")
    p.add_argument("--op", choices=OPS, help="one operator")
    p.add_argument("--model", help="registry model (e.g. resnet50-acmix) or torchvision:NAME")
    p.add_argument("--size", type=int, default=56, help="input height = width (default 56; use 224 for models)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--in-channels", type=int, default=None, help="operator input channels (default: --channels)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernel-att", type=int, default=7)
    p.add_argument("--kernel-conv", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--shift", default=None,
                   help="shift implementation: tensor | fixed | learnable | multigroup (default: the operator's own)")
    p.add_argument("--mixing", default="learnable")
    p.add_argument("--window", type=int, default=7, help="window size (window-sa, window-acmix)")
    p.add_argument("--shift-size", type=int, default=0, help="Swin cyclic shift (window ops)")
    p.add_argument("--bias", action="store_true", help="conv/dconv with bias")
    p.add_argument("--shift-override", default=None, help="models: shift implementation override")
    p.add_argument("--stem", default=None, help="models: stem override (imagenet | small)")
    p.add_argument("--voices", default=",".join(VOICES),
                   help=f"comma list from {', '.join(VOICES + OPTIONAL_VOICES)}")
    p.add_argument("--conventions", default=None,
                   help="e.g. bias=on,softmax=on,activations=on,norms=off,shift_adds=off (formula and fvcore voices)")
    p.add_argument("--backward", default="none", choices=BACKWARD_MODES,
                   help="none: forward; x2: training step = 3 x forward; counted: torch voice counts the backward")
    p.add_argument("--stage2-impl", default=None, choices=("fast", "reference"),
                   help="count as built (default), all-fast, or with the sliding-window attention as ACMIX.md "
                        "writes it (reference)")
    p.add_argument("--flops", action="store_true", help="show FLOPs (= 2 MACs) instead of MACs, labelled")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.add_argument("--time", action="store_true", help="print the counting time (stderr)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)

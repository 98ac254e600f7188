"""The counters ("voices"): each runs the model once and returns MACs and parameters per stage.

    formula          closed forms (bench/formulas.py) per operator and standard layer
    fvcore           fvcore's FlopCountAnalysis with the suite's handles (handles.py), per category
    fvcore-default   fvcore with only its default handles
    ptflops-pytorch  ptflops, backend "pytorch" (module hooks + patched functionals)
    ptflops-aten     ptflops, backend "aten" (dispatch mode)
    torch            torch.utils.flop_counter.FlopCounterMode, FLOPs / 2 = MACs
"""
from __future__ import annotations

import contextlib
import io
from collections import Counter, defaultdict

import torch

from ..formulas import Conventions, OpCost, layer_cost, operator_cost
from .handles import elem_category, suite_handles
from .stages import PathTracker, param_stage_counts, stage_of

VOICES = ("formula", "fvcore", "ptflops-pytorch", "ptflops-aten", "torch")
OPTIONAL_VOICES = ("fvcore-default",)


def _init_stages(): return defaultdict(Counter)  # stage -> Counter(category -> MACs)


def _operator_out_shape(mod, x: torch.Tensor) -> tuple:
    """Output shape of a suite operator for input x, without running it."""
    from modules import WindowSelfAttention
    if isinstance(mod, WindowSelfAttention) or x.dim() == 3:  # token operators keep their input's shape
        return tuple(x.shape)
    B, _, H, W = x.shape
    s = mod.stride
    return (B, mod.out_planes, (H - 1) // s + 1, (W - 1) // s + 1)


def voice_formula(model, inputs, conv: Conventions, res_parts: list, paths: Counter | None = None
                  ) -> tuple[dict, dict, list[str]]:
    """Closed forms. Each suite operator is replaced, for this pass only, by a stub that records its
    input shape and returns an empty tensor of its output shape (the formulas need shapes, not values);
    standard layers outside operators run and are read by forward hooks. Every formula term is
    appended to `res_parts` (and, with `paths`, (term path, category) -> MACs); returns (stage -> Counter(category -> MACs), params per stage, notes)."""
    costs: list[tuple[str, OpCost]] = []
    covered = set()  # ids of the parameters a closed form accounts for
    stubbed = _stub_operators(model, costs, covered)
    handles = _hook_layers(model, stubbed, costs, covered)
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for mod, _ in stubbed:
            del mod.forward
    stages, params = _tally(costs, conv, res_parts, paths)
    notes = _uncovered_params(model, covered, params)
    return stages, dict(params), notes


def _stub_operators(model, costs: list, covered: set) -> list[tuple]:
    """Stub the forward of every outermost suite operator (see voice_formula); [(module, path)]."""
    stubbed = []
    for name, mod in model.named_modules():
        if any(mod is s or _is_inside(name, n) for s, n in stubbed):
            continue
        if _is_operator(mod):
            covered.update(id(p) for p in mod.parameters())
            mod.forward = _stub(mod, name, costs)
            stubbed.append((mod, name))
    return stubbed


def _stub(mod, name: str, costs: list):
    def forward(x, *args, **kwargs):
        shape = tuple(x.shape)
        if x.dim() == 3:  # tokens (B, L, C) with H, W
            H = args[0] if args else kwargs.get("H")
            W = args[1] if len(args) > 1 else kwargs.get("W")
            shape = (shape[0], H, W, shape[2])
        costs.append((name, operator_cost(mod, shape)))
        return x.new_empty(_operator_out_shape(mod, x))
    return forward


def _hook_layers(model, stubbed: list, costs: list, covered: set) -> list:
    """Forward hooks on every module outside the stubbed operators: a leaf layer with a closed form
    (layer_cost) adds its cost under its path; returns the hook handles."""
    names = {m: n for n, m in model.named_modules()}

    def post(mod, args, kwargs, out):
        if next(mod.children(), None) is not None or any(mod is s for s, _ in stubbed):
            return
        x = args[0] if args else next(iter(kwargs.values()))
        lc = layer_cost(mod, tuple(x.shape), tuple(out.shape) if torch.is_tensor(out) else None)
        if lc is None:
            return
        costs.append((names[mod], lc))
        covered.update(id(p) for p in mod.parameters())

    return [m.register_forward_hook(post, with_kwargs=True) for n, m in model.named_modules()
            if not any(_is_inside(n, sn) for _, sn in stubbed)]


def _tally(costs: list, conv: Conventions, res_parts: list, paths: Counter | None = None) -> tuple[dict, Counter]:
    """MACs per stage and category, and parameters per stage, from the recorded closed forms."""
    stages, params = _init_stages(), Counter()
    for name, oc in costs:
        for t in oc.terms:
            full = f"{name}.{t.path}" if t.path else name
            stages[stage_of(full)][t.category] += t.macs
            if paths is not None:
                paths[(full, t.category)] += t.macs
            res_parts.append({"module": name, "stage": stage_of(full), "part": t.part, "category": t.category,
                              "macs": t.macs, "counted": conv.counts(t.category)})
        for p, n in oc.params.items():
            params[stage_of(f"{name}.{p}" if p else name)] += n
    return stages, params


def _uncovered_params(model, covered: set, params: Counter) -> list[str]:
    """Add the parameters no closed form accounts for (an unknown layer type) by numel; a note names them."""
    missing = Counter()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) not in covered:
                params[stage_of(mname)] += p.numel()
                missing[f"{type(mod).__name__}.{pname}"] += p.numel()
    if not missing:
        return []
    return ["formula: no closed form for " + ", ".join(f"{k} ({v:,} params, MACs not counted)"
                                                       for k, v in missing.items())]


def _is_inside(name: str, parent: str) -> bool:
    return name.startswith(parent + ".") if parent else bool(name)


def _is_operator(mod) -> bool:
    from modules import ACmix, Conv, DecomposedConv, LocalSelfAttention, SANSelfAttention, WindowSelfAttention
    from modules.pvt_attention import SpatialReductionAttention
    return isinstance(mod, (ACmix, Conv, DecomposedConv, LocalSelfAttention, SANSelfAttention, WindowSelfAttention,
                            SpatialReductionAttention))


def _direct_children(names: list[str], parent: str) -> list[str]:
    """The module paths one level below `parent` ("" is the model itself)."""
    prefix = parent + "." if parent else ""
    return [c for c in names if c != parent and c.startswith(prefix) and "." not in c[len(prefix):]]


def _fvcore_analysis(model, inputs, handles: dict | None):
    from fvcore.nn import FlopCountAnalysis
    fa = FlopCountAnalysis(model, inputs)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    if handles is not None:
        fa.set_op_handle(**handles)
    return fa


def _fvcore_params(model) -> dict:
    """fvcore's parameter count per stage, by the path of the module owning each parameter."""
    from fvcore.nn import parameter_count
    pc = parameter_count(model)
    params = Counter()
    for pname, _ in model.named_parameters():
        params[stage_of(pname.rsplit(".", 1)[0] if "." in pname else "")] += pc[pname]
    return dict(params)


def voice_fvcore(model, inputs, inventory: dict | None = None, paths: Counter | None = None):
    """fvcore with the suite's handles. Each handle call is also recorded with the innermost module
    scope of its node, which gives per-path, per-category counts (checked against fvcore's total).
    Returns (stage -> Counter(category -> MACs), params per stage, [(path, op, calls)] unsupported)."""
    per_scope = defaultdict(Counter)
    handles = {k: (_recorded(k, h, per_scope, inventory) if h else None) for k, h in suite_handles().items()}
    fa = _fvcore_analysis(model, inputs, handles)
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
                cat = elem_category(mod)
            stages[stage_of(scope)][cat] += v
            if paths is not None:
                paths[(scope, cat)] += v
    return stages, _fvcore_params(model), _unsupported(fa, [n for n, _ in model.named_modules()])


def _recorded(kind: str, handle, per_scope: dict, inventory: dict | None):
    """`handle`, also adding its counts to per_scope[scope] and inventory[(scope, kind)][category]."""
    def f(inputs_, outputs_):
        c = handle(inputs_, outputs_)
        scope = outputs_[0].node().scopeName().split("/")[-1] if outputs_ else ""
        per_scope[scope].update(c)
        if inventory is not None:
            for key, v in c.items():
                inventory[(scope, kind)][key.split("|")[1]] += v
        return c
    return f


def _unsupported(fa, names: list[str]) -> list[tuple]:
    """Ops fvcore has no handle for, attributed to their innermost module: [(path, op, calls)]."""
    out = []
    for n in names:
        own = Counter(fa.unsupported_ops(n))
        for child in _direct_children(names, n):
            own.subtract(fa.unsupported_ops(child))
        for op, cnt in own.items():
            if cnt > 0:
                out.append((n, op, cnt))
    return out


def voice_fvcore_default(model, inputs, paths: Counter | None = None):
    """fvcore with its default handles only: what a plain FlopCountAnalysis call reports."""
    fa = _fvcore_analysis(model, inputs, None)
    bm = fa.by_module()
    names = [n for n, _ in model.named_modules()]
    stages = Counter()
    for n in names:
        own = bm.get(n, 0) - sum(bm.get(c, 0) for c in _direct_children(names, n))
        stages[stage_of(n)] += own
        if paths is not None and own:
            paths[(n, None)] += own
    return dict(stages), _fvcore_params(model)


class _PathList(list):
    """ptflops' functional-op collector, remembering which module path each count came from."""

    def __init__(self, tracker):
        super().__init__()
        self.tracker, self.by_path = tracker, Counter()

    def append(self, v):
        super().append(v)
        self.by_path[self.tracker.current] += int(v)


def voice_ptflops_pytorch(model, inputs, paths: Counter | None = None):
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
                    if paths is not None:
                        paths[(n, None)] += int(m.__flops__)
            for path, v in collector.by_path.items():
                stages[stage_of(path)] += v
                if paths is not None:
                    paths[(path, None)] += v
        finally:
            pe.unpatch_functional()
            pe.unpatch_tensor_ops()
            model.stop_flops_count()
            for a in ("start_flops_count", "stop_flops_count", "reset_flops_count", "compute_average_flops_cost",
                      "__batch_counter__"):
                if a in model.__dict__:
                    delattr(model, a)
    # ptflops counts parameters with requires_grad only (get_model_parameters_number)
    return dict(stages), param_stage_counts(model, lambda p: p.requires_grad)


def voice_ptflops_aten(model, inputs, paths: Counter | None = None):
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
            if paths is not None:
                paths[(path, None)] += sum(ops.values())
    return dict(stages), param_stage_counts(model, lambda p: p.requires_grad)


def voice_torch(model, inputs, backward: bool = False, paths: Counter | None = None):
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
        if paths is not None:
            paths[(path, None)] += v // 2
    return {s: v // 2 for s, v in stages.items()}, param_stage_counts(model)

"""The fast kernels as torch operators (modules/_fast/ops.py): opcheck, meta device, torch.compile, FLOP counts.

- torch.library.opcheck on every acmix op (schema, fake kernel, autograd registration, AOT dispatch with
  dynamic shapes), float64, each backend of the attention; gradcheck through the ops.
- meta device: whole models and blocks run shape-only, with the shapes the CPU run gives.
- torch.compile: torch._dynamo.explain finds no graph break in an ACmix block or LocalSelfAttention, and
  a compiled block (aot_eager: fake kernels and registered autograd, no code generation) gives the eager
  values and gradients; one model per family and operator kind is swept in a slow test.
- FLOP counting: FlopCounterMode on the fast blocks equals the formula voice of bench.flops (the kernels'
  registered formulas, counts as run: 2 extra query channels per head), per stage in count_model; the
  Stage II node's own formula (it is bypassed under counters) and the backward formulas by hand.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modules import ACmix, LocalSelfAttention, _fast, create_model, list_models
from modules._fast import acmix_stage2 as node
from modules._fast import flop_formulas, ops

f64 = torch.float64
needs_cpp = pytest.mark.skipif(
    _fast.load_extension("local_attention") is None or _fast.load_extension("conv_path") is None,
    reason=f"C++ extensions could not be built here: {_fast.extension_error()}")


def _block(cls=ACmix, C=8, heads=2, ka=3, stride=1, dtype=f64, **kw):
    torch.manual_seed(0)
    m = cls(C, C, kernel_att=ka, head=heads, stride=stride, **kw).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _attention_inputs(B=1, N=2, d=3, H=6, W=7, ka=3, s=1, dil=1, seed=0):
    from modules.local_attention import _reflect, attention_padding, position_grid
    g = torch.Generator().manual_seed(seed)
    pad = attention_padding(ka, dil)
    Hp, Wp, Ho, Wo = H + 2 * pad, W + 2 * pad, -(-H // s), -(-W // s)
    q = torch.randn(B * N, d + 2, Ho, Wo, dtype=f64, generator=g)
    kd, vd = (_fast.split_phases(torch.randn(B * N, d, Hp, Wp, dtype=f64, generator=g), s).contiguous()
              for _ in range(2))
    grid = _fast.split_phases(_reflect(position_grid(H, W, f64), pad).reshape(2, Hp, Wp), s).contiguous()
    return q, kd, grid, vd


# ----------------------------------------------------------------------------- opcheck, gradcheck

# opcheck's AOT-dispatch checks compile the op (seconds each): all checks on one case per op and backend,
# the cheap ones (schema, autograd registration, fake kernel against the real one) on the others
CHEAP = ("test_schema", "test_autograd_registration", "test_faketensor")


def _checks(full: bool):
    return CHEAP + ("test_aot_dispatch_dynamic",) if full else CHEAP


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("s,dil", [(1, 1), (2, 1), (1, 2)])
def test_opcheck_local_attention(backend, s, dil):
    if backend == "cpp" and _fast.load_extension("local_attention") is None:
        pytest.skip(f"C++ extension could not be built here: {_fast.extension_error('local_attention')}")
    q, kd, grid, vd = _attention_inputs(s=s, dil=dil)
    args = (q.requires_grad_(), kd.requires_grad_(), grid, vd.requires_grad_(), 3, dil, backend)
    torch.library.opcheck(torch.ops.acmix.local_attention, args, test_utils=_checks(s == 2))
    f = lambda q, kd, vd: ops.local_attention(q, kd, grid, vd, 3, dil, backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, kd, vd), eps=1e-6, atol=1e-7)


@needs_cpp
@pytest.mark.parametrize("s", [1, 2])
def test_opcheck_grouped_conv(s):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 3, 7, 6, dtype=f64, generator=g, requires_grad=True)  # (B, 3N, d, H, W), N = 2
    w = torch.randn(3 * 2, 6, 3, 3, dtype=f64, generator=g, requires_grad=True)
    torch.library.opcheck(torch.ops.acmix.grouped_conv, (x, w, s), test_utils=_checks(s == 2))
    assert torch.autograd.gradcheck(lambda x, w: ops.grouped_conv(x, w, s), (x, w), eps=1e-6, atol=1e-7)


@needs_cpp
@pytest.mark.parametrize("conv,learn_alpha,stride,layout", [(True, True, 1, "rows"), (True, False, 2, "rows"),
                                                            (False, True, 1, "rows"), (False, False, 2, "rows"),
                                                            (True, True, 2, "lanes"), (False, False, 1, "lanes")])
def test_opcheck_acmix_stage2(conv, learn_alpha, stride, layout):
    """Both attention layouts: their saved tensors differ in shape (the lanes kernel saves no padded keys or
    values), which the fake kernel must follow."""
    g = torch.Generator().manual_seed(2)
    B, N, d, H, W, ka = 1, 2, 3, 7, 6, 3
    C = N * d
    qkv = torch.randn(B, 3 * C, H, W, dtype=f64, generator=g, requires_grad=True)
    pe_w = torch.randn(d, 2, 1, 1, dtype=f64, generator=g, requires_grad=True)
    pe_b = torch.randn(d, dtype=f64, generator=g, requires_grad=True)
    wc = torch.randn(d * N, 3 * N, 3, 3, dtype=f64, generator=g, requires_grad=True) if conv else None
    a = torch.tensor([0.7], dtype=f64, requires_grad=learn_alpha)
    grid = node._grid(H, W, (ka - 1) // 2, stride, f64, qkv.device)
    args = (qkv, pe_w, pe_b, grid, wc, a, N, ka, stride, 1, learn_alpha, layout == "lanes")
    torch.library.opcheck(torch.ops.acmix.acmix_stage2, args, test_utils=_checks(conv and learn_alpha))


# ----------------------------------------------------------------------------- meta device


@needs_cpp
@pytest.mark.parametrize("cls,kw", [(ACmix, {}), (ACmix, {"mixing": "att"}), (LocalSelfAttention, {})])
@pytest.mark.parametrize("stride", [1, 2])
def test_blocks_run_on_meta_with_the_cpu_shapes(cls, kw, stride):
    m = _block(cls, C=8, heads=2, ka=3, stride=stride, dtype=torch.float32, **kw)
    x = torch.randn(2, 8, 9, 7)
    want = m(x)
    assert m.stage2_one_node(m.stage1(x))  # on CPU the block runs the one-node Stage II
    m.to("meta")
    y = m(x.to("meta"))
    assert y.is_meta and y.shape == want.shape
    y.sum().backward()  # the backward ops' fake kernels
    assert all(p.grad is not None and p.grad.is_meta for p in m.parameters())


def test_resnet50_acmix_on_meta():
    """Shape-only forward of a full-size model: nothing allocated, nothing computed."""
    with torch.device("meta"):
        m = create_model("resnet50-acmix")
    y = m(torch.empty(2, 3, 224, 224, device="meta"))
    assert y.is_meta and y.shape == (2, 1000)
    assert create_model("resnet50-acmix").to("meta")(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 1000)


# ----------------------------------------------------------------------------- torch.compile


def _explain(m, x):
    torch._dynamo.reset()
    return torch._dynamo.explain(m)(x)


@needs_cpp
@pytest.mark.parametrize("cls", [ACmix, LocalSelfAttention])
def test_no_graph_break_in_a_compiled_block(cls):
    m = _block(cls, C=8, heads=2, ka=3, dtype=torch.float32)
    x = torch.randn(2, 8, 9, 7)
    ex = _explain(m, x)
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]
    assert ex.graph_count == 1
    targets = {str(n.target) for g in ex.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert "acmix.acmix_stage2.default" in targets or "acmix.acmix_stage2" in targets, targets


@needs_cpp
def test_no_graph_break_when_the_first_call_is_compiled(monkeypatch):
    """A fresh process whose first forward is traced: loading the extension happens outside the graph."""
    monkeypatch.setattr(_fast, "_exts", {})
    monkeypatch.setattr(_fast, "_errors", {})
    ex = _explain(_block(ACmix, dtype=torch.float32).train(), torch.randn(2, 8, 9, 7))
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]
    assert _fast._errors == {"local_attention": None, "conv_path": None}


@needs_cpp
@pytest.mark.parametrize("cls", [ACmix, LocalSelfAttention])
def test_compiled_block_equals_eager(cls):
    """aot_eager: dynamo's graph run through AOTAutograd (fake kernels, registered autograd, backward ops)."""
    m = _block(cls, C=8, heads=2, ka=3, stride=2)
    x = torch.randn(2, 8, 9, 7, dtype=f64, requires_grad=True)
    want = m(x)
    gw = torch.autograd.grad(want.square().sum(), [x, *m.parameters()])
    torch._dynamo.reset()
    got = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    gg = torch.autograd.grad(got.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@needs_cpp
@pytest.mark.slow
def test_inductor_compiled_block_equals_eager():
    """torch.compile's default backend (C++ code generation around the ops), forward and backward."""
    m = _block(ACmix, C=16, heads=4, ka=5, stride=1, dtype=torch.float32)
    x = torch.randn(2, 16, 10, 9, requires_grad=True)
    want = m(x)
    gw = torch.autograd.grad(want.square().sum(), [x, *m.parameters()])
    torch._dynamo.reset()
    got = torch.compile(m, fullgraph=True)(x)
    gg = torch.autograd.grad(got.square().sum(), [x, *m.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _small(name):
    if name.startswith("resnet"):
        return create_model(name, stem="small", img_size=16, widths=[8, 8, 16, 16], num_classes=4), (2, 3, 16, 16)
    if name.startswith("san"):
        return create_model(name, stem="small", img_size=16, widths=[32, 32, 64, 64, 32], num_classes=4), (2, 3, 16, 16)
    if name.startswith("pvt"):
        return create_model(name, stem="small", img_size=16, num_classes=4), (2, 3, 16, 16)
    kw = {} if name.startswith(("swin_micro", "swin_mini")) else {"window_size": 4, "widths": [24]}
    return create_model(name, stem="small", num_classes=4, **kw), (2, 3, 32, 32)


# one depth per family: the deeper variants repeat the same blocks (same operators, same ops traced)
SWEEP = [n for n in list_models() if n.split("-")[0] in ("resnet26", "san10", "pvt_t", "swin_micro")]


@needs_cpp
@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEP)
def test_registry_model_compiles_without_graph_breaks(name):
    m, shape = _small(name)
    ex = _explain(m.eval(), torch.randn(shape))
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]


def test_the_sweep_covers_every_family_and_operator():
    kinds = {n.split("-")[1] for n in list_models()}
    assert {n.split("-")[1] for n in SWEEP} == kinds
    assert {n.split("-")[0].rstrip("0123456789").split("_")[0] for n in SWEEP} == {"resnet", "san", "pvt", "swin"}


# ----------------------------------------------------------------------------- FLOP counts


def _flop_count(fn, *args):
    with FlopCounterMode(display=False) as c:
        fn(*args)
    return c.get_total_flops()


@needs_cpp
@pytest.mark.parametrize("cls,kw,stride", [(ACmix, {}, 1), (ACmix, {}, 2), (ACmix, {"mixing": "att"}, 1),
                                           (ACmix, {"mixing": "half"}, 1), (LocalSelfAttention, {}, 1)])
def test_flop_counter_on_the_fast_block_equals_the_formula_voice(cls, kw, stride):
    from bench.flops import count_model
    m = _block(cls, C=16, heads=4, ka=5, stride=stride, dtype=torch.float32, **kw).eval()
    x = torch.randn(1, 16, 12, 11)
    formula = count_model(m, inputs=x, voices=("formula", "torch"))
    flops = _flop_count(m, x)  # the block as run on CPU (counters see its two paths as separate ops)
    assert flops == 2 * formula.total("formula")
    # bench.flops' torch voice (FlopCounterMode by module path) agrees per stage
    assert formula.stages("torch") == formula.stages("formula")


@needs_cpp
@pytest.mark.parametrize("conv,stride", [(True, 1), (True, 2), (False, 1)])
def test_stage2_node_formula_equals_the_paths_it_fuses(conv, stride):
    """The node is bypassed under counters; called directly, its registered formula gives the MACs of
    the attention path plus the fused conv path as the formula voice lists them."""
    from bench.formulas import conv_path_cost, local_attention_cost
    B, N, d, H, W, ka, k = 2, 4, 4, 12, 11, 5, 3
    C = N * d
    qkv = torch.randn(B, 3 * C, H, W)
    pe_w, wc = torch.randn(d, 2, 1, 1), torch.randn(d * N, 3 * N, k, k) if conv else None
    a, b = torch.tensor([0.5]), torch.tensor([0.5])
    flops = _flop_count(node.acmix_stage2, qkv, pe_w, None, wc, a, b if conv else None, N, ka, stride)
    want = local_attention_cost(C, N, ka, H, W, stride).total()
    if conv:
        fused = conv_path_cost(N, d, k, H, W, stride, "multigroup", False, fused=True)
        want += fused.total() - d * N * k ** 4 * 3 * N  # the FC fold runs outside the node
    assert flops == 2 * B * want


@needs_cpp
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_backward_formulas_count_as_run(backend, monkeypatch):
    monkeypatch.setenv("ACMIX_FAST_BACKEND", backend)
    q, kd, grid, vd = _attention_inputs(B=2, N=2, d=4, H=8, W=9, ka=5, s=2)
    q, kd, vd = (t.requires_grad_() for t in (q, kd, vd))
    BN, Cq, Ho, Wo = q.shape
    entries = BN * Ho * Wo * 25
    with FlopCounterMode(display=False) as c:
        _fast.local_attention(q, kd, grid, vd, 5, 1).sum().backward()
    counts = {str(k): v for k, v in c.get_flop_counts()["Global"].items()}
    assert counts["acmix.local_attention"] == 2 * entries * (Cq + 4)
    recompute = Cq if backend == "cpp" else 0  # the C++ backward recomputes the logits
    assert counts["acmix.local_attention_backward"] == 2 * entries * (Cq + 4 + 2 * 4 + recompute)


def test_formulas_are_registered():
    from torch.utils.flop_counter import flop_registry
    for name in ("local_attention", "local_attention_backward", "grouped_conv", "grouped_conv_backward",
                 "acmix_stage2", "acmix_stage2_backward"):
        assert getattr(torch.ops.acmix, name) in flop_registry, name
    assert set(flop_formulas.fvcore_handles()) == {"acmix::local_attention"}

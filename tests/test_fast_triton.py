"""The Triton sliding-window attention (modules/_fast/triton_impl.py) against torch_impl.

No GPU here: the kernels run in Triton's interpreter (TRITON_INTERPRET=1, CPU tensors). The interpreter
flag must be set before triton is imported and must not leak into other tests, so the checks run in a
subprocess (this file run as a script with --worker) that prints one JSON line per case; the tests
below assert on those lines and on the subprocess' exit code. A second subprocess compiles the three
kernels ahead of time for sm_90 with Triton's bundled ptxas (no GPU needed), so a first run on a GPU does not
discover a compile error. The CUDA test (marked cuda) runs the same comparison on a real GPU and
is skipped where none is visible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # the worker: run as a script from the repository root
    sys.path.insert(0, str(ROOT))
from modules._fast import triton_impl  # noqa: E402  (imports triton, if present, without the interpreter flag)

HAVE_TRITON = triton_impl.triton is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason=f"triton is not importable here "
                                                          f"({triton_impl._IMPORT_ERROR}); pip install triton")

# name: (B, N heads, d, H, W, k_a, stride, dilation, dtype)
CASES = {
    "s1_b1_nonsquare_ka3": (1, 2, 3, 6, 5, 3, 1, 1, "float64"),
    "s2_b3_ka7": (3, 2, 4, 9, 7, 7, 2, 1, "float64"),
    "s2_dil2": (1, 1, 4, 9, 11, 3, 2, 2, "float64"),
    "s3_ka5": (2, 2, 3, 8, 10, 5, 3, 1, "float64"),
    "s1_dil3": (1, 2, 3, 10, 9, 3, 1, 3, "float64"),
    "s1_ka1": (1, 1, 2, 5, 4, 1, 1, 1, "float64"),
    "s1_ka7_float32": (1, 2, 3, 11, 9, 7, 1, 1, "float32"),
    "s2_ka3_float16": (1, 2, 3, 7, 8, 3, 2, 1, "float16"),
    "s1_ka3_bfloat16": (1, 2, 3, 7, 8, 3, 1, 2, "bfloat16"),
}
# max |triton - torch_impl(float64 of the same inputs)|: float64 exact up to rounding; float32 accumulates in
# float32; float16/bfloat16 accumulate in float32 and round the stored results to the input dtype
TOL = {"float64": 1e-12, "float32": 2e-5, "float16": 2e-3, "bfloat16": 4e-2}


# ----------------------------------------------------------------------------- worker (subprocess)

def _make(B, N, d, H, W, ka, s, dil, dtype, seed=0):
    from modules._fast import split_phases
    from modules.local_attention import attention_padding

    g = torch.Generator().manual_seed(seed)
    pad = attention_padding(ka, dil)
    Hp, Wp, Ho, Wo = H + 2 * pad, W + 2 * pad, (H - 1) // s + 1, (W - 1) // s + 1
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    q = r(B * N, d + 2, Ho, Wo)
    kd, vd = (split_phases(r(B * N, d, Hp, Wp), s).contiguous() for _ in range(2))
    grid = split_phases(r(2, Hp, Wp), s).contiguous()
    dout = r(B * N, d, Ho, Wo)
    return [t.to(getattr(torch, dtype)) for t in (q, kd, grid, vd, dout)]


def _worker() -> int:
    assert os.environ.get("TRITON_INTERPRET") == "1", "the worker runs in Triton's interpreter"
    from modules._fast import torch_impl

    # torch.empty fills with NaN under deterministic mode: an output element a kernel forgets to write shows up
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    ok, why = triton_impl.available()
    print(json.dumps({"available": ok, "why": why}), flush=True)
    if not ok:
        return 3
    for name, case in CASES.items():
        *shape, dtype = case
        ka, dil = shape[5], shape[7]
        q, kd, grid, vd, dout = _make(*shape, dtype)
        out = triton_impl.forward(q, kd, grid, vd, ka, dil)
        grads = triton_impl.backward(dout, q, kd, grid, vd, ka, dil)
        ref, w = torch_impl.forward(*(t.double() for t in (q, kd, grid, vd)), ka, dil)
        rgrads = torch_impl.backward(*(t.double() for t in (dout, q, kd, grid, vd)), w, ka, dil)
        errs = {"out": (out.double() - ref).abs().max().item()}  # NaN (an unwritten element) fails "< tol"
        for k, a, b in zip(("dq", "dkd", "dvd"), grads, rgrads):
            errs[k] = (a.double() - b).abs().max().item()
        dtypes_kept = all(t.dtype == q.dtype for t in (out, *grads))
        shapes_kept = [tuple(t.shape) for t in grads] == [tuple(t.shape) for t in (q, kd, vd)]
        print(json.dumps({"case": name, "errs": errs, "dtypes_kept": dtypes_kept, "shapes_kept": shapes_kept}),
              flush=True)

    # float64 gradcheck of forward/backward wrapped as an autograd Function (independent of torch_impl)
    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, kd, grid, vd):
            ctx.save_for_backward(q, kd, grid, vd)
            return triton_impl.forward(q, kd, grid, vd, 3, 1)

        @staticmethod
        def backward(ctx, dout):
            dq, dkd, dvd = triton_impl.backward(dout.contiguous(), *ctx.saved_tensors, 3, 1)
            return dq, dkd, None, dvd

    q, kd, grid, vd, _ = _make(1, 1, 2, 4, 5, 3, 2, 1, "float64", seed=1)
    ins = [q.requires_grad_(), kd.requires_grad_(), grid, vd.requires_grad_()]
    passed = torch.autograd.gradcheck(F.apply, ins, eps=1e-6, atol=1e-7, fast_mode=True, raise_exception=False)
    print(json.dumps({"gradcheck": bool(passed)}), flush=True)

    # the whole local-attention path through modules/_fast with ACMIX_FAST_BACKEND=triton, once the
    # backend is wired in there (until then the line says so and the test below skips)
    from modules import _fast
    from modules.local_attention import local_attention_fast, local_attention_reference

    if "triton" in _fast.BACKENDS:
        os.environ["ACMIX_FAST_BACKEND"] = "triton"
        g = torch.Generator().manual_seed(2)
        for B, C, heads, H, W, ka, s, dil in ((2, 8, 2, 9, 8, 3, 2, 1), (1, 4, 1, 8, 9, 5, 1, 1)):
            ins = [torch.randn(B, C, H, W, dtype=torch.float64, generator=g) for _ in range(3)]
            ins += [torch.randn(C // heads, 2, 1, 1, dtype=torch.float64, generator=g)]
            ins = [t.requires_grad_() for t in ins]
            assert _fast.backend_for(ins[0]) == "triton", _fast.backend_for(ins[0])
            fast = local_attention_fast(*ins, None, heads, ka, s, dil)
            ref = local_attention_reference(*ins, None, heads, ka, s, dil)
            wt = torch.randn(ref.shape, dtype=ref.dtype, generator=g)
            gf = torch.autograd.grad((fast * wt).sum(), ins)
            gr = torch.autograd.grad((ref * wt).sum(), ins)
            err = max([(fast - ref).abs().max().item()] + [(a - b).abs().max().item() for a, b in zip(gf, gr)])
            print(json.dumps({"integrated": [B, C, heads, H, W, ka, s, dil], "err": err}), flush=True)
        del os.environ["ACMIX_FAST_BACKEND"]
    else:
        print(json.dumps({"integrated": None, "why": f"modules._fast.BACKENDS = {_fast.BACKENDS}"}), flush=True)

    # bad input: one clear ValueError each
    q, kd, grid, vd, dout = _make(1, 1, 2, 5, 5, 3, 1, 1, "float32")
    bad = {"dtype_mismatch": (q.double(), kd, grid, vd, 3, 1),
           "non_contiguous": (q.transpose(-1, -2), kd, grid, vd, 3, 1),
           "window_too_large": (q, kd, grid, vd, 5, 1),
           "channels": (q[:, 1:].contiguous(), kd, grid, vd, 3, 1)}
    for name, args in bad.items():
        try:
            triton_impl.forward(*args)
            msg = None
        except ValueError as e:
            msg = str(e)
        print(json.dumps({"bad": name, "msg": msg}), flush=True)
    return 0


# ----------------------------------------------------------------------------- tests (parent process)

def _run(args, env_extra, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env_extra
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def interpreted(run_once):
    if not HAVE_TRITON:
        pytest.skip(f"triton is not importable here ({triton_impl._IMPORT_ERROR}); pip install triton")

    def worker():
        p = _run(["--worker"], {"TRITON_INTERPRET": "1"})
        return {"returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr}

    # the interpreter run takes the better part of a minute: once per test run, also under pytest-xdist
    p = run_once("triton_interpreter_worker", worker)
    rc, stdout, stderr = p["returncode"], p["stdout"], p["stderr"]
    lines = [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]
    if rc == 3 and lines and not lines[0].get("available"):
        pytest.skip(f"triton interpreter unavailable: {lines[0].get('why')}")
    assert rc == 0, f"worker exit {rc}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return {"cases": {l["case"]: l for l in lines if "case" in l},
            "gradcheck": [l["gradcheck"] for l in lines if "gradcheck" in l],
            "bad": {l["bad"]: l["msg"] for l in lines if "bad" in l},
            "integrated": [l for l in lines if "integrated" in l],
            "available": [l for l in lines if "available" in l]}


@needs_triton
@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_equals_torch_impl(interpreted, name):
    r = interpreted["cases"].get(name)
    assert r is not None, f"worker printed nothing for {name}"
    tol = TOL[CASES[name][-1]]
    for k, e in r["errs"].items():
        assert e < tol, f"{name}: max |triton - torch_impl| of {k} = {e:.3g} >= {tol:g}"
    assert r["dtypes_kept"] and r["shapes_kept"]


@needs_triton
def test_interpreted_gradcheck(interpreted):
    assert interpreted["available"] and interpreted["available"][0]["available"]
    assert interpreted["gradcheck"] == [True]


@needs_triton
def test_interpreted_bad_input_is_one_clear_value_error(interpreted):
    msgs = interpreted["bad"]
    assert set(msgs) == {"dtype_mismatch", "non_contiguous", "window_too_large", "channels"}
    for name, msg in msgs.items():
        assert msg and "triton window attention" in msg and "\n" not in msg, (name, msg)


@needs_triton
def test_interpreted_through_local_attention_fast(interpreted):
    """local_attention_fast with ACMIX_FAST_BACKEND=triton equals the reference (values, gradients, float64)."""
    lines = interpreted["integrated"]
    if len(lines) == 1 and lines[0]["integrated"] is None:
        pytest.skip(f"the triton backend is not wired into modules._fast yet ({lines[0]['why']})")
    assert len(lines) == 2
    for l in lines:
        assert l["err"] < 1e-11, l


@needs_triton
def test_unavailable_without_cuda_or_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = triton_impl.available()
    if torch.cuda.is_available():
        assert ok, why
        return
    assert not ok and "TRITON_INTERPRET=1" in why
    q = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="triton backend cannot run here"):
        triton_impl.forward(q, torch.zeros(1, 1, 4, 1, 4), torch.zeros(2, 4, 1, 4), torch.zeros(1, 1, 4, 1, 4), 3, 1)


AOT = r"""
import subprocess, sys, tempfile, torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from modules._fast import triton_impl as ti
cuobjdump = sys.argv[1]
for dt, widths in (("fp32", (56, 28, 14)), ("fp64", (56,)), ("fp16", (56,)), ("bf16", (56,))):
    dtype = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16, "bf16": torch.bfloat16}[dt]
    acc, buf = (tl.float64, "fp64") if dt == "fp64" else (tl.float32, "fp32")
    for wo in widths:
        K2P, BX, nw = ti._config(7, wo, dtype)  # the launch configuration of k_a 7, output width wo
        for fn, ptrs in ((ti._fwd, [dt] * 5), (ti._bwd_q, [dt] * 6 + [buf] * 2),
                         (ti._bwd_kv, [dt] * 2 + [buf] * 2 + [dt] * 2)):
            names = fn.arg_names
            sig = {n: "*" + t for n, t in zip(names, ptrs)} | {n: "i32" for n in names[len(ptrs):]}
            consts = {"K2P": K2P, "BLOCK_X": BX, "ACC": acc}
            sig |= {k: "constexpr" for k in consts}
            src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw})
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                use = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                     check=True).stdout
            res = dict(t.split(":") for l in use.splitlines() if "REG:" in l for t in l.split() if ":" in t)
            print(dt, wo, fn.__name__, BX, nw, res["REG"], res["STACK"], res["LOCAL"])
"""


@needs_triton
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """Ahead-of-time compile (Triton -> PTX -> cubin with the bundled ptxas; no GPU needed) of every kernel at
    the launch configurations of k_a 7 (output widths 56, 28, 14; float32, float64, float16, bfloat16): each
    compiles, and none has a stack frame or local memory (where ptxas puts register spills, which would slow
    the kernel down: 4 warps on the 64x64 float32 tile spill 264 bytes in _bwd_q, hence _config's 8)."""
    nvbin = Path(triton_impl.triton.__path__[0]) / "backends" / "nvidia" / "bin"
    if not (nvbin / "ptxas").exists() or not (nvbin / "cuobjdump").exists():
        pytest.skip(f"triton's bundled ptxas/cuobjdump are missing ({nvbin})")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", AOT, str(nvbin / "cuobjdump")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [l.split() for l in p.stdout.splitlines() if l.strip()]
    assert len(rows) == 18, p.stdout
    spilled = [r for r in rows if int(r[-1]) or int(r[-2])]
    assert not spilled, f"kernels spilling (dtype width kernel BLOCK_X warps regs stack local): {spilled}"


@pytest.mark.cuda
@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("case", [(2, 4, 16, 14, 13, 7, 1, 1), (2, 4, 16, 15, 12, 7, 2, 1), (1, 2, 8, 12, 11, 3, 2, 2)])
def test_cuda_triton_equals_torch_impl(case, dtype):
    from modules._fast import torch_impl

    ka, dil = case[5], case[7]
    q, kd, grid, vd, dout = (t.cuda() for t in _make(*case, dtype))
    out = triton_impl.forward(q, kd, grid, vd, ka, dil)
    grads = triton_impl.backward(dout, q, kd, grid, vd, ka, dil)
    ref, w = torch_impl.forward(*(t.double() for t in (q, kd, grid, vd)), ka, dil)
    rgrads = torch_impl.backward(*(t.double() for t in (dout, q, kd, grid, vd)), w, ka, dil)
    # relative to the largest reference value: these maps have more channels and larger windows than the
    # interpreter cases
    tol = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 2e-2}[dtype]
    for name, a, b in zip(("out", "dq", "dkd", "dvd"), (out, *grads), (ref, *rgrads)):
        assert a.dtype == q.dtype and a.is_cuda
        err = (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err < tol, f"{name}: relative max error {err:.3g} >= {tol:g}"


if __name__ == "__main__" and "--worker" in sys.argv:
    sys.exit(_worker())

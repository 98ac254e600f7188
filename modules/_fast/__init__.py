"""Fast Stage II kernels: local (sliding-window) attention and the ACmix conv path's grouped conv.

Compiled kernels (KERNELS), C++ sources beside this file, built with torch's extension tooling at
first use into a cache directory (ACMIX_BENCH_CACHE, default ~/.cache/acmix-bench), keyed by every
C++ source and header here (simd.h, ...), torch, Python, flags and CPU; `load_extension(name)`:

  local_attention  softmax attention over each query's k_a x k_a window (the attention path;
                   local_attention.h): blocks of output rows share every key/value vector load,
                   explicit SIMD tiles; backward in one pass per (b, n) recomputing the softmax
                   weights; pad_split builds its padded, phase-split key/value layout
  conv_path        the conv path's grouped k x k conv read in place from the Stage I output
                   (conv_path.py)

Backends of the attention, same inputs and outputs (ACMIX_FAST_BACKEND):

  auto    (default) cpp for CPU float32/float64 when it builds, torch otherwise (CUDA included)
  cpp     the C++ kernels above (CPU float32/float64)
  torch   the same loops as whole-tensor PyTorch ops (torch_impl.py): any device and dtype; the
          automatic fallback where no compiler exists; saves the softmax weights for backward
  triton  Triton kernels for CUDA (triton_impl.py), verified in Triton's interpreter and by an
          sm_90 compile only (never launched on a GPU: see its docstring and scripts/gpu_check.sh)

None builds unfolded windows; cpp and triton keep no k_a^2-sized activation between forward and
backward (their backward recomputes the softmax weights).

Torch operators (ops.py, namespace acmix, torch.library.custom_op): every kernel call goes through
the dispatcher as one of

  acmix::local_attention / local_attention_backward   the attention, any backend (an op argument)
  acmix::grouped_conv / grouped_conv_backward         the conv path's C++ kernel
  acmix::acmix_stage2 / acmix_stage2_backward         the one-node Stage II (acmix_stage2.py)

each with a fake kernel (shapes only), autograd registered with register_autograd (the forward op's
setup_context saves what the backward op reads), and a FLOP formula registered with
torch.utils.flop_counter (flop_formulas.py, MACs as run). So torch.compile traces a model through
them without a graph break, models run on the meta device (shape-only counting of large models;
meta tensors take the backend the CPU would), and FlopCounterMode (bench.flops' torch voice)
counts them (under counters and traces the one-node Stage II gives way to its two paths, which
counters attribute to their own modules; see acmix_stage2.py). Tested by tests/test_fast_ops.py: torch.library.opcheck of every op (schema, fake,
autograd, AOT dispatch with dynamic shapes) in float64 for each backend, gradcheck through the ops,
meta-device blocks and a full-size ResNet-50-ACmix, zero graph breaks from torch._dynamo.explain on
an ACmix block and LocalSelfAttention (and, marked slow, every registry model), compiled (aot_eager)
equal to eager, and FlopCounterMode equal to the formula voice; tests/test_fast_local_attention.py,
test_fast_conv_path.py and test_acmix_stage2.py hold every path equal to its reference.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
import warnings
from pathlib import Path

import torch

from . import torch_impl  # noqa: F401  (a submodule callers reach as _fast.torch_impl)

BACKENDS = ("auto", "cpp", "torch", "triton")
_DIR = Path(__file__).parent
# compiled kernels: name -> its C++ sources beside this file; each builds into its own extension
KERNELS = {
    "local_attention": ("local_attention_forward.cpp", "local_attention_backward.cpp", "pad_split.cpp",
                        "local_attention_lanes.cpp", "local_attention_bindings.cpp"),
    "conv_path": ("conv_path.cpp", "conv_path_lanes.cpp"),
}
_lock = threading.Lock()
_exts: dict[str, object] = {}
_errors: dict[str, str | None] = {}


def cache_dir() -> Path:
    root = os.environ.get("ACMIX_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "acmix-bench")
    return Path(root)


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("flags", "model name"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def _cflags() -> list[str]:
    flags = ["-O3", "-fopenmp", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    elif platform.machine() in ("aarch64", "arm64"):
        flags.append("-mcpu=native")
    return flags


def source_key(kernel: str) -> str:
    """Hash of what a build of `kernel` depends on: its sources and every header beside them (an edit
    to a shared header such as simd.h rebuilds every kernel), torch and where it is installed, Python,
    flags and the CPU. The installation counts because the build files name torch's include and library
    paths: two virtual environments sharing one build directory would each see the other's build as
    stale and recompile it on every first use."""
    files = [_DIR / s for s in KERNELS[kernel]] + sorted(_DIR.glob("*.h"))
    parts = [f"{f.name}\n{f.read_text()}" for f in files]
    parts += [torch.__version__, os.path.dirname(os.path.realpath(torch.__file__)), sys.version,
              " ".join(_cflags()), _cpu_signature()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


def _build(kernel: str = "local_attention"):
    # importing cpp_extension warns "No CUDA runtime is found" on CPU-only machines: noise for a CPU build
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)

    try:  # the pip ninja package puts its binary beside the module, not on PATH
        import ninja
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    key = source_key(kernel)
    build_dir = cache_dir() / f"{kernel}_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    src = _stage_sources(kernel, build_dir / "src")
    return cpp_extension.load(name=f"acmix_{kernel}_{key}", sources=[str(src / s) for s in KERNELS[kernel]],
                              extra_cflags=_cflags(), extra_ldflags=["-fopenmp"],
                              build_directory=str(build_dir), verbose=False)


def _stage_sources(kernel: str, dest: Path) -> Path:
    """Copy the kernel's sources and headers into its build directory and compile them from there.

    ninja records absolute source paths: compiled from this file's directory, two checkouts of the same
    sources (clones, worktrees, an installed copy) would each see the other's build as stale and rebuild
    it in turn. The build directory is keyed by the sources' content, so its copies are the same for all."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in [_DIR / s for s in KERNELS[kernel]] + sorted(_DIR.glob("*.h")):
        target = dest / f.name
        data = f.read_bytes()
        if target.exists() and target.read_bytes() == data:
            continue  # unchanged: keep its mtime, so ninja sees nothing to do
        tmp = dest / f".{f.name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic: a concurrent build reads the old or the new file, never half
    return dest


def load_extension(kernel: str = "local_attention"):
    """The compiled module for `kernel`, or None (reason in extension_error()). Built once per process."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown compiled kernel {kernel!r}; known: {', '.join(KERNELS)}")
    if kernel in _errors:  # built (or failed) already: no lock, so that torch.compile traces this check
        return _exts.get(kernel)
    with _lock:
        if kernel not in _errors:
            try:
                _exts[kernel] = _build(kernel)
                _errors[kernel] = None
            except Exception as e:  # no compiler, no ninja, build error: fall back, say why once
                msg = str(e).strip().splitlines()
                _errors[kernel] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]
                warnings.warn(f"acmix-bench: C++ {kernel} extension unavailable ({_errors[kernel]}); "
                              f"using the pure-PyTorch fast path", RuntimeWarning, stacklevel=3)
    return _exts.get(kernel)


@torch.compiler.assume_constant_result
def extension_available(kernel: str) -> bool:
    """Whether the compiled `kernel` loads (building it on first use). A constant of the process: while
    torch.compile traces, it is called once and its result kept (no graph break at a first build)."""
    return load_extension(kernel) is not None


def build_all() -> None:
    """Build (or load from the cache) every compiled kernel, saying which failed and why; `make setup` runs it."""
    for kernel in KERNELS:
        status = "ok" if load_extension(kernel) is not None else f"not built ({extension_error(kernel)})"
        print(f"C++ kernel {kernel}: {status}", flush=True)


def extension_error(kernel: str | None = None) -> str | None:
    """Why a compiled kernel is unavailable (None when it built); all kernels when `kernel` is None."""
    names = KERNELS if kernel is None else (kernel,)
    errs = []
    for k in names:
        load_extension(k)
        if _errors[k]:
            errs.append(_errors[k] if kernel else f"{k}: {_errors[k]}")
    return "; ".join(errs) or None


def requested_backend() -> str:
    b = os.environ.get("ACMIX_FAST_BACKEND", "auto").strip().lower() or "auto"
    if b not in BACKENDS:
        raise ValueError(f"ACMIX_FAST_BACKEND={b!r} is not one of {', '.join(BACKENDS)}; unset it or pick one")
    return b


def backend_for(t: torch.Tensor, backend: str | None = None, kernel: str = "local_attention") -> str:
    """Which backend runs `kernel` for tensor t: "cpp", "torch" or "triton" (ValueError where the one
    asked for cannot run)."""
    b = backend or requested_backend()
    if b not in BACKENDS:
        raise ValueError(f"unknown fast backend {b!r}; allowed: {', '.join(BACKENDS)}")
    if b == "torch":
        return "torch"
    if b == "triton":  # CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for tests)
        from . import triton_impl
        ok, why = triton_impl.available()
        if not ok:
            raise ValueError(f"the triton backend cannot run here ({why}); use ACMIX_FAST_BACKEND=torch or auto")
        return "triton"
    # meta tensors (shapes only: the ops' fake kernels run) take the backend a CPU tensor would
    cpu_ok = t.device.type in ("cpu", "meta") and t.dtype in (torch.float32, torch.float64)
    if b == "cpp":
        if not cpu_ok:
            raise ValueError(f"the cpp backend runs CPU float32/float64 only, got {t.device.type} {t.dtype}; "
                             f"use ACMIX_FAST_BACKEND=torch or auto")
        if not extension_available(kernel):
            raise ValueError(f"the C++ {kernel} extension could not be built ({_errors[kernel]}); "
                             f"use ACMIX_FAST_BACKEND=torch or auto")
        return "cpp"
    return "cpp" if cpu_ok and extension_available(kernel) else "torch"


def split_phases(t: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., Hp, Wp) -> (..., Hp, S, Wq), [.., r, p, m] = t[.., r, m*S + p] (zero beyond Wp).
    A view for stride 1; makes every window read unit-stride for any stride."""
    if stride == 1:
        return t.unsqueeze(-2)
    Wp = t.shape[-1]
    Wq = -(-Wp // stride)
    if Wq * stride != Wp:
        t = torch.nn.functional.pad(t, (0, Wq * stride - Wp))
    return t.unflatten(-1, (Wq, stride)).transpose(-1, -2)


def local_attention(q: torch.Tensor, kd: torch.Tensor, grid: torch.Tensor, vd: torch.Tensor,
                    kernel_att: int, dilation: int = 1, backend: str | None = None) -> torch.Tensor:
    """Softmax attention of each query row over its k_a x k_a window (see local_attention.h).

    q (BN, Ck+G, H', W'), kd (BN, Ck, Hp, S, Wq), grid (G, Hp, S, Wq), vd (BN, Cv, Hp, S, Wq)
    -> (BN, Cv, H', W'). Differentiable in q, kd, vd. Runs as the operator acmix::local_attention (ops.py).
    """
    which = backend_for(q, backend)
    q, kd, grid, vd = (t.contiguous() for t in (q, kd, grid, vd))
    return torch.ops.acmix.local_attention(q, kd, grid, vd, int(kernel_att), int(dilation), which)[0]


from . import ops  # noqa: E402,F401  (registers the acmix operators and their FLOP formulas)

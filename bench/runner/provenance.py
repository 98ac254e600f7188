"""Where a record came from: code state, machine, counting libraries, and which Stage II backend ran.

These go into every record's `env` so that a table mixing reruns can say which cells were
measured by which code (`git_commit`, `git_dirty`), on which CPU (`cpu`), counted by which
library versions (`counting`) and with which kernels (`stage2_backend`).
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

# the counting libraries bench.flops drives (voices fvcore and ptflops); their version moves counts
COUNTING_LIBRARIES = ("fvcore", "ptflops")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(names=COUNTING_LIBRARIES) -> dict[str, str | None]:
    """Installed version of each package (None: not installed)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def _git(*args, root: str | None = None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=root or _ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(root: str | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the code that runs: dirty = tracked files differ from the commit. (None, None)
    outside a git checkout (an installed wheel)."""
    r = _git("rev-parse", "HEAD", root=root)
    if r is None or r.returncode != 0 or not r.stdout.strip():
        return None, None
    s = _git("status", "--porcelain", "--untracked-files=no", root=root)
    dirty = None if s is None or s.returncode != 0 else bool(s.stdout.strip())
    return r.stdout.strip(), dirty


def stage2_backends(model, device=None, dtype=None) -> dict[str, dict[str, str]]:
    """{operator class: {path: backend}} for every Stage II path in `model`, as the fast paths choose it for
    tensors of this device and dtype (default: the model's parameters'): "cpp" (the compiled kernel),
    "torch" (the PyTorch twin, e.g. where no compiler exists or on CUDA), "triton", "sdpa" (Swin's windows
    through torch's scaled_dot_product_attention) or "reference" (the plain formulas). Several instances of
    one class that differ are joined with "+"."""
    import torch

    from modules._fast import backend_for
    from modules._fast.conv_path import kernel_backend
    from modules.local_attention import LocalAttentionPath
    from modules.operators import ConvPath
    from modules.window_attention import WindowAttentionPath

    p = next(iter(model.parameters()), None)
    device = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    dtype = dtype or (p.dtype if p is not None else torch.float32)
    probe = torch.empty(0, device=device, dtype=dtype)
    owners = {}
    for name, m in model.named_modules():  # the operator a path belongs to: its nearest named ancestor
        for child_name, child in m.named_children():
            owners.setdefault(id(child), m)
    out: dict[str, dict[str, set]] = {}
    for name, m in model.named_modules():
        if isinstance(m, LocalAttentionPath):
            path, b = "attention", "reference" if m.impl == "reference" else backend_for(probe)
        elif isinstance(m, WindowAttentionPath):
            path, b = "attention", "reference" if m.impl == "reference" else "sdpa"
        elif isinstance(m, ConvPath):
            fast = m.impl == "fast" and m.shift.impl == "fast" and m.shift.shift == "multigroup"
            path, b = "conv", "reference" if m.impl == "reference" else (kernel_backend(probe) if fast else "torch")
        else:
            continue
        op = owners.get(id(m))
        op = owners.get(id(op), op)  # path -> Stage2 -> operator
        out.setdefault(type(op).__name__ if op is not None else "model", {}).setdefault(path, set()).add(b)
    return {op: {path: "+".join(sorted(bs)) for path, bs in paths.items()} for op, paths in sorted(out.items())}

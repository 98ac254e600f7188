"""Argument and shape checks shared by the operators.

Every failure is a ValueError whose message names the argument, the value
received and what is allowed, so a user can fix a config without reading code.
"""
from __future__ import annotations

import torch


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def odd_kernel(name: str, value) -> int:
    positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(
            f"{name} must be odd (1, 3, 5, 7, ...) so the window has a centre, got {value}"
        )
    return value


def divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by != 0:
        allowed = [m for m in range(by, 4 * max(value, by) + 1, by)][:6]
        raise ValueError(
            f"{name}={value} must be divisible by {by_name}={by}; "
            f"nearby allowed values: {', '.join(map(str, allowed))}, ..."
        )


def choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")


def input_4d(op: str, x: torch.Tensor, channels: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"{op}: expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{op}: expected {channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")


def under_counter() -> bool:
    """True under torch.jit.trace or a TorchDispatchMode (fvcore, torch.utils.flop_counter, ptflops-aten):
    fast paths built from autograd Functions then run their plain twins, whose ops the counters know.
    False while torch.compile traces (the compiled graph keeps the fast path; this check is constant)."""
    if torch.compiler.is_compiling():
        return False
    stack = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return torch.jit.is_tracing() or (stack is not None and stack() > 0)

"""`modules.create_op`: each kind is the class it names, built with the same arguments; aliases; errors."""
from __future__ import annotations

import pytest
import torch

from modules import (ACmix, Conv, DecomposedConv, LocalSelfAttention, OPERATOR_KINDS, WindowACmix,
                     WindowSelfAttention, create_op)
from modules.names import OPERATOR_ALIASES, canonical_op, op_layout

DIRECT = {
    "conv": lambda: Conv(8, 12, 5, stride=2, bias=True),
    "dconv": lambda: DecomposedConv(8, 12, 5, stride=2, bias=True, shift="fixed"),
    "sa": lambda: LocalSelfAttention(8, 12, kernel_att=5, head=2, stride=2),
    "acmix": lambda: ACmix(8, 12, kernel_att=5, head=2, kernel_conv=5, stride=2, shift="fixed", mixing="half"),
    "window-sa": lambda: WindowSelfAttention(12, 4, 2, shift_size=2),
    "window-acmix": lambda: WindowACmix(12, 4, 2, shift_size=2, shift="fixed", mixing="half", kernel_conv=5),
}


def _factory(kind):
    window = kind.startswith("window")
    return create_op(kind, 12 if window else 8, 12, stride=1 if window else 2, heads=2, kernel_att=5,
                     kernel_conv=5, shift="fixed", mixing="half", window=4, shift_size=2, bias=True)


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
def test_each_kind_is_its_class_with_the_same_arguments(kind):
    torch.manual_seed(0)
    direct = DIRECT[kind]()
    torch.manual_seed(0)
    made = _factory(kind)
    assert type(made) is type(direct) and repr(made) == repr(direct)
    a, b = direct.state_dict(), made.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 8, 9, 9) if op_layout(kind) == "map" else torch.randn(1, 8, 8, 12)
    with torch.no_grad():
        assert torch.equal(direct(x), made(x))


def test_shift_none_is_the_operators_default():
    assert create_op("dconv", 4, 4).stage2.shift.shift == "tensor"
    assert create_op("acmix", 8, 8).stage2.conv.shift.shift == "multigroup"
    assert create_op("window-acmix", 8, 8, heads=2).stage2.conv.shift.shift == "multigroup"


def test_aliases_name_the_window_kinds():
    for alias, kind in OPERATOR_ALIASES.items():
        assert canonical_op(alias) == kind and op_layout(alias) == "tokens"
        assert type(create_op(alias, 8, 8, heads=2)) is type(create_op(kind, 8, 8, heads=2))


@pytest.mark.parametrize("call,msg", [
    (lambda: create_op("deconv", 8, 8), "unknown operator 'deconv'; allowed: conv, dconv"),
    (lambda: create_op("window-sa", 8, 8, stride=2), "no stride"),
    (lambda: create_op("window-acmix", 4, 8), "in_channels \\(4\\) must equal out_channels \\(8\\)"),
    (lambda: create_op("sa", 8, 8, shift="diagonal"), "unknown shift implementation 'diagonal'"),
    (lambda: create_op("conv", 8, 8, mixing="both"), "unknown mixing 'both'"),
])
def test_bad_arguments_are_one_clear_error(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()

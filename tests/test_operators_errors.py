"""Bad input: construction errors list what is allowed, forwards say expected vs got,
and the inputs the release crashes on follow the documented policy."""
import pytest
import torch

from modules import (ACmix, Conv, DecomposedConv, LocalSelfAttention, ShiftAggregation, WindowACmix,
                     WindowSelfAttention)


@pytest.mark.parametrize("make,match", [
    (lambda: ACmix(8, 10, head=4), r"out_planes=10 must be divisible by head=4; nearby allowed values: 4, 8, 12"),
    (lambda: LocalSelfAttention(8, 10, head=3), r"divisible by head=3"),
    (lambda: WindowACmix(10, 7, 4), r"dim=10 must be divisible by num_heads=4"),
    (lambda: ACmix(8, 8, kernel_att=4), r"kernel_att must be odd .* got 4"),
    (lambda: ACmix(8, 8, kernel_conv=2), r"kernel_conv must be odd .* got 2"),
    (lambda: Conv(8, 8, 4), r"kernel_size must be odd"),
    (lambda: DecomposedConv(8, 8, 0), r"kernel_size must be a positive integer, got 0"),
    (lambda: ACmix(0, 8), r"in_planes must be a positive integer, got 0"),
    (lambda: ACmix(8, 8, stride=0), r"stride must be a positive integer, got 0"),
    (lambda: ACmix(8, 8, dilation=-1), r"dilation must be a positive integer"),
    (lambda: ACmix(8, 8, shift="roll"), r"unknown shift implementation 'roll'; allowed: tensor, fixed, learnable, multigroup"),
    (lambda: DecomposedConv(8, 8, 3, shift="x"), r"allowed: tensor, fixed, learnable, multigroup"),
    (lambda: WindowACmix(8, 4, 2, shift="x"), r"allowed: tensor, fixed, learnable, multigroup"),
    (lambda: ShiftAggregation(4, 3, impl="slow"), r"unknown Stage II implementation 'slow'; allowed: fast, reference"),
    (lambda: WindowSelfAttention(8, 4, 2, shift_size=4), r"shift_size must be an integer in \[0, window_size=4\)"),
    (lambda: WindowSelfAttention(8, (4, 2), 2), r"window_size must be square"),
])
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("op,x,match", [
    (ACmix(8, 8, 3, 2), torch.randn(1, 6, 8, 8), r"ACmix: expected 8 input channels, got 6"),
    (Conv(8, 8), torch.randn(1, 4, 8, 8), r"expected 8 input channels, got 4"),
    (LocalSelfAttention(8, 8, 3, 2), torch.randn(8, 8, 8), r"expected a 4-D input"),
    (WindowACmix(8, 2, 2), torch.randn(1, 4, 4, 6), r"expected 8 channels"),
    (WindowACmix(8, 2, 2), torch.randn(1, 16, 8), r"need H and W"),
])
def test_forward_shape_errors(op, x, match):
    with pytest.raises(ValueError, match=match):
        op(x)


def test_map_not_larger_than_attention_padding_is_a_clear_error():
    op = ACmix(8, 8, kernel_att=7, head=2)
    with pytest.raises(ValueError, match=r"reflection padding 3 \(kernel_att=7, dilation=1\) needs H and W > 3, "
                                         r"got 3x3; use kernel_att <= 5"):
        op(torch.randn(1, 8, 3, 3))
    assert op(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)  # smallest map the maths allows
    with pytest.raises(ValueError, match=r"dilation=2\) needs H and W > 6"):
        ACmix(8, 8, kernel_att=7, head=2, dilation=2)(torch.randn(1, 8, 6, 9))


def test_conv_only_acmix_has_no_window_constraint():
    op = ACmix(8, 8, kernel_att=7, head=2, mixing="conv")
    assert op(torch.randn(1, 8, 3, 3)).shape == (1, 8, 3, 3)


@pytest.mark.parametrize("H,W", [(7, 5), (9, 9), (5, 8)])
def test_odd_sizes_at_stride_two_give_ceil_output(H, W):
    for op in (ACmix(8, 8, 3, 2, stride=2), LocalSelfAttention(8, 8, 3, 2, stride=2),
               DecomposedConv(8, 8, 3, stride=2), Conv(8, 8, 3, stride=2)):
        assert op(torch.randn(1, 8, H, W)).shape == (1, 8, (H + 1) // 2, (W + 1) // 2)


def test_window_must_divide_the_map():
    with pytest.raises(ValueError, match=r"window_size=4 must divide the token map, got 6x8"):
        WindowACmix(8, 4, 2)(torch.randn(1, 6, 8, 8))


def test_kernel_conv_other_than_three_is_correct():
    """The release pads its grouped conv by 1 whatever k is; the suite pads k//2, so at
    initialisation the conv path of a k=5 ACmix is an exact 5x5 shift-sum."""
    torch.manual_seed(0)
    op = ACmix(8, 8, 3, 2, kernel_conv=5, mixing="conv")
    for shift in ("tensor", "fixed", "learnable"):
        other = ACmix(8, 8, 3, 2, kernel_conv=5, mixing="conv", shift=shift)
        state = {k: v for k, v in op.state_dict().items() if "shift" not in k}
        other.load_state_dict(state, strict=False)
        x = torch.randn(2, 8, 9, 7)
        assert torch.allclose(op(x), other(x), atol=1e-5)

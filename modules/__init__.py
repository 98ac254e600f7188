"""Operators (Stage I / Stage II), backbones and LightningModules of acmix-bench."""
from .conv import Conv, DecomposedConv
from .factory import create_op
from .local_attention import (local_attention_fast, local_attention_reference, position_grid)
from .names import OPERATOR_KINDS
from .official import from_official, load_official
from .operators import (ACmix, ConvPath, LocalSelfAttention, MIXING_MODES, Stage2, WindowACmix,
                        WindowSelfAttention, parse_mixing, set_stage2_impl)
from .san import SANACmix, SANSelfAttention
from .shift import SHIFT_IMPLS, ShiftAggregation, shift_aggregate_reference, tensor_shift_sum
from .window_attention import window_attention_fast, window_attention_reference

__all__ = [
    "ACmix", "Conv", "ConvPath", "DecomposedConv", "LocalSelfAttention", "MIXING_MODES", "OPERATOR_KINDS",
    "SANACmix", "SANSelfAttention", "SHIFT_IMPLS", "ShiftAggregation", "Stage2", "WindowACmix", "WindowSelfAttention",
    "from_official", "load_official",
    "local_attention_fast", "local_attention_reference", "parse_mixing", "position_grid",
    "set_stage2_impl", "shift_aggregate_reference", "tensor_shift_sum", "window_attention_fast",
    "window_attention_reference", "create_model", "create_op", "list_models", "model_spec",
]
from .registry import create_model, list_models, model_spec  # noqa: E402


def __getattr__(name):  # lazy: importing lightning costs seconds; only the classifier needs it
    if name == "ImageClassifier":
        from .lightning import ImageClassifier
        return ImageClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Backbones built from the suite's operators: ResNet (bottleneck) and Swin families."""
from .resnet import RESNET_DEPTHS, RESNET_OPS, Bottleneck, ResNet, clamp_kernel_att, make_spatial_op
from .san import SAN, SAN_LAYERS, SAN_OPS, SANBlock
from .swin import SWIN_CONFIGS, SWIN_OPS, SwinBlock, SwinTransformer

__all__ = ["Bottleneck", "RESNET_DEPTHS", "RESNET_OPS", "ResNet", "SAN", "SAN_LAYERS", "SAN_OPS", "SANBlock", "SWIN_CONFIGS", "SWIN_OPS", "SwinBlock",
           "SwinTransformer", "clamp_kernel_att", "make_spatial_op"]

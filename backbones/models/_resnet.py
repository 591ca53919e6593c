"""The ResNet-shaped skeleton that SENet, SKNet, Res2Net and RedNet are built on.

stem (stride 2) -> max-pool -> four stages of residual blocks (strides 1, 2, 2, 2; widths 256..2048) -> Head.
The max-pool is stage 0's ``downsample``, where the ResNet paper's Table 1 lists it (in ``conv2_x``), so that the
stem's output is a feature level of its own, at stride 2, as in timm's ResNets (``act1``) and legacy SENets
(``layer0``): five levels, ``out_indices=(1, 2, 3, 4)`` being the four stages. ``output_stride=16`` or ``8`` dilates
the last one or two stages instead of striding them (:func:`backbones.layers.stage_strides`, timm's semantics).
A family supplies its stem and its block factory; everything else (drop-path schedule, grad checkpointing,
features, dilation, classifier handling, init) lives here once.
"""
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .._features import StageFeatureMixin
from ..layers import Bottleneck, ConvNormAct, Stage, drop_path_schedule, refuse_img_size
from ..layers.init import skip_on_meta
from ..layers.stem import stem_pool as build_stem_pool
from ..layers.stem import stem_pool_min_input

__all__ = ['ResNetSkeleton']


class ResNetSkeleton(StageFeatureMixin, nn.Module):
    """stem -> stages -> head.

    Args:
        stem: module with ``out_chs`` and ``reduction`` attributes (and ``min_input_size``, the smallest input side
            it takes, when that is not 1).
        block_fn: ``block_fn(in_chs, out_chs, stride=, first=, drop_path=, dilation=, first_dilation=, device=,
            dtype=)`` (see :meth:`Stage.from_blocks`).
        depths: blocks per stage.
        widths: output channels per stage.
        strides: stride of each stage's first block.
        stem_pool: the max-pool after the stem (:func:`backbones.layers.stem_pool`: ``'max'`` or ``'max_caffe'``).
        output_stride: total stride of the last stage (32, or 16 / 8: the last stages dilate instead).
        img_size: refused (nothing depends on the input size), as by timm's ResNets.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate: timm's usual meaning.
        zero_init_last: zero the last BN of every residual branch at init.
        input_divisor: input sides must be multiples of this (1 = any size).
    """
    stem_feature = True  # the stem's stride-2 output (before the max-pool) is feature level 0

    def __init__(
            self,
            stem: nn.Module,
            block_fn: Callable[..., nn.Module],
            depths: Sequence[int],
            widths: Sequence[int] = (256, 512, 1024, 2048),
            strides: Sequence[int] = (1, 2, 2, 2),
            stem_pool: str = 'max',
            output_stride: Optional[int] = None,
            img_size=None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = False,
            input_divisor: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.init_model(type(self).__name__, in_chans, num_classes, drop_rate, input_divisor)
        refuse_img_size(img_size, self._model_name, 'every input size its stem and strides take runs')
        # the stages pad: the stem and its pool set the minimum
        self.min_input_size = max(getattr(stem, 'min_input_size', 1), stem_pool_min_input(stem_pool, stem.reduction))

        self.stem = stem
        dprs = drop_path_schedule(drop_path_rate, depths)
        self.build_stages(
            lambda i, in_chs, width, s: Stage.from_blocks(
                block_fn, depths[i], in_chs, width, s.stride, dprs[i],
                downsample=build_stem_pool(stem_pool) if i == 0 else None,
                dilation=s.dilation, first_dilation=s.first_dilation, **dd),
            widths, strides, output_stride, stem.reduction * 2, in_chs=stem.out_chs,  # (* 2: the pool)
            stem=(stem.out_chs, stem.reduction))
        if getattr(stem, 'channels_last', False):  # the stages see channels-last maps: 1x1 convs as matmuls
            for m in self.stages.modules():
                if isinstance(m, ConvNormAct):
                    m.use_matmul_1x1()
        self.build_head(num_classes, global_pool, drop_rate, **dd)

        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    @skip_on_meta
    def init_weights(self, zero_init_last: bool = False):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    m.zero_init_last()


